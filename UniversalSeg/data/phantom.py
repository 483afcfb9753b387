"""The ellipsoid phantom: a synthetic multi-institution collection, the demo's and the tests' data.

(Not to be confused with ``synthesis.py``, which draws images from real label maps.)

``universalseg synth OUT_DIR`` writes, per institution, an nnU-Net-v2-style raw dataset
(``dataset.json``, ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``) and one
``catalog.yaml`` over all of them. The institutions differ the way real ones do:

=================  ========  ===============================  ==================================
institution        modality  annotates (partial labels)        acquisition
=================  ========  ===============================  ==================================
ct-hospital-a      CT        liver, spleen, kidney             isotropic, low noise
ct-hospital-b      CT        liver, liver-tumor                thick slices, LPS flipped, noisy
mr-t1-hospital-c   MR-T1     liver, spleen                     bias field, axes permuted
mr-t2-hospital-d   MR-T2     spleen, kidney                    bias field, anisotropic
pet-hospital-e     PET       liver, liver-tumor                coarse, blurred, count noise
mr-t1-hospital-f   MR-T1     liver, spleen, kidney             held out: other scanner contrast
=================  ========  ===============================  ==================================

The anatomy is drawn in physical (LPS, mm) space: an abdomen layered as a real one (subcutaneous
fat, muscle wall, visceral fat with bowel loops, the spine), a liver with a tumour inside it, a
spleen and two kidneys in a real abdomen's proportions (``kidneys``: where they lie, ``KIDNEYS``),
each case with its own shift, scale,
bowel pattern and tumour; every institution then
samples it on its own grid (spacing, orientation), so the same physical anatomy produces
differently shaped arrays, and labels lie exactly on the image grid. ``mr-t1-hospital-f`` is left
out of ``catalog.yaml`` (it has its own ``catalog-heldout.yaml``) for domain-generalization tests.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["CONTRAST", "FOV_MM", "HELD_OUT_CONTRAST", "INSTITUTIONS", "KIDNEYS", "LABEL_VALUES", "PERIRENAL_MM",
           "TISSUES", "Institution", "generate_collection"]

FOV_MM = 180.0  # field of view per axis


@dataclass(frozen=True)
class Institution:
    name: str
    modality: str
    tasks: tuple[str, ...]
    spacing_factor: tuple[float, float, float]  # times the base spacing, per axis
    direction: tuple[int, ...]  # 3x3 signed permutation (row-major)
    noise: float
    held_out: bool = False


INSTITUTIONS = (
    Institution("ct-hospital-a", "CT", ("liver", "spleen", "kidney"), (1, 1, 1),
                (1, 0, 0, 0, 1, 0, 0, 0, 1), 12.0),
    Institution("ct-hospital-b", "CT", ("liver", "liver-tumor"), (1, 1, 2),
                (-1, 0, 0, 0, -1, 0, 0, 0, 1), 25.0),
    Institution("mr-t1-hospital-c", "MR-T1", ("liver", "spleen"), (1, 1, 1),
                (0, 1, 0, 1, 0, 0, 0, 0, 1), 0.04),
    Institution("mr-t2-hospital-d", "MR-T2", ("spleen", "kidney"), (1, 1.5, 1),
                (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.05),
    Institution("pet-hospital-e", "PET", ("liver", "liver-tumor"), (1.5, 1.5, 1.5),
                (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.15),
    Institution("mr-t1-hospital-f", "MR-T1", ("liver", "spleen", "kidney"), (1, 1, 1.5),
                (1, 0, 0, 0, -1, 0, 0, 0, 1), 0.06, held_out=True),
)

LABEL_VALUES = {"liver": 1, "liver-tumor": 2, "spleen": 3, "kidney": 4}

# Mean intensity per tissue and modality, painted in this order (later tissues cover earlier ones).
# The abdomen is layered as in a real scan: subcutaneous fat, the muscle wall, visceral fat with
# bowel loops, the spine, then the organs, so the organs border fat or bowel as in a patient (but
# for the default "posterior" kidneys, which lie mostly in the wall: KIDNEYS below) (CT:
# portal-venous phase; MR: relative signal; PET: SUV).
TISSUES = ("background", "fat", "muscle", "bowel", "bone", "liver", "liver-tumor", "spleen", "kidney")
CONTRAST = {
    "CT": (-1000.0, -100.0, 50.0, 30.0, 400.0, 100.0, 45.0, 120.0, 170.0),
    "MR-T1": (0.0, 620.0, 230.0, 330.0, 380.0, 470.0, 210.0, 300.0, 280.0),
    "MR-T2": (0.0, 360.0, 110.0, 260.0, 160.0, 140.0, 480.0, 380.0, 440.0),
    "PET": (0.0, 0.3, 0.8, 1.2, 1.0, 2.2, 9.0, 1.8, 3.5),
}
HELD_OUT_CONTRAST = (0.0, 700.0, 210.0, 360.0, 420.0, 520.0, 230.0, 330.0, 200.0)  # another MR-T1 scanner
FAT_MM, MUSCLE_MM = 12.0, 10.0  # subcutaneous fat and muscle wall thickness (before the case's scale)
PERIRENAL_MM = 4.0  # the fat around each kidney: a kidney borders fat (or the liver / spleen), as in a patient
# Where the kidneys lie: (left, right) centres in mm before the case's scale, and their perirenal fat.
# "posterior", the default: the phantom of versions 0.4.0-0.7.0 (every committed study ran on it): each
# kidney lies 30 % in the abdominal cavity, 44 % in the muscle wall and 25 % in the subcutaneous fat,
# which no patient has (on the held-out MR-T1 scanner, kidney 200 and muscle 210, most of it has no
# edge). "retroperitoneal" (version 0.8.0): inside the wall, beside the spine, the right one lower
# (under the liver, touching it), each wrapped in perirenal fat, as in a patient
# (Testing/Python/test_catalog.py). README (Results) gives what it changed in the demo.
KIDNEYS = {"posterior": (((36, 30, -38), (-36, 30, -38)), 0.0),
           "retroperitoneal": (((30, 18, -26), (-30, 18, -32)), PERIRENAL_MM)}


def _ellipsoid(points, center, radii):
    return (((points - np.asarray(center)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def _anatomy(rng: np.random.Generator, kidneys: str = "posterior"):
    """Per-case anatomy in LPS mm (DICOM / ITK patient space: +x left, +y posterior, +z superior):
    name -> (center, radii), plus the bowel pattern. Organ sizes keep a real abdomen's proportions
    (liver about half the abdomen's width, kidneys 11 cm long in a 32 cm wide abdomen, all scaled to
    the 17 cm phantom). The liver lies on the patient's right, spleen and kidneys posterior."""
    shift = rng.uniform(-10, 10, 3)
    scale = rng.uniform(0.88, 1.12, 3)
    body = np.array((85.0, 65.0, 90.0))
    organs = {
        "body": ((0, 0, 0), body),
        "muscle": ((0, 0, 0), body - FAT_MM),
        "visceral": ((0, 0, 0), body - FAT_MM - MUSCLE_MM),
        "liver": ((-30, 0, 22), (44, 36, 38)),
        "spleen": ((44, 18, 18), (16, 20, 28)),
    }
    centers, perirenal = KIDNEYS[kidneys]
    radii = np.array((15.0, 12.0, 27.0))
    for side, center in zip(("left", "right"), centers):
        organs[f"kidney-{side}"] = (center, radii)
        if perirenal:  # the fat around each kidney (inside Gerota's fascia)
            organs[f"perirenal-{side}"] = (center, radii + perirenal)
    out = {k: (np.asarray(c) * scale + shift, np.asarray(r) * scale) for k, (c, r) in organs.items()}
    lc, lr = out["liver"]
    tumor_center = lc + rng.uniform(-0.45, 0.45, 3) * lr
    out["liver-tumor"] = (tumor_center, np.full(3, rng.uniform(8, 13)))
    # the spine: a vertebral column along z, posterior midline (x, y centre and radius)
    out["spine"] = (np.array((0.0, 38.0)) * scale[:2] + shift[:2], 13.0 * float(scale[:2].mean()))
    # bowel loops: where a sum of 6 random plane waves (wavelengths 35-60 mm) is high (~28 %)
    directions = rng.normal(size=(6, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    out["bowel"] = (directions * (2 * np.pi / rng.uniform(35, 60, (6, 1))), rng.uniform(0, 2 * np.pi, 6), shift)
    return out


def _grid(inst: Institution, shape: int):
    base = FOV_MM / shape
    spacing = np.array(inst.spacing_factor, float) * base
    size = np.maximum(np.round(FOV_MM / spacing).astype(int), 8)
    direction = np.array(inst.direction, float).reshape(3, 3)  # LPS, as SimpleITK stores it
    # center the grid on the origin of the physical space
    origin = -direction @ (spacing * (size - 1) / 2.0)
    return size, spacing, direction, origin


def _render(inst: Institution, anatomy, shape: int, rng: np.random.Generator):
    size, spacing, direction, origin = _grid(inst, shape)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).astype(np.float32)
    lps = idx @ (direction * spacing).T + origin
    masks = {k: _ellipsoid(lps, *anatomy[k]) for k in ("body", "muscle", "visceral", "liver", "liver-tumor",
                                                        "spleen", "kidney-left", "kidney-right")}
    masks["kidney"] = masks.pop("kidney-left") | masks.pop("kidney-right")
    perirenal = np.zeros_like(masks["kidney"])
    for side in ("left", "right"):
        if f"perirenal-{side}" in anatomy:
            perirenal |= _ellipsoid(lps, *anatomy[f"perirenal-{side}"])
    # the kidneys are painted after the liver (retroperitoneal: a renal impression on it): no tumour there
    masks["liver-tumor"] &= masks["liver"] & ~masks["kidney"]
    (sx, sy), radius = anatomy["spine"]
    masks["bone"] = ((lps[..., 0] - sx) ** 2 + (lps[..., 1] - sy) ** 2 <= radius ** 2) & masks["muscle"]
    waves, phases, shift = anatomy["bowel"]
    masks["bowel"] = masks["visceral"] & (np.cos((lps - shift) @ waves.T + phases).sum(-1) > 1.0) & ~perirenal
    masks["fat"] = masks["body"]  # painted first: what the wall, bowel and organs leave is fat
    masks["muscle"] &= ~masks["visceral"] & ~perirenal  # the wall only, less the perirenal fat
    contrast = HELD_OUT_CONTRAST if inst.held_out else CONTRAST[inst.modality]
    value = dict(zip(TISSUES, contrast))
    jitter = rng.uniform(0.92, 1.08, len(TISSUES))
    image = np.full(tuple(size), value["background"], np.float32)
    for tissue, j in zip(TISSUES[1:], jitter[1:]):
        region = masks[tissue]
        # per-case contrast jitter: a few HU on CT, a few percent on MR / PET
        image[region] = value[tissue] + (j - 1) * 100 if inst.modality == "CT" else value[tissue] * j
    img = sitk.GetImageFromArray(image.transpose(2, 1, 0))
    img.SetSpacing(tuple(float(s) for s in spacing))  # the blur's sigma is in mm: 0.6 voxel (PET 0.85:
    # a full width at half maximum of 2 voxels, as clinical PET at its voxel size)
    img = sitk.SmoothingRecursiveGaussian(img, float(spacing.min()) * (0.85 if inst.modality == "PET" else 0.6))
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    if inst.modality == "CT":
        arr = arr + rng.normal(0, inst.noise, arr.shape)
    elif inst.modality == "PET":
        arr = np.clip(arr * (1 + rng.normal(0, inst.noise, arr.shape)), 0, None)
    else:  # MR: smooth multiplicative bias field, arbitrary global scale, Rician-like noise
        c = (idx / size - 0.5)
        coeff = rng.uniform(-0.5, 0.5, 3)
        bias = np.exp(c @ coeff + 0.3 * (c[..., 0] ** 2) * rng.uniform(-1, 1))
        arr = arr * bias * rng.uniform(0.6, 1.6)
        sigma = inst.noise * float(np.percentile(arr, 99))
        arr = np.hypot(arr + rng.normal(0, sigma, arr.shape), rng.normal(0, sigma, arr.shape))
    label = np.zeros(tuple(size), np.uint8)
    for task in ("liver", "spleen", "kidney", "liver-tumor"):  # tumour last: it lies in the liver
        if task in inst.tasks or (task == "liver" and "liver-tumor" in inst.tasks):
            label[masks[task]] = LABEL_VALUES[task]
    return arr.astype(np.float32), label, spacing, direction, origin


def _write(array, spacing, direction, origin, path: Path, dtype):
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(dtype))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(d) for d in direction.ravel()))
    img.SetOrigin(tuple(float(o) for o in origin))
    sitk.WriteImage(img, str(path), useCompression=True)


def generate_collection(out_dir: str | Path, cases: int = 10, shape: int = 48, seed: int = 0,
                        progress: bool = False, kidneys: str = "posterior") -> Path:
    """Write the collection under ``out_dir``; returns the path of ``catalog.yaml``. ``kidneys``:
    where the kidneys lie, a key of ``KIDNEYS``."""
    if kidneys not in KIDNEYS:
        raise ValueError(f"kidneys: one of {sorted(KIDNEYS)}, got {kidneys!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = {False: [], True: []}
    todo = [(i, inst, c) for i, inst in enumerate(INSTITUTIONS) for c in range(cases)]
    if progress:
        from tqdm import tqdm
        todo = tqdm(todo, desc="synthesizing", unit="case")
    for i, inst, c in todo:
        root = out / inst.name
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, i, c])
        image, label, spacing, direction, origin = _render(inst, _anatomy(rng, kidneys), shape, rng)
        cid = f"{inst.name}_{c:03d}"
        _write(image, spacing, direction, origin, root / "imagesTr" / f"{cid}_0000.nii.gz", np.float32)
        _write(label, spacing, direction, origin, root / "labelsTr" / f"{cid}.nii.gz", np.uint8)
    for inst in INSTITUTIONS:
        root = out / inst.name
        values = {t: LABEL_VALUES[t] for t in ("liver", "spleen", "kidney", "liver-tumor")
                  if t in inst.tasks or (t == "liver" and "liver-tumor" in inst.tasks)}
        meta = {"name": inst.name, "channel_names": {"0": inst.modality},
                "labels": {"background": 0, **values}, "numTraining": cases,
                "file_ending": ".nii.gz", "description": "UniversalSeg synthetic phantom"}
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
        labels = {t: ([1, 2] if t == "liver" and "liver-tumor" in inst.tasks else [LABEL_VALUES[t]])
                  for t in inst.tasks}
        entries[inst.held_out].append({"name": inst.name, "modality": inst.modality,
                                       "root": inst.name, "labels": labels,
                                       "split": {"seed": seed, "validation": 0.2}})
    import yaml
    header = "# Synthetic multi-institution collection written by `universalseg synth`.\n"
    (out / "catalog.yaml").write_text(header + yaml.safe_dump(
        {"format_version": 1, "datasets": entries[False]}, sort_keys=False))
    (out / "catalog-heldout.yaml").write_text(header + yaml.safe_dump(
        {"format_version": 1, "datasets": entries[True]}, sort_keys=False))
    return out / "catalog.yaml"
