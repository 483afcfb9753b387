"""The baseline every segmentation table needs: an atlas that looks at no image.

A probabilistic atlas per structure is the mean of the training label maps, each placed by the
centre of mass of its body (the voxels brighter than air: CT above -500 HU; MR and PET above 5 %
of the image's 99th percentile). To "segment" an image, the atlas is put at that image's body
centre and thresholded at 0.5: no registration beyond that one shift, no intensity used. A model
that does not beat this by a wide margin has learned where organs usually are, not to see them.
The atlas grid is 4 mm, 440 mm wide per axis, on LPS axes; labels are resampled onto it linearly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

ATLAS_SPACING_MM, ATLAS_FOV_MM = 4.0, 440.0


def body_centre(image: sitk.Image, modality: str) -> np.ndarray:
    """LPS mm of the centre of mass of the voxels brighter than air."""
    arr = sitk.GetArrayViewFromImage(image).astype(np.float32)
    threshold = -500.0 if modality == "CT" else 0.05 * float(np.percentile(arr, 99))
    idx = np.argwhere(arr > threshold)  # [z, y, x]
    if idx.size == 0:
        idx = np.argwhere(np.ones_like(arr, bool))
    centre = idx.mean(0)[::-1]
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre.tolist()))


def _atlas_grid() -> sitk.Image:
    n = int(ATLAS_FOV_MM / ATLAS_SPACING_MM)
    grid = sitk.Image([n] * 3, sitk.sitkFloat32)
    grid.SetSpacing((ATLAS_SPACING_MM,) * 3)
    grid.SetOrigin((-ATLAS_SPACING_MM * (n - 1) / 2,) * 3)
    return grid


class Atlas:
    """Mean label maps per task in body-centred coordinates."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self._grid = _atlas_grid()

    def add(self, image: sitk.Image, modality: str, masks: dict[str, sitk.Image]) -> None:
        """One training case: its image (for the body centre) and a binary mask per task it labels."""
        shift = sitk.TranslationTransform(3, body_centre(image, modality).tolist())
        for task, mask in masks.items():
            moved = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), self._grid, shift, sitk.sitkLinear, 0.0)
            arr = sitk.GetArrayFromImage(moved)
            self.sums[task] = self.sums.get(task, 0) + arr
            self.counts[task] = self.counts.get(task, 0) + 1

    def probability(self, task: str) -> sitk.Image:
        img = sitk.GetImageFromArray((self.sums[task] / self.counts[task]).astype(np.float32))
        img.CopyInformation(self._grid)
        return img

    def segment(self, image: sitk.Image, modality: str, tasks: Iterable[str]) -> dict[str, np.ndarray]:
        """Task -> binary array ([z, y, x] as SimpleITK's views) on ``image``'s grid."""
        shift = sitk.TranslationTransform(3, (-body_centre(image, modality)).tolist())
        out = {}
        for task in tasks:
            if task not in self.sums:
                continue
            prob = sitk.Resample(self.probability(task), image, shift, sitk.sitkLinear, 0.0)
            out[task] = sitk.GetArrayFromImage(prob) >= 0.5
        return out


def atlas_from_catalog(catalog_path: str | Path, splits: Sequence[str] = ("train",)) -> Atlas:
    """The atlas of a catalog's training cases (every dataset, every task it labels)."""
    from ..data.catalog import load_catalog
    atlas = Atlas()
    for ds in load_catalog(catalog_path).datasets:
        for split in splits:
            for case in ds.splits.get(split, []):
                image = sitk.ReadImage(str(case.image))
                label = sitk.ReadImage(str(case.label))
                lab = sitk.GetArrayViewFromImage(label)
                masks = {}
                for task in ds.tasks:
                    mask = sitk.GetImageFromArray(np.isin(lab, ds.label_map[task]).astype(np.uint8))
                    mask.CopyInformation(label)
                    masks[task] = mask
                atlas.add(image, ds.modality, masks)
    return atlas
