"""Training settings (YAML/JSON or command-line flags), validated with errors that name the key."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from ..data.transforms import AugmentationConfig
from ..errors import InputError
from .losses import LOSSES

__all__ = ["TrainConfig", "TrainConfigError"]


class TrainConfigError(InputError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)  # model spacing, mm
    patch_size: tuple[int, int, int] = (128, 128, 128)
    batch_size: int = 2  # per process
    epochs: int = 100
    iterations_per_epoch: int = 250
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    poly_power: float = 0.9
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)) at update n (training/ema.py)
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; bf16 on CPU when asked (AMX)
    validate_every: int = 1  # epochs
    checkpoint_every: int = 50  # iterations (and at each epoch end)
    overlap: float = 0.5  # sliding-window overlap in validation
    seed: int = 0
    num_workers: int = 2
    cache_rate: float = 1.0
    sampling: str = "dataset"       # "case": datasets weighted by their number of cases too
    batches: str = "mixed"          # "distinct-sites", or "every-site" (MS-Net: every site in every step)
    loss: str = "adaptive-tversky"  # Hermes' region term; "dice": Tversky with alpha fixed at 0.5
    clicks: int = 0  # > 0: also train the click-refinement stage, 1..clicks simulated clicks per step
    click_boundary_share: float = 0.0  # of the stage's samples: start from the truth 1-2 voxels off
    click_every: int = 1  # the click stage trains on every N-th step (2: half its cost, half its updates)
    click_lr_scale: float = 1.0  # the click stage's learning rate, as a multiple of lr
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iterations_per_epoch

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise TrainConfigError("a training config must be a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise TrainConfigError(f"unknown training settings {sorted(unknown)}; known: {sorted(names)}")
        data = dict(data)
        aug = data.pop("augmentation", {})
        if isinstance(aug, str):
            try:
                aug = AugmentationConfig.preset(aug)
            except ValueError as exc:
                raise TrainConfigError(f"augmentation: {exc}") from None
        elif isinstance(aug, dict) and "preset" in aug:
            aug = dict(aug)
            try:
                base = AugmentationConfig.preset(aug.pop("preset"))
            except ValueError as exc:
                raise TrainConfigError(f"augmentation: {exc}") from None
            aug = {**dataclasses.asdict(base), **aug}
        if isinstance(aug, dict):
            aug_names = {f.name for f in dataclasses.fields(AugmentationConfig)}
            if set(aug) - aug_names:
                raise TrainConfigError(f"augmentation: unknown settings {sorted(set(aug) - aug_names)}")
            aug = AugmentationConfig(**aug)
        elif not isinstance(aug, AugmentationConfig):
            raise TrainConfigError(f"augmentation: a mapping of settings, got {aug!r}")
        for key in ("spacing", "patch_size"):
            if key in data:
                v = data[key]
                try:
                    v = [v] * 3 if isinstance(v, (int, float)) else list(v)
                    data[key] = tuple(float(x) for x in v) if key == "spacing" else tuple(
                        int(x) if isinstance(x, numbers.Integral) and not isinstance(x, bool) else x for x in v)
                except (TypeError, ValueError):
                    raise TrainConfigError(f"{key}: one or three numbers, got {v!r}") from None
        cfg = cls(augmentation=aug, **data)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path) -> "TrainConfig":
        path = Path(path)
        from ..structured_file import read_structured
        return cls.from_dict(read_structured(path, "training config", TrainConfigError) or {})

    def replace(self, **changes) -> "TrainConfig":
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        return TrainConfig.from_dict(d)

    def validate(self) -> None:
        """Every setting in its range; NaN and infinity fail every check (``math.isfinite`` first)."""
        from ..model_metadata import PATCH_RULE, SPACING_MM, patch_size_ok

        if len(self.spacing) != 3 or not all(_finite(s) and SPACING_MM[0] <= s <= SPACING_MM[1]
                                             for s in self.spacing):
            raise TrainConfigError(f"spacing: three numbers between {SPACING_MM[0]} and {SPACING_MM[1]} mm, "
                                   f"got {list(self.spacing)}")
        if not patch_size_ok(self.patch_size):  # the rule a package's patch size follows
            raise TrainConfigError(f"patch_size: {PATCH_RULE}, got {list(self.patch_size)}")
        for key in ("batch_size", "epochs", "iterations_per_epoch", "validate_every", "checkpoint_every",
                    "click_every"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TrainConfigError(f"{key}: a positive integer, got {v!r}")
        for key in ("num_workers", "seed", "clicks"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise TrainConfigError(f"{key}: a whole number >= 0, got {v!r}")
        if self.clicks > 20:
            raise TrainConfigError(f"clicks: at most 20 simulated clicks per step, got {self.clicks}")
        if not (_finite(self.click_boundary_share) and 0 <= self.click_boundary_share <= 0.5):
            raise TrainConfigError(f"click_boundary_share: a share between 0 and 0.5 (the other half of the "
                                   f"click stage's samples start empty), got {self.click_boundary_share!r}")
        if not (_finite(self.click_lr_scale) and 0 < self.click_lr_scale <= 10):
            raise TrainConfigError(f"click_lr_scale: a number above 0 and at most 10 (the click stage's "
                                   f"learning rate as a multiple of lr), got {self.click_lr_scale!r}")
        if self.sampling not in ("dataset", "case"):
            raise TrainConfigError(f"sampling: 'dataset' or 'case', got {self.sampling!r}")
        if self.batches not in ("mixed", "distinct-sites", "every-site"):
            raise TrainConfigError(f"batches: 'mixed', 'distinct-sites' or 'every-site', got {self.batches!r}")
        if self.loss not in LOSSES:
            raise TrainConfigError(f"loss: one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer != "adamw":
            raise TrainConfigError(f"optimizer: only 'adamw' is available, got {self.optimizer!r}")
        if not isinstance(self.ema_warmup, bool):
            raise TrainConfigError(f"ema_warmup: true or false, got {self.ema_warmup!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise TrainConfigError(f"precision: auto, fp32, bf16 or fp16, got {self.precision!r}")
        ranges = {"lr": (0, 10, False), "weight_decay": (0, 10, True), "grad_clip": (0, 1e6, True),
                  "warmup_epochs": (0, 1e6, True), "poly_power": (0, 100, False), "ema_decay": (0, 1, True),
                  "overlap": (0, 1, True), "cache_rate": (0, 1, False)}
        for key, (low, high, low_ok) in ranges.items():
            v = getattr(self, key)
            inside = _finite(v) and (v >= low if low_ok else v > low) and v <= high
            if key in ("ema_decay", "overlap"):
                inside = inside and v < high
            if not inside:
                edge = "[" if low_ok else "("
                close = ")" if key in ("ema_decay", "overlap") else "]"
                raise TrainConfigError(f"{key}: a number in {edge}{low}, {high}{close}, got {v!r}")
        aug = self.augmentation
        for key in ("affine_prob", "intensity_prob", "foreground_ratio", "low_resolution_prob", "flip_prob",
                    "remap_prob", "gin_prob"):
            v = getattr(aug, key)
            if not (_finite(v) and 0 <= v <= 1):
                raise TrainConfigError(f"augmentation.{key}: a probability in [0, 1], got {v!r}")
        for key, high in (("rotate_degrees", 180), ("scale", 0.9), ("shear", 0.5), ("noise_std", 10)):
            v = getattr(aug, key)
            if not (_finite(v) and 0 <= v <= high):
                raise TrainConfigError(f"augmentation.{key}: a number in [0, {high}], got {v!r}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
