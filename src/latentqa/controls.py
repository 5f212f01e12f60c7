"""The shuffled control's one rule: whose activations each item reads instead of its own.

A donor is drawn, uniformly and independently for each item in order, from the pool items
whose label differs from the item's in every part (a label is a value, or a tuple such as
``(subject, object)`` whose parts must all differ). The draws depend only on the labels and
the seed. An item with no possible donor is an error that names it: a control that silently
skips items would compare the real and shuffled conditions over different examples.

Every shuffled control uses this rule: the Reader (each dialog is its own label), the persona
and relation evaluations, held-out loss and the trainer's validation.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

from .errors import LatentQAError


class NoDonorError(LatentQAError, ValueError):
    """An item has no donor: every candidate shares its label."""


def _differs(a, b) -> bool:
    if isinstance(a, tuple):
        return all(x != y for x, y in zip(a, b, strict=True))
    return a != b


def shuffled_donors(labels: Sequence[Hashable], seed: int = 0, *,
                    pool: Sequence[Hashable] | None = None,
                    names: Sequence[str] | None = None) -> list[int]:
    """For each label in ``labels``, the index in ``pool`` (default: ``labels`` itself) of
    its donor. ``names`` (optional, one per item) say which item had none, in the error."""
    pool = list(labels if pool is None else pool)
    # the +7 keeps these draws apart from other draws made with the same seed (candidates)
    rng = random.Random(seed + 7)
    donors = []
    for i, label in enumerate(labels):
        if not any(_differs(label, other) for other in pool):
            who = names[i] if names is not None else f"item {i}"
            raise NoDonorError(
                f"the shuffled control has no donor for {who} (label {label!r}): every "
                f"candidate among {len(pool)} shares its label; give items of at least two "
                "labels")
        while True:  # rejection sampling: uniform over the differing pool, and stable
            d = rng.randrange(len(pool))
            if _differs(label, pool[d]):
                donors.append(d)
                break
    return donors
