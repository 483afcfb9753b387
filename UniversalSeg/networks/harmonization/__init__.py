"""Harmonization plug-ins: drop-in normalization / convolution layers chosen by the config.

Every layer has the signature ``layer(x, ctx)``, so the backbone is written once and the seed
papers' ideas are switched on and off in ``ModelConfig.harmonization``:

==================  ====================================  =====================================
config              layer                                 paper
==================  ====================================  =====================================
norm: instance      ``InstanceNorm``                      Hermes / nnU-Net default
norm: domain_batch  ``DomainBatchNorm``                   Dou et al., MS-Net (one BN per site)
norm: polynomial    ``PolynomialHarmonizationNorm``       U-Harmony-style (normalize ->
                                                          denormalize; ours: basis, gate, stages)
norm: class_aware   ``ClassAwareNorm`` (listed stages)    DualNorm-UNet / CateNorm
conv: domain_sep..  ``DomainSeparableConv3d``, per-domain  3D U2-Net (separable adapter)
                    input / output layers
==================  ====================================  =====================================

Domain-specific layers read ``ctx.domain_weights``, filled by the network from the domain id or,
for an unknown domain, from the ``DomainGate``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .class_aware_norm import ClassAwareNorm, TaskMaskEmbedding
from .domain_batch_norm import DomainBatchNorm
from .domain_gate import DomainGate
from .domain_separable_conv import DomainOutputProjection, DomainSeparableConv3d, DomainStemConv3d
from .instance_norm import InstanceNorm, standardize
from .polynomial_harmonization import PolynomialHarmonizationNorm

__all__ = ["ClassAwareNorm", "DomainBatchNorm", "DomainGate", "DomainOutputProjection", "DomainSeparableConv3d",
           "DomainStemConv3d",
           "InstanceNorm", "PolynomialHarmonizationNorm", "SharedConv3d", "StemConv3d", "TaskMaskEmbedding",
           "make_conv", "make_norm", "make_output_layer", "make_stem", "needs_domains", "standardize"]


class SharedConv3d(nn.Conv3d):
    """A plain bias-free convolution that accepts (and ignores) the context."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x, ctx=None):
        return super().forward(x)


class StemConv3d(SharedConv3d):
    """The first convolution (image -> w channels), shared by all domains.

    On CPU, PyTorch sends a one-channel fp32 3D convolution to a slow reference kernel and returns
    it in the wrong memory format. Adding an all-zero second input channel (with zero weights)
    makes oneDNN take it: the same result ~2.5x faster at 128^3, already channels-last.
    """

    def forward(self, x, ctx=None):
        if (x.device.type == "cpu" and x.shape[1] == 1 and x.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")):
            pad = (0, 0) * (x.dim() - 2) + (0, 1)
            fmt = torch.channels_last_3d
            return F.conv3d(F.pad(x, pad).contiguous(memory_format=fmt),
                            F.pad(self.weight, pad).contiguous(memory_format=fmt), padding=self.padding)
        return super().forward(x)


def needs_domains(cfg: ModelConfig) -> bool:
    h = cfg.harmonization
    return h.norm in ("domain_batch", "polynomial") or h.conv == "domain_separable"


def make_norm(cfg: ModelConfig, channels: int, stage: str) -> nn.Module:
    h, domains = cfg.harmonization, len(cfg.domains)
    if h.norm == "domain_batch" and stage in h.harmonized_stages:
        return DomainBatchNorm(channels, domains)
    if h.norm == "polynomial" and stage in h.harmonized_stages:
        return PolynomialHarmonizationNorm(channels, domains, h.polynomial_degree)
    if h.norm == "class_aware" and stage in h.class_aware_stages:
        return ClassAwareNorm(channels, h.class_aware_embedding, level=int(stage[-1]))
    return InstanceNorm(channels)


def make_stem(cfg: ModelConfig) -> nn.Module:
    if cfg.harmonization.conv == "domain_separable":
        return DomainStemConv3d(cfg.in_channels, cfg.channels[0], len(cfg.domains))
    return StemConv3d(cfg.in_channels, cfg.channels[0])


def make_output_layer(cfg: ModelConfig) -> nn.Module | None:
    if cfg.harmonization.conv == "domain_separable":
        return DomainOutputProjection(cfg.channels[0], len(cfg.domains))
    return None


def make_conv(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    if cfg.harmonization.conv == "domain_separable":
        return DomainSeparableConv3d(in_channels, out_channels, len(cfg.domains))
    return SharedConv3d(in_channels, out_channels)
