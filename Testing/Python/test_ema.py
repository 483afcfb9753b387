"""The exported EMA forgets the random initialisation within a short run (training/ema.py)."""
import math

import pytest
import torch

from UniversalSeg.training.config import TrainConfig, TrainConfigError
from UniversalSeg.training.ema import ema_decay_at, weight_average
from UniversalSeg.training.trainer import changed_settings


def _jump_then_average(steps: int, warmup: bool) -> tuple[float, float]:
    """Weights 1 at the start, 0 at every later step: the EMA's weight is the share of the start."""
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(1.0)
    ema = weight_average(net, 0.99, warmup)
    ema.update_parameters(net)  # the first update copies
    with torch.no_grad():
        net[0].weight.zero_()
        net[1].running_mean.zero_()
    for _ in range(steps):
        ema.update_parameters(net)
    return ema.module[0].weight.flatten()[0].item(), ema.module[1].running_mean[0].item()


def test_warmup_forgets_the_initialisation_that_a_constant_decay_keeps():
    # constant 0.99: 0.99**160 = 20 % of the start survives 160 steps (the MS-Net arm's collapse)
    weight, mean = _jump_then_average(160, warmup=False)
    assert weight == pytest.approx(0.99 ** 160, rel=1e-4) and mean == pytest.approx(0.99 ** 160, rel=1e-4)
    # warm-up: prod_{n=1..160} (1+n)/(10+n) = 10! * 161! / 170!
    share = math.factorial(10) * math.factorial(161) / math.factorial(170)
    weight, mean = _jump_then_average(160, warmup=True)
    assert weight == pytest.approx(share, rel=1e-3) and mean == pytest.approx(share, rel=1e-3)
    assert weight < 1e-12


def test_warmup_schedule_reaches_the_configured_decay():
    assert ema_decay_at(1, 0.99, True) == pytest.approx(2 / 11)
    assert ema_decay_at(100, 0.99, True) == pytest.approx(101 / 110)
    assert ema_decay_at(889, 0.99, True) < 0.99 and ema_decay_at(890, 0.99, True) == 0.99
    assert ema_decay_at(1, 0.99, False) == 0.99


def test_ema_warmup_is_a_checked_setting_and_old_runs_resume_without_it():
    assert TrainConfig().ema_warmup is True
    with pytest.raises(TrainConfigError, match="ema_warmup: true or false, got 'yes'"):
        TrainConfig.from_dict({"ema_warmup": "yes"})
    before = TrainConfig().to_dict()
    del before["ema_warmup"]  # a run started before the setting existed averaged without warm-up
    assert changed_settings(before, TrainConfig().to_dict()) == ["ema_warmup: False -> True"]
    assert changed_settings(before, TrainConfig().replace(ema_warmup=False).to_dict()) == []
