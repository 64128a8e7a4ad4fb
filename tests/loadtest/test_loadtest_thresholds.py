"""``--fail-on`` thresholds: parsing and evaluation are pure; one CLI run on a tiny summary checks the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main as cli
from loadtest import SpecError
from loadtest import records as rec
from loadtest.thresholds import THRESHOLDS_MISSED_EXIT, Threshold, evaluate, parse_thresholds

SUMMARY = {
    "offered": 1000,
    "sent": 990,
    "ok": 960,
    "errors_total": 20,
    "timeouts": 10,
    "dropped": 10,
    "latency_s": {"p50": 0.012, "p95": 0.180, "p99": 0.420},
}


def test_parse_units_ops_and_shares():
    assert parse_thresholds("p99<300ms, p50 <= 0.02s,errors<1%,timeouts==0,dropped>=2") == (
        Threshold("p99", "<", 0.3),
        Threshold("p50", "<=", 0.02),
        Threshold("errors", "<", 0.01, share=True),
        Threshold("timeouts", "==", 0.0),
        Threshold("dropped", ">=", 2.0),
    )
    assert [str(t) for t in parse_thresholds("p95<1.5s,errors<0.5%")] == ["p95<1500ms", "errors<0.5%"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99<300", "needs a unit"),
        ("errors<3ms", "count"),
        ("p42<1s", "unknown metric"),
        ("p99 300ms", "METRIC OP VALUE"),
        ("p99=<300ms", "METRIC OP VALUE"),
        (" , ", "no threshold"),
    ],
)
def test_parse_errors_name_the_part(text, message):
    with pytest.raises(SpecError, match=message):
        parse_thresholds(text)


def test_evaluate_against_a_summary():
    checks = evaluate(parse_thresholds("p50<20ms,p99<300ms,errors<1%,errors<=20,timeouts<2%,dropped<1%"), SUMMARY)
    assert [c.passed for c in checks] == [True, False, False, True, True, False]
    errors_share = checks[2]
    assert errors_share.observed == pytest.approx(20 / 990)  # errors are a share of the requests sent
    assert checks[5].observed == pytest.approx(10 / 1000)  # dropped, of the requests offered
    assert checks[1].describe() == "MISS p99<300ms  (observed 420.0 ms)"


def test_nothing_measured_misses():
    empty = {"offered": 0, "sent": 0, "errors_total": 0, "timeouts": 0, "dropped": 0, "latency_s": {"p99": None}}
    assert [c.passed for c in evaluate(parse_thresholds("p99<1s,errors<1%,errors==0"), empty)] == [False, False, True]


@pytest.mark.parametrize(
    ("fail_on", "passed", "code"),
    [("p99<300ms,errors<1%", [False, False], THRESHOLDS_MISSED_EXIT), ("p99<1s,errors<=20", [True, True], 0)],
)
def test_cli_exit_code_follows_the_thresholds(fail_on, passed, code, tmp_path, monkeypatch, capsys):
    def fake_run(config) -> Path:  # a finished run: its summary only
        out = config.resolved_out_dir()
        out.mkdir(parents=True)
        rec.write_json(out / rec.SUMMARY_JSON, SUMMARY)
        return out

    monkeypatch.setattr("loadtest.run_loadtest", fake_run)
    out = tmp_path / "run"
    argv = ["loadtest", "--url", "http://127.0.0.1:1", "--out", str(out), "--fail-on", fail_on]
    assert cli.main(argv) == code
    recorded = json.loads((out / rec.SUMMARY_JSON).read_text())["thresholds"]
    assert [t["passed"] for t in recorded] == passed
    assert ("thresholds missed" in capsys.readouterr().err) == bool(code)


def test_cli_refuses_a_bad_threshold_before_running(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["loadtest", "--url", "http://127.0.0.1:1", "--fail-on", "p99<300"])
    assert exit_info.value.code == 2 and "needs a unit" in capsys.readouterr().err
