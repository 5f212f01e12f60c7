"""Reading: ask a target's activations questions through a trained decoder (issue 5).

See docs/reading.md. ``load()`` gives a ``Reader`` with ``ask`` and ``score``.
"""

from ..selection import Read
from .cases import CASES, HiddenPromptCase
from .controls import CONTROLS, NEUTRAL_DIALOGS
from .decoders import PRESETS, SHIPPED_DECODER, resolve_decoder
from .errors import DecoderError, DecoderMismatchError, ReadingError
from .reader import Reader, load
from .results import CandidateScore, Score

__all__ = [
    "CASES", "HiddenPromptCase", "CONTROLS", "NEUTRAL_DIALOGS", "PRESETS", "SHIPPED_DECODER",
    "resolve_decoder", "DecoderError", "DecoderMismatchError", "ReadingError", "Reader", "load",
    "CandidateScore", "Score", "Read",
]
