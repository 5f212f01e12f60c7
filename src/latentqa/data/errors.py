"""Problems found in data files, and the error that carries them.

Validation collects every problem instead of stopping at the first, so a user fixing a file sees
them all at once. Each problem names the file, where in it (record index, JSONL line, qa label)
and the field, because "KeyError: 'label'" from deep inside a loader helps nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LatentQAError


@dataclass(frozen=True)
class Problem:
    file: str
    # "record 12", "line 13 (record 12)", "label 'goal-x'"; None for the whole file
    where: str | None
    field: str | None
    message: str
    index: int | None = None  # the record index, where there is one

    def __str__(self) -> str:
        parts = [self.file]
        if self.where:
            parts.append(self.where)
        if self.field:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts + [self.message])


class DataError(LatentQAError, ValueError):
    """Data files have problems; ``problems`` holds all of them, the message the first few."""

    SHOWN = 10

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[: self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"... and {len(self.problems) - self.SHOWN} more problems "
                         "(`latentqa data stats PATH...` lists them all)")
        head = "1 problem in the data" if len(self.problems) == 1 else \
            f"{len(self.problems)} problems in the data"
        super().__init__(head + ":\n  " + "\n  ".join(lines))
