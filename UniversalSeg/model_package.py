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
from .file_modes import apply_umask, atomic_write
from .model_metadata import (  # noqa: F401
    META_FILE,
    NETWORK_STRIDE,
    PACKAGE_FORMAT,
    PACKAGE_VERSION,
    WEIGHTS_FILE,
    PackageError,
    parse_meta,
    read_member,
    read_meta_bytes,
    summarize,
)
from .networks import ModelConfig, UniversalSegNet
from .networks.config import ConfigError

__all__ = ["MAX_PARAMETERS", "ModelPackage", "PackageError", "expected_state", "load_package", "save_package"]


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
                 provenance: Optional[dict] = None, half: bool = False,
                 exclusive_groups: Optional[list] = None) -> Path:
    """``half``: store floating-point weights as float16 (half the size; loaded back as float32).
    ``exclusive_groups``: model.json's groups of mutually exclusive tasks (checked as when read)."""
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
    if exclusive_groups:
        from .exclusive_groups import read_groups
        meta["exclusive_groups"] = read_groups({"exclusive_groups": [list(g) for g in exclusive_groups]},
                                               list(cfg.tasks), "save_package", PackageError)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if half:
        big = [k for k, v in state.items() if v.is_floating_point() and v.numel() and v.abs().max() > 60000]
        if big:
            raise PackageError(f"weights {big[:3]} exceed float16's range; save in full precision")
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": PACKAGE_FORMAT})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out.suffix == ".zip":
            def write_zip(ztmp: Path) -> None:
                with zipfile.ZipFile(ztmp, "w", zipfile.ZIP_DEFLATED) as z:
                    z.write(tmp / META_FILE, META_FILE)
                    z.write(tmp / WEIGHTS_FILE, WEIGHTS_FILE)

            atomic_write(out, write_zip)
            shutil.rmtree(tmp)
        else:
            if out.exists():
                shutil.rmtree(out)
            apply_umask(tmp, directory=True)
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_package(path: str | Path) -> ModelPackage:
    """Read and validate a model package.

    Args:
        path: the package: a folder or a ``.zip`` holding ``model.json`` and ``model.safetensors``.

    Returns:
        The ``ModelPackage``: network config, tasks, modalities with their intensity policies,
        spacing, patch size, the raw metadata and the weights (float32); ``.build(device)`` gives
        the network ready to predict.

    Raises:
        PackageError: a missing, malformed, damaged or newer-format package, or weights that do not
            fit the network its ``model.json`` describes (checked before any weight is read).
    """
    path = Path(path)
    meta = parse_meta(read_meta_bytes(path), path)
    try:
        config = ModelConfig.from_dict(meta["network"])
        modalities = {k: IntensityPolicy.from_dict(v) for k, v in meta["modalities"].items()}
    except ConfigError as exc:
        raise PackageError(f"{path}: network config: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PackageError(f"{path}: {META_FILE} is incomplete or malformed ({exc!r})") from None
    summary = summarize(meta, path)
    assert config.divisor == NETWORK_STRIDE, "model_metadata.NETWORK_STRIDE disagrees with the network"
    expected = expected_state(config, path)
    parameters = sum(t.numel() for t in expected.values())
    # float32 at most (half storage is smaller), plus the safetensors header (names, shapes)
    weight_bytes = read_member(path, WEIGHTS_FILE, limit=4 * parameters + 200 * len(expected) + (1 << 20))
    try:
        state = load_safetensors_bytes(weight_bytes)
    except Exception as exc:
        raise PackageError(f"{path}: {WEIGHTS_FILE} is not a safetensors file (refused without "
                           f"unpickling anything): {str(exc)[:160]}") from None
    for name, tensor in state.items():
        want = expected.get(name)
        if want is not None and want.is_floating_point() != tensor.is_floating_point():
            raise PackageError(f"{path}: {WEIGHTS_FILE}: {name} is stored as {tensor.dtype}, the network needs "
                               f"{want.dtype}; the weights are damaged or not this network's")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PackageError(f"{path}: {WEIGHTS_FILE}: {name} holds NaN or infinite values; the model is "
                               "damaged (a diverged training?): download or export it again")
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}  # half storage
    return ModelPackage(config, summary.tasks, modalities, summary.spacing, summary.patch_size, meta, state)


MAX_PARAMETERS = 400_000_000  # 1.6 GB in float32: 1.7x the "large" preset (239 M)


def expected_state(config: ModelConfig, path: Path) -> dict:
    """The network's tensors (names, shapes, dtypes) without allocating them (torch's meta device),
    refused when the network is larger than any model we build: before a byte of weights is read."""
    with torch.device("meta"):
        state = UniversalSegNet(config).state_dict()
    parameters = sum(t.numel() for t in state.values())
    if parameters > MAX_PARAMETERS:
        raise PackageError(f"{path}: the network described in {META_FILE} has {parameters / 1e6:.0f} M parameters, "
                           f"more than any UniversalSeg model ({MAX_PARAMETERS / 1e6:.0f} M); the file is "
                           "damaged or hostile")
    return state

