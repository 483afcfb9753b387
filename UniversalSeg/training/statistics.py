"""Comparing two models honestly: paired bootstrap intervals and a non-inferiority verdict.

A table of mean Dice over two validation cases cannot tell a win from noise. Two models scored on
the SAME cases give paired differences; resampling the cases (not the voxels) with replacement
gives a 95% interval of the mean difference (percentile bootstrap, seeded). "Non-inferior" means
the whole interval lies above the margin (the accuracy study uses -0.02 Dice): B may be slightly
worse than A, but not by more than the margin, with 95% confidence. Written here because neither
MONAI nor torch has it and SciPy's ``bootstrap`` is not a dependency; it is ten lines of numpy.

``paired_bootstrap`` resamples cases only. When every model was trained with several seeds, the
seed-to-seed spread is often the larger noise: ``hierarchical_bootstrap`` (a mean) and
``paired_hierarchical_bootstrap`` (a difference, with the same verdicts) resample the seeds, then
the cases (the two-stage bootstrap; their docstrings give the references and the two designs).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = ["DESIGNS", "NON_INFERIORITY_MARGIN", "HierarchicalComparison", "HierarchicalInterval", "PairedComparison",
           "hierarchical_bootstrap", "paired_bootstrap", "paired_hierarchical_bootstrap"]

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


# --- seeds and cases together: the hierarchical (two-stage) bootstrap -------------------------

DESIGNS = ("crossed", "nested")


@dataclass(frozen=True)
class HierarchicalInterval:
    """A mean score over training seeds and test cases, with its hierarchical bootstrap interval."""
    seeds: int
    cases: int                  # test cases per seed (the largest count where seeds differ)
    design: str                 # "crossed" or "nested" (hierarchical_bootstrap says which is which)
    mean: float                 # the mean of the per-seed means (every seed weighs the same)
    low: float
    high: float
    confidence: float
    per_seed: tuple             # each seed's mean over its cases

    @property
    def half_width(self) -> float:
        """Half the interval's width: what "mean ± half-width" quotes (percentile intervals need
        not be symmetric; ``low`` / ``high`` are the interval)."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict:
        return {**asdict(self), "per_seed": list(self.per_seed), "half_width": self.half_width}


@dataclass(frozen=True)
class HierarchicalComparison:
    """Two arms scored on the same seeds x cases: interval of mean(B - A) and the verdicts."""
    seeds: int
    cases: int
    design: str
    mean_a: float
    mean_b: float
    difference: float           # mean of (b - a), per-seed means averaged
    low: float
    high: float
    margin: float
    per_seed_difference: tuple  # each seed's mean of (b - a): does a verdict rest on one seed?

    @property
    def non_inferior(self) -> bool:
        """B is at most ``margin`` worse than A (the interval's lower end is above the margin)."""
        return self.low > self.margin

    @property
    def better(self) -> bool:
        """B is better than A (the whole interval is above 0)."""
        return self.low > 0

    @property
    def seeds_b_ahead(self) -> int:
        """In how many seeds B's mean is above A's (0 to ``seeds``)."""
        return sum(d > 0 for d in self.per_seed_difference)

    def to_dict(self) -> dict:
        return {**asdict(self), "per_seed_difference": list(self.per_seed_difference),
                "non_inferior": self.non_inferior, "better": self.better, "seeds_b_ahead": self.seeds_b_ahead}


def _seed_rows(scores, name: str, design: str) -> list[np.ndarray]:
    """``scores`` (a 2-D array, seeds x cases, or one sequence of case scores per seed) as one
    float array per seed, checked."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS} (crossed: every seed scored the SAME test cases; "
                         f"nested: each seed its own cases); got {design!r}")
    if isinstance(scores, np.ndarray):
        if scores.ndim != 2:
            raise ValueError(f"{name}: scores indexed by (seed, case) need a 2-D array (seeds x cases); "
                             f"got shape {scores.shape}")
        rows = [np.asarray(r, float) for r in scores]
    else:
        rows = []
        for i, r in enumerate(scores):
            r = np.asarray(r, float)
            if r.ndim != 1:
                raise ValueError(f"{name}: seed {i} must be a flat list of case scores (scores indexed by "
                                 f"(seed, case)); got shape {r.shape}")
            rows.append(r)
    if len(rows) < 2:
        raise ValueError(f"{name}: {len(rows)} seed(s); seed-to-seed variance needs at least 2 seeds "
                         "(one seed: use paired_bootstrap over its cases, and say it is one seed)")
    if any(r.size == 0 for r in rows):
        raise ValueError(f"{name}: a seed with no case scores")
    if any(not np.isfinite(r).all() for r in rows):
        raise ValueError(f"{name}: scores must be finite numbers (NaN or infinity found)")
    if design == "crossed" and len({r.size for r in rows}) > 1:
        raise ValueError(f"{name}: crossed design (every seed scored the same cases) but the seeds have "
                         f"{sorted({r.size for r in rows})} cases; give each seed the same cases in the same "
                         "order, or use design='nested' if each seed had cases of its own")
    return rows


def _resampled_means(rows: list[np.ndarray], design: str, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap replicates of the mean of per-seed means. Seeds are drawn with
    replacement (as counts: a multinomial draw is the same distribution); then cases:
    crossed: ONE case resample per replicate, shared by every drawn seed (the cases are the same
    cases under every seed); nested: every drawn seed slot resamples its own cases anew."""
    n_seeds = len(rows)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples)  # (R, S)
    if design == "crossed":
        x = np.stack(rows)                                                                 # (S, C)
        n_cases = x.shape[1]
        case_counts = rng.multinomial(n_cases, np.full(n_cases, 1 / n_cases), size=resamples)  # (R, C)
        return np.einsum("rc,rc->r", seed_counts @ x, case_counts) / (n_seeds * n_cases)
    # nested: slot k of replicate r holds seed s with probability 1/S; each slot draws its own cases.
    # Group the slots by the seed they hold: seed s is drawn seed_counts[:, s].sum() times in all.
    total = np.zeros(resamples)
    for s, x in enumerate(rows):
        slots = int(seed_counts[:, s].sum())
        if not slots:
            continue
        counts = rng.multinomial(x.size, np.full(x.size, 1 / x.size), size=slots)      # (slots, C_s)
        means = counts @ x / x.size
        owner = np.repeat(np.arange(resamples), seed_counts[:, s])                       # replicate of each slot
        total += np.bincount(owner, weights=means, minlength=resamples)
    return total / n_seeds


def _chunked(rows, design, resamples, seed, chunk_values: int = 4_000_000) -> np.ndarray:
    """The replicates in blocks (bounded memory whatever seeds x cases x resamples); seeded."""
    rng = np.random.default_rng(seed)
    per = max(1, chunk_values // (len(rows) * max(r.size for r in rows)))
    parts, left = [], resamples
    while left > 0:
        n = min(per, left)
        parts.append(_resampled_means(rows, design, n, rng))
        left -= n
    return np.concatenate(parts)


def hierarchical_bootstrap(scores, *, design: str, resamples: int = 10_000, seed: int = 0,
                           confidence: float = 0.95) -> HierarchicalInterval:
    """Interval of a mean score over training seeds AND test cases (percentile bootstrap, seeded).

    ``scores[s][c]``: the score of test case c by the model of training seed s (a 2-D array, or
    one list per seed). Each replicate resamples the seeds with replacement, then the cases within
    each resampled seed, and takes the mean of the per-seed means: the two-stage (cluster)
    bootstrap for hierarchical data (Davison & Hinkley 1997, *Bootstrap Methods and their
    Application*, section 3.8; Ren et al. 2010, "Nonparametric bootstrapping for hierarchical
    data", J. Applied Statistics 37(9)). Averaging each case over the seeds first and resampling
    only cases (``paired_bootstrap`` on seed means) leaves seed-to-seed variance out; this keeps it.

    ``design`` (required, there is no safe default):
      - ``"nested"``: each seed was scored on cases of its own (e.g. test cases drawn from data
        seed S + 1000); every resampled seed resamples its own cases independently. Seeds may
        have different numbers of cases; each seed's mean weighs the same.
      - ``"crossed"``: every seed was scored on the SAME cases (same order). Resampling them
        independently per seed would treat one case as several and shrink the interval, so one
        case resample per replicate is applied to every resampled seed (resampling both factors,
        as Owen's 2007 "pigeonhole bootstrap" for crossed data). With identical seeds this is
        exactly the case bootstrap of the seed means.

    Both are slightly conservative (the case-level variance also enters the seed means that are
    resampled). With few seeds (3) the seed stage has few distinct draws and its spread is
    (S-1)/S of the sample variance: the interval is rough, and at least 5 seeds are advised
    where a claim rests on it. Fewer than 2 seeds, empty seeds, non-finite scores and (crossed)
    seeds with different case counts are refused with a ValueError.
    """
    rows = _seed_rows(scores, "scores", design)
    means = _chunked(rows, design, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    per_seed = tuple(float(r.mean()) for r in rows)
    return HierarchicalInterval(len(rows), max(r.size for r in rows), design, float(np.mean(per_seed)),
                                float(low), float(high), confidence, per_seed)


def paired_hierarchical_bootstrap(a, b, *, design: str, resamples: int = 10_000, seed: int = 0,
                                  confidence: float = 0.95,
                                  margin: float = NON_INFERIORITY_MARGIN) -> HierarchicalComparison:
    """Arms A and B scored on the same seeds x cases (``a[s][c]`` pairs with ``b[s][c]``: the same
    training seed, e.g. the same training collection, and the same test case) -> the hierarchical
    bootstrap interval of mean(B - A) (``hierarchical_bootstrap`` on the differences, the same
    ``design`` rules) with ``paired_bootstrap``'s verdicts: non-inferior when the interval's lower
    end is above ``margin``, better when it is above 0. ``per_seed_difference`` says whether a
    verdict rests on one seed."""
    ra, rb = _seed_rows(a, "a", design), _seed_rows(b, "b", design)
    if len(ra) != len(rb) or any(x.size != y.size for x, y in zip(ra, rb)):
        raise ValueError(f"paired scores need the same seeds x cases in both arms; got "
                         f"{[x.size for x in ra]} and {[y.size for y in rb]} cases per seed")
    diffs = [y - x for x, y in zip(ra, rb)]
    means = _chunked(diffs, design, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    per_seed = tuple(float(d.mean()) for d in diffs)
    return HierarchicalComparison(len(diffs), max(d.size for d in diffs), design,
                                  float(np.mean([x.mean() for x in ra])), float(np.mean([y.mean() for y in rb])),
                                  float(np.mean(per_seed)), float(low), float(high), margin, per_seed)
