"""The shipped brain model: one real template, synthetic contrasts, every brain MR and CT.

``universalseg zoo build brain --out DIR`` (reproducible from ``--seed``):
1. writes ``HEADS`` whole-head label maps from nilearn's MNI152 template (``data.brain_template``:
   CSF, grey and white matter of the template, random extra-cerebral layers) into DIR/data;
2. writes a catalog with one ``synthesize`` dataset per modality (MR-T1, MR-T2, MR-FLAIR, MR-PD,
   CT) over those label maps: every training step draws a new image of that modality from a
   randomly deformed label map (``data.synthesis``);
3. trains the universal network (tasks brain, gray-matter, white-matter, csf, head) on them,
   then its click-refinement stage with every other weight frozen (``finetune --mode clicks``:
   the automatic outputs are those of step 3, bit for bit);
4. writes the model package, its weights stored in half precision, as DIR/<id>-<version>.zip
   with a model card (``provenance.card``) that ``universalseg info`` and the Slicer panel show.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..data.brain_template import TASK_VALUES, TISSUES, head_label_map, template_tissues
from ..data.transforms import AugmentationConfig
from ..networks import ModelConfig
from ..training.config import TrainConfig

__all__ = ["CARD", "HEADS", "MODALITIES", "TASKS", "add_click_stage", "build_brain", "train_config", "validation_text",
           "write_card_validation", "write_catalog", "write_heads", "write_package"]

log = logging.getLogger("UniversalSeg.zoo")

MODEL_ID, VERSION = "brain-synth", "1.0.1"  # 1.0.1: 1.0's network + its click stage
MODALITIES = ("MR-T1", "MR-T2", "MR-FLAIR", "MR-PD", "CT")
TASKS = ("brain", "gray-matter", "white-matter", "csf", "head")
HEADS = 6
CARD = {
    "summary": "Brain, grey matter, white matter, CSF and head on brain MR of any common contrast "
               "(T1, T2, FLAIR, PD) and on head CT.",
    "trained_on": "ONE real anatomy: the MNI152 2009c symmetric template (nilearn) with its grey/white "
                  "matter maps, wrapped in randomly generated CSF rim, skull, fat and skin layers. Every "
                  "training image is synthetic: drawn from a randomly deformed label map with random "
                  "tissue intensities of the modality, blur, bias field, gamma, resolution 1-5 mm and "
                  "noise (SynthSeg-style domain randomisation). No patient data.",
    "intended_use": "Research: a quick brain / tissue mask on an adult head scan, a starting point for "
                    "corrections and fine-tuning. Not for diagnosis.",
    "limits": "One template brain: atrophy, lesions, tumours, children and abnormal anatomy were never "
              "seen. The head layers are generated shells, not real skull or face anatomy; the neck "
              "and face are missing. Grey/white matter boundaries follow the template's smooth maps "
              "at the model's 2 mm spacing. CT grey/white matter contrast is a few HU: expect weak "
              "tissue maps on CT.",
}


def write_heads(out: Path, count: int, seed: int) -> list[Path]:
    """``count`` whole-head label maps (1 mm, uint8) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tissues = template_tissues()
    paths = []
    for i in range(count):
        path = out / f"head{i:02d}.nii.gz"
        sitk.WriteImage(head_label_map(tissues, np.random.default_rng([seed, i])), str(path), useCompression=True)
        paths.append(path)
    return paths


def write_catalog(data: Path, heads: list[Path]) -> Path:
    import yaml
    datasets = [{"name": f"synthetic-{m.lower()}", "modality": m,
                 "synthesize": {"tissues": dict(TISSUES)},
                 "cases": [{"id": p.name.split(".")[0], "label": str(p.relative_to(data))} for p in heads],
                 "labels": {t: list(v) for t, v in TASK_VALUES.items()}} for m in MODALITIES]
    path = data / "catalog.yaml"
    path.write_text("# Written by `universalseg zoo build brain`: images are drawn from the label maps.\n"
                    + yaml.safe_dump({"format_version": 1, "datasets": datasets}, sort_keys=False))
    return path


def train_config(steps: int, seed: int, patch: int = 48) -> TrainConfig:
    epochs = max(1, steps // 100)
    return TrainConfig(spacing=(2.0, 2.0, 2.0), patch_size=(patch,) * 3, batch_size=2, epochs=epochs,
                       iterations_per_epoch=max(1, steps // epochs), validate_every=10 ** 6, lr=2e-3,
                       warmup_epochs=0.5, num_workers=0, checkpoint_every=100, seed=seed,
                       augmentation=AugmentationConfig(affine_prob=0.7, rotate_degrees=20.0, scale=0.15,
                                                       intensity_prob=0.0, foreground_ratio=0.5))
    # 1.0's settings, as shipped. A 1.1 with shear 0.05, left-right flips (p 0.5) and intensity
    # augmentation (p 0.3) was built (version 0.4.0, seed 0) and measured WORSE by brain_model.py: head on
    # whole-head T2/FLAIR 0.99 -> 0.74-0.76, raw brain masks 0.64-0.80 -> 0.50-0.67, template white
    # matter 0.53 -> 0.43 (Testing/Benchmarks/results/brain/v1.1-rejected); not shipped.


def build_brain(out: str | Path, steps: int = 1500, seed: int = 0, preset: str = "small", width: int = 12,
                patch: int = 48, device: str = "auto", progress: bool = True, resume: bool = False,
                click_steps: int = 300) -> Path:
    """Build the package (see the module docstring); width 12 keeps it under 25 MB in float16."""
    from ..training.trainer import run_training
    out = Path(out)
    t0 = time.time()
    data = out / "data"
    heads = sorted((data / "heads").glob("head*.nii.gz")) if resume else []
    if len(heads) != HEADS:
        heads = write_heads(data / "heads", HEADS, seed)
    catalog = write_catalog(data, heads)
    net = ModelConfig.preset(preset, tasks=list(TASKS), modalities=list(MODALITIES), base_width=width,
                             fusion={"head_dim": 2 * width})
    cfg = train_config(steps, seed, patch)
    result = run_training(catalog, net, cfg, out / "run", resume=resume, device=device, progress=progress)
    if not result["package"]:
        raise RuntimeError("training stopped before its last step; run again with --resume")
    if click_steps:
        result = {"package": add_click_stage(result["package"], catalog, out / "clicks", click_steps, seed,
                                             device, progress, resume), "steps": result["steps"]}
    seconds = round(time.time() - t0)
    zip_path = write_package(result["package"], out, steps, seed, seconds)
    (out / "build.json").write_text(json.dumps({"seconds": seconds, "steps": result["steps"], "seed": seed,
                                                "package": str(zip_path), "trained": str(result["package"])},
                                               indent=2))
    return zip_path


def write_card_validation(out: str | Path, benchmark_json: str | Path) -> Path:
    """Rewrite the package of the finished build in ``out`` with the model card's validation line
    taken from Testing/Benchmarks/brain_model.py's JSON (run on that package); weights unchanged."""
    from ..errors import InputError
    out = Path(out)
    try:
        build = json.loads((out / "build.json").read_text())
        steps, seconds, seed = int(build["steps"]), int(build["seconds"]), int(build.get("seed", 0))
        validation = validation_text(json.loads(Path(benchmark_json).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"needs a finished build in {out} (build.json) and brain_model.py's JSON: {exc}") from None
    trained = build.get("trained") or next((str(p) for p in (out / "clicks" / "model", out / "run" / "model")
                                            if p.is_dir()), None)
    if not trained:
        raise InputError(f"{out} holds no trained package (clicks/model or run/model)")
    return write_package(trained, out, steps, seed, seconds, validation=validation)


def add_click_stage(package_path, catalog: Path, run: Path, steps: int, seed: int, device: str = "auto",
                    progress: bool = True, resume: bool = False) -> str:
    """Train the click-refinement stage of a finished package (everything else frozen) on the
    same synthetic data; returns the new package's folder."""
    from ..data.catalog import load_catalog
    from ..model_package import load_package
    from ..training.finetune_start import FineTuneStart, finetune_config
    from ..training.trainer import run_training
    package = load_package(package_path)
    start = FineTuneStart(package, Path(package_path), "clicks", name=MODEL_ID)
    # the fine-tuning recipe on the network's own settings, as brain-synth 1.0.1's stage was
    # trained: epochs of 100 steps, validated (once, at the end) and checkpointed as the network
    base = train_config(steps, seed)
    cfg = finetune_config(package, steps, "clicks", base=base, steps_per_epoch=100,
                          validate_every=base.validate_every)
    result = run_training(load_catalog(catalog), None, cfg, run, resume=resume, device=device,
                          progress=progress, start=start)
    if not result["package"]:
        raise RuntimeError("the click stage's training stopped before its last step; run again with --resume")
    return result["package"]


def validation_text(results: dict) -> str:
    """The card's validation line from Testing/Benchmarks/brain_model.py's JSON."""
    parts = [f"{name}: " + ", ".join(f"{t} {d:.2f}" for t, d in row.items())
             for name, row in results["dice"].items()]
    return ("Dice (Testing/Benchmarks/brain_model.py, acquisitions never used in training; one template "
            "anatomy behind training and test): " + "; ".join(parts) + ".")


def write_package(run_package: str | Path, out: Path, steps: int, seed: int, seconds: int,
                  validation: str = "") -> Path:
    """The trained run's package as the shipped file: half-precision weights, today's terminology
    for every task, and the model card (with ``validation``: the benchmark's numbers, once run)."""
    from ..data.terminology import task_info
    from ..model_package import load_package, save_package
    package = load_package(run_package)
    provenance = {k: v for k, v in package.meta["provenance"].items() if k != "finetune"}
    if package.config.prompt.enabled:  # trained by add_click_stage: say so, it is no user fine-tuning
        provenance["click_stage"] = "trained after the network, every other weight frozen (finetune --mode clicks)"
    provenance = {**provenance, "model_id": MODEL_ID, "version": VERSION,
                  "card": {**CARD, "build": f"universalseg zoo build brain --steps {steps} --seed {seed} "
                                            f"({seconds} s on a 2-core CPU)",
                           **({"validation": validation} if validation else {})}}
    zip_path = Path(out) / f"{MODEL_ID}-{VERSION}.zip"
    save_package(zip_path, package.build("cpu"), [task_info(t) for t in package.config.tasks],
                 package.modalities, package.spacing, package.patch_size, provenance, half=True)
    return zip_path
