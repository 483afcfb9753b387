"""Training settings (YAML/JSON or command-line flags), validated with errors that name the key."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..data.transforms import AugmentationConfig


class TrainConfigError(ValueError):
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
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; bf16 on CPU when asked (AMX)
    validate_every: int = 1  # epochs
    checkpoint_every: int = 50  # iterations (and at each epoch end)
    overlap: float = 0.5  # sliding-window overlap in validation
    seed: int = 0
    num_workers: int = 2
    cache_rate: float = 1.0
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
        if isinstance(aug, dict):
            aug_names = {f.name for f in dataclasses.fields(AugmentationConfig)}
            if set(aug) - aug_names:
                raise TrainConfigError(f"augmentation: unknown settings {sorted(set(aug) - aug_names)}")
            aug = AugmentationConfig(**aug)
        for key in ("spacing", "patch_size"):
            if key in data:
                v = data[key]
                v = [v] * 3 if isinstance(v, (int, float)) else list(v)
                data[key] = tuple(float(x) for x in v) if key == "spacing" else tuple(int(x) for x in v)
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
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise TrainConfigError("spacing: three positive numbers (mm)")
        if len(self.patch_size) != 3 or any(p <= 0 or p % 16 for p in self.patch_size):
            raise TrainConfigError(f"patch_size: three positive multiples of 16, got {self.patch_size}")
        for key in ("batch_size", "epochs", "iterations_per_epoch", "validate_every", "checkpoint_every"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise TrainConfigError(f"{key}: a positive integer, got {v!r}")
        if self.optimizer != "adamw":
            raise TrainConfigError(f"optimizer: only 'adamw' is available, got {self.optimizer!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise TrainConfigError(f"precision: auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 <= self.ema_decay < 1:
            raise TrainConfigError("ema_decay: in [0, 1)")
        if not 0 <= self.overlap < 1:
            raise TrainConfigError("overlap: in [0, 1)")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_epochs < 0:
            raise TrainConfigError("lr > 0, weight_decay >= 0, grad_clip >= 0, warmup_epochs >= 0")
        if not 0 < self.cache_rate <= 1:
            raise TrainConfigError("cache_rate: in (0, 1]")
