"""Writing results: a Slicer ``.seg.nrrd``, a labelmap, probability maps; never half a file.

- ``.seg.nrrd`` (``slicerio``): one segment per task with its name, color and terminology; tasks
  that overlap (an organ and a lesion inside it) go to separate layers, so nothing is lost.
- labelmap (NIfTI / NRRD / MHA): one value per task (1..T in request order); where tasks
  overlap, the ``order`` policy lets the later task win, ``probability`` the more probable one.
- probability maps: one float32 image per task.

Every file is written to a temporary name in the destination folder and renamed into place.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
# slicerio reads/writes Slicer's .seg.nrrd files; it is not the Slicer application (no MRML, no Qt)
import SimpleITK as sitk, slicerio  # noqa: E401

from ..data.image_io import ImageError, check_complete
from ..data.terminology import TaskInfo
from ..file_modes import PENDING, apply_umask
from ..errors import InputError

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# a detached header (.nhdr, .mhd) is two files, which one rename cannot put in place together
DETACHED_SUFFIXES = (".nhdr", ".mhd")


def check_single_file(path: Path, option: str = "--output") -> None:
    """Refuse a detached-header name: ITK would name the data file after the temporary header and
    the header would point at it; a re-run would orphan the previous data file."""
    if path.name.lower().endswith(DETACHED_SUFFIXES):
        raise InputError(f"{option} {path.name}: a detached header ({', '.join(DETACHED_SUFFIXES)}) is written as "
                         "two files and cannot be written safely; use a single-file format: .nrrd, .mha or .nii.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".seg.nrrd", ".nii.gz") + LABELMAP_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix


def verify_written(tmp: Path, final: Path) -> None:
    """A full disk must not end in a short file renamed into place with exit 0: ITK's NIfTI writer
    only prints "wrote only N of M bytes". Flush the file to disk (a delayed write error surfaces
    here) and check a NIfTI's size against its header (gzip: the stream reaches its end)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    if tmp.name.lower().endswith((".nii", ".nii.gz")):
        try:
            check_complete(tmp, strict=True)
        except ImageError:
            raise OSError(errno.ENOSPC, "the file was written incompletely (disk full?)", str(final)) from None


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` with a temporary path of the same suffix, then rename it to ``path``."""
    path = Path(path)
    check_single_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a bounded temporary name: a legal 250-character output name must not become an illegal one
    prefix, suffix = f".{path.name[:40]}.", _suffix(path)
    stale = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix))
    for old in path.parent.glob(".*"):  # left by a run that was killed while writing this output
        if stale.fullmatch(old.name):
            old.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    PENDING.add(tmp)
    try:
        try:
            write(Path(tmp))
        except RuntimeError as exc:  # SimpleITK's writers report a failed write (disk full) this way
            if "ITK ERROR" not in str(exc):
                raise
            space = any(w in str(exc) for w in ("wrote only", "No space", "couldn't write"))
            raise OSError(errno.ENOSPC if space else errno.EIO, "the image could not be written"
                          + (" completely (disk full?)" if space else ""), str(path)) from None
        verify_written(Path(tmp), path)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        PENDING.discard(tmp)
    return path


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def segment_fields(info: TaskInfo) -> dict:
    seg = {"id": info.name, "name": info.display_name, "color": [c / 255 for c in info.color]}
    if info.category is not None and info.type is not None:
        seg["terminology"] = {
            "contextName": info.context,
            "category": [info.category.scheme, info.category.value, info.category.meaning],
            "type": [info.type.scheme, info.type.value, info.type.meaning]}
        if getattr(info, "modifier", None) is not None:  # a side: Left / Right
            seg["terminology"]["typeModifier"] = [info.modifier.scheme, info.modifier.value, info.modifier.meaning]
    return seg


def pack_layers(masks: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Pack binary masks into as few uint8 layers as possible, as Slicer stores segments: a
    mask goes to the first layer it does not overlap. Returns (layers [L, ...], (layer, label)).

    Memory: the layers and one boolean scratch array. Room for one layer per mask is reserved
    with ``np.zeros``, whose untouched pages cost nothing, and the layers used are a view of its
    first L: no occupancy arrays, no stacking copy."""
    layers = np.zeros((len(masks),) + masks[0].shape, np.uint8)
    counts, places = [], []
    scratch = np.empty(masks[0].shape, bool)
    for m in masks:
        for index, count in enumerate(counts):  # a layer's nonzero voxels are its occupied ones
            if count < 255 and not np.logical_and(layers[index], m, out=scratch).any():
                break
        else:
            counts.append(0)
            index = len(counts) - 1
        counts[index] += 1
        np.copyto(layers[index], np.uint8(counts[index]), where=m)
        places.append((index, counts[index]))
    return layers[:len(counts)], places


def _as_bool(mask: sitk.Image) -> np.ndarray:
    """A (k, j, i) boolean view of a 0/1 uint8 mask (the predictor's), else a ``> 0`` copy."""
    array = sitk.GetArrayViewFromImage(mask)
    if array.dtype == np.uint8 and (array.size == 0 or array.max() <= 1):
        return array.view(bool)
    return array > 0


def _extent(mask_kji: np.ndarray) -> list[int]:
    """[i0, i1, j0, j1, k0, k1] of a (k, j, i) mask; empty -> [0, -1, 0, -1, 0, -1]."""
    out = []
    for axis in (2, 1, 0):
        hit = np.flatnonzero(mask_kji.any(axis=tuple(a for a in range(3) if a != axis)))
        out += [int(hit[0]), int(hit[-1])] if hit.size else [0, -1]
    return out


def write_seg_nrrd(path, reference: sitk.Image, masks: dict[str, sitk.Image],
                   infos: dict[str, TaskInfo], compression_level: int = 1) -> Path:
    """One segment per task (overlapping tasks in separate layers), read by Slicer and slicerio.
    Layers are packed here rather than with ``slicerio.add_segment`` (4x faster on 20 large
    overlapping masks); slicerio writes the file with Slicer's header fields."""
    arrays = [_as_bool(m) for m in masks.values()]  # (k, j, i); views: ``masks`` outlives them
    layers, places = pack_layers(arrays)
    voxels = layers.transpose(0, 3, 2, 1)  # (layer, i, j, k) view, Fortran order for NRRD
    segments = []
    for (task, _), mask, (layer, label) in zip(masks.items(), arrays, places):
        seg = segment_fields(infos[task])
        seg.update({"labelValue": label, "layer": layer, "extent": _extent(mask)})
        segments.append(seg)
    segments, texts = _ascii_stand_ins(segments)
    segmentation = {"voxels": voxels if len(layers) > 1 else voxels[0], "ijkToLPS": ijk_to_lps(reference),
                    "segments": segments}

    def write(tmp):
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=compression_level)
        if texts:
            _put_utf8_into_header(tmp, texts)
    return atomic_write(path, write)


def _ascii_stand_ins(value, texts=None):
    """``value`` with every non-ASCII text replaced by an ASCII stand-in, and {stand-in: text}.
    pynrrd (under slicerio) writes its header as ASCII; Slicer writes and reads UTF-8 there (its
    strings are UTF-8 since 4.11; ITK's NRRD reader keeps the bytes), so "Rückenmark" or "脊髓" go
    in as UTF-8 once the file is written (``_put_utf8_into_header``)."""
    texts = {} if texts is None else texts
    if isinstance(value, str):
        if value.isascii():
            return value, texts
        token = f"UniversalSegText{len(texts)}x{os.getpid()}"
        texts[token] = value
        return token, texts
    if isinstance(value, dict):
        return {k: _ascii_stand_ins(v, texts)[0] for k, v in value.items()}, texts
    if isinstance(value, list):
        return [_ascii_stand_ins(v, texts)[0] for v in value], texts
    return value, texts


def _put_utf8_into_header(path: Path, texts: dict) -> None:
    data = Path(path).read_bytes()
    header, blank, body = data.partition(b"\n\n")  # the NRRD header ends at the first empty line
    for token, text in sorted(texts.items(), key=lambda kv: -len(kv[0])):  # Text10 before Text1
        header = header.replace(token.encode("ascii"), text.encode("utf-8"))
    Path(path).write_bytes(header + blank + body)


def labelmap(masks: dict[str, sitk.Image], policy: str = "order",
             probabilities: dict[str, sitk.Image] | None = None) -> sitk.Image:
    tasks = list(masks)
    first = masks[tasks[0]]
    label = np.zeros(sitk.GetArrayViewFromImage(first).shape, np.uint16 if len(tasks) > 255 else np.uint8)
    if policy == "probability":
        if not probabilities:
            raise InputError("the 'probability' overlap policy needs the probability maps")
        best = np.zeros(label.shape, np.float32)
        for value, task in enumerate(tasks, start=1):
            p = sitk.GetArrayViewFromImage(probabilities[task])
            win = (sitk.GetArrayViewFromImage(masks[task]) > 0) & (p > best)
            label[win] = value
            best[win] = p[win]
    elif policy == "order":
        for value, task in enumerate(tasks, start=1):
            label[sitk.GetArrayViewFromImage(masks[task]) > 0] = value
    else:
        raise InputError(f"unknown overlap policy {policy!r}: 'order' or 'probability'")
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(first)
    return out


def write_labelmap(path, masks, policy="order", probabilities=None) -> Path:
    image = labelmap(masks, policy, probabilities)
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def write_probabilities(folder, probabilities: dict[str, sitk.Image], suffix=".nii.gz") -> list[Path]:
    out = []
    for task, image in probabilities.items():
        out.append(atomic_write(Path(folder) / f"{task}{suffix}",
                                lambda tmp, im=image: sitk.WriteImage(im, str(tmp), useCompression=True)))
    return out
