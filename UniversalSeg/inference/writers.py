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


def assign_layers(masks: list[np.ndarray], boxes: list | None = None) -> list[tuple[int, int]]:
    """(layer, label) of each binary mask, packed as Slicer packs segments into as few uint8
    layers as possible: a mask goes to the first layer none of whose masks it overlaps (at most
    255 per layer), with the next label of that layer.

    Memory: no layer is materialised; masks are compared pairwise, only where their bounding boxes
    meet, a block of slices at a time. ``boxes``: their ``_box`` where the caller has them."""
    boxes = [_box(m) for m in masks] if boxes is None else boxes
    layers: list[list[int]] = []
    places = []
    for n in range(len(masks)):
        for index, members in enumerate(layers):
            if len(members) < 255 and not any(_overlap(masks[o], masks[n], boxes[o], boxes[n]) for o in members):
                break
        else:
            layers.append([])
            index = len(layers) - 1
        layers[index].append(n)
        places.append((index, len(layers[index])))
    return places


def _box(mask: np.ndarray):
    """(lo, hi) index bounds of a mask's nonzero voxels per axis, None when it is empty."""
    bounds = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not hit.size:
            return None
        bounds.append((int(hit[0]), int(hit[-1]) + 1))
    return bounds


def _overlap(a: np.ndarray, b: np.ndarray, box_a, box_b, block: int = 16) -> bool:
    if box_a is None or box_b is None:
        return False
    common = [(max(p[0], q[0]), min(p[1], q[1])) for p, q in zip(box_a, box_b)]
    if any(lo >= hi for lo, hi in common):
        return False
    (k0, k1), rest = common[0], tuple(slice(lo, hi) for lo, hi in common[1:])
    for k in range(k0, k1, block):
        part = (slice(k, min(k + block, k1)),) + rest
        if np.logical_and(a[part], b[part]).any():
            return True
    return False


class LayeredVoxels:
    """The ``(layer, i, j, k)`` uint8 voxels of a ``.seg.nrrd`` (``(i, j, k)`` with one layer),
    made one k-slice at a time while they are written: pynrrd's writer reads ``shape``, ``ndim``,
    ``dtype`` and ``tobytes(order="F")``, then takes the bytes 1 MiB after the other, so no layer
    and no copy of the voxels is ever whole in memory (20 overlapping masks of 384x384x256 voxels:
    0.75 GB of layers and 0.75 GB of bytes otherwise).

    ``masks``: (k, j, i) boolean arrays; ``places``: their (layer, label) (``assign_layers``)."""

    def __init__(self, masks: list[np.ndarray], places: list[tuple[int, int]]):
        self.masks, self.places = masks, places
        self.layers = 1 + max((layer for layer, _ in places), default=0)
        k, j, i = masks[0].shape
        self.slice_shape = (j, i, self.layers)  # C order of one k: F order of (layer, i, j)
        self.shape = (i, j, k) if self.layers == 1 else (self.layers, i, j, k)
        self.ndim, self.dtype = len(self.shape), np.dtype(np.uint8)

    def slice_bytes(self, k: int) -> bytes:
        out = np.zeros(self.slice_shape, np.uint8)
        for mask, (layer, label) in zip(self.masks, self.places):
            np.copyto(out[:, :, layer], np.uint8(label), where=mask[k])
        return out.tobytes()

    def tobytes(self, order: str = "C") -> "_SliceBytes":
        if order != "F":
            raise ValueError("a .seg.nrrd is written in Fortran order")
        return _SliceBytes(self)

    def array(self) -> np.ndarray:
        """The whole voxels (tests and small volumes)."""
        k = self.masks[0].shape[0]
        data = np.frombuffer(b"".join(self.slice_bytes(n) for n in range(k)), np.uint8)
        return data.reshape((k,) + self.slice_shape).transpose(3, 2, 1, 0).reshape(self.shape)


class _SliceBytes:
    """``bytes``-like for pynrrd's chunked writer: ``len`` and in-order slices, made from the
    k-slices they span (the last one is kept for the next request)."""

    def __init__(self, voxels: LayeredVoxels):
        self.voxels = voxels
        self.step = int(np.prod(voxels.slice_shape))
        self.count = voxels.masks[0].shape[0]
        self.cached = (-1, b"")

    def __len__(self) -> int:
        return self.step * self.count

    def _slice(self, k: int) -> bytes:
        if self.cached[0] != k:
            self.cached = (k, self.voxels.slice_bytes(k))
        return self.cached[1]

    def __getitem__(self, item) -> bytes:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("only contiguous byte ranges are made")
        start, stop, _ = item.indices(len(self))
        pieces = []
        while start < stop:
            k, offset = divmod(start, self.step)
            take = min(stop - start, self.step - offset)
            pieces.append(self._slice(k)[offset:offset + take])
            start += take
        return b"".join(pieces)


def _as_bool(mask: sitk.Image) -> np.ndarray:
    """A (k, j, i) boolean view of a 0/1 uint8 mask (the predictor's), else a ``> 0`` copy."""
    array = sitk.GetArrayViewFromImage(mask)
    if array.dtype == np.uint8 and (array.size == 0 or array.max() <= 1):
        return array.view(bool)
    return array > 0


def _extent(box) -> list[int]:
    """[i0, i1, j0, j1, k0, k1] (inclusive) of a (k, j, i) mask's ``_box``; empty -> [0, -1, 0, -1, 0, -1]."""
    if box is None:
        return [0, -1, 0, -1, 0, -1]
    return [n for lo, hi in box[::-1] for n in (lo, hi - 1)]


def write_seg_nrrd(path, reference: sitk.Image, masks: dict[str, sitk.Image],
                   infos: dict[str, TaskInfo], compression_level: int = 1) -> Path:
    """One segment per task (overlapping tasks in separate layers), read by Slicer and slicerio.
    Layers are packed here rather than with ``slicerio.add_segment`` (4x faster on 20 large
    overlapping masks) and made slice by slice as they are compressed (``LayeredVoxels``);
    slicerio writes the header with Slicer's fields, pynrrd the data."""
    arrays = [_as_bool(m) for m in masks.values()]  # (k, j, i); views: ``masks`` outlives them
    boxes = [_box(a) for a in arrays]  # one pass per mask: the packing and the extents use them
    places = assign_layers(arrays, boxes)
    voxels = LayeredVoxels(arrays, places)  # made slice by slice while pynrrd compresses them
    segments = []
    for (task, _), box, (layer, label) in zip(masks.items(), boxes, places):
        seg = segment_fields(infos[task])
        seg.update({"labelValue": label, "layer": layer, "extent": _extent(box)})
        segments.append(seg)
    segments, texts = _ascii_stand_ins(segments)
    segmentation = {"voxels": voxels, "ijkToLPS": ijk_to_lps(reference), "segments": segments}

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
