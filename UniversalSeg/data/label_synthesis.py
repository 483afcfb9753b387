"""Training images drawn from real label maps, as SynthSeg does it (Billot et al., MedIA 2023).

One call of ``generate`` turns a whole label map (int, RAS, at the model's spacing) into a
training pair at the patch size: labels (int16) and an image (float32; MR in [0, 1], CT in HU).
Every step is a handful of whole-tensor torch operations (no per-voxel Python, no per-label loop
over voxels: intensities come from look-up tables indexed by the label map):

1. **spatial**: a random crop centre, a random affine (rotation, scaling, shearing) and an elastic
   displacement (a coarse random field, trilinearly upsampled), composed into ONE sampling grid
   and applied to the label map once (nearest neighbour; only the box the grid reaches is read);
2. **flip**: left-right (RAS axis 0) with probability ``flip``, and every left label swapped with
   its right twin (``mirror``), so "left hippocampus" stays the subject's left;
3. **intensities**: one Gaussian per label value, mean and standard deviation drawn from uniform
   priors. Fully random contrasts (SynthSeg's own: any tissue order) with probability
   ``random_contrast``, otherwise modality-shaped ones: each label's tissue class draws its mean
   from the modality's range (``PRIORS``: MR-T1/T2/FLAIR/PD relative units, CT in Hounsfield units);
4. **acquisition**: a resolution per axis in ``resolution`` mm (1-9 mm), the blur that goes with it
   (sigma = 0.75 x resolution / spacing, SynthSeg's rule), down-sampling to that resolution and
   trilinear up-sampling back; a smooth multiplicative bias field, a gamma change, noise.

Where this differs from SynthSeg, and why:

- Modality-shaped contrasts besides the fully random ones: our network takes a modality prior
  (MR-T1, CT, ...) as input, and the prior only means something if images of that modality look
  like it. A fully random contrast keeps its dataset's modality id: the network must not trust the
  prior blindly either.
- CT keeps Hounsfield units (no bias field, no gamma, noise in HU): CT is calibrated, and the CT
  intensity policy (a fixed window) must see HU as at prediction time.
- The elastic field is a smooth displacement, not an integrated stationary velocity field:
  SynthSeg integrates to guarantee a diffeomorphism; at the displacement sizes used here (a few mm
  over a coarse grid) folds are rare, and integration costs 7 extra resamplings of the field.
- Noise is also added AFTER the acquisition (SynthSeg's only noise is the per-label Gaussian,
  blurred with the image): a real scan's noise is white at its own voxel size.
- With probability ``strip`` the head (values >= ``head_from``) is removed, as a skull-stripped
  image shows it (the real benchmark images, MNI152 and brain-t1-example, are skull-stripped);
  SynthSeg leaves this to its image-level cropping of the skull.

All randomness comes from the numpy ``Generator`` passed in (one torch ``Generator`` seeded from
it for the voxel-wise noise): the same seed gives the same pair, bit for bit, on one machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["PRIORS", "TISSUE_CLASSES", "GeneratorSettings", "acquisition_resolution", "draw_image", "flip_left_right",
           "generate", "mirror_table", "spatial_sample", "strip_head", "targets", "task_table"]

# tissue class -> (low, high) of its mean intensity per modality (MR: relative units of a
# [0, 1] image; CT: Hounsfield units). Ranges are wide on purpose (scanners and sequences differ)
# but keep each modality's usual tissue order.
PRIORS: dict[str, dict[str, tuple[float, float]]] = {
    "MR-T1": {"background": (0.0, 0.05), "csf": (0.05, 0.25), "gray-matter": (0.35, 0.55),
              "deep-gray": (0.45, 0.65), "white-matter": (0.6, 0.85), "vessel": (0.2, 0.8),
              "eye": (0.05, 0.25), "bone": (0.02, 0.2), "fat": (0.7, 1.0), "skin": (0.3, 0.6),
              "soft-tissue": (0.25, 0.6)},
    "MR-T2": {"background": (0.0, 0.05), "csf": (0.75, 1.0), "gray-matter": (0.4, 0.6),
              "deep-gray": (0.3, 0.5), "white-matter": (0.22, 0.4), "vessel": (0.05, 0.6),
              "eye": (0.75, 1.0), "bone": (0.02, 0.12), "fat": (0.45, 0.8), "skin": (0.3, 0.5),
              "soft-tissue": (0.2, 0.45)},
    "MR-FLAIR": {"background": (0.0, 0.05), "csf": (0.02, 0.15), "gray-matter": (0.5, 0.75),
                 "deep-gray": (0.45, 0.65), "white-matter": (0.35, 0.55), "vessel": (0.05, 0.6),
                 "eye": (0.02, 0.2), "bone": (0.02, 0.12), "fat": (0.55, 0.9), "skin": (0.3, 0.5),
                 "soft-tissue": (0.25, 0.5)},
    "MR-PD": {"background": (0.0, 0.05), "csf": (0.65, 0.95), "gray-matter": (0.6, 0.8),
              "deep-gray": (0.55, 0.72), "white-matter": (0.45, 0.62), "vessel": (0.1, 0.7),
              "eye": (0.65, 0.95), "bone": (0.03, 0.15), "fat": (0.7, 0.95), "skin": (0.5, 0.7),
              "soft-tissue": (0.4, 0.65)},
    "CT": {"background": (-1000.0, -950.0), "csf": (0.0, 15.0), "gray-matter": (32.0, 46.0),
           "deep-gray": (30.0, 44.0), "white-matter": (20.0, 32.0), "vessel": (35.0, 60.0),
           "eye": (0.0, 20.0), "bone": (500.0, 1600.0), "fat": (-120.0, -60.0), "skin": (10.0, 60.0),
           "soft-tissue": (20.0, 70.0)},
}
TISSUE_CLASSES = tuple(PRIORS["MR-T1"])


@dataclass(frozen=True)
class GeneratorSettings:
    """What a catalog's ``synthesize: {generator: label-maps, ...}`` block sets (defaults:
    SynthSeg's where it has one)."""
    tissues: dict  # label value -> tissue class (modality-shaped contrasts); every value of the maps
    mirror: dict = field(default_factory=dict)  # label value -> its left/right twin (both ways)
    random_contrast: float = 0.5  # share of fully random contrasts (MR only: CT keeps HU)
    rotate_degrees: float = 15.0  # SynthSeg: 15
    scale: float = 0.2  # SynthSeg: 0.2
    shear: float = 0.012  # SynthSeg: 0.012
    elastic_mm: float = 4.0  # std of the coarse displacement field, drawn in [0, elastic_mm] (SynthSeg: 4)
    elastic_cells: int = 5  # the coarse field's grid per axis
    flip: float = 0.5
    resolution: tuple = (1.0, 9.0)  # acquisition resolution range per axis, mm
    lowres_prob: float = 0.8  # share of images acquired below the model's resolution
    bias_std: float = 0.5  # SynthSeg: 0.7 (ours: 0.5, measured on no real image; a smaller field
    #                        keeps the MR percentile clip of preprocessing meaningful)
    gamma_std: float = 0.4  # log-gamma std (SynthSeg: 0.5)
    noise: float = 0.03  # max std of the acquisition noise (MR: of the [0, 1] range; CT: x 330 HU)
    strip: float = 0.15  # share of skull-stripped images (head values removed)
    head_from: int = 500  # label values >= this are the head around the brain

    @classmethod
    def from_dict(cls, data: dict, where: str = "synthesize") -> "GeneratorSettings":
        if not isinstance(data, dict):
            raise InputError(f"{where}: must be a mapping")
        data = {k: v for k, v in data.items() if k != "generator"}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        tissues = data.get("tissues")
        if not isinstance(tissues, dict) or not tissues:
            raise InputError(f"{where}: 'tissues' must map label values to tissue classes {list(TISSUE_CLASSES)}")
        clean = {}
        for k, v in tissues.items():
            if isinstance(k, bool) or not str(k).isdigit() or v not in TISSUE_CLASSES:
                raise InputError(f"{where}: tissues maps label values (0, 1, ...) to one of "
                                 f"{list(TISSUE_CLASSES)}, got {k!r}: {v!r}")
            clean[int(k)] = str(v)
        mirror = {}
        raw_mirror = data.get("mirror", {})
        if not isinstance(raw_mirror, dict):
            raise InputError(f"{where}: 'mirror' must map a left label value to its right twin")
        for k, v in raw_mirror.items():
            if isinstance(k, bool) or isinstance(v, bool) or not str(k).isdigit() or not str(v).isdigit():
                raise InputError(f"{where}: mirror maps label values to label values, got {k!r}: {v!r}")
            a, b = int(k), int(v)
            if mirror.get(a, b) != b or mirror.get(b, a) != a:
                raise InputError(f"{where}: mirror: label {a} or {b} has two twins")
            mirror[a], mirror[b] = b, a
        out = {**data, "tissues": clean, "mirror": mirror}
        for key in ("random_contrast", "flip", "lowres_prob", "strip"):
            value = out.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise InputError(f"{where}: {key} must be a probability in [0, 1], got {value!r}")
        if "resolution" in out:
            r = out["resolution"]
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r)
                    and 0 < r[0] <= r[1] <= 20):
                raise InputError(f"{where}: resolution must be [low, high] mm with 0 < low <= high <= 20, got {r!r}")
            out["resolution"] = (float(r[0]), float(r[1]))
        return cls(**out)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["tissues"] = {int(k): v for k, v in self.tissues.items()}
        d["mirror"] = {int(k): int(v) for k, v in self.mirror.items() if int(k) < int(v)}
        d["resolution"] = list(self.resolution)
        return d

    def lut_size(self) -> int:
        return max([*self.tissues, *self.mirror, self.head_from]) + 1


def mirror_table(settings: GeneratorSettings, size: int) -> torch.Tensor:
    lut = torch.arange(size, dtype=torch.long)
    for a, b in settings.mirror.items():
        if a < size and b < size:
            lut[a] = b
    return lut


def flip_left_right(labels: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Mirror a [X, Y, Z] RAS label map across the mid-sagittal plane: axis 0 reversed and every
    left label given its right twin's value (and vice versa)."""
    return lut[labels.flip(0).long()].to(labels.dtype)


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def spatial_sample(labels: torch.Tensor, patch: Sequence[int], spacing: Sequence[float],
                   settings: GeneratorSettings, rng: np.random.Generator) -> torch.Tensor:
    """A ``patch``-sized int16 label crop of ``labels`` [X, Y, Z] through a random affine and
    elastic deformation (one grid, one nearest-neighbour sampling of only the box it reaches)."""
    shape = np.array(labels.shape)
    patch = np.array([int(p) for p in patch])
    spacing = np.asarray(spacing, float)
    # crop centre: uniform where a whole patch fits, else the middle of the axis
    low = np.minimum(patch / 2, shape / 2)
    centre = low + rng.uniform(0, 1, 3) * np.maximum(shape - 2 * low, 0)
    matrix = _rotation(np.deg2rad(rng.uniform(-settings.rotate_degrees, settings.rotate_degrees, 3)))
    matrix = matrix @ np.diag(rng.uniform(1 - settings.scale, 1 + settings.scale, 3))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-settings.shear, settings.shear, 3)
    shear[np.tril_indices(3, -1)] = rng.uniform(-settings.shear, settings.shear, 3)
    matrix = matrix @ shear
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in patch]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # [P, P, P, 3] voxel offsets
    grid = grid @ torch.from_numpy(matrix.T.astype(np.float32)) + torch.from_numpy(centre.astype(np.float32))
    if settings.elastic_mm > 0:
        std = rng.uniform(0, settings.elastic_mm) / spacing  # in voxels, per axis
        n = settings.elastic_cells
        coarse = rng.standard_normal((1, 3, n, n, n)) * std[None, :, None, None, None]
        flow = F.interpolate(torch.from_numpy(coarse.astype(np.float32)), size=tuple(int(p) for p in patch),
                             mode="trilinear", align_corners=True)[0]
        grid = grid + flow.permute(1, 2, 3, 0)
    # read only the box the grid reaches (the rest of the map is never converted or touched)
    lo = np.clip(np.floor(grid.reshape(-1, 3).amin(0).numpy()).astype(int) - 1, 0, shape - 1)
    hi = np.clip(np.ceil(grid.reshape(-1, 3).amax(0).numpy()).astype(int) + 2, lo + 1, shape)
    box = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].float()
    size = torch.tensor([max(int(high - low) - 1, 1) for low, high in zip(lo, hi)], dtype=torch.float32)
    norm = (grid - torch.from_numpy(lo.astype(np.float32))) / size * 2 - 1  # align_corners=True
    out = F.grid_sample(box[None, None], norm.flip(-1)[None], mode="nearest", padding_mode="zeros",
                        align_corners=True)[0, 0]
    return out.round().to(torch.int16)


def _tables(settings: GeneratorSettings, modality: str, rng: np.random.Generator, size: int):
    """Mean and standard deviation per label value (look-up tables of ``size``)."""
    ct = modality == "CT"
    priors = PRIORS[modality]
    means = np.zeros(size, np.float32)
    stds = np.zeros(size, np.float32)
    values = sorted(v for v in settings.tissues if v < size)
    if not ct and rng.uniform() < settings.random_contrast:  # SynthSeg's: any tissue order
        means[values] = rng.uniform(0.1, 0.9, len(values))  # SynthSeg: U(25, 225) of 255
        stds[values] = rng.uniform(0.02, 0.1, len(values))  # SynthSeg: U(5, 25) of 255
        return means, stds, True
    class_mean = {t: rng.uniform(*priors[t]) for t in TISSUE_CLASSES}
    for v in values:  # each label its own Gaussian around its tissue's mean of this image
        low, high = priors[settings.tissues[v]]
        means[v] = class_mean[settings.tissues[v]] + rng.normal(0, 0.05 * (high - low))
        stds[v] = rng.uniform(2.0, 12.0) if ct else rng.uniform(0.01, 0.05)
    return means, stds, False


def _blur(x: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian blur of [X, Y, Z], sigma per axis in voxels (< 0.3: axis untouched),
    replicated edges (zero padding would darken a patch's border)."""
    from monai.networks.layers.convutils import gaussian_1d
    from monai.networks.layers.simplelayers import separable_filtering
    if all(s < 0.3 for s in sigmas):
        return x
    kernels = [gaussian_1d(float(s), truncated=3.0) if s >= 0.3 else torch.ones(1) for s in sigmas]
    return separable_filtering(x[None, None], kernels, mode="replicate")[0, 0]


def acquisition_resolution(settings: GeneratorSettings, spacing, rng: np.random.Generator) -> np.ndarray:
    """Per-axis resolution in mm: the model's spacing (1 - ``lowres_prob``), else half of the
    time isotropic (U(1, 4) mm, SynthSeg's max_res_iso) and half of the time one thick axis in the
    full range (thick slices: axial, coronal or sagittal) with the others in U(1, 2) mm."""
    spacing = np.asarray(spacing, float)
    low, high = settings.resolution
    if rng.uniform() >= settings.lowres_prob:
        return spacing.copy()
    if rng.uniform() < 0.5:
        res = np.full(3, rng.uniform(low, min(high, max(low, 4.0))))
    else:
        res = rng.uniform(low, min(high, max(low, 2.0)), 3)
        res[rng.integers(3)] = rng.uniform(low, high)
    return np.maximum(res, spacing)


def draw_image(labels: torch.Tensor, settings: GeneratorSettings, modality: str, spacing,
               rng: np.random.Generator, resolution: Optional[Sequence[float]] = None,
               info: Optional[dict] = None) -> torch.Tensor:
    """An image of ``modality`` drawn from ``labels`` [X, Y, Z] (steps 3-4 of the module
    docstring). ``resolution``: the acquisition's mm per axis (default: drawn). ``info`` (a dict)
    receives what was drawn (contrast kind, resolution)."""
    if modality not in PRIORS:
        raise InputError(f"no intensity priors for modality {modality!r}; known: {sorted(PRIORS)}")
    ct = modality == "CT"
    size = max(settings.lut_size(), int(labels.max()) + 1)
    means, stds, random = _tables(settings, modality, rng, size)
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    index = labels.long()
    shape = tuple(labels.shape)
    image = torch.from_numpy(means)[index] + torch.from_numpy(stds)[index] * torch.randn(shape, generator=gen)
    spacing = np.asarray(spacing, float)
    res = np.asarray(resolution, float) if resolution is not None else acquisition_resolution(settings, spacing, rng)
    factors = np.maximum(res / spacing, 1.0)
    # SynthSeg's blur for a resolution: sigma = 0.75 x factor (x a random 0.85-1.15); below it
    # a little partial-volume blur
    sigmas = np.where(factors > 1.01, 0.75 * factors * rng.uniform(0.85, 1.15, 3), rng.uniform(0.0, 0.5, 3))
    image = _blur(image, sigmas)
    if np.any(factors > 1.01):
        small = [max(2, int(round(n / f))) for n, f in zip(shape, factors)]
        image = F.interpolate(image[None, None], size=small, mode="trilinear", align_corners=True)
        image = F.interpolate(image, size=shape, mode="trilinear", align_corners=True)[0, 0]
    if ct:
        noise = rng.uniform(0, settings.noise * 330.0)
        image = image + noise * torch.randn(shape, generator=gen)
    else:
        cells = 4
        bias = rng.normal(0, rng.uniform(0, settings.bias_std), (1, 1, cells, cells, cells)).astype(np.float32)
        image = image * torch.exp(F.interpolate(torch.from_numpy(bias), size=shape, mode="trilinear",
                                                align_corners=True)[0, 0])
        lo, hi = image.min(), image.max()
        image = ((image - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        image = image ** float(np.exp(rng.normal(0, settings.gamma_std)))
        image = image + rng.uniform(0, settings.noise) * torch.randn(shape, generator=gen)
        image = image.clamp(0, 1)
    if info is not None:
        info.update(random_contrast=bool(random), resolution=[float(r) for r in res])
    return image.float()


def strip_head(labels: torch.Tensor, settings: GeneratorSettings) -> torch.Tensor:
    return torch.where(labels >= settings.head_from, torch.zeros_like(labels), labels)


def generate(labels: torch.Tensor, settings: GeneratorSettings, modality: str, patch: Sequence[int],
             spacing, rng: np.random.Generator, info: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, image) at ``patch`` from a whole label map [X, Y, Z] (RAS, ``spacing`` mm)."""
    crop = spatial_sample(labels, patch, spacing, settings, rng)
    flipped = bool(rng.uniform() < settings.flip)
    if flipped:
        crop = flip_left_right(crop, mirror_table(settings, max(settings.lut_size(), int(crop.max()) + 1)))
    stripped = bool(rng.uniform() < settings.strip)
    if stripped:
        crop = strip_head(crop, settings)
    image = draw_image(crop, settings, modality, spacing, rng, info=info)
    if info is not None:
        info.update(flipped=flipped, stripped=stripped)
    return crop, image


def task_table(task_values: Sequence[Sequence[int]], size: int) -> torch.Tensor:
    """[T, size] bool: row t is True at the label values of task t."""
    table = torch.zeros(len(task_values), size, dtype=torch.bool)
    for t, values in enumerate(task_values):
        for v in values:
            if 0 <= int(v) < size:
                table[t, int(v)] = True
    return table


def targets(labels: torch.Tensor, task_values: Sequence[Sequence[int]]) -> torch.Tensor:
    """[T, X, Y, Z] uint8 task masks of a label map (a task may be a union of values)."""
    size = max([int(labels.max()) + 1, *(int(v) + 1 for vals in task_values for v in vals)])
    return task_table(task_values, size)[:, labels.long()].to(torch.uint8)
