"""Charts and an HTML report from a results directory: ``plot(results_dir) -> report.html``.

Uses matplotlib's Agg canvas directly (no pyplot, no display). Every chart
shares one x axis, seconds since the run started, with the profile's phases
shaded; ``overview.png`` stacks them all.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from loadtest import records as rec

REPORT_HTML = "report.html"
OVERVIEW_PNG = "overview.png"
CHART_SIZE_IN = (11.0, 3.6)
DPI = 110
MAX_SHADED_PHASES = 12
PHASE_COLOURS = ("#4c72b0", "#dd8452")
UP_COLOUR, DOWN_COLOUR = "#2a9d40", "#c03030"
# Draw the timeout line only once p99 comes within this fraction of it.
TIMEOUT_LINE_FRACTION = 0.3
MAX_DECISION_LABELS = 20
STEPS = "steps-mid"  # per-second values drawn as one flat step across their second


@dataclass
class RunData:
    """A results directory read back; CSV columns as lists (None for empty cells)."""

    seconds: dict[str, list[Any]]
    system: dict[str, list[Any]]
    decisions: dict[str, list[Any]]
    phases: dict[str, Any]
    summary: dict[str, Any]
    x_max: float = field(init=False)

    def __post_init__(self) -> None:
        ends = [float(self.phases.get("duration_s") or 0.0)]
        ends += [s + 1 for s in self.seconds.get("second", [])]
        ends += [t for t in self.system.get("t_s", []) if t is not None]
        self.x_max = max(ends) if ends else 1.0

    @classmethod
    def load(cls, d: Path) -> RunData:
        def js(name: str) -> dict[str, Any]:
            p = d / name
            return json.loads(p.read_text()) if p.exists() else {}

        return cls(
            seconds=rec.read_csv(d / rec.SECONDS_CSV),
            system=rec.read_csv(d / rec.SYSTEM_CSV),
            decisions=rec.read_csv(d / rec.DECISIONS_CSV),
            phases=js(rec.PHASES_JSON),
            summary=js(rec.SUMMARY_JSON),
        )


def _nan(values: list[Any], scale: float = 1.0) -> list[float]:
    return [math.nan if v is None else float(v) * scale for v in values]


def _mid(seconds: dict[str, list[Any]]) -> list[float]:
    return [s + 0.5 for s in seconds.get("second", [])]


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", transform=ax.transAxes, ha="center", va="center", color="grey")


def _shade_phases(ax: Axes, data: RunData, label: bool) -> None:
    phases = data.phases.get("phases", [])
    if len(phases) > MAX_SHADED_PHASES:
        return
    for i, p in enumerate(phases):
        ax.axvspan(p["start_s"], p["end_s"], color=PHASE_COLOURS[i % 2], alpha=0.07, lw=0)
        if label:
            mid = (p["start_s"] + p["end_s"]) / 2
            ax.text(mid, 1.01, p["name"], transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    if label and phases:  # lift the title above the row of phase names
        ax.set_title(ax.get_title(loc="left"), loc="left", fontsize=10, pad=16)
    stopped = data.phases.get("stopped_at_s")
    if stopped is not None:
        ax.axvline(stopped, color="black", ls=":", lw=1)


def draw_rate(ax: Axes, data: RunData) -> None:
    s = data.seconds
    ax.set_title("Requests per second: offered vs completed", loc="left", fontsize=10)
    for i, p in enumerate(data.phases.get("phases", [])):
        ax.plot(
            [p["start_s"], p["end_s"]],
            [p["rate_start"], p["rate_end"]],
            color="grey",
            ls="--",
            lw=1,
            label="target" if i == 0 else None,
        )
    if not s:
        _no_data(ax, "requests")
    else:
        x = _mid(s)
        ax.plot(x, _nan(s["offered"]), label="offered", color="#4c72b0", ds=STEPS)
        ax.plot(x, _nan(s["completed"]), label="completed ok", color="#2a9d40", ds=STEPS)
        if any(s["dropped"]):
            ax.plot(x, _nan(s["dropped"]), label="dropped (over in-flight cap)", color="#c03030", ds=STEPS)
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)


def draw_latency(ax: Axes, data: RunData) -> None:
    s = data.seconds
    ax.set_title("Latency of ok requests (from the scheduled send time), by scheduled second", loc="left", fontsize=10)
    ax.set_ylabel("latency (ms)")
    series = {k: _nan(s.get(f"{k}_s", []), 1000.0) for k in ("p50", "p95", "p99")}
    if not any(math.isfinite(v) for v in series["p99"]):
        _no_data(ax, "ok answers")
        return
    for (k, v), colour in zip(series.items(), ("#4c72b0", "#dd8452", "#c03030"), strict=True):
        ax.plot(_mid(s), v, label=k, color=colour)
    light = _nan(s.get("p99_work0_s", []), 1000.0)
    if any(math.isfinite(v) for v in light):
        ax.plot(_mid(s), light, label="p99, work=0 only", color="#8c564b", ls=":", lw=1.5)
    timeout_s = data.summary.get("config", {}).get("timeout_s")
    worst = max((v for v in series["p99"] if math.isfinite(v)), default=0.0)
    if timeout_s and worst >= timeout_s * 1000 * TIMEOUT_LINE_FRACTION:  # else it only squashes the axis
        ax.axhline(timeout_s * 1000, color="grey", ls=":", lw=1, label="timeout")
    if all(v > 0 for v in series["p50"] if math.isfinite(v)):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(loc="upper right", fontsize=8)


def draw_errors(ax: Axes, data: RunData) -> None:
    s = data.seconds
    ax.set_title("Errors and timeouts (% of sent) and drops (% of offered)", loc="left", fontsize=10)
    ax.set_ylabel("% of requests")
    if not s:
        _no_data(ax, "requests")
        return
    drop = [100 * d / o if o else math.nan for d, o in zip(s["dropped"], s["offered"], strict=True)]
    ax.plot(_mid(s), _nan(s["error_rate"], 100.0), label="errors + timeouts", color="#c03030", ds=STEPS)
    ax.plot(_mid(s), drop, label="dropped", color="#8c564b", ls="--", ds=STEPS)
    top = max([v for v in _nan(s["error_rate"], 100.0) + drop if math.isfinite(v)], default=0.0)
    ax.set_ylim(0, max(5.0, top * 1.1))
    ax.legend(loc="upper right", fontsize=8)


def draw_queue(ax: Axes, data: RunData) -> None:
    sy = data.system
    ax.set_title("Queue: oldest waiting message (wait) and depth", loc="left", fontsize=10)
    ax.set_ylabel("oldest age (s)", color="#dd8452")
    if not sy or not any(v is not None for v in sy.get("queue_depth", [])):
        _no_data(ax, "status samples")
        return
    ax.plot(sy["t_s"], _nan(sy["oldest_age_s"]), color="#dd8452", label="oldest age (s)")
    if any(v is not None for v in sy.get("unacked_oldest_age_s", [])):
        ax.plot(sy["t_s"], _nan(sy["unacked_oldest_age_s"]), color="#dd8452", ls=":", label="oldest unacked (s)")
    ax.set_ylim(bottom=0)
    depth = ax.twinx()
    depth.plot(sy["t_s"], _nan(sy["queue_depth"]), color="#4c72b0", label="depth (messages)")
    depth.set_ylabel("depth (messages)", color="#4c72b0")
    depth.set_ylim(bottom=0)
    ax.set_zorder(depth.get_zorder() + 1)  # the wait is the headline: draw it over the depth
    ax.patch.set_visible(False)
    lines = ax.get_lines() + depth.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper right", fontsize=8)


def draw_pool(ax: Axes, data: RunData) -> None:
    sy, dec = data.system, data.decisions
    ax.set_title("Worker pool size, with scaler decisions (▲ up, ▼ down)", loc="left", fontsize=10)
    ax.set_ylabel("processes")
    has_pool = bool(sy) and any(v is not None for v in sy.get("pool_processes", []))
    if has_pool:
        ax.step(sy["t_s"], _nan(sy["pool_processes"]), where="post", color="#4c72b0", label="pool processes")
        ax.step(sy["t_s"], _nan(sy["busy"]), where="post", color="#8c8c8c", lw=1, label="busy")
        if any(v is not None for v in sy.get("scaler_desired", [])):
            ax.step(
                sy["t_s"], _nan(sy["scaler_desired"]), where="post", color="#dd8452", ls="--", label="scaler desired"
            )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    cols = ("t_s", "direction", "from", "to")
    shown = [
        d for d in zip(*(dec.get(c, []) for c in cols), strict=True) if d[0] is not None and 0 <= d[0] <= data.x_max
    ]
    for t, direction, from_, to in shown:
        up = direction == "up"
        colour = UP_COLOUR if up else DOWN_COLOUR
        ax.axvline(t, color=colour, alpha=0.35, lw=1)
        if to is not None:
            ax.plot([t], [to], marker="^" if up else "v", color=colour, ms=8, ls="none")
            if len(shown) <= MAX_DECISION_LABELS and from_ is not None:
                ax.annotate(f"{from_:.0f}→{to:.0f}", (t, to), xytext=(4, 4), textcoords="offset points", fontsize=7)
    if not has_pool and not dec:
        _no_data(ax, "status samples")
        return
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.0) * 1.15)  # headroom: a flat pool line would sit on the frame
    ax.legend(loc="upper left", fontsize=8)


CHARTS: dict[str, Callable[[Axes, RunData], None]] = {
    "rate.png": draw_rate,
    "latency.png": draw_latency,
    "errors.png": draw_errors,
    "queue.png": draw_queue,
    "pool.png": draw_pool,
}


def _finish(ax: Axes, data: RunData, label_phases: bool, xlabel: bool) -> None:
    _shade_phases(ax, data, label_phases)
    ax.set_xlim(0, data.x_max)
    ax.grid(alpha=0.3)
    if xlabel:
        ax.set_xlabel("time since start (s)")


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)


def plot(results_dir: Path) -> Path:
    """Draw every chart and ``report.html`` into ``results_dir``; returns the report's path."""
    results_dir = Path(results_dir)
    data = RunData.load(results_dir)
    for name, draw in CHARTS.items():
        fig = Figure(figsize=CHART_SIZE_IN, layout="constrained")
        ax = fig.add_subplot()
        draw(ax, data)
        _finish(ax, data, label_phases=True, xlabel=True)
        _save(fig, results_dir / name)
    fig = Figure(figsize=(CHART_SIZE_IN[0], 3.0 * len(CHARTS)), layout="constrained")
    axes = fig.subplots(len(CHARTS), 1, sharex=True)
    for i, (ax, draw) in enumerate(zip(axes, CHARTS.values(), strict=True)):
        draw(ax, data)
        _finish(ax, data, label_phases=i == 0, xlabel=i == len(CHARTS) - 1)
    _save(fig, results_dir / OVERVIEW_PNG)
    report = results_dir / REPORT_HTML
    report.write_text(render_html(data, [OVERVIEW_PNG, *CHARTS]))
    return report


def _fmt(v: Any, scale: float = 1.0, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v * scale:,.1f}{unit}"
    return f"{v:,}{unit}" if isinstance(v, int) else str(v)


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    lat, lat0 = s.get("latency_s", {}), s.get("latency_work0_s", {})
    acct = s.get("accounting", {})
    errors = ", ".join(f"{k}: {v}" for k, v in s.get("errors", {}).items()) or "none"
    return [
        ("target rate", _fmt(s.get("target_rate_rps"), unit=" req/s")),
        ("offered rate", _fmt(s.get("offered_rate_rps"), unit=" req/s")),
        ("achieved rate (ok)", _fmt(s.get("achieved_rate_rps"), unit=" req/s")),
        ("offered / sent / ok", f"{_fmt(s.get('offered'))} / {_fmt(s.get('sent'))} / {_fmt(s.get('ok'))}"),
        ("errors", f"{_fmt(s.get('errors_total'))} ({errors})"),
        ("timeouts / dropped", f"{_fmt(s.get('timeouts'))} / {_fmt(s.get('dropped'))}"),
        ("error rate", _fmt(s.get("error_rate"), 100.0, " %")),
        ("latency p50 / p95 / p99", " / ".join(_fmt(lat.get(k), 1000.0, " ms") for k in ("p50", "p95", "p99"))),
        ("work=0 latency p50 / p95 / p99", " / ".join(_fmt(lat0.get(k), 1000.0, " ms") for k in ("p50", "p95", "p99"))),
        ("send lag p99 (generator, included in latency)", _fmt(s.get("send_lag_s", {}).get("p99"), 1000.0, " ms")),
        ("sent = ok + errors + timeouts", "yes" if acct.get("balanced") else "NO"),
        ("stopped early", "yes" if s.get("stopped_early") else "no"),
        ("scaler decisions seen", _fmt(s.get("scaler_decisions"))),
        *(_phase_row(ph) for ph in s.get("phases", [])),
    ]


def _phase_row(ph: dict[str, Any]) -> tuple[str, str]:
    """One phase: its counts, and p50/p99 (all, work=0) after its first seconds."""
    lat, lat0 = ph["settled_latency_s"], ph["settled_latency_work0_s"]
    return (
        f"phase {ph['phase']} (from {ph['start_s']:.0f} s)",
        f"{ph['requests']:,} requests, {ph['errors']} errors, {ph['timeouts']} timeouts, {ph['dropped']} dropped; "
        f"after 5 s p50/p99 {_fmt(lat.get('p50'), 1000.0, ' ms')} / {_fmt(lat.get('p99'), 1000.0, ' ms')}, "
        f"work=0 p99 {_fmt(lat0.get('p99'), 1000.0, ' ms')}",
    )


def render_html(data: RunData, images: list[str]) -> str:
    def table(rows: list[tuple[str, str]]) -> str:
        body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"

    config = [(k, _fmt(v)) for k, v in data.summary.get("config", {}).items()]
    imgs = "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}"></figure>' for name in images)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>inferpool load test</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 3px 12px; border-bottom: 1px solid #ddd; }}
th {{ font-weight: 600; }} img {{ max-width: 100%; }} figure {{ margin: 1em 0; }}
</style></head><body>
<h1>inferpool load test</h1>
<h2>Summary</h2>{table(summary_rows(data.summary))}
<h2>Settings</h2>{table(config)}
<h2>Charts</h2>{imgs}
</body></html>
"""
