"""Controls: does an answer come from the activations, or from the decoder's own priors?

``control="shuffled"`` gives each dialog the activations of another: with several dialogs,
dialog i gets those of dialog i+1 (a cyclic shift, so no dialog keeps its own); with one
dialog, those of ``NEUTRAL_DIALOGS`` (plain exchanges with no system prompt, persona or aim;
the first one for a single dialog). ``control="none"`` keeps the same probe, with as many
placeholders as the real reading, but injects nothing: the placeholders stay "?" tokens.
An answer that survives either control was not read from the activations.
"""

from __future__ import annotations

from .errors import ReadingError

CONTROLS = (None, "shuffled", "none")

# Fixed, deliberately bland dialogs: the shuffled control for a single dialog reads these.
# Read with the default selection (every turn; they have no system prompt).
NEUTRAL_DIALOGS = [
    [{"role": "user", "content": "How many days are there in a leap year?"},
     {"role": "assistant", "content": "A leap year has 366 days."}],
    [{"role": "user", "content": "What is the boiling point of water at sea level?"},
     {"role": "assistant", "content": "Water boils at 100 degrees Celsius at sea level."}],
    [{"role": "user", "content": "Can you name a primary colour?"},
     {"role": "assistant", "content": "Red is a primary colour."}],
]


def check_control(control) -> str | None:
    if control not in CONTROLS:
        raise ReadingError(f"control must be None (real activations), 'shuffled' or 'none', "
                           f"got {control!r}")
    return control


def shuffled_sources(n: int) -> list[int]:
    """For dialogs 0..n-1 with n > 1, the dialog whose activations each one gets."""
    return [(i + 1) % n for i in range(n)]
