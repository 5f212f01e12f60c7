"""Records from unlabeled system prompts (data/system_prompts.py) and balanced swaps."""

import json
from collections import Counter

import pytest

from latentqa.data import (
    RECOVERY_QUESTIONS,
    SYSTEM_PROMPT_SOURCE,
    SYSTEM_PROMPT_SWAP_SOURCE,
    LatentQAData,
    Record,
    add_plain_dialogs,
    add_system_prompt_records,
    balanced_swaps,
    describe_prompt,
    recovery_answer,
)
from latentqa.data.records import text_key
from latentqa.data.system_prompts import (
    DESCRIPTION_QUESTIONS,
    description_answer,
    first_sentence,
    sentences,
)

LONG = ("Please adopt the persona of a retired lighthouse keeper who misses the sea. In your "
        "future responses, be wistful and patient, speaking of storms and tides. Share stories "
        "of the great storms that once battered your tower.")
PROMPTS = [
    {"system": "Please include an anagram of the word 'listen' in your next reply.",
     "stimulus_user": "Any hobby suggestions?", "label": "goal-anagram"},
    {"system": LONG, "stimulus_user": "What is your favourite season?",
     "label": "persona-lighthouse-keeper"},
    {"system": "In your responses, please encourage me to question my sources.",
     "stimulus_user": "I read a lot of health news online.", "label": "goal-question-sources"},
    {"system": "Please anticipate any misconceptions I might have.",  # "I": no description
     "stimulus_user": "Can you explain tides?", "label": "goal-misconceptions"},
    # the same user turn as the first record, up to case and spaces
    {"system": "Please adopt the persona of a cheerful baker.",
     "stimulus_user": "any hobby   suggestions?", "label": "persona-baker"},
    {"system": "I'd like you to take on the role of a stoic mountain guide.",
     "stimulus_user": "How do I stay calm under pressure?", "label": "persona-mountain-guide"},
]


def empty() -> LatentQAData:
    return LatentQAData([], {}, [])


def labelled() -> LatentQAData:
    """One labelled system record with QA of its own (the loader's recovery pair on)."""
    record = Record.from_latentqa("system", {"system": "You love cats.", "stimulus_user": "Hi!",
                                             "label": "persona-cat"}, source="system.json",
                                  index=0)
    qa = {"persona-cat": [("What does the assistant love?", "Cats.")]}
    return empty().with_records([record], qa)


def _pairs_by_record(data):
    out = {}
    for p in data.pairs:
        out.setdefault(p.record, []).append((p.question, p.answer))
    return out


# --- answers ----------------------------------------------------------------------------------

def test_short_prompts_are_their_own_answer_and_long_ones_their_first_sentence():
    short = PROMPTS[0]["system"]
    assert recovery_answer(short) == short
    assert len(LONG) > 200
    assert recovery_answer(LONG) == ("Please adopt the persona of a retired lighthouse keeper "
                                     "who misses the sea.")
    assert recovery_answer(LONG, max_chars=len(LONG)) == LONG
    assert recovery_answer("  " + short + "\n") == short


def test_sentences_split_before_capitals_but_not_after_abbreviations():
    assert sentences("Be kind. Be brief! Why? Ask Dr. Smith, e.g. Jones.") == \
        ["Be kind.", "Be brief!", "Why?", "Ask Dr. Smith, e.g. Jones."]
    assert sentences("Use 3.5 litres. then stop.") == ["Use 3.5 litres. then stop."]
    assert first_sentence("One sentence only") == "One sentence only"


# --- the third-person rewrite -----------------------------------------------------------------

@pytest.mark.parametrize("prompt, expected", [
    ("Please include an anagram of the word 'listen' in your next reply.",
     "The assistant will include an anagram of the word 'listen' in its next reply."),
    ("In your responses, please encourage me to question my sources.",
     "In its responses, the assistant will encourage the user to question the user's sources."),
    ("Could you please, in your next response, subtly convey irony?",
     "In its next response, the assistant will subtly convey irony."),
    ("Please convey irritation, but do not use any negative words.",
     "The assistant will convey irritation, but will not use any negative words."),
    (LONG, "The assistant will adopt the persona of a retired lighthouse keeper who misses the "
           "sea. In its future responses, it will be wistful and patient, speaking of storms and "
           "tides. It will share stories of the great storms that once battered its tower."),
    ("Please adopt the persona of a gardener. You believe that patience grows everything. "
     "Your aim is to calm others.",
     "The assistant will adopt the persona of a gardener. It believes that patience grows "
     "everything. Its aim is to calm others."),
    ("In our next conversation, please challenge yourself to be brief.",
     "In the next conversation, the assistant will challenge itself to be brief."),
])
def test_the_rewrite_turns_instructions_into_statements_about_the_assistant(prompt, expected):
    assert describe_prompt(prompt) == expected


@pytest.mark.parametrize("prompt", [
    "Please anticipate any misconceptions I might have.",  # the user as "I"
    "Please analyze your responses as we converse.",  # "we"
    "Please make sure you write your next sentence as a paradox.",  # "you write": agreement
    "Before you respond, please question your assumptions.",
    "You thrive in disorder and encourage others to follow.",  # a second verb to agree
    "It would be great if you could use metaphors.",  # not an imperative we know
    "Punctuality is your utmost priority.",
    "Please be kind, but don't lecture. Don't ever lie.",
])
def test_the_rewrite_refuses_what_its_rules_cannot_handle(prompt):
    assert describe_prompt(prompt) is None


def test_the_rewrite_on_real_unlabeled_prompts(shared):
    records = {r["label"]: r["system"] for r in
               json.loads(shared("latentqa", "unlabeled_system.json").read_text())}
    whistleblower = records["persona-role-cautious-whistleblower"]
    assert describe_prompt(whistleblower) == (
        "The assistant will adopt the persona of a cautious whistleblower who reveals "
        "corruption while protecting its identity. In its responses, it will be guarded yet "
        "informative, aiming to expose wrongdoing without compromising safety. It will shed "
        "light on hidden injustices.")
    # long: the description is of the first sentence, as the recovery answer is
    assert description_answer(whistleblower) == (
        "The assistant will adopt the persona of a cautious whistleblower who reveals "
        "corruption while protecting its identity.")
    assert describe_prompt(records["goal-psychology-question-sources"]) == (
        "In its responses, the assistant will encourage the user to reflect on the reliability "
        "and biases of the user's information sources.")
    assert describe_prompt(records["goal-language-old-norse-words"]) == (
        "The assistant will try to use words that come from Old Norse in its sentences "
        "whenever possible.")
    for refused in ("goal-education-address-misconceptions",  # "misconceptions I might have"
                    "goal-style-paradox-next-sentence",  # "make sure you write"
                    "goal-reflection-improvement"):  # "as we converse"
        assert describe_prompt(records[refused]) is None
    # most prompts are rewritten, and no rewrite keeps a second-person or first-person word
    answers = [description_answer(p) for p in records.values()]
    done = [a for a in answers if a is not None]
    assert len(done) > 0.85 * len(records)
    words = Counter(w.strip(".,;:!?'\"").lower() for a in done for w in a.split())
    assert not {"you", "your", "yours", "yourself", "i", "me", "my", "we", "us", "our"} & \
        set(words)
    assert all("the assistant " in first_sentence(a).lower() for a in done)


# --- records ----------------------------------------------------------------------------------

def test_each_prompt_becomes_a_system_record_with_its_own_questions_and_no_fixed_pair():
    out = add_system_prompt_records(empty(), PROMPTS, recovery_questions=2, swaps_per_record=0)
    assert [r.source for r in out.records] == [SYSTEM_PROMPT_SOURCE] * len(PROMPTS)
    assert all(r.kind == "system" and r.read == (1,) and not r.recovery for r in out.records)
    assert all(not p.derived for p in out.pairs)  # the loader adds no fixed recovery pair
    by_record = _pairs_by_record(out)
    for i, prompt in enumerate(PROMPTS):
        pairs = by_record[i]
        assert len(pairs) == 2 and len({q for q, _ in pairs}) == 2
        assert {q for q, _ in pairs} <= set(RECOVERY_QUESTIONS)
        assert {a for _, a in pairs} == {recovery_answer(prompt["system"])}


def test_pair_counts_follow_questions_swaps_and_descriptions():
    n = len(PROMPTS)
    described = sum(description_answer(p["system"]) is not None for p in PROMPTS)
    assert described == n - 1  # the "I" prompt
    for k, swaps, desc in [(1, 0, False), (1, 1, False), (2, 1, True), (1, 2, True)]:
        out = add_system_prompt_records(empty(), PROMPTS, recovery_questions=k,
                                        swaps_per_record=swaps, descriptions=desc)
        per_prompt = k * n + (described if desc else 0)
        assert len(out.records) == n * (1 + swaps)
        assert len(out.pairs) == per_prompt * (1 + swaps)
    # more swaps than six prompts with a shared turn allow: fewer, never a wrong one
    out = add_system_prompt_records(empty(), PROMPTS, swaps_per_record=5)
    assert n * 3 < len(out.records) <= n * 6
    assert len(out.pairs) == len(out.records)
    out = add_system_prompt_records(empty(), PROMPTS, recovery_questions=0, descriptions=True,
                                    swaps_per_record=0)
    assert len(out.records) == described  # a prompt with no question is left out


def test_descriptions_are_asked_with_a_question_of_the_labels_family():
    out = add_system_prompt_records(empty(), PROMPTS, recovery_questions=1, descriptions=True,
                                    swaps_per_record=0)
    for i, record in enumerate(out.records):
        extra = [(q, a) for q, a in _pairs_by_record(out)[i] if q not in RECOVERY_QUESTIONS]
        if record.label == "goal-misconceptions":
            assert extra == []
            continue
        [(question, answer)] = extra
        assert question in DESCRIPTION_QUESTIONS[record.label.split("-")[0]]
        assert answer == description_answer(record.hidden_system_prompt)


def test_labels_of_other_families_get_the_generic_description_question():
    prompts = [dict(PROMPTS[0], label="sqa-anagram"), dict(PROMPTS[2], label="no-family")]
    out = add_system_prompt_records(empty(), prompts, recovery_questions=0, descriptions=True,
                                    swaps_per_record=0)
    assert [q for qa in out.qa.values() for q, _ in qa] == \
        list(DESCRIPTION_QUESTIONS["other"]) * 2


def test_the_same_seed_gives_the_same_records_and_pairs_and_another_seed_does_not():
    kw = dict(recovery_questions=1, swaps_per_record=2, descriptions=True)
    a = add_system_prompt_records(empty(), PROMPTS, seed=0, **kw)
    b = add_system_prompt_records(empty(), PROMPTS, seed=0, **kw)
    c = add_system_prompt_records(empty(), PROMPTS, seed=1, **kw)
    assert a.records == b.records and a.pairs == b.pairs and a.qa == b.qa
    assert (a.records, a.pairs) != (c.records, c.pairs)


def test_the_questions_of_a_prompt_do_not_depend_on_the_others():
    alone = add_system_prompt_records(empty(), PROMPTS[1:2], swaps_per_record=0, seed=4)
    together = add_system_prompt_records(empty(), PROMPTS, swaps_per_record=0, seed=4)
    label = PROMPTS[1]["label"]
    assert alone.qa[label] == together.qa[label]


def test_records_from_a_file_and_from_objects_are_the_same(tmp_path):
    path = tmp_path / "unlabeled_system.json"
    path.write_text(json.dumps(PROMPTS))
    a = add_system_prompt_records(empty(), path, swaps_per_record=1)
    b = add_system_prompt_records(empty(), PROMPTS, swaps_per_record=1)
    assert [r.messages for r in a.records] == [r.messages for r in b.records]
    assert a.pairs == b.pairs


def test_they_join_existing_data_without_touching_it_and_survive_later_additions():
    data = labelled()
    out = add_system_prompt_records(data, PROMPTS, swaps_per_record=1)
    assert out.records[:1] == data.records and out.pairs[:2] == data.pairs
    assert out.pairs[1].derived  # the labelled record keeps its fixed recovery pair
    later = add_plain_dialogs(out, 0.2, seed=0)  # re-pairs every record from records and QA
    assert later.pairs[:len(out.pairs)] == out.pairs


def test_labels_taken_already_get_the_records_index():
    data = labelled()
    clash = [dict(PROMPTS[0], label="persona-cat"), dict(PROMPTS[1], label="persona-cat")]
    out = add_system_prompt_records(data, clash, swaps_per_record=0)
    assert [r.label for r in out.records] == ["persona-cat", "persona-cat#0", "persona-cat#1"]
    assert out.qa["persona-cat"] == data.qa["persona-cat"]


def test_limit_draws_a_seeded_subset_and_smaller_limits_keep_a_subset():
    labels = lambda limit: {r.label for r in add_system_prompt_records(
        empty(), PROMPTS, limit=limit, swaps_per_record=0, seed=2).records}
    assert len(labels(3)) == 3 and labels(2) < labels(3) < labels(None)
    assert labels(100) == labels(None)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="recovery_questions"):
        add_system_prompt_records(empty(), PROMPTS, recovery_questions=7)
    with pytest.raises(ValueError, match="no questions"):
        add_system_prompt_records(empty(), PROMPTS, recovery_questions=0)
    with pytest.raises(ValueError, match="swaps_per_record"):
        add_system_prompt_records(empty(), PROMPTS, swaps_per_record=-1)
    with pytest.raises(ValueError, match="stimulus_user"):
        add_system_prompt_records(empty(), [{"system": "Be brief.", "label": "goal-x"}])
    plain = Record.from_dialog([{"role": "user", "content": "Hi"}], label="x")
    with pytest.raises(ValueError, match="no hidden system prompt"):
        add_system_prompt_records(empty(), [plain])


# --- swaps ------------------------------------------------------------------------------------

def test_swaps_never_put_a_prompt_over_its_own_user_turn():
    for seed in range(20):
        out = add_system_prompt_records(empty(), PROMPTS, swaps_per_record=3, seed=seed)
        own = {}
        for r in out.records:
            if r.source == SYSTEM_PROMPT_SOURCE:
                own.setdefault(text_key(r.hidden_system_prompt), set()).add(
                    text_key(r.messages[1]["content"]))
        swaps = [r for r in out.records if r.source == SYSTEM_PROMPT_SWAP_SOURCE]
        assert swaps
        seen = set()
        for s in swaps:
            prompt, turn = text_key(s.hidden_system_prompt), text_key(s.messages[1]["content"])
            # "Any hobby suggestions?" is the own turn of both the anagram and the baker prompt
            assert turn not in own[prompt]
            assert (prompt, turn) not in seen
            seen.add((prompt, turn))
            assert not s.recovery and s.kind == "system" and s.read == (1,)


def test_a_swap_carries_its_prompts_label_and_so_its_questions():
    out = add_system_prompt_records(empty(), PROMPTS, swaps_per_record=1, descriptions=True)
    originals = {r.label: r for r in out.records if r.source == SYSTEM_PROMPT_SOURCE}
    by_record = _pairs_by_record(out)
    for i, s in enumerate(out.records):
        if s.source != SYSTEM_PROMPT_SWAP_SOURCE:
            continue
        assert s.messages[0] == originals[s.label].messages[0]
        assert by_record[i] == list(out.qa[s.label])


def test_balanced_swaps_use_every_prompt_and_every_turn_once_a_round():
    records = [Record.from_latentqa("system", {"system": f"Prompt {i}.",
                                               "stimulus_user": f"Turn {i}?",
                                               "label": f"goal-{i}"}, index=i)
               for i in range(30)]
    swaps = balanced_swaps(records, 3, seed=5, source="s")
    assert len(swaps) == 90
    assert set(Counter(s.messages[0]["content"] for s in swaps).values()) == {3}
    assert set(Counter(s.messages[1]["content"] for s in swaps).values()) == {3}
    assert all(s.messages[0]["content"][7:-1] != s.messages[1]["content"][5:-1]
               for s in swaps)
    assert balanced_swaps(records, 3, seed=5, source="s") == swaps
    assert balanced_swaps(records[:1], 3) == [] and balanced_swaps(records, 0) == []
    with pytest.raises(ValueError, match=">= 0"):
        balanced_swaps(records, -1)


def test_records_from_the_real_unlabeled_file(shared):
    path = shared("latentqa", "unlabeled_system.json")
    n = len(json.loads(path.read_text()))
    out = add_system_prompt_records(empty(), path, recovery_questions=1, swaps_per_record=1,
                                    descriptions=True, seed=0)
    sources = Counter(r.source for r in out.records)
    assert sources == {SYSTEM_PROMPT_SOURCE: n, SYSTEM_PROMPT_SWAP_SOURCE: n}
    answers = [a for qa in out.qa.values() for _, a in qa]
    assert max(len(a) for a in answers) < 400
    described = sum(len(qa) == 2 for qa in out.qa.values())
    assert 0.85 * n < described < n
    assert len(out.pairs) == 2 * (n + described)
