"""`make bench`: inferpool against a single-process FastAPI server, side by side, same machine, same run.

1. peak single-row throughput of POST /predict with p99 <= 250 ms (wrk, closed loop, rising connections)
2. the tutorial burst workload: each second 30 concurrent requests, work 0/50/200 ms at p 0.6/0.25/0.15
3. rows/s of a 200,000-row job, submit to all results, against in-process predict in 4,096-row chunks
4. p50/p99 of POST /predict at a light, evenly spaced 30 requests/s

Prints a table and writes results/bench-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench import clients, cpu
from bench.harness import inferpool_stack, reference_server
from inferpool import model_store

MIX = [(0, 0.6), (50, 0.25), (200, 0.15)]
P99_BOUND_S = 0.25


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def latency_summary(records: list) -> dict:
    ok = [lat for _, lat, st in records if st == 200]
    light = [lat for w, lat, st in records if st == 200 and w == 0]
    return {
        "requests": len(records),
        "errors": sum(1 for *_, st in records if st != 200),
        "p50_s": pct(ok, 50), "p95_s": pct(ok, 95), "p99_s": pct(ok, 99),
        "work0_p50_s": pct(light, 50),
    }  # fmt: skip


def run_system(url: str, ns: argparse.Namespace, X: np.ndarray, is_ref: bool) -> dict:
    out: dict = {}
    best, points = clients.peak(f"{url}/predict", tuple(ns.connections), ns.peak_seconds, P99_BOUND_S)
    out["peak"] = {"best": asdict(best) if best else None, "points": [asdict(p) for p in points]}
    before = cpu.snapshot()
    out["burst"] = latency_summary(clients.bursts(url, ns.burst_seconds, 30, MIX))
    # The profile behind the burst figures: CPU seconds per role over the whole scenario.
    out["burst"]["cpu_s"] = cpu.diff(before, cpu.snapshot())
    out["light"] = latency_summary(clients.steady(url, 30, ns.light_seconds))
    if not is_ref:
        secs, preds = clients.bulk_job(url, X)
        out["bulk"] = {"rows": len(X), "seconds": secs, "rows_per_s": len(X) / secs, "predictions": preds}
        secs_json, _ = clients.bulk_job(url, X, as_json=True)
        out["bulk_json"] = {"rows": len(X), "seconds": secs_json, "rows_per_s": len(X) / secs_json}
    return out


def in_process(model_dir: Path, X: np.ndarray, chunk: int = 4096) -> dict:
    model, _ = model_store.load_model(model_dir)
    t = time.perf_counter()
    preds = np.concatenate([model.predict(X[i : i + chunk]) for i in range(0, len(X), chunk)])
    secs = time.perf_counter() - t
    return {"rows": len(X), "seconds": secs, "rows_per_s": len(X) / secs, "predictions": preds.tolist()}


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def table(res: dict) -> str:
    ours, ref, inproc = res["inferpool"], res["reference"], res["in_process"]
    ob, rb = ours["peak"]["best"], ref["peak"]["best"]
    o_rps, r_rps = (ob or {}).get("rps", 0.0), (rb or {}).get("rps", 0.0)
    rows = [
        ("1 peak req/s (p99<=250ms)", f"{o_rps:.0f}", f"{r_rps:.0f}", f"{o_rps / r_rps:.1f}x" if r_rps else "-",
         ">= 10x"),
        ("2 burst p50", ms(ours["burst"]["p50_s"]), ms(ref["burst"]["p50_s"]), "", ""),
        ("2 burst p95", ms(ours["burst"]["p95_s"]), ms(ref["burst"]["p95_s"]), "", ""),
        ("2 burst p99", ms(ours["burst"]["p99_s"]), ms(ref["burst"]["p99_s"]),
         f"{ours['burst']['p99_s'] / ref['burst']['p99_s']:.0%}", "<= 40%"),
        ("2 burst work-0 p50", ms(ours["burst"]["work0_p50_s"]), ms(ref["burst"]["work0_p50_s"]), "", "< 25 ms"),
        ("2 burst errors", str(ours["burst"]["errors"]), str(ref["burst"]["errors"]), "", ""),
        ("3 200k-row job rows/s (.npy)", f"{ours['bulk']['rows_per_s']:.0f}", f"{inproc['rows_per_s']:.0f} (in-proc)",
         f"{ours['bulk']['rows_per_s'] / inproc['rows_per_s']:.0%}", ">= 50%"),
        ("3 same job as JSON rows/s", f"{ours['bulk_json']['rows_per_s']:.0f}", "", "", ""),
        ("4 light 30 req/s p50", ms(ours["light"]["p50_s"]), ms(ref["light"]["p50_s"]),
         f"{(ours['light']['p50_s'] - ref['light']['p50_s']) * 1000:+.1f} ms", "<= +5 ms"),
        ("4 light 30 req/s p99", ms(ours["light"]["p99_s"]), ms(ref["light"]["p99_s"]), "", ""),
    ]  # fmt: skip
    head = ("measure", "inferpool", "reference", "ratio", "target")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results")
    p.add_argument("--connections", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--peak-seconds", type=int, default=8)
    p.add_argument("--burst-seconds", type=int, default=40)
    p.add_argument("--light-seconds", type=int, default=20)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--work-procs", type=int, default=4, help="static size of the work pool during the bench")
    ns = p.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    var = out / "bench-var"
    model_dir = var / "models"
    model_store.ensure_reference(model_dir)
    X = np.random.default_rng(42).normal(size=(ns.rows, 20)).astype(np.float32)
    res: dict = {"machine": {"cores": __import__("os").cpu_count()}, "settings": vars(ns)}
    print("reference server ...", flush=True)
    with reference_server(model_dir, var) as url:
        res["reference"] = run_system(url, ns, X, is_ref=True)
    print("inferpool ...", flush=True)
    env = {"INFERPOOL_WORK_CONCURRENCY_MIN": str(ns.work_procs)}
    with inferpool_stack(var / "stack", model_dir, **env) as url:
        res["inferpool"] = run_system(url, ns, X, is_ref=False)
    res["in_process"] = in_process(model_dir, X)
    same = res["inferpool"]["bulk"].pop("predictions") == res["in_process"].pop("predictions")
    res["bulk_predictions_equal"] = same
    print()
    print(table(res))
    print(f"\n200k-row job predictions equal in-process predict: {same}")
    bursts = ns.burst_seconds
    for name in ("inferpool", "reference"):
        per_burst = {k: f"{1000 * v / bursts:.0f} ms" for k, v in res[name]["burst"]["cpu_s"].items() if v > 0}
        print(f"CPU per 30-request burst, {name}: {per_burst}")
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
