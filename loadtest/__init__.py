"""``inferpool loadtest`` and ``inferpool plot``: an open-loop load generator and its report.

Modules: ``config`` (flags, LoadtestConfig), ``profile`` (rates over time, arrival
times), ``mix`` (simulated work per request), ``routes`` (what each route sends),
``sampler`` (the monitoring status endpoint), ``http`` (a lean keep-alive HTTP/1.1
client, also the benchmarks'), ``runner`` (the generator),
``records`` (what is written, and its arithmetic), ``report`` (charts, HTML),
``thresholds`` (``--fail-on``: pass/fail on the summary).
"""

from pathlib import Path

from loadtest.config import LoadtestConfig, add_loadtest_arguments, add_plot_arguments, config_from_args
from loadtest.errors import SpecError
from loadtest.extras import needs_extra
from loadtest.runner import run_loadtest


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
