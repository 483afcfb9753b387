"""Paired bootstrap intervals (case-level and hierarchical over seeds and cases, seeded) and
normalized surface Dice beside Dice."""
import numpy as np
import pytest
import torch

from UniversalSeg.training.evaluation import dice_per_task, surface_dice_per_task
from UniversalSeg.training.statistics import hierarchical_bootstrap, paired_bootstrap, paired_hierarchical_bootstrap


def test_paired_bootstrap_intervals_and_verdicts():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.9, 30)
    same = paired_bootstrap(a, a)
    assert same.difference == 0 and same.low == same.high == 0
    assert same.non_inferior and not same.better
    shifted = paired_bootstrap(a, a + 0.05)  # a constant gain: the interval is that gain
    assert shifted.low == pytest.approx(0.05) and shifted.high == pytest.approx(0.05) and shifted.better
    noisy = a - 0.03 + rng.normal(0, 0.05, 30)  # worse by 0.03 on average: beyond the -0.02 margin
    worse = paired_bootstrap(a, noisy)
    assert worse.low < -0.02 < worse.high or worse.high < -0.02
    assert not worse.non_inferior
    assert paired_bootstrap(a, noisy, seed=0) == worse  # seeded: the same interval every time
    wide = paired_bootstrap(a[:3], noisy[:3])
    assert wide.high - wide.low > worse.high - worse.low  # fewer cases, wider interval
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap(a, a[:5])



def _width(interval):
    return interval.high - interval.low


def test_hierarchical_without_seed_variance_is_the_case_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.6, 0.9, 30)
    # crossed: three seeds that scored the same 30 cases identically; the seed stage changes nothing
    same = hierarchical_bootstrap(np.tile(x, (3, 1)), design="crossed")
    cases = paired_bootstrap(np.zeros(30), x)
    assert same.mean == pytest.approx(x.mean()) and same.per_seed == pytest.approx((x.mean(),) * 3)
    assert 0.85 < _width(same) / _width(cases) < 1.15
    assert same.low < x.mean() < same.high and same.half_width == pytest.approx(_width(same) / 2)
    # nested: each seed its own 30 cases from one distribution (no seed effect): about the case
    # bootstrap over all 90 (the two-stage bootstrap is somewhat conservative, never much narrower)
    rows = rng.uniform(0.6, 0.9, (8, 30))
    nested = hierarchical_bootstrap(rows, design="nested")
    pooled = paired_bootstrap(np.zeros(rows.size), rows.ravel())
    assert 0.9 < _width(nested) / _width(pooled) < 1.6


def test_hierarchical_interval_widens_with_seed_variance():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.6, 0.9, 30)
    offsets = np.array([-0.20, 0.0, 0.20, -0.10, 0.10])[:, None]  # seeds that disagree by up to 0.4
    scores = x + offsets + rng.normal(0, 0.01, (5, 30))
    seeds_in = hierarchical_bootstrap(scores, design="crossed")
    seed_means_only = paired_bootstrap(np.zeros(30), scores.mean(axis=0))  # seeds averaged first
    assert _width(seeds_in) > 3 * _width(seed_means_only)
    assert seeds_in.low < scores.mean() < seeds_in.high


def test_paired_hierarchical_verdicts_and_a_gain_that_rests_on_one_seed():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.6, 0.9, (3, 40))
    same = paired_hierarchical_bootstrap(a, a, design="crossed")
    assert same.difference == 0 and same.low <= 0 <= same.high
    assert same.non_inferior and not same.better and same.seeds_b_ahead == 0
    gain = paired_hierarchical_bootstrap(a, a + 0.05, design="nested")  # the same gain in every seed and case
    assert gain.low == pytest.approx(0.05) and gain.high == pytest.approx(0.05) and gain.better
    # B ahead in one seed only (+0.06), slightly behind in the other two: averaged over seeds
    # first, the case bootstrap calls it better; with the seeds in the interval it is not
    b = a + np.array([0.06, -0.01, -0.005])[:, None] + rng.normal(0, 0.005, (3, 40))
    case_level = paired_bootstrap(a.mean(axis=0), b.mean(axis=0))
    assert case_level.better
    hier = paired_hierarchical_bootstrap(a, b, design="crossed")
    assert not hier.better and hier.low < 0 < hier.high and hier.seeds_b_ahead == 1
    assert hier.difference == pytest.approx(case_level.difference)
    assert hier.to_dict()["per_seed_difference"] == list(hier.per_seed_difference)
    worse = paired_hierarchical_bootstrap(a, a - 0.03 + rng.normal(0, 0.02, (3, 40)), design="crossed")
    assert not worse.non_inferior  # 0.03 worse in every seed: beyond the -0.02 margin


def test_hierarchical_bootstrap_is_seeded():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.5, 0.9, (4, 25)), rng.uniform(0.5, 0.9, (4, 25))
    for design in ("crossed", "nested"):
        assert paired_hierarchical_bootstrap(a, b, design=design, seed=7) == \
            paired_hierarchical_bootstrap(a, b, design=design, seed=7)
        assert hierarchical_bootstrap(b, design=design, seed=7) == hierarchical_bootstrap(b, design=design, seed=7)
        assert hierarchical_bootstrap(b, design=design, seed=7).low != hierarchical_bootstrap(b, design=design,
                                                                                              seed=8).low


def test_crossed_design_keeps_its_coverage_where_independent_case_draws_lose_it():
    """Every seed scored the SAME cases: the case effect is shared by the seeds. Resampling one
    case set per replicate covers the true mean about 95 % of the time; resampling cases anew in
    each seed (the nested design, wrong here) divides the case variance by the seeds and covers
    far less often."""
    rng = np.random.default_rng(5)
    covered = {"crossed": 0, "nested": 0}
    for i in range(200):
        scores = 0.7 + rng.normal(0, 0.03, (6, 1)) + rng.normal(0, 0.08, (1, 20)) + rng.normal(0, 0.02, (6, 20))
        for design in covered:
            interval = hierarchical_bootstrap(scores, design=design, resamples=1000, seed=i)
            covered[design] += interval.low <= 0.7 <= interval.high
    assert covered["crossed"] >= 0.86 * 200
    assert covered["nested"] < covered["crossed"] - 20


def test_hierarchical_bootstrap_refuses_bad_shapes_and_takes_unequal_nested_seeds():
    rng = np.random.default_rng(6)
    ragged = [rng.uniform(0.5, 0.9, n) for n in (10, 25, 40)]
    nested = hierarchical_bootstrap(ragged, design="nested")  # every seed's mean weighs the same
    assert nested.mean == pytest.approx(np.mean([r.mean() for r in ragged])) and nested.cases == 40
    with pytest.raises(ValueError, match="crossed design"):
        hierarchical_bootstrap(ragged, design="crossed")
    with pytest.raises(ValueError, match="2-D array"):
        hierarchical_bootstrap(np.ones(10), design="crossed")
    with pytest.raises(ValueError, match="flat list"):
        hierarchical_bootstrap([np.ones((2, 3)), np.ones((2, 3))], design="nested")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        hierarchical_bootstrap(np.ones((1, 10)), design="crossed")
    with pytest.raises(ValueError, match="no case scores"):
        hierarchical_bootstrap([[0.5, 0.6], []], design="nested")
    with pytest.raises(ValueError, match="finite"):
        hierarchical_bootstrap([[0.5, float("nan")], [0.5, 0.6]], design="crossed")
    with pytest.raises(ValueError, match="design must be"):
        hierarchical_bootstrap(np.ones((2, 3)), design="two-stage")
    with pytest.raises(TypeError):
        hierarchical_bootstrap(np.ones((2, 3)))  # no default design: the caller says which it is
    with pytest.raises(ValueError, match="same seeds x cases"):
        paired_hierarchical_bootstrap(np.ones((3, 10)), np.ones((2, 10)), design="crossed")
    with pytest.raises(ValueError, match="same seeds x cases"):
        paired_hierarchical_bootstrap(ragged, [r[:-1] for r in ragged], design="nested")

def _logits(mask):
    return torch.where(torch.as_tensor(mask)[None, None], 5.0, -5.0)


def test_surface_dice_forgives_a_one_voxel_boundary_error_that_dice_does_not():
    truth = np.zeros((20, 20, 20), bool)
    truth[8:12, 8:12, 8:12] = True  # a small structure: 64 voxels, 56 on the boundary
    shifted = np.roll(truth, 1, axis=0)
    target = torch.as_tensor(truth)[None, None]
    dice = dice_per_task(_logits(shifted), target)[0]
    assert dice == pytest.approx(0.75)
    assert surface_dice_per_task(_logits(shifted), target, (2.0, 2.0, 2.0), tolerance_mm=2.0)[0] == 1.0
    assert surface_dice_per_task(_logits(shifted), target, (2.0, 2.0, 2.0), tolerance_mm=1.0)[0] < 0.9
    assert surface_dice_per_task(_logits(truth), target, (2.0, 2.0, 2.0), tolerance_mm=0.5)[0] == 1.0
    empty = torch.zeros_like(target)
    assert surface_dice_per_task(_logits(np.zeros_like(truth)), empty, (1, 1, 1), 1.0) == [1.0]
    assert surface_dice_per_task(_logits(truth), empty, (1, 1, 1), 1.0) == [0.0]
