"""API keys: required on data routes once INFERPOOL_API_KEYS is set (or INFERPOOL_AUTH=on), always on admin routes.

The check runs twice over one table: first in the ASGI layer (``api.edge``), on the headers alone, before a
byte of the body is read; then as FastAPI dependencies, which hand the route the caller's key id (already
found by the edge) and document the header in the OpenAPI schema. Keys are compared in constant time and
callers are recorded by key id, never by secret.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from fastapi import Request
from fastapi.security import APIKeyHeader

from inferpool.errors import AuthError, InferpoolError
from inferpool.settings import Settings, parse_keys

logger = logging.getLogger(__name__)

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (when keys are configured).")

ANONYMOUS = "anonymous"
# Open to anyone: orchestrators' probes, Prometheus, and the API's own documentation.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
ADMIN_PREFIX = "/v1/admin/"
# Where the edge leaves the caller's key id for the dependencies (``scope["state"]``, i.e. ``request.state``).
KEY_ID_STATE = "key_id"


class AuthConfigError(InferpoolError):
    """Raised at start-up when INFERPOOL_AUTH=on but no INFERPOOL_API_KEYS are set."""


def _match(given: str | None, table: dict[str, str]) -> str | None:
    if not given:
        return None
    found = None
    for secret, key_id in table.items():  # every secret compared, so the time says nothing about which
        if hmac.compare_digest(given.encode(), secret.encode()):
            found = key_id
    return found


@dataclass(frozen=True)
class KeyTables:
    """Secret -> key id, for data and admin routes; ``required``: data routes need a key."""

    api: dict[str, str]
    admin: dict[str, str]
    required: bool

    def data_caller(self, given: str | None) -> str:
        """Key id of a data route's caller ('anonymous' when keys are not required); AuthError otherwise."""
        if not self.required:
            return ANONYMOUS
        key_id = _match(given, self.api) or _match(given, self.admin)
        if key_id is None:
            raise AuthError("a valid X-API-Key header is required")
        return key_id

    def admin_caller(self, given: str | None) -> str:
        """Key id of an admin caller. Admin routes never run without a configured admin key."""
        if not self.admin:
            raise AuthError("admin routes are disabled: set INFERPOOL_ADMIN_KEYS")
        key_id = _match(given, self.admin)
        if key_id is None:
            raise AuthError("a valid admin X-API-Key header is required")
        return key_id

    def caller_of(self, path: str, given: str | None) -> str | None:
        """The key id a request to ``path`` runs as; None for a public path. Raises AuthError."""
        if path in PUBLIC_PATHS:
            return None
        if path.startswith(ADMIN_PREFIX):
            return self.admin_caller(given)
        return self.data_caller(given)


def load_tables(settings: Settings) -> KeyTables:
    api, admin_table = parse_keys(settings.api_keys), parse_keys(settings.admin_keys)
    if settings.auth == "on" and not api:
        raise AuthConfigError("INFERPOOL_AUTH=on but INFERPOOL_API_KEYS is empty: set key_id:secret pairs")
    if settings.auth == "off":
        if api:
            logger.warning("INFERPOOL_AUTH=off: INFERPOOL_API_KEYS is ignored, every data route is open")
        return KeyTables(api, admin_table, required=False)
    if not api:
        logger.warning(
            "no INFERPOOL_API_KEYS: every data route is open to anyone who reaches the port "
            "(set keys, or INFERPOOL_AUTH=off to say it is on purpose)"
        )
    return KeyTables(api, admin_table, required=bool(api))


def _edge_key_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get(KEY_ID_STATE)


async def caller(request: Request) -> str:
    """Key id of the caller of a data route (found by the edge; checked here too if the edge did not run)."""
    return _edge_key_id(request) or request.app.state.keys.data_caller(request.headers.get("x-api-key"))


async def admin(request: Request) -> str:
    """Key id of an admin caller."""
    found = _edge_key_id(request)
    if found is not None and found != ANONYMOUS:
        return found
    return request.app.state.keys.admin_caller(request.headers.get("x-api-key"))
