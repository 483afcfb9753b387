"""Model packages: everything needed to predict, in two files (a folder or a single ``.zip``).

- ``model.json``: format version, the network config, tasks with display names, colors and
  terminology codes, modalities with their intensity policies, the model spacing, the patch size
  and training provenance.
- ``model.safetensors``: the weights. safetensors holds tensors only, so loading a package never
  executes code (a pickle disguised as a model is refused by the parser).

``save_package`` writes into a temporary folder and renames it into place: a package is complete
or absent. ``load_package`` validates the metadata and refuses a newer format with a clear message.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from . import __version__
from .data.modalities import IntensityPolicy
from .data.terminology import TaskInfo
from .networks import ModelConfig, UniversalSegNet
from .networks.config import ConfigError

PACKAGE_FORMAT = "universalseg-model"
PACKAGE_VERSION = 1
META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"


class PackageError(ValueError):
    """A model package that cannot be used; the message says why and what to do."""


@dataclass
class ModelPackage:
    config: ModelConfig
    tasks: list[TaskInfo]
    modalities: dict[str, IntensityPolicy]
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    meta: dict
    state_dict: dict

    def build(self, device: torch.device | str = "cpu") -> UniversalSegNet:
        from .networks import prepare_model
        net = UniversalSegNet(self.config)
        try:
            net.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise PackageError(f"the weights do not fit the network described in {META_FILE}: "
                               f"{str(exc).splitlines()[0]}") from None
        return prepare_model(net.eval(), torch.device(device))


def save_package(out: str | Path, model: UniversalSegNet, tasks: list[TaskInfo],
                 modalities: dict[str, IntensityPolicy], spacing, patch_size,
                 provenance: Optional[dict] = None) -> Path:
    out = Path(out)
    cfg = model.config
    if [t.name for t in tasks] != list(cfg.tasks):
        raise PackageError("task metadata must list the network's tasks in order")
    missing = [m for m in cfg.modalities if m not in modalities]
    if missing:
        raise PackageError(f"no intensity policy for modalities {missing}")
    meta = {
        "format": PACKAGE_FORMAT, "format_version": PACKAGE_VERSION,
        "network": cfg.to_dict(),
        "tasks": [t.to_dict() for t in tasks],
        "modalities": {m: modalities[m].to_dict() for m in cfg.modalities},
        "preprocessing": {"spacing": [float(s) for s in spacing], "orientation": "RAS"},
        "inference": {"patch_size": [int(p) for p in patch_size], "threshold": 0.5},
        "provenance": {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "universalseg_version": __version__, **(provenance or {})},
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": PACKAGE_FORMAT})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out.suffix == ".zip":
            ztmp = tmp.with_suffix(".zip")
            with zipfile.ZipFile(ztmp, "w", zipfile.ZIP_DEFLATED) as z:
                z.write(tmp / META_FILE, META_FILE)
                z.write(tmp / WEIGHTS_FILE, WEIGHTS_FILE)
            os.replace(ztmp, out)
            shutil.rmtree(tmp)
        else:
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_members(path: Path) -> tuple[bytes, bytes]:
    if path.is_dir():
        meta, weights = path / META_FILE, path / WEIGHTS_FILE
        for f in (meta, weights):
            if not f.is_file():
                raise PackageError(f"{path} is not a model package: {f.name} is missing")
        return meta.read_bytes(), weights.read_bytes()
    if not path.is_file():
        raise PackageError(f"model package {path} does not exist")
    try:
        with zipfile.ZipFile(path) as z:  # read the two members only: no extraction, no paths
            names = set(z.namelist())
            for n in (META_FILE, WEIGHTS_FILE):
                if n not in names:
                    raise PackageError(f"{path} is not a model package: {n} is missing in the zip")
            return z.read(META_FILE), z.read(WEIGHTS_FILE)
    except zipfile.BadZipFile:
        raise PackageError(f"{path} is neither a model package folder nor a valid zip "
                           "(corrupt or truncated download? fetch it again)") from None


def load_package(path: str | Path) -> ModelPackage:
    path = Path(path)
    meta_bytes, weight_bytes = _read_members(path)
    try:
        meta = json.loads(meta_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: {META_FILE} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path}: {META_FILE} is not a UniversalSeg model description")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > PACKAGE_VERSION:
        raise PackageError(f"{path}: package format {version!r} is newer than this UniversalSeg "
                           f"understands ({PACKAGE_VERSION}); upgrade UniversalSeg to use this model")
    try:
        config = ModelConfig.from_dict(meta["network"])
        tasks = [TaskInfo.from_dict(t) for t in meta["tasks"]]
        modalities = {k: IntensityPolicy.from_dict(v) for k, v in meta["modalities"].items()}
        spacing = tuple(float(s) for s in meta["preprocessing"]["spacing"])
        patch = tuple(int(p) for p in meta["inference"]["patch_size"])
    except ConfigError as exc:
        raise PackageError(f"{path}: network config: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{path}: {META_FILE} is incomplete or malformed ({exc!r})") from None
    if [t.name for t in tasks] != list(config.tasks):
        raise PackageError(f"{path}: task metadata does not match the network's tasks")
    if set(modalities) != set(config.modalities):
        raise PackageError(f"{path}: modality policies do not match the network's modalities")
    if len(spacing) != 3 or len(patch) != 3 or min(spacing) <= 0 or min(patch) <= 0:
        raise PackageError(f"{path}: spacing and patch size need three positive numbers")
    try:
        state = load_safetensors_bytes(weight_bytes)
    except Exception as exc:
        raise PackageError(f"{path}: {WEIGHTS_FILE} is not a safetensors file (refused without "
                           f"unpickling anything): {str(exc)[:160]}") from None
    return ModelPackage(config, tasks, modalities, spacing, patch, meta, state)

