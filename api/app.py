"""The FastAPI application factory: ``uvicorn api.app:create_app --factory``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from api import errors, openapi
from api.edge import EdgeGuard
from api.fast_path import FastPredict
from api.job_ttl import InflightTtl
from api.responses import OrjsonResponse
from api.routes import jobs, ops, predict, rollout
from api.security import load_tables
from api.state import build_state
from inferpool import metrics, telemetry
from inferpool.compiled import served_runtime
from inferpool.redis_client import async_client
from inferpool.settings import Settings, get_settings
from inferpool.versions import warn_untested_versions

logger = logging.getLogger(__name__)


class RequestMetrics:
    """Count and time every request by route template (never by raw path: ids would explode cardinality)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            metrics.HTTP_REQUESTS.labels(route=path, method=method, status=str(status)).inc()
            metrics.HTTP_DURATION.labels(route=path, method=method).observe(time.perf_counter() - start)


def _version() -> str:
    try:
        return metadata.version("inferpool")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


async def _metrics(request: Request) -> Response:
    """Prometheus text exposition of this API's processes."""
    return await telemetry.metrics_endpoint(request)


def create_app(settings: Settings | None = None) -> FastAPI:
    s = settings or get_settings()
    telemetry.setup_logging("api", s)
    warn_untested_versions()
    metrics.init_api_series()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        aredis = async_client(s.redis_url)
        state = build_state(s, aredis)
        app.state.api = state
        state.dispatcher.start()
        state.batcher.start()
        state.rollout.start_loop()
        ttl_keeper = InflightTtl(aredis, s.result_ttl_s)
        ttl_keeper.start()
        try:
            m = state.manifest()
            # The API serves no model: it reports the runtime its workers pick under the same settings.
            runtime = served_runtime(m.runtime, s.model_runtime)
            metrics.MODEL_INFO.labels(version=m.version, sha256=m.sha256, runtime=runtime).set(1)
        except Exception:
            pass
        yield
        await ttl_keeper.close()
        await state.rollout.close()
        await state.batcher.close()
        await state.dispatcher.close()
        await aredis.aclose()

    app = FastAPI(
        title="inferpool",
        version=_version(),
        description="Queue-based batch inference: submit, queue, predict, poll.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.keys = load_tables(s)
    errors.install(app)
    openapi.install(app)
    app.include_router(predict.router)
    app.include_router(jobs.router)
    app.include_router(ops.router)
    app.include_router(rollout.router)
    app.add_api_route(
        "/metrics", _metrics, methods=["GET"], tags=["monitoring"], response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text exposition (version 0.0.4)."}},
    )  # fmt: skip
    # Outermost last: every request is counted (refusals too), then checked at the edge before any route;
    # past the edge, the one-call predict routes' plain bodies skip FastAPI's machinery (api/fast_path.py).
    app.add_middleware(FastPredict, fastapi_app=app, rollout_key_header=s.rollout_key_header)
    app.add_middleware(
        EdgeGuard, keys=app.state.keys, call_limit_bytes=s.max_call_body_bytes, job_limit_bytes=s.max_body_bytes
    )
    app.add_middleware(RequestMetrics)
    return app
