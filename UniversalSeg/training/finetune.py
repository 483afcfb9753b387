"""Fine-tuning a model package on the user's own (corrected) cases: the correction loop's engine.

    universalseg finetune --model M --catalog C --out RUN [--mode adapt|add-tasks]
                          [--replay CATALOG] [--resume]

Two modes, both starting from the package's weights and training only where the catalog's
datasets carry labels (partial labels, as in training):

- ``adapt``: every weight trains, on the model's own tasks (new modalities get new prior rows).
  Two guards against forgetting what the model knew: ``--replay CATALOG`` mixes the model's
  original data into every epoch (``replay_share`` of the samples), and an L2-SP anchor
  (Li et al. 2018: ``anchor * sum((w - w_parent)^2)``) pulls the weights towards the parent's.
- ``add-tasks``: new structures (task names the model does not have) are learnt with EVERY old
  weight frozen: only the new rows of the task tables train (``UniversalSegNet.add_tasks``), so
  the old tasks' outputs stay bit-identical.

The result is an ordinary run folder (checkpoints, resume, logs) whose package records its
parent (``provenance.parent``: id, version, SHA-256), the mode, the date and the cases per task.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..data.catalog import Catalog
from ..errors import InputError
from ..networks import ModelConfig, UniversalSegNet

MODES = ("adapt", "add-tasks")


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

    @property
    def digest(self) -> str:
        """SHA-256 of the parent's weights (a zip and its unpacked folder give the same)."""
        if not hasattr(self, "_digest"):
            h = hashlib.sha256()
            for name in sorted(self.package.state_dict):
                h.update(name.encode())
                h.update(self.package.state_dict[name].float().numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest

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


def merge_replay(user: Catalog, replay: Optional[Catalog], share: float) -> Catalog:
    """The user's datasets plus the replayed ones, weighted so that the replayed datasets get
    ``share`` of the samples together (the user's keep their relative weights)."""
    if replay is None:
        return user
    if not 0 < share < 1:
        raise InputError(f"--replay-share {share}: a number between 0 and 1 (exclusive)")
    clash = sorted(set(user.domain_names) & set(replay.domain_names))
    if clash:
        raise InputError(f"datasets {clash} are in both --catalog and --replay: rename the user's dataset")
    for m in set(user.modalities) & set(replay.modalities):
        if user.modalities[m] != replay.modalities[m]:
            raise InputError(f"modality {m}: --catalog and --replay give different intensity policies")
    user_total = sum(d.weight for d in user.datasets)
    replay_total = sum(d.weight for d in replay.datasets)
    factor = share / (1 - share) * user_total / replay_total
    datasets = list(user.datasets) + [dataclasses.replace(d, weight=d.weight * factor) for d in replay.datasets]
    tasks = dict(replay.tasks)
    tasks.update({k: v for k, v in user.tasks.items() if k not in tasks})
    return Catalog(tasks, {**replay.modalities, **user.modalities}, datasets, user.path)
