"""Context prediction ("PastLens") records: the words just before or after one read token,
from the training data's own texts only."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from test_classification import assert_reads_only_the_last_token

from latentqa.data import load_data, split_by_label
from latentqa.data.context import (
    AFTER_QUESTIONS,
    BEFORE_QUESTIONS,
    add_context_prediction,
    context_example,
    context_texts,
)


def norm(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("direction", ["before", "after"])
def test_an_example_asks_for_the_words_next_to_the_read_word(direction):
    text = "one two three four five six seven eight nine ten"
    for seed in range(30):
        shown, question, answer = context_example(text, direction, 3, random.Random(seed),
                                                  min_words=2, window=4)
        assert text.startswith(shown) or f" {shown}" in text
        read_word = shown.split()[-1]
        assert len(shown.split()) <= 5  # the read word and at most 4 words before it
        n = len(answer.split())
        assert 2 <= n <= 3
        if direction == "before":
            assert question in BEFORE_QUESTIONS
            assert f"{answer} {read_word}" in text and shown.endswith(f"{answer} {read_word}")
        else:
            assert question in AFTER_QUESTIONS
            assert f"{read_word} {answer}" in text and answer not in shown
    assert context_example("too short", "before", 3, random.Random(0), min_words=2) is None


def test_records_come_from_the_training_split_only_half_each_way_one_token_read(shared,
                                                                               smol_tokenizer):
    data = load_data([shared("latentqa", "system.json"), shared("latentqa", "qa.json")])
    train, _ = split_by_label(data, held_out=0.2, seed=0)
    mixed = add_context_prediction(train, 0.3, seed=1)
    added = mixed.records[len(train.records):]
    assert mixed.records[:len(train.records)] == train.records
    assert abs(len(added) / len(mixed.pairs) - 0.3) < 0.01
    train_texts = [norm(t) for t in context_texts(train)]
    directions = Counter()
    for record in added:
        shown = norm(record.messages[0]["content"])
        (question, answer), = mixed.qa[record.label]
        direction = "before" if question in BEFORE_QUESTIONS else "after"
        directions[direction] += 1
        assert 2 <= len(answer.split()) <= 8
        joined = f"{shown} {answer}" if direction == "after" else shown
        # from a text of the data given (the training split), read where it was cut
        assert any(joined in t for t in train_texts), (shown, answer)
    assert abs(directions["before"] - directions["after"]) <= 1
    for record in added[:5]:
        assert_reads_only_the_last_token(smol_tokenizer, record)
    assert add_context_prediction(train, 0.3, seed=1).qa == mixed.qa
    assert add_context_prediction(train, 0.0) is train
    for bad in (dict(share=1.0), dict(share=0.1, min_words=0), dict(share=0.1, window=3)):
        with pytest.raises(ValueError):
            add_context_prediction(train, **bad)
