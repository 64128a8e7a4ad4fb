"""The ``inferpool`` command. Imports are local to each command: a worker must set up
its metrics directory before prometheus_client is first imported."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.extras import MissingExtra

if TYPE_CHECKING:
    from inferpool.model_store import Manifest

RUNTIME_CHOICES = ["auto", "joblib"]
RUNTIME_HELP = "auto: also compile for onnxruntime where skl2onnx can and predictions agree; joblib: do not compile"


def _settings():
    from inferpool.settings import get_settings

    return get_settings()


def cmd_train(ns: argparse.Namespace) -> int:
    from inferpool import model_store

    s = _settings()
    model_dir = Path(ns.model_dir or s.model_dir)
    m = model_store.train_reference(model_dir, ns.samples, ns.features, ns.trees, ns.seed, runtime=ns.runtime)
    print(f"trained {m.estimator} version {m.version} ({m.n_features} features) -> {model_dir / m.file}")
    _print_runtime(m)
    return 0


def cmd_register(ns: argparse.Namespace) -> int:
    import numpy as np

    from inferpool import model_store

    s = _settings()
    model_dir = Path(ns.model_dir or s.model_dir)
    X, y = np.load(ns.train_x, allow_pickle=False), np.load(ns.train_y, allow_pickle=False)
    m = model_store.register_model(Path(ns.model), X, y, model_dir, runtime=ns.runtime)
    print(f"registered {m.estimator} version {m.version} -> {model_dir / m.file}")
    _print_runtime(m)
    return 0


def _print_runtime(m: Manifest) -> None:
    rt = m.runtime
    if rt.runtime == "onnx":
        print(f"runtime onnx: {rt.file} agrees with the original on all {rt.rows_checked} rows checked")
    else:
        print(f"runtime joblib: {rt.reason}")


def _ensure_metrics_dir(group: str) -> None:
    # One multiprocess directory per process group, under PROMETHEUS_MULTIPROC_DIR as a root
    # (the rule is in inferpool/telemetry.py); set before any metric exists.
    from inferpool.telemetry import use_metrics_dir

    use_metrics_dir(group)


def cmd_api(ns: argparse.Namespace) -> int:
    from cli import api_server
    from inferpool.telemetry import setup_logging

    if ns.child_of is None:  # one of several API processes shares its parent's metrics directory
        _ensure_metrics_dir("api")
    s = _settings()
    setup_logging("api", s)
    host, port = ns.host or s.api_host, ns.port or s.api_port
    if ns.child_of is not None:
        api_server.serve_child(host, port, s.log_json, ns.fd)
        return 0
    return api_server.serve(host, port, ns.processes or s.api_process_count, s.log_json)


def cmd_worker(ns: argparse.Namespace) -> int:
    _ensure_metrics_dir(f"worker-{ns.role}")
    from inferpool import keys
    from workers.worker import run_worker

    s = _settings()
    queues = {
        "online": [keys.QUEUE_ONLINE, keys.QUEUE_BULK],
        "work": [keys.QUEUE_WORK],
        "all": list(keys.ALL_QUEUES),
    }[ns.role]
    default_c = {"online": s.online_concurrency, "work": s.work_concurrency_min, "all": s.online_concurrency}[ns.role]
    return run_worker(ns.role, queues, ns.concurrency or default_c, ns.name)


def cmd_flower(ns: argparse.Namespace) -> int:
    from workers.flower import run_flower

    return run_flower(ns.port, ns.address)


def cmd_up(ns: argparse.Namespace) -> int:
    from cli.up import up

    return up(ns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inferpool", description="Queue-based batch inference on Celery and Redis.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train the reference model into the model directory")
    t.add_argument("--samples", type=int, default=500)
    t.add_argument("--features", type=int, default=20)
    t.add_argument("--trees", type=int, default=100)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--model-dir")
    t.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help=RUNTIME_HELP)
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("register", help="register your own joblib model with its training data")
    r.add_argument("model", help="path to a joblib file")
    r.add_argument("--train-x", required=True, help=".npy of training features (for drift summaries)")
    r.add_argument("--train-y", required=True, help=".npy of training labels")
    r.add_argument("--model-dir")
    r.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help=RUNTIME_HELP)
    r.set_defaults(fn=cmd_register)

    a = sub.add_parser("api", help="run the HTTP API")
    a.add_argument("--host")
    a.add_argument("--port", type=int)
    a.add_argument(
        "--processes", "--workers", type=int, dest="processes",
        help="API processes on the port (default INFERPOOL_API_PROCESSES, else 2 on 2+ cores)",
    )  # fmt: skip
    # Set by the parent of several API processes for each of them (cli/api_server.py).
    a.add_argument("--child-of", type=int, help=argparse.SUPPRESS)
    a.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    a.set_defaults(fn=cmd_api)

    w = sub.add_parser("worker", help="run a Celery worker")
    w.add_argument("--role", choices=["online", "work", "all"], default="all")
    w.add_argument("--concurrency", "-c", type=int)
    w.add_argument("--name", help="worker node name (default role@hostname)")
    w.set_defaults(fn=cmd_worker)

    f = sub.add_parser("flower", help="run Flower behind basic auth")
    f.add_argument("--port", type=int)
    f.add_argument("--address")
    f.set_defaults(fn=cmd_flower)

    u = sub.add_parser("up", help="run the whole system on this machine")
    u.add_argument("--no-scaler", action="store_true")
    u.add_argument("--no-flower", action="store_true")
    u.add_argument("--var-dir", default="var", help="where a private Redis and logs live")
    u.add_argument("--run", nargs=argparse.REMAINDER, help="run this command once the system is up, then stop")
    u.set_defaults(fn=cmd_up)

    from cli.health import add_health_command  # light: the key layout only

    add_health_command(sub)

    args = sys.argv[1:] if argv is None else argv
    try:
        # Only the named command's module is imported: the rest cost every process ~0.3 s of CPU at start.
        # `inferpool` alone or --help needs them all; --version none.
        first = args[0] if args else None
        _optional_commands(sub, None if first in (None, "-h", "--help") else first)
        ns = p.parse_args(argv)
        return ns.fn(ns) or 0
    except MissingExtra as exc:
        print(f"inferpool: {exc}", file=sys.stderr)
        return 2


def _version() -> str:
    try:
        return metadata.version("inferpool")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def _loadtest(ns: argparse.Namespace) -> int:
    from loadtest import SpecError, config_from_args, run_loadtest
    from loadtest.thresholds import THRESHOLDS_MISSED_EXIT, check_run

    try:
        config = config_from_args(ns)
    except SpecError as exc:
        print(f"inferpool loadtest: {exc}", file=sys.stderr)
        return 2
    out = run_loadtest(config)
    if not config.fail_on:
        return 0
    checks = check_run(out, config.fail_on)
    for check in checks:
        print(f"threshold {check.describe()}", file=sys.stderr)
    missed = [c for c in checks if not c.passed]
    if missed:
        print(f"inferpool loadtest: {len(missed)} of {len(checks)} thresholds missed", file=sys.stderr)
        return THRESHOLDS_MISSED_EXIT
    return 0


def _plot(ns: argparse.Namespace) -> int:
    from loadtest import plot

    print(plot(Path(ns.results_dir)))
    return 0


def _optional_commands(sub, wanted: str | None) -> None:
    """Commands whose modules register their own flags: ``wanted`` alone, or all of them (None).

    An import that fails is an error, never a command missing from the list; a module that only an
    extra installs is named with its extra (loadtest.extras) when the command runs.
    """
    if wanted in (None, "loadtest", "plot"):
        from loadtest import add_loadtest_arguments, add_plot_arguments

        lt = sub.add_parser("loadtest", help="replay a workload against the API and record everything")
        add_loadtest_arguments(lt)
        lt.set_defaults(fn=_loadtest)
        pl = sub.add_parser("plot", help="draw charts and an HTML report from a load test's results")
        add_plot_arguments(pl)
        pl.set_defaults(fn=_plot)
    if wanted in (None, "scaler"):
        from scaler.cli import add_scaler_command

        add_scaler_command(sub)
    if wanted in (None, "status"):
        from cli.status_view import add_status_command

        add_status_command(sub)
    if wanted in (None, "models"):
        from cli.models import add_models_command

        add_models_command(sub)
    if wanted in (None, "exporter"):
        from inferpool.exporter import add_exporter_command

        add_exporter_command(sub)


if __name__ == "__main__":
    sys.exit(main())
