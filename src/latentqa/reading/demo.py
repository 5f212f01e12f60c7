"""``latentqa demo``: four hidden system prompts, read back from SmolLM2's activations.

For each dialog the target first writes a short greedy reply under its hidden instruction;
the decoder then reads the user turn and that reply (never the system prompt), answers two
questions, and ranks five candidate descriptions, with the real activations and with
another dialog's (the shuffled control). If the two rankings agree, the answer did not come
from the activations.
"""

from __future__ import annotations

import textwrap
import time

from .cases import CASES, DESCRIBE, DISTRACTOR

DEMO_CASES = [c for c in CASES if c.name in ("pirate", "salesperson", "rhymes", "plain")]
QUESTIONS = ["What is the persona of the assistant?", "What is the assistant trying to do?"]
REPLY_TOKENS = 32


def _wrap(label: str, text: str, width: int = 100) -> str:
    pad = " " * (len(label) + 1)
    return textwrap.fill(text, width, initial_indent=f"{label} ", subsequent_indent=pad)


def run_demo(lqa, *, max_new_tokens: int = 48, control=None, out=print) -> dict:
    """Run the demo with a loaded ``Reader``; returns what it printed, as data."""
    start = time.perf_counter()
    cases = DEMO_CASES
    replies = [lqa.target_reply(c.dialog(), max_new_tokens=REPLY_TOKENS) for c in cases]
    dialogs = [c.dialog(r) for c, r in zip(cases, replies)]
    answers = lqa.ask(dialogs, QUESTIONS, max_new_tokens=max_new_tokens, control=control)
    candidates = [c.description for c in cases] + [DISTRACTOR]
    real = lqa.score(dialogs, DESCRIBE, candidates)
    shuffled = lqa.score(dialogs, DESCRIBE, candidates, control="shuffled")
    read = (f"blocks {', '.join(map(str, lqa.spec.read_layers))} together"
            if lqa.spec.read_together else f"block {lqa.spec.read_layer}")
    out(f"latentqa demo: target {lqa.spec.target}, decoder {lqa.decoder_path}, read after "
        f"{read}, write after block {lqa.spec.write_layer}")
    out("The decoder reads the user turn and the reply, never the system prompt.\n")
    report = []
    for i, case in enumerate(cases):
        out(f"=== {i + 1}. {case.name} " + "=" * (90 - len(case.name)))
        out(_wrap("hidden instruction:", case.system))
        out(_wrap("user:              ", case.user))
        out(_wrap("target replied:    ", replies[i]))
        for q, a in zip(QUESTIONS, answers[i]):
            out(f"Q: {q}")
            out(_wrap("   A:", a or "(empty answer)"))
        out(f"ranking of descriptions for {DESCRIBE!r} (mean log-prob per token):")
        out(f"   {'real':>6}  {'shuffled':>8}  description")
        shuf = {c.candidate: c.mean_logprob for c in shuffled[i].candidates}
        for c in real[i].ranking():
            mark = "*" if c.candidate == case.description else " "
            out(f" {mark} {c.mean_logprob:6.2f}  {shuf[c.candidate]:8.2f}  {c.candidate}")
        out(f"   true description ranked {_rank(real[i], case.description)} of "
            f"{len(candidates)} with real activations, {_rank(shuffled[i], case.description)} "
            "with shuffled\n")
        report.append(dict(name=case.name, reply=replies[i], answers=answers[i],
                           rank_real=_rank(real[i], case.description),
                           rank_shuffled=_rank(shuffled[i], case.description)))
    out(f"(* = the true description; finished in {time.perf_counter() - start:.1f} s)")
    return {"cases": report}


def _rank(score, candidate: str) -> int:
    return [c.candidate for c in score.ranking()].index(candidate) + 1
