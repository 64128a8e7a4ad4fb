"""Where a job's time goes: the phases of a 200,000-row .npy job, each job beside the in-process loop.

For each job it prints the time to the POST's answer (body read, chunks stored and published), from then to
the first chunk's start and the last chunk's finish (read from the bulk queue's task samples, which record
each chunk's run time), and the tail from the last finish to the client holding the status "succeeded";
then the chunks' summed run time against the time the chunks took on the pool's threads (their overlap),
and the same rows in one in-process loop of the compiled model, timed just before the job. Last, the
CPU a job costs by role (API, worker pools, Redis...), the median over the jobs.

    python -m bench.job_timeline [--jobs 6] [--rows 200000] [--upload-mb-s 100]

``--upload-mb-s`` paces the upload as a link would (100 MB/s is about a 1 Gb/s network): how much of the
upload the chunks overlap.

A tool for work on the job path (what `make bench` reports as one figure); the load client shares the cores.
"""

from __future__ import annotations

import argparse
import io
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import redis

from bench import cpu
from bench.harness import inferpool_system
from bench.run import in_process
from bench.speed import loop_speed_s
from inferpool import keys, model_store

POLL_S = 0.02
PIECE = 64 * 1024


def chunk_spans(client: redis.Redis, since: float) -> list[tuple[float, float]]:
    """(start, finish) of every chunk recorded in the bulk queue's samples, in seconds after ``since``."""
    spans = []
    for entry_id, fields in client.xrange(keys.task_samples(keys.QUEUE_BULK)):
        finished = int(entry_id.split(b"-")[0]) / 1000 - since
        spans.append((finished - float(fields[b"r"]), finished))
    return sorted(spans)


def paced(body: bytes, mb_per_s: float) -> Iterator[bytes]:
    """The body in 64 KiB pieces at ``mb_per_s`` (a client on a network link, not on loopback)."""
    t0 = time.perf_counter()
    for i in range(0, len(body), PIECE):
        ahead = t0 + i / (mb_per_s * 1e6) - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        yield body[i : i + PIECE]


def one_job(c: httpx.Client, r: redis.Redis, body: bytes, mb_per_s: float | None = None) -> dict:
    r.delete(keys.task_samples(keys.QUEUE_BULK))
    t0 = time.time()
    content = paced(body, mb_per_s) if mb_per_s else body
    resp = c.post("/v1/jobs", content=content, headers={"content-type": "application/x-npy"})
    resp.raise_for_status()
    posted = time.time() - t0
    status_url = resp.json()["status_url"]
    while c.get(status_url).json()["status"] not in ("succeeded", "failed"):
        time.sleep(POLL_S)
    total = time.time() - t0
    spans = chunk_spans(r, t0)
    first, last = spans[0][0], spans[-1][1]
    return {
        "total": total, "post": posted, "first_start": first, "last_finish": last, "tail": total - last,
        "chunks": len(spans), "run_sum": sum(b - a for a, b in spans), "chunk_phase": last - first,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=6)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--upload-mb-s", type=float, default=None, help="send the body at this rate (default: at once)")
    ns = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="inferpool-timeline-"))
    model_dir = tmp / "models"
    model_store.ensure_reference(model_dir)
    X = np.random.default_rng(42).normal(size=(ns.rows, 20)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, X)
    body = buf.getvalue()
    print(f"machine: 10M-iteration Python loop {loop_speed_s():.2f} s; {ns.rows:,} rows a job")
    print("job  total ms  post ms  first start  last finish  tail ms  chunks  run sum ms  overlap  in-process ms"
          "  ratio")  # fmt: skip
    with inferpool_system(tmp / "var", model_dir, scaler=True, flower=True) as system:
        redis_url = re.search(r"redis\s+(\S+)", (tmp / "var" / "up.log").read_text()).group(1)
        r = redis.Redis.from_url(redis_url)
        time.sleep(5)  # let the pools and the scaler finish starting
        roles: list[dict[str, float]] = []
        with httpx.Client(base_url=system.url, timeout=120) as c:
            for i in range(ns.jobs):
                peer = in_process(model_dir, X)["seconds"]
                meter = cpu.CpuMeter(system.pid, cpu.inferpool_role).start()
                time.sleep(0.05)  # the meter's baseline is taken in its thread
                j = one_job(c, r, body, ns.upload_mb_s)
                usage = meter.stop()
                roles.append(usage.by_role)
                print(
                    f"{i:<3}  {1000 * j['total']:8.0f}  {1000 * j['post']:7.0f}  {1000 * j['first_start']:11.0f}  "
                    f"{1000 * j['last_finish']:11.0f}  {1000 * j['tail']:7.0f}  {j['chunks']:6}  "
                    f"{1000 * j['run_sum']:10.0f}  {j['run_sum'] / j['chunk_phase']:7.2f}  {1000 * peer:13.0f}  "
                    f"{peer / j['total']:5.0%}",
                    flush=True,
                )
                time.sleep(1)
    print_cpu(roles)


def print_cpu(roles: list[dict[str, float]]) -> None:
    """CPU a job by role: the median over the jobs of each job's window (its POST to its last poll)."""
    medians = {r: float(np.median([job.get(r, 0.0) for job in roles])) for r in {r for job in roles for r in job}}
    ordered = sorted(medians.items(), key=lambda item: -item[1])
    print("CPU ms a job, median by role: " + ", ".join(f"{r} {1000 * m:.0f}" for r, m in ordered))


if __name__ == "__main__":
    main()
