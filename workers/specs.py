"""What a predict task accepts in its spec: only what inferpool's own producers write.

A message on a queue is anyone's who can reach the broker (Flower's send-task names any task and any
arguments), and the task writes where its spec says: a reply list, a result key made from its id, a
job's keys made from the job id. So before it touches Redis, a task checks every name and size in its
spec against what inferpool's producers (``api.dispatch``, ``api.jobs`` through ``inferpool.publish``,
the re-dispatcher) write. A spec that fails is refused: logged, counted, and its message acked with
nothing written anywhere.
"""

from __future__ import annotations

import re
from typing import Any

from inferpool import keys
from inferpool.errors import InferpoolError

# Task and job ids are hex tokens (api.dispatch, api.jobs); letters, digits, '-' and '_' leave room for
# test and tool ids. Never ':' or '*': an id must not make a key of another kind (inferpool:batch:<id>:spec).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The one kind of list a task may push to: an API process's reply list (api.dispatch).
_REPLY = re.compile(re.escape(keys.reply_list("")) + r"[A-Za-z0-9_-]{1,64}")
# Sanity bounds, not the API's limits: a worker configured apart from the API must never refuse real work
# (a refused message is gone). Simulated work is cut short by the task time limit anyway.
MAX_ROWS = 10_000_000
MAX_WORK_MS = 10_000_000
MAX_REQUESTS = 100_000


class SpecRefused(InferpoolError):
    """Raised when a task's spec names keys or values inferpool's producers never write; ``field`` says which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _int(spec: dict[str, Any], name: str, low: int, high: int) -> int:
    value = spec.get(name, 0)
    # bool is an int to Python, never to our producers.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SpecRefused(name, f"must be an integer in [{low}, {high}]")
    return value


def _name(spec: dict[str, Any], name: str, pattern: re.Pattern[str]) -> None:
    value = spec.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SpecRefused(name, "is not a name inferpool writes")


def check_spec(spec: Any) -> None:
    """Raise :class:`SpecRefused` unless ``spec`` is one inferpool's producers could have written."""
    if not isinstance(spec, dict):
        raise SpecRefused("spec", "must be an object")
    if spec.get("queue") not in keys.ALL_QUEUES:
        raise SpecRefused("queue", "is not one of inferpool's queues")
    _int(spec, "work_ms", 0, MAX_WORK_MS)
    _int(spec, "n", 0, MAX_ROWS)
    if "mv" in spec:
        _name(spec, "mv", _ID)  # a model version is a manifest's name: never a path
    if "job" in spec:
        _name(spec, "job", _ID)
        _int(spec, "chunk", 0, MAX_ROWS)
        return
    _name(spec, "id", _ID)
    _int(spec, "reqs", 0, MAX_REQUESTS)
    if spec.get("reply") is not None:
        _name(spec, "reply", _REPLY)
    if spec.get("n") and not isinstance(spec.get("rows"), str):
        raise SpecRefused("rows", "must be base64 text")
