"""Simulated corrective clicks, for training the refinement stage and for the benchmark.

A user clicks where the mask is most clearly wrong: inside a missed region (a positive click) or
inside a false positive (a negative click). As in the interactive-segmentation literature
(RITM, Sofiiuk et al. 2022; DeepEdit's click simulation in MONAI Label), the click goes to the
error voxel farthest from the error's boundary (the patch edge counts as boundary); the larger
of the two errors (by that distance) decides the sign. Training draws the click anywhere in the
inner half of that error instead (users do not hit the exact centre); the benchmark uses the
centre (deterministic).

    click = next_click(pred, truth)               # ((i, j, k), True) or None when nothing is wrong
    loss = refinement_loss(net, features, logits, target, supervised, max_clicks, rng)
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from ..networks.prompt_stage import LOGIT_CLAMP, click_maps
from .losses import per_task_losses

Click = tuple[tuple[int, int, int], bool]


def next_click(pred: np.ndarray, truth: np.ndarray, rng: Optional[np.random.Generator] = None) -> Optional[Click]:
    """The next corrective click for boolean masks ``pred`` and ``truth`` (same shape); None when
    they agree. ``rng``: draw among the error's inner voxels (distance >= half the largest)."""
    best = None
    for error, positive in ((truth & ~pred, True), (pred & ~truth, False)):
        if not error.any():
            continue
        distance = distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1, 1:-1]
        peak = float(distance.max())
        if best is None or peak > best[0]:
            best = (peak, distance, positive)
    if best is None:
        return None
    peak, distance, positive = best
    if rng is None:
        voxel = np.unravel_index(int(np.argmax(distance)), distance.shape)
    else:
        inner = np.flatnonzero(distance >= max(1.0, 0.5 * peak))
        voxel = np.unravel_index(int(inner[rng.integers(len(inner))]), distance.shape)
    return tuple(int(v) for v in voxel), positive


def refinement_loss(net, features: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                    supervised: torch.Tensor, max_clicks: int, rng: np.random.Generator,
                    empty_share: float = 0.5) -> Optional[torch.Tensor]:
    """Per sample one supervised task, starting from the automatic mask or (``empty_share`` of the
    samples) from an empty one; 1..``max_clicks`` clicks simulated one after the other from
    the current errors (each refinement but the last without gradients, as at run time, where
    every click starts from the mask the previous ones left); soft Dice + BCE of the last
    refinement. The features and automatic logits are detached: this loss trains only the stage.
    None when no sample has a supervised task."""
    rows = []
    for b in range(logits.shape[0]):
        slots = torch.nonzero(supervised[b]).flatten().tolist()
        if slots:
            rows.append((b, slots[int(rng.integers(len(slots)))]))
    if not rows:
        return None
    index_b = torch.tensor([b for b, _ in rows], device=logits.device)
    index_t = torch.tensor([t for _, t in rows], device=logits.device)
    feats = features.detach()[index_b].float()
    current = logits.detach()[index_b, index_t][:, None].float()
    # half of the samples start from an EMPTY mask, as if the automatic pass had missed the whole
    # structure (on training data it rarely does; on a new site it may, e.g. the left-out
    # institution's kidney): the stage must also segment from clicks alone (RITM trains so too)
    missed = torch.from_numpy(rng.random(len(rows)) < empty_share).to(current.device)
    current = torch.where(missed[:, None, None, None, None], torch.full_like(current, -LOGIT_CLAMP), current)
    truth = target[index_b, index_t][:, None].float()
    truth_np = truth[:, 0].cpu().numpy() > 0.5
    clicks: list[list[Click]] = [[] for _ in rows]
    count = int(rng.integers(1, max_clicks + 1))
    sigma = net.prompt.sigma
    shape = current.shape[2:]
    out = current
    for step in range(count):
        pred = (current[:, 0] > 0).cpu().numpy()
        for i in range(len(rows)):
            click = next_click(pred[i], truth_np[i], rng)
            if click is not None:
                clicks[i].append(click)
        maps = [click_maps(shape, c, sigma, device=current.device) for c in clicks]
        positive = torch.cat([m[0] for m in maps])
        negative = torch.cat([m[1] for m in maps])
        if step + 1 < count:
            with torch.no_grad():
                current = net.refine(feats, current, positive, negative)
        else:
            out = net.refine(feats, current, positive, negative)
    bce, dice = per_task_losses(out, truth, fixed_alpha=0.5)
    return (bce + dice).mean()
