"""The domain gate: which training domain does this image look like? (U-Harmony's gated head.)

All domain-specific plug-ins read ``ctx.domain_weights`` ([B, num_domains]). When the caller knows
the domain (training, or a site that was in the training set) the weights are one-hot. When it
does not (``domain_id = -1``: a new hospital, a user in Slicer), the gate's softmax is used, so
the model runs without a domain id. The gate sees the raw input image, before any
domain-specific layer, through a small strided CNN with global mean/std pooling; it is trained by
an auxiliary cross-entropy on the known domain (``outputs["domain_logits"]``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DomainGate(nn.Module):
    def __init__(self, in_channels: int, num_domains: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv3d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
        )
        self.classifier = nn.Sequential(nn.LayerNorm(4 * width), nn.Linear(4 * width, num_domains))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(image, 2)  # the gate needs appearance, not detail
        f = self.features(x).flatten(2)
        stats = torch.cat([f.mean(-1), f.std(-1)], dim=1)
        return self.classifier(stats.float())

    @staticmethod
    def weights(logits: torch.Tensor, domain_ids: torch.Tensor) -> torch.Tensor:
        """One-hot rows for known domains, softmax of the gate for unknown ones (-1)."""
        known = domain_ids >= 0
        onehot = F.one_hot(domain_ids.clamp(min=0), logits.shape[1]).to(logits.dtype)
        return torch.where(known[:, None], onehot, logits.softmax(dim=1))
