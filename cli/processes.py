"""The processes that make up inferpool, named once.

``inferpool up``, the Procfile and docker-compose.yml run exactly these
commands (a test checks the files against this table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    doc: str


PROCESSES: tuple[ProcessSpec, ...] = (
    ProcessSpec("api", ("inferpool", "api"), "FastAPI front end (uvicorn)"),
    ProcessSpec("worker_online", ("inferpool", "worker", "--role", "online"), "model worker for light and bulk rows"),
    ProcessSpec("worker", ("inferpool", "worker", "--role", "work"), "model worker for requests with work, scaled"),
    ProcessSpec("scaler", ("inferpool", "scaler"), "pool autoscaler and queue exporter"),
    ProcessSpec("flower", ("inferpool", "flower"), "Flower UI behind basic auth"),
)


def by_name() -> dict[str, ProcessSpec]:
    return {p.name: p for p in PROCESSES}
