"""The benchmarks' lean HTTP client is the load generator's: :mod:`inferpool.loadtest.http` (one client, not two).

Kept so ``from bench.rawhttp import RawClient`` goes on working: ``RawClient(base_url, timeout_s=...)``,
``status, body = await client.post(path, obj_or_bytes)``, ``await client.close()``; failures raise one of
``TRANSPORT_ERRORS`` (TimeoutError is among them: it is an OSError).
"""

from __future__ import annotations

from inferpool.loadtest.http import TRANSPORT_ERRORS, HttpClient, ProtocolError, Response

RawClient = HttpClient

__all__ = ["TRANSPORT_ERRORS", "HttpClient", "ProtocolError", "RawClient", "Response"]
