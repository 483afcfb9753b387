"""Output heads: the dynamic task head, the static baseline head and the modality head.

DynamicTaskHead (Hermes): each requested task's posterior tokens from every fusion site are
concatenated ([B, T, sum C]) -> LayerNorm -> MLP -> one kernel (w weights + 1 bias) per task; the
logits are that kernel applied as a 1x1x1 convolution to the final full-resolution features:
``[B, T, D, H, W]``, one independent sigmoid per task (multi-label: tasks may overlap, e.g. an
organ and a lesion inside it). Only the requested tasks are computed.

StaticTaskHead: one fixed kernel per global task (the "naive joint model" baseline: a shared
network with one output channel per task and no priors); also only requested tasks computed.

ModalityHead: mean of each site's modality posterior tokens -> MLP -> modality logits (an
auxiliary loss; the modality itself is always given by the user).
"""
from __future__ import annotations

import torch
from torch import nn

from .growable_table import GrowableTable


def apply_task_kernels(kernels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """kernels [B, T, C + 1] (weights, bias), features [B, C, D, H, W] -> logits [B, T, D, H, W]."""
    weight, bias = kernels[..., :-1].to(features.dtype), kernels[..., -1].to(features.dtype)
    b, c, *spatial = features.shape
    if features.is_contiguous(memory_format=torch.channels_last_3d):
        tokens = features.permute(0, 2, 3, 4, 1).reshape(b, -1, c)  # a view: [B, N, C]
        logits = torch.baddbmm(bias[:, None, :], tokens, weight.transpose(1, 2))  # [B, N, T]
        return logits.view(b, *spatial, -1).permute(0, 4, 1, 2, 3)
    logits = torch.baddbmm(bias[..., None], weight, features.reshape(b, c, -1))  # [B, T, N]
    return logits.view(b, -1, *spatial)


class DynamicTaskHead(nn.Module):
    def __init__(self, token_dims: list[int], feature_channels: int):
        super().__init__()
        total = sum(token_dims)
        self.mlp = nn.Sequential(nn.LayerNorm(total), nn.Linear(total, total), nn.GELU(),
                                 nn.Linear(total, feature_channels + 1))

    def forward(self, task_tokens: list[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        kernels = self.mlp(torch.cat(task_tokens, dim=-1))
        return apply_task_kernels(kernels, features)


class StaticTaskHead(nn.Module):
    def __init__(self, num_tasks: int, feature_channels: int):
        super().__init__()
        self.kernels = GrowableTable(num_tasks, feature_channels + 1)

    def forward(self, task_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return apply_task_kernels(self.kernels(task_ids.clamp(min=0)), features)


class ModalityHead(nn.Module):
    def __init__(self, token_dims: list[int], num_modalities: int, hidden: int = 256):
        super().__init__()
        total = sum(token_dims)
        self.mlp = nn.Sequential(nn.LayerNorm(total), nn.Linear(total, hidden), nn.GELU())
        self.classes = GrowableTable(num_modalities, hidden)

    def forward(self, modality_tokens: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([t.mean(dim=1) for t in modality_tokens], dim=-1)
        h = self.mlp(pooled)
        return h @ self.classes.table().to(h.dtype).t()
