"""Errors of the load generator. It is a client of inferpool, so these stay out of ``inferpool.errors``.

SpecError         a --mix, --profile or other flag value cannot be used (the message says why)
"""

from __future__ import annotations


class SpecError(ValueError):
    """Raised when a --mix, --profile or flag value is malformed; the message names the flag and the rule."""
