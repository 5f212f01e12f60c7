"""A length-grouped batch sampler that splits each epoch's batches between distributed ranks.

Per epoch, with a generator seeded by (seed, epoch): shuffle all indices, cut them into groups
of ``group_batches`` batches, sort each group by length and cut it into batches (so a batch holds
examples of similar length and wastes little padding), then shuffle the batches. Every rank
computes the same list and takes every ``num_replicas``-th batch, so ranks need not talk and all
get the same number of batches (DDP needs that): the list is cut to a multiple of the rank count
(``drop_last``) or topped up from its start.

``state_dict()`` records the epoch and how many batches this rank has had; ``load_state_dict``
makes the next iteration resume right after them, in the same order.
"""

from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import torch


def _dist_default(num_replicas, rank):
    dist = torch.distributed
    live = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if live else 1
    if rank is None:
        rank = dist.get_rank() if live else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return num_replicas, rank


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    def __init__(self, lengths: Sequence[int], batch_size: int, *,
                 num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 group_batches: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.group_batches = drop_last, max(1, group_batches)
        self.num_replicas, self.rank = _dist_default(num_replicas, rank)
        self.epoch = 0
        self._done = 0  # batches this rank has had in this epoch
        self._resume = 0  # batches to skip at the next iteration (after load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._done, self._resume = epoch, 0, 0

    def _all_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if self.shuffle:
            rng = random.Random(self.seed * 1_000_003 + self.epoch)
            order = list(range(n))
            rng.shuffle(order)
            group = self.batch_size * self.group_batches
        else:  # evaluation: one group, longest first, no randomness
            rng, order, group = None, list(range(n)), max(n, 1)
        batches = []
        for g in range(0, n, group):
            chunk = sorted(order[g: g + group], key=lambda i: -self.lengths[i])
            batches += [chunk[b: b + self.batch_size] for b in range(0, len(chunk),
                                                                     self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if rng is not None:
            rng.shuffle(batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        r = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) // r * r]
        elif batches:
            total = math.ceil(len(batches) / r) * r
            while len(batches) < total:
                batches += batches[: total - len(batches)]
        return batches[self.rank:: r]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self._resume = self._resume, 0
        self._done = start
        for batch in batches[start:]:
            self._done += 1
            yield batch

    def __len__(self) -> int:
        """Batches per rank in a whole epoch (a resumed epoch yields fewer)."""
        n = len(self.lengths)
        full, rest = divmod(n, self.batch_size)
        total = full + (1 if rest and not self.drop_last else 0)
        r = self.num_replicas
        return total // r if self.drop_last else math.ceil(total / r)

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Where this rank is. A DataLoader draws batches ahead of the training loop (prefetch),
        so a trainer should pass the number of batches it has actually trained on this epoch."""
        done = self._done if batches_done is None else batches_done
        return {"epoch": self.epoch, "batches_done": int(done), "seed": self.seed,
                "num_replicas": self.num_replicas, "batch_size": self.batch_size,
                "num_examples": len(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_replicas", "batch_size", "num_examples"):
            mine = {"seed": self.seed, "num_replicas": self.num_replicas,
                    "batch_size": self.batch_size, "num_examples": len(self.lengths)}[key]
            if key in state and state[key] != mine:
                raise ValueError(f"cannot resume: the saved sampler had {key}={state[key]}, "
                                 f"this one has {mine}")
        self.epoch = int(state["epoch"])
        self._resume = self._done = int(state["batches_done"])
