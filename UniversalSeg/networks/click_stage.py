"""The click stage (click-refinement stage): positive / negative clicks correct one task's mask.

One name in prose and code: *click stage* (``ClickStage``, ``ClickStageConfig``). The package
format keeps the key it was first written with: ``network.prompt`` in model.json and the weights'
prefix ``prompt.`` (``UniversalSegNet.prompt``). ``networks.prompt_stage``, ``PromptStage`` and
``PromptConfig`` are the old names, kept as aliases.

Where the guidance enters, and why (a design choice): nnInteractive and DeepEdit feed
click maps as extra INPUT channels, so every click re-runs the whole network. Ours enters AFTER
the universal network, on its final full-resolution features (already steered by the task and
modality priors):

    logits' = clamp(logits, -8, 8) + stage([features, sigmoid(logits), positive map, negative map])

- the automatic result cannot change: with no click the stage is not run at all, and in training
  the stage reads DETACHED features, so the automatic weights learn exactly what they learn
  without it (tested bit for bit);
- a click costs one pass of this small 3-level network over a region around the click, on
  features cached by the first (automatic) pass: well under a second on a 2-core CPU, where a
  full-network pass over a whole-head volume takes tens of seconds;
- it can be trained on top of any trained package (everything else frozen).
The price: a click cannot change the backbone's features, only what the stage makes of them
within its receptive field (about 40 voxels at the model spacing).

Which structure a click is about: the features are shared by every task, so without more the
stage cannot tell a click on a liver tumour from a click on the liver around it (measured on the
64^3 demo model: a positive click beside a 28-voxel PET lesion added 887 voxels, 807 of them
liver). With ``task_conditioned`` (the default of configs of format 2) each task has its own
scale and shift of the stage's first and deepest levels (FiLM, Perez et al. 2018), rows of a
``GrowableTable`` that start at the identity and grow with ``add_tasks``.

Click maps: one Gaussian blob per click (``sigma`` voxels on the model grid), the maximum over the
clicks of one sign. The last convolution starts at zero, so a new stage changes nothing until
trained. No normalization layer: a region's output must not depend on the region's size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ClickStageConfig
from .growable_table import GrowableTable

LOGIT_CLAMP = 8.0
# the stage's receptive field is about 2 * MARGIN voxels: a region computed with MARGIN voxels of
# context on every side gives the same values inside as the whole volume would
MARGIN = 24


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.01, inplace=True),
                         nn.Conv3d(cout, cout, 3, 1, 1), nn.LeakyReLU(0.01, inplace=True))


class ClickStage(nn.Module):
    """features [B, C, D, H, W] + logits [B, 1, ...] + clicks -> refined logits [B, 1, ...]."""

    def __init__(self, feature_channels: int, config: ClickStageConfig, num_tasks: int):
        super().__init__()
        w = config.width
        self.sigma = float(config.sigma)
        self.level0 = _block(feature_channels + 3, w)
        self.level1 = _block(w, 2 * w, stride=2)
        self.level2 = _block(2 * w, 4 * w, stride=2)
        self.up2 = _block(4 * w + 2 * w, 2 * w)
        self.up1 = _block(2 * w + w, w)
        self.out = nn.Conv3d(w, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.task_film = None
        if config.task_conditioned:  # per task (scale - 1, shift) of level0's and level2's output
            self.task_film = nn.ModuleList([GrowableTable(num_tasks, 2, w, init="zeros"),
                                            GrowableTable(num_tasks, 2, 4 * w, init="zeros")])

    def _film(self, h: torch.Tensor, level: int, task_ids) -> torch.Tensor:
        if self.task_film is None:
            return h
        scale, shift = self.task_film[level](task_ids).unbind(1)   # [B, C] each
        return h * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]

    def forward(self, features: torch.Tensor, logits: torch.Tensor, positive: torch.Tensor,
                negative: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``positive`` / ``negative``: click maps [B, 1, ...] (``click_maps``); ``task_ids`` [B]:
        the task each sample's logits are (needed when ``task_conditioned``). Sizes that are not
        multiples of 4 are padded (replicate) and cropped back."""
        if self.task_film is not None and (task_ids is None or task_ids.shape != logits.shape[:1]):
            raise ValueError(f"this click stage is task-conditioned: give task_ids of shape "
                             f"[{logits.shape[0]}], got {None if task_ids is None else tuple(task_ids.shape)}")
        base = logits.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        x = torch.cat([features.float(), torch.sigmoid(base), positive.float(), negative.float()], dim=1)
        spatial = x.shape[2:]
        pad = [p for s in reversed(spatial) for p in (0, (-s) % 4)]
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        h0 = self._film(self.level0(x), 0, task_ids)
        h1 = self.level1(h0)
        h2 = self._film(self.level2(h1), 1, task_ids)
        u1 = self.up2(torch.cat([h1, F.interpolate(h2, size=h1.shape[2:], mode="trilinear")], 1))
        u0 = self.up1(torch.cat([h0, F.interpolate(u1, size=h0.shape[2:], mode="trilinear")], 1))
        delta = self.out(u0)[(...,) + tuple(slice(0, s) for s in spatial)]
        return base + delta


PromptStage = ClickStage  # the old name (scripts may import it)


def click_maps(shape: Sequence[int], clicks: Sequence[tuple[Sequence[float], bool]], sigma: float,
               offset: Sequence[int] = (0, 0, 0), device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative maps [1, 1, *shape] of a region starting at voxel ``offset``.
    ``clicks``: ((i, j, k) in voxels of the whole volume, positive?) - clicks outside the region
    still reach into it by their blob."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) + o for n, o in zip(shape, offset)]
    maps = [torch.zeros(tuple(shape), device=device) for _ in range(2)]
    for point, positive in clicks:
        g = [torch.exp(-((a - float(c)) ** 2) / (2 * sigma ** 2)) for a, c in zip(axes, point)]
        blob = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        target = maps[0] if positive else maps[1]
        torch.maximum(target, blob, out=target)
    return maps[0][None, None], maps[1][None, None]
