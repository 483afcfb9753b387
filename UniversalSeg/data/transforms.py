"""Modality-aware preprocessing and augmentation, built from MONAI transforms.

Deterministic part (cached once per case; shared with inference so both see the same numbers):
read with SimpleITK -> RAS orientation -> resample to the model spacing (image linear, label
nearest) -> modality intensity policy (CT: fixed window clip; MR: 2nd-98th percentile clip, PET 2nd-99.9th;
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
from monai.utils import convert_to_dst_type

from .image_io import read_image
from .modalities import IntensityPolicy

__all__ = ["AugmentationConfig", "ByGenerator", "GenerateFromLabelMapd", "LabelMapOnlyd", "LoadCased",
           "ModalityIntensityd", "RandGlobalIntensityNonlineard", "RandIntensityRemapd", "SynthesizeImaged",
           "TaskTargetsd", "augmentation", "normalize_intensity", "preprocessing"]


class LoadCased(mt.MapTransform):
    """{"image": path, "label": path or None} -> MetaTensors via SimpleITK (see image_io)."""

    def __init__(self, keys: KeysCollection = ("image", "label")):
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data):
        d = dict(data)
        if d.get("synthesis") and d.get("image") == d.get("label") and isinstance(d.get("label"), str):
            # a synthesize case: its label map stands in for the image (replaced in training) - read once
            d["label"] = read_image(d["label"], label=True)
            d["image"] = MetaTensor(d["label"].as_tensor().float(), affine=d["label"].affine,
                                    meta=dict(d["label"].meta))
            return d
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


class LabelMapOnlyd(mt.Transform):
    """Deterministic part for a case of a label-maps generator dataset (its record carries
    "generator"): only the label map, read, RAS, at the model spacing (nearest), cropped to its
    non-zero box plus ``margin`` voxels, stored as int16 - no image, no per-task targets (they
    are made per patch), so 20 whole-head maps cache in about 0.5 GB."""

    def __init__(self, spacing: Sequence[float], margin: int = 8):
        self.margin = margin
        self._read: dict[str, torch.Tensor] = {}
        self.steps = mt.Compose([
            LoadCased(["label"]),
            mt.Orientationd(["label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            mt.Spacingd(["label"], pixdim=tuple(spacing), mode="nearest"),
        ])

    def __call__(self, data):
        key = data.get("label")
        if isinstance(key, str) and key in self._read:  # one map in several datasets (one per modality): read once
            return {**data, "label": self._read[key], "image": None}
        d = self.steps({**data, "image": None})
        label = torch.as_tensor(d["label"])[0]
        inside = torch.nonzero(label)
        if len(inside):
            lo = (inside.amin(0) - self.margin).clamp_min(0)
            hi = torch.minimum(inside.amax(0) + self.margin + 1, torch.tensor(label.shape))
            label = label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d["label"] = label.round().to(torch.int16).contiguous()
        d["image"] = None
        if isinstance(key, str):
            self._read[key] = d["label"]  # shared, never written to (generation reads copies of boxes)
        return d


class _ByRecord(mt.Transform):
    """Preprocessing that sends label-maps generator cases to ``LabelMapOnlyd``, others to the
    image pipeline (one ``Compose`` for ``CacheDataset``, which caches the whole of it)."""

    def __init__(self, images: mt.Compose, label_maps: LabelMapOnlyd):
        self.images, self.label_maps = images, label_maps

    def __call__(self, data):
        return self.label_maps(data) if data.get("generator") else self.images(data)


def preprocessing(spacing: Sequence[float], policies: dict[str, IntensityPolicy],
                  with_label: bool = True) -> mt.Compose:
    images = _image_preprocessing(spacing, policies, with_label)
    if not with_label:
        return images
    return mt.Compose([_ByRecord(images, LabelMapOnlyd(spacing))])


def _image_preprocessing(spacing: Sequence[float], policies: dict[str, IntensityPolicy],
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
    shear: float = 0.0  # each of the six 3D shear factors in [-shear, shear] (MONAI RandAffine)
    flip_prob: float = 0.0  # left-right mirror (RAS axis 0); only where the anatomy is symmetric
    intensity_prob: float = 0.15
    noise_std: float = 0.1
    foreground_ratio: float = 0.67  # share of crops centred on a labelled voxel
    low_resolution_prob: float = 0.0  # simulated thick-slice / low-resolution acquisition
    remap_prob: float = 0.0  # random non-monotonic intensity remapping (RandIntensityRemapd)
    # the modalities remapped (empty: all); e.g. only MR, whose intensities differ between scanners,
    # and not CT, whose Hounsfield units are the same everywhere
    remap_modalities: tuple = ()
    gin_prob: float = 0.0  # random shallow convolution network on the intensities (RandGlobalIntensityNonlineard)

    def __post_init__(self):
        names = self.remap_modalities  # one name written as a string (YAML `remap_modalities: MR-T1`)
        names = (names,) if isinstance(names, str) else names
        object.__setattr__(self, "remap_modalities", tuple(str(m) for m in names))

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


class SynthesizeImaged(mt.Randomizable, mt.MapTransform):
    """For a case of a ``synthesize`` dataset (its record carries "synthesis": {value: tissue}):
    deform its label map (a smooth random displacement on a coarse grid, as SynthSeg's; one in
    five times keep only the brain values 1-3, as a skull-stripped image shows), draw a new image
    from it (``data.synthesis``), normalize it with the modality's intensity policy like any image,
    and recompute the task targets from the deformed labels. Other cases pass through untouched."""

    def __init__(self, policies: dict[str, IntensityPolicy], spacing: Sequence[float],
                 max_displacement: float = 3.0, strip_prob: float = 0.2):
        mt.MapTransform.__init__(self, ["image", "target", "label"])
        self.policies, self.spacing = policies, tuple(float(s) for s in spacing)
        self.max_displacement, self.strip_prob = max_displacement, strip_prob

    def randomize(self, data=None):
        self.seed = int(self.R.randint(2 ** 31))

    def __call__(self, data):
        if not data.get("synthesis"):
            return data
        from .synthesis import synthesize
        self.randomize()
        rng = np.random.default_rng(self.seed)
        d = dict(data)
        label = torch.as_tensor(d["label"])[0].float()
        shape = label.shape
        if self.max_displacement > 0:  # coarse random field -> smooth dense displacement (voxels)
            coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 5, 5, 5)).astype(np.float32))
            flow = torch.nn.functional.interpolate(coarse, size=tuple(shape), mode="trilinear",
                                                   align_corners=True) * self.max_displacement
            axes = [torch.linspace(-1, 1, n) for n in shape]
            grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (d, h, w) order
            scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape])
            grid = grid + flow[0].permute(1, 2, 3, 0) * scale
            label = torch.nn.functional.grid_sample(label[None, None], grid.flip(-1)[None], mode="nearest",
                                                    padding_mode="border", align_corners=True)[0, 0]
        if rng.uniform() < self.strip_prob:
            label = torch.where(label <= 3, label, torch.zeros_like(label))
        tissues = {int(k): v for k, v in d["synthesis"].items()}
        image = synthesize(label, tissues, d["modality"], self.spacing, rng)
        image = normalize_intensity(image[None], self.policies[d["modality"]])
        d["image"] = MetaTensor(image, affine=getattr(d["image"], "affine", None)) \
            if isinstance(d["image"], MetaTensor) else image
        values = [torch.as_tensor(v, dtype=label.dtype) for v in d["task_values"]]
        d["target"] = torch.stack([torch.isin(label, v) for v in values]).to(torch.uint8)
        d["label"] = label[None]
        return d


class GenerateFromLabelMapd(mt.Randomizable, mt.Transform):
    """A cached label-maps case (``LabelMapOnlyd``) -> a training patch: ``label_synthesis.generate``
    (crop + affine + elastic, left/right flip with label swap, a SynthSeg-style image), the image
    normalized with the modality's intensity policy like any image, the task targets from the
    patch's labels (a look-up table)."""

    def __init__(self, patch: Sequence[int], policies: dict[str, IntensityPolicy], spacing: Sequence[float]):
        self.patch, self.policies = tuple(int(p) for p in patch), policies
        self.spacing = tuple(float(s) for s in spacing)
        self._settings: dict = {}

    def settings(self, raw: dict):
        from .label_synthesis import GeneratorSettings
        key = id(raw)
        if key not in self._settings:
            self._settings[key] = GeneratorSettings.from_dict(raw)
        return self._settings[key]

    def __call__(self, data):
        from .label_synthesis import generate, targets
        rng = np.random.default_rng(int(self.R.randint(2 ** 31)))
        d = dict(data)
        labels, image = generate(torch.as_tensor(d["label"]), self.settings(d["generator"]), d["modality"],
                                 self.patch, self.spacing, rng)
        d["image"] = MetaTensor(normalize_intensity(image[None], self.policies[d["modality"]]))
        d["target"] = MetaTensor(targets(labels, d["task_values"]))
        d.pop("label", None)
        return d


class ByGenerator(mt.Randomizable):
    """Random part: label-maps generator cases through ``GenerateFromLabelMapd``, others through
    the usual augmentation (``None`` when there are none); one seed sets both."""

    def __init__(self, others, generated: GenerateFromLabelMapd):
        self.others, self.generated = others, generated

    def set_random_state(self, seed=None, state=None):
        for t in (self.others, self.generated):
            if t is not None:
                t.set_random_state(seed=seed, state=state)
        return self

    def randomize(self, data=None):
        pass

    def __call__(self, data):
        return self.generated(data) if data.get("generator") else self.others(data)


class RandIntensityRemapd(mt.RandomizableTransform, mt.MapTransform):
    """Random intensity remapping for domain transfer (Ivanovska et al. 2020, "Intensity
    augmentation for domain transfer of whole breast segmentation in MRI"): each intensity goes
    through a random, smooth, generally NON-monotonic curve (random values averaged over a window,
    plus a linear part of random sign), rescaled to the patch's own range, so tissue ORDER
    changes and the network must rely on shape and context. Written here rather than MONAI's
    ``RandIntensityRemap`` because that one draws its curves from an unseeded random state (no
    reproducible or resumable training) and rescales to [min, max + min] instead of [min, max]."""

    def __init__(self, keys, prob: float = 0.25, points: int = 16, window: int = 4, slope: float = 0.7,
                 modalities: Sequence[str] = (), modality_key: str = "modality"):
        """``modalities``: remap only cases of these modalities (empty: every case)."""
        mt.MapTransform.__init__(self, keys)
        mt.RandomizableTransform.__init__(self, prob)
        self.points, self.window, self.slope = points, window, slope
        self.modalities, self.modality_key = frozenset(modalities), modality_key

    def curve(self) -> torch.Tensor:
        """``points`` values over the patch's range: a moving average of uniform noise plus a line
        of random slope in [-slope, slope]; most curves reorder some tissues (5 evenly spaced
        intensities: 88 % of 200 seeds, measured ad hoc; the test holds 10-19 of 20)."""
        noise = torch.from_numpy(self.R.uniform(0, 1, self.points + self.window - 1).astype(np.float32))
        curve = noise.unfold(0, self.window, 1).mean(1)
        curve = curve + float(self.R.uniform(-self.slope, self.slope)) * torch.linspace(0, 1, self.points)
        return (curve - curve.min()) / (curve.max() - curve.min()).clamp_min(1e-6)

    def __call__(self, data):
        self.randomize(None)
        if not self._do_transform or (self.modalities and data.get(self.modality_key) not in self.modalities):
            return data
        d = dict(data)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key])
            lo, hi = img.min(), img.max()
            curve = self.curve()
            pos = ((img - lo) / (hi - lo).clamp_min(1e-6) * (self.points - 1)).float()
            i0 = pos.floor().clamp(0, self.points - 2).long()
            w = pos - i0
            mapped = (curve[i0] * (1 - w) + curve[i0 + 1] * w) * (hi - lo) + lo
            d[key] = convert_to_dst_type(mapped, dst=d[key])[0]  # a new tensor: crops may be views of the cache
        return d


class RandGlobalIntensityNonlineard(mt.RandomizableTransform, mt.MapTransform):
    """GIN-style augmentation (global intensity non-linear augmentation; Ouyang et al., "Causality-
    inspired single-source domain generalization for medical image segmentation", IEEE TMI 2022;
    reference: cheng-01037/Causality-Medical-Image-Domain-Generalization, models/imagefilter3d.py):
    the image goes through a freshly drawn shallow convolution network - ``layers`` convolutions,
    ``hidden`` channels, each kernel 1x1x1 or 3x3x3 at random, weights and biases N(0, 1), leaky ReLU
    between them - and the result is mixed with the image by a random weight in [0, 1] and scaled
    back to the image's Frobenius norm. Unlike an intensity curve (RandIntensityRemapd) the new
    intensity of a voxel depends on its neighbourhood too, so textures and edges change as well as
    tissue order; the network must rely on shape. What differs from the reference: it runs on one
    patch in the data pipeline (the reference augments the GPU batch), draws from the transform's
    seeded state (reproducible and resumable training), and without the reference's IPA (its
    random bias-field blending) and consistency loss."""

    def __init__(self, keys, prob: float = 0.5, layers: int = 4, hidden: int = 2, kernels: Sequence[int] = (1, 3)):
        mt.MapTransform.__init__(self, keys)
        mt.RandomizableTransform.__init__(self, prob)
        self.layers, self.hidden, self.kernels = layers, hidden, tuple(kernels)

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """x [C, X, Y, Z] -> the random network's output, same shape."""
        g = torch.Generator().manual_seed(int(self.R.randint(2 ** 31)))
        channels = x.shape[0]
        h = x[None].float()
        for i in range(self.layers):
            last = i == self.layers - 1
            out = channels if last else self.hidden
            k = self.kernels[int(torch.randint(len(self.kernels), (1,), generator=g))]
            weight = torch.randn(out, h.shape[1], k, k, k, generator=g)
            bias = torch.randn(out, generator=g)
            h = torch.nn.functional.conv3d(h, weight, bias, padding=k // 2)
            if not last:
                h = torch.nn.functional.leaky_relu(h)
        return h[0]

    def __call__(self, data):
        self.randomize(None)
        if not self._do_transform:
            return data
        d = dict(data)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key]).float()
            alpha = float(self.R.uniform(0, 1))
            mixed = alpha * self.network(img) + (1 - alpha) * img
            mixed = mixed * (img.norm() / mixed.norm().clamp_min(1e-5))
            d[key] = convert_to_dst_type(mixed, dst=d[key])[0]
        return d


def augmentation(patch: Sequence[int], aug: AugmentationConfig, num_classes: int,
                 synthesis=None) -> mt.Compose:
    """Random part for training: needs "image", "target" and "label" (crop centres).
    ``synthesis``: (intensity policies, model spacing) when some cases draw their images from
    their label maps (``SynthesizeImaged`` runs after the spatial part, before intensities)."""
    patch = tuple(int(p) for p in patch)
    keys = ["image", "target", "label"]
    big = tuple(int(round(p * 1.25)) for p in patch) if aug.affine_prob > 0 else patch
    fg = aug.foreground_ratio
    ratios = [1 - fg] + [fg / max(num_classes - 1, 1)] * (num_classes - 1)
    steps = [
        mt.SpatialPadd(keys, spatial_size=big),
        mt.RandCropByLabelClassesd(keys, label_key="label", spatial_size=big, ratios=ratios,
                                   num_classes=num_classes, num_samples=1, warn=False),
    ]
    # a synthesized case needs its label map after the spatial part: it is deformed alike
    spatial = ["image", "target", "label"] if synthesis else ["image", "target"]
    if not synthesis:
        steps.append(mt.DeleteItemsd("label"))
    if aug.affine_prob > 0:
        rad = np.deg2rad(aug.rotate_degrees)
        steps += [
            mt.RandAffined(spatial, prob=aug.affine_prob, rotate_range=(rad, rad, rad),
                           scale_range=(aug.scale,) * 3, shear_range=(aug.shear,) * 6 if aug.shear else None,
                           mode=["bilinear", "nearest", "nearest"][:len(spatial)],
                           padding_mode="zeros", spatial_size=big),
            mt.CenterSpatialCropd(spatial, roi_size=patch),
        ]
    if aug.flip_prob > 0:  # patches are RAS after preprocessing: axis 0 is left-right
        steps.append(mt.RandFlipd(spatial, prob=aug.flip_prob, spatial_axis=0))
    if synthesis:
        steps += [SynthesizeImaged(*synthesis), mt.DeleteItemsd("label")]
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
    if aug.remap_prob > 0:
        steps.append(RandIntensityRemapd("image", prob=aug.remap_prob, modalities=aug.remap_modalities))
    if aug.gin_prob > 0:
        steps.append(RandGlobalIntensityNonlineard("image", prob=aug.gin_prob))
    if aug.low_resolution_prob > 0:
        steps.append(mt.RandSimulateLowResolutiond("image", prob=aug.low_resolution_prob, zoom_range=(0.5, 1.0)))
    return mt.Compose(steps)
