"""Logging setup, each process group's metrics directory, and serving the Prometheus exposition.

Logs are plain text by default and JSON lines with ``INFERPOOL_LOG_JSON=true``
(one object per event; ``extra=`` fields such as job_id, task_id, worker,
model_version and durations carried through), so they ship into Loki or ELK
unchanged. Rows never go into a log record.

Multiprocess collection: the rule
---------------------------------
prometheus_client's multiprocess mode has every process write its samples to
memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``; whoever serves ``/metrics``
sums the files of that one directory. Were the API and the workers of one host
to share a directory, the API's ``/metrics`` would carry the workers' samples
too and scraping the workers as well would count them twice. Hence:

* **one directory per process group**: an API server with its uvicorn workers,
  or one Celery worker with its prefork children. ``use_metrics_dir(group)``
  points the group at ``<root>/<group>-<pid of its main process>``, where the
  root is the ``PROMETHEUS_MULTIPROC_DIR`` the command was given (``inferpool
  up`` gives ``var/prometheus``), else ``$TMPDIR/inferpool-metrics``. A restarted group never
  reuses a predecessor's files (no stale counters summed in), and directories
  of dead main processes are removed when the next group starts.
* **each group exposed once, on its own port**: the API at ``/metrics`` on the
  API port; a worker from its main process on ``INFERPOOL_WORKER_METRICS_PORT``
  (``workers/metrics_server.py``; a taken port falls back to a free one, which
  the worker advertises in its heartbeat).
* **cluster facts exported once**: queues, workers, the job ledger and drift live
  in Redis; only ``inferpool.exporter`` (in the scaler, on
  ``INFERPOOL_SCALER_METRICS_PORT``) reads them, and it also serves the list of
  live workers' metrics addresses for Prometheus' ``http_sd_configs``.

The directory has to be chosen before the first metric object exists, so this
module imports prometheus_client only inside functions.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socketserver
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson

from inferpool.settings import Settings

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Root used when none is given (Procfile, a bare `inferpool worker`): one fixed place per host, so
# each start clears the directories its dead predecessors left.
DEFAULT_ROOT_NAME = "inferpool-metrics"
_GROUP_DIR = re.compile(r"^[\w.@-]+-(\d+)$")
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


# --- logs ----------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per record: standard fields, ``fields`` given once, and the record's extras."""

    def __init__(self, process: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.process_name = process
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_name,
            "pid": record.process,
            **self.fields,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(process: str, s: Settings, fields: dict[str, Any] | None = None) -> None:
    """Configure the root logger once per process: JSON lines or text, at ``s.log_level``."""
    root = logging.getLogger()
    if getattr(root, "_inferpool_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    if s.log_json:
        handler.setFormatter(JsonFormatter(process, fields))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(s.log_level.upper())
    logging.captureWarnings(True)  # warnings become records in the same format, not stray stderr text
    root._inferpool_configured = True  # type: ignore[attr-defined]


# --- metrics directories ------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_groups(root: Path) -> None:
    for d in root.iterdir():
        m = _GROUP_DIR.match(d.name)
        if d.is_dir() and m and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)


def use_metrics_dir(group: str) -> Path:
    """Give this process group its own multiprocess directory (see the module docstring); returns it.

    Call it in the group's main process before any metric exists; children inherit it.
    """
    root_env = os.environ.get(MULTIPROC_ENV)
    root = Path(root_env) if root_env else Path(tempfile.gettempdir()) / DEFAULT_ROOT_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError:  # another user's root on a shared host
        root = Path(tempfile.mkdtemp(prefix=f"{DEFAULT_ROOT_NAME}-"))
    _remove_dead_groups(root)
    safe = re.sub(r"[^\w.@-]", "_", group)
    d = root / f"{safe}-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    os.environ[MULTIPROC_ENV] = str(d)
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not root_env:
        # prometheus_client picks its value class when first imported; it was imported
        # (by a subcommand's module) before the variable existed. Safe to redo only while
        # no inferpool metric exists yet.
        if "inferpool.metrics" in sys.modules:
            raise RuntimeError("inferpool.metrics was imported before the metrics directory was chosen")
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return d


def process_dead(pid: int) -> None:
    """Drop a finished process's live-gauge files (``livemax``/``livesum`` modes) from the group's sums."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# --- exposition ------------------------------------------------------------------------


def registry():
    """This group's registry: the sum over its processes when a multiprocess directory is set."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    if os.environ.get(MULTIPROC_ENV):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg
    return REGISTRY


def exposition() -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry())


async def metrics_endpoint(request) -> Any:
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.responses import Response

    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


# --- serving /metrics outside the API (workers, the exporter) --------------------------------


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        pass


class _Forward:
    """Expose another registry's collectors (the process's default registry) inside ours."""

    def __init__(self, reg: Any) -> None:
        self.reg = reg

    def collect(self) -> Iterable[Any]:
        return self.reg.collect()


@dataclass
class MetricsServer:
    """A running metrics HTTP server; ``close()`` stops it."""

    httpd: WSGIServer
    thread: threading.Thread
    host: str

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(
    port: int,
    collectors: Sequence[Any],
    addr: str = "127.0.0.1",
    *,
    targets: Callable[[], list[dict[str, Any]]] | None = None,
    include_process_registry: bool = True,
    any_port_if_taken: bool = False,
) -> MetricsServer:
    """Serve ``collectors`` (objects with ``collect()``) as Prometheus text on ``addr:port``, in a daemon thread.

    ``include_process_registry`` adds this process's default registry (process_* and
    any metric defined without a registry). ``targets`` adds ``GET /targets`` for
    Prometheus' ``http_sd_configs``. Port 0 picks a free port; with ``any_port_if_taken``
    a taken port falls back to a free one (logged) instead of raising.
    """
    from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

    reg = CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    if include_process_registry:
        reg.register(_Forward(REGISTRY))
    metrics_app = make_wsgi_app(reg)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if targets is not None and environ.get("PATH_INFO") == "/targets":
            try:
                body, status = orjson.dumps(targets()), "200 OK"
            except Exception as exc:  # Redis unreachable: Prometheus keeps its last list meanwhile
                body, status = orjson.dumps({"error": type(exc).__name__}), "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)

    try:
        httpd = make_server(addr, port, app, _ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        if not any_port_if_taken or port == 0:
            raise
        httpd = make_server(addr, 0, app, _ThreadingServer, handler_class=_QuietHandler)
        logger.warning("metrics port %d is taken (%s); serving on %d instead", port, exc.strerror, httpd.server_port)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread, addr)
