"""A model package's description (``model.json``), read and checked without torch.

Why a module of its own: 3D Slicer's GUI process lists models, their structures and modalities
before any heavy dependency is installed, and must never import torch itself (a slow first open,
CUDA initialised inside Slicer, a broken torch DLL raising OSError). Everything here needs only
the standard library; ``model_package`` adds the network config and the weights on top.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .data.terminology import TaskInfo, check_task_names
from .exclusive_groups import read_groups
from .structured_file import parse_text

# Bounds checked before anything is allocated from a package's numbers (a hostile model.json
# must not make us allocate gigabytes): voxel spacing in mm, window edge in voxels, task count.
SPACING_MM = (0.01, 100.0)
PATCH_EDGE = (8, 1024)
MAX_TASKS = 4096
MAX_MEMBER_BYTES = {"model.json": 16 << 20, "model.safetensors": 8 << 30}  # unpacked sizes in a zip

PACKAGE_FORMAT = "universalseg-model"
PACKAGE_VERSION = 1
META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"


class PackageError(ValueError):
    """A model package that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSummary:
    """What a user picks from: the tasks, the modalities and the model's working grid."""
    tasks: list[TaskInfo]
    modalities: list[str]
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    meta: dict
    exclusive_groups: list[list[str]] = field(default_factory=list)  # tasks a voxel is at most one of


def read_member(path: Path, name: str) -> bytes:
    """One file of a package folder or zip, by name (no extraction, no other member read)."""
    if path.is_dir():
        member = path / name
        if not member.is_file():
            raise PackageError(f"{path} is not a model package: {name} is missing")
        return member.read_bytes()
    if not path.is_file():
        raise PackageError(f"model package {path} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            if name not in z.namelist():
                raise PackageError(f"{path} is not a model package: {name} is missing in the zip")
            size, limit = z.getinfo(name).file_size, MAX_MEMBER_BYTES[name]
            if size > limit:
                raise PackageError(f"{path}: {name} unpacks to {size / 1e6:.0f} MB, more than a model package "
                                   f"holds ({limit / 1e6:.0f} MB); refused without unpacking it")
            try:
                return z.read(name)
            except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required"
                raise PackageError(f"{path}: {name} cannot be read ({exc}); model packages are not encrypted") from None
    except zipfile.BadZipFile:
        raise PackageError(f"{path} is neither a model package folder nor a valid zip "
                           "(corrupt or truncated download? fetch it again)") from None


def read_meta_bytes(path: Path) -> bytes:
    return read_member(path, META_FILE)


def parse_meta(meta_bytes: bytes, path: Path) -> dict:
    """Decode ``model.json`` and refuse foreign or newer formats."""
    try:
        text = meta_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(f"{path}: {META_FILE} is not a text file (not UTF-8)") from None
    meta = parse_text(text, False, f"{path}: {META_FILE}", PackageError)
    if not isinstance(meta, dict) or meta.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path}: {META_FILE} is not a UniversalSeg model description")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > PACKAGE_VERSION:
        raise PackageError(f"{path}: package format {version!r} is newer than this UniversalSeg "
                           f"understands ({PACKAGE_VERSION}); upgrade UniversalSeg to use this model")
    return meta


def summarize(meta: dict, path: Path) -> ModelSummary:
    """Tasks, modalities, spacing and patch size of a decoded ``model.json``, checked."""
    try:
        tasks = [TaskInfo.from_dict(t) for t in meta["tasks"]]
        modalities = list(meta["modalities"])
        network = meta["network"]
        spacing = tuple(float(s) for s in meta["preprocessing"]["spacing"])
        patch = tuple(int(p) for p in meta["inference"]["patch_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{path}: {META_FILE} is incomplete or malformed ({exc!r})") from None
    if not isinstance(network, dict) or [t.name for t in tasks] != list(network.get("tasks", [])):
        raise PackageError(f"{path}: task metadata does not match the network's tasks")
    if set(modalities) != set(network.get("modalities", [])):
        raise PackageError(f"{path}: modality policies do not match the network's modalities")
    if len(spacing) != 3 or not all(math.isfinite(v) and SPACING_MM[0] <= v <= SPACING_MM[1] for v in spacing):
        raise PackageError(f"{path}: spacing {list(spacing)} must be three numbers between "
                           f"{SPACING_MM[0]} and {SPACING_MM[1]} mm")
    if len(patch) != 3 or not all(PATCH_EDGE[0] <= v <= PATCH_EDGE[1] for v in patch):
        raise PackageError(f"{path}: patch size {list(patch)} must be three numbers between "
                           f"{PATCH_EDGE[0]} and {PATCH_EDGE[1]} voxels")
    if not 1 <= len(tasks) <= MAX_TASKS:
        raise PackageError(f"{path}: {len(tasks)} tasks; a model has 1 to {MAX_TASKS}")
    for t in tasks:
        try:
            check_task_names(t.name, t.display_name)
        except ValueError as exc:
            raise PackageError(f"{path}: {exc}") from None
    groups = read_groups(meta, [t.name for t in tasks], f"{path}: {META_FILE}", PackageError)
    return ModelSummary(tasks, list(network["modalities"]), spacing, patch, meta, groups)


def read_summary(path: str | Path) -> ModelSummary:
    """A package folder or zip -> its checked summary, reading ``model.json`` only."""
    path = Path(path)
    meta = parse_meta(read_meta_bytes(path), path)
    return summarize(meta, path)
