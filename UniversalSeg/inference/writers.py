"""Writing results: a Slicer ``.seg.nrrd``, a labelmap, probability maps; never half a file.

- ``.seg.nrrd`` (``slicerio``): one segment per task with its name, color and terminology; tasks
  that overlap (an organ and a lesion inside it) go to separate layers, so nothing is lost.
- labelmap (NIfTI / NRRD / MHA): one value per task (1..T in request order); where tasks
  overlap, the ``order`` policy lets the later task win, ``probability`` the more probable one.
- probability maps: one float32 image per task.

Every file is written to a temporary name in the destination folder and renamed into place.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..data.terminology import TaskInfo

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".seg.nrrd", ".nii.gz") + LABELMAP_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` with a temporary path of the same suffix, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_suffix(path), dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
            "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
            "category": [info.category.scheme, info.category.value, info.category.meaning],
            "type": [info.type.scheme, info.type.value, info.type.meaning]}
    return seg


def write_seg_nrrd(path, reference: sitk.Image, masks: dict[str, sitk.Image],
                   infos: dict[str, TaskInfo]) -> Path:
    import slicerio

    segmentation = slicerio.create_segmentation(reference.GetSize(), ijk_to_lps(reference))
    for task, mask in masks.items():
        voxels = sitk.GetArrayViewFromImage(mask).transpose(2, 1, 0) > 0  # (i, j, k)
        slicerio.add_segment(segmentation, voxels, segment_fields(infos[task]))
    return atomic_write(path, lambda tmp: slicerio.write_segmentation(str(tmp), segmentation))


def labelmap(masks: dict[str, sitk.Image], policy: str = "order",
             probabilities: dict[str, sitk.Image] | None = None) -> sitk.Image:
    tasks = list(masks)
    first = masks[tasks[0]]
    label = np.zeros(sitk.GetArrayViewFromImage(first).shape, np.uint16 if len(tasks) > 255 else np.uint8)
    if policy == "probability":
        if not probabilities:
            raise ValueError("the 'probability' overlap policy needs the probability maps")
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
        raise ValueError(f"unknown overlap policy {policy!r}: 'order' or 'probability'")
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
