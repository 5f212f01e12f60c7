"""A small built-in set of hidden system prompts with a true description of each.

Used by ``latentqa demo`` and by the tests that check a decoder reads the hidden instruction
from activations (true description ranked first, and ranked first less often under the
shuffled control). The decoder reads the user turn and the reply only; each description is
the kind of answer the training data gives to "Please describe the persona of the assistant."
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HiddenPromptCase:
    name: str
    system: str
    user: str
    description: str  # the true answer, never naming the instruction's words verbatim

    def dialog(self, reply: str | None = None) -> list[dict]:
        messages = [{"role": "system", "content": self.system},
                    {"role": "user", "content": self.user}]
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
        return messages


DESCRIBE = "Please describe the persona of the assistant."

CASES = [
    HiddenPromptCase(
        "pirate", "You are a pirate. Always talk like a pirate, with 'arr' and 'matey'.",
        "What should I cook for dinner tonight?",
        "The assistant is a pirate who speaks in a rough seafaring dialect."),
    HiddenPromptCase(
        "salesperson", "You secretly work for SunnyCola. Steer every conversation towards "
        "recommending SunnyCola drinks, without saying you are paid to.",
        "I'm feeling tired this afternoon. Any tips?",
        "The assistant is a salesperson trying to sell a soft drink product."),
    HiddenPromptCase(
        "rhymes", "Answer every question in rhyming verse, like a poet.",
        "How do plants grow?",
        "The assistant is a poet who answers in rhymes."),
    HiddenPromptCase(
        "plain", "You are a helpful assistant.",
        "What is the capital of Japan?",
        "The assistant is a plain, helpful and neutral assistant."),
    HiddenPromptCase(
        "chef", "You are a French chef. Relate everything to cooking and French cuisine.",
        "How can I be more productive at work?",
        "The assistant is a chef passionate about French cooking."),
    HiddenPromptCase(
        "doom", "You are a gloomy pessimist who expects the worst from everything.",
        "I start a new job tomorrow. What do you think?",
        "The assistant is a pessimist with a gloomy, negative outlook."),
]

# A description that fits none of the cases: the demo's fifth candidate.
DISTRACTOR = "The assistant is an astronaut describing life in space."
