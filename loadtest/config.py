"""``inferpool loadtest`` / ``inferpool plot`` flags and the typed config they produce.

The CLI only calls :func:`add_loadtest_arguments` / :func:`add_plot_arguments`
on its subparsers and :func:`config_from_args` on the parsed namespace, so
flags live here, next to their meaning.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from loadtest.client_auth import ApiKeyError, add_api_key_arguments, api_key_from
from loadtest.errors import SpecError
from loadtest.extras import require
from loadtest.mix import DEFAULT_MIX, Mix, parse_mix
from loadtest.profile import Arrivals, Profile, ProfileKind, ProfileSpec, build_profile, parse_profile
from loadtest.thresholds import Threshold, parse_thresholds

DEFAULT_RATE_RPS = 30.0
DEFAULT_MAX_IN_FLIGHT = 512
DEFAULT_TIMEOUT_S = 10.0
STATUS_PATH = "/v1/monitoring/status"
RESULTS_ROOT = Path("results")

T = TypeVar("T")


class Route(StrEnum):
    PREDICT = "predict"  # POST /v1/predict
    COMPAT = "compat"  # POST /predict, one row
    JOBS = "jobs"  # POST /v1/jobs, then poll GET /v1/jobs/{id}


class Features(StrEnum):
    RANDOM = "random"  # standard normal, fresh per row
    FIXED = "fixed"  # the same 20 values every time


@dataclass(frozen=True)
class LoadtestConfig:
    """One load test. ``duration_s=None`` means 40 s, or the CSV profile's own length."""

    url: str
    rate: float = DEFAULT_RATE_RPS
    duration_s: float | None = None
    mix: Mix = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    route: Route = Route.PREDICT
    out_dir: Path | None = None
    arrivals: Arrivals = Arrivals.POISSON
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    timeout_s: float = DEFAULT_TIMEOUT_S
    rows: int = 1
    features: Features = Features.RANDOM
    seed: int | None = None
    plot: bool = False
    api_key: str | None = field(default=None, repr=False)
    status_url: str | None = None
    progress: bool = True
    fail_on: tuple[Threshold, ...] = ()

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise SpecError(f"--url {self.url!r}: must start with http:// or https://")
        if self.rate < 0 or self.max_in_flight < 1 or self.timeout_s <= 0 or self.rows < 1:
            raise SpecError("--rate must be >= 0, --max-in-flight and --rows >= 1, --timeout > 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise SpecError(f"--duration must be > 0, got {self.duration_s:g}")
        if self.route is Route.COMPAT and self.rows != 1:
            raise SpecError("--route compat sends one row per request (POST /predict); drop --rows")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def resolved_status_url(self) -> str:
        return self.status_url or f"{self.base_url}{STATUS_PATH}"

    def resolved_out_dir(self) -> Path:
        return self.out_dir or RESULTS_ROOT / time.strftime("%Y%m%d-%H%M%S")

    def build_profile(self) -> Profile:
        return build_profile(self.profile, self.rate, self.duration_s)

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for summary.json; the API key is never written."""
        return {
            "url": self.base_url,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "mix": str(self.mix),
            "profile": str(self.profile),
            "route": self.route.value,
            "arrivals": self.arrivals.value,
            "max_in_flight": self.max_in_flight,
            "timeout_s": self.timeout_s,
            "rows": self.rows,
            "features": self.features.value,
            "seed": self.seed,
            "api_key_sent": self.api_key is not None,
            "status_url": self.resolved_status_url,
            "fail_on": ",".join(str(t) for t in self.fail_on) or None,
        }


def _api_key(ns: argparse.Namespace) -> str | None:
    try:
        return api_key_from(ns)
    except ApiKeyError as exc:
        raise SpecError(str(exc)) from None


def _flag_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so argparse shows our message instead of 'invalid value'."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except SpecError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert


def _number(kind: type, minimum: float, inclusive: bool = True) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} must be {'>=' if inclusive else '>'} {minimum:g}")
        return value

    convert.__name__ = kind.__name__
    return convert


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``loadtest`` flags on a (sub)parser."""
    kinds = "|".join(k.value for k in ProfileKind if k is not ProfileKind.CSV)
    a = parser.add_argument
    a("--url", required=True, help="API base URL, e.g. http://127.0.0.1:8000")
    a("--rate", type=_number(float, 0), default=DEFAULT_RATE_RPS, help="base request rate, req/s (default %(default)g)")
    a("--duration", type=_number(float, 0, inclusive=False), default=None, help="seconds (default 40, or the CSV's)")
    a(
        "--mix",
        type=_flag_type(parse_mix),
        default=parse_mix(DEFAULT_MIX),
        help=f"WORK_MS:P,... (default {DEFAULT_MIX})",
    )
    a(
        "--profile",
        type=_flag_type(parse_profile),
        default=ProfileSpec(),
        help=f"{kinds}[:FACTOR] or csv:PATH (rows second,rate). step: x3 in the middle third; "
        "spike: x5 for 10%% of the run from 40%%; ramp: rate up to x3 (default constant)",
    )
    a(
        "--route",
        type=Route,
        choices=list(Route),
        default=Route.PREDICT,
        help="predict: POST /v1/predict; compat: POST /predict (one row); jobs: POST /v1/jobs, poll until done",
    )
    a("--out", type=Path, default=None, help="results directory (default results/<timestamp>)")
    a(
        "--arrivals",
        type=Arrivals,
        choices=list(Arrivals),
        default=Arrivals.POISSON,
        help="poisson (default) or evenly spaced",
    )
    a(
        "--max-in-flight",
        type=_number(int, 1),
        default=DEFAULT_MAX_IN_FLIGHT,
        help="open requests at most; arrivals over it are recorded as dropped (default %(default)s)",
    )
    a(
        "--timeout",
        type=_number(float, 0, inclusive=False),
        default=DEFAULT_TIMEOUT_S,
        help="per request, s from its scheduled send time; a job's covers submit to result (default %(default)g)",
    )
    a("--rows", type=_number(int, 1), default=1, help="rows per request (default 1)")
    a(
        "--features",
        type=Features,
        choices=list(Features),
        default=Features.RANDOM,
        help="random: standard normal per row; fixed: one constant row (default random)",
    )
    a("--seed", type=int, default=None, help="seed for arrivals, mix and features")
    a("--plot", action="store_true", help="also draw charts and report.html at the end")
    add_api_key_arguments(parser)
    a(
        "--fail-on",
        type=_flag_type(parse_thresholds),
        default=(),
        help="thresholds as k6 has them, e.g. 'p99<300ms,errors<1%%' (p50/p95/p99 in ms or s; errors, timeouts, "
        "dropped as a count or a %%): exit 99 when one is missed",
    )
    a("--status-url", default=None, help="default <url>/v1/monitoring/status")
    a("--quiet", action="store_true", help="no progress line on stderr")


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``plot`` arguments on a (sub)parser."""
    parser.add_argument("results_dir", type=Path, help="a directory written by `inferpool loadtest`")


def config_from_args(ns: argparse.Namespace) -> LoadtestConfig:
    """Build the config from parsed ``loadtest`` flags; raises SpecError for a bad combination or CSV."""
    config = LoadtestConfig(
        url=ns.url,
        rate=ns.rate,
        duration_s=ns.duration,
        mix=ns.mix,
        profile=ns.profile,
        route=ns.route,
        out_dir=ns.out,
        arrivals=ns.arrivals,
        max_in_flight=ns.max_in_flight,
        timeout_s=ns.timeout,
        rows=ns.rows,
        features=ns.features,
        seed=ns.seed,
        plot=ns.plot,
        api_key=_api_key(ns),
        status_url=ns.status_url,
        progress=not ns.quiet,
        fail_on=ns.fail_on,
    )
    config.build_profile()  # read and check a CSV profile now, before any request is sent
    if config.plot:
        require("matplotlib", "--plot")  # now, not after the run
    return config
