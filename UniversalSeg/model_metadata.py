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
from .errors import InputError
from .exclusive_groups import read_groups
from .structured_file import parse_text

__all__ = ["MAX_MEMBER_BYTES", "MAX_PATCH_VOXELS", "MAX_TASKS", "NETWORK_STRIDE", "PACKAGE_FORMAT", "PACKAGE_VERSION",
           "PATCH_EDGE", "PATCH_RULE", "SPACING_MM", "ModelSummary", "PackageError", "parse_meta", "patch_size_ok",
           "printable", "read_member", "read_meta_bytes", "read_summary", "summarize"]

# Bounds checked before anything is allocated from a package's numbers (a hostile model.json
# must not make us allocate gigabytes): voxel spacing in mm, window edge in voxels, task count.
SPACING_MM = (0.01, 100.0)
PATCH_EDGE = (16, 512)
MAX_PATCH_VOXELS = 256 ** 3  # one window: far above what trains on a GPU (e.g. 128^3), far below a bomb
NETWORK_STRIDE = 16  # patch edges are multiples of the network's four 2x down-samplings (ModelConfig.divisor)
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


def _too_big(path: Path, name: str, size: int, limit: int) -> PackageError:
    return PackageError(f"{path}: {name} holds {size / 1e6:.0f} MB, more than this package can need "
                        f"({limit / 1e6:.0f} MB); refused without reading it")


def read_member(path: Path, name: str, limit: int | None = None) -> bytes:
    """One file of a package folder or zip, by name (no extraction, no other member read); its
    size is checked before it is read (``limit``: a tighter bound than ``MAX_MEMBER_BYTES``)."""
    limit = min(limit or MAX_MEMBER_BYTES[name], MAX_MEMBER_BYTES[name])
    if path.is_dir():
        member = path / name
        if not member.is_file():
            raise PackageError(f"{path} is not a model package: {name} is missing")
        if member.stat().st_size > limit:  # a sparse file costs no disk, but reading it would
            raise _too_big(path, name, member.stat().st_size, limit)
        return member.read_bytes()
    if not path.is_file():
        raise PackageError(f"model package {path} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            if name not in z.namelist():
                raise PackageError(f"{path} is not a model package: {name} is missing in the zip")
            size = z.getinfo(name).file_size
            if size > limit:
                raise PackageError(f"{path}: {name} unpacks to {size / 1e6:.0f} MB, more than this package can "
                                   f"need ({limit / 1e6:.0f} MB); refused without unpacking it")
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
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PackageError(f"{path}: {META_FILE} format_version {version!r} is not a format number (a whole "
                           "number from 1); the file is damaged or was not written by UniversalSeg")
    if version > PACKAGE_VERSION:
        raise PackageError(f"{path}: package format {version!r} is newer than this UniversalSeg "
                           f"understands ({PACKAGE_VERSION}); upgrade UniversalSeg to use this model")
    return meta


def summarize(meta: dict, path: Path) -> ModelSummary:
    """Tasks, modalities, spacing and patch size of a decoded ``model.json``, checked."""
    try:
        tasks = [TaskInfo.from_dict(t) for t in meta["tasks"]]
        modalities = list(meta["modalities"])
        network = meta["network"]
        spacing = tuple(meta["preprocessing"]["spacing"])
        patch = tuple(meta["inference"]["patch_size"])
        threshold = meta["inference"].get("threshold", 0.5)
    except InputError as exc:  # a field's value, named by the check
        raise PackageError(f"{path}: {META_FILE}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PackageError(f"{path}: {META_FILE} is incomplete or malformed ({exc!r})") from None
    if not isinstance(network, dict) or [t.name for t in tasks] != list(network.get("tasks", [])):
        raise PackageError(f"{path}: task metadata does not match the network's tasks")
    if set(modalities) != set(network.get("modalities", [])):
        raise PackageError(f"{path}: modality policies do not match the network's modalities")
    if len(spacing) != 3 or not all(_number(v) and math.isfinite(v) and SPACING_MM[0] <= v <= SPACING_MM[1]
                                    for v in spacing):
        raise PackageError(f"{path}: spacing {list(spacing)} must be three numbers between "
                           f"{SPACING_MM[0]} and {SPACING_MM[1]} mm")
    if not patch_size_ok(patch):
        raise PackageError(f"{path}: patch size {list(patch)} must be {PATCH_RULE}")
    if not (_number(threshold) and 0 < threshold < 1):  # NaN too
        raise PackageError(f"{path}: {META_FILE} inference.threshold {threshold!r} must be a probability "
                           "between 0 and 1 (exclusive)")
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise PackageError(f"{path}: {META_FILE} provenance must be a mapping, got {type(provenance).__name__}")
    for key, ok, what in (("datasets", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                           "a list of names"),
                          ("card", lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                           "a mapping of texts"),
                          ("training", lambda v: isinstance(v, dict), "a mapping"),
                          ("created", lambda v: isinstance(v, str), "a text"),
                          ("steps", lambda v: _number(v), "a number")):
        if key in provenance and not ok(provenance[key]):
            raise PackageError(f"{path}: {META_FILE} provenance.{key} must be {what}, got {provenance[key]!r:.60}")
    if not 1 <= len(tasks) <= MAX_TASKS:
        raise PackageError(f"{path}: {len(tasks)} tasks; a model has 1 to {MAX_TASKS}")
    for t in tasks:
        try:
            check_task_names(t.name, t.display_name)
        except ValueError as exc:
            raise PackageError(f"{path}: {exc}") from None
    groups = read_groups(meta, [t.name for t in tasks], f"{path}: {META_FILE}", PackageError)
    return ModelSummary(tasks, list(network["modalities"]), spacing, patch, meta, groups)


def printable(text) -> str:
    """Package and catalog text for a terminal: control and format characters (ESC sequences that
    set the title or clear the screen, bidi overrides) shown escaped, never sent raw."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


PATCH_RULE = (f"three numbers between {PATCH_EDGE[0]} and {PATCH_EDGE[1]} voxels: whole numbers, multiples of "
              f"the network's stride {NETWORK_STRIDE}, at most {MAX_PATCH_VOXELS} voxels in all")


def patch_size_ok(patch) -> bool:
    """The one patch-size rule, for packages and training alike (``PATCH_RULE`` says it in words):
    a float or a 1600-voxel edge is refused before anything is allocated for it."""
    try:
        patch = list(patch)
    except TypeError:
        return False
    return (len(patch) == 3 and all(_number(v) and isinstance(v, int) and PATCH_EDGE[0] <= v <= PATCH_EDGE[1]
                                    and v % NETWORK_STRIDE == 0 for v in patch)
            and math.prod(patch) <= MAX_PATCH_VOXELS)


def _number(value) -> bool:
    """A JSON number (not true/false, not a string that looks like one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_summary(path: str | Path) -> ModelSummary:
    """A package folder or zip -> its checked summary, reading ``model.json`` only."""
    path = Path(path)
    meta = parse_meta(read_meta_bytes(path), path)
    return summarize(meta, path)
