"""The length-grouped, rank-aware batch sampler: determinism, sharding, grouping, resume."""

import random

import pytest

from latentqa.data import LengthGroupedBatchSampler

LENGTHS = [random.Random(0).randint(5, 500) for _ in range(1003)]


def _sampler(**kw):
    kw = {"batch_size": 8, "seed": 1, **kw}
    return LengthGroupedBatchSampler(LENGTHS, **kw)


def test_same_seed_and_epoch_same_order_other_epoch_other_order():
    a, b = _sampler(), _sampler()
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(_sampler(seed=2)) != list(_sampler())


def test_every_index_once_per_epoch_on_one_rank():
    batches = list(_sampler())
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(LENGTHS)))
    assert len(batches) == len(_sampler())
    assert sum(len(b) < 8 for b in batches) == 1


def test_batches_group_similar_lengths():
    spread = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in _sampler()]
    assert sum(spread) / len(spread) < 30  # random batches of 8 would spread ~ 350


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_share_the_epoch_evenly(drop_last):
    ranks = [_sampler(num_replicas=3, rank=r, drop_last=drop_last) for r in range(3)]
    parts = [list(s) for s in ranks]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(ranks[0])
    seen = [i for p in parts for b in p for i in b]
    if drop_last:
        assert len(seen) == len(set(seen))  # disjoint
        assert all(len(b) == 8 for p in parts for b in p)
    else:
        assert set(seen) == set(range(len(LENGTHS)))  # topped up: everything covered


def test_resume_mid_epoch_exactly():
    full = _sampler(num_replicas=2, rank=1)
    full.set_epoch(4)
    expected = list(full)
    run = _sampler(num_replicas=2, rank=1)
    run.set_epoch(4)
    it = iter(run)
    first = [next(it) for _ in range(10)]
    state = run.state_dict()
    assert state["epoch"] == 4 and state["batches_done"] == 10
    resumed = _sampler(num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    assert first + list(resumed) == expected
    resumed.set_epoch(5)  # later epochs start from the beginning again
    assert len(list(resumed)) == len(resumed)


def test_resume_with_the_trainers_own_count_and_mismatch_is_refused():
    s = _sampler()
    expected = list(s)
    s2 = _sampler()
    s2.load_state_dict(s.state_dict(batches_done=7))
    assert list(s2) == expected[7:]
    with pytest.raises(ValueError, match="batch_size"):
        _sampler(batch_size=4).load_state_dict(s.state_dict())


def test_no_shuffle_is_longest_first():
    batches = list(_sampler(shuffle=False))
    firsts = [LENGTHS[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)
