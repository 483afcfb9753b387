"""Fine-tuning a model package on the user's own (corrected) cases: the correction loop's engine.

    universalseg finetune --model M --catalog C --out RUN [--mode adapt|add-tasks]
                          [--replay CATALOG] [--resume]

Three modes, all starting from the package's weights and training only where the catalog's
datasets carry labels (partial labels, as in training):

- ``adapt``: every weight trains, on the model's own tasks (new modalities get new prior rows).
  Two guards against forgetting what the model knew: ``--replay CATALOG`` mixes the model's
  original data into every epoch (``replay_share`` of the samples), and an L2-SP anchor
  (Li et al. 2018: ``anchor * sum((w - w_parent)^2)``) pulls the weights towards the parent's.
- ``add-tasks``: new structures (task names the model does not have) are learnt with EVERY old
  weight frozen: only the new rows of the task tables train (``UniversalSegNet.add_tasks``), so
  the old tasks' outputs stay bit-identical.
- ``clicks``: the click-refinement stage (``networks.click_stage``) is added (or, if the model
  has one, retrained) with EVERY other weight frozen: the automatic outputs stay bit-identical
  and the model refines with clicks afterwards (the shipped brain model gets its stage so).

The result is an ordinary run folder (checkpoints, resume, logs) whose package records its
parent (``provenance.parent``: id, version, SHA-256), the mode, the date and the cases per task.
What a run starts from (``FineTuneStart``, ``starting_network``, the L2-SP ``anchor_penalty``)
and the recipe (``finetune_config``) are in ``finetune_start.py``, which the trainer uses too;
this module adds the replay mix (``merge_replay``), the before/after Dice on the user's own cases
(``before_after``) and the whole job (``run_finetune``, what ``universalseg finetune`` runs).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ..data.catalog import Catalog
from ..errors import InputError
from ..networks import resolve_device

# the start-up helpers live in finetune_start (the trainer needs them); kept importable from here
from .finetune_start import (  # noqa: F401
    CLICKS,
    MODES,
    REPLAY_SHARE,
    STEPS,
    FineTuneStart,
    anchor_penalty,
    case_counts,
    check_catalog,
    default_anchor,
    finetune_config,
    provenance,
    starting_network,
)
from .trainer import run_training

__all__ = ["FineTuneStart", "before_after", "before_after_line", "finetune_config", "heldout_dice", "merge_replay",
           "rotation_folds", "run_finetune"]


def run_finetune(model: str | Path, catalog: str | Path, out: str | Path, mode: str = "adapt", *,
                 replay: str | Path | None = None, replay_share: float = REPLAY_SHARE,
                 anchor: float | None = None, steps: int = STEPS, lr: float | None = None,
                 batch_size: int | None = None, name: str = "", seed: int = 0, clicks: int = CLICKS,
                 evaluate: str = "auto", resume: bool = False, device: str = "auto", num_workers: int = 0,
                 checkpoint_every: int = 50, progress: bool = True) -> dict:
    """Fine-tune a model package on the user's cases: what ``universalseg finetune`` runs.

    Args:
        model: a package (folder or .zip), a cached name or a catalog id.
        catalog: the user's cases (a dataset catalog).
        out: the run folder (checkpoints, logs, ``model``); ``resume`` continues the run in it.
        mode: ``adapt``, ``add-tasks`` or ``clicks`` (the module docstring).
        replay: the model's original catalog, mixed in at ``replay_share`` of the samples (adapt).
        anchor: the L2-SP weight (default: ``default_anchor``).
        steps, lr, batch_size, seed, clicks, num_workers, checkpoint_every: the run's settings
            (``finetune_config``; lr and batch_size default to the parent's).
        name: the new version's name (default ``<parent>-finetuned``).
        evaluate: ``auto`` (with 3 or more of the user's cases), ``rotation`` or ``none``: the
            before/after Dice, each case held out by rotation (``before_after``).
        device: ``auto``, ``cpu``, ``cuda`` ... (``networks.resolve_device``).
        progress: a progress bar.

    Returns:
        ``run_training``'s result (``package``: the new package's folder, ``steps``, ...), with
        ``before_after`` (the summary line) where it was evaluated.

    Raises:
        InputError: a bad setting, run folder, catalog or model, before anything trains.
    """
    import logging

    from ..data.catalog import load_catalog
    from ..model_download import resolve_model_path
    from ..model_package import load_package
    from .checkpoint import check_run_folder

    if steps < 1:
        raise InputError(f"--steps {steps}: must be at least 1")
    check_run_folder(out, resume)
    if mode in ("add-tasks", "clicks") and replay:
        raise InputError(f"--replay guards adapt against forgetting; {mode} freezes every old weight "
                         "and needs none")
    path = resolve_model_path(str(model), progress=progress)
    package = load_package(path)
    user = load_catalog(catalog)
    merged = merge_replay(user, load_catalog(replay) if replay else None, replay_share)
    anchor = anchor if anchor is not None else default_anchor(mode, bool(replay))
    start = FineTuneStart(package, path, mode, anchor, name, tuple(user.domain_names))
    cfg = finetune_config(package, steps, mode, clicks=clicks, lr=lr, seed=seed, batch_size=batch_size,
                          num_workers=num_workers, checkpoint_every=checkpoint_every)
    cases = sum(len(d.splits.get("train", [])) + len(d.splits.get("validation", [])) for d in user.datasets)
    if evaluate == "rotation" and cases < 2:
        raise InputError(f"--evaluate rotation needs at least 2 cases of your own; the catalog has {cases}")
    result = run_training(merged, None, cfg, out, resume=resume, device=device, progress=progress, start=start)
    automatic_changed = mode != "clicks"  # clicks: the automatic outputs are the parent's
    wanted = evaluate == "rotation" or (evaluate == "auto" and cases >= 3)
    if result["package"] and automatic_changed and wanted:
        report = before_after(start, merged, cfg, Path(out), device, progress)
        result["before_after"] = report["summary"]
        logging.getLogger("UniversalSeg.finetune").info(report["summary"])
    return result


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
    folds = rotation_folds(catalog, start.user_datasets or catalog.domain_names)
    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    dev = resolve_device(device)
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
