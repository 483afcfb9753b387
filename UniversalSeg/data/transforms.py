"""Modality-aware preprocessing and augmentation, built from MONAI transforms.

Deterministic part (cached once per case; shared with inference so both see the same numbers):
read with SimpleITK -> RAS orientation -> resample to the model spacing (image linear, label
nearest) -> modality intensity policy (CT: fixed window clip; MR/PET: 2nd-98th percentile clip;
then z-score) -> per-task binary targets for the tasks the case's dataset annotates.

Random part (training only): pad to the patch, crop a patch with class-balanced foreground
oversampling (each label value is as likely a crop centre as the background, so a small tumour is
seen as often as a big liver), optional affine (rotation, scaling) with the output cropped back to
the patch, intensity scale / shift / gamma / noise / blur. Each is switched and sized in
``AugmentationConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.config import KeysCollection
from monai.data import MetaTensor

from .image_io import read_image
from .modalities import IntensityPolicy


class LoadCased(mt.MapTransform):
    """{"image": path, "label": path or None} -> MetaTensors via SimpleITK (see image_io)."""

    def __init__(self, keys: KeysCollection = ("image", "label")):
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is not None and not isinstance(d[key], torch.Tensor):
                d[key] = read_image(d[key], label=(key == "label"))
        return d


class ModalityIntensityd(mt.MapTransform):
    """Apply the case's modality intensity policy (clip), then a per-volume z-score."""

    def __init__(self, policies: dict[str, IntensityPolicy], key: str = "image",
                 modality_key: str = "modality"):
        super().__init__([key])
        self.policies, self.key, self.modality_key = policies, key, modality_key

    def __call__(self, data):
        d = dict(data)
        d[self.key] = normalize_intensity(d[self.key], self.policies[d[self.modality_key]])
        return d


def normalize_intensity(image: torch.Tensor, policy: IntensityPolicy) -> torch.Tensor:
    if policy.kind == "window":
        image = image.clamp(policy.low, policy.high)
    else:
        image = mt.ClipIntensityPercentiles(lower=policy.low, upper=policy.high)(image)
    return mt.NormalizeIntensity()(image)


class TaskTargetsd(mt.MapTransform):
    """label -> "target" [T, ...] uint8: one binary map per task the dataset annotates.

    A task may be the union of several label values (``liver: [1, 2]``)."""

    def __init__(self, label_key: str = "label", values_key: str = "task_values"):
        super().__init__([label_key])
        self.label_key, self.values_key = label_key, values_key

    def __call__(self, data):
        d = dict(data)
        label = d[self.label_key]
        maps = [torch.isin(label[0], torch.as_tensor(vals, dtype=label.dtype)) for vals in d[self.values_key]]
        target = torch.stack(maps).to(torch.uint8)
        if isinstance(label, MetaTensor):
            target = MetaTensor(target, affine=label.affine, meta=dict(label.meta))
        d["target"] = target
        return d


def preprocessing(spacing: Sequence[float], policies: dict[str, IntensityPolicy],
                  with_label: bool = True) -> mt.Compose:
    keys = ["image", "label"] if with_label else ["image"]
    steps = [
        LoadCased(keys),
        mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys, pixdim=tuple(spacing), mode=["bilinear", "nearest"][:len(keys)]),
        ModalityIntensityd(policies),
    ]
    if with_label:
        steps.append(TaskTargetsd())
    return mt.Compose(steps)


@dataclass(frozen=True)
class AugmentationConfig:
    affine_prob: float = 0.2
    rotate_degrees: float = 15.0
    scale: float = 0.15
    intensity_prob: float = 0.15
    noise_std: float = 0.1
    foreground_ratio: float = 0.67  # share of crops centred on a labelled voxel
    low_resolution_prob: float = 0.0  # simulated thick-slice / low-resolution acquisition

    @classmethod
    def preset(cls, name: str) -> "AugmentationConfig":
        """``default`` (mild, ours) or ``reference``: the Hermes reference's spatial strength
        (p 0.5, +-30 degrees, +-30% scale) with stronger contrast changes and simulated low
        resolution (downsampled 1-2x, then back up; nnU-Net's augmentation has the same step)."""
        if name == "default":
            return cls()
        if name == "reference":
            return cls(affine_prob=0.5, rotate_degrees=30.0, scale=0.3, intensity_prob=0.3,
                       low_resolution_prob=0.25)
        raise ValueError(f"unknown augmentation preset {name!r}: 'default' or 'reference'")


def augmentation(patch: Sequence[int], aug: AugmentationConfig, num_classes: int) -> mt.Compose:
    """Random part for training: needs "image", "target" and "label" (crop centres)."""
    patch = tuple(int(p) for p in patch)
    keys = ["image", "target", "label"]
    big = tuple(int(round(p * 1.25)) for p in patch) if aug.affine_prob > 0 else patch
    fg = aug.foreground_ratio
    ratios = [1 - fg] + [fg / max(num_classes - 1, 1)] * (num_classes - 1)
    steps = [
        mt.SpatialPadd(keys, spatial_size=big),
        mt.RandCropByLabelClassesd(keys, label_key="label", spatial_size=big, ratios=ratios,
                                   num_classes=num_classes, num_samples=1, warn=False),
        mt.DeleteItemsd("label"),
    ]
    if aug.affine_prob > 0:
        rad = np.deg2rad(aug.rotate_degrees)
        steps += [
            mt.RandAffined(["image", "target"], prob=aug.affine_prob, rotate_range=(rad, rad, rad),
                           scale_range=(aug.scale,) * 3, mode=["bilinear", "nearest"],
                           padding_mode="zeros", spatial_size=big),
            mt.CenterSpatialCropd(["image", "target"], roi_size=patch),
        ]
    p = aug.intensity_prob
    if p > 0:
        steps += [
            mt.RandScaleIntensityd("image", factors=0.1, prob=p),
            mt.RandShiftIntensityd("image", offsets=0.1, prob=p),
            mt.RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=p),
            mt.RandGaussianNoised("image", std=aug.noise_std, prob=p),
            mt.RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                                   sigma_z=(0.5, 1.0), prob=p / 2),
        ]
    if aug.low_resolution_prob > 0:
        steps.append(mt.RandSimulateLowResolutiond("image", prob=aug.low_resolution_prob, zoom_range=(0.5, 1.0)))
    return mt.Compose(steps)
