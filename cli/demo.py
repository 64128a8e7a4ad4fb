"""``make demo``: the whole product in one command.

Brings the stack up with ``inferpool up`` (private Redis, workers, API, scaler,
Flower), replays the default mix at 30 requests/s with a step to 90 and back,
writes the charts and report, prints where they are and a summary table, and
stops everything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cli.main import main as cli_main
from inferpool.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--duration", type=float, default=60.0, help="seconds; the middle third runs at 3x the rate")
    p.add_argument("--out", default=f"results/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    ns = p.parse_args(argv)
    s = get_settings()
    url = f"http://{s.api_host}:{s.api_port}"
    out = Path(ns.out).resolve()
    loadtest = [
        sys.executable, "-m", "cli.main", "loadtest", "--url", url, "--rate", str(ns.rate),
        "--duration", str(ns.duration), "--profile", "step", "--out", str(out), "--plot",
    ]  # fmt: skip
    code = cli_main(["up", "--run", *loadtest])
    summary_path = out / "summary.json"
    if not summary_path.exists():
        print(f"the load test wrote no results (exit code {code})", file=sys.stderr)
        return code or 1
    from loadtest.report import summary_rows

    rows = summary_rows(json.loads(summary_path.read_text()))
    width = max(len(k) for k, _ in rows)
    print("\nsummary")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"\nreport   {out / 'report.html'}")
    print(f"charts   {out}/*.png")
    return code


if __name__ == "__main__":
    sys.exit(main())
