"""The API's side of a rollout: which version answers each request, figures per version, and the verdict loop.

Why the verdict loop runs here and not in the scaler daemon: the API is the one process that must run
for there to be traffic at all (the scaler is optional, ``inferpool up --no-scaler``, and a scaler
actuated by KEDA may not run ours), it already reads the plan for every request and holds the figures'
source (each answer), and a loop of a few Redis reads per second costs it nothing measurable. Several
API processes may run: one of them at a time holds ``ROLLOUT_LOCK`` (an expiring key it renews) and
judges; the others only route. Plan writes compare revisions, so an operator's command and the loop
never both apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import replace

import numpy as np

from api.dispatch import Reply
from inferpool import drift, keys, metrics, registry, rollout_store, scripts
from inferpool.drift import window as drift_window
from inferpool.drift.evaluate import evaluate
from inferpool.errors import RolloutError
from inferpool.rollout import ENDED, Action, Margins, Mode, Plan, State, apply, choose, judge, parse_steps
from inferpool.settings import Settings

logger = logging.getLogger(__name__)


def margins_of(s: Settings) -> Margins:
    return Margins(
        error_ratio=s.rollout_error_margin, p99_ratio=s.rollout_p99_ratio, p99_slack_ms=s.rollout_p99_slack_ms,
        accuracy=s.rollout_accuracy_margin, min_labels=s.rollout_min_labels,
        breach_min_requests=s.rollout_breach_min_requests, p99_min_samples=s.rollout_p99_min_samples,
    )  # fmt: skip


class Rollout:
    def __init__(self, redis, settings: Settings, instance: str) -> None:
        self.redis = redis
        self.settings = settings
        self.instance = instance
        self._plan: Plan | None = None
        self._read_at = float("-inf")
        self._bg: set[asyncio.Task] = set()
        self._loop: asyncio.Task | None = None

    # --- routing ------------------------------------------------------------------
    async def plan(self) -> Plan | None:
        """The stored plan, re-read at most every ``rollout_plan_cache_s``; on a Redis error the last one read."""
        now = time.monotonic()
        if now - self._read_at >= self.settings.rollout_plan_cache_s:
            self._read_at = now
            try:
                self._plan = await rollout_store.load(self.redis)
                if self._plan is not None:
                    # Every API process states the share it routes by (the gauge keeps each live process's value).
                    metrics.ROLLOUT_SHARE.labels(model_version=self._plan.candidate).set(self._plan.share)
            except Exception as exc:
                logger.warning("rollout plan not read (%s); routing by the last one", type(exc).__name__)
        return self._plan

    async def route(self, routing_key: str, default: str) -> tuple[str, str | None]:
        """(the version that answers, the shadow version that also runs a copy, or None)."""
        plan = await self.plan()
        version = choose(plan, routing_key, default)
        if plan is not None and plan.shadow_share and np.random.random() < plan.shadow_share:
            return version, plan.candidate
        return version, None

    # --- figures ------------------------------------------------------------------
    def observe(self, version: str, requests: int, reply: Reply | None, error: bool, timed: bool = True) -> None:
        """One answered batch (``reply`` None: it timed out), counted under the version routed.

        ``timed`` False: the task also held its process for simulated work, so its run time is not model time.
        """
        if not version:
            return
        outcome = "error" if error or reply is None else "success"
        metrics.VERSION_REQUESTS.labels(model_version=version, outcome=outcome).inc(requests)
        model_ms = None
        classes: dict[str, int] = {}
        if reply is not None and not error and timed:
            run_s = max(reply.finished - reply.started, 0.0)
            metrics.VERSION_MODEL_TIME.labels(model_version=version).observe(run_s)
            model_ms = run_s * 1000
        plan = self._plan
        if plan is None or plan.state in ENDED or version not in (plan.stable, plan.candidate):
            return  # no rollout to feed: no class counts (np.unique was ~3% of the API's CPU at 90 req/s)
        if reply is not None and not error and reply.predictions is not None:
            labels, counts = np.unique(reply.predictions, return_counts=True)
            classes = {str(k): int(n) for k, n in zip(labels.tolist(), counts.tolist(), strict=True)}
        errors = requests if outcome == "error" else 0
        self._spawn(rollout_store.record(self.redis, plan, version, requests, errors, model_ms, classes))

    def compare(self, version: str, stable: np.ndarray, shadow: np.ndarray) -> None:
        """A shadow answer beside the stable one for the same rows."""
        disagreed = int(np.count_nonzero(np.asarray(stable) != np.asarray(shadow)))
        metrics.SHADOW_COMPARED.labels(model_version=version).inc(len(stable))
        metrics.SHADOW_DISAGREED.labels(model_version=version).inc(disagreed)
        plan = self._plan
        if plan is not None and plan.mode is Mode.shadow and plan.candidate == version:
            self._spawn(rollout_store.record(self.redis, plan, version, 0, 0, None, None, len(stable), disagreed))

    def shadow(self, batcher, X: np.ndarray, version: str, stable: np.ndarray, timeout_s: float) -> None:
        """Run a copy of ``X`` on the shadow ``version`` in the background and compare it with ``stable``.

        The copy rides a micro-batch of its own version after the caller has its answer, so the caller
        waits for nothing; its errors and model time count in the candidate's figures (``observe``).
        """
        entry = batcher.submit(X, version, shadow=True)

        async def wait() -> None:
            async with asyncio.timeout(timeout_s):
                answer = await entry.future
            self.compare(version, stable, answer.predictions)

        self._spawn(wait())

    async def record_labels(self, by_version: dict[str, tuple[int, int]]) -> None:
        """Feedback labels (labelled, correct) per version, for a running plan's accuracy verdict."""
        plan = await self.plan()
        if plan is None or plan.state in ENDED:
            return
        for version, (labelled, correct) in by_version.items():
            if version in (plan.stable, plan.candidate):
                await rollout_store.record_labels(self.redis, plan, version, labelled, correct)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("rollout figures not written: %s", type(task.exception()).__name__)

    # --- operator commands ------------------------------------------------------------
    async def start(
        self, mode: Mode, candidate: str, by: str, steps: str | None, step_s: float | None,
        min_requests: int | None, stable: str,
    ) -> Plan:  # fmt: skip
        s = self.settings
        cand = registry.known(s.model_dir, candidate)
        base = registry.known(s.model_dir, stable)
        if cand.version == base.version:
            raise RolloutError(f"candidate {candidate} is the stable version")
        if cand.n_features != base.n_features:
            raise RolloutError(f"candidate takes {cand.n_features} features, the stable version {base.n_features}")
        if mode is Mode.canary:
            try:
                shares = parse_steps(steps or s.rollout_steps)
            except ValueError as exc:
                raise RolloutError(str(exc)) from exc
        else:
            shares = (float(steps) if steps else s.rollout_shadow_share,)
        now = time.time()

        def make(before: Plan | None) -> Plan:
            if before is not None and before.state not in ENDED:
                raise RolloutError(f"rollout {before.id} is {before.state.value}; abort it first")
            return Plan(
                id=secrets.token_hex(6), mode=mode, stable=base.version, candidate=cand.version, steps=shares,
                step_s=step_s or s.rollout_step_s, min_requests=min_requests or s.rollout_min_requests,
                started_at=now, started_by=by, step_started=now, rev=(before.rev + 1) if before else 0,
            )  # fmt: skip

        _, plan = await rollout_store.change(self.redis, make, by, f"{mode.value} rollout started", "start")
        return self._set(plan)

    async def command(self, action: str, by: str, why: str) -> Plan:
        """advance | pause | resume | abort, by an operator."""
        now = time.time()

        def fn(p: Plan | None) -> Plan:
            if p is None or p.state in ENDED:
                raise RolloutError("no rollout is running")
            if action == "advance":
                return apply(p, Action.advance, now)
            if action == "pause":
                return replace(p, state=State.paused, rev=p.rev + 1)
            if action == "resume":
                return replace(p, state=State.running, step_started=now, rev=p.rev + 1)
            return replace(p, state=State.aborted, rev=p.rev + 1)

        _, plan = await rollout_store.change(self.redis, fn, by, why, action)
        return await self._ended(plan, by, why)

    async def _ended(self, plan: Plan, by: str, why: str) -> Plan:
        if plan.state is State.promoted:
            # The candidate becomes what `current` names, for when the plan is gone. Until then the ended plan
            # routes every request to it, so a model directory this process may not write (a read-only
            # volume) leaves serving right; `inferpool models promote` finishes the job there.
            try:
                await asyncio.to_thread(registry.promote, self.settings.model_dir, plan.candidate, why, by)
            except OSError as exc:
                logger.error("rollout %s promoted %s, but `current` was not written: %s", plan.id, plan.candidate, exc)
        return self._set(plan)

    def _set(self, plan: Plan) -> Plan:
        self._plan, self._read_at = plan, time.monotonic()
        metrics.ROLLOUT_SHARE.labels(model_version=plan.candidate).set(plan.share)
        return plan

    # --- the verdict loop -------------------------------------------------------------
    def start_loop(self) -> None:
        self._loop = asyncio.get_running_loop().create_task(self._run(), name="rollout-verdicts")

    async def close(self) -> None:
        for t in [self._loop, *self._bg]:
            if t:
                t.cancel()
        if self._loop:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop

    async def _run(self) -> None:
        tick = self.settings.rollout_tick_s
        hold = scripts.HoldLock.register(self.redis)
        while True:
            await asyncio.sleep(tick)
            try:
                if await hold(keys=[keys.ROLLOUT_LOCK], args=[self.instance, int(tick * 3000)]):
                    await self.tick(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("rollout verdict failed; trying again next tick")

    async def _input_drift(self, version: str) -> dict | None:
        """Recent inputs against the candidate's own training summary (recorded, not judged): only at a change
        of share, since one evaluation tests every feature of the window (on a thread)."""
        try:
            manifest = registry.known(self.settings.model_dir, version)
            pipe = self.redis.pipeline(transaction=True)
            raw_rows, raw_classes = await drift_window.lranges(pipe).execute()
            w = drift_window.decode(raw_rows, raw_classes)
            policy = drift.policy_of(self.settings)
            rep = await asyncio.to_thread(evaluate, manifest, w.X, w.classes, policy=policy, refused=w.refused)
        except Exception as exc:  # a figure of the record, never a reason to skip the verdict
            logger.warning("candidate input drift not evaluated: %s", type(exc).__name__)
            return None
        return {"status": str(rep.status), "features_drifted": rep.n_features_drifted, "n_samples": rep.n_samples}

    async def tick(self, now: float) -> Plan | None:
        """Judge the running plan once and apply the verdict (advance, promote, roll back) or record it (hold)."""
        plan = await rollout_store.load(self.redis)
        if plan is None or plan.state is not State.running:
            return plan
        # At 100 % the stable version gets no traffic: its figures of the step before are the baseline.
        baseline_step = plan.step - 1 if plan.share >= 1.0 and plan.step > 0 else plan.step
        stable = await rollout_store.stats(self.redis, plan, plan.stable, baseline_step)
        cand = await rollout_store.stats(self.redis, plan, plan.candidate)
        verdict = judge(plan, stable, cand, margins_of(self.settings), now)
        record = verdict.to_json()
        if verdict.action is not Action.hold:
            record["figures"]["candidate_input_drift"] = await self._input_drift(plan.candidate)
        after = replace(apply(plan, verdict.action, now), last_verdict=record)
        if verdict.action is Action.hold:
            after = replace(after, rev=plan.rev + 1)
            await rollout_store.replace(self.redis, after, plan.rev)  # lost to an operator's change: fine
            return self._set(after)
        if not await rollout_store.replace(self.redis, after, plan.rev):
            return plan
        await rollout_store.audit(self.redis, plan, after, verdict.action.value, rollout_store.AUTO, verdict.reason)
        logger.warning("rollout %s: %s (%s)", plan.id, verdict.action.value, verdict.reason)
        return await self._ended(after, rollout_store.AUTO, verdict.reason)
