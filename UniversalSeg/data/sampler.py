"""Dataset-weighted sampling that is correct under DDP and resumable to the sample.

Each epoch draws ``samples_per_epoch`` items for the WHOLE job from a generator seeded by
(seed, epoch): first a dataset by its catalog weight, then a case uniformly within it, plus a
per-item augmentation seed. Rank r of W takes items r, r + W, r + 2W, ... so ranks see disjoint
shards of one common plan, and every rank computes the plan itself (no communication).

Two options of the Hermes-style recipe: ``by="case"`` weights each dataset by its catalog weight
times its number of training cases (every case about equally often, as a plain shuffled
concatenation would), instead of one weight per dataset. ``batches`` composes each process's
batch of ``batch_size`` items: "mixed" (independent draws), "distinct-sites" (B DIFFERENT datasets
drawn by weight, with replacement only when there are fewer than B), or "every-site" (B / S items
of EVERY one of the S datasets, as MS-Net trains: each site its own batch through its own BN in
every step; the batch size must be a multiple of S).

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

__all__ = ["BATCHES", "DatasetWeightedSampler"]


BATCHES = ("mixed", "distinct-sites", "every-site")


class DatasetWeightedSampler(Sampler):
    def __init__(self, dataset_of_case: Sequence[int], weights: Sequence[float], samples_per_epoch: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, by: str = "dataset",
                 batches: str = "mixed", batch_size: int = 1):
        if samples_per_epoch % world_size:
            raise InputError(f"samples_per_epoch ({samples_per_epoch}) must be a multiple of the "
                             f"number of processes ({world_size})")
        if by not in ("dataset", "case"):
            raise InputError(f"sampling {by!r}: 'dataset' (one weight per dataset) or 'case'")
        if batches not in BATCHES:
            raise InputError(f"batches {batches!r}: one of {', '.join(BATCHES)}")
        if batches != "mixed" and samples_per_epoch % (batch_size * world_size):
            raise InputError(f"samples_per_epoch ({samples_per_epoch}) must be a multiple of the batch size "
                             f"({batch_size}) x the number of processes ({world_size}) for {batches} batches")
        self.dataset_of_case = torch.as_tensor(dataset_of_case, dtype=torch.long)
        n = len(weights)
        counts = torch.bincount(self.dataset_of_case, minlength=n)
        present = counts > 0
        w = torch.as_tensor(weights, dtype=torch.float64) * present
        if by == "case":
            w = w * counts
        self.batches, self.batch_size = batches, int(batch_size)
        sites = int((w > 0).sum())
        if batches == "every-site" and self.batch_size % sites:
            raise InputError(f"every-site batches: the batch size ({batch_size}) must be a multiple of the "
                             f"number of datasets with training cases ({sites})")
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
        if self.batches != "mixed":
            datasets = self._composed_datasets(g)
        else:
            datasets = torch.multinomial(self.dataset_weights, self.samples_per_epoch, True, generator=g)
        cases = torch.empty(self.samples_per_epoch, dtype=torch.long)
        for d in datasets.unique().tolist():  # a loop over datasets, not over samples
            where = (datasets == d).nonzero(as_tuple=True)[0]
            members = (self.dataset_of_case == d).nonzero(as_tuple=True)[0]
            cases[where] = members[torch.randint(len(members), (len(where),), generator=g)]
        seeds = torch.randint(0, 2**31 - 1, (self.samples_per_epoch,), generator=g)
        return list(zip(cases.tolist(), seeds.tolist()))

    def _composed_datasets(self, g: torch.Generator) -> torch.Tensor:
        """Datasets per item such that each process's batch (items r, r + W, ... of a block of
        B x W) holds distinct datasets (drawn by weight) or every dataset equally often."""
        b, w = self.batch_size, self.world_size
        present = (self.dataset_weights > 0).nonzero(as_tuple=True)[0]
        every = present.repeat_interleave(b // len(present)) if self.batches == "every-site" else None
        out = torch.empty(self.samples_per_epoch, dtype=torch.long)
        for block in range(self.samples_per_epoch // (b * w)):
            for r in range(w):
                picks = every if every is not None else \
                    torch.multinomial(self.dataset_weights, b, b > len(present), generator=g)
                out[block * b * w + r + w * torch.arange(b)] = picks
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        shard = self.plan(self.epoch)[self.rank::self.world_size]
        start, self._skip = self._skip, 0
        return iter(shard[start:])

    def __len__(self) -> int:
        return self.samples_per_epoch // self.world_size
