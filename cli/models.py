"""``inferpool models list | register | promote | rollback | retire``: the registry from the command line."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from inferpool.errors import ModelError, RolloutError


def _model_dir(ns: argparse.Namespace) -> Path:
    from inferpool.settings import get_settings

    return Path(ns.model_dir or get_settings().model_dir)


def _plan_versions() -> set[str]:
    """Versions the rollout plan in Redis names while it runs (none when Redis cannot be reached)."""
    from inferpool import rollout_store
    from inferpool.redis_client import async_client
    from inferpool.rollout import ENDED
    from inferpool.settings import get_settings

    async def read() -> set[str]:
        client = async_client(get_settings().redis_url)
        try:
            plan = await rollout_store.load(client)
        finally:
            await client.aclose()
        return {plan.stable, plan.candidate} if plan is not None and plan.state not in ENDED else set()

    try:
        return asyncio.run(read())
    except Exception:
        return set()


def cmd_list(ns: argparse.Namespace) -> int:
    from inferpool import registry

    rows = registry.versions(_model_dir(ns))
    print(f"{'version':<14} {'created (UTC)':<20} {'estimator':<26} {'runtime':<8} {'sha256':<14} state")
    for r in rows:
        state = "stable" if r.stable else "retired" if r.retired else ""
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
        print(f"{r.version:<14} {created:<20} {r.estimator:<26} {r.runtime:<8} {r.sha256[:12]:<14} {state}")
    return 0


def cmd_register(ns: argparse.Namespace) -> int:
    import numpy as np

    from inferpool import registry

    X, y = np.load(ns.train_x, allow_pickle=False), np.load(ns.train_y, allow_pickle=False)
    m = registry.register(ns.source, X, y, _model_dir(ns), runtime=ns.runtime)
    print(f"registered {m.estimator} version {m.version} (runtime {m.runtime.runtime}); not served until promoted")
    return 0


def cmd_promote(ns: argparse.Namespace) -> int:
    from inferpool import registry

    p = registry.promote(_model_dir(ns), ns.version, ns.reason or "promoted by hand")
    print(f"version {p.version} is stable; reload the API (POST /v1/admin/model/reload)")
    return 0


def cmd_rollback(ns: argparse.Namespace) -> int:
    from inferpool import registry

    p = registry.rollback(_model_dir(ns), ns.reason or "rolled back by hand")
    print(f"version {p.version} is stable again; reload the API (POST /v1/admin/model/reload)")
    return 0


def cmd_retire(ns: argparse.Namespace) -> int:
    from inferpool import registry

    registry.retire(_model_dir(ns), ns.version, _plan_versions())
    print(f"version {ns.version} retired: its model files are removed, its manifest kept")
    return 0


def _guarded(fn: Any) -> Any:
    def run(ns: argparse.Namespace) -> int:
        try:
            return fn(ns)
        except (ModelError, RolloutError) as exc:
            print(f"inferpool models: {exc}")
            return 1

    return run


def add_models_command(sub: Any) -> None:
    from cli.main import RUNTIME_CHOICES, RUNTIME_HELP

    p = sub.add_parser("models", help="the registry of model versions: list, register, promote, rollback, retire")
    p.add_argument("--model-dir")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="every version, the stable one marked").set_defaults(fn=_guarded(cmd_list))
    r = msub.add_parser("register", help="add a version (a joblib file, or models:/name/version with mlflow)")
    r.add_argument("source", help="path to a joblib file, or an MLflow models:/name/version URI")
    r.add_argument("--train-x", required=True, help=".npy of training features (for drift summaries)")
    r.add_argument("--train-y", required=True, help=".npy of training labels")
    r.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help=RUNTIME_HELP)
    r.set_defaults(fn=_guarded(cmd_register))
    for name, fn, helptext in (
        ("promote", cmd_promote, "make a version the stable one"),
        ("retire", cmd_retire, "remove a version's model files (not while it serves)"),
    ):
        c = msub.add_parser(name, help=helptext)
        c.add_argument("version")
        c.add_argument("--reason", default="")
        c.set_defaults(fn=_guarded(fn))
    rb = msub.add_parser("rollback", help="make the previously stable version stable again")
    rb.add_argument("--reason", default="")
    rb.set_defaults(fn=_guarded(cmd_rollback))
