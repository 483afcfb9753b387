"""Whole-volume evaluation: sliding-window prediction and a Dice table per dataset x task.

Validation runs on WHOLE preprocessed volumes (never crops around the label, which makes the
reference's numbers optimistic), with MONAI's ``sliding_window_inference`` (Gaussian weighting)
and MONAI's ``compute_dice`` (an empty prediction of an empty structure counts as 1).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice

from ..networks import SegContext, autocast


@torch.no_grad()
def sliding_window_logits(model, image: torch.Tensor, task_ids: Sequence[int], modality_id: int,
                          domain_id: int, patch: Sequence[int], overlap: float = 0.5,
                          sw_batch_size: int = 2, precision: str = "fp32") -> torch.Tensor:
    """image [1, C, X, Y, Z] -> logits [1, T, X, Y, Z] (float32 on the image's device)."""
    device = image.device
    ids = torch.as_tensor(list(task_ids), dtype=torch.long, device=device)[None]

    def predictor(window):
        n = window.shape[0]
        ctx = SegContext(ids.expand(n, -1), torch.full((n,), modality_id, device=device),
                         torch.full((n,), domain_id, device=device))
        with autocast(device, precision):
            return model(window, ctx)["logits"].float()

    return sliding_window_inference(image, tuple(patch), sw_batch_size, predictor, overlap=overlap,
                                    mode="gaussian")


def dice_per_task(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.0) -> list[float]:
    """logits [1, T, ...] vs binary target [1, T, ...] -> Dice per task."""
    pred = (logits > threshold).float()
    dice = compute_dice(pred, target.float(), include_background=True, ignore_empty=False)
    return dice[0].tolist()


def evaluate_cases(model, cases: Iterable[dict], patch, device, overlap=0.5, precision="fp32",
                   progress=False) -> dict:
    """Mean Dice per dataset x task over preprocessed cases (dicts with image, target, ids)."""
    scores = defaultdict(list)
    items = list(cases)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="validating", unit="case", leave=False)
    was_training = model.training
    model.eval()
    for case in items:
        image = case["image"].as_tensor()[None].to(device) if hasattr(case["image"], "as_tensor") \
            else case["image"][None].to(device)
        logits = sliding_window_logits(model, image, case["task_ids"], case["modality_id"],
                                       case["domain_id"], patch, overlap, precision=precision)
        target = torch.as_tensor(case["target"])[None].to(device)
        for name, d in zip(case["task_names"], dice_per_task(logits, target)):
            scores[(case["dataset"], name)].append(d)
    model.train(was_training)
    table = {f"{ds}/{task}": sum(v) / len(v) for (ds, task), v in sorted(scores.items())}
    table_mean = sum(table.values()) / len(table) if table else 0.0
    return {"dice": table, "mean_dice": table_mean}


def format_dice_table(result: dict) -> str:
    rows = [f"{'dataset / task':44s} Dice"]
    rows += [f"{k:44s} {v:.3f}" for k, v in result["dice"].items()]
    rows.append(f"{'mean':44s} {result['mean_dice']:.3f}")
    return "\n".join(rows)
