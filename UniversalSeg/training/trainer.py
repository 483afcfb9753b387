"""The trainer: one universal model on many partially labelled datasets, resumable bit-exactly.

    run_training(catalog_path, model_config, train_config, out_dir, resume=False)

Per step: a batch of patches (datasets mixed by their catalog weights; each sample carries its
dataset's tasks, modality and domain) -> forward under autocast (bf16 on CUDA; on CPU when asked)
-> partial-label loss -> backward -> gradient clipping -> AdamW step -> warm-up + poly LR ->
EMA update (``AveragedModel`` with a warm-up, training/ema.py). Every ``validate_every`` epochs the EMA
model is evaluated on WHOLE validation volumes (sliding window): Dice per dataset x task.

Output folder::

    RUN/checkpoints/last.pt, best.pt   atomic; model, optimizer, scheduler, EMA, sampler position,
                                       RNG states, configs (torch.load(weights_only=True) safe)
    RUN/tensorboard/                   loss, learning rate, Dice per dataset x task
    RUN/train.log                      human-readable log
    RUN/validation.json                latest Dice table (and every case's scores)
    RUN/validation-history.jsonl       one line per validation: the learning curve
    RUN/model/                         the model package (EMA weights) written at the end

``resume=True`` continues from ``last.pt``: the same weights as an uninterrupted run of the same
steps (the sampler plan and every augmentation are functions of the seed and the position). On
CPU that also needs a fixed thread count (``UNIVERSALSEG_THREADS`` or ``OMP_NUM_THREADS``): by
default the thread governor follows the free cores, and another thread count can change the last
bits of a reduction (on GPUs the governor is off).
Under ``torchrun`` the model is wrapped in DistributedDataParallel, each rank reads its own shard
of the sampling plan, and rank 0 alone validates, logs and writes files.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..cpu_threads import ThreadGovernor
from ..data.catalog import Catalog, check_files, load_catalog
from ..data.dataset import AugmentedPatches, PreprocessedCases, case_records, collate_patches
from ..data.sampler import DatasetWeightedSampler
from ..errors import InputError
from ..file_modes import atomic_write
from ..model_package import save_package
from ..networks import ModelConfig, SegContext, UniversalSegNet, autocast, prepare_input, prepare_model, resolve_device
from ..networks.growable_table import GrowableTable
from .checkpoint import CheckpointError, load_checkpoint, save_atomic
from .click_simulation import refinement_loss
from .config import TrainConfig, TrainConfigError
from .distributed import DistInfo, barrier, init_distributed, shutdown
from .ema import weight_average
from .evaluation import evaluate_cases, format_dice_table
from .finetune_start import FineTuneStart, anchor_penalty, starting_network
from .finetune_start import provenance as finetune_provenance
from .losses import PartialLabelLoss

__all__ = ["BEHAVIOUR_BEFORE_SETTING", "RESUMABLE_CHANGES", "Trainer", "changed_settings", "fit_config_to_catalog",
           "lr_factor", "parameter_groups", "run_training", "training_precision"]

log = logging.getLogger("UniversalSeg.train")


def fit_config_to_catalog(cfg: ModelConfig, catalog: Catalog) -> ModelConfig:
    """The network's tasks, modalities and domains are the catalog's (global ids)."""
    return cfg.replace(tasks=catalog.task_names, modalities=catalog.modality_names,
                       domains=catalog.domain_names)


def training_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"  # bf16 on CPU only when asked: it is fast with AMX but changes numerics
    if requested == "fp16" and device.type != "cuda":
        raise InputError("fp16 training needs a CUDA GPU; use bf16 or fp32 on CPU")
    return requested


def parameter_groups(model: torch.nn.Module, weight_decay: float, lr: float, stage_lr_scale: float = 1.0):
    """Weight decay on convolution / linear weights only; never on norms, biases or prior tables.
    ``stage_lr_scale`` != 1: the click stage's parameters (``prompt.``) in two groups of their own
    at ``lr * stage_lr_scale`` (with 1 the two groups of before, so older checkpoints resume)."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, GrowableTable):
            no_decay |= {id(p) for p in module.parameters()}
    stage = {id(p) for n, p in model.named_parameters() if n.startswith("prompt.")} \
        if stage_lr_scale != 1 else set()
    groups = {(decays, staged): [] for decays in (True, False) for staged in (False, True)}
    for p in model.parameters():
        if p.requires_grad:
            groups[(p.ndim >= 2 and id(p) not in no_decay, id(p) in stage)].append(p)
    out = [{"params": groups[(True, False)], "weight_decay": weight_decay, "lr": lr},
           {"params": groups[(False, False)], "weight_decay": 0.0, "lr": lr}]
    if stage:
        out += [{"params": groups[(True, True)], "weight_decay": weight_decay, "lr": lr * stage_lr_scale},
                {"params": groups[(False, True)], "weight_decay": 0.0, "lr": lr * stage_lr_scale}]
    return out


def lr_factor(step: int, warmup: int, total: int, power: float) -> float:
    """Linear warm-up to 1, then polynomial decay to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1 - progress) ** power


class Trainer:
    def __init__(self, catalog_path: str | Path | Catalog, model_config: Optional[ModelConfig], cfg: TrainConfig,
                 out_dir: str | Path, device: str = "auto", progress: bool = True,
                 start: Optional[FineTuneStart] = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist: DistInfo = init_distributed(resolve_device(device))
        self.device = self.dist.device
        # CPU threads follow the cores other programs leave free (spinning OpenMP threads on a
        # shared core made a step 3x slower); GPUs need no governor
        self.threads = ThreadGovernor(enabled=None if self.device.type == "cpu" else False)
        self.precision = training_precision(cfg.precision, self.device)
        self.progress = progress and self.dist.is_main
        self.catalog = catalog_path if isinstance(catalog_path, Catalog) else load_catalog(catalog_path)
        self.catalog_path = Path(self.catalog.path or catalog_path)
        self.start = start
        # a setting error before the files are read (which can take minutes); fine-tuning also
        # knows its parent's modalities
        known = {*self.catalog.modalities, *(start.package.modalities if start is not None else ())}
        unknown = [m for m in cfg.augmentation.remap_modalities if m not in known]
        if unknown:
            raise TrainConfigError(f"augmentation.remap_modalities: unknown modality {unknown[0]!r}; "
                                   f"known: {', '.join(sorted(known))}")
        if self.dist.is_main:
            check_files(self.catalog, progress=self.progress)  # every bad file before training
        barrier(self.dist)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        if start is None:
            self.model_config = fit_config_to_catalog(model_config, self.catalog)
            if cfg.clicks:
                self.model_config = self.model_config.with_click_stage()
            net = UniversalSegNet(self.model_config)
        else:  # fine-tuning: the parent's network and weights (grown for new tasks / modalities)
            net = starting_network(start, self.catalog)
            self.model_config = net.config
            self.catalog.modalities = {**self.catalog.modalities, **start.package.modalities}
        self.net = prepare_model(net, self.device)
        self.reference = ({k: v.detach().clone() for k, v in self.net.named_parameters() if v.requires_grad}
                          if start is not None and start.anchor else None)
        self.model = (DistributedDataParallel(self.net, device_ids=[self.device.index]
                                              if self.device.type == "cuda" else None)
                      if self.dist.enabled else self.net)
        self.ema = weight_average(self.net, cfg.ema_decay, cfg.ema_warmup)
        # fused: one kernel per parameter tensor instead of five (the small preset's 408 tensors
        # took 4.2x longer through the for-loop implementation on a busy 2-core Xeon)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.net, cfg.weight_decay, cfg.lr,
                                                            cfg.click_lr_scale), lr=cfg.lr,
                                           fused=self.device.type in ("cpu", "cuda"))
        warmup = int(round(cfg.warmup_epochs * cfg.iterations_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, cfg.total_steps, cfg.poly_power))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.loss_fn = PartialLabelLoss(kind=cfg.loss)
        if cfg.clicks and self.net.prompt is None:
            raise InputError("clicks: this network has no click-refinement stage (prompt.enabled "
                             "is false in the model it starts from)")
        stage = [p for n, p in self.net.named_parameters() if n.startswith("prompt.")]
        self.clip_groups = [[p for n, p in self.net.named_parameters() if not n.startswith("prompt.")]]
        if stage:
            self.clip_groups.append(stage)
        self._build_data()
        self.step, self.best = 0, -1.0

    # ------------------------------------------------------------------ data
    def _build_data(self):
        c, m = self.catalog, self.model_config
        train = case_records(c, "train", m.tasks, m.modalities, m.domains)
        self.val_records = case_records(c, "validation", m.tasks, m.modalities, m.domains)
        self.train_cases = PreprocessedCases(train, self.cfg.spacing, c.modalities,
                                             self.cfg.cache_rate, progress=self.progress)
        patches = AugmentedPatches(self.train_cases, self.cfg.patch_size, self.cfg.augmentation,
                                   c.modalities, self.cfg.spacing)
        dataset_of_case = [c.domain_names.index(r["dataset"]) for r in train]
        per_epoch = self.cfg.iterations_per_epoch * self.cfg.batch_size * self.dist.world_size
        self.sampler = DatasetWeightedSampler(dataset_of_case, [d.weight for d in c.datasets],
                                              per_epoch, self.cfg.seed, self.dist.rank,
                                              self.dist.world_size, by=self.cfg.sampling,
                                              batches=self.cfg.batches, batch_size=self.cfg.batch_size)
        # a generator of its own: each pass over the loader draws its workers' base seed, which a
        # resumed run does once more; from the global one, it made the checkpoints' random state
        # differ from an uninterrupted run's (the items' randomness comes from their own seeds)
        self.loader = DataLoader(patches, batch_size=self.cfg.batch_size, sampler=self.sampler,
                                 collate_fn=collate_patches, num_workers=self.cfg.num_workers,
                                 drop_last=True, pin_memory=self.device.type == "cuda",
                                 persistent_workers=False, generator=torch.Generator().manual_seed(self.cfg.seed))
        self.val_cases = None

    def _validation_cases(self):
        if self.val_cases is None and self.val_records:
            self.val_cases = PreprocessedCases(self.val_records, self.cfg.spacing,
                                               self.catalog.modalities, progress=False)
        return self.val_cases

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {
            "format": "universalseg-checkpoint", "version": 1, "step": self.step, "best": self.best,
            "model": self.net.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
            "model_config": self.model_config.to_dict(), "train_config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "finetune": self.start.identity if self.start is not None else None,
        }

    def save(self, name: str = "last.pt") -> None:
        if self.dist.is_main:
            save_atomic(self.state(), self.out / "checkpoints" / name)

    def restore(self, path: Path, allow_changes: bool = False) -> None:
        best = path.parent / "best.pt"
        ckpt = load_checkpoint(path, remedy="; put back an intact copy, " + (
            f"or copy {best} over it to go on from the best validation's step, " if best.is_file() else "")
            + "or move it away to start the run again from step 0")
        if _config_of(ckpt) != self.model_config:
            raise CheckpointError(f"{path} was written for another network or catalog (tasks, "
                                  "modalities or architecture differ); use a new --out folder")
        now = self.start.identity if self.start is not None else None
        if ckpt.get("finetune") != now:
            raise CheckpointError(f"--resume: the run in {self.out} fine-tunes "
                                  f"{_describe(ckpt.get('finetune'))}, not {_describe(now)}; repeat its "
                                  "--model and --mode, or use a new --out folder")
        changed = changed_settings(ckpt["train_config"], self.cfg.to_dict())
        if changed and not allow_changes:
            raise CheckpointError(f"--resume: the run in {self.out} was started with other settings ("
                                  f"{'; '.join(changed)}); repeat the original options, or pass "
                                  "--allow-changes to continue with the new ones")
        for change in changed:
            log.warning("resuming with a changed setting (--allow-changes): %s", change)
        if ckpt["world_size"] != self.dist.world_size or \
                ckpt["train_config"]["batch_size"] != self.cfg.batch_size:
            log.warning("resuming with a different number of processes or batch size: the run "
                        "continues correctly but is no longer bit-identical to an uninterrupted one")
        self.net.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng_cpu"])
        self.step, self.best = int(ckpt["step"]), float(ckpt["best"])

    # ------------------------------------------------------------------ loop
    def train_step(self, batch) -> dict:
        image = prepare_input(batch["image"], self.device)
        target = batch["target"].to(self.device, non_blocking=True)
        ctx = SegContext(batch["task_ids"], batch["modality_ids"], batch["domain_ids"]).to(self.device)
        with autocast(self.device, self.precision):
            outputs = self.model(image, ctx)
        loss, parts = self.loss_fn(outputs, target, ctx.task_mask, ctx.modality_ids, ctx.domain_ids)
        if self.reference is not None:  # fine-tuning's L2-SP anchor to the parent's weights
            anchor = anchor_penalty(self.net, self.reference)
            loss = loss + self.start.anchor * anchor
            parts["anchor"] = anchor.detach()
        clicks = None
        if self.cfg.clicks and self.step % self.cfg.click_every == 0:  # the click-refinement stage,
            # on detached features (click_simulation); on every ``click_every``-th step
            rng = np.random.default_rng([self.cfg.seed, self.dist.rank, self.step])
            with autocast(self.device, self.precision):
                clicks = refinement_loss(self.net, outputs["features"], outputs["logits"], target,
                                         ctx.task_mask, ctx.task_ids, self.cfg.clicks, rng,
                                         boundary_share=self.cfg.click_boundary_share)
        if clicks is not None:
            loss = loss + clicks
            parts["clicks"] = clicks.detach()
        elif self.cfg.clicks and self.dist.enabled:
            # DDP reduces every parameter's gradient in every step: on a step without the stage's
            # loss its gradients are zeros (a single process leaves them unset: AdamW skips the stage)
            loss = loss + 0.0 * sum(p.sum() for p in self.clip_groups[-1])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {self.step}: the loss is {loss.item()}; lower the "
                                     "learning rate or check the images for extreme values")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            # the stage's gradients are clipped on their own: they must not scale the others'
            for group in self.clip_groups:
                torch.nn.utils.clip_grad_norm_(group, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update_parameters(self.net)
        self.step += 1
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    def validate(self) -> Optional[dict]:
        cases = self._validation_cases()
        if not cases:
            return None
        result = evaluate_cases(self.ema.module, cases, self.cfg.patch_size, self.device,
                                self.cfg.overlap, self.precision if self.device.type == "cuda" else "fp32",
                                progress=self.progress)
        (self.out / "validation.json").write_text(json.dumps({"step": self.step, **result}, indent=2))
        with open(self.out / "validation-history.jsonl", "a") as history:  # the learning curve
            history.write(json.dumps({"step": self.step, "mean_dice": result["mean_dice"],
                                      "dice": result["dice"]}) + "\n")
        return result

    def fit(self, resume: bool = False, max_steps: Optional[int] = None, allow_changes: bool = False) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "checkpoints" / "last.pt"
        if self.dist.is_main:  # a run killed while writing leaves a temporary file: drop it
            for stale in (self.out / "checkpoints").glob(".*.tmp"):
                stale.unlink()
        if resume and last.exists():
            self.restore(last, allow_changes)
            log.info("resumed from %s at step %d", last, self.step)
        elif last.exists() and not resume:
            raise CheckpointError(f"{self.out} already holds a run (checkpoints/last.pt); pass "
                                  "--resume to continue it or choose another --out")
        elif resume:  # as nnU-Net's --c: a requeued job may always pass --resume
            log.warning("--resume: %s holds no checkpoints/last.pt yet; starting a new run", self.out)
        else:  # train.log marks the run as started before anything else is written
            log.info("starting a new run in %s", self.out)
        if self.dist.is_main:
            self._forget_validations_after(self.step)
        writer = self._writer()
        total = self.cfg.total_steps if max_steps is None else min(max_steps, self.cfg.total_steps)
        ipe = self.cfg.iterations_per_epoch
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.step, desc="training", unit="it", dynamic_ncols=True)
        result, t0 = None, time.time()
        self.model.train()
        while self.step < total:
            epoch, offset = divmod(self.step, ipe)
            self.sampler.set_epoch(epoch)
            self.sampler.skip(offset * self.cfg.batch_size)
            for batch in self.loader:
                metrics = self.train_step(batch)
                self.threads.update()
                lr = self.optimizer.param_groups[0]["lr"]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{lr:.2e}")
                if writer is not None:
                    for k, v in metrics.items():
                        writer.add_scalar(f"train/{k}", v, self.step)
                    writer.add_scalar("train/lr", lr, self.step)
                end_of_epoch = self.step % ipe == 0
                if end_of_epoch or self.step >= total:
                    if self.dist.is_main and (self.step // ipe) % self.cfg.validate_every == 0 \
                            or self.step >= total:
                        result = self._validate_and_keep_best(writer)
                    barrier(self.dist)
                    self.save()
                    break
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save()
                if self.step >= total:
                    break
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        log.info("trained %d steps in %.0f s", self.step, time.time() - t0)
        return result or {}

    def _validate_and_keep_best(self, writer):
        if not self.dist.is_main:
            return None
        result = self.validate()
        if result is None:
            return None
        log.info("step %d validation (EMA weights, whole volumes):\n%s", self.step,
                 format_dice_table(result))
        if writer is not None:
            for k, v in result["dice"].items():
                writer.add_scalar(f"val_dice/{k}", v, self.step)
            writer.add_scalar("val_dice/mean", result["mean_dice"], self.step)
        if result["mean_dice"] > self.best:
            self.best = result["mean_dice"]
            self.save("best.pt")
        return result

    def _forget_validations_after(self, step: int) -> None:
        """A run killed after a validation but before the checkpoint that follows it validates
        that step again when resumed: drop the learning curve's lines after the step it resumes
        from (all of them for a run that starts anew), so that it holds one line per validation."""
        history = self.out / "validation-history.jsonl"
        if not history.is_file():
            return
        lines = history.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if kept != lines:
            atomic_write(history, lambda tmp: tmp.write_text("".join(kept)))

    def _writer(self):
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            log.info("tensorboard is not installed; no TensorBoard logs")
            return None
        # purge_step: a resumed (or restarted) run hides what the killed one logged after its step
        restarted = self.step or (self.out / "tensorboard").is_dir()
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step if restarted else None)

    def export(self, name: str = "model") -> Optional[Path]:
        """Write the model package (EMA weights) for inference; rank 0 only."""
        if not self.dist.is_main:
            return None
        net = UniversalSegNet(self.model_config)
        net.load_state_dict(self.ema.module.state_dict())
        provenance = {"catalog": str(self.catalog_path), "datasets": self.catalog.domain_names,
                      "steps": self.step, "seed": self.cfg.seed, "training": self.cfg.to_dict()}
        val = self.out / "validation.json"
        if val.exists():
            provenance["validation"] = json.loads(val.read_text())
        known = {t.name: t for t in self.start.package.tasks} if self.start else {}
        tasks = [known[t] if t in known else self.catalog.tasks[t] for t in self.model_config.tasks]
        if self.start is not None:
            provenance["finetune"] = finetune_provenance(self.start, self.catalog)
        return save_package(self.out / name, net, tasks, self.catalog.modalities, self.cfg.spacing,
                            self.cfg.patch_size, provenance)

    def close(self):
        shutdown(self.dist)


# Settings whose change does not change what is learnt (speed, I/O, bookkeeping); the batch size
# and the number of processes are checked separately (a warning: resume stays correct).
RESUMABLE_CHANGES = {"num_workers", "checkpoint_every", "validate_every", "cache_rate", "batch_size"}


# settings whose default differs from what the code did before the setting existed
BEHAVIOUR_BEFORE_SETTING = {"ema_warmup": False}


def changed_settings(before: dict, now: dict) -> list[str]:
    """'name: old -> new' for every training setting that differs and matters for the result."""
    before, now = json.loads(json.dumps(before)), json.loads(json.dumps(now))  # tuples == lists
    # settings added since the run began had their defaults, or the behaviour before they existed
    defaults = {**TrainConfig().to_dict(), **BEHAVIOUR_BEFORE_SETTING}
    before = {**defaults, **before, "augmentation": {**defaults["augmentation"], **before.get("augmentation", {})}}
    return [f"{k}: {before.get(k)} -> {now.get(k)}" for k in sorted(set(before) | set(now))
            if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)]


def _config_of(ckpt: dict) -> Optional[ModelConfig]:
    """The checkpoint's network (settings added since it was written take their defaults)."""
    try:
        return ModelConfig.from_dict(ckpt["model_config"])
    except InputError:
        return None


def _describe(identity: Optional[dict]) -> str:
    if not identity:
        return "nothing (a training from scratch)"
    return f"{identity['model']} (SHA-256 {identity['sha256'][:12]}) in mode {identity['mode']}"


def _step_of(line: str) -> Optional[int]:
    """The step of a line of ``validation-history.jsonl``; None for a line that is not one."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def run_training(catalog_path, model_config: Optional[ModelConfig], cfg: TrainConfig, out_dir, resume=False,
                 device="auto", max_steps: Optional[int] = None, progress=True, allow_changes: bool = False,
                 start: Optional[FineTuneStart] = None) -> dict:
    """Train (or fine-tune) one model on a catalog's datasets; see the module docstring.

    Args:
        catalog_path: the dataset catalog (a path, or a loaded ``Catalog``).
        model_config: the network to train; its tasks, modalities and domains are set from the
            catalog (and a click stage added when ``cfg.clicks``). Pass None when fine-tuning
            (``start``): the run starts from the parent's network.
        cfg: the training settings.
        out_dir: the run folder (checkpoints, logs, validation tables, the model package).
        resume: continue from ``out_dir/checkpoints/last.pt`` when there is one.
        device: "auto", "cpu", "cuda" or "cuda:N" (``networks.resolve_device``).
        max_steps: stop at this step (a partial run, to resume later); None: at ``cfg.total_steps``.
        progress: draw a progress bar.
        allow_changes: on resume, accept settings that differ from the checkpoint's.
        start: fine-tune this parent package in its mode (``finetune_start.FineTuneStart``).

    Returns:
        ``{"steps": steps done, "validation": the last validation's result, "package": the model
        package's folder, or None when the run stopped before its last step}``.
    """
    trainer = Trainer(catalog_path, model_config, cfg, out_dir, device, progress, start=start)
    handler = _file_log(Path(out_dir), trainer.dist)
    try:
        result = trainer.fit(resume=resume, max_steps=max_steps, allow_changes=allow_changes)
        package = trainer.export() if trainer.step >= cfg.total_steps else None
        return {"steps": trainer.step, "validation": result, "package": str(package) if package else None}
    finally:
        trainer.close()
        if handler is not None:  # one log per run, also when several runs share a process
            logging.getLogger("UniversalSeg").removeHandler(handler)
            handler.close()


def _file_log(out: Path, dist: DistInfo) -> Optional[logging.Handler]:
    if not dist.is_main:
        return None
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log", delay=True)  # no empty log for a refused run
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("UniversalSeg").addHandler(handler)
    logging.getLogger("UniversalSeg").setLevel(logging.INFO)
    return handler
