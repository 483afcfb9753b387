"""What a fine-tuning run starts from, and what the trainer needs of it.

``FineTuneStart`` names the parent package and the mode (``adapt``, ``add-tasks``, ``clicks``:
``training/finetune.py`` explains them); ``starting_network`` builds the parent's network grown
for the catalog's new tasks or modalities and frozen where the mode says; ``anchor_penalty`` is
the L2-SP pull towards the parent's weights; ``provenance`` is what the fine-tuned package
records about its parent. ``finetune_config`` is the fine-tuning recipe, written once: the
parent's training settings with the changes every fine-tuning makes (``STEPS``,
``STEPS_PER_EPOCH``, ``WARMUP_EPOCHS``, ``EMA_DECAY``, ``CLICKS``; ``default_anchor``). The
trainer (``run_training(..., start=FineTuneStart(...))``), the fine-tuning entry points
(``training/finetune.py``) and the brain model's recipe (``zoo/brain.py``) build on this module.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from ..data.catalog import Catalog
from ..errors import InputError
from ..networks import ModelConfig, UniversalSegNet
from .config import TrainConfig, TrainConfigError

__all__ = ["CLICKS", "EMA_DECAY", "MODES", "REPLAY_SHARE", "STEPS", "STEPS_PER_EPOCH", "WARMUP_EPOCHS",
           "FineTuneStart", "anchor_penalty", "case_counts", "check_catalog", "default_anchor", "finetune_config",
           "parent_train_config", "provenance", "starting_network"]

MODES = ("adapt", "add-tasks", "clicks")

# The fine-tuning recipe: what every fine-tuning changes in the parent's training settings.
STEPS = 150            # training steps
STEPS_PER_EPOCH = 50   # an epoch of 50 steps: the warm-up is WARMUP_EPOCHS of it
WARMUP_EPOCHS = 0.2
# EMA decay 0.9: with the parent's 0.99 a 150-step fine-tuning exports weights still 22 % the
# parent's (0.99^150); measured on the demo model: left-out kidney 0.00 -> 0.11 (0.99) vs 0.60 (0.9)
EMA_DECAY = 0.9
CLICKS = 5             # clicks mode: 1..CLICKS simulated clicks per step
REPLAY_SHARE = 0.75    # share of the samples drawn from the replayed catalog (0.5 lost 0.05 Dice)
ANCHOR = 0.01          # L2-SP weight in adapt mode without replay


@dataclass
class FineTuneStart:
    """What a fine-tuning run starts from: the parent package and how to change it."""
    package: "object"  # model_package.ModelPackage
    package_path: Path
    mode: str = "adapt"
    anchor: float = 0.0  # L2-SP weight (adapt)
    name: str = ""       # the new version's name (default: <parent>-finetuned)
    user_datasets: tuple = ()  # the user's datasets (the rest of the catalog is replay)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"--mode {self.mode!r}: one of {', '.join(MODES)}")
        if not (self.anchor >= 0 and self.anchor < float("inf")):
            raise InputError(f"--anchor {self.anchor}: a number >= 0")

    @property
    def parent(self) -> dict:
        meta = self.package.meta.get("provenance", {})
        path = Path(self.package_path)
        return {"model_id": meta.get("model_id", path.stem), "version": meta.get("version", ""),
                "sha256": self.digest, "path": str(path)}

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the parent's weights (a zip and its unpacked folder give the same)."""
        h = hashlib.sha256()
        for name in sorted(self.package.state_dict):
            h.update(name.encode())
            h.update(self.package.state_dict[name].float().numpy().tobytes())
        return h.hexdigest()

    @property
    def identity(self) -> dict:
        """What a resumed run must fine-tune again (kept in its checkpoints)."""
        return {"model": self.parent["model_id"], "sha256": self.digest, "mode": self.mode}


def check_catalog(start: FineTuneStart, catalog: Catalog) -> tuple[list[str], list[str]]:
    """The catalog's tasks and modalities the package lacks; refuses what the mode cannot do."""
    cfg: ModelConfig = start.package.config
    new_tasks = [t for t in catalog.task_names if t not in cfg.tasks]
    new_modalities = [m for m in catalog.modality_names if m not in cfg.modalities]
    if start.mode == "adapt" and new_tasks:
        raise InputError(f"--mode adapt fine-tunes the model's own tasks {list(cfg.tasks)}; the catalog "
                         f"adds {new_tasks}: use --mode add-tasks to learn new structures")
    if start.mode == "clicks" and (new_tasks or new_modalities):
        raise InputError(f"--mode clicks trains the click stage for the model's own tasks and modalities; "
                         f"the catalog adds {new_tasks + new_modalities}: leave those out")
    if start.mode == "add-tasks" and not new_tasks:
        raise InputError(f"--mode add-tasks: every task of the catalog ({catalog.task_names}) is already "
                         "one of the model's; use --mode adapt to improve them")
    for m in catalog.modality_names:
        if m in start.package.modalities and catalog.modalities[m] != start.package.modalities[m]:
            raise InputError(f"modality {m}: the catalog's intensity policy differs from the model's "
                             f"({start.package.modalities[m]}); remove it from the catalog's 'modalities'")
    return new_tasks, new_modalities


def starting_network(start: FineTuneStart, catalog: Catalog) -> UniversalSegNet:
    """The parent's network with its weights, grown for the catalog's new tasks / modalities
    (frozen except the new rows in ``add-tasks``)."""
    new_tasks, new_modalities = check_catalog(start, catalog)
    if start.mode == "clicks":
        config = start.package.config.with_click_stage()
        net = UniversalSegNet(config)
        missing, unexpected = net.load_state_dict(start.package.state_dict, strict=False)
        if unexpected or any(not k.startswith("prompt.") for k in missing):
            raise InputError(f"the package's weights do not fit its network ({(missing + unexpected)[:3]})")
        net.requires_grad_(False)
        net.prompt.requires_grad_(True)
        net._frozen_for_increment = True  # batch-norm statistics of the frozen layers stay as they are
        return net
    net = UniversalSegNet(start.package.config)
    net.load_state_dict(start.package.state_dict)
    freeze = start.mode == "add-tasks"
    if new_tasks:
        net.add_tasks(new_tasks, freeze=freeze)
    if new_modalities:
        net.add_modalities(new_modalities, freeze=freeze)
    return net


def anchor_penalty(net: torch.nn.Module, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-SP: sum over the parent's trainable weights of (w - w_parent)^2 (new rows: no anchor)."""
    total = None
    for name, p in net.named_parameters():
        ref = reference.get(name)
        if not p.requires_grad or ref is None or ref.shape != p.shape:
            continue
        term = (p - ref).pow(2).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def case_counts(catalog: Catalog) -> dict[str, int]:
    """Training cases per task (what the panel shows beside "Fine-tune")."""
    counts: dict[str, int] = {}
    for ds in catalog.datasets:
        n = len(ds.splits.get("train", [])) + len(ds.splits.get("validation", []))
        for t in ds.tasks:
            counts[t] = counts.get(t, 0) + n
    return counts


def provenance(start: FineTuneStart, catalog: Catalog) -> dict:
    import datetime
    mine = start.user_datasets or catalog.domain_names
    user = dataclasses.replace(catalog, datasets=[d for d in catalog.datasets if d.name in mine])
    parent = start.parent
    return {"parent": parent, "mode": start.mode, "anchor": start.anchor,
            "name": start.name or f"{parent['model_id']}-finetuned",
            "finetuned": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cases": case_counts(user)}


def default_anchor(mode: str, replay: bool) -> float:
    """The L2-SP weight when none is given: ``ANCHOR`` in adapt mode without replay, else 0 (replay
    guards against forgetting on its own; add-tasks and clicks freeze every old weight)."""
    return ANCHOR if mode == "adapt" and not replay else 0.0


def parent_train_config(package) -> TrainConfig:
    """The training settings the package records (``provenance.training``); the defaults where it
    records none or ones this version cannot read."""
    try:
        return TrainConfig.from_dict(package.meta.get("provenance", {}).get("training") or {})
    except TrainConfigError:
        return TrainConfig()


def finetune_config(package, steps: int = STEPS, mode: str = "adapt", base: TrainConfig | None = None,
                    steps_per_epoch: int = STEPS_PER_EPOCH, clicks: int = CLICKS, **settings) -> TrainConfig:
    """The fine-tuning recipe: a run's training settings.

    Args:
        package: the parent ``ModelPackage``; its spacing and patch size always hold.
        steps: training steps, in epochs of ``steps_per_epoch`` (validated once, at the end).
        mode: ``adapt``, ``add-tasks`` or ``clicks``; only ``clicks`` trains with ``clicks``
            simulated clicks per step.
        base: the settings to change (default: the parent's, ``parent_train_config``).
        steps_per_epoch: the epoch's length; the warm-up is ``WARMUP_EPOCHS`` of an epoch.
        clicks: clicks mode: 1..N simulated clicks per step.
        **settings: other ``TrainConfig`` fields (``seed``, ``lr``, ``batch_size``, ...), applied
            last; None keeps the recipe's (or the base's) value.

    Returns:
        The ``TrainConfig``: ``base`` with the parent's grid, ``WARMUP_EPOCHS``, ``EMA_DECAY`` and
        ``settings``.
    """
    base = parent_train_config(package) if base is None else base
    epochs = max(1, steps // steps_per_epoch)
    recipe = {"spacing": list(package.spacing), "patch_size": list(package.patch_size), "epochs": epochs,
              "iterations_per_epoch": max(1, steps // epochs), "warmup_epochs": WARMUP_EPOCHS,
              "validate_every": epochs, "ema_decay": EMA_DECAY, "clicks": clicks if mode == "clicks" else None}
    recipe.update({k: v for k, v in settings.items() if v is not None})
    return base.replace(**recipe)
