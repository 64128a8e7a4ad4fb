"""inferpool's exception tree. HTTP status codes are chosen only in ``api/errors.py``.

InferpoolError
├── ModelError            the model directory holds no usable model
│   └── ModelIntegrityError   a model file does not match its manifest
├── RolloutError          a rollout plan change that cannot be made (no plan, a version in use)
├── InputError            a request's rows or parameters break a rule (names the field)
│   ├── MalformedBody         the body cannot be parsed at all (not JSON, not UTF-8 CSV)
│   └── UnsupportedMediaType  the body's content type is not one the route reads
├── JobNotFound           no job with that id, or it expired
├── Overloaded            predicted wait or backlog over its limit; carries retry_after_s
├── BrokerUnavailable     Redis cannot be reached
├── ResultTimeout         an answer did not arrive in time; carries the job id
├── PredictionFailed      the model raised on a request's rows (its version named)
└── AuthError             missing or wrong API key
"""

from __future__ import annotations


class InferpoolError(Exception):
    """Base of every error inferpool raises on purpose."""


class ModelError(InferpoolError):
    """Raised when the model directory holds no usable model."""


class ModelIntegrityError(ModelError):
    """Raised when a model file's sha256 differs from its manifest: it is never loaded."""


class RolloutError(InferpoolError):
    """Raised when a rollout or registry change cannot be made: no such plan or version, a version in use."""


class InputError(InferpoolError):
    """Raised when input breaks a rule; ``field`` names where, the message says which rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MalformedBody(InputError):
    """Raised when a body cannot be parsed at all, before any rule about its content applies."""


class UnsupportedMediaType(InputError):
    """Raised when a body comes with a content type the route does not read."""


class JobNotFound(InferpoolError):
    """Raised when a job id is unknown or its results have expired."""


class Overloaded(InferpoolError):
    """Raised when new work would wait longer than allowed; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BrokerUnavailable(InferpoolError):
    """Raised when Redis cannot be reached."""


class ResultTimeout(InferpoolError):
    """Raised when an answer did not arrive in time; the job goes on and can be polled."""

    def __init__(self, job_id: str, timeout_s: float) -> None:
        super().__init__(f"no answer within {timeout_s:g} s; poll /v1/jobs/{job_id}")
        self.job_id = job_id
        self.timeout_s = timeout_s


class PredictionFailed(InferpoolError):
    """Raised when the worker's model raised on a batch holding the request's rows, or answered with another
    version than the one routed; the message names the model's error, never a trace."""


class AuthError(InferpoolError):
    """Raised when a route needs an API key and none or a wrong one was given."""
