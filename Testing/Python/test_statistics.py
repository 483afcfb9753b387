"""Paired bootstrap intervals (case-level, seeded) and normalized surface Dice beside Dice."""
import numpy as np
import pytest
import torch

from UniversalSeg.training.evaluation import dice_per_task, surface_dice_per_task
from UniversalSeg.training.statistics import paired_bootstrap


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
