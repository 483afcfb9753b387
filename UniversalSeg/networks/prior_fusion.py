"""Fusing context priors with image features (Hermes), with a key-padding mask.

One ``PriorFusionBlock`` does, with pre-LayerNorm and residuals:
1. priors attend to voxels (cross-attention, queries = prior tokens), then an MLP on the priors;
2. voxels attend to priors (cross-attention, queries = voxels, keys = priors with padding task
   slots masked out), then an MLP on the voxels.
Attention is ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels where the device has them). Heads = C / head_dim.

A ``PriorFusionSite`` owns its ``ContextPriors`` and ``depth`` blocks; it returns the fused map
(which replaces the stage output) and the posterior tokens [B, T + M, C] for the heads. The
feature map is viewed as a token sequence without a copy when it is channels-last.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .priors import ContextPriors


class CrossAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask=None) -> torch.Tensor:
        b, nq, c = queries.shape
        q = self.q(self.norm_q(queries)).view(b, nq, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(self.norm_kv(keys)).view(b, -1, 2, self.heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # True = attend
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, nq, c))


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, ratio * dim), nn.GELU(),
                         nn.Linear(ratio * dim, dim))


class PriorFusionBlock(nn.Module):
    def __init__(self, dim: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.prior_from_voxels = CrossAttention(dim, head_dim)
        self.prior_mlp = MLP(dim, mlp_ratio)
        self.voxels_from_priors = CrossAttention(dim, head_dim)
        self.voxel_mlp = MLP(dim, mlp_ratio)

    def forward(self, voxels, priors, key_mask):
        priors = priors + self.prior_from_voxels(priors, voxels)
        priors = priors + self.prior_mlp(priors)
        voxels = voxels + self.voxels_from_priors(voxels, priors, key_mask)
        voxels = voxels + self.voxel_mlp(voxels)
        return voxels, priors


class PriorFusionSite(nn.Module):
    def __init__(self, channels: int, depth: int, num_tasks: int, num_modalities: int,
                 modality_tokens: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.priors = ContextPriors(channels, num_tasks, num_modalities, modality_tokens)
        self.blocks = nn.ModuleList(PriorFusionBlock(channels, head_dim, mlp_ratio)
                                    for _ in range(depth))

    def forward(self, x: torch.Tensor, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, d, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, d * h * w, c)  # a view when channels-last
        priors, key_mask = self.priors(ctx)
        for block in self.blocks:
            tokens, priors = block(tokens, priors, key_mask)
        fused = tokens.view(b, d, h, w, c).permute(0, 4, 1, 2, 3)  # channels-last NCDHW view
        return fused, priors
