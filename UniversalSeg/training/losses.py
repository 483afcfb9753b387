"""The partial-label loss: each sample is supervised only on the tasks its dataset annotates.

Per (sample, task): sigmoid BCE + adaptive Tversky (Hermes: alpha = clamp(FP / (FP + FN), 0.2,
0.8), so the loss leans against whichever error the model currently makes more). As in the
reference (yhygao/universal-medical-image-segmentation, training/losses.py ``BinaryDiceLoss``),
alpha is NOT detached: its gradient is part of the loss's (``detach_alpha=True`` gives the
simpler variant an earlier version of ours used). ``loss="dice"`` fixes alpha at 0.5: the soft
Dice loss (per sample and task), the choice the demo's seeded study supports (README).
MONAI's Dice/Tversky losses take one global alpha and reduce over all channels, so this small
piece is written here. Entries outside ``supervised`` (padding slots, or tasks a dataset does not
label) are removed with ``torch.where`` before the mean: their gradients are exactly zero, not
merely small. Auxiliary terms: modality cross-entropy (0.01, as the reference) and, with domain
plug-ins, the domain gate's cross-entropy on samples with a known domain.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LOSSES", "LossWeights", "PartialLabelLoss", "per_task_losses"]


LOSSES = ("adaptive-tversky", "dice")


@dataclass(frozen=True)
class LossWeights:
    bce: float = 1.0
    tversky: float = 1.0
    modality: float = 0.01
    domain: float = 0.1


def per_task_losses(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5,
                    detach_alpha: bool = False, fixed_alpha: float | None = None):
    """logits, target [B, T, ...] -> (bce [B, T], tversky [B, T]); ``fixed_alpha`` replaces the
    adaptive weight (0.5: soft Dice)."""
    logits = logits.float().flatten(2)
    target = target.float().flatten(2)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    p = torch.sigmoid(logits)
    tp = (p * target).sum(-1)
    fp = (p * (1 - target)).sum(-1)
    fn = ((1 - p) * target).sum(-1)
    if fixed_alpha is not None:
        alpha = torch.full_like(fp, fixed_alpha)
    else:
        alpha = (fp / (fp + fn + smooth)).clamp(0.2, 0.8)
    if detach_alpha:
        alpha = alpha.detach()
    tversky = 1 - (tp + smooth) / (tp + alpha * fp + (1 - alpha) * fn + smooth)
    return bce, tversky


class PartialLabelLoss(nn.Module):
    def __init__(self, weights: LossWeights = LossWeights(), kind: str = "adaptive-tversky"):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}")
        self.w = weights
        self.fixed_alpha = 0.5 if kind == "dice" else None

    def forward(self, outputs: dict, target: torch.Tensor, supervised: torch.Tensor,
                modality_ids: torch.Tensor, domain_ids: torch.Tensor):
        count = supervised.sum().clamp(min=1)

        def segmentation(logits):
            bce, tversky = per_task_losses(logits, target, fixed_alpha=self.fixed_alpha)
            per = self.w.bce * bce + self.w.tversky * tversky
            return torch.where(supervised, per, torch.zeros_like(per)).sum() / count

        seg = segmentation(outputs["logits"])
        parts = {"segmentation": seg.detach()}
        total = seg
        if "first_logits" in outputs:  # CateNorm's supervised first pass (CateNorm-style: the two
            first = segmentation(outputs["first_logits"])  # losses are summed into one step, where
            total = total + first                          # the reference takes two optimizer steps)
            parts["first_pass"] = first.detach()
        if "modality_logits" in outputs and self.w.modality:
            mod = F.cross_entropy(outputs["modality_logits"].float(), modality_ids)
            total = total + self.w.modality * mod
            parts["modality"] = mod.detach()
        if "domain_logits" in outputs and self.w.domain:
            known = domain_ids >= 0
            if bool(known.any()):
                dom = F.cross_entropy(outputs["domain_logits"].float()[known], domain_ids[known])
                total = total + self.w.domain * dom
                parts["domain"] = dom.detach()
        return total, parts
