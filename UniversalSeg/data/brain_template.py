"""Whole-head label maps from the one real labelled brain our dependencies ship: nilearn's MNI152.

nilearn ships the MNI152 2009c symmetric template (1 mm, skull-stripped T1: zero outside the brain)
with grey- and white-matter probability maps. ``template_tissues`` turns them into a tissue map:
inside the brain mask each voxel is CSF, grey or white matter, whichever is most probable (CSF's
probability is what the two maps leave). ``head_label_map`` then draws the layers the template
lacks around it, with random, smoothly varying thicknesses (SynthSeg-style: the network must learn
shape, not one head): an extra-cerebral CSF rim, the skull, a fat layer and the skin, then air.

    value  tissue            tasks it belongs to
    0      air               -
    1      csf (internal)    brain, csf, head
    2      gray-matter       brain, gray-matter, head
    3      white-matter      brain, white-matter, head
    4      csf (rim)         csf, head
    5      bone              head
    6      fat               head
    7      skin              head
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["LAYERS", "MARGIN_MM", "TASK_VALUES", "TISSUES", "head_label_map", "nilearn_data", "skull_stripped",
           "template_t1", "template_tissues"]

TISSUES = {0: "air", 1: "csf", 2: "gray-matter", 3: "white-matter", 4: "csf", 5: "bone", 6: "fat",
           7: "skin"}
TASK_VALUES = {"brain": [1, 2, 3], "gray-matter": [2], "white-matter": [3], "csf": [1, 4],
               "head": [1, 2, 3, 4, 5, 6, 7]}
MARGIN_MM = 24  # room for the layers outside the template's brain
# layer thickness ranges in mm (a case draws its mean, then it varies smoothly over the head)
LAYERS = (("csf rim", 4, (1.0, 4.0)), ("bone", 5, (4.0, 9.0)), ("fat", 6, (2.0, 6.0)),
          ("skin", 7, (1.5, 4.0)))


def nilearn_data() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nilearn is not installed: it ships the MNI152 template "
                                "(pip install 'universalseg[zoo]' or nilearn)")
    return Path(spec.origin).parent / "datasets" / "data"


def template_t1() -> sitk.Image:
    return sitk.ReadImage(str(nilearn_data() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
                          sitk.sitkFloat32)


def template_tissues() -> sitk.Image:
    """The template's brain as 0 outside, 1 CSF, 2 grey matter, 3 white matter (uint8, 1 mm)."""
    data = nilearn_data()
    t1 = template_t1()
    gm = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))) / 255.0
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))) / 255.0
    mask = sitk.GetArrayFromImage(t1) > 0
    prob = np.stack([np.clip(1.0 - gm - wm, 0.0, 1.0), gm, wm])
    labels = np.where(mask, prob.argmax(0) + 1, 0).astype(np.uint8)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(t1)
    return out


def _smooth_field(shape, rng: np.random.Generator, cells: int = 5) -> np.ndarray:
    """A smooth random field in [-1, 1] over ``shape``: coarse noise, linearly upsampled."""
    import torch
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 1, cells, cells, cells)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=tuple(int(s) for s in shape), mode="trilinear",
                                           align_corners=True)
    return fine[0, 0].numpy()


def head_label_map(tissues: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    """``tissues`` (from ``template_tissues``) padded by ``MARGIN_MM`` and wrapped in random
    extra-cerebral layers (values 4-7, see the module table)."""
    spacing = np.array(tissues.GetSpacing())
    pad = [int(np.ceil(MARGIN_MM / s)) for s in spacing]
    padded = sitk.ConstantPad(tissues, pad, pad, 0)
    brain = sitk.Cast(padded > 0, sitk.sitkUInt8)
    # close the brain's surface (sulci open to the outside) so the layers follow the skull's shape
    hull = sitk.BinaryMorphologicalClosing(brain, [int(round(6 / s)) for s in spacing])
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        hull, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    labels = sitk.GetArrayFromImage(padded)
    outer = np.zeros(labels.shape, np.float32)
    out = labels.copy()
    for _, value, (low, high) in LAYERS:
        mean = rng.uniform(low, high)
        thickness = np.clip(mean * (1 + 0.35 * _smooth_field(labels.shape, rng)), 0.5, None)
        inner = outer
        outer = inner + thickness
        layer = (distance > inner) & (distance <= outer) & (labels == 0)
        if value == 4:  # the rim also fills the closed sulci between brain and skull
            layer |= (distance <= 0) & (labels == 0)
        out[layer] = value
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(padded)
    return image


def skull_stripped(labels: np.ndarray) -> np.ndarray:
    """A label map as a skull-stripped image shows it: only the brain (values 1-3) left."""
    return np.where(labels <= 3, labels, 0).astype(labels.dtype)
