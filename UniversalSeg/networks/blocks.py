"""Building blocks of the residual U-Net: a pre-activation residual block and its stages.

Every layer takes ``(x, ctx)`` so that harmonization plug-ins (domain norms, domain convolutions,
class-aware norms) drop in without touching this file.

Pre-activation block (He et al. 2016, as in the Hermes ResUNet)::

    a = ReLU(norm(x));  h = conv(a);  h = conv(ReLU(norm(h)));  return h + shortcut

When the channel count changes the shortcut is a 3x3x3 convolution of the same pre-activated
``a``. Because both branches read ``a``, the first convolution and the shortcut projection run as
ONE convolution with twice the output channels (same parameters and result as two, one pass over
the input instead of two).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .harmonization import make_conv, make_norm


class PreActBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int, stage: str):
        super().__init__()
        self.out_channels = out_channels
        self.project = in_channels != out_channels
        self.norm1 = make_norm(cfg, in_channels, stage)
        self.conv1 = make_conv(cfg, in_channels, out_channels * (2 if self.project else 1))
        self.norm2 = make_norm(cfg, out_channels, stage)
        self.conv2 = make_conv(cfg, out_channels, out_channels)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x, ctx), inplace=True), ctx)
        if self.project:
            h, shortcut = h.split(self.out_channels, dim=1)
            h = h.contiguous(memory_format=_format_of(shortcut))
        else:
            shortcut = x
        h = self.conv2(F.relu(self.norm2(h, ctx), inplace=True), ctx)
        return h + shortcut


class Stage(nn.Module):
    """A chain of pre-activation blocks at one resolution (the first may change the width)."""

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int, blocks: int, stage: str):
        super().__init__()
        self.name = stage
        self.blocks = nn.ModuleList(
            PreActBlock(cfg, in_channels if i == 0 else out_channels, out_channels, stage)
            for i in range(blocks))

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, ctx)
        return x


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.stride(1) == 1 else torch.contiguous_format


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Trilinear 2x up-sampling that keeps the memory format and dtype of its input."""
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
