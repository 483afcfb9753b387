"""Images drawn from label maps: a new contrast, resolution and artefact set at every sample.

The domain-randomisation recipe of SynthSeg (Billot et al. 2023) and SynthStrip (Hoopes et al.
2022), with per-modality tissue models instead of fully random intensities so that the modality
priors have something to steer: each tissue gets a mean drawn from its modality's range (wide, so
no two samples look alike, but in the modality's usual order), a little texture, partial-volume
blur, a smooth multiplicative bias field, a gamma change, an acquisition at a random resolution
(1-5 mm, often one thick axis: downsampled, then back up) and noise. It is part of the training
data path (``SynthesizeImaged`` in ``data.transforms.augmentation``): a catalog dataset with
``synthesize: {tissues: {value: tissue}}`` trains on label maps alone.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["TISSUE_MODELS", "check_tissues", "synthesize"]

# tissue -> (low, high) of its mean intensity per modality. MR: relative units (scaled at random
# per image: MR has none); CT: Hounsfield units.
TISSUE_MODELS: dict[str, dict[str, tuple[float, float]]] = {
    "MR-T1": {"air": (0.0, 0.03), "csf": (0.08, 0.3), "gray-matter": (0.38, 0.58),
              "white-matter": (0.62, 0.9), "bone": (0.03, 0.2), "fat": (0.75, 1.0), "skin": (0.35, 0.6),
              "soft-tissue": (0.3, 0.55)},
    "MR-T2": {"air": (0.0, 0.03), "csf": (0.8, 1.0), "gray-matter": (0.42, 0.62),
              "white-matter": (0.28, 0.44), "bone": (0.02, 0.15), "fat": (0.45, 0.8), "skin": (0.3, 0.5),
              "soft-tissue": (0.25, 0.45)},
    "MR-FLAIR": {"air": (0.0, 0.03), "csf": (0.02, 0.15), "gray-matter": (0.55, 0.78),
                 "white-matter": (0.38, 0.55), "bone": (0.02, 0.12), "fat": (0.55, 0.9), "skin": (0.3, 0.5),
                 "soft-tissue": (0.3, 0.5)},
    "MR-PD": {"air": (0.0, 0.03), "csf": (0.7, 0.95), "gray-matter": (0.6, 0.8),
              "white-matter": (0.45, 0.62), "bone": (0.03, 0.15), "fat": (0.7, 0.95), "skin": (0.5, 0.7),
              "soft-tissue": (0.45, 0.65)},
    "CT": {"air": (-1000.0, -980.0), "csf": (0.0, 15.0), "gray-matter": (34.0, 46.0),
           "white-matter": (20.0, 32.0), "bone": (600.0, 1600.0), "fat": (-120.0, -60.0),
           "skin": (20.0, 60.0), "soft-tissue": (30.0, 60.0)},
}


def check_tissues(tissues: dict, modality: str, where: str) -> None:
    model = TISSUE_MODELS.get(modality)
    if model is None:
        raise InputError(f"{where}: no tissue model for modality {modality!r} to synthesize images; "
                         f"models exist for {sorted(TISSUE_MODELS)}")
    unknown = sorted({t for t in tissues.values() if t not in model})
    if unknown:
        raise InputError(f"{where}: unknown tissue(s) {unknown}; known tissues: {sorted(model)}")


def _smooth(shape, rng: np.random.Generator, cells: int) -> torch.Tensor:
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]


def _blur(x: torch.Tensor, sigmas) -> torch.Tensor:
    """Gaussian blur of a [D, H, W] tensor, sigma per axis in voxels (below 0.2: that axis is
    left alone). MONAI's kernels and separable filtering, with replicated edges: MONAI's
    ``GaussianFilter`` pads with zeros, which would darken MR and brighten CT air at a patch's border."""
    from monai.networks.layers.convutils import gaussian_1d
    from monai.networks.layers.simplelayers import separable_filtering
    kernels = [gaussian_1d(float(s), truncated=3.0) if s >= 0.2 else torch.ones(1) for s in sigmas]
    return separable_filtering(x[None, None], kernels, mode="replicate")[0, 0]


def synthesize(labels: torch.Tensor, tissues: dict[int, str], modality: str, spacing,
               rng: np.random.Generator, acquisition: bool = True, model: dict | None = None) -> torch.Tensor:
    """labels [D, H, W] (integer tissue values at ``spacing`` mm, per array axis) -> a float32
    image of ``modality`` (MR: arbitrary units; CT: HU) on the same grid. ``acquisition`` False:
    no random resolution, noise or global scale (for benchmarks that acquire images themselves).
    ``model``: tissue -> (low, high) intensities instead of the modality's own ranges."""
    model = model or TISSUE_MODELS[modality]
    labels = labels.long()
    shape = labels.shape
    image = torch.zeros(shape, dtype=torch.float32)
    ct = modality == "CT"
    for value, tissue in tissues.items():
        region = labels == int(value)
        if not bool(region.any()):
            continue
        low, high = model[tissue]
        mean = rng.uniform(low, high)
        texture = 0.03 * (high - low if ct else max(mean, 0.05)) * _smooth(shape, rng, 8)
        image = torch.where(region, mean + texture, image)
    spacing = np.asarray(spacing, float)
    image = _blur(image, rng.uniform(0.3, 1.0) * np.ones(3))  # partial volume
    if not ct:
        image = image * torch.exp(rng.uniform(0.0, 0.5) * _smooth(shape, rng, 4))  # bias field
        image = image.clamp(min=0) ** float(np.exp(rng.normal(0, 0.2)))  # gamma
    if not acquisition:
        return image
    # acquisition resolution: 1-5 mm, half of the time one thick axis
    acquired = rng.uniform(1.0, 3.0, 3)
    if rng.uniform() < 0.5:
        acquired[rng.integers(3)] = rng.uniform(3.0, 5.0)
    factors = np.maximum(acquired / spacing, 1.0)
    if np.any(factors > 1.2):
        image = _blur(image, np.where(factors > 1.2, 0.4 * factors, 0.0))
        small = [max(2, int(round(s / f))) for s, f in zip(shape, factors)]
        image = F.interpolate(F.interpolate(image[None, None], size=small, mode="area"), size=tuple(shape),
                              mode="trilinear", align_corners=False)[0, 0]
    if ct:
        image = image + rng.uniform(2.0, 20.0) * torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    else:
        sigma = rng.uniform(0.0, 0.06) * float(image.max().clamp(min=1e-3))
        noise = [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * sigma for _ in range(2)]
        image = torch.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician, as magnitude MR
        image = image * rng.uniform(50, 2000)  # MR has no units
    return image
