"""CPU cost of the load generator per request: ``python -m bench.loadgen``.

Starts a peer HTTP server in a subprocess that answers ``/predict``, ``/v1/predict`` and
``/v1/monitoring/status`` at once with fixed JSON (``--server-work``: after each request's ``work`` ms,
so more requests are open at a time), then runs, one after the other against it, each as
a subprocess whose CPU (user + sys, start-up included, from ``os.wait4``) is divided by the requests
it sent:

* ``inferpool loadtest`` through the real CLI (``python -m cli.main loadtest ... --route compat``):
  per-request records, status sampling, progress line, files at the end (no plotting);
* with ``--baseline REF``, the same CLI from git revision REF (e.g. the httpx generator), same run;
* plain peers with the same kind of open-loop schedule (Poisson arrivals, same rate, mix and
  timeout) and nothing else: this repo's ``HttpClient`` and, when importable, aiohttp.

Every row also shows the machine's speed just before it (seconds for a 10M-iteration ``x += i`` loop in
plain Python), since repeat runs on a shared 2-core machine differ by 10-25 %.
``--aiohttp-path DIR`` puts DIR on the aiohttp peer's path only (``pip install --target DIR aiohttp``:
not a dependency of this project).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MIX = "0:0.6,50:0.25,200:0.15"
PEER_TIMEOUT_S = 10.0
PEER_MAX_IN_FLIGHT = 512
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_WORK = re.compile(rb'"work(?:_ms)?":\s*(\d+)')


# --- the peer server ------------------------------------------------------------------------------------------


def _status_doc() -> bytes:
    """A status document shaped like the API's, with a few scaler decisions for the sampler to parse."""
    now = time.time()
    decisions = [
        {"t": now - 30 + i, "direction": "up", "from": 2 + i, "to": 3 + i, "reason": "queue wait 0.2 s"}
        for i in range(5)
    ]
    doc = {
        "time": now,
        "queues": {
            "inferpool.online": {"depth": 0, "oldest_age_s": 0.0},
            "inferpool.work": {"depth": 3, "oldest_age_s": 0.05},
        },
        "unacked": 1,
        "unacked_oldest_age_s": 0.01,
        "workers": {f"w{i}@host": {"processes": 2, "busy": 1, "queues": ["inferpool.work"]} for i in range(3)},
        "pool_processes": 6,
        "busy_processes": 3,
        "scaler": {"desired": 6, "actual": 6, "updated": now, "decisions": decisions},
        "ledger": {"accepted": 10, "succeeded": 10, "failed": 0, "in_flight": 0},
    }
    return json.dumps(doc).encode()


def _answer(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


class _PeerServer(asyncio.Protocol):
    """Keep-alive HTTP/1.1 that answers every request at once (or after its ``work`` ms when
    ``honor_work``); as cheap as Python gets, so the server's own CPU does not crowd the generator."""

    honor_work = False

    answers = {
        b"/predict": _answer(b'{"prediction":1}'),
        b"/v1/predict": _answer(b'{"predictions":[1],"model_version":"bench"}'),
        b"/v1/monitoring/status": _answer(_status_doc()),
    }
    not_found = _answer(b'{"detail":"not found"}', "404 Not Found")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end]
            m = _CONTENT_LENGTH.search(head)
            stop = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < stop:
                return
            body, self.buf = self.buf[end + 4 : stop], self.buf[stop:]
            answer = self.answers.get(head.split(b" ", 2)[1].split(b"?", 1)[0], self.not_found)
            work = _WORK.search(body) if self.honor_work else None
            if work and int(work.group(1)) > 0:  # one request at a time per connection: order is kept
                asyncio.get_running_loop().call_later(int(work.group(1)) / 1000, self._write, answer)
            else:
                self.transport.write(answer)

    def _write(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)


async def _serve(honor_work: bool) -> None:
    _PeerServer.honor_work = honor_work
    server = await asyncio.get_running_loop().create_server(_PeerServer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)  # the parent reads the port from here
    async with server:
        await server.serve_forever()


# --- plain peers: the same kind of open-loop schedule, nothing else ------------------------------------------------


def _schedule(rate: float, duration_s: float, mix: str, seed: int) -> list[tuple[float, bytes]]:
    """Poisson arrival times with compat bodies (20 random features and a work value from ``mix``)."""
    rng = random.Random(seed)
    works, weights = zip(*((int(w), float(p)) for w, p in (pair.split(":") for pair in mix.split(","))), strict=True)
    out, t = [], rng.expovariate(rate)
    while t < duration_s:
        body = {"X": [round(rng.gauss(0, 1), 6) for _ in range(20)], "work": rng.choices(works, weights)[0]}
        out.append((t, json.dumps(body).encode()))
        t += rng.expovariate(rate)
    return out


async def _open_loop(schedule: list[tuple[float, bytes]], send) -> dict[str, int]:
    """Fire each request at its time whatever the answers do; count the 200s."""
    loop = asyncio.get_running_loop()
    statuses: list[int] = []
    tasks = set()

    async def one(body: bytes) -> None:
        statuses.append(await send(body))

    t0 = loop.time()
    for t, body in schedule:
        delay = t0 + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    return {"sent": len(schedule), "ok": statuses.count(200)}


async def _aiohttp_peer(url: str, schedule: list[tuple[float, bytes]]) -> dict[str, int]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=PEER_MAX_IN_FLIGHT)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout, headers=headers) as session:

        async def send(body: bytes) -> int:
            try:
                async with session.post("/predict", data=body) as r:
                    await r.read()
                    return r.status
            except (aiohttp.ClientError, TimeoutError):
                return 0

        return await _open_loop(schedule, send)


async def _raw_peer(url: str, schedule: list[tuple[float, bytes]]) -> dict[str, int]:
    from loadtest.http import TRANSPORT_ERRORS, HttpClient

    async with HttpClient(url, timeout_s=PEER_TIMEOUT_S, max_idle=PEER_MAX_IN_FLIGHT) as client:

        async def send(body: bytes) -> int:
            try:
                return (await client.post("/predict", body)).status
            except TRANSPORT_ERRORS:  # TimeoutError is an OSError
                return 0

        return await _open_loop(schedule, send)


def _peer(kind: str, url: str, rate: float, duration_s: float, mix: str, seed: int) -> None:
    schedule = _schedule(rate, duration_s, mix, seed)
    run = _aiohttp_peer if kind == "aiohttp" else _raw_peer
    print(json.dumps(asyncio.run(run(url, schedule))), flush=True)


# --- measuring ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    requests: int
    ok: int
    cpu_s: float
    speed_s: float
    note: str = ""
    startup_s: float | None = None  # CPU of the same command doing nothing (``--help``)
    round: int = 0  # with --repeat: rows of one round are compared with that round's peer

    @property
    def ms_per_request(self) -> float:
        return self.cpu_s / self.requests * 1000 if self.requests else float("nan")

    @property
    def ms_per_request_after_startup(self) -> float | None:
        if self.startup_s is None or not self.requests:
            return None
        return (self.cpu_s - self.startup_s) / self.requests * 1000


SPEED_LOOP = "x = 0\nfor i in range(10_000_000):\n    x += i\n"


def machine_speed() -> float:
    """CPU seconds of ``x += i`` ten million times at module level in plain Python, as FIELD-NOTES quotes it
    (global variables: a loop inside a function runs ~2.5x faster)."""
    code = compile(SPEED_LOOP, "<speed>", "exec")
    t = time.process_time()
    exec(code, {})
    return time.process_time() - t


def run_child(cmd: list[str], *, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> tuple[int, float]:
    """Run ``cmd`` to its end; returns (exit code, CPU seconds user + sys of that process)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen not to wait again
    return proc.returncode, usage.ru_utime + usage.ru_stime


def loadtest_row(name: str, tree: Path, url: str, args: argparse.Namespace, work: Path) -> Row:
    out = work / re.sub(r"\W+", "_", name)
    cmd = [
        sys.executable, "-m", "cli.main", "loadtest", "--url", url, "--rate", f"{args.rate:g}",
        "--duration", f"{args.duration:g}", "--mix", args.mix, "--route", "compat", "--seed", str(args.seed),
        "--out", str(out),
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(tree)}
    speed = machine_speed()
    code, cpu = run_child(cmd, cwd=tree, env=env, stdout=work / f"{out.name}.out", stderr=work / f"{out.name}.err")
    _, startup = run_child(cmd[:4] + ["--help"], cwd=tree, env=env, stdout=work / "help.out", stderr=work / "help.err")
    if code != 0:
        raise RuntimeError(f"{name} exited {code}: {(work / f'{out.name}.err').read_text()[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    lat, lag = s["latency_s"], s["send_lag_s"]["p99"]
    note = "no ok answers"
    if lat["p50"] is not None:
        note = f"p50/p99 {lat['p50'] * 1000:.1f}/{lat['p99'] * 1000:.1f} ms, send lag p99 {lag * 1000:.1f} ms"
    return Row(name, s["sent"], s["ok"], cpu, speed, note, startup)


def peer_row(kind: str, url: str, args: argparse.Namespace, work: Path) -> Row | None:
    env = dict(os.environ)
    if kind == "aiohttp":
        if args.aiohttp_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.aiohttp_path, env.get("PYTHONPATH")]))
        check = subprocess.run([sys.executable, "-c", "import aiohttp"], env=env, capture_output=True)
        if check.returncode != 0:
            return None
    cmd = [
        sys.executable, "-m", "bench.loadgen", "--role", f"peer-{kind}", "--url", url, "--rate", f"{args.rate:g}",
        "--duration", f"{args.duration:g}", "--mix", args.mix, "--seed", str(args.seed),
    ]  # fmt: skip
    speed = machine_speed()
    stdout, stderr = work / f"peer-{kind}.out", work / f"peer-{kind}.err"
    code, cpu = run_child(cmd, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
    if code != 0:
        raise RuntimeError(f"peer {kind} exited {code}: {stderr.read_text()[-2000:]}")
    counts = json.loads(stdout.read_text().strip().splitlines()[-1])
    label = "plain aiohttp ClientSession" if kind == "aiohttp" else "plain inferpool HttpClient"
    return Row(label, counts["sent"], counts["ok"], cpu, speed)


def checkout(ref: str, into: Path) -> Path:
    """The tree of git revision ``ref`` (git archive: read-only for the repository)."""
    tar = into / "baseline.tar"
    with tar.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], stdout=f, check=True)
    tree = into / "baseline"
    with tarfile.open(tar) as t:
        t.extractall(tree, filter="data")
    return tree


@contextlib.contextmanager
def peer_server(honor_work: bool):
    cmd = [sys.executable, "-m", "bench.loadgen", "--role", "server"] + (["--server-work"] if honor_work else [])
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait(10)


def _peer_of(rows: list[Row], round_: int) -> Row | None:
    """The round's aiohttp row, else its plain HttpClient row: what the generator is compared with."""
    mine = [r for r in rows if r.round == round_]
    return next((r for r in mine if "aiohttp" in r.name), None) or next((r for r in mine if "plain" in r.name), None)


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    peer = _peer_of(rows, 0)
    answers = "after each request's work ms" if args.server_work else "at once"
    print(f"\nCPU per request at {args.rate:g} req/s for {args.duration:g} s, mix {args.mix}, route compat, "
          f"peer server answering {answers}")  # fmt: skip
    print(f"(ratio to: {peer.name if peer else '-'}; speed: s for a 10M-iteration Python loop just before each row)\n")
    head = ("generator", "requests", "ok", "CPU s", "CPU ms/request", "ratio to peer", "start-up CPU s",
            "ms/request after start-up", "speed s", "notes")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        peer = _peer_of(rows, r.round)
        ratio = f"{r.ms_per_request / peer.ms_per_request:.2f}x" if peer else "-"
        after = r.ms_per_request_after_startup
        cells = (r.name, f"{r.requests:,}", f"{r.ok:,}", f"{r.cpu_s:.2f}", f"{r.ms_per_request:.2f}", ratio,
                 "-" if r.startup_s is None else f"{r.startup_s:.2f}", "-" if after is None else f"{after:.2f}",
                 f"{r.speed_s:.2f}", r.note)  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def bench(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp, peer_server(args.server_work) as url:
        work = Path(tmp)
        baseline = checkout(args.baseline, work) if args.baseline else None
        for n in range(args.repeat):
            if baseline is not None:
                row = loadtest_row(f"inferpool loadtest @{args.baseline}", baseline, url, args, work)
                rows.append(replace(row, round=n))
            rows.append(replace(loadtest_row("inferpool loadtest (this tree)", REPO, url, args, work), round=n))
            for kind in ("raw", "aiohttp"):
                row = peer_row(kind, url, args, work)
                if row is not None:
                    rows.append(replace(row, round=n))
                elif kind == "aiohttp" and n == 0:
                    print("aiohttp is not importable: no aiohttp row (see --aiohttp-path)", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=90.0, help="req/s (default %(default)g)")
    p.add_argument("--duration", type=float, default=20.0, help="s per row (default %(default)g)")
    p.add_argument("--mix", default=DEFAULT_MIX, help="work mix, as for inferpool loadtest")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--baseline", metavar="REF", default=None, help="also measure the loadtest of this git revision")
    p.add_argument("--repeat", type=int, default=1, help="measure every row this many times")
    p.add_argument(
        "--server-work", action="store_true", help="the peer server answers after each request's work ms (more open)"
    )
    p.add_argument("--aiohttp-path", default=None, help="a directory holding aiohttp, for its peer only")
    p.add_argument("--role", choices=["bench", "server", "peer-raw", "peer-aiohttp"], default="bench",
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "server":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.server_work))
        return 0
    if args.role.startswith("peer-"):
        _peer(args.role.removeprefix("peer-"), args.url, args.rate, args.duration, args.mix, args.seed)
        return 0
    print_table(bench(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
