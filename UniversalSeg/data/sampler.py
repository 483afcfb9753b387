"""Dataset-weighted sampling that is correct under DDP and resumable to the sample.

Each epoch draws ``samples_per_epoch`` items for the WHOLE job from a generator seeded by
(seed, epoch): first a dataset by its catalog weight, then a case uniformly within it, plus a
per-item augmentation seed. Rank r of W takes items r, r + W, r + 2W, ... so ranks see disjoint
shards of one common plan, and every rank computes the plan itself (no communication).

Items are ``(case_index, augmentation_seed)``; the training dataset derives all randomness of that
item from its seed, so the sequence of batches is a pure function of (seed, epoch, position):
``set_epoch(e)`` and ``skip(n)`` put a resumed run exactly where the killed one stopped, whatever
the number of data-loader workers. (torch's WeightedRandomSampler is neither DDP-aware nor
resumable mid-epoch; DistributedSampler does not weight datasets.)
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from ..errors import InputError


class DatasetWeightedSampler(Sampler):
    def __init__(self, dataset_of_case: Sequence[int], weights: Sequence[float], samples_per_epoch: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if samples_per_epoch % world_size:
            raise InputError(f"samples_per_epoch ({samples_per_epoch}) must be a multiple of the "
                             f"number of processes ({world_size})")
        self.dataset_of_case = torch.as_tensor(dataset_of_case, dtype=torch.long)
        n = len(weights)
        present = torch.bincount(self.dataset_of_case, minlength=n) > 0
        w = torch.as_tensor(weights, dtype=torch.float64) * present
        if w.sum() <= 0:
            raise InputError("no dataset has training cases")
        self.dataset_weights = w / w.sum()
        self.samples_per_epoch, self.seed = samples_per_epoch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        """Skip the first ``n`` items of this rank's shard of the current epoch (resume)."""
        self._skip = n

    def plan(self, epoch: int) -> list[tuple[int, int]]:
        """The whole job's items for ``epoch`` (all ranks)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        datasets = torch.multinomial(self.dataset_weights, self.samples_per_epoch, True, generator=g)
        cases = torch.empty(self.samples_per_epoch, dtype=torch.long)
        for d in datasets.unique().tolist():  # a loop over datasets, not over samples
            where = (datasets == d).nonzero(as_tuple=True)[0]
            members = (self.dataset_of_case == d).nonzero(as_tuple=True)[0]
            cases[where] = members[torch.randint(len(members), (len(where),), generator=g)]
        seeds = torch.randint(0, 2**31 - 1, (self.samples_per_epoch,), generator=g)
        return list(zip(cases.tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        shard = self.plan(self.epoch)[self.rank::self.world_size]
        start, self._skip = self._skip, 0
        return iter(shard[start:])

    def __len__(self) -> int:
        return self.samples_per_epoch // self.world_size
