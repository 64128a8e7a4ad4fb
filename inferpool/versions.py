"""The packages whose internals inferpool reads or patches, and the versions it is tested with.

Each range is the package's bound in pyproject.toml (tests/core/test_contracts.py checks that they agree and
pins every internal relied on). A process started with a version outside its range logs one warning at
start-up (``warn_untested_versions``), since such a change shows up only as wrong numbers: depth
under-counted by the scaler, live work re-sent by the re-dispatcher.
"""

from __future__ import annotations

import logging
import re
from importlib import metadata
from typing import Any

logger = logging.getLogger(__name__)

# distribution name -> (lowest tested, first untested), as in pyproject.toml's ">=low,<high".
TESTED: dict[str, tuple[str, str]] = {
    "celery": ("5.4", "5.8"),
    "kombu": ("5.4", "5.8"),
    "billiard": ("4.2", "4.4"),
    "flower": ("2.0", "2.3"),
    "prometheus-client": ("0.20", "0.27"),
    "redis": ("5", "9"),
}

_warned = False


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"5.7.0rc1"`` -> ``(5, 7, 0)``."""
    m = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def in_range(version: str, low: str, high: str) -> bool:
    return release(low) <= release(version) < release(high)


def untested(installed: dict[str, str | None] | None = None) -> list[str]:
    """One line per package installed at a version outside its tested range (missing ones are not checked)."""
    found = installed if installed is not None else {name: _installed(name) for name in TESTED}
    out = []
    for name, (low, high) in TESTED.items():
        version = found.get(name)
        if version is not None and not in_range(version, low, high):
            out.append(f"{name} {version} (tested: >={low},<{high})")
    return out


def warn_untested_versions(*_: Any, **__: Any) -> None:
    """Log once per process which packages are outside their tested range. Takes and ignores any
    arguments, so that it can be connected to a Celery signal as it is."""
    global _warned
    if _warned:
        return
    _warned = True
    outside = untested()
    if outside:
        logger.warning(
            "installed versions outside the range inferpool is tested with: %s; queue depths, redelivery "
            "and pool sizes rely on their internals (tests/core/test_contracts.py checks them)",
            "; ".join(outside),
        )


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
