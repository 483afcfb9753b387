"""Whole-abdomen tissue maps built around real, manually labelled abdominal organs (AMOS 2022).

An AMOS label map (15 organs drawn by people on a real CT) says where the organs are, but not the
body they lie in: no fat, muscle, bone, lung or bowel. An image drawn from the organs alone would
show them on an empty background, which no scan has, and a model trained on it would never have
seen a rib beside the liver or a psoas muscle beside a kidney. ``tissue_map`` adds that context
around the real organs, placed from them, on a 2 mm grid (LPS axes: index x -> patient left,
y -> posterior, z -> superior):

- the **body**: an elliptic cylinder around the organs (22 mm beyond the organs to the front and
  sides, 100 mm behind the aorta), with subcutaneous fat (15 mm) and a muscle wall (12 mm);
- the **spine** behind the aorta, slice by slice (vertebral body, posterior elements around the
  spinal canal, an intervertebral disc every 30 mm), paraspinal muscles behind it, the psoas
  muscles beside it below the kidneys' middle, iliac wings and gluteal muscles in the pelvis and
  ribs in the wall above the kidneys' middle;
- **perirenal fat** around each kidney;
- the **lungs** above a smoothed diaphragm dome (the tops of liver, spleen and stomach), with the
  **heart** above the dome's middle;
- the rest of the abdominal cavity is ``VISCERAL``: fat and bowel, textured per case by
  ``abdomen_collection`` (no two cases share a bowel pattern).

Sizes are those of an adult abdomen (CT anatomy texts: abdominal wall 10-15 mm of muscle,
vertebral body about 35 mm deep); the shapes are simple on purpose. The organ labels keep their
AMOS values (1-15); context tissues take the values below.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

AMOS_ORGANS = {1: "spleen", 2: "kidney-right", 3: "kidney-left", 4: "gallbladder", 5: "esophagus", 6: "liver",
               7: "stomach", 8: "aorta", 9: "inferior-vena-cava", 10: "pancreas", 11: "adrenal-right",
               12: "adrenal-left", 13: "duodenum", 14: "bladder", 15: "prostate-uterus"}
ORGAN_VALUE = {name: value for value, name in AMOS_ORGANS.items()}
# context tissues (values after the organs')
SUBCUTANEOUS_FAT, MUSCLE, VISCERAL, BONE, LUNG, HEART, PERIRENAL_FAT, DISC = range(16, 24)
CONTEXT = {SUBCUTANEOUS_FAT: "subcutaneous-fat", MUSCLE: "muscle", VISCERAL: "visceral", BONE: "bone",
           LUNG: "lung", HEART: "heart", PERIRENAL_FAT: "perirenal-fat", DISC: "disc"}
TISSUE_NAMES = {0: "air", **AMOS_ORGANS, **CONTEXT}
SPACING_MM = 2.0
TOP_MARGIN_MM = 100.0  # added above the label map (lungs, heart)


@dataclass
class TissueMap:
    """A tissue map (uint8, [x, y, z], LPS-aligned axes, ``SPACING_MM``) and where it lies."""
    values: np.ndarray
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0)
    source: str

    @property
    def spacing(self) -> np.ndarray:
        return np.full(3, SPACING_MM)

    def image(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.values.transpose(2, 1, 0)))
        img.SetSpacing((SPACING_MM,) * 3)
        img.SetOrigin(tuple(float(o) for o in self.origin))
        return img

    def organ_centre(self) -> np.ndarray:
        """LPS mm of the centre of liver, spleen and kidneys together (the cases' field of view
        is placed around it)."""
        mask = np.isin(self.values, [ORGAN_VALUE[n] for n in ("liver", "spleen", "kidney-left", "kidney-right")])
        return self.origin + np.argwhere(mask).mean(0) * SPACING_MM


def resample_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map resampled to ``SPACING_MM`` on LPS-aligned axes (label-Gaussian interpolation:
    smooth across AMOS's 5 mm slices instead of a staircase) -> (values [x, y, z], origin)."""
    img = sitk.ReadImage(str(path))
    img = sitk.Cast(img, sitk.sitkUInt8)
    corners = [img.TransformContinuousIndexToPhysicalPoint([c * (n - 1) for c, n in zip(corner, img.GetSize())])
               for corner in np.ndindex(2, 2, 2)]
    low, high = np.min(corners, 0), np.max(corners, 0)
    size = [int(np.ceil((h - l) / SPACING_MM)) + 1 for l, h in zip(low, high)]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing((SPACING_MM,) * 3)
    ref.SetOrigin(tuple(float(v) for v in low))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLabelGaussian, 0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0), low


def _mm(value: float) -> float:
    return value / SPACING_MM


def _ellipse(shape, centre, radii) -> np.ndarray:
    """[x, y] mask of an axis-aligned ellipse (voxel units)."""
    x, y = np.ogrid[:shape[0], :shape[1]]
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 <= 1.0


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    x, y, z = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
            + ((z - centre[2]) / radii[2]) ** 2) <= 1.0


def _per_slice_centre(mask: np.ndarray) -> np.ndarray:
    """[z, 2] x, y centre of ``mask`` per slice, filled from the nearest slices where it is empty."""
    nz = mask.shape[2]
    counts = mask.sum((0, 1))
    xs = np.arange(mask.shape[0])[:, None, None]
    ys = np.arange(mask.shape[1])[None, :, None]
    have = counts > 0
    cx = np.where(have, (mask * xs).sum((0, 1)) / np.maximum(counts, 1), np.nan)
    cy = np.where(have, (mask * ys).sum((0, 1)) / np.maximum(counts, 1), np.nan)
    z = np.arange(nz)
    return np.stack([np.interp(z, z[have], cx[have]), np.interp(z, z[have], cy[have])], 1)


def build_context(organs: np.ndarray) -> np.ndarray:
    """The tissue map of ``organs`` (AMOS values, [x, y, z] at ``SPACING_MM``): see the module
    docstring. Organs keep their values; every other voxel gets a context tissue or air (0)."""
    shape = organs.shape
    nx, ny, nz = shape
    main = np.isin(organs, [ORGAN_VALUE[n] for n in ("liver", "spleen", "kidney-left", "kidney-right", "stomach")])
    kidneys = np.isin(organs, [ORGAN_VALUE["kidney-left"], ORGAN_VALUE["kidney-right"]])
    ix = np.argwhere(main)
    x_low, x_high = ix[:, 0].min(), ix[:, 0].max()
    y_front = np.argwhere(organs > 0)[:, 1].min()
    kz = np.argwhere(kidneys)[:, 2]
    kidney_mid, kidney_low = int(np.median(kz)), int(kz.min())
    aorta = _per_slice_centre(organs == ORGAN_VALUE["aorta"])  # [z, 2]
    band = slice(max(kz.min(), 0), kz.max() + 1)
    y_aorta = float(np.median(aorta[band, 1]))
    # the body: an elliptic cylinder
    centre = ((x_low + x_high) / 2, (y_front - _mm(22) + y_aorta + _mm(100)) / 2)
    radii = ((x_high - x_low) / 2 + _mm(22), (y_aorta + _mm(100) - y_front + _mm(22)) / 2)
    body2d = _ellipse(shape, centre, radii)
    wall2d = _ellipse(shape, centre, (radii[0] - _mm(15), radii[1] - _mm(15)))
    cavity2d = _ellipse(shape, centre, (radii[0] - _mm(27), radii[1] - _mm(27)))
    out = np.zeros(shape, np.uint8)
    out[body2d] = SUBCUTANEOUS_FAT
    out[wall2d] = MUSCLE
    out[cavity2d] = VISCERAL
    x, y = np.ogrid[:nx, :ny]
    # the lungs above a smooth diaphragm dome, the heart above its middle
    top = np.where(main.any(2), nz - 1 - np.argmax(main[:, :, ::-1], axis=2), -1).astype(float)
    liver_top = float(top.max())
    top[top < 0] = liver_top - _mm(60)  # lateral and posterior recesses reach lower
    dome = ndimage.gaussian_filter(top, _mm(12))
    z = np.arange(nz)[None, None, :]
    lung = cavity2d[:, :, None] & (z > dome[:, :, None] + _mm(4))
    out[lung] = LUNG
    heart_centre = (centre[0] + _mm(25), y_front + _mm(60), liver_top + _mm(50))
    heart = _ellipsoid(shape, heart_centre, (_mm(55), _mm(45), _mm(50))) & cavity2d[:, :, None]
    out[heart] = HEART
    # the spine, slice by slice behind the aorta (x: 10 mm to the patient's right of it)
    for k in range(nz):
        sx, sy = aorta[k, 0] - _mm(10), aorta[k, 1] + _mm(28)
        muscles = ((np.abs(x - sx) <= _mm(45)) & (y >= sy) & (y <= sy + _mm(75))) & wall2d
        out[:, :, k][muscles] = MUSCLE
        if k < kidney_mid:  # the psoas muscles, growing towards the pelvis
            r = _mm(8) + (kidney_mid - k) / max(kidney_mid, 1) * _mm(14)
            for side in (-1, 1):
                out[:, :, k][_ellipse(shape[:2], (sx + side * _mm(38), sy), (r, r))] = MUSCLE
        disc = (k * SPACING_MM) % 30.0 < 6.0
        out[:, :, k][_ellipse(shape[:2], (sx, sy), (_mm(17), _mm(15)))] = DISC if disc else BONE
        arch = _ellipse(shape[:2], (sx, sy + _mm(30)), (_mm(22), _mm(12)))
        canal = _ellipse(shape[:2], (sx, sy + _mm(25)), (_mm(8), _mm(7)))
        out[:, :, k][arch & ~canal] = BONE
    # ribs in the wall above the kidneys' middle (oblique bands, none in front)
    angle = np.arctan2((y - centre[1]) / radii[1], (x - centre[0]) / radii[0])  # 0 at the left side
    ring = wall2d & ~cavity2d & (np.abs(angle + np.pi / 2) > np.pi / 5)  # -pi/2 is the front (-y)
    zmm = np.arange(nz)[None, None, :] * SPACING_MM
    ribs = ring[:, :, None] & (((zmm + 12.0 * angle[:, :, None]) % 28.0) < 9.0) & (z > kidney_mid)
    out[ribs] = BONE
    # gluteal muscles behind the pelvis, iliac wings in front of them, below the kidneys
    for side in (-1, 1):
        gluteus = (centre[0] + side * 0.45 * radii[0], y_aorta + _mm(60), kidney_low - _mm(130))
        out[_ellipsoid(shape, gluteus, (_mm(50), _mm(40), _mm(70))) & wall2d[:, :, None]] = MUSCLE
        wing = (centre[0] + side * 0.62 * radii[0], y_aorta + _mm(20), kidney_low - _mm(70))
        out[_ellipsoid(shape, wing, (_mm(11), _mm(45), _mm(50))) & body2d[:, :, None]] = BONE
    perirenal = ndimage.binary_dilation(kidneys, iterations=3) & (organs == 0)
    out[perirenal] = PERIRENAL_FAT
    # every organ voxel keeps its organ, inside a body that holds it
    out[organs > 0] = organs[organs > 0]
    near = ndimage.binary_dilation(organs > 0, iterations=3) & (out == 0)  # an organ at the body's edge
    out[near] = SUBCUTANEOUS_FAT
    return out


def tissue_map(path: str | Path) -> TissueMap:
    """The tissue map of one AMOS-style label map (values 1-15 as ``AMOS_ORGANS``)."""
    organs, origin = resample_labels(path)
    # AMOS scans often begin at the liver's dome: room above it for the lungs and the heart
    organs = np.pad(organs, ((0, 0), (0, 0), (0, int(_mm(TOP_MARGIN_MM)))))
    unknown = sorted(set(np.unique(organs).tolist()) - set(AMOS_ORGANS) - {0})
    if unknown:
        raise ValueError(f"{path}: label values {unknown} are not AMOS organs (1-15)")
    return TissueMap(build_context(organs), np.asarray(origin, float), Path(path).name)
