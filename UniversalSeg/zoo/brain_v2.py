"""brain-synth 2.0.0: brain structures learned from 20 real anatomies (SynthSeg's label maps).

``universalseg zoo build brain --out DIR`` (recipe 2.0.0, the default; ``--recipe 1.0.1`` builds
the shipped one-template model of ``zoo/brain.py``):

1. reads the 20 whole-head label maps of ``../shared/data/synthseg-label-maps`` (``--maps``;
   Apache-2.0, SynthSeg's training examples) and keeps ``HELD_OUT`` out of training;
2. writes fixed synthetic validation images of the held-out subjects (``VALIDATION``: T1 at
   1 mm, T2 at 3 mm, FLAIR with 5 mm slices, PD at 1 mm, CT at 1 mm; ``data.label_synthesis``
   without deformation) into DIR/data/validation with their label maps;
3. writes a catalog: one ``synthesize: {generator: label-maps}`` dataset per modality over the
   training maps (every step draws a new image, SynthSeg-style: deformation, left/right flips,
   random or modality-shaped contrasts, resolution 1-9 mm, bias, gamma, noise), and one
   validation dataset per validation image kind;
4. trains the universal network (``TASKS``) with validation Dice on the held-out images every
   ``validate_every`` epochs (RUN/validation-history.jsonl), the best checkpoint kept
   (RUN/checkpoints/best.pt) and exported; ``--resume`` continues an interrupted build;
5. trains the click stage (everything else frozen, as 1.0.1), draws the learning curve
   (DIR/learning-curve.png) and writes DIR/brain-synth-2.0.0.zip with its card and the
   ``EXCLUSIVE_GROUPS`` (structures a voxel can be at most one of).

Label values (FreeSurfer's numbering, ``labels-table.txt``): tasks are the structures of
``STRUCTURES``; left and right are separate tasks. "brain" is every value below 500 except the
extra-cerebral CSF (24); "head" is every non-zero value. The 500-range values (skull, skin, fat,
eyes, other head tissue) shape the head in the generated images and are never tasks of their own.
Values without a task of their own (25/57, 30/62 vessels, 72, 85 optic chiasm, 136/137/163/164)
count in "brain" only.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError

__all__ = ["CARD", "EXCLUSIVE_GROUPS", "HEAD_FROM", "HEAD_TISSUES", "HELD_OUT", "MAP_FILES", "MIRROR", "MODALITIES",
           "OTHER_BRAIN", "PAIRED", "SINGLE", "TASKS", "VALIDATION", "best_package", "build_brain_v2", "default_maps",
           "find_maps", "generator_block", "generator_tissues", "learning_curve", "loader_workers", "structures",
           "train_config", "validation_text", "write_catalog", "write_package", "write_validation"]

log = logging.getLogger("UniversalSeg.zoo")

MODEL_ID, VERSION = "brain-synth", "2.0.0"
MODALITIES = ("MR-T1", "MR-T2", "MR-FLAIR", "MR-PD", "CT")
MAP_FILES = tuple(f"training_seg_{i:02d}.nii.gz" for i in range(1, 21))
HELD_OUT = ("training_seg_05", "training_seg_10", "training_seg_15", "training_seg_20")
HEAD_FROM = 500

# (task, left values, right values): "-left"/"-right" tasks where the maps have both sides
PAIRED = (
    ("cerebral-cortex", (3,), (42,)),
    ("cerebral-white-matter", (2,), (41,)),
    ("lateral-ventricle", (4, 5), (43, 44)),  # with the inferior lateral ventricle
    ("cerebellum-cortex", (8,), (47,)),
    ("cerebellum-white-matter", (7,), (46,)),
    ("thalamus", (10,), (49,)),
    ("caudate", (11,), (50,)),
    ("putamen", (12,), (51,)),
    ("pallidum", (13,), (52,)),
    ("hippocampus", (17,), (53,)),
    ("amygdala", (18,), (54,)),
    ("accumbens", (26,), (58,)),
    ("ventral-dc", (28,), (60,)),
)
SINGLE = (("csf", (24,)), ("brain-stem", (16,)), ("third-ventricle", (14,)), ("fourth-ventricle", (15,)))
# inside the brain without a task of their own (a few voxels each; 25/57 FreeSurfer's lesion
# labels, 30/62 vessels, 72 5th ventricle, 85 optic chiasm, 136/137/163/164 unnamed in the table)
OTHER_BRAIN = (25, 57, 30, 62, 72, 85, 136, 137, 163, 164)
# what the 500-range values are, read from where they lie (next to the CSF or the air, distance
# to the brain) in training_seg_01 - SynthSeg's table does not name them
HEAD_TISSUES = {502: "soft-tissue", 506: "eye", 507: "soft-tissue", 508: "soft-tissue", 509: "fat",
                511: "skin", 512: "soft-tissue", 514: "soft-tissue", 515: "bone", 516: "fat",
                530: "soft-tissue"}
MIRROR = {left: right for _, lefts, rights in PAIRED for left, right in zip(lefts, rights)} | {
    25: 57, 30: 62, 136: 163, 137: 164}


def structures() -> dict[str, tuple[int, ...]]:
    """task -> label values, in the network's task order."""
    tasks: dict[str, tuple[int, ...]] = {}
    for name, left, right in PAIRED:
        tasks[f"{name}-left"], tasks[f"{name}-right"] = tuple(left), tuple(right)
    tasks.update({name: tuple(values) for name, values in SINGLE})
    brain = sorted({v for name, vals in tasks.items() if name != "csf" for v in vals} | set(OTHER_BRAIN))
    head = sorted(set(brain) | {24} | set(HEAD_TISSUES))
    return {"brain": tuple(brain), **tasks, "head": tuple(head)}


TASKS = tuple(structures())
# one group: every structure except the two that contain others (brain, head)
EXCLUSIVE_GROUPS = [[t for t in TASKS if t not in ("brain", "head")]]

_TISSUE = {"cerebral-cortex": "gray-matter", "cerebral-white-matter": "white-matter",
           "lateral-ventricle": "csf", "cerebellum-cortex": "gray-matter",
           "cerebellum-white-matter": "white-matter", "thalamus": "deep-gray", "caudate": "deep-gray",
           "putamen": "deep-gray", "pallidum": "white-matter", "hippocampus": "gray-matter",
           "amygdala": "gray-matter", "accumbens": "deep-gray", "ventral-dc": "white-matter",
           "csf": "csf", "brain-stem": "white-matter", "third-ventricle": "csf", "fourth-ventricle": "csf"}


def generator_tissues() -> dict[int, str]:
    """label value -> tissue class of the modality-shaped contrasts (``label_synthesis.PRIORS``)."""
    out = {0: "background"}
    for name, left, right in PAIRED:
        out.update({v: _TISSUE[name] for v in (*left, *right)})
    for name, values in SINGLE:
        out.update({v: _TISSUE[name] for v in values})
    out.update({25: "white-matter", 57: "white-matter", 30: "vessel", 62: "vessel", 72: "csf",
                85: "white-matter", 136: "deep-gray", 137: "deep-gray", 163: "deep-gray", 164: "deep-gray"})
    out.update(HEAD_TISSUES)
    return out


def generator_block() -> dict:
    return {"generator": "label-maps", "tissues": generator_tissues(), "mirror": dict(MIRROR),
            "head_from": HEAD_FROM}


# the fixed validation images: (name, modality, acquisition resolution mm per RAS axis)
VALIDATION = (("t1-1mm", "MR-T1", (1.0, 1.0, 1.0)), ("t2-3mm", "MR-T2", (3.0, 3.0, 3.0)),
              ("flair-5mm-axial", "MR-FLAIR", (1.0, 1.0, 5.0)), ("pd-1mm", "MR-PD", (1.0, 1.0, 1.0)),
              ("ct-1mm", "CT", (1.0, 1.0, 1.0)))

CARD = {
    "summary": "Brain, 30 brain structures (left and right apart), CSF and head on brain MR of any common "
               "contrast (T1, T2, FLAIR, PD) and on head CT, at any resolution from 1 mm to thick slices.",
    "trained_on": "The whole-head label maps of 16 real adults (SynthSeg's training label maps, B. Billot et al., "
                  "Medical Image Analysis 86:102789, 2023; Apache-2.0, github.com/BBillot/SynthSeg, "
                  "data/training_label_maps): every training image is synthetic, drawn at every step from a "
                  "randomly deformed and flipped label map with random per-structure intensities (fully random "
                  "or shaped like the modality), resolution 1-9 mm per axis with its blur, bias field, gamma and "
                  "noise. No patient image.",
    "held_out": "training_seg_05, training_seg_10, training_seg_15, training_seg_20: never trained on; the "
                "validation numbers are on synthetic images of these four anatomies.",
    "intended_use": "Research: brain structure volumes and masks on adult head MR and CT, a starting point "
                    "for corrections and fine-tuning. Not for diagnosis.",
    "limits": "20 adult anatomies (some with atrophy): no lesions or tumours, no children, no post-surgical "
              "anatomy were ever seen. The 500-range head labels are coarse (skull, skin, fat, eyes, other "
              "tissue). CT grey/white contrast is a few HU: expect weaker cortex/white matter on CT. "
              "Accumbens and ventral DC are small and poorly contrasted on any scan.",
    "licence": "Model: Apache-2.0. Training label maps: Apache-2.0, SynthSeg (B. Billot et al. 2023); see NOTICE.",
}


def default_maps() -> Path:
    """The label maps beside the repository (``../shared/data``, as on the CI machines)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthseg-label-maps"


def find_maps(maps: Optional[str | Path], held_out: Sequence[str]) -> list[Path]:
    folder = Path(maps) if maps else default_maps()
    if not folder.is_dir():
        raise InputError(f"label maps not found: {folder} is not a folder (pass --maps with the 20 "
                         "SynthSeg label maps, ../shared/data/synthseg-label-maps)")
    files = sorted(folder.glob("training_seg_*.nii.gz"))
    if not files:
        raise InputError(f"{folder} holds no training_seg_*.nii.gz label maps")
    ids = {p.name.split(".")[0] for p in files}
    missing = [h for h in held_out if h not in ids]
    if missing:
        raise InputError(f"held-out subject(s) {missing} are not in {folder}")
    if len(ids) - len(set(held_out)) < 1:
        raise InputError(f"{folder}: no label map left for training after holding out {list(held_out)}")
    return files


def _read_ras(path: Path):
    import SimpleITK as sitk
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "RAS")
    return image, sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # array axes = R, A, S


def write_validation(maps: list[Path], held_out: Sequence[str], out: Path, seed: int) -> dict[str, list[dict]]:
    """The fixed validation images of the held-out subjects (``VALIDATION``), on each map's
    1 mm grid cropped to the head: {validation name: [{id, image, label}]} (paths relative to out)."""
    import SimpleITK as sitk
    import torch

    from ..data.label_synthesis import GeneratorSettings, draw_image
    settings = GeneratorSettings.from_dict(generator_block())
    out.mkdir(parents=True, exist_ok=True)
    cases: dict[str, list[dict]] = {name: [] for name, _, _ in VALIDATION}
    for path in maps:
        cid = path.name.split(".")[0]
        if cid not in held_out:
            continue
        image, labels = _read_ras(path)
        inside = np.argwhere(labels > 0)
        lo, hi = np.maximum(inside.min(0) - 4, 0), np.minimum(inside.max(0) + 5, labels.shape)
        labels = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.int16)
        crop = sitk.RegionOfInterest(image, [int(high - low) for low, high in zip(lo, hi)], [int(v) for v in lo])
        spacing = np.array(crop.GetSpacing())
        label_path = out / f"{cid}-labels.nii.gz"
        _write_like(labels, crop, label_path, sitk.sitkInt16)
        for k, (name, modality, res) in enumerate(VALIDATION):
            rng = np.random.default_rng([seed, int(cid.split("_")[-1]), k])
            drawn = draw_image(torch.from_numpy(labels), settings, modality, spacing, rng,
                               resolution=np.maximum(res, spacing)).numpy()
            image_path = out / f"{cid}-{name}.nii.gz"
            _write_like(drawn, crop, image_path, sitk.sitkFloat32)
            cases[name].append({"id": cid, "image": image_path.name, "label": label_path.name})
    return cases


def _write_like(array: np.ndarray, like, path: Path, pixel) -> None:
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(like)
    sitk.WriteImage(sitk.Cast(image, pixel), str(path), useCompression=True)


def write_catalog(data: Path, maps: list[Path], held_out: Sequence[str], validation: dict[str, list[dict]]) -> Path:
    import yaml
    labels = {t: list(v) for t, v in structures().items()}
    train = [{"id": p.name.split(".")[0], "label": str(p.resolve())} for p in maps
             if p.name.split(".")[0] not in held_out]
    datasets = [{"name": f"label-maps-{m.lower()}", "modality": m, "synthesize": generator_block(),
                 "cases": train, "labels": labels} for m in MODALITIES]
    modality = {name: m for name, m, _ in VALIDATION}
    for name, cases in validation.items():
        datasets.append({"name": f"heldout-{name}", "modality": modality[name],
                         "cases": [{**c, "image": f"validation/{c['image']}", "label": f"validation/{c['label']}"}
                                   for c in cases],
                         "labels": labels, "split": {"train": [], "validation": [c["id"] for c in cases]}})
    path = data / "catalog.yaml"
    path.write_text("# Written by `universalseg zoo build brain` (recipe 2.0.0): training images are drawn from "
                    "the label maps;\n# the held-out subjects' images are fixed (validation).\n"
                    + yaml.safe_dump({"format_version": 1, "datasets": datasets}, sort_keys=False))
    return path


def loader_workers(device: str) -> int:
    """Generation runs on the CPU (about 1 s a 96^3 sample on one core): on a GPU it needs loader
    workers to keep up with the network; on a CPU the network dominates and workers only compete."""
    import os

    from ..networks import resolve_device
    if resolve_device(device).type == "cpu":
        return 0
    return max(0, min(12, (os.cpu_count() or 1) - 2))


def train_config(steps: int, seed: int, patch: int, validations: int, batch: int = 2, workers: int = 0):
    from ..training.config import TrainConfig
    epochs = max(1, min(steps, validations))
    ipe = max(1, steps // epochs)
    return TrainConfig(spacing=(1.0, 1.0, 1.0), patch_size=(patch,) * 3, batch_size=batch, epochs=epochs,
                       iterations_per_epoch=ipe, validate_every=1, lr=2e-3, warmup_epochs=min(1.0, 0.05 * epochs),
                       num_workers=workers, checkpoint_every=min(ipe, 200), seed=seed, overlap=0.25)


def best_package(run: Path) -> Path:
    """The package of the best validation (checkpoints/best.pt's EMA weights) beside the last
    one (RUN/model, written by the trainer): RUN/best-model. Without a best.pt: RUN/model."""
    import torch

    from ..model_package import load_package, save_package
    from ..networks import UniversalSegNet
    from ..training.checkpoint import load_checkpoint
    best = run / "checkpoints" / "best.pt"
    if not best.exists():
        return run / "model"
    ckpt = load_checkpoint(best)
    last = load_package(run / "model")
    net = UniversalSegNet(last.config)
    ema = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    net.load_state_dict(ema)
    provenance = {**last.meta["provenance"], "best_step": int(ckpt["step"]), "best_mean_dice": float(ckpt["best"])}
    history = run / "validation-history.jsonl"
    if history.exists():
        for line in history.read_text().splitlines():
            row = json.loads(line)
            if row["step"] == int(ckpt["step"]):
                provenance["validation"] = {"step": row["step"], "dice": row["dice"], "mean_dice": row["mean_dice"]}
    with torch.no_grad():
        return save_package(run / "best-model", net, last.tasks, last.modalities, last.spacing, last.patch_size,
                            provenance)


def learning_curve(run: Path, out: Path) -> Optional[Path]:
    """validation-history.jsonl as a figure: mean Dice and the mean per validation image kind."""
    history = run / "validation-history.jsonl"
    if not history.exists():
        return None
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    kinds = sorted({k.split("/")[0] for r in rows for k in r["dice"]})
    for kind in kinds:
        ys = [np.mean([v for k, v in r["dice"].items() if k.startswith(kind + "/")]) for r in rows]
        ax.plot(steps, ys, lw=1, label=kind)
    ax.plot(steps, [r["mean_dice"] for r in rows], "k-", lw=2, label="mean")
    ax.set_xlabel("training step")
    ax.set_ylabel("Dice (held-out subjects, synthetic)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{MODEL_ID} {VERSION}: validation during the build")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def build_brain_v2(out: str | Path, steps: int = 60000, seed: int = 0, preset: str = "small", width: int = 16,
                   patch: int = 96, batch: int = 2, validations: int = 60, device: str = "auto",
                   progress: bool = True, resume: bool = False, click_steps: int = 2000,
                   maps: Optional[str | Path] = None, held_out: Sequence[str] = HELD_OUT) -> Path:
    """Build the package (see the module docstring); returns DIR/brain-synth-2.0.0.zip."""
    from ..networks import ModelConfig
    from ..training.trainer import run_training
    from .brain import add_click_stage
    if patch % 16 or patch < 16:
        raise InputError(f"--patch must be a multiple of 16 (the network's stride), got {patch}")
    out = Path(out)
    t0 = time.time()
    files = find_maps(maps, held_out)
    data = out / "data"
    validation = write_validation(files, held_out, data / "validation", seed)
    catalog = write_catalog(data, files, held_out, validation)
    net = ModelConfig.preset(preset, tasks=list(TASKS), modalities=list(MODALITIES), base_width=width,
                             fusion={"head_dim": 2 * width})
    cfg = train_config(steps, seed, patch, validations, batch, loader_workers(device))
    result = run_training(catalog, net, cfg, out / "run", resume=resume, device=device, progress=progress)
    if not result["package"]:
        raise RuntimeError("training stopped before its last step; run again with --resume")
    trained = best_package(out / "run")
    from ..model_package import load_package
    best = load_package(trained).meta["provenance"]  # the kept checkpoint's validation, for the card
    best = {"validation": best.get("validation"), "best_step": best.get("best_step")}
    if click_steps:
        trained = Path(add_click_stage(trained, catalog, out / "clicks", click_steps, seed, device, progress, resume))
    curve = learning_curve(out / "run", out / "learning-curve.png")
    seconds = round(time.time() - t0)
    command = (f"universalseg zoo build brain --out {out} --steps {steps} --click-steps {click_steps} "
               f"--seed {seed} --patch {patch} --width {width} --batch {batch} --validations {validations}")
    zip_path = write_package(trained, out, command, seconds, [h for h in held_out], best)
    (out / "build.json").write_text(json.dumps(
        {"recipe": VERSION, "seconds": seconds, "steps": result["steps"], "seed": seed, "command": command,
         "package": str(zip_path), "trained": str(trained), "learning_curve": str(curve) if curve else None,
         "held_out": list(held_out), "exclusive_groups": EXCLUSIVE_GROUPS}, indent=2))
    return zip_path


def validation_text(meta_validation: Optional[dict], subjects: int = len(HELD_OUT)) -> str:
    """The card's validation line: mean Dice per held-out image kind at the kept checkpoint."""
    if not meta_validation or not meta_validation.get("dice"):
        return ""
    kinds: dict[str, list[float]] = {}
    for key, value in meta_validation["dice"].items():
        kinds.setdefault(key.split("/")[0].removeprefix("heldout-"), []).append(value)
    parts = ", ".join(f"{k} {np.mean(v):.2f}" for k, v in sorted(kinds.items()))
    return (f"Mean Dice over the structures on synthetic images of the {subjects} held-out subject(s) at step "
            f"{meta_validation.get('step')}: {parts}.")


def write_package(trained: str | Path, out: Path, command: str, seconds: int, held_out: list[str],
                  best: Optional[dict] = None) -> Path:
    """The trained package as the shipped file: half-precision weights, terminology for every
    task, the card, and the exclusive groups (``model.json``'s ``exclusive_groups`` where this
    UniversalSeg's ``save_package`` writes it; always in the provenance, so nothing is lost)."""
    import inspect

    from ..data.terminology import task_info
    from ..model_package import load_package, save_package
    package = load_package(trained)
    provenance = {k: v for k, v in package.meta["provenance"].items() if k != "finetune"}
    if package.config.prompt.enabled:
        provenance["click_stage"] = "trained after the network, every other weight frozen (finetune --mode clicks)"
        # the click stage's own run validated the frozen network again: keep the build's numbers
        provenance["click_stage_validation"] = provenance.pop("validation", None)
    if best and best.get("validation"):  # the held-out numbers of the checkpoint that was kept
        provenance.update({k: v for k, v in best.items() if v is not None})
    validation = validation_text(provenance.get("validation"), len(held_out))
    card = {**CARD, "build": f"{command} ({seconds} s)", "held_out": CARD["held_out"]
            if list(held_out) == list(HELD_OUT) else f"{', '.join(held_out)}: never trained on."}
    if validation:
        card["validation"] = validation
    provenance = {**provenance, "model_id": MODEL_ID, "version": VERSION, "card": card,
                  "held_out": list(held_out), "exclusive_groups": EXCLUSIVE_GROUPS}
    zip_path = Path(out) / f"{MODEL_ID}-{VERSION}.zip"
    extra = {"exclusive_groups": EXCLUSIVE_GROUPS} \
        if "exclusive_groups" in inspect.signature(save_package).parameters else {}
    save_package(zip_path, package.build("cpu"), [task_info(t) for t in package.config.tasks],
                 package.modalities, package.spacing, package.patch_size, provenance, half=True, **extra)
    return zip_path
