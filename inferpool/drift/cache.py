"""One evaluation of the window, shared for a few seconds by the drift route and the exporter.

Both ask on their own schedule (every Prometheus scrape, every dashboard refresh or user call, from
any number of API processes); each evaluation reads the whole window (2,000 rows by default) and runs
the tests on every feature. The first caller in ``ttl_s`` evaluates and stores the report's JSON in
Redis with that expiry; the others read it. A stored report judged for another model version or under
other thresholds is ignored (and replaced), so callers with different settings never see each other's.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import redis
import redis.asyncio

from inferpool import keys
from inferpool.drift import window
from inferpool.drift.evaluate import evaluate
from inferpool.drift.report import DriftReport, Policy
from inferpool.model_store import Manifest

logger = logging.getLogger(__name__)


def _cached(raw: bytes | str | None, manifest: Manifest, policy: Policy) -> DriftReport | None:
    if raw is None:
        return None
    try:
        d = orjson.loads(raw)
        if d.get("model_version") != manifest.version or d.get("thresholds") != policy.to_json():
            return None
        return DriftReport.from_json(d)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("drift report cache holds something else; evaluating afresh")
        return None


def _evaluate(w: window.Window, manifest: Manifest, policy: Policy) -> DriftReport:
    return evaluate(manifest, w.X, w.classes, policy=policy, refused=w.refused)


def report(client: redis.Redis, manifest: Manifest, policy: Policy, ttl_s: float) -> DriftReport:
    """The window's report: the cached one if fresh and judged the same way, else evaluated now and cached."""
    if ttl_s > 0 and (hit := _cached(client.get(keys.DRIFT_REPORT), manifest, policy)) is not None:
        return hit
    rep = _evaluate(window.read(client), manifest, policy)
    if ttl_s > 0:
        client.set(keys.DRIFT_REPORT, orjson.dumps(rep.to_json()), px=max(1, int(ttl_s * 1000)))
    return rep


async def areport(aclient: redis.asyncio.Redis, manifest: Manifest, policy: Policy, ttl_s: float) -> DriftReport:
    """``report`` for the API; decoding and testing run on a thread, off the event loop."""
    if ttl_s > 0 and (hit := _cached(await aclient.get(keys.DRIFT_REPORT), manifest, policy)) is not None:
        return hit
    pipe = aclient.pipeline(transaction=True)
    raw_rows, raw_classes = await window.lranges(pipe).execute()
    rep = await asyncio.to_thread(lambda: _evaluate(window.decode(raw_rows, raw_classes), manifest, policy))
    if ttl_s > 0:
        await aclient.set(keys.DRIFT_REPORT, orjson.dumps(rep.to_json()), px=max(1, int(ttl_s * 1000)))
    return rep
