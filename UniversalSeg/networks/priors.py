"""Task priors and modality priors (Hermes context-prior learning).

Each fusion site owns its own priors:
- a task table [num_tasks, C] plus a null token [C] for padding slots,
- a modality table [num_modalities, M, C] (M tokens per modality).

``ContextPriors(ctx)`` returns, for the whole batch at once (one gather, no per-sample loop), the
prior tokens [B, T + M, C] and the key mask [B, T + M] that is False on padding task slots. Tables
grow for incremental learning (see ``GrowableTable``).
"""
from __future__ import annotations

import torch
from torch import nn

from .growable_table import GrowableTable


class ContextPriors(nn.Module):
    def __init__(self, channels: int, num_tasks: int, num_modalities: int, modality_tokens: int):
        super().__init__()
        self.tasks = GrowableTable(num_tasks, channels)
        self.null = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, channels))[0])
        self.modalities = GrowableTable(num_modalities, modality_tokens, channels)

    def forward(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ctx.task_mask  # [B, T]
        task_tokens = torch.where(mask[..., None], self.tasks(ctx.task_ids.clamp(min=0)), self.null)
        modality_tokens = self.modalities(ctx.modality_ids)  # [B, M, C]
        tokens = torch.cat([task_tokens, modality_tokens], dim=1)
        key_mask = torch.cat([mask, mask.new_ones(modality_tokens.shape[:2])], dim=1)
        return tokens, key_mask
