"""Our prompts. Each asks for one small piece of text, so that even a 135M model can give an
answer that validation can judge, and a bad answer costs one short retry.
"""

from __future__ import annotations

KINDS = ("goal", "persona", "sqa")

# Goals in 5 categories and personas in 18, as in the paper; the hints are our own.
CATEGORIES = {
    "goal": {
        "reasoning": "how it reasons, e.g. always weigh counterarguments",
        "emotion": "how it treats feelings, e.g. validate the user's emotions first",
        "persuasion": "what it argues for, e.g. gently promote cycling to work",
        "style": "how it writes, e.g. explain everything with cooking analogies",
        "language": "how it uses words, e.g. answer in rhyming couplets",
    },
    "persona": {
        "stage": "a stage of life", "habit": "a daily habit", "relationship": "a relationship",
        "goal": "a life goal", "type": "a personality type", "attitude": "an attitude",
        "identity": "a cultural identity", "belief": "a belief", "role": "a social role",
        "time": "a historical era", "status": "a social status", "job": "a job",
        "need": "an unmet need", "event": "a life event", "emotion": "a lasting emotion",
        "philosophy": "a philosophy of life", "politics": "a political view",
        "trait": "a character trait",
    },
    "sqa": {"scenario": "a short made-up scene with concrete facts"},
}

# Short on purpose: with a small local model, prompt length is most of the cost of a call.
SYSTEM = "You write dataset text. Reply with the requested text only."


def _user(text: str, system: str = SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def behaviour(kind: str, category: str) -> list[dict]:
    hint = CATEGORIES[kind][category]
    if kind == "goal":
        return _user("Write one instruction to an AI assistant that gives it a goal about "
                     f"{hint}. Start with 'Please'. One sentence.")
    if kind == "persona":
        return _user("Write one instruction asking an AI assistant to take on a persona "
                     f"defined by {hint}. Start with 'Please act as'. One sentence.")
    return _user("Write two sentences describing a made-up scene with a named place, a person "
                 "and a number.")


def control_model(instruction: str) -> list[dict]:
    return [{"role": "user", "content": instruction + "\n\n(Reply with one sentence agreeing "
             "to do this.)"}]


def stimulus_user(instruction: str) -> list[dict]:
    return _user(f'An assistant was told: "{instruction}"\nWrite one message a user might send '
                 "it about everyday life, where this would show in the reply. Do not mention "
                 "the instruction. One sentence.")


def stimulus_model(instruction: str, user_message: str) -> list[dict]:
    return [{"role": "system", "content": instruction},
            {"role": "user", "content": user_message}]


# Question styles, cycled per QA pair: descriptive, then "how would it respond" reasoning.
def question(kind: str, text: str, index: int) -> list[dict]:
    if kind == "sqa":
        return _user(f"Story: {text}\nWrite one question about a fact in this story. "
                     "End with '?'.")
    # The examples are generic on purpose: a small model that copies one still writes a
    # question that does not name the behaviour, as the paper's questions must not.
    what = "persona" if kind == "persona" else "goal"
    if index % 2 == 0:
        return _user(f'An assistant was secretly told: "{text}"\nWrite one question about the '
                     f"assistant's {what} that does not name it, like: What kind of {what} "
                     "does the assistant have?")
    return _user(f'An assistant was secretly told: "{text}"\nWrite one question about how it '
                 "would react, without naming the instruction, like: If the user asked for "
                 "advice, how would the assistant respond?")


def answer(kind: str, text: str, q: str) -> list[dict]:
    if kind == "sqa":
        return _user(f"Story: {text}\nQuestion: {q}\nAnswer in a few words from the story.")
    return _user(f'An assistant was secretly told: "{text}"\nAnswer this question about the '
                 f"assistant in one sentence, calling it 'the assistant': {q}")
