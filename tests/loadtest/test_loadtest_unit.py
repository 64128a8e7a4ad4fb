"""Pure logic of the load generator: profiles, mix, aggregation, flags. No network, no clock."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from loadtest import SpecError, add_loadtest_arguments, config_from_args
from loadtest import records as rec
from loadtest.config import Features, Route
from loadtest.http import Response
from loadtest.mix import parse_mix
from loadtest.profile import Arrivals, ProfileKind, build_profile, parse_profile
from loadtest.records import RequestRecord, summarize_phases
from loadtest.routes import N_FEATURES, Payloads
from loadtest.runner import phase_names
from loadtest.sampler import StatusSampler, parse_status


def per_second_counts(times: np.ndarray, duration_s: float) -> np.ndarray:
    return np.bincount(times.astype(int), minlength=int(np.ceil(duration_s)))


# --- profiles ---------------------------------------------------------------------------------------------------


def test_constant_uniform_gives_the_rate_every_second() -> None:
    profile = build_profile(parse_profile("constant"), 30, 10)
    times = profile.arrival_times(Arrivals.UNIFORM, np.random.default_rng(0))
    assert len(times) == 300
    assert per_second_counts(times, 10).tolist() == [30] * 10
    assert np.all(np.diff(times) > 0)


def test_step_triples_the_middle_third() -> None:
    profile = build_profile(parse_profile("step"), 10, 30)
    assert [p.name for p in profile.phases] == ["before", "step", "after"]
    assert [profile.rate_at(t) for t in (5, 15, 25)] == [10, 30, 10]
    counts = per_second_counts(profile.arrival_times(Arrivals.UNIFORM, np.random.default_rng(0)), 30)
    assert counts[:10].tolist() == [10] * 10
    assert counts[10:20].tolist() == [30] * 10
    assert counts[20:].tolist() == [10] * 10


def test_step_factor_and_spike_burst() -> None:
    assert build_profile(parse_profile("step:4"), 10, 30).rate_at(15) == 40
    spike = build_profile(parse_profile("spike"), 10, 40)
    burst = [p for p in spike.phases if p.name == "spike"]
    assert len(burst) == 1 and burst[0].start_s == 16 and burst[0].end_s == 20 and burst[0].rate_start == 50
    counts = per_second_counts(spike.arrival_times(Arrivals.UNIFORM, np.random.default_rng(0)), 40)
    assert counts[16:20].tolist() == [50] * 4
    assert counts[:16].tolist() == [10] * 16 and counts[20:].tolist() == [10] * 20


def test_ramp_rises_linearly_and_counts_match_the_integral() -> None:
    profile = build_profile(parse_profile("ramp"), 10, 20)
    assert profile.rate_at(0) == 10 and profile.rate_at(10) == pytest.approx(20)
    times = profile.arrival_times(Arrivals.UNIFORM, np.random.default_rng(0))
    counts = per_second_counts(times, 20)
    for s in range(20):
        assert abs(counts[s] - profile.expected_between(s, s + 1)) <= 1
    assert len(times) == pytest.approx(profile.expected_between(0, 20), abs=1)


def test_poisson_matches_the_rate_on_average() -> None:
    profile = build_profile(parse_profile("step"), 100, 30)
    times = profile.arrival_times(Arrivals.POISSON, np.random.default_rng(1))
    counts = per_second_counts(times, 30)
    # 1,000 expected per 10 s phase: sd ~32, so 10% is over 3 sd.
    assert counts[:10].sum() == pytest.approx(1000, rel=0.1)
    assert counts[10:20].sum() == pytest.approx(3000, rel=0.1)
    assert counts[20:].sum() == pytest.approx(1000, rel=0.1)
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < 30


def test_csv_profile_holds_each_rate_until_the_next_row(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("second,rate\n0,5\n3,20\n4,20\n6,0\n")
    profile = build_profile(parse_profile(f"csv:{path}"), 999, None)
    assert profile.duration_s == 7  # last row holds for one second
    assert [profile.rate_at(t) for t in range(7)] == [5, 5, 5, 20, 20, 20, 0]
    assert len(profile.phases) == 3  # equal neighbours merged
    counts = per_second_counts(profile.arrival_times(Arrivals.UNIFORM, np.random.default_rng(0)), 7)
    assert counts.tolist() == [5, 5, 5, 20, 20, 20, 0]
    assert build_profile(parse_profile(f"csv:{path}"), 1, 10).rate_at(9) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus", "unknown kind"),
        ("csv", "needs a path"),
        ("step:x", "not a number"),
        ("constant:2", "takes no factor"),
    ],
)
def test_bad_profiles_say_why(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_profile(text)


def test_bad_csv_profile_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("0,5\n2,oops\n")
    with pytest.raises(SpecError, match="line 2"):
        build_profile(parse_profile(f"csv:{path}"), 1, None)
    with pytest.raises(SpecError, match="cannot read"):
        build_profile(parse_profile(f"csv:{tmp_path / 'missing.csv'}"), 1, None)


# --- mix ----------------------------------------------------------------------------------------------------------


def test_mix_parses_and_samples_in_proportion() -> None:
    mix = parse_mix("0:0.6,50:0.25,200:0.15")
    assert [(e.work_ms, e.probability) for e in mix.entries] == [(0, 0.6), (50, 0.25), (200, 0.15)]
    counts = Counter(mix.sample(np.random.default_rng(0), 100_000).tolist())
    assert set(counts) == {0, 50, 200}
    assert counts[0] / 1e5 == pytest.approx(0.6, abs=0.01)
    assert counts[50] / 1e5 == pytest.approx(0.25, abs=0.01)
    assert counts[200] / 1e5 == pytest.approx(0.15, abs=0.01)


def test_mix_accepts_hand_rounding_and_normalises() -> None:
    mix = parse_mix(" 0:0.33, 10:0.33 ,20:0.33 ")
    assert sum(e.probability for e in mix.entries) == pytest.approx(1)
    assert str(parse_mix("7:1")) == "7:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("0-0.5", "has no ':'"),
        ("abc:1", "not a whole number"),
        ("10:x", "not a number"),
        ("-5:1", "negative"),
        ("0:0.5,50:0.2", "sum to 0.7"),
        ("0:1.5", r"must be in \(0, 1\]"),
        ("0:0", r"must be in \(0, 1\]"),
        ("0:0.5,0:0.5", "appears twice"),
    ],
)
def test_bad_mix_strings_say_why(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_mix(text)


def test_bad_mix_flag_is_an_argparse_error_naming_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_loadtest_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--url", "http://127.0.0.1:1", "--mix", "0:0.5,50:0.2"])
    assert "probabilities sum to 0.7, not 1" in capsys.readouterr().err


# --- flags --------------------------------------------------------------------------------------------------------


def test_flags_defaults_and_config(monkeypatch) -> None:
    monkeypatch.setenv("INFERPOOL_API_KEY", "s3cret")  # never on argv (loadtest.client_auth)
    parser = argparse.ArgumentParser()
    add_loadtest_arguments(parser)
    config = config_from_args(parser.parse_args(["--url", "http://127.0.0.1:8000/"]))
    assert config.rate == 30 and config.build_profile().duration_s == 40
    assert str(config.mix) == "0:0.6,50:0.25,200:0.15"
    assert config.profile.kind is ProfileKind.CONSTANT and config.route is Route.PREDICT
    assert config.arrivals is Arrivals.POISSON and config.max_in_flight == 512 and config.timeout_s == 10
    assert config.resolved_status_url == "http://127.0.0.1:8000/v1/monitoring/status"
    assert config.resolved_out_dir().parent == Path("results")
    args = ["--url", "http://127.0.0.1:8000", "--profile", "spike:8", "--route", "jobs"]
    config = config_from_args(parser.parse_args(args))
    assert config.route is Route.JOBS and config.profile.factor == 8 and config.api_key == "s3cret"
    assert "s3cret" not in repr(config) and "s3cret" not in json.dumps(config.describe())


def test_compat_route_refuses_several_rows() -> None:
    parser = argparse.ArgumentParser()
    add_loadtest_arguments(parser)
    with pytest.raises(SpecError, match="one row"):
        config_from_args(parser.parse_args(["--url", "http://127.0.0.1:1", "--route", "compat", "--rows", "4"]))


def test_payloads_have_the_documented_shape() -> None:
    rng = np.random.default_rng(0)
    body = json.loads(Payloads(Route.PREDICT, 3, Features.RANDOM, rng).body(50))
    assert body["work_ms"] == 50 and len(body["instances"]) == 3
    assert all(len(row) == N_FEATURES for row in body["instances"])
    compat = json.loads(Payloads(Route.COMPAT, 1, Features.FIXED, rng).body(0))
    assert compat["work"] == 0 and len(compat["X"]) == N_FEATURES
    assert compat["X"] == json.loads(Payloads(Route.COMPAT, 1, Features.FIXED, rng).body(0))["X"]


# --- aggregation --------------------------------------------------------------------------------------------------


def sample_records() -> list[RequestRecord]:
    """Ten requests over 3 s: 6 ok (one answered in the next second), a 429, an error, a timeout, a drop."""
    return [
        RequestRecord(0, 0.1, 0.1, 0.010, "200", 0, "a"),
        RequestRecord(1, 0.5, 0.5, 0.020, "200", 50, "a"),
        RequestRecord(2, 0.9, 0.9, 0.300, "200", 200, "a"),  # completes in second 1
        RequestRecord(3, 1.2, 1.2, 0.005, "429", 0, "a"),
        RequestRecord(4, 1.4, 1.4, 0.030, "200", 0, "b"),
        RequestRecord(5, 1.6, None, None, "dropped", 0, "b"),
        RequestRecord(6, 2.0, 2.0, 1.000, "timeout", 50, "b"),
        RequestRecord(7, 2.2, 2.2, 0.001, "error", 0, "b"),
        RequestRecord(8, 2.4, 2.4, 0.040, "200", 0, "b"),
        RequestRecord(9, 2.6, 2.6, 0.500, "200", 0, "b"),  # completes in second 3
    ]


def test_per_second_rows_add_up_to_the_totals() -> None:
    records = sample_records()
    rows = rec.per_second(records)
    summary = rec.summarize(records, load_duration_s=3.0)
    assert [r.second for r in rows] == [0, 1, 2, 3]  # an answer in second 3 extends the table
    assert [r.offered for r in rows] == [3, 3, 4, 0]
    assert [r.completed for r in rows] == [2, 2, 1, 1]
    assert sum(r.offered for r in rows) == summary["offered"] == 10
    assert sum(r.sent for r in rows) == summary["sent"] == 9
    assert sum(r.ok for r in rows) == sum(r.completed for r in rows) == summary["ok"] == 6
    assert sum(r.errors for r in rows) == summary["errors_total"] == 2
    assert sum(r.timeouts for r in rows) == summary["timeouts"] == 1
    assert sum(r.dropped for r in rows) == summary["dropped"] == 1
    assert summary["errors"] == {"429": 1, "error": 1}
    assert summary["accounting"] == {"sent": 9, "ok_errors_timeouts": 9, "balanced": True}
    assert rows[1].error_rate == pytest.approx(1 / 2) and rows[2].error_rate == pytest.approx(2 / 4)
    assert rows[3].error_rate is None and rows[3].p50_s is None
    assert rows[0].p99_work0_s == pytest.approx(0.010)  # the work=50 and work=200 answers are left out


def test_summary_rates_and_percentiles() -> None:
    summary = rec.summarize(sample_records(), load_duration_s=3.0)
    assert summary["offered_rate_rps"] == pytest.approx(10 / 3)
    assert summary["achieved_rate_rps"] == pytest.approx(6 / 3.1)  # until the last answer, at 3.1 s
    ok = [0.010, 0.020, 0.300, 0.030, 0.040, 0.500]
    assert summary["latency_s"]["p50"] == pytest.approx(float(np.percentile(ok, 50)))
    assert summary["latency_s"]["count"] == 6
    assert summary["latency_work0_s"]["count"] == 4
    assert summary["latency_work0_s"]["max"] == pytest.approx(0.500)
    assert summary["error_rate"] == pytest.approx(3 / 9)


def test_written_csvs_round_trip(tmp_path: Path) -> None:
    records = sample_records()
    rec.write_requests(tmp_path / rec.REQUESTS_CSV, list(reversed(records)))
    rec.write_seconds(tmp_path / rec.SECONDS_CSV, rec.per_second(records))
    with (tmp_path / rec.REQUESTS_CSV).open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "scheduled_s", "sent_s", "latency_s", "status", "work_ms", "phase"]
    assert [r["id"] for r in rows] == [str(i) for i in range(10)]
    assert rows[5]["status"] == "dropped" and rows[5]["sent_s"] == "" and rows[5]["latency_s"] == ""
    seconds = rec.read_csv(tmp_path / rec.SECONDS_CSV)
    assert seconds["offered"] == [3, 3, 4, 0] and seconds["p50_s"][3] is None


def test_status_document_is_summed_and_decisions_of_this_run_kept() -> None:
    doc = {
        "queues": {"a": {"depth": 3, "oldest_age_s": 0.5}, "b": {"depth": 4, "oldest_age_s": 1.5}},
        "unacked": 2,
        "unacked_oldest_age_s": 0.2,
        "workers": {"w1": {"processes": 2, "busy": 1}, "w2": {"processes": 3, "busy": 3}},
        "pool_processes": 5,
        "scaler": {
            "desired": 6,
            "actual": 5,
            "decisions": [
                {"t": 990.0, "direction": "down", "reason": "an earlier run's", "from": 5, "to": 4},
                {"t": 1005.0, "direction": "up", "reason": "wait 0.4 s", "from": 4, "to": 5},
            ],
        },
    }
    sample, decisions = parse_status(doc, t_s=7.0, start_epoch=1000.0)
    assert (sample.queue_depth, sample.oldest_age_s, sample.unacked) == (7, 1.5, 2)
    assert (sample.pool_processes, sample.workers, sample.busy, sample.scaler_desired) == (5, 2, 4, 6)
    assert decisions == [rec.Decision(5.0, 1005.0, "up", 4, 5, "wait 0.4 s")]
    empty, none = parse_status({"scaler": {"desired": None}}, 1.0, 0.0)
    assert empty.ok and empty.queue_depth is None and empty.scaler_desired is None and none == []


def test_sampler_deduplicates_decisions_and_survives_failures() -> None:
    decision = {"t": 1002.0, "direction": "down", "reason": "idle", "from": 3, "to": 2}
    answers = [
        Response(200, orjson.dumps({"scaler": {"desired": 2, "decisions": [decision]}})),
        Response(503, b'{"detail": "redis down"}'),
        Response(200, b"not json"),
        ConnectionRefusedError("refused"),
        TimeoutError(),
        Response(200, orjson.dumps({"scaler": {"desired": 2, "decisions": [decision, {**decision, "t": 1003.0}]}})),
    ]
    paths: list[str] = []

    class FakeClient:
        async def get(self, path: str, *, timeout: float | None = None) -> Response:
            paths.append(path)
            answer = answers[len(paths) - 1]
            if isinstance(answer, BaseException):
                raise answer
            return answer

    async def sample_all() -> StatusSampler:
        sampler = StatusSampler("http://127.0.0.1:1/v1/monitoring/status?x=1", start_epoch=1000.0, clock=lambda: 0.0)
        for _ in answers:
            await sampler.sample(FakeClient())
        return sampler

    sampler = asyncio.run(sample_all())
    assert [s.ok for s in sampler.samples] == [True, False, False, False, False, True]
    assert sorted(d.t_s for d in sampler.decisions.values()) == [2.0, 3.0]
    assert paths == ["/v1/monitoring/status?x=1"] * len(answers)


def test_phase_names_match_phase_at() -> None:
    profile = build_profile(parse_profile("spike"), 10, 40)
    times = np.array([0.0, 15.999, 16.0, 19.5, 20.0, 39.99, 40.0])
    assert phase_names(profile, times) == [profile.phase_at(t).name for t in times]


def test_done_time_counts_from_the_schedule() -> None:
    r = RequestRecord(0, scheduled_s=1.0, sent_s=1.5, latency_s=0.75, status="200", work_ms=0, phase="a")
    assert r.done_s == 1.75  # latency runs from the scheduled time, send lag included
    assert RequestRecord(1, 2.0, None, None, "dropped", 0, "a").done_s is None


def test_phase_summary_counts_whole_phases_and_times_them_after_they_settle():
    def rec(i: int, t: float, lat: float, status: str, work: int, phase: str) -> RequestRecord:
        return RequestRecord(i, t, t, lat, status, work, phase)

    records = [
        rec(0, 0.5, 2.0, "200", 0, "before"),  # slow, but inside the phase's first 5 s
        rec(1, 6.0, 0.010, "200", 0, "before"),
        rec(2, 7.0, 0.210, "200", 200, "before"),
        rec(3, 10.0, 0.020, "429", 0, "step"),
        rec(4, 16.0, 0.030, "200", 0, "step"),
    ]
    before, step = summarize_phases(records)
    assert (before["phase"], before["requests"], before["errors"]) == ("before", 3, 0)
    assert before["settled_latency_s"]["count"] == 2 and before["settled_latency_s"]["max"] == 0.210
    assert before["settled_latency_work0_s"]["max"] == 0.010
    assert (step["phase"], step["start_s"], step["errors"], step["settled_latency_s"]["count"]) == ("step", 10.0, 1, 1)
