"""Errors a reader's user can fix: bad dialogs, questions, options and decoders.

They are ``ValueError`` subclasses so Python callers can catch them broadly; the CLI prints
them as one line without a traceback.
"""

from __future__ import annotations

from ..decoder import DecoderError
from ..errors import ReadingError

__all__ = ["ReadingError", "DecoderError", "DecoderMismatchError"]


class DecoderMismatchError(DecoderError):
    """A decoder trained for another target (hidden size, number of blocks or model name)."""
