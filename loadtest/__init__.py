"""``inferpool loadtest`` and ``inferpool plot``: an open-loop load generator and its report.

Modules: ``config`` (flags, LoadtestConfig), ``profile`` (rates over time, arrival
times), ``mix`` (simulated work per request), ``routes`` (what each route sends),
``sampler`` (the monitoring status endpoint), ``http`` (a lean keep-alive HTTP/1.1
client, also the benchmarks'), ``runner`` (the generator),
``records`` (what is written, and its arithmetic), ``report`` (charts, HTML),
``thresholds`` (``--fail-on``: pass/fail on the summary).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from loadtest.extras import needs_extra

# Loaded on first use: `inferpool` imports loadtest.extras at every start, and the generator's modules
# bring numpy (~0.2 s of CPU) that a health check or a worker's start-up should not pay for.
_LAZY = {
    "LoadtestConfig": "loadtest.config",
    "add_loadtest_arguments": "loadtest.config",
    "add_plot_arguments": "loadtest.config",
    "config_from_args": "loadtest.config",
    "SpecError": "loadtest.errors",
    "run_loadtest": "loadtest.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loadtest' has no attribute {name!r}")


def plot(results_dir: Path) -> Path:
    """Draw the charts and report.html for a results directory; returns the report's path."""
    with needs_extra("drawing charts"):
        from loadtest.report import plot as draw  # matplotlib loads only when charts are drawn

    return draw(results_dir)


__all__ = [
    "LoadtestConfig",
    "SpecError",
    "add_loadtest_arguments",
    "add_plot_arguments",
    "config_from_args",
    "plot",
    "run_loadtest",
]
