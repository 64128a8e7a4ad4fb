"""API keys: optional on data routes (required once INFERPOOL_API_KEYS is set), always on admin routes.

Keys are compared in constant time and callers are recorded by key id, never by secret.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import APIKeyHeader

from inferpool.errors import AuthError
from inferpool.settings import parse_keys

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (when keys are configured).")

ANONYMOUS = "anonymous"


def _match(given: str | None, table: dict[str, str]) -> str | None:
    if not given:
        return None
    found = None
    for secret, key_id in table.items():
        if hmac.compare_digest(given.encode(), secret.encode()):
            found = key_id
    return found


async def caller(request: Request) -> str:
    """Key id of the caller of a data route; 'anonymous' when no keys are configured."""
    table = request.app.state.api_keys
    admin = request.app.state.admin_keys
    if not table:
        return ANONYMOUS
    given = request.headers.get("x-api-key")
    key_id = _match(given, table) or _match(given, admin)
    if key_id is None:
        raise AuthError("a valid X-API-Key header is required")
    return key_id


async def admin(request: Request) -> str:
    """Key id of an admin caller. Admin routes never run without a configured admin key."""
    table = request.app.state.admin_keys
    if not table:
        raise AuthError("admin routes are disabled: set INFERPOOL_ADMIN_KEYS")
    key_id = _match(request.headers.get("x-api-key"), table)
    if key_id is None:
        raise AuthError("a valid admin X-API-Key header is required")
    return key_id


def load_tables(settings) -> tuple[dict[str, str], dict[str, str]]:
    return parse_keys(settings.api_keys), parse_keys(settings.admin_keys)
