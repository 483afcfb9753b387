"""Domain-separable convolution and per-domain input/output layers (3D U2-Net, Huang et al. 2019).

Paper idea: a 3x3x3 convolution is split into a depthwise 3x3x3 part that is specific to each
domain and a pointwise 1x1x1 part shared by all domains; with five domains this gives a universal
network ~25x smaller than five separate ones, and a new domain only needs new depthwise kernels.

As the reference (huangmozhilv/u2net_torch, ``models/u2net3d.py``: ``dwise``, ``conv_unit``,
``InputTransition``, ``OutputTransition``) builds it:
- between the domain's depthwise convolution and the shared pointwise one sits the domain's own
  normalization (instance norm with per-domain scale and shift) and a LeakyReLU(0.01);
- every domain has its own input layer (``DomainStemConv3d``: 3x3x3, image -> w channels) and
  its own output layer (``DomainOutputProjection``: 1x1x1 on the last features).
Where ours differs (3D U2-Net-style): the output layer cannot be the classifier itself, because
our classifier is the task-prior head shared by every domain; the per-domain 1x1x1 projection
feeds it (initialised to the identity). The reference's per-domain norm AFTER the pointwise
convolution is the next layer's norm in our pre-activation blocks (``norm: domain_batch`` or
``polynomial`` make it per-domain too).

Our design decisions
- Per-domain weights live in tables [D, ...]. A mixed batch runs in ONE grouped convolution:
  samples are folded into the channel axis and each gets the kernels of its domain, so there is no
  per-sample or per-domain loop.
- Everything per-domain is mixed by ``ctx.domain_weights`` (one-hot for a known domain, the domain
  gate's soft mixture for an unknown one), which makes inference without a domain id possible.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .instance_norm import standardize

NEGATIVE_SLOPE = 1e-2  # the reference's LeakyReLU


def _mix(table: torch.Tensor, ctx) -> torch.Tensor:
    """Per-sample parameters: the domain-weighted sum of a [D, ...] table -> [B, ...]."""
    return torch.einsum("bd,d...->b...", ctx.domain_weights.to(table.dtype), table)


class DomainSeparableConv3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_domains: int, kernel_size: int = 3):
        super().__init__()
        self.in_channels, self.out_channels, self.k = in_channels, out_channels, kernel_size
        self.depthwise = nn.Parameter(torch.empty(num_domains, in_channels, 1, *(kernel_size,) * 3))
        nn.init.kaiming_uniform_(self.depthwise.view(num_domains * in_channels, 1, -1), a=math.sqrt(5))
        self.scale = nn.Parameter(torch.ones(num_domains, in_channels))   # the domain's norm
        self.shift = nn.Parameter(torch.zeros(num_domains, in_channels))
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        b, c = x.shape[:2]
        w = _mix(self.depthwise, ctx).reshape(b * c, 1, *(self.k,) * 3).to(x.dtype)
        y = F.conv3d(x.reshape(1, b * c, *x.shape[2:]), w, padding=self.k // 2, groups=b * c)
        y = standardize(y.view(b, c, *y.shape[2:]))
        view = (b, c) + (1,) * (x.dim() - 2)
        y = y * _mix(self.scale, ctx).view(view).to(y.dtype) + _mix(self.shift, ctx).view(view).to(y.dtype)
        return self.pointwise(F.leaky_relu(y, NEGATIVE_SLOPE))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, domains={self.depthwise.shape[0]}, "
                f"kernel={self.k}, norm+LeakyReLU per domain between depthwise and pointwise")


class DomainStemConv3d(nn.Module):
    """The per-domain input layer: each domain's own 3x3x3 convolution image -> w channels."""

    def __init__(self, in_channels: int, out_channels: int, num_domains: int, kernel_size: int = 3):
        super().__init__()
        self.in_channels, self.out_channels, self.k = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(num_domains, out_channels, in_channels, *(kernel_size,) * 3))
        for d in range(num_domains):
            nn.init.kaiming_uniform_(self.weight.data[d], a=math.sqrt(5))

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        b = x.shape[0]
        w = _mix(self.weight, ctx).reshape(b * self.out_channels, self.in_channels, *(self.k,) * 3).to(x.dtype)
        y = F.conv3d(x.reshape(1, b * self.in_channels, *x.shape[2:]), w, padding=self.k // 2, groups=b)
        return y.view(b, self.out_channels, *y.shape[2:])


class DomainOutputProjection(nn.Module):
    """The per-domain output layer: each domain's own 1x1x1 map of the last features (identity
    at initialisation), in front of the task head that all domains share."""

    def __init__(self, channels: int, num_domains: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(channels).repeat(num_domains, 1, 1))

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        w = _mix(self.weight, ctx).to(x.dtype)  # [B, C_out, C_in]
        return torch.einsum("boc,bc...->bo...", w, x)
