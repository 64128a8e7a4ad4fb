"""Rollout plans, their window figures and their audit trail, in Redis (async: the API and the CLI share it).

The plan is one JSON value with a revision: every writer compares the revision it read (one script), so
the verdict loop and an operator's command never both win. Figures are kept per plan, step and version
(a hash of counters and a capped list of model times), so each step is judged on its own window only.
Every change of share goes to the audit stream with who, when and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from inferpool import keys, metrics, scripts
from inferpool.errors import RolloutError
from inferpool.rollout import Plan, VersionStats

# Model times kept per version and step: p99 of 2,000 is a 20-sample tail.
MODEL_MS_CAP = 2000
AUDIT_MAXLEN = 10_000
# Figures outlive their plan by a day: enough for `inferpool status` and a post-mortem.
STATS_TTL_S = 24 * 3600
CHANGE_ATTEMPTS = 5


async def load(r: Any) -> Plan | None:
    raw = await r.get(keys.ROLLOUT_PLAN)
    return Plan.from_json(orjson.loads(raw)) if raw else None


async def replace(r: Any, plan: Plan, expected_rev: int) -> bool:
    """Write ``plan`` if the stored one still has ``expected_rev``; False if someone changed it first."""
    script = scripts.ReplacePlan.register(r)
    return bool(await script(keys=[keys.ROLLOUT_PLAN], args=[expected_rev, orjson.dumps(plan.to_json())]))


async def change(r: Any, fn: Callable[[Plan | None], Plan], by: str, why: str, action: str) -> tuple[Plan | None, Plan]:
    """Apply ``fn`` to the stored plan (retrying when another writer got there first) and audit the change.

    ``fn`` raises :class:`RolloutError` to refuse. Returns (before, after).
    """
    for _ in range(CHANGE_ATTEMPTS):
        before = await load(r)
        after = fn(before)
        if await replace(r, after, before.rev if before else -1):
            await audit(r, before, after, action, by, why)
            return before, after
    raise RolloutError("the rollout plan kept changing under this command; try again")


async def audit(r: Any, before: Plan | None, after: Plan, action: str, by: str, why: str) -> None:
    entry = {
        "at": time.time(), "by": by, "action": action, "why": why, "plan": after.id, "mode": after.mode.value,
        "stable": after.stable, "candidate": after.candidate, "state": after.state.value, "step": after.step,
        "share_before": before.share if before and before.id == after.id else 0.0, "share_after": after.share,
    }  # fmt: skip
    await r.xadd(keys.ROLLOUT_AUDIT, {"e": orjson.dumps(entry)}, maxlen=AUDIT_MAXLEN, approximate=True)
    metrics.ROLLOUT_DECISIONS.labels(action=action, by="auto" if by == AUTO else "operator").inc()


AUTO = "inferpool (verdict loop)"


async def audit_log(r: Any, count: int = 100) -> list[dict[str, Any]]:
    """Newest first."""
    return [orjson.loads(fields[b"e"]) for _, fields in await r.xrevrange(keys.ROLLOUT_AUDIT, count=count)]


async def record(
    r: Any, plan: Plan, version: str, requests: int, errors: int, model_ms: float | None,
    classes: dict[str, int] | None = None, compared: int = 0, disagreed: int = 0,
) -> None:  # fmt: skip
    """Add one answered batch (or shadow comparison) to ``version``'s figures for the plan's current step."""
    h = keys.rollout_stats(plan.id, plan.step, version)
    pipe = r.pipeline(transaction=False)
    if requests:
        pipe.hincrby(h, "requests", requests)
    if errors:
        pipe.hincrby(h, "errors", errors)
    for label, n in (classes or {}).items():
        pipe.hincrby(h, f"class:{label}", n)
    if compared:
        pipe.hincrby(h, "compared", compared)
        pipe.hincrby(h, "disagreed", disagreed)
    pipe.expire(h, STATS_TTL_S)
    if model_ms is not None:
        lst = keys.rollout_model_ms(plan.id, plan.step, version)
        pipe.lpush(lst, f"{model_ms:.3f}")
        pipe.ltrim(lst, 0, MODEL_MS_CAP - 1)
        pipe.expire(lst, STATS_TTL_S)
    await pipe.execute()


async def record_labels(r: Any, plan: Plan, version: str, labelled: int, correct: int) -> None:
    h = keys.rollout_stats(plan.id, plan.step, version)
    pipe = r.pipeline(transaction=False)
    pipe.hincrby(h, "labelled", labelled)
    pipe.hincrby(h, "correct", correct)
    pipe.expire(h, STATS_TTL_S)
    await pipe.execute()


async def stats(r: Any, plan: Plan, version: str, step: int | None = None) -> VersionStats:
    step = plan.step if step is None else step
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.rollout_stats(plan.id, step, version))
    pipe.lrange(keys.rollout_model_ms(plan.id, step, version), 0, -1)
    h, ms = await pipe.execute()
    h = {k.decode(): int(v) for k, v in h.items()}
    return VersionStats(
        requests=h.get("requests", 0), errors=h.get("errors", 0), model_ms=tuple(float(x) for x in ms),
        classes={k[6:]: v for k, v in h.items() if k.startswith("class:")},
        labelled=h.get("labelled", 0), correct=h.get("correct", 0),
        compared=h.get("compared", 0), disagreed=h.get("disagreed", 0),
    )  # fmt: skip
