"""Comparing two models honestly: paired bootstrap intervals and a non-inferiority verdict.

A table of mean Dice over two validation cases cannot tell a win from noise. Two models scored on
the SAME cases give paired differences; resampling the cases (not the voxels) with replacement
gives a 95% interval of the mean difference (percentile bootstrap, seeded). "Non-inferior" means
the whole interval lies above the margin (the accuracy study uses -0.02 Dice): B may be slightly
worse than A, but not by more than the margin, with 95% confidence. Written here because neither
MONAI nor torch has it and SciPy's ``bootstrap`` is not a dependency; it is ten lines of numpy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

NON_INFERIORITY_MARGIN = -0.02


@dataclass(frozen=True)
class PairedComparison:
    cases: int
    mean_a: float
    mean_b: float
    difference: float   # mean of (b - a)
    low: float          # bootstrap interval of the mean difference
    high: float
    margin: float

    @property
    def non_inferior(self) -> bool:
        """B is at most ``margin`` worse than A (the interval's lower end is above the margin)."""
        return self.low > self.margin

    @property
    def better(self) -> bool:
        """B is better than A (the whole interval is above 0)."""
        return self.low > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "non_inferior": self.non_inferior, "better": self.better}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95, margin: float = NON_INFERIORITY_MARGIN) -> PairedComparison:
    """Scores of models A and B on the same cases (same order) -> interval of mean(B - A)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores need two equally long, non-empty lists; got {a.shape} and {b.shape}")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedComparison(int(diff.size), float(a.mean()), float(b.mean()), float(diff.mean()),
                            float(low), float(high), margin)
