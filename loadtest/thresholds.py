"""``--fail-on``: pass/fail thresholds on a load test's summary, as k6 has them, so a run can gate a pipeline.

A threshold list is comma-separated ``METRIC OP VALUE`` (spaces allowed), e.g. ``"p99<300ms,errors<1%"``:

* ``p50``, ``p95``, ``p99``: latency of the requests answered OK, timed from their scheduled send time;
  the value takes a unit, ``ms`` or ``s``. With no OK answer at all a latency threshold is missed.
* ``errors`` (failed answers: HTTP errors and connection failures), ``timeouts`` (past ``--timeout``):
  a count (``errors<=5``) or a share of the requests sent (``errors<1%``).
* ``dropped`` (arrivals not sent because ``--max-in-flight`` requests were open): a count, or a share of
  the requests offered.
* ``OP``: ``<``, ``<=``, ``>``, ``>=``, ``==``.

``inferpool loadtest`` exits with ``THRESHOLDS_MISSED_EXIT`` (99, k6's code) when one is missed and
records every check in summary.json under ``thresholds``.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.errors import SpecError
from loadtest.records import SUMMARY_JSON, write_json

THRESHOLDS_MISSED_EXIT = 99
LATENCIES = ("p50", "p95", "p99")
COUNTS = ("errors", "timeouts", "dropped")
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_UNIT_S = {"ms": 0.001, "s": 1.0}
_PATTERN = re.compile(r"^\s*([a-z0-9]+)\s*(<=|>=|==|<|>)\s*([0-9]*\.?[0-9]+)\s*(ms|s|%)?\s*$")


@dataclass(frozen=True)
class Threshold:
    metric: str
    op: str
    value: float  # seconds for a latency, a fraction for a share, else a count
    share: bool = False

    def __str__(self) -> str:
        if self.metric in LATENCIES:
            return f"{self.metric}{self.op}{self.value * 1000:g}ms"
        return f"{self.metric}{self.op}{self.value * 100:g}%" if self.share else f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Check:
    threshold: Threshold
    observed: float | None  # same unit as the threshold's value; None when there is nothing to measure
    passed: bool

    def describe(self) -> str:
        t = self.threshold
        if self.observed is None:
            seen = "no data"
        elif t.metric in LATENCIES:
            seen = f"{self.observed * 1000:.1f} ms"
        elif t.share:
            seen = f"{self.observed * 100:.2f} %"
        else:
            seen = f"{self.observed:g}"
        return f"{'ok  ' if self.passed else 'MISS'} {t}  (observed {seen})"

    def to_json(self) -> dict[str, Any]:
        return {"threshold": str(self.threshold), "observed": self.observed, "passed": self.passed}


def parse_thresholds(text: str) -> tuple[Threshold, ...]:
    """``"p99<300ms,errors<1%"`` -> thresholds; SpecError names the part that cannot be read and why."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _PATTERN.match(part)
        if not m:
            raise SpecError(f"--fail-on {part.strip()!r}: expected METRIC OP VALUE, e.g. p99<300ms or errors<1%")
        metric, op, number, unit = m.groups()
        value = float(number)
        if metric in LATENCIES:
            if unit not in _UNIT_S:
                raise SpecError(f"--fail-on {part.strip()!r}: a latency needs a unit, ms or s (p99<300ms)")
            out.append(Threshold(metric, op, value * _UNIT_S[unit]))
        elif metric in COUNTS:
            if unit not in (None, "%"):
                raise SpecError(f"--fail-on {part.strip()!r}: {metric} is a count (5) or a share (1%), not a time")
            out.append(Threshold(metric, op, value / 100 if unit == "%" else value, share=unit == "%"))
        else:
            raise SpecError(f"--fail-on {part.strip()!r}: unknown metric {metric!r} ({', '.join(LATENCIES + COUNTS)})")
    if not out:
        raise SpecError("--fail-on: no threshold given")
    return tuple(out)


def observe(t: Threshold, summary: dict[str, Any]) -> float | None:
    """The summary's figure for ``t``, in ``t``'s unit."""
    if t.metric in LATENCIES:
        return summary.get("latency_s", {}).get(t.metric)
    count = {"errors": summary.get("errors_total", 0)}.get(t.metric, summary.get(t.metric, 0))
    if not t.share:
        return float(count)
    whole = summary.get("offered" if t.metric == "dropped" else "sent", 0)
    return count / whole if whole else None


def evaluate(thresholds: Sequence[Threshold], summary: dict[str, Any]) -> list[Check]:
    checks = []
    for t in thresholds:
        seen = observe(t, summary)
        checks.append(Check(t, seen, seen is not None and OPS[t.op](seen, t.value)))
    return checks


def check_run(out_dir: Path, thresholds: Sequence[Threshold]) -> list[Check]:
    """Evaluate a finished run's summary.json and record the checks in it."""
    path = out_dir / SUMMARY_JSON
    summary = json.loads(path.read_text())
    checks = evaluate(thresholds, summary)
    summary["thresholds"] = [c.to_json() for c in checks]
    write_json(path, summary)
    return checks
