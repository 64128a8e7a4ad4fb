"""`make bench`: the figures of issue 11, each beside its peer measured in the same run on this machine.

Systems (the load generator shares their cores):
  inferpool       `inferpool up` as a user runs it: API, online and work workers, scaler, Flower, Redis
  onnx server     one FastAPI process, the same forest compiled to onnxruntime in the handler
  sklearn server  one FastAPI process, scikit-learn in the handler

Scenarios:
  1 tutorial step   Poisson arrivals of the mix (work 0/50/200 ms at p .6/.25/.15), 30 -> 90 -> 30 req/s,
                    20 s each, open loop (latency from the scheduled send time, 10 s timeout, capped in flight)
  2 CPU per request 90 req/s of the mix for 20 s after a warm-up, all processes of each system's tree
  3 peak            one-row POST /predict with p99 <= 250 ms, wrk over rising connections
  4 light           30 req/s of work-0 requests, evenly spaced, 20 s
  5 bulk            a 200,000-row .npy job against an in-process loop of the compiled model, 5 pairs
                    of the two alternated, the median ratio

A latency percentile counts a failed, timed-out or dropped request as infinitely slow ("inf").
Prints tables and writes results/bench-<time>.json. `--quick` scales every duration down for a check.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from bench import clients, cpu
from bench.harness import System, inferpool_system, reference_server
from inferpool import model_store

MIX = [(0, 0.6), (50, 0.25), (200, 0.15)]
WORK0 = [(0, 1.0)]
TIMEOUT_S = 10.0
PEAK_P99_S = 0.25
STEP = [(30, 20.0), (90, 20.0), (30, 20.0)]  # (req/s, seconds)
STEP_SKIP_S = 5.0  # percentiles of a phase leave out its first seconds
CPU_RATE, CPU_WARM_S, CPU_SECONDS = 90, 5.0, 20.0
LIGHT_RATE, LIGHT_SECONDS = 30, 20.0
IDLE_SECONDS = 15.0
CHUNK_ROWS = 4096


# --- summaries --------------------------------------------------------------------------------------------------


def pct(lat: np.ndarray, q: float) -> float:
    # "higher": never interpolate towards an infinite (failed) neighbour, and never below a real sample.
    return float(np.percentile(lat, q, method="higher")) if len(lat) else float("nan")


def summarize(r: clients.OpenLoopResult, start: float, end: float, skip: float) -> dict:
    """Counts over requests scheduled in [start, end); percentiles over those from start + skip."""
    phase = (r.times >= start) & (r.times < end)
    window = phase & (r.times >= start + skip)
    ok = r.status == 200
    lat = np.where(ok, r.latency_s, np.inf)  # failed, timed out or dropped: never answered
    st = r.status[phase]
    return {
        "requests": int(phase.sum()),
        "ok": int((st == 200).sum()),
        "errors": int(((st != 200) & (st != clients.TIMEOUT) & (st != clients.DROPPED)).sum()),
        "timeouts": int((st == clients.TIMEOUT).sum()),
        "dropped": int((st == clients.DROPPED).sum()),
        "p50_s": pct(lat[window], 50),
        "p99_s": pct(lat[window], 99),
        "work0_p99_s": pct(lat[window & (r.works == 0)], 99),
    }


# --- the scenarios ----------------------------------------------------------------------------------------------


def tutorial_step(system: System, ns: argparse.Namespace) -> list[dict]:
    phases = [(rate, secs * ns.scale) for rate, secs in STEP]
    rng = np.random.default_rng(11)  # same arrivals, works and rows for every system
    sch = clients.schedule(clients.poisson_times(phases, rng), MIX, rng)
    r = clients.open_loop(system.url, sch, timeout_s=TIMEOUT_S, max_in_flight=ns.max_in_flight)
    out, t = [], 0.0
    for rate, secs in phases:
        out.append({"rate": rate, "seconds": secs, **summarize(r, t, t + secs, STEP_SKIP_S * ns.scale)})
        t += secs
    return out


def cpu_per_request(system: System, ns: argparse.Namespace, mix: list, classify) -> dict:
    """The median of ``ns.cpu_runs`` runs of :func:`cpu_once` (each run's figure kept in ``runs_ms``): one run
    of this figure moves by a fifth from the next on the same machine, more than most changes it judges."""
    runs = []
    for i in range(ns.cpu_runs):
        if i:
            settle(system)
        runs.append(cpu_once(system, ns, mix, classify, seed=12 + i))
    runs.sort(key=lambda r: r["ms_per_request"])
    return {**runs[len(runs) // 2], "runs_ms": [round(r["ms_per_request"], 3) for r in runs]}


def cpu_once(system: System, ns: argparse.Namespace, mix: list, classify, seed: int) -> dict:
    """CPU of the system's whole process tree per request answered, over the window after the warm-up."""
    warm, secs = CPU_WARM_S * ns.scale, CPU_SECONDS * ns.scale
    rng = np.random.default_rng(seed)
    sch = clients.schedule(clients.poisson_times([(CPU_RATE, warm + secs)], rng), mix, rng)
    t0 = time.monotonic() + 0.2
    meter = cpu.CpuMeter(system.pid, classify).start(at=t0 + warm)
    r = clients.open_loop(system.url, sch, t0=t0, timeout_s=TIMEOUT_S, max_in_flight=ns.max_in_flight)
    usage = meter.stop()
    s = summarize(r, warm, warm + secs, 0.0)
    served = max(s["ok"], 1)
    return {
        **s,
        "window_s": usage.seconds,
        "system_cpu_s": usage.system_s,
        "ms_per_request": 1000 * usage.system_s / served,
        "roles": [
            {"role": role, "processes": n, "cpu_s": c, "ms_per_request": 1000 * c / served}
            for role, c, n in usage.ordered()
        ],
        "load_client_ms_per_request": 1000 * usage.load_client_s / max(s["requests"], 1),
    }


def idle(system: System, ns: argparse.Namespace) -> dict:
    """CPU of the system's tree with no requests at all: its fixed cost per second, by role (heartbeats,
    polls, sweeps, the scaler's ticks). At 90 req/s every 9 ms of it per second is 0.1 ms per request."""
    secs = IDLE_SECONDS * ns.scale
    meter = cpu.CpuMeter(system.pid, cpu.inferpool_role).start(at=time.monotonic())
    time.sleep(secs)
    usage = meter.stop()
    return {
        "window_s": usage.seconds,
        "ms_per_s": 1000 * usage.system_s / usage.seconds,
        "roles": [{"role": r, "processes": n, "ms_per_s": 1000 * c / usage.seconds} for r, c, n in usage.ordered()],
    }


def peak(system: System, ns: argparse.Namespace) -> dict:
    best, points = clients.peak(f"{system.url}/predict", tuple(ns.connections), ns.peak_seconds, PEAK_P99_S)
    return {
        "rps": best.rps if best else 0.0,
        "best": asdict(best) if best else None,
        "points": [asdict(p) for p in points],
    }


def light(system: System, ns: argparse.Namespace) -> dict:
    secs = LIGHT_SECONDS * ns.scale
    sch = clients.schedule(clients.even_times(LIGHT_RATE, secs), WORK0, np.random.default_rng(13))
    r = clients.open_loop(system.url, sch, timeout_s=TIMEOUT_S, max_in_flight=ns.max_in_flight)
    return summarize(r, 0.0, secs, 0.0)


def bulk(system: System, X: np.ndarray, model_dir: Path, runs: int) -> dict:
    """``runs`` pairs of (in-process loop, job), alternated so that both see the machine at the same moment: one
    job's time moves by a fifth from the next here, and a peer timed once, minutes apart, moved by as much. The
    pair of the median ratio is reported, every pair's ratio kept in ``ratios``, in the order run."""
    pairs, preds = [], None
    for _ in range(runs):
        peer = in_process(model_dir, X)["seconds"]
        secs, got = clients.bulk_job(system.url, X)
        preds = preds or got
        pairs.append((peer / secs, secs, peer))
    ratio_, secs, peer = sorted(pairs)[len(pairs) // 2]
    return {
        "rows": len(X), "seconds": secs, "rows_per_s": len(X) / secs, "peer_rows_per_s": len(X) / peer,
        "ratio": ratio_, "ratios": [round(r, 3) for r, _, _ in pairs], "predictions": preds,
        "pairs_s": [(round(s, 3), round(p, 3)) for _, s, p in pairs],
    }  # fmt: skip


def in_process(model_dir: Path, X: np.ndarray) -> dict:
    """The compiled model predicting in this process, 4,096 rows at a time: the bulk job's peer."""
    model, _ = model_store.load_model(model_dir, runtime="onnx")
    model.predict(X[:CHUNK_ROWS])  # first call builds what onnxruntime caches
    t = time.perf_counter()
    preds = np.concatenate([model.predict(X[i : i + CHUNK_ROWS]) for i in range(0, len(X), CHUNK_ROWS)])
    secs = time.perf_counter() - t
    return {"rows": len(X), "seconds": secs, "rows_per_s": len(X) / secs, "predictions": preds.tolist()}


def machine() -> dict:
    t = time.perf_counter()
    x = 0
    for i in range(10_000_000):
        x += i
    return {"cores": os.cpu_count(), "python_loop_10M_s": time.perf_counter() - t}


def settle(system: System, limit_s: float = 120.0) -> None:
    """Wait until the system is idle again: answers health checks at once and, for inferpool, has no queued
    or unacknowledged messages (an overloaded peer still works through requests whose clients gave up)."""
    deadline = time.monotonic() + limit_s
    with httpx.Client(base_url=system.url, timeout=2) as c:
        while time.monotonic() < deadline:
            try:
                t = time.perf_counter()
                c.get("/healthz")
                idle = time.perf_counter() - t < 0.05
                if idle and system.name == "inferpool":
                    doc = c.get("/v1/monitoring/status").json()
                    idle = doc.get("unacked", 0) == 0 and all(q["depth"] == 0 for q in doc["queues"].values())
                if idle:
                    time.sleep(1.0)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    print(f"  ! {system.name} still busy after {limit_s:.0f} s; going on", flush=True)


def run_system(system: System, ns: argparse.Namespace, X: np.ndarray) -> dict:
    out: dict = {}
    is_ours = system.name == "inferpool"
    steps = [
        ("step", lambda: tutorial_step(system, ns)),
        ("light", lambda: light(system, ns)),
    ]
    if is_ours:
        steps.append(("idle", lambda: idle(system, ns)))
        steps.append(("cpu", lambda: cpu_per_request(system, ns, MIX, cpu.inferpool_role)))
    elif system.name == "onnx server":
        role = cpu.single_role("server")
        steps.append(("cpu", lambda: cpu_per_request(system, ns, WORK0, role)))
        steps.append(("cpu_mix", lambda: cpu_per_request(system, ns, MIX, role)))
    steps.append(("peak", lambda: peak(system, ns)))
    if is_ours:
        steps.append(("bulk", lambda: bulk(system, X, Path(ns.model_dir), ns.bulk_runs)))
    for name, fn in steps:
        if ns.only and name.removesuffix("_mix") not in ns.only:
            continue
        print(f"  {system.name}: {name} ...", flush=True)
        out[name] = fn()
        settle(system)
    return out


# --- the tables -------------------------------------------------------------------------------------------------


def ms(v: float) -> str:
    return "inf" if v == float("inf") else f"{v * 1000:.1f} ms"


def spread(c: dict) -> str:
    return f"{min(c['runs_ms']):.2f}-{max(c['runs_ms']):.2f}"


def counts(s: dict) -> str:
    return f"{s['errors']}/{s['timeouts']}/{s['dropped']} of {s['requests']}"


def ratio(a: float, b: float) -> str:
    if not np.isfinite(a) or not np.isfinite(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render(head: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    return "\n".join([*lines, *(fmt.format(*map(str, r)) for r in rows)])


def main_table(res: dict) -> str:
    ours, onnx, sk = res["inferpool"], res["onnx server"], res["sklearn server"]
    rows = []
    for i, (s, o) in enumerate(zip(ours["step"], onnx["step"], strict=True)):
        label = f"1 step phase {i + 1} ({s['rate']} req/s)"
        clean = s["errors"] == s["timeouts"] == s["dropped"] == 0
        rows += [
            (f"{label} err/timeout/drop", counts(s), "onnx server", counts(o), "-", "0/0/0", verdict(clean)),
            (f"{label} p99 after {STEP_SKIP_S * res['settings']['scale']:g} s", ms(s["p99_s"]), "onnx server",
             ms(o["p99_s"]), ratio(s["p99_s"], o["p99_s"]), "<= 300 ms", verdict(s["p99_s"] <= 0.300)),
            (f"{label} work-0 p99", ms(s["work0_p99_s"]), "onnx server", ms(o["work0_p99_s"]),
             ratio(s["work0_p99_s"], o["work0_p99_s"]), "<= 50 ms", verdict(s["work0_p99_s"] <= 0.050)),
        ]  # fmt: skip
    c, oc = ours["cpu"], onnx["cpu"]
    rows.append(
        (f"2 CPU ms/request at {CPU_RATE} req/s, median of {len(c['runs_ms'])} ({spread(c)})",
         f"{c['ms_per_request']:.2f}", "onnx server (work 0)",
         f"{oc['ms_per_request']:.2f}", ratio(c["ms_per_request"], oc["ms_per_request"]), "<= 3 ms",
         verdict(c["ms_per_request"] <= 3.0 and c["ok"] == c["requests"]))
    )  # fmt: skip
    p, op, sp = ours["peak"]["rps"], onnx["peak"]["rps"], sk["peak"]["rps"]
    rows += [
        ("3 peak req/s, p99 <= 250 ms", f"{p:.0f}", "onnx server", f"{op:.0f}", ratio(p, op), ">= 1.0x",
         verdict(op > 0 and p / op >= 1.0)),
        ("3 peak req/s, p99 <= 250 ms", f"{p:.0f}", "sklearn server", f"{sp:.0f}", ratio(p, sp), ">= 20x",
         verdict(sp > 0 and p / sp >= 20.0)),
    ]  # fmt: skip
    lp, op50, sp50 = ours["light"]["p50_s"], onnx["light"]["p50_s"], sk["light"]["p50_s"]
    rows += [
        (f"4 light {LIGHT_RATE} req/s p50", ms(lp), "sklearn server", ms(sp50), ratio(lp, sp50), "<= 0.5x",
         verdict(lp <= 0.5 * sp50)),
        (f"4 light {LIGHT_RATE} req/s p50", ms(lp), "onnx server", ms(op50),
         f"{(lp - op50) * 1000:+.1f} ms" if np.isfinite(lp - op50) else "-", "<= +3 ms", verdict(lp <= op50 + 0.003)),
        (f"4 light {LIGHT_RATE} req/s p99", ms(ours["light"]["p99_s"]), "onnx server", ms(onnx["light"]["p99_s"]),
         ratio(ours["light"]["p99_s"], onnx["light"]["p99_s"]), "-", "-"),
    ]  # fmt: skip
    b = ours["bulk"]
    rows += [
        (f"5 {b['rows']:,}-row .npy job rows/s, median of {len(b['ratios'])} pairs ({min(b['ratios']):.0%}-"
         f"{max(b['ratios']):.0%})", f"{b['rows_per_s']:,.0f}", "in-process onnx loop", f"{b['peer_rows_per_s']:,.0f}",
         f"{b['ratio']:.0%}", ">= 150%", verdict(b["ratio"] >= 1.5)),
        ("5 job predictions equal", "yes" if res["bulk_predictions_equal"] else "NO", "in-process onnx loop", "", "",
         "equal", verdict(res["bulk_predictions_equal"])),
    ]  # fmt: skip
    return render(("figure", "inferpool", "peer", "peer value", "ratio", "target", ""), rows)


def step_table(res: dict) -> str:
    rows = []
    for name in ("inferpool", "onnx server", "sklearn server"):
        for i, s in enumerate(res[name]["step"]):
            rows.append((name, f"{i + 1}: {s['rate']} req/s", s["requests"], s["ok"], s["errors"], s["timeouts"],
                         s["dropped"], ms(s["p50_s"]), ms(s["p99_s"]), ms(s["work0_p99_s"])))  # fmt: skip
    head = ("system", "phase", "requests", "200", "errors", "timeouts", "dropped", "p50", "p99", "work-0 p99")
    return render(head, rows)


def cpu_table(res: dict) -> str:
    rows = []
    for name, key in (("inferpool", "cpu"), ("onnx server", "cpu"), ("onnx server", "cpu_mix")):
        c = res[name][key]
        load = "mix" if key == "cpu_mix" or name == "inferpool" else "work 0"
        runs = f"median of {len(c['runs_ms'])} runs: {spread(c)}"
        who = f"{name} ({load}; {runs}; {c['ok']} of {c['requests']} answered 200)"
        for r in c["roles"]:
            rows.append((who, r["role"], r["processes"], f"{r['cpu_s']:.2f}", f"{r['ms_per_request']:.2f}"))
            who = ""
        rows.append(("", "= system", "", f"{c['system_cpu_s']:.2f}", f"{c['ms_per_request']:.2f}"))
        rows.append(("", "(load client, not counted)", "", "", f"{c['load_client_ms_per_request']:.2f}"))
    return render(("system", "role", "processes", "CPU s", "ms/request"), rows)


# --- main -------------------------------------------------------------------------------------------------------


def finite(obj):
    """JSON has no infinity: a latency that never came is written as null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


SCENARIOS = ("step", "light", "idle", "cpu", "peak", "bulk")
SYSTEMS = ("onnx", "sklearn", "inferpool")


def partial_summary(res: dict) -> dict:
    """The headline figure of each scenario run, per system."""
    out: dict = {"loop_10M_s": round(res["machine"]["python_loop_10M_s"], 2)}
    for name, r in res.items():
        if not isinstance(r, dict) or name in ("settings", "machine", "in_process"):
            continue
        row: dict = {}
        if "cpu" in r:
            row["cpu_ms_per_request"] = round(r["cpu"]["ms_per_request"], 3)
            row["cpu_runs_ms"] = r["cpu"]["runs_ms"]
            row["cpu_roles"] = {x["role"]: round(x["ms_per_request"], 3) for x in r["cpu"]["roles"]}
        if "idle" in r:
            row["idle_ms_per_s"] = round(r["idle"]["ms_per_s"], 1)
            row["idle_roles"] = {x["role"]: round(x["ms_per_s"], 1) for x in r["idle"]["roles"]}
        if "light" in r:
            row["light_p50_ms"] = round(1000 * r["light"]["p50_s"], 2)
            row["light_p99_ms"] = round(1000 * r["light"]["p99_s"], 2)
        if "peak" in r:
            row["peak_rps"] = round(r["peak"]["rps"])
        if "bulk" in r:
            row["bulk_rows_per_s"] = round(r["bulk"]["rows_per_s"])
            row["bulk_peer_rows_per_s"] = round(r["bulk"]["peer_rows_per_s"])
            row["bulk_ratios"] = r["bulk"]["ratios"]
            row["bulk_pairs_s"] = r["bulk"]["pairs_s"]
        if "step" in r:
            row["step_p99_ms"] = [round(1000 * p["p99_s"], 1) for p in r["step"]]
        out[name] = row
    out["in_process_rows_per_s"] = round(res["in_process"]["rows_per_s"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results")
    p.add_argument("--quick", action="store_true", help="a quick check: durations x0.25, fewer peak points, 50k rows")
    p.add_argument("--scale", type=float, default=None, help="multiply every scenario duration (default 1)")
    p.add_argument("--connections", type=int, nargs="+", default=None, help="wrk connections, rising")
    p.add_argument("--peak-seconds", type=int, default=None)
    p.add_argument("--cpu-runs", type=int, default=3, help="runs of each CPU scenario; the median is reported")
    p.add_argument("--rows", type=int, default=None, help="rows of the bulk job (default 200,000)")
    p.add_argument("--bulk-runs", type=int, default=5, help="alternated (in-process loop, job) pairs; median ratio")
    p.add_argument("--max-in-flight", type=int, default=256, help="open-loop cap; arrivals beyond it are dropped")
    p.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios (a quick look while tuning)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="run only these systems")
    ns = p.parse_args()
    ns.scale = ns.scale or (0.25 if ns.quick else 1.0)
    ns.connections = ns.connections or ([8, 32, 128] if ns.quick else [8, 16, 32, 64, 128])
    ns.peak_seconds = ns.peak_seconds or (3 if ns.quick else 8)
    ns.rows = ns.rows or (50_000 if ns.quick else 200_000)

    out = Path(ns.out)
    var = out / "bench-var"
    model_dir = var / "models"
    var.mkdir(parents=True, exist_ok=True)
    model_store.ensure_reference(model_dir)
    ns.model_dir = str(model_dir)
    rt = model_store.read_manifest(model_dir).runtime
    if rt.runtime != "onnx":
        raise SystemExit(f"the model in {model_dir} has no compiled (onnx) runtime: {rt.reason}; delete it and rerun")
    X = np.random.default_rng(42).normal(size=(ns.rows, 20)).astype(np.float32)

    res: dict = {"settings": vars(ns), "machine": machine()}
    m = res["machine"]
    print(f"machine: {m['cores']} cores, 10M-iteration Python loop {m['python_loop_10M_s']:.2f} s", flush=True)
    res["in_process"] = in_process(model_dir, X)  # before any system runs: the machine is idle
    for runtime in ("onnx", "sklearn"):
        if runtime in ns.systems:
            with reference_server(model_dir, var, runtime) as system:
                res[system.name] = run_system(system, ns, X)
    if "inferpool" in ns.systems:
        with inferpool_system(var / "stack", model_dir, scaler=True, flower=True) as system:
            time.sleep(3 * ns.scale + 2)  # let Flower, the scaler and the pools finish starting, as a user would
            res[system.name] = run_system(system, ns, X)
    if ns.only or ns.systems != list(SYSTEMS):
        # A partial run: its figures, as JSON, without the comparison tables (they need every system).
        path = out / f"bench-partial-{time.strftime('%Y%m%d-%H%M%S')}.json"
        res["in_process"].pop("predictions")
        if "bulk" in res.get("inferpool", {}):
            res["inferpool"]["bulk"].pop("predictions")
        path.write_text(json.dumps(finite(res), indent=2))
        print(json.dumps(partial_summary(res), indent=1))
        print(f"\nresults: {path}")
        return
    same = res["inferpool"]["bulk"].pop("predictions") == res["in_process"].pop("predictions")
    res["bulk_predictions_equal"] = same
    print(
        f"\nmachine: {m['cores']} cores; 10M-iteration Python loop {m['python_loop_10M_s']:.2f} s; scale {ns.scale:g}"
    )
    print("\n" + main_table(res))
    print("\ntutorial step, every system (errors = non-200 answers and broken connections; p50/p99 after the first "
          f"{STEP_SKIP_S * ns.scale:g} s of each phase; inf = more failed than the percentile allows)")  # fmt: skip
    print(step_table(res))
    print(f"\nCPU over {CPU_SECONDS * ns.scale:g} s at {CPU_RATE} req/s after {CPU_WARM_S * ns.scale:g} s warm-up, "
          "by process tree; ms per request answered 200")  # fmt: skip
    print(cpu_table(res))
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(finite(res), indent=2))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
