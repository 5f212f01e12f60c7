"""The reading API on the real SmolLM2: answers, scores, controls, batching, bad input."""

from __future__ import annotations

import math

import pytest
from reading_fixtures import dev_decoder_dir, shipped_decoder

from latentqa.arch import LayerError
from latentqa.chat import DialogTooLongError
from latentqa.reading import CASES, Read, ReadingError, Score, load
from latentqa.reading.cases import DESCRIBE

PERSONA = "What is the persona of the assistant?"
DIALOG = CASES[0].dialog("Arr, a fine stew of fish, matey!")


@pytest.fixture(scope="module")
def lqa(tmp_path_factory):
    return load(dev_decoder_dir(tmp_path_factory))


def test_reader_uses_the_decoders_sidecar(lqa):
    assert lqa.spec.target == "smollm2-135m" and lqa.spec.read_layer == 14
    assert lqa.spec.write_layer == 0 and lqa.layout.name == "paper"


def test_ask_returns_non_empty_answers_shaped_like_the_input(lqa):
    one = lqa.ask(DIALOG, PERSONA, max_new_tokens=8)
    assert isinstance(one, str) and one.strip()
    two = lqa.ask(DIALOG, [PERSONA, "Who is the assistant?"], max_new_tokens=8)
    assert isinstance(two, list) and len(two) == 2
    grid = lqa.ask([DIALOG, "Hello!"], [PERSONA], max_new_tokens=8)
    assert len(grid) == 2 and all(len(row) == 1 for row in grid)


def test_batched_answers_equal_one_by_one(lqa):
    dialogs = [DIALOG, CASES[2].dialog(), "What is 2 + 2?"]
    questions = [PERSONA, "How does the assistant talk?"]
    batched = lqa.ask(dialogs, questions, max_new_tokens=6)
    single = [[lqa.ask(d, q, max_new_tokens=6) for q in questions] for d in dialogs]
    assert batched == single


def test_score_gives_total_per_token_and_mean(lqa):
    cands = ["The assistant is a pirate.", "The assistant is a chef who loves cooking."]
    s = lqa.score(DIALOG, DESCRIBE, cands)
    assert isinstance(s, Score) and [c.candidate for c in s.candidates] == cands
    for c in s.candidates:
        assert c.num_tokens == len(c.tokens) == len(c.token_logprobs) > 0
        assert math.isclose(c.logprob, sum(c.token_logprobs), rel_tol=1e-4)
        assert c.logprob < 0 and math.isclose(c.mean_logprob, c.logprob / c.num_tokens)
    # the answer's own tokens, then the end-of-turn marker the decoder learned to stop with
    assert "".join(s.candidates[0].tokens).startswith(cands[0])
    assert s.best in cands and s.to_dict()["best"] == s.best


def test_batched_scores_equal_one_by_one(lqa):
    dialogs = [DIALOG, CASES[3].dialog()]
    cands = ["a pirate", "a helpful assistant", "a poet"]
    batched = lqa.score(dialogs, DESCRIBE, cands)
    for d, s in zip(dialogs, batched):
        alone = lqa.score(d, DESCRIBE, cands, batch_size=1)
        for a, b in zip(s.candidates, alone.candidates):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_packed_scores_equal_an_unpacked_forward_per_candidate(lqa):
    # candidates that open alike ("The assistant is a p...") are packed with their shared
    # words in the prefix; each must still get the log-probs of a plain forward pass
    import torch

    from latentqa.decoding import labelled_logprobs

    cands = ["The assistant is a pirate.", "The assistant is a poet.", "The assistant is a"]
    score = lqa.score(DIALOG, DESCRIBE, cands)
    vectors = lqa.activations(DIALOG)[0]
    for cand, got in zip(cands, score.candidates):
        probe = lqa.probe(len(vectors), DESCRIBE, cand)
        with torch.no_grad():
            want, _ = labelled_logprobs(
                lqa.model, probe.input_ids[None], torch.ones_like(probe.input_ids)[None],
                probe.labels[None], placeholder_mask=probe.placeholder_mask[None],
                vectors=[vectors], write_layer=lqa.spec.write_layer, mode=lqa.spec.injection)
        assert got.num_tokens == len(want)
        assert got.token_logprobs == pytest.approx(want.tolist(), abs=1e-3)


def test_controls_change_what_is_injected(lqa):
    cands = ["a pirate", "a chef"]
    real = lqa.score(DIALOG, DESCRIBE, cands).candidates[0].logprob
    none = lqa.score(DIALOG, DESCRIBE, cands, control="none").candidates[0].logprob
    shuffled = lqa.score(DIALOG, DESCRIBE, cands, control="shuffled").candidates[0].logprob
    assert len({round(real, 3), round(none, 3), round(shuffled, 3)}) == 3
    # with several dialogs, each gets the next one's activations
    pair = [DIALOG, CASES[1].dialog()]
    swapped = lqa.score(pair, DESCRIBE, cands, control="shuffled")
    other = lqa.score(pair[1], DESCRIBE, cands)
    # dialog 0 read with dialog 1's activations = dialog 1 read normally (same question)
    assert swapped[0].candidates[0].logprob == pytest.approx(other.candidates[0].logprob,
                                                             abs=1e-3)


def test_read_options_change_the_number_of_activations(lqa):
    full = lqa.activations(DIALOG)[0]
    assert lqa.activations(DIALOG, read="last:5")[0].shape == (5, 576)
    assert lqa.activations(DIALOG, read=Read.of_messages(1))[0].shape[0] < full.shape[0]
    assert lqa.activations(DIALOG, read=slice(0, 3))[0].shape[0] == 3
    assert lqa.activations(DIALOG, layer=3)[0].shape == full.shape
    assert lqa.ask(DIALOG, PERSONA, read="last:5", max_new_tokens=4) is not None


def test_target_reply_is_the_plain_target(lqa):
    assert lqa.target_reply(CASES[3].dialog(), max_new_tokens=8)


@pytest.mark.parametrize("dialog", ["", [], [{"role": "user", "content": "  "}]])
def test_empty_dialog(lqa, dialog):
    with pytest.raises(ReadingError, match="empty"):
        lqa.ask(dialog, PERSONA)


def test_no_questions_or_candidates(lqa):
    with pytest.raises(ReadingError, match="no questions"):
        lqa.ask(DIALOG, [])
    with pytest.raises(ReadingError, match="no candidates"):
        lqa.score(DIALOG, PERSONA, [])


def test_question_longer_than_the_context(lqa):
    with pytest.raises(DialogTooLongError, match="context of 8192"):
        lqa.ask(DIALOG, "why " * 9000)


def test_layer_out_of_range(lqa):
    with pytest.raises(LayerError, match="out of range"):
        lqa.ask(DIALOG, PERSONA, layer=30)
    with pytest.raises(LayerError, match="read layer 99"):
        load(lqa.decoder_path, read_layer=99)


def test_bad_options(lqa):
    with pytest.raises(ReadingError, match="control"):
        lqa.ask(DIALOG, PERSONA, control="random")
    with pytest.raises(ReadingError, match="injection"):
        lqa.ask(DIALOG, PERSONA, injection="add")
    with pytest.raises(ReadingError, match="nothing to read"):
        lqa.ask([{"role": "system", "content": "Be terse."}], PERSONA)


# ---- needs the shipped, fully trained decoder --------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return load(shipped_decoder())


def _top1(scores, cases):
    return sum(s.best == c.description for s, c in zip(scores, cases))


@pytest.mark.xfail(strict=True, reason="the shipped decoder reads hidden system prompts weakly "
                   "(0.60 vs 0.39 shuffled in eval persona, v0.4); issue 22 makes it pass; strict, "
                   "so a decoder that passes turns this into a failure until the mark goes")
def test_shipped_decoder_reads_hidden_system_prompts(shipped):
    """The true description wins for most hidden prompts, and markedly less often when the
    decoder is given another dialog's activations."""
    dialogs = [c.dialog() for c in CASES]
    cands = [c.description for c in CASES]
    real = _top1(shipped.score(dialogs, DESCRIBE, cands), CASES)
    shuffled = _top1(shipped.score(dialogs, DESCRIBE, cands, control="shuffled"), CASES)
    assert real > len(CASES) / 2, f"true description first for only {real}/{len(CASES)}"
    assert real - shuffled >= 2, f"real {real} vs shuffled {shuffled}: no clear gap"


def test_shipped_decoder_answers(shipped):
    answers = shipped.ask([c.dialog() for c in CASES], [PERSONA, DESCRIBE], max_new_tokens=24)
    assert all(a.strip() for row in answers for a in row)
