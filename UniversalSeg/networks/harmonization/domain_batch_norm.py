"""Domain-specific batch normalization (Dou et al.; MS-Net, Liu et al. 2020).

Paper idea: sites (or modalities) differ mostly in low-level statistics, so share every
convolution and keep one BatchNorm per domain (running statistics + affine), chosen by domain id.

Our design decisions
- Training: each domain present in the batch is normalized with its own batch statistics and
  updates only its own running statistics (a loop over the domains present, at most
  ``num_domains`` iterations; never a loop over samples).
- Evaluation: every domain's BatchNorm is a per-channel affine map, so a soft mixture
  ``ctx.domain_weights`` ([B, D], one-hot for a known domain, the domain gate's softmax for an
  unknown one) mixes them in closed form: one vectorised scale/shift per sample.
"""
from __future__ import annotations

import torch
from torch import nn
from ...errors import InputError


class DomainBatchNorm(nn.Module):
    def __init__(self, channels: int, num_domains: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.channels = channels
        self.norms = nn.ModuleList(nn.BatchNorm3d(channels, eps=eps, momentum=momentum)
                                   for _ in range(num_domains))

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        if self.training:
            ids = ctx.domain_ids
            if bool((ids < 0).any()):
                raise InputError("domain_batch normalization trains per domain: every training "
                                 "sample needs a known domain id")
            present = torch.unique(ids).tolist()
            if len(present) == 1:
                return self.norms[present[0]](x)
            out = torch.empty_like(x)
            for d in present:
                sel = (ids == d).nonzero(as_tuple=True)[0]
                out[sel] = self.norms[d](x[sel]).to(out.dtype)
            return out
        w = ctx.domain_weights.to(torch.float32)  # [B, D]
        mean = torch.stack([n.running_mean for n in self.norms])  # [D, C]
        inv = torch.stack([n.weight / torch.sqrt(n.running_var + n.eps) for n in self.norms])
        bias = torch.stack([n.bias for n in self.norms])
        scale = w @ inv  # [B, C]
        shift = w @ (bias - mean * inv)
        shape = (x.shape[0], self.channels) + (1,) * (x.dim() - 2)
        return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, domains={len(self.norms)}"
