"""Errors of ``latentqa data generate``.

``DatagenError`` is a ``LatentQAError``, so the command prints it as one line, no traceback.
"""

from __future__ import annotations

from ..errors import UsageError


class DatagenError(UsageError):
    """Bad input (seed file, records file, options) or a run that cannot go on."""


class BackendError(DatagenError):
    """The generator model could not be reached or refused the request (after retries)."""


class InvalidOutput(ValueError):
    """One model output failed validation; the caller logs it and asks again."""


class FieldFailed(RuntimeError):
    """Every attempt at one field gave invalid output; the unit it belongs to is skipped."""
