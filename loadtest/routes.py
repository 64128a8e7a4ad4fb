"""What each ``--route`` sends and how its answer is judged.

:class:`RouteSender` sends one request on a route and returns its status string (see ``records``); it
never raises for HTTP or network trouble. The caller owns the overall deadline (``--timeout`` covers
a whole job, submit to result), passed as an absolute time on the event loop's clock.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from loadtest.config import Features, Route
from loadtest.http import JSON, TRANSPORT_ERRORS, HttpClient
from loadtest.records import BAD_RESPONSE, ERROR, JOB_FAILED, TIMEOUT

N_FEATURES = 20
FIXED_ROW = np.round(np.linspace(-1.0, 1.0, N_FEATURES), 3)
PATHS = {Route.PREDICT: "/v1/predict", Route.COMPAT: "/predict", Route.JOBS: "/v1/jobs"}
# Job polling: first poll after 10 ms, then 1.5x longer, never more than 100 ms apart,
# so a job's latency is over-stated by at most ~100 ms.
POLL_FIRST_S = 0.01
POLL_BACKOFF = 1.5
POLL_MAX_S = 0.1
JOB_DONE = "succeeded"
JOB_FAILED_STATES = ("failed",)
_ACCEPTED = (200, 201, 202)


class Payloads:
    """Request bodies for one route: ``rows`` feature rows plus the simulated work."""

    def __init__(self, route: Route, rows: int, features: Features, rng: np.random.Generator) -> None:
        self.route, self.rows, self.features, self.rng = route, rows, features, rng
        # Fixed rows give one body per work value: serialize each once.
        self._cache: dict[int, bytes] | None = {} if features is Features.FIXED else None

    def _rows(self) -> np.ndarray:
        if self.features is Features.FIXED:
            return np.broadcast_to(FIXED_ROW, (self.rows, N_FEATURES))
        return self.rng.standard_normal((self.rows, N_FEATURES))

    def body(self, work_ms: int) -> bytes:
        if self._cache is not None and (cached := self._cache.get(work_ms)) is not None:
            return cached
        x = self._rows()
        if self.route is Route.COMPAT:
            data: dict[str, Any] = {"X": x[0], "work": work_ms}
        else:
            data = {"instances": np.ascontiguousarray(x), "work_ms": work_ms}
        body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
        if self._cache is not None:
            self._cache[work_ms] = body
        return body


class RouteSender:
    """Sends ``route``'s requests on ``client``; the request head is built once, only the body changes."""

    def __init__(self, client: HttpClient, route: Route, rows: int) -> None:
        self.client, self.route, self.rows = client, route, rows
        self._head = client.prepare_head("POST", PATHS[route], content_type=JSON)

    async def send(self, body: bytes, deadline: float) -> str:
        """Send one request; returns "200", another status code, or timeout/error/bad_response/job_failed."""
        data = self._head + b"%d\r\n\r\n%b" % (len(body), body)
        try:
            if self.route is Route.COMPAT:
                return await self._compat(data, deadline)
            if self.route is Route.PREDICT:
                return await self._predict(data, deadline)
            return await self._job(data, deadline)
        except TimeoutError:
            return TIMEOUT
        except TRANSPORT_ERRORS:
            return ERROR
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return BAD_RESPONSE

    async def _compat(self, data: bytes, deadline: float) -> str:
        status, body = await self.client.send(data, deadline)
        if status != 200:
            return str(status)
        return "200" if "prediction" in orjson.loads(body) else BAD_RESPONSE

    async def _predict(self, data: bytes, deadline: float) -> str:
        status, body = await self.client.send(data, deadline)
        if status != 200:
            return str(status)
        predictions = orjson.loads(body)["predictions"]
        return "200" if isinstance(predictions, list) and len(predictions) == self.rows else BAD_RESPONSE

    async def _job(self, data: bytes, deadline: float) -> str:
        status, body = await self.client.send(data, deadline)
        if status not in _ACCEPTED:
            return str(status)
        submitted = orjson.loads(body)
        status_path = submitted.get("status_url") or f"/v1/jobs/{submitted['job_id']}"
        poll = self.client.prepare("GET", _path_of(status_path))
        loop = asyncio.get_running_loop()
        delay = POLL_FIRST_S
        while True:
            left = deadline - loop.time()
            if left <= delay:  # the next poll would come after the deadline
                await asyncio.sleep(max(left, 0.0))
                return TIMEOUT
            await asyncio.sleep(delay)
            delay = min(delay * POLL_BACKOFF, POLL_MAX_S)
            status, body = await self.client.send(poll, deadline)
            if status != 200:
                return str(status)
            state = orjson.loads(body)["status"]
            if state == JOB_DONE:
                return "200"
            if state in JOB_FAILED_STATES:
                return JOB_FAILED


def _path_of(url: str) -> str:
    """The path (and query) of an absolute URL; a path as it is. Polls go to the client's own origin."""
    if "://" not in url:
        return url
    u = urlsplit(url)
    return (u.path or "/") + (f"?{u.query}" if u.query else "")
