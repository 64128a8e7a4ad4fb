"""The API key that client commands (``inferpool loadtest``, ``inferpool status --url``) send as X-API-Key.

It comes from ``INFERPOOL_API_KEY`` or from a file (``--api-key-file``), never from the command line:
argv is readable by every user of the machine (``ps``, ``/proc/<pid>/cmdline``) and lands in shell
history. ``--api-key`` is still recognised, only to refuse it with a message that says what to do.
This is the client's key, read here and nowhere else; the server's keys are in the settings.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

API_KEY_ENV = "INFERPOOL_API_KEY"


class ApiKeyError(ValueError):
    """Raised when the key is given on the command line, or its file cannot be read or is empty."""


def add_api_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help=f"file holding the X-API-Key to send (default: the {API_KEY_ENV} environment variable)",
    )
    parser.add_argument("--api-key", default=None, help=argparse.SUPPRESS)  # refused, see api_key_from


def api_key_from(ns: argparse.Namespace) -> str | None:
    """The key to send, or None for none."""
    if getattr(ns, "api_key", None) is not None:
        raise ApiKeyError(
            f"--api-key would show the key to every user of this machine (ps): set {API_KEY_ENV} "
            "or pass --api-key-file instead"
        )
    path = getattr(ns, "api_key_file", None)
    if path is not None:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise ApiKeyError(f"--api-key-file {path}: {exc.strerror or exc}") from None
        if not key:
            raise ApiKeyError(f"--api-key-file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None
