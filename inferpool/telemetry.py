"""Logging setup and the Prometheus exposition, once per process.

Logs are plain text by default and JSON lines with ``INFERPOOL_LOG_JSON=true``
(one object per event, extra fields such as job_id, task_id, worker and
durations carried through), so they ship into Loki or ELK unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

from inferpool.settings import Settings

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process_name = process

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(process: str, s: Settings) -> None:
    root = logging.getLogger()
    if getattr(root, "_inferpool_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    if s.log_json:
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(s.log_level.upper())
    root._inferpool_configured = True  # type: ignore[attr-defined]


def registry() -> CollectorRegistry:
    """Multiprocess-aware registry: sums every process's samples when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg
    return DEFAULT_REGISTRY


def exposition(extra: CollectorRegistry | None = None) -> bytes:
    out = generate_latest(registry())
    if extra is not None:
        out += generate_latest(extra)
    return out


async def metrics_endpoint(request) -> Any:
    from starlette.responses import Response

    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
