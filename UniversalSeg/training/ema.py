"""The exponential moving average of the weights that training exports, with a warm-up.

A constant decay d keeps d**t of the initial (random) weights after t updates: 20 % after 160
steps at d = 0.99. Averaged convolutions then no longer match the averaged BatchNorm running
statistics, and a short run (a fine-tune, a few hundred steps of an every-site MS-Net-style
model) exports an EMA that segments nothing while the raw weights are fine. With the warm-up the
decay of update n (n = 1, 2, ... averages after the first copy) is min(d, (1 + n) / (10 + n)),
the schedule of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: the first updates
follow the weights closely and the full decay is reached after (10 d - 1) / (1 - d) updates
(890 for 0.99). ``torch.optim.swa_utils`` has only the constant-decay EMA, hence this small file.
The update count is AveragedModel's ``n_averaged`` buffer, saved in every checkpoint, so a
resumed run averages exactly as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

__all__ = ["ema_decay_at", "ema_multi_avg_fn", "weight_average"]


def ema_decay_at(updates: int, decay: float, warmup: bool) -> float:
    """The decay used for the ``updates``-th average (1-based: the first copy is update 0)."""
    return min(decay, (1.0 + updates) / (10.0 + updates)) if warmup else decay


def ema_multi_avg_fn(decay: float, warmup: bool):
    """A ``multi_avg_fn`` for :class:`AveragedModel` (lists of EMA and model tensors, n_averaged)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")

    @torch.no_grad()
    def update(ema_tensors, model_tensors, n_averaged) -> None:
        d = ema_decay_at(int(n_averaged), decay, warmup)
        if torch.is_floating_point(ema_tensors[0]) or torch.is_complex(ema_tensors[0]):
            torch._foreach_lerp_(ema_tensors, model_tensors, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked) as swa_utils does
            for e, m in zip(ema_tensors, model_tensors, strict=True):
                e.copy_(e * d + m * (1.0 - d))

    return update


def weight_average(net: torch.nn.Module, decay: float, warmup: bool) -> AveragedModel:
    """The EMA copy of ``net``; BatchNorm running statistics are averaged with the weights."""
    return AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(decay, warmup), use_buffers=True)
