"""Errors a reader's user can fix: bad dialogs, questions, options and decoders.

They are ``ValueError`` subclasses so Python callers can catch them broadly; the CLI prints
them as one line without a traceback.
"""

from __future__ import annotations

from ..errors import LatentQAError


class ReadingError(LatentQAError, ValueError):
    """Bad input to ``ask``/``score``: an empty dialog, no questions, nothing to read..."""


class DecoderError(ReadingError):
    """A decoder directory that cannot be used: missing, incomplete, or unknown options."""


class DecoderMismatchError(DecoderError):
    """A decoder trained for another target (hidden size, number of blocks or model name)."""
