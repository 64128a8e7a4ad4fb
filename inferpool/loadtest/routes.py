"""What each ``--route`` sends and how its answer is judged; one coroutine per request.

Each call returns the request's status string (see ``records``). The caller
owns the overall deadline (``--timeout`` covers a whole job, submit to result).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import orjson

from inferpool.loadtest.config import Features, Route
from inferpool.loadtest.records import BAD_RESPONSE, ERROR, JOB_FAILED, TIMEOUT

N_FEATURES = 20
FIXED_ROW = np.round(np.linspace(-1.0, 1.0, N_FEATURES), 3)
JSON_HEADERS = {"Content-Type": "application/json"}
# Job polling: first poll after 10 ms, then 1.5x longer, never more than 100 ms apart,
# so a job's latency is over-stated by at most ~100 ms.
POLL_FIRST_S = 0.01
POLL_BACKOFF = 1.5
POLL_MAX_S = 0.1
JOB_DONE = "succeeded"
JOB_FAILED_STATES = ("failed",)


class Payloads:
    """Request bodies for one route: ``rows`` feature rows plus the simulated work."""

    def __init__(self, route: Route, rows: int, features: Features, rng: np.random.Generator) -> None:
        self.route, self.rows, self.features, self.rng = route, rows, features, rng

    def _rows(self) -> np.ndarray:
        if self.features is Features.FIXED:
            return np.broadcast_to(FIXED_ROW, (self.rows, N_FEATURES))
        return self.rng.standard_normal((self.rows, N_FEATURES))

    def body(self, work_ms: int) -> bytes:
        x = self._rows()
        if self.route is Route.COMPAT:
            data: dict[str, Any] = {"X": x[0], "work": work_ms}
        else:
            data = {"instances": np.ascontiguousarray(x), "work_ms": work_ms}
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


async def send(client: httpx.AsyncClient, route: Route, body: bytes, rows: int) -> str:
    """Send one request on ``route`` and return its status; never raises for HTTP or network trouble."""
    try:
        if route is Route.PREDICT:
            return await _predict(client, body, rows)
        if route is Route.COMPAT:
            return await _compat(client, body)
        return await _job(client, body)
    except httpx.TimeoutException:
        return TIMEOUT
    except httpx.HTTPError:
        return ERROR
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return BAD_RESPONSE


async def _predict(client: httpx.AsyncClient, body: bytes, rows: int) -> str:
    r = await client.post("/v1/predict", content=body, headers=JSON_HEADERS)
    if r.status_code != 200:
        return str(r.status_code)
    predictions = orjson.loads(r.content)["predictions"]
    return "200" if isinstance(predictions, list) and len(predictions) == rows else BAD_RESPONSE


async def _compat(client: httpx.AsyncClient, body: bytes) -> str:
    r = await client.post("/predict", content=body, headers=JSON_HEADERS)
    if r.status_code != 200:
        return str(r.status_code)
    return "200" if "prediction" in orjson.loads(r.content) else BAD_RESPONSE


async def _job(client: httpx.AsyncClient, body: bytes) -> str:
    r = await client.post("/v1/jobs", content=body, headers=JSON_HEADERS)
    if r.status_code not in (200, 201, 202):
        return str(r.status_code)
    submitted = orjson.loads(r.content)
    status_url = submitted.get("status_url") or f"/v1/jobs/{submitted['job_id']}"
    delay = POLL_FIRST_S
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * POLL_BACKOFF, POLL_MAX_S)
        r = await client.get(status_url)
        if r.status_code != 200:
            return str(r.status_code)
        state = orjson.loads(r.content)["status"]
        if state == JOB_DONE:
            return "200"
        if state in JOB_FAILED_STATES:
            return JOB_FAILED
