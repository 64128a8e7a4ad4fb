"""The load generator against the real stack (redis-server, Celery workers, uvicorn API on 127.0.0.1).

Light runs share the session ``stack``; runs that build a backlog get a stack of their own
(``stack_factory``) so no other test waits behind it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack

from loadtest import LoadtestConfig, plot, run_loadtest
from loadtest.config import Route
from loadtest.mix import parse_mix
from loadtest.profile import Arrivals, parse_profile
from loadtest.report import CHARTS, OVERVIEW_PNG

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
API_SECRET = "loadtest-secret"


def run(url: str, out: Path, **kw: Any) -> dict[str, Any]:
    """A short, reproducible run: uniform arrivals so each second holds exactly its rate."""
    base: dict[str, Any] = {
        "rate": 30.0,
        "duration_s": 4.0,
        "arrivals": Arrivals.UNIFORM,
        "mix": parse_mix("0:1"),
        "seed": 1,
        "out_dir": out,
        "progress": False,
    }
    assert run_loadtest(LoadtestConfig(url=url, **(base | kw))) == out
    return json.loads((out / "summary.json").read_text())


def accounted(s: dict[str, Any]) -> None:
    assert s["accounting"]["balanced"], s["accounting"]
    assert s["sent"] == s["ok"] + s["errors_total"] + s["timeouts"]
    assert s["offered"] == s["sent"] + s["dropped"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def slow_stack(stack_factory: Callable[..., Stack]) -> Stack:
    """A stack of its own with one work process and API keys on: 300 ms requests saturate it at ~3 req/s."""
    # The API gives up on an answer after 2 s, like the client, so shutdown does not wait on stale requests.
    st = stack_factory(INFERPOOL_API_KEYS=f"lt:{API_SECRET}", INFERPOOL_PREDICT_TIMEOUT_S="2")
    st.start_worker("online", concurrency=1)
    st.start_worker("work", concurrency=1)
    st.start_api()
    return st


@pytest.mark.timeout(60)
def test_keeps_the_target_rate_and_accounts_for_every_request(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "r"
    s = run(stack.url, out, mix=parse_mix("0:0.8,20:0.2"))
    accounted(s)
    assert s["offered"] == 120  # uniform arrivals: exactly rate x duration
    assert s["ok"] == 120, s["errors"]
    assert s["offered_rate_rps"] == pytest.approx(30, rel=0.05)
    assert s["achieved_rate_rps"] == pytest.approx(30, rel=0.1)
    assert s["latency_work0_s"]["count"] > 0 and s["latency_work0_s"]["p50"] < 1.0
    requests = read_rows(out / "requests.csv")
    assert len(requests) == 120 and {r["status"] for r in requests} == {"200"}
    # Latency runs from the scheduled time: it includes the generator's send lag.
    assert all(float(r["latency_s"]) >= float(r["sent_s"]) - float(r["scheduled_s"]) for r in requests)
    seconds = read_rows(out / "seconds.csv")
    assert [int(r["offered"]) for r in seconds[:4]] == [30, 30, 30, 30]
    assert sum(int(r["completed"]) for r in seconds) == 120
    system = read_rows(out / "system.csv")
    assert len(system) >= 4 and all(r["ok"] == "1" for r in system)
    assert all(int(r["workers"]) >= 2 and int(r["pool_processes"]) >= 2 for r in system)


@pytest.mark.timeout(90)
def test_offered_rate_holds_when_the_server_is_slow(slow_stack: Stack, tmp_path: Path) -> None:
    """Every request asks for 300 ms of work on one process (~3 req/s): an open loop still offers 30 req/s,
    and what cannot be served shows up as timeouts or 429s, never as a lower offered rate."""
    out = tmp_path / "slow"
    s = run(slow_stack.url, out, mix=parse_mix("300:1"), timeout_s=2.0, api_key=API_SECRET)
    accounted(s)
    assert "401" not in s["errors"]  # X-API-Key was sent
    assert s["offered_rate_rps"] == pytest.approx(30, rel=0.05)
    assert s["sent"] == 120 and s["dropped"] == 0
    assert s["ok"] > 0  # some were served...
    assert s["achieved_rate_rps"] < 10  # ...at the server's pace, not the client's
    assert s["timeouts"] + s["errors_total"] > 60
    assert s["send_lag_s"]["p99"] < 0.05  # and sent on schedule, not held back by slow answers
    offered = [int(r["offered"]) for r in read_rows(out / "seconds.csv")[:4]]
    assert offered == [30, 30, 30, 30]
    system = read_rows(out / "system.csv")
    assert max(float(r["queue_depth"] or 0) for r in system) > 0  # the backlog was seen


@pytest.mark.timeout(90)
def test_arrivals_over_the_cap_are_dropped_not_delayed(slow_stack: Stack, tmp_path: Path) -> None:
    s = run(slow_stack.url, tmp_path / "cap", duration_s=3.0, mix=parse_mix("300:1"), max_in_flight=5,
            timeout_s=2.0, api_key=API_SECRET)  # fmt: skip
    accounted(s)
    assert s["offered"] == 90 and s["sent"] <= 5 + 3 * 10  # at most the cap plus what freed up
    assert s["dropped"] >= 50
    assert s["send_lag_s"]["p99"] < 0.05


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", [Route.COMPAT, Route.JOBS])
def test_other_routes(stack: Stack, tmp_path: Path, route: Route) -> None:
    s = run(stack.url, tmp_path / route.value, route=route, duration_s=2.0, rate=20.0, mix=parse_mix("0:0.5,20:0.5"))
    accounted(s)
    assert s["ok"] == s["sent"] == 40, s["errors"]


@pytest.mark.timeout(60)
def test_plot_writes_pngs_and_a_report_that_links_them(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "plot"
    run(stack.url, out, duration_s=3.0, rate=20.0, profile=parse_profile("step"), mix=parse_mix("0:0.7,20:0.3"))
    report = plot(out)
    assert report == out / "report.html"
    html = report.read_text()
    for name in [*CHARTS, OVERVIEW_PNG]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
        assert f'src="{name}"' in html
    assert "sent = ok + errors + timeouts" in html
    phases = json.loads((out / "phases.json").read_text())
    assert [p["name"] for p in phases["phases"]] == ["before", "step", "after"]


@pytest.mark.timeout(60)
def test_a_failing_status_endpoint_is_tolerated(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "nostatus"
    s = run(stack.url, out, duration_s=2.0, status_url=f"{stack.url}/v1/monitoring/no-such-thing")
    accounted(s)
    assert s["ok"] == 60 and s["status_failures"] == s["status_samples"] >= 2
    plot(out)  # the charts still draw, saying there were no status samples
    assert (out / "queue.png").read_bytes().startswith(PNG_MAGIC)
