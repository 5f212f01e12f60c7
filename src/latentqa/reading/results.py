"""What ``score`` returns: each candidate's log-probability as the decoder's answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CandidateScore:
    candidate: str
    logprob: float  # total over the candidate's tokens and its end-of-turn marker
    num_tokens: int
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.num_tokens, 1)

    def to_dict(self) -> dict:
        return dict(asdict(self), mean_logprob=self.mean_logprob)


@dataclass
class Score:
    question: str
    candidates: list[CandidateScore]  # in the order given

    def ranking(self, by: str = "mean") -> list[CandidateScore]:
        """Best first. ``mean`` (per token; the default, fair to candidates of different
        lengths) or ``total``."""
        if by not in ("mean", "total"):
            raise ValueError(f"rank by 'mean' or 'total', got {by!r}")
        key = (lambda c: c.mean_logprob) if by == "mean" else (lambda c: c.logprob)
        return sorted(self.candidates, key=key, reverse=True)

    @property
    def best(self) -> str:
        return self.ranking()[0].candidate

    def to_dict(self) -> dict:
        return {"question": self.question, "best": self.best,
                "candidates": [c.to_dict() for c in self.candidates]}
