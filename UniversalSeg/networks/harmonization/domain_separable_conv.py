"""Domain-separable convolution (3D U2-Net, Huang et al. 2019).

Paper idea: a 3x3x3 convolution is split into a depthwise 3x3x3 part that is specific to each
domain and a pointwise 1x1x1 part shared by all domains; with five domains this gives a universal
network ~25x smaller than five separate ones, and a new domain only needs new depthwise kernels.

Our design decisions
- The per-domain depthwise kernels live in one table [D, C, 1, 3, 3, 3]. A mixed batch is run in
  ONE grouped convolution: samples are folded into the channel axis and each sample gets the
  kernels of its domain (``groups = B * C``), so there is no per-sample or per-domain loop.
- Kernels are mixed by ``ctx.domain_weights`` (one-hot for a known domain, the domain gate's soft
  mixture for an unknown one), which makes inference without a domain id possible.
- No norm between the depthwise and pointwise parts: our blocks are pre-activation, so the next
  layer's (optionally domain-specific) normalization follows directly. The stem convolution stays
  a shared dense convolution (a depthwise kernel on one input channel would be too weak).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DomainSeparableConv3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_domains: int, kernel_size: int = 3):
        super().__init__()
        self.in_channels, self.out_channels, self.k = in_channels, out_channels, kernel_size
        self.depthwise = nn.Parameter(torch.empty(num_domains, in_channels, 1, *(kernel_size,) * 3))
        nn.init.kaiming_uniform_(self.depthwise.view(num_domains * in_channels, 1, -1), a=math.sqrt(5))
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        b, c = x.shape[:2]
        w = torch.einsum("bd,d...->b...", ctx.domain_weights.to(self.depthwise.dtype), self.depthwise)
        w = w.reshape(b * c, 1, *w.shape[-3:]).to(x.dtype)
        y = F.conv3d(x.reshape(1, b * c, *x.shape[2:]), w, padding=self.k // 2, groups=b * c)
        return self.pointwise(y.view(b, c, *y.shape[2:]))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, domains={self.depthwise.shape[0]}, "
                f"kernel={self.k}")
