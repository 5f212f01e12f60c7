"""What one request may ask for, so that no single client can tie up the model for long."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000  # request body; larger -> 413
    max_messages: int = 64  # messages per dialog
    max_dialog_tokens: int = 2048  # rendered dialog (also capped by the model's context)
    max_questions: int = 16  # questions per /v1/read or /v1/score request
    max_candidates: int = 32  # candidates per /v1/score request
    max_rows: int = 64  # questions x candidates per /v1/score request
    max_text_chars: int = 2000  # one question or candidate
    max_new_tokens: int = 256  # generated tokens per answer or reply
    timeout_s: float = 120.0  # waiting for the model, queue included; then 504
    max_queue: int = 64  # requests waiting for the model; more -> 503

    def to_dict(self) -> dict:
        return asdict(self)
