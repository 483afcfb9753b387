"""The model config: everything needed to rebuild a network from its metadata alone.

A config is plain data (JSON or YAML). ``ModelConfig.from_dict`` validates it and raises
``ConfigError`` with the path of the offending key and what to do about it; ``to_dict`` gives back
the same data, so ``ModelConfig.from_dict(cfg.to_dict()) == cfg`` for every valid config.

Stage names used across the network (``L`` = resolution level, ``1/2**L`` of the input):
``enc0``..``enc4`` are the encoder stages (``enc0`` full resolution, ``enc4`` the 1/16 bottleneck)
and ``dec3``..``dec0`` the decoder stages (``dec3`` at 1/8 ... ``dec0`` back at full resolution).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from ..errors import InputError
from ..file_modes import atomic_write

FORMAT_VERSION = 2
# what a config of an older format meant by a key it did not have yet (format 2 added
# prompt.task_conditioned; a format-1 package's click stage is not conditioned on the task)
BEFORE_FORMAT = {"prompt.task_conditioned": (2, False)}

ENCODER_STAGES = ("enc0", "enc1", "enc2", "enc3", "enc4")
DECODER_STAGES = ("dec3", "dec2", "dec1", "dec0")
STAGES = ENCODER_STAGES + DECODER_STAGES

NORM_KINDS = ("instance", "domain_batch", "polynomial", "class_aware")
CONV_KINDS = ("shared", "domain_separable")
HEAD_KINDS = ("dynamic", "static")

# Named sizes of the residual U-Net: base width w, channels (w, 2w, 4w, 8w, 10w).
PRESETS = {"small": 16, "base": 32, "large": 64}
MAX_WIDTH, MAX_CHANNELS = 512, 4096  # far above "large" (64, 640 channels at the bottom)
MAX_NAMES = 4096  # tasks of one model


class ConfigError(InputError):
    """A model config that cannot describe a network; the message names the key and the fix."""


@dataclass(frozen=True)
class FusionConfig:
    """Where and how task/modality priors are fused with image features (Hermes)."""

    # stage name -> number of fusion blocks at that stage; {} disables prior fusion.
    sites: dict[str, int] = field(
        default_factory=lambda: {"enc2": 2, "enc3": 2, "enc4": 4, "dec3": 2, "dec2": 2}
    )
    head_dim: int = 32
    mlp_ratio: int = 4
    modality_tokens: int = 10


@dataclass(frozen=True)
class HarmonizationConfig:
    """Which seed-paper plug-ins replace the plain normalization / convolution layers."""

    norm: str = "instance"  # one of NORM_KINDS
    conv: str = "shared"  # one of CONV_KINDS
    polynomial_degree: int = 3  # U-Harmony denormalization polynomial degree (>= 1)
    class_aware_stages: tuple[str, ...] = ("enc0", "enc1", "enc2", "enc3")  # CateNorm's inc, down1-3
    class_aware_embedding: int = 16  # channels of the task-embedded soft mask
    # where the domain norms (domain_batch, polynomial) replace instance norm; a knob because
    # U-Harmony does not publish which layers it harmonizes (default: every stage)
    harmonized_stages: tuple[str, ...] = ("enc0", "enc1", "enc2", "enc3", "enc4", "dec3", "dec2", "dec1", "dec0")


@dataclass(frozen=True)
class ClickStageConfig:
    """The click stage (``networks.click_stage``), the config key ``prompt``; off unless ``enabled``."""

    enabled: bool = False
    width: int = 16        # channels of its first level (then 2x, 4x)
    sigma: float = 2.0     # click maps: Gaussian blobs of this many model-grid voxels
    task_conditioned: bool = True  # per-task FiLM of the stage (click_stage); False in format-1 configs


PromptConfig = ClickStageConfig  # the old name (scripts may import it)


@dataclass(frozen=True)
class ModelConfig:
    tasks: tuple[str, ...]
    modalities: tuple[str, ...]
    domains: tuple[str, ...] = ()
    base_width: int = 32
    width_multipliers: tuple[int, ...] = (1, 2, 4, 8, 10)
    encoder_blocks: tuple[int, ...] = (2, 2, 2, 2)
    decoder_blocks: tuple[int, ...] = (2, 2, 2, 2)
    in_channels: int = 1
    head: str = "dynamic"  # "dynamic": kernels from task posteriors; "static": one channel per task
    fusion: FusionConfig = field(default_factory=FusionConfig)
    harmonization: HarmonizationConfig = field(default_factory=HarmonizationConfig)
    prompt: ClickStageConfig = field(default_factory=ClickStageConfig)  # the click stage (its first key name)
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ derived
    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.base_width * m for m in self.width_multipliers)

    def stage_channels(self, stage: str) -> int:
        level = int(stage[-1])
        return self.channels[level]

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this (four 2x down-samplings)."""
        return 2 ** (len(self.channels) - 1)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def preset(cls, name: str, tasks, modalities, domains=(), **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        data = {"tasks": list(tasks), "modalities": list(modalities), "domains": list(domains),
                "base_width": PRESETS[name]}
        data.update(overrides)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if "preset" in data:
            name = data.pop("preset")
            if name not in PRESETS:
                raise ConfigError(f"preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
            data.setdefault("base_width", PRESETS[name])
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(
                f"format_version: this config has format {version!r} but this UniversalSeg reads "
                f"formats up to {FORMAT_VERSION}; upgrade UniversalSeg to use it")
        _check_keys(data, cls, "")
        fusion = _nested(data.pop("fusion", {}), FusionConfig, "fusion")
        harm = _nested(data.pop("harmonization", {}), HarmonizationConfig, "harmonization")
        prompt = data.pop("prompt", {})
        if isinstance(prompt, dict) and isinstance(version, int):
            for key, (since, before) in BEFORE_FORMAT.items():
                if key.startswith("prompt.") and version < since:
                    prompt = {key.split(".", 1)[1]: before, **prompt}
        prompt = _nested(prompt, ClickStageConfig, "prompt")
        data["format_version"] = FORMAT_VERSION  # every key is now explicit: written back as today's format
        for key in ("tasks", "modalities", "domains", "width_multipliers", "encoder_blocks",
                    "decoder_blocks"):
            if key in data:
                data[key] = _as_tuple(data[key], key)
        cfg = cls(fusion=fusion, harmonization=harm, prompt=prompt, **data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        return {f.name: plain(dataclasses.asdict(getattr(self, f.name)) if dataclasses.is_dataclass(
            getattr(self, f.name)) else getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        from ..structured_file import read_structured
        data = read_structured(path, "model config", ConfigError)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the config to ``path`` (YAML for ``.yaml`` / ``.yml``, JSON otherwise), all or
        nothing (``file_modes.atomic_write``)."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def replace(self, **changes) -> "ModelConfig":
        data = self.to_dict()
        data.update(changes)
        return ModelConfig.from_dict(data)

    def with_click_stage(self) -> "ModelConfig":
        """This config with the click-refinement stage on; a stage added now is task-conditioned,
        whatever format the config came from (a format-1 config's existing stage is kept as it is)."""
        if self.prompt.enabled:
            return self
        return self.replace(prompt={**self.to_dict()["prompt"], "enabled": True, "task_conditioned": True})

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        _names(self.tasks, "tasks", allow_empty=False)
        _names(self.modalities, "modalities", allow_empty=False)
        _names(self.domains, "domains", allow_empty=True)
        for key, high in (("tasks", MAX_NAMES), ("modalities", 256), ("domains", 1024)):
            if len(getattr(self, key)) > high:
                raise ConfigError(f"{key}: {len(getattr(self, key))} names; at most {high}")
        _positive_int(self.base_width, "base_width", MAX_WIDTH)
        _positive_int(self.in_channels, "in_channels", 64)
        if len(self.width_multipliers) != 5:
            raise ConfigError("width_multipliers: need 5 entries (levels 1 to 1/16), "
                              f"got {len(self.width_multipliers)}")
        for i, m in enumerate(self.width_multipliers):
            _positive_int(m, f"width_multipliers[{i}]", 64)
        if max(self.channels) > MAX_CHANNELS:
            raise ConfigError(f"base_width x width_multipliers: {max(self.channels)} channels at one level; "
                              f"at most {MAX_CHANNELS}")
        for key in ("encoder_blocks", "decoder_blocks"):
            blocks = getattr(self, key)
            if len(blocks) != 4:
                raise ConfigError(f"{key}: need 4 entries (one per level), got {len(blocks)}")
            for i, b in enumerate(blocks):
                _positive_int(b, f"{key}[{i}]", 64)
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"head: {self.head!r} is not one of {list(HEAD_KINDS)}")
        f = self.fusion
        if not isinstance(f.sites, dict):
            raise ConfigError("fusion.sites: must map stage names to block counts, e.g. {'enc2': 2}")
        for stage, depth in f.sites.items():
            if stage not in STAGES:
                raise ConfigError(f"fusion.sites: unknown stage {stage!r}; stages are {list(STAGES)}")
            _positive_int(depth, f"fusion.sites.{stage}", 64)
            c = self.stage_channels(stage)
            if c % f.head_dim:
                raise ConfigError(f"fusion.head_dim: {f.head_dim} does not divide the {c} channels "
                                  f"of stage {stage}; pick a divisor of every fused stage's width")
        _positive_int(f.head_dim, "fusion.head_dim", MAX_CHANNELS)
        _positive_int(f.mlp_ratio, "fusion.mlp_ratio", 64)
        _positive_int(f.modality_tokens, "fusion.modality_tokens", 1024)
        if self.head == "dynamic" and not f.sites:
            raise ConfigError("head: the dynamic head builds its kernels from fused task priors; "
                              "with fusion.sites empty use head: static")
        h = self.harmonization
        if h.norm not in NORM_KINDS:
            raise ConfigError(f"harmonization.norm: {h.norm!r} is not one of {list(NORM_KINDS)}")
        if h.conv not in CONV_KINDS:
            raise ConfigError(f"harmonization.conv: {h.conv!r} is not one of {list(CONV_KINDS)}")
        _positive_int(h.polynomial_degree, "harmonization.polynomial_degree", 16)
        _positive_int(h.class_aware_embedding, "harmonization.class_aware_embedding", 1024)
        for key in ("class_aware_stages", "harmonized_stages"):
            for s in getattr(h, key):
                if s not in STAGES:
                    raise ConfigError(f"harmonization.{key}: unknown stage {s!r}; stages are {list(STAGES)}")
        p = self.prompt
        for key in ("enabled", "task_conditioned"):
            if not isinstance(getattr(p, key), bool):
                raise ConfigError(f"prompt.{key}: true or false, got {getattr(p, key)!r}")
        _positive_int(p.width, "prompt.width", 256)
        if not (isinstance(p.sigma, (int, float)) and not isinstance(p.sigma, bool) and 0.5 <= p.sigma <= 16):
            raise ConfigError(f"prompt.sigma: a number of voxels in [0.5, 16], got {p.sigma!r}")
        needs_domains = h.norm in ("domain_batch", "polynomial") or h.conv == "domain_separable"
        if needs_domains and not self.domains:
            raise ConfigError(
                f"domains: harmonization ({h.norm}/{h.conv}) keeps parameters per domain, so the "
                "config must list the domains (datasets or sites) the model is trained on")


# ---------------------------------------------------------------------- helpers
def _check_keys(data: dict, cls, prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {sorted(known)}"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in data]
    if missing:  # e.g. no tasks: a model config names its tasks and modalities (training replaces them)
        raise ConfigError(f"{prefix}{missing[0]}: missing; a model config lists its "
                          f"{' and '.join(missing)} (train replaces them with the catalog's)")


def _nested(data, cls, name):
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: must be a mapping, got {type(data).__name__}")
    _check_keys(data, cls, name + ".")
    data = dict(data)
    for key, value in list(data.items()):
        if isinstance(value, list):
            data[key] = tuple(value)
    return cls(**data)


def _as_tuple(value, key):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"{key}: must be a list, got {type(value).__name__}")


def _positive_int(value, key, high=None):
    """A whole number from 1 to ``high``: the upper bound keeps a hostile or mistyped config from
    allocating terabytes before anything else is checked."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: {value} is larger than any sensible network (at most {high})")


def _names(values, key, allow_empty):
    if not values and not allow_empty:
        raise ConfigError(f"{key}: must list at least one name")
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{key}: every entry must be a non-empty string, got {v!r}")
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"{key}: {v!r} is listed twice; names must be unique")
        seen.add(v)
