"""Whole-volume evaluation: sliding-window prediction and a Dice table per dataset x task.

Validation runs on WHOLE preprocessed volumes (never crops around the label, which makes the
reference's numbers optimistic), with MONAI's ``sliding_window_inference`` (Gaussian weighting)
and MONAI's ``compute_dice`` (an empty prediction of an empty structure counts as 1). With a
surface tolerance, MONAI's normalized surface Dice (NSD) is reported beside Dice: for small
structures a one-voxel boundary error costs Dice a lot but NSD (within the tolerance) nothing.
Per-case scores come back too, so that two models can be compared case by case
(``training.statistics.paired_bootstrap``).
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Iterable, Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice, compute_surface_dice

from ..networks import SegContext, autocast

__all__ = ["dice", "dice_per_task", "evaluate_cases", "format_dice_table", "sliding_window_logits",
           "surface_dice_per_task"]


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


def dice(a, b) -> float:
    """Dice overlap of two masks: ``2 |A & B| / (|A| + |B|)``.

    Args:
        a, b: masks of the same shape, numpy arrays or SimpleITK images (compared voxel by voxel;
            for images, put them on one grid first); every nonzero voxel is in the structure.

    Returns:
        The Dice coefficient in [0, 1]; two empty masks agree: 1.0 (as ``dice_per_task``).
    """
    import numpy as np

    def voxels(mask) -> np.ndarray:
        if hasattr(mask, "GetPixelID"):  # a SimpleITK image
            import SimpleITK as sitk
            mask = sitk.GetArrayViewFromImage(mask)
        return np.asarray(mask) != 0

    x, y = voxels(a), voxels(b)
    if x.shape != y.shape:
        raise ValueError(f"dice: the masks differ in shape ({x.shape} and {y.shape})")
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(x, y).sum()) / total


def dice_per_task(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.0) -> list[float]:
    """logits [1, T, ...] vs binary target [1, T, ...] -> Dice per task."""
    pred = (logits > threshold).float()
    dice = compute_dice(pred, target.float(), include_background=True, ignore_empty=False)
    return dice[0].tolist()


def surface_dice_per_task(logits: torch.Tensor, target: torch.Tensor, spacing: Sequence[float],
                          tolerance_mm: float, threshold: float = 0.0) -> list[float]:
    """Normalized surface Dice per task (boundary voxels within ``tolerance_mm`` of the other
    boundary); an empty prediction of an empty structure counts as 1, of a present one as 0."""
    pred = (logits > threshold).float()
    target = target.float()
    with warnings.catch_warnings():  # "prediction ... is all 0": the empty cases are handled below
        warnings.simplefilter("ignore", UserWarning)
        nsd = compute_surface_dice(pred, target, [float(tolerance_mm)] * pred.shape[1], include_background=True,
                                   spacing=[float(s) for s in spacing])[0]
    out = []
    for k, value in enumerate(nsd.tolist()):
        if value != value:  # NaN: MONAI's answer when the reference is empty
            value = 1.0 if not bool(pred[0, k].any()) else 0.0
        out.append(float(value))
    return out


def evaluate_cases(model, cases: Iterable[dict], patch, device, overlap=0.5, precision="fp32",
                   progress=False, spacing: Sequence[float] | None = None,
                   nsd_tolerance_mm: float | None = None) -> dict:
    """Mean Dice (and NSD, given ``spacing`` and a tolerance) per dataset x task over preprocessed
    cases (dicts with image, target, ids), and every case's scores under "cases"."""
    scores, surface, per_case = defaultdict(list), defaultdict(list), []
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
        nsd = (surface_dice_per_task(logits, target, spacing, nsd_tolerance_mm)
               if nsd_tolerance_mm is not None and spacing is not None else [None] * len(case["task_names"]))
        for name, d, s in zip(case["task_names"], dice_per_task(logits, target), nsd):
            scores[(case["dataset"], name)].append(d)
            per_case.append({"case": case.get("case_id", ""), "dataset": case["dataset"], "task": name,
                             "dice": d, **({"nsd": s} if s is not None else {})})
            if s is not None:
                surface[(case["dataset"], name)].append(s)
    model.train(was_training)
    table = {f"{ds}/{task}": sum(v) / len(v) for (ds, task), v in sorted(scores.items())}
    table_mean = sum(table.values()) / len(table) if table else 0.0
    result = {"dice": table, "mean_dice": table_mean, "cases": per_case}
    if surface:
        result["nsd"] = {f"{ds}/{task}": sum(v) / len(v) for (ds, task), v in sorted(surface.items())}
    return result


def format_dice_table(result: dict) -> str:
    nsd = result.get("nsd")
    rows = [f"{'dataset / task':44s} Dice" + ("    NSD" if nsd else "")]
    rows += [f"{k:44s} {v:.3f}" + (f"  {nsd[k]:.3f}" if nsd else "") for k, v in result["dice"].items()]
    rows.append(f"{'mean':44s} {result['mean_dice']:.3f}"
                + (f"  {sum(nsd.values()) / len(nsd):.3f}" if nsd else ""))
    return "\n".join(rows)
