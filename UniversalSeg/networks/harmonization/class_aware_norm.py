"""Class-aware normalization from a soft mask (DualNorm-UNet / CateNorm, Xiao et al.).

Paper idea (SPADE-style): normalise without affine, then modulate with spatially varying
``x * (1 + gamma(m)) + beta(m)`` where gamma and beta come from small convolutions over a soft
class mask m. Two passes per iteration: a plain pass predicts the mask, the second pass
normalises with it (the mask detached). As in the reference (lambert-x/CateNorm): the first pass
is supervised too (``UniversalSegNet`` returns its logits in training, the loss adds them; the
reference takes one optimizer step per pass, we sum the two losses into one step), and the
modulation sits in the high-resolution encoder (default ``enc0``-``enc3``: the reference README's
DualNorm example puts its ``--spade-aux-blocks`` in ``inc down1 down2 down3``). The reference
starts from a pretrained baseline; ours trains both passes from the start.

Our design decisions
- In a universal model the requested task set changes from sample to sample, so a fixed
  "one channel per class" mask cannot be fed to a convolution. We embed it instead: every task
  owns a learned k-vector (a growable table), and the class map is
  ``sum_t p_t * e_task(t)`` over the requested tasks, a [B, k, d, h, w] map whose meaning does not
  depend on task order or count (padding tasks contribute zero). New tasks add rows; requests for
  old tasks compute exactly what they did before.
- Stages are a knob (``harmonization.class_aware_stages``); the probabilities are average-pooled
  to each stage's resolution before the embedding (k channels, not one per task).
- gamma / beta convolutions are zero-initialised, so training starts as plain instance norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..growable_table import GrowableTable
from .instance_norm import standardize


class TaskMaskEmbedding(nn.Module):
    """Per-level class maps from per-task probabilities (owned by the network, shared by layers)."""

    def __init__(self, num_tasks: int, channels: int):
        super().__init__()
        self.table = GrowableTable(num_tasks, channels)

    def forward(self, probs: torch.Tensor, task_ids: torch.Tensor, levels) -> dict:
        emb = self.table(task_ids.clamp(min=0)) * (task_ids >= 0)[..., None].to(probs.dtype)
        maps = {}
        for level in sorted(set(levels)):
            p = F.avg_pool3d(probs, 2 ** level) if level else probs
            maps[level] = torch.einsum("btk,btdhw->bkdhw", emb.to(p.dtype), p)
        return maps


class ClassAwareNorm(nn.Module):
    def __init__(self, channels: int, embed: int, level: int):
        super().__init__()
        self.channels, self.level = channels, level
        self.shared = nn.Sequential(nn.Conv3d(embed, embed, 3, padding=1), nn.ReLU(inplace=True))
        self.to_gamma_beta = nn.Conv3d(embed, 2 * channels, 3, padding=1)
        nn.init.zeros_(self.to_gamma_beta.weight)
        nn.init.zeros_(self.to_gamma_beta.bias)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        xh = standardize(x)
        maps = ctx.class_maps
        if maps is None:  # first (plain) pass: no mask yet, only the learned bias modulates
            gb = self.to_gamma_beta.bias.to(xh.dtype).view(1, -1, *(1,) * (x.dim() - 2))
        else:
            m = maps[self.level].to(xh.dtype)
            gb = self.to_gamma_beta(self.shared(m))
        gamma, beta = gb.chunk(2, dim=1)
        return xh * (1 + gamma) + beta

    def extra_repr(self) -> str:
        return f"{self.channels}, level={self.level}"
