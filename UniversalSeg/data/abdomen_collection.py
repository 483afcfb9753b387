"""The demo's multi-institution collection, drawn from real abdominal anatomy.

Each case is one of the AMOS 2022 label maps (real organs, drawn by people; ``abdomen_anatomy``
adds the body around them), randomly deformed (rotation, per-axis scaling, shift and a smooth
elastic field: no two cases share a shape or position), then "acquired" by an institution: its
modality and contrast phase (a CT site's scans come in every phase: non-contrast, arterial,
portal-venous, drawn per case), its grid (spacing, axis order and flips), blur, noise and MR bias
field. Intensities are drawn per case and tissue from ranges that radiology texts give for each
modality (CT in Hounsfield units per contrast phase; MR-T1 / MR-T2 relative signal; PET in SUV),
wide on purpose. The bowel differs in every case: a smooth random field splits the abdominal
cavity into fat, bowel wall and content, gas and (CT, sometimes) oral contrast.

=================  ===============  =============================  =============================
institution        modality         annotates (partial labels)     acquisition
=================  ===============  =============================  =============================
ct-hospital-a      CT (any phase)   liver, spleen, kidney          3.5 mm isotropic, low noise
ct-hospital-b      CT (any phase)   liver, pancreas                 6 mm slices, LPS axes flipped,
                                                                    noisy
mr-t1-hospital-c   MR-T1            liver, spleen, pancreas         axes permuted, bias field,
                                                                    slabs of 60-300 mm
mr-t2-hospital-d   MR-T2            spleen, kidney                  anisotropic, bias field, slabs
pet-hospital-e     PET              liver, kidney                   5 mm, 8 mm resolution, counts
mr-t1-hospital-f   MR-T1 (fat-      liver, spleen, kidney,          held out of training: another
                   suppressed, post pancreas                        scanner and sequence
                   contrast)
=================  ===============  =============================  =============================

The layout on disk is ``synthetic.generate_collection``'s (one nnU-Net-style dataset per
institution, ``catalog.yaml`` and ``catalog-heldout.yaml``), so training and scoring read either.
Which AMOS maps a collection uses is the caller's choice (``label_maps``): a test collection
drawn from the same maps as the training one tests new shapes, positions and contrasts of the
SAME two people, not new anatomy (the real scans are that test: ``demo.score_real_scans``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .abdomen_anatomy import (BONE, DISC, HEART, LUNG, MUSCLE, ORGAN_VALUE, PERIRENAL_FAT, SUBCUTANEOUS_FAT,
                              VISCERAL, TissueMap, tissue_map)
from .phantom import _write

TASK_VALUES = {"liver": 1, "spleen": 2, "kidney": 3, "pancreas": 4}
TASK_ORGANS = {"liver": ("liver",), "spleen": ("spleen",), "kidney": ("kidney-left", "kidney-right"),
               "pancreas": ("pancreas",)}
FOV_MM = np.array((340.0, 280.0, 300.0))  # left-right, front-back, head-foot (LPS axes); head-foot: per
# institution, drawn per case (MR: often a slab of a few centimetres, as a breath-hold acquisition)
# the bowel classes drawn into the cavity per case
BOWEL, GAS, CONTRAST_BOWEL, CAVITY_FAT = 30, 31, 32, 33


@dataclass(frozen=True)
class Institution:
    name: str
    modality: str  # the catalog's modality
    contrast: str  # a key of CONTRASTS
    tasks: tuple[str, ...]
    spacing: tuple[float, float, float]  # mm per index axis
    direction: tuple[int, ...]  # 3x3 signed permutation, row-major (LPS, as SimpleITK stores it)
    noise: float
    held_out: bool = False
    head_foot_mm: tuple[float, float] = (300.0, 300.0)  # the field of view's extent along the body, drawn per case


INSTITUTIONS = (
    Institution("ct-hospital-a", "CT", "ct-portal-venous|ct-non-contrast|ct-arterial", ("liver", "spleen", "kidney"),
                (3.5, 3.5, 3.5),
                (1, 0, 0, 0, 1, 0, 0, 0, 1), 12.0, head_foot_mm=(220.0, 400.0)),
    Institution("ct-hospital-b", "CT", "ct-non-contrast|ct-arterial|ct-portal-venous", ("liver", "pancreas"),
                (3.0, 3.0, 6.0),
                (-1, 0, 0, 0, -1, 0, 0, 0, 1), 25.0, head_foot_mm=(220.0, 400.0)),
    Institution("mr-t1-hospital-c", "MR-T1", "mr-t1", ("liver", "spleen", "pancreas"), (4.0, 4.0, 4.0),
                (0, 1, 0, 1, 0, 0, 0, 0, 1), 0.04, head_foot_mm=(60.0, 300.0)),
    Institution("mr-t2-hospital-d", "MR-T2", "mr-t2", ("spleen", "kidney"), (3.5, 5.0, 3.5),
                (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.05, head_foot_mm=(60.0, 300.0)),
    Institution("pet-hospital-e", "PET", "pet", ("liver", "kidney"), (5.0, 5.0, 5.0),
                (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.15),
    Institution("mr-t1-hospital-f", "MR-T1", "mr-t1-fat-suppressed", ("liver", "spleen", "kidney", "pancreas"),
                (4.0, 4.0, 5.0), (1, 0, 0, 0, -1, 0, 0, 0, 1), 0.06, held_out=True, head_foot_mm=(60.0, 300.0)),
)

# Mean intensity ranges per tissue: CT in HU (blood-pool and organ enhancement per phase), MR in
# relative signal (the image is rescaled at random afterwards: MR has no units), PET in SUV.
# ("liver", a, b) means a to b times this case's liver value (keeps an order that holds in every
# patient: the spleen is darker than the liver on T1, brighter on T2).
_CT_COMMON = {"air": (-1000, -990), "subcutaneous-fat": (-120, -80), "perirenal-fat": (-120, -80),
              "cavity-fat": (-120, -80), "muscle": (35, 60), "bone": (250, 600), "disc": (60, 100),
              "lung": (-900, -750), "esophagus": (30, 60), "gallbladder": (0, 25), "stomach": (-20, 50),
              "duodenum": (10, 60), "bladder": (0, 20), "prostate-uterus": (30, 60), "bowel": (20, 60),
              "gas": (-1000, -600), "contrast-bowel": (150, 400)}
_CT_PHASES = {
    "ct-non-contrast": {"liver": (50, 70), "spleen": (40, 55), "kidney": (25, 40), "pancreas": (35, 50),
                        "blood": (35, 50), "adrenal": (20, 40)},
    "ct-arterial": {"liver": (60, 85), "spleen": (80, 140), "kidney": (150, 260), "pancreas": (90, 140),
                    "blood": (220, 380), "adrenal": (50, 90)},
    "ct-portal-venous": {"liver": (90, 130), "spleen": (100, 140), "kidney": (140, 220), "pancreas": (80, 120),
                         "blood": (120, 200), "adrenal": (50, 80)},
}
CONTRASTS: dict[str, dict] = {
    **{phase: {**_CT_COMMON, **values} for phase, values in _CT_PHASES.items()},
    "mr-t1": {"air": (0, 0.02), "subcutaneous-fat": (0.75, 1.0), "perirenal-fat": (0.75, 1.0),
              "cavity-fat": (0.75, 1.0), "muscle": (0.15, 0.35), "liver": (0.15, 0.6), "spleen": ("liver", 0.5, 0.9),
              "kidney": (0.1, 0.45), "pancreas": ("liver", 1.0, 1.4), "blood": (0.02, 0.3), "adrenal": (0.15, 0.4),
              "bone": (0.4, 0.7), "disc": (0.1, 0.25), "lung": (0, 0.05), "esophagus": (0.1, 0.3),
              "gallbladder": (0.03, 0.15), "bladder": (0.03, 0.15), "stomach": (0.05, 0.35), "duodenum": (0.1, 0.4),
              "prostate-uterus": (0.15, 0.35), "bowel": (0.1, 0.45), "gas": (0, 0.03), "contrast-bowel": (0.1, 0.45)},
    "mr-t1-fat-suppressed": {"air": (0, 0.02), "subcutaneous-fat": (0.08, 0.2), "perirenal-fat": (0.08, 0.2),
                             "cavity-fat": (0.08, 0.2), "muscle": (0.2, 0.35), "liver": (0.55, 0.75),
                             "spleen": (0.5, 0.75), "kidney": (0.6, 0.95), "pancreas": (0.5, 0.75), "blood": (0.7, 1.0),
                             "adrenal": (0.4, 0.6), "bone": (0.15, 0.3), "disc": (0.1, 0.25), "lung": (0, 0.05),
                             "esophagus": (0.3, 0.5), "gallbladder": (0.05, 0.15), "bladder": (0.05, 0.15),
                             "stomach": (0.1, 0.4), "duodenum": (0.3, 0.6), "prostate-uterus": (0.3, 0.5),
                             "bowel": (0.3, 0.6), "gas": (0, 0.03), "contrast-bowel": (0.3, 0.6)},
    "mr-t2": {"air": (0, 0.02), "subcutaneous-fat": (0.5, 0.8), "perirenal-fat": (0.5, 0.8), "cavity-fat": (0.5, 0.8),
              "muscle": (0.05, 0.15), "liver": (0.1, 0.25), "spleen": ("liver", 1.6, 2.6), "kidney": (0.35, 0.65),
              "pancreas": (0.2, 0.35), "blood": (0.0, 0.08), "adrenal": (0.15, 0.3), "bone": (0.3, 0.5),
              "disc": (0.4, 0.7), "lung": (0, 0.04), "esophagus": (0.1, 0.3), "gallbladder": (0.85, 1.0),
              "bladder": (0.85, 1.0), "stomach": (0.4, 0.9), "duodenum": (0.3, 0.8), "prostate-uterus": (0.3, 0.6),
              "bowel": (0.2, 0.7), "gas": (0, 0.03), "contrast-bowel": (0.2, 0.7)},
    "pet": {"air": (0, 0.02), "subcutaneous-fat": (0.2, 0.5), "perirenal-fat": (0.2, 0.5), "cavity-fat": (0.2, 0.5),
            "muscle": (0.5, 1.0), "liver": (1.8, 2.8), "spleen": (1.4, 2.3), "kidney": (2.0, 8.0),
            "pancreas": (1.2, 2.0), "blood": (1.2, 2.0), "adrenal": (1.2, 2.2), "bone": (1.0, 2.0), "disc": (0.5, 1.0),
            "lung": (0.3, 0.6), "esophagus": (1.0, 2.5), "gallbladder": (0.5, 1.2), "bladder": (5.0, 40.0),
            "stomach": (1.2, 3.5), "duodenum": (1.0, 3.0), "prostate-uterus": (1.0, 2.5), "bowel": (0.8, 3.0),
            "gas": (0.2, 0.5), "contrast-bowel": (0.8, 3.0)},
}
# tissue map value -> the CONTRASTS key that paints it
PAINT = {0: "air", ORGAN_VALUE["spleen"]: "spleen", ORGAN_VALUE["kidney-right"]: "kidney",
         ORGAN_VALUE["kidney-left"]: "kidney", ORGAN_VALUE["gallbladder"]: "gallbladder",
         ORGAN_VALUE["esophagus"]: "esophagus", ORGAN_VALUE["liver"]: "liver", ORGAN_VALUE["stomach"]: "stomach",
         ORGAN_VALUE["aorta"]: "blood", ORGAN_VALUE["inferior-vena-cava"]: "blood",
         ORGAN_VALUE["pancreas"]: "pancreas", ORGAN_VALUE["adrenal-right"]: "adrenal",
         ORGAN_VALUE["adrenal-left"]: "adrenal", ORGAN_VALUE["duodenum"]: "duodenum",
         ORGAN_VALUE["bladder"]: "bladder", ORGAN_VALUE["prostate-uterus"]: "prostate-uterus",
         SUBCUTANEOUS_FAT: "subcutaneous-fat", MUSCLE: "muscle", VISCERAL: "cavity-fat", BONE: "bone", LUNG: "lung",
         HEART: "blood", PERIRENAL_FAT: "perirenal-fat", DISC: "disc", BOWEL: "bowel", GAS: "gas",
         CONTRAST_BOWEL: "contrast-bowel", CAVITY_FAT: "cavity-fat"}


def draw_means(contrast: str, rng: np.random.Generator) -> dict[str, float]:
    """One case's mean intensity per tissue (see CONTRASTS)."""
    table = CONTRASTS[contrast]
    out = {k: float(rng.uniform(*v)) for k, v in table.items() if not isinstance(v[0], str)}
    for k, v in table.items():
        if isinstance(v[0], str):
            out[k] = out[v[0]] * float(rng.uniform(v[1], v[2]))
    return out


def _smooth_field(shape, cell_voxels, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance-ish smooth random field with features about ``cell_voxels`` wide."""
    coarse = [max(2, int(np.ceil(n / c)) + 1) for n, c in zip(shape, cell_voxels)]
    noise = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    return F.interpolate(noise, size=tuple(int(s) for s in shape), mode="trilinear",
                         align_corners=True)[0, 0].numpy()


def _grid(inst: Institution, fov_mm: np.ndarray):
    spacing = np.asarray(inst.spacing, float)
    direction = np.array(inst.direction, float).reshape(3, 3)
    physical_axis = np.abs(direction).argmax(0)  # index axis j runs along physical axis physical_axis[j]
    size = np.maximum(np.round(fov_mm[physical_axis] / spacing).astype(int), 8)
    origin = -direction @ (spacing * (size - 1) / 2.0)
    return size, spacing, direction, origin


def _rotation(degrees: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def deformed_tissues(anatomy: TissueMap, inst: Institution, rng: np.random.Generator,
                     fov_mm: np.ndarray = FOV_MM):
    """The tissue map of one case on ``inst``'s grid: the anatomy rotated (up to 10 degrees about
    the head-foot axis, 5 about the others), scaled (0.85-1.15 overall, x 0.93-1.07 per axis),
    shifted (up to 20 mm) and elastically deformed (a smooth field of up to 8 mm), sampled
    nearest-neighbour. Returns (values [i, j, k], spacing, direction, origin)."""
    size, spacing, direction, origin = _grid(inst, fov_mm)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size], indexing="ij"), -1)
    lps = idx @ (direction * spacing).T.astype(np.float32) + origin.astype(np.float32)
    scale = rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3)
    matrix = _rotation(rng.uniform(-1, 1, 3) * np.array((5.0, 5.0, 10.0))) @ np.diag(1.0 / scale)
    shift = rng.uniform(-20, 20, 3)
    source = (lps - shift.astype(np.float32)) @ matrix.T.astype(np.float32) + anatomy.organ_centre().astype(np.float32)
    elastic = rng.uniform(0, 8.0)
    for axis in range(3):
        source[..., axis] += elastic * _smooth_field(size, np.maximum(60.0 / spacing, 2), rng)
    voxel = (source - anatomy.origin.astype(np.float32)) / np.float32(anatomy.spacing[0])
    values = ndimage.map_coordinates(anatomy.values, voxel.reshape(-1, 3).T, order=0, mode="constant", cval=0)
    return values.reshape(tuple(size)).astype(np.uint8), spacing, direction, origin


def draw_bowel(tissues: np.ndarray, spacing, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Split the cavity (``VISCERAL``) into cavity fat, bowel, gas and (CT, 30 % of cases) oral
    contrast by a smooth random field (bowel loops about 25 mm across)."""
    out = tissues.copy()
    cavity = tissues == VISCERAL
    if not cavity.any():
        return out
    field = _smooth_field(tissues.shape, np.maximum(25.0 / np.asarray(spacing), 2), rng)
    bowel_share = rng.uniform(0.35, 0.6)
    threshold = np.quantile(field[cavity], 1 - bowel_share)
    bowel = cavity & (field > threshold)
    out[cavity] = CAVITY_FAT
    out[bowel] = CONTRAST_BOWEL if (modality == "CT" and rng.uniform() < 0.3) else BOWEL
    gas_field = _smooth_field(tissues.shape, np.maximum(12.0 / np.asarray(spacing), 2), rng)
    if bowel.any():
        gas = bowel & (gas_field > np.quantile(gas_field[bowel], 1 - rng.uniform(0.03, 0.15)))
        out[gas] = GAS
    return out


def render(tissues: np.ndarray, inst: Institution, spacing, rng: np.random.Generator) -> np.ndarray:
    """The image of one case: intensities per tissue, texture, blur, noise and (MR) bias."""
    contrast = inst.contrast
    if "|" in contrast:
        contrast = str(rng.choice(contrast.split("|")))
    means = draw_means(contrast, rng)
    lut = np.zeros(256, np.float32)
    for value, name in PAINT.items():
        lut[value] = means[name]
    image = lut[tissues]
    spacing = np.asarray(spacing, float)
    ct, pet = inst.modality == "CT", inst.modality == "PET"
    # texture: a smooth +-4 % variation and a fine grain inside every tissue
    scale = np.abs(image) if not ct else np.full_like(image, 40.0)
    image = image + scale * 0.04 * _smooth_field(tissues.shape, np.maximum(30.0 / spacing, 2), rng)
    grain = rng.uniform(4.0, 10.0) if ct else rng.uniform(0.01, 0.04) * (5.0 if pet else 1.0)
    image = image + grain * rng.standard_normal(image.shape).astype(np.float32) * (1.0 if ct else np.abs(image) + 1e-3)
    # partial volume (0.5 voxel) or PET's resolution (7-9 mm full width at half maximum)
    sigma = (np.full(3, rng.uniform(7.0, 9.0) / 2.355) / spacing) if pet else np.full(3, 0.5)
    image = ndimage.gaussian_filter(image, sigma)
    if ct:
        image = image + rng.normal(0, inst.noise, image.shape)
    elif pet:
        image = np.clip(image * (1 + rng.normal(0, inst.noise, image.shape)), 0, None)
    else:
        bias = np.exp(0.3 * _smooth_field(tissues.shape, np.asarray(tissues.shape) / 2.0, rng))
        image = image * bias * rng.uniform(0.6, 1.6) * 1000.0
        sigma_noise = inst.noise * float(np.percentile(image, 99))
        image = np.hypot(image + rng.normal(0, sigma_noise, image.shape), rng.normal(0, sigma_noise, image.shape))
    return image.astype(np.float32)


def task_labels(tissues: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
    label = np.zeros(tissues.shape, np.uint8)
    for task in tasks:
        label[np.isin(tissues, [ORGAN_VALUE[o] for o in TASK_ORGANS[task]])] = TASK_VALUES[task]
    return label


def default_label_maps() -> list[Path]:
    """The AMOS label maps shipped with UniversalSeg (``Resources/Data/amos-label-maps``)."""
    folder = Path(__file__).resolve().parents[2] / "Resources" / "Data" / "amos-label-maps"
    return sorted(folder.glob("*_label.nii.gz"))


def generate_collection(out_dir: str | Path, cases: int = 8, seed: int = 0, progress: bool = False,
                        label_maps: Sequence[str | Path] | None = None,
                        anatomies: Sequence[TissueMap] | None = None) -> Path:
    """Write the collection under ``out_dir``; returns the path of ``catalog.yaml``. Case ``c`` of
    every institution uses label map ``c mod len(label_maps)``. ``anatomies``: tissue maps already
    built (``abdomen_anatomy.tissue_map``), to build them once for several collections."""
    if anatomies is None:
        maps = [Path(p) for p in (label_maps or default_label_maps())]
        if not maps:
            raise FileNotFoundError("no AMOS label maps: Resources/Data/amos-label-maps/*_label.nii.gz is missing")
        anatomies = [tissue_map(p) for p in maps]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(i, inst, c) for i, inst in enumerate(INSTITUTIONS) for c in range(cases)]
    if progress:
        from tqdm import tqdm
        todo = tqdm(todo, desc="synthesizing", unit="case")
    for i, inst, c in todo:
        root = out / inst.name
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, i, c])
        anatomy = anatomies[c % len(anatomies)]
        fov = FOV_MM.copy()
        fov[2] = rng.uniform(*inst.head_foot_mm)
        tissues, spacing, direction, origin = deformed_tissues(anatomy, inst, rng, fov)
        tissues = draw_bowel(tissues, spacing, inst.modality, rng)
        image = render(tissues, inst, spacing, rng)
        cid = f"{inst.name}_{c:03d}"
        _write(image, spacing, direction, origin, root / "imagesTr" / f"{cid}_0000.nii.gz", np.float32)
        _write(task_labels(tissues, inst.tasks), spacing, direction, origin, root / "labelsTr" / f"{cid}.nii.gz",
               np.uint8)
    entries = {False: [], True: []}
    for inst in INSTITUTIONS:
        values = {t: TASK_VALUES[t] for t in inst.tasks}
        meta = {"name": inst.name, "channel_names": {"0": inst.modality}, "labels": {"background": 0, **values},
                "numTraining": cases, "file_ending": ".nii.gz",
                "description": "UniversalSeg synthetic abdomen drawn from AMOS 2022 label maps (CC BY 4.0)"}
        (out / inst.name / "dataset.json").write_text(json.dumps(meta, indent=2))
        entries[inst.held_out].append({"name": inst.name, "modality": inst.modality, "root": inst.name,
                                       "labels": {t: [v] for t, v in values.items()},
                                       "split": {"seed": seed, "validation": 0.2}})
    import yaml
    header = ("# Synthetic multi-institution abdomen collection drawn from AMOS 2022 label maps\n"
              "# (Ji et al., NeurIPS 2022, CC BY 4.0), written by UniversalSeg.\n")
    (out / "catalog.yaml").write_text(header + yaml.safe_dump({"format_version": 1, "datasets": entries[False]},
                                                              sort_keys=False))
    (out / "catalog-heldout.yaml").write_text(header + yaml.safe_dump(
        {"format_version": 1, "datasets": entries[True]}, sort_keys=False))
    return out / "catalog.yaml"
