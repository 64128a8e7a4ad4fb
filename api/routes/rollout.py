"""Admin routes of a model rollout: start, advance, pause, resume, abort, and its audit trail."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.inputs import require_json
from api.openapi import problems
from api.responses import OrjsonResponse
from api.rollout import Rollout
from api.schemas import Problem, RolloutAudit, RolloutPlan
from api.security import admin, api_key_header
from inferpool import rollout_store
from inferpool.rollout import Mode

router = APIRouter(tags=["admin"], dependencies=[Depends(api_key_header)])


class StartRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A registered model version.")
    mode: Literal["canary", "shadow"] = "canary"
    stable: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Default: the served version.")
    steps: str | None = Field(
        None, max_length=200, description="canary: shares in %, e.g. '5,25,50,100'; shadow: the sampled %."
    )
    step_s: float | None = Field(None, gt=0, description="Minimum seconds per step.")
    min_requests: int | None = Field(None, ge=1, description="Minimum candidate requests per step.")


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


def _rollout(request: Request) -> Rollout:
    return request.app.state.api.rollout


# 409: the command does not fit the rollout's state (none running, another not ended, an unknown version).
_CONFLICT = {409: {"model": Problem, "description": "The rollout's state or the versions named refuse it."}}


@router.post(
    "/v1/admin/rollout",
    status_code=201,
    response_model=RolloutPlan,
    responses={**problems(400, 401, 415, 422), **_CONFLICT},
)
async def start(
    body: StartRollout, request: Request, who: str = Depends(admin), __: None = Depends(require_json)
) -> OrjsonResponse:
    """Start a canary or shadow rollout of ``candidate`` against the stable version."""
    stable = body.stable or request.app.state.api.manifest().version
    plan = await _rollout(request).start(
        Mode(body.mode), body.candidate, who, body.steps, body.step_s, body.min_requests, stable
    )
    return OrjsonResponse(plan.to_json(), status_code=201)


@router.post(
    "/v1/admin/rollout/{action}", response_model=RolloutPlan, responses={**problems(400, 401, 415, 422), **_CONFLICT}
)
async def command(
    action: Literal["advance", "pause", "resume", "abort"], body: Command, request: Request,
    who: str = Depends(admin), __: None = Depends(require_json),
) -> OrjsonResponse:  # fmt: skip
    """Move the running rollout by hand; every change is audited with who and why."""
    plan = await _rollout(request).command(action, who, body.reason or f"{action} by operator")
    return OrjsonResponse(plan.to_json())


@router.get("/v1/admin/rollout/audit", response_model=RolloutAudit, responses=problems(401, 422))
async def audit(request: Request, limit: int = Query(100, ge=1, le=1000), _: str = Depends(admin)) -> OrjsonResponse:
    """Every change of a rollout's share, newest first: who, when, why."""
    return OrjsonResponse({"records": await rollout_store.audit_log(request.app.state.api.redis, limit)})
