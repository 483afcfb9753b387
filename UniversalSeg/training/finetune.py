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
- ``clicks``: the click-refinement stage (``networks.prompt_stage``) is added (or, if the model
  has one, retrained) with EVERY other weight frozen: the automatic outputs stay bit-identical
  and the model refines with clicks afterwards (the shipped brain model gets its stage so).

The result is an ordinary run folder (checkpoints, resume, logs) whose package records its
parent (``provenance.parent``: id, version, SHA-256), the mode, the date and the cases per task.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import torch

from ..data.catalog import Catalog
from ..errors import InputError
from ..networks import ModelConfig, UniversalSegNet

MODES = ("adapt", "add-tasks", "clicks")


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


# ---------------------------------------------------------------------- before / after
def rotation_folds(catalog: Catalog, user_datasets, k: int = 3) -> list[tuple[Catalog, Catalog]]:
    """Held out by rotation: the user's cases (sorted by id) in ``min(k, n)`` folds; per fold the
    training catalog (the fold's cases removed from the user's datasets, replay untouched) and the
    held-out catalog (the fold's cases as "validation")."""
    mine = [(d.name, c) for d in catalog.datasets if d.name in user_datasets
            for c in d.splits.get("train", []) + d.splits.get("validation", [])]
    mine.sort(key=lambda item: (item[1].id, item[0]))
    k = min(k, len(mine))
    folds = []
    for f in range(k):
        held = {(name, c.id) for i, (name, c) in enumerate(mine) if i % k == f}
        train, test = [], []
        for d in catalog.datasets:
            if d.name not in user_datasets:
                train.append(d)
                continue
            cases = d.splits.get("train", []) + d.splits.get("validation", [])
            keep = [c for c in cases if (d.name, c.id) not in held]
            out = [c for c in cases if (d.name, c.id) in held]
            if keep:
                train.append(dataclasses.replace(d, splits={"train": keep, "validation": []}))
            if out:
                test.append(dataclasses.replace(d, splits={"train": [], "validation": out}))
        folds.append((dataclasses.replace(catalog, datasets=train), dataclasses.replace(catalog, datasets=test)))
    return folds


def heldout_dice(packages, heldout: Catalog, device) -> list[dict[str, list[float]]]:
    """Per package: Dice per task over the held-out cases (only the tasks it has). The cases are
    preprocessed once per distinct (tasks, modalities, spacing): adapt's parent and child share it."""
    from ..data.dataset import PreprocessedCases, case_records
    from .evaluation import evaluate_cases
    cached, results = {}, []
    for package in packages:
        cfg = package.config
        key = (tuple(cfg.tasks), tuple(cfg.modalities), tuple(cfg.domains), tuple(package.spacing))
        if key not in cached:
            sub = dataclasses.replace(heldout, datasets=[
                dataclasses.replace(d, label_map={t: v for t, v in d.label_map.items() if t in cfg.tasks})
                for d in heldout.datasets if any(t in cfg.tasks for t in d.label_map)])
            records = case_records(sub, "validation", cfg.tasks, cfg.modalities, cfg.domains)
            cached[key] = PreprocessedCases(records, package.spacing, {**heldout.modalities, **package.modalities}) \
                if records else None
        scores: dict[str, list[float]] = {}
        if cached[key] is not None:
            result = evaluate_cases(package.build(device), cached[key], package.patch_size, device)
            for row in result["cases"]:
                scores.setdefault(row["task"], []).append(float(row["dice"]))
        results.append(scores)
    return results


def before_after(start: FineTuneStart, catalog: Catalog, cfg, out: Path, device: str, progress: bool) -> dict:
    """The parent's and the fine-tuned model's Dice on the user's own cases, each case scored by
    a model fine-tuned WITHOUT it (rotation over up to 3 folds); written to OUT/before_after.json."""
    import json
    from ..model_package import load_package
    from .trainer import run_training
    folds = rotation_folds(catalog, start.user_datasets or catalog.domain_names)
    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    for f, (train, test) in enumerate(folds):
        fold_out = out / "folds" / f"fold{f}"
        if not (fold_out / "model" / "model.json").exists():  # an interrupted fold continues
            run_training(train, None, cfg, fold_out, resume=(fold_out / "checkpoints" / "last.pt").exists(),
                         device=device, progress=progress, start=start)
        scored = heldout_dice([start.package, load_package(fold_out / "model")], test, dev)
        for table, scores in zip((before, after), scored):
            for task, values in scores.items():
                table.setdefault(task, []).extend(values)
    tasks = sorted(set(before) | set(after))
    report = {"folds": len(folds), "cases": sum(len(d.splits["validation"]) for _, t in folds for d in t.datasets),
              "before": {t: float(sum(before[t]) / len(before[t])) if t in before else None for t in tasks},
              "after": {t: float(sum(after[t]) / len(after[t])) for t in tasks if t in after}}
    known = [t for t in tasks if report["before"].get(t) is not None and t in report["after"]]
    if known:
        report["mean_before"] = sum(report["before"][t] for t in known) / len(known)
        report["mean_after"] = sum(report["after"][t] for t in known) / len(known)
    report["summary"] = before_after_line(report)
    (out / "before_after.json").write_text(json.dumps(report, indent=2))
    return report


def before_after_line(report: dict) -> str:
    """One line for logs and the panel."""
    if "mean_before" not in report:
        new = ", ".join(f"{t} {v:.2f}" for t, v in report["after"].items())
        return f"Dice on your own cases (each held out, {report['folds']} folds): {new}"
    return (f"Dice on your own cases (each held out, {report['folds']} folds): before "
            f"{report['mean_before']:.2f}, after {report['mean_after']:.2f}")
