"""The main job on the embedded default: the whole product, end to end, on a laptop CPU.

``universalseg demo [--out DIR]``:
1. writes the synthetic multi-institution collection (5 institutions, 4 modalities, partial
   labels; a 6th institution held out of training);
2. trains ONE universal model (the small preset at width 8) on all of it, jointly (progress bar,
   bf16 on GPUs);
3. predicts TEST cases never used in training (``test_cases`` per institution, drawn from data
   seed + 1000, the held-out institution's included) with the exported package, exactly as
   ``universalseg predict`` does;
4. writes per case a ``.seg.nrrd`` (named, colored segments with SNOMED terminology: open it in
   3D Slicer) and a PNG overlay montage (prediction solid, reference dashed), a Dice table per
   institution x task (printed and ``dice.json``), and the model package ``model.zip`` (select or
   import it in the Slicer module).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .data.catalog import load_catalog
from .data.phantom import generate_collection
from .data.transforms import AugmentationConfig
from .inference import Predictor, PredictOptions, write_seg_nrrd
from .model_package import load_package
from .networks import ModelConfig
from .provenance import provenance
from .training.config import TrainConfig
from .training.evaluation import dice
from .training.trainer import run_training
from .visualization import bar_chart, overlay_montage

def demo_train_config(steps: int, shape: int, seed: int, **changes) -> TrainConfig:
    """The demo's recipe; ``changes`` override settings (Testing/Benchmarks/demo_study.py)."""
    spacing = 180.0 / shape  # the collection's field of view is 180 mm
    epochs = max(1, steps // 50)
    cfg = TrainConfig(spacing=(spacing,) * 3, patch_size=(32, 32, 32) if shape <= 40 else (48, 48, 48),
                      batch_size=2, epochs=epochs, iterations_per_epoch=max(1, steps // epochs),
                      validate_every=epochs, lr=3e-3, warmup_epochs=0.5, num_workers=0,
                      checkpoint_every=50, seed=seed, loss="dice", clicks=5,
                      augmentation=AugmentationConfig(remap_prob=0.25))
    # soft Dice, not Hermes' adaptive Tversky (the `train` default): in the seeded demo study
    # (Testing/Benchmarks/demo_study.py, README) it was as good or better on most cells.
    # remap_prob=0.25: random non-monotonic intensity curves (data/transforms.py RandIntensityRemapd):
    # the only recipe change that taught the left-out MR-T1 site's kidney, which no MR-T1 site
    # labels (Testing/Benchmarks/demo_study.py, README); it costs the seen sites a little.
    # clicks=5: the click-refinement stage trains too (its automatic weights are the same as
    # without it), so the demo's model refines with clicks in Slicer (Testing/Benchmarks/interactive.py),
    # on every step: at 64^3 it makes a step 1.72x as long (Testing/Benchmarks/demo_step_cost.py), but
    # training it on every 2nd step only (click_every=2) and spending the time on 1000 steps (arm
    # clicks-every-2) left clicks worse: on the same automatic model 23 of 56 click curves ended
    # > 0.02 lower after 5 clicks, 4 of 56 with every step (interactive.py, README)
    return cfg.replace(**changes) if changes else cfg


# The demo's grid, steps and width (version 0.6.0, Testing/Benchmarks/demo_study.py arm grid-64-800,
# README): 64^3 voxels of 2.81 mm (48^3 patches: 135 mm of context), the small preset at width 8,
# 800 steps: about 9 minutes on the 2-core CPU (a step costs 1.7x a 40^3 step at the preset's
# width 16); README's demo section compares it with the 40^3 / width 16 / 600 steps recipe before.
DEMO_SHAPE, DEMO_STEPS, DEMO_WIDTH = 64, 800, 8
# The real-anatomy demo's grid (version 0.9.0): 4 mm voxels, 48^3 patches (192 mm of context)
DEMO_SPACING_MM = 4.0


def demo_network(preset: str = "small", base_width: int | None = None) -> ModelConfig:
    """The demo's network: ``preset`` with a click-refinement stage of width 8 (the default 16
    made a 40^3 demo training step 1.7x as long as without the stage; 8: 1.26x). ``base_width``
    overrides the preset's width (and the priors' head size with it, as the accuracy study's
    networks: Testing/Benchmarks/accuracy.py); the preset's own width gives the preset's network."""
    from .networks.config import PRESETS
    own = base_width is None or base_width == PRESETS.get(preset)
    width = {} if own else {"base_width": base_width, "fusion": {"head_dim": min(32, base_width)}}
    return ModelConfig.preset(preset, tasks=["placeholder"], modalities=["CT"], prompt={"enabled": True, "width": 8},
                              **width)


def declare_ct_window(catalog_path: Path, window: tuple[float, float]) -> None:
    """Declare the CT intensity policy of a catalog (the package then stores it for inference)."""
    import yaml
    data = yaml.safe_load(catalog_path.read_text())
    data["modalities"] = {**(data.get("modalities") or {}),
                          "CT": {"kind": "window", "low": float(window[0]), "high": float(window[1])}}
    catalog_path.write_text(yaml.safe_dump(data, sort_keys=False))


def run_demo(out: str | Path, steps: int = DEMO_STEPS, cases: int = 8, shape: int = DEMO_SHAPE, seed: int = 0,
             preset: str = "small", device: str = "auto", progress: bool = True, test_cases: int = 4,
             overlays: int = 1, train_changes: dict | None = None,
             ct_window: tuple[float, float] | None = None, base_width: int | None = DEMO_WIDTH,
             kidneys: str = "posterior", anatomy: str = "amos", real_scans: str | Path | None = "auto") -> dict:
    """``anatomy``: "amos" (the default: institutions drawn from real abdominal anatomy,
    data/abdomen_collection.py, at ``DEMO_SPACING_MM``) or "phantom" (the ellipsoid phantom of
    versions 0.4.0-0.8.0, data/synthetic.py, on a ``shape``^3 grid; the phantom studies use it).
    ``overlays``: PNG montages per institution (the first N test cases). ``ct_window``: declare
    this CT window (HU) in the training catalog instead of the default CT policy. ``base_width``:
    the network's width (default: the demo's 8; None: the preset's own). ``kidneys``: where the
    phantom's kidneys lie (data/phantom.py KIDNEYS). ``real_scans``: a folder with
    TotalSegmentator's example CT and MR (``REAL_SCANS``) to segment as well ("auto": the
    repository's ``../shared/data/body-examples`` if it exists; None: none)."""
    if anatomy not in ("amos", "phantom"):
        raise ValueError(f"anatomy: 'amos' or 'phantom', got {anatomy!r}")
    out = Path(out)
    t0 = time.time()
    if anatomy == "amos":
        from .data.abdomen_anatomy import tissue_map
        from .data.abdomen_collection import default_label_maps, generate_collection as generate_abdomen
        print(f"[1/5] multi-institution collection drawn from real abdominal anatomy (AMOS 2022 label maps) -> "
              f"{out / 'data'} (training), {out / 'test-data'} (test, data seed {seed + 1000})", flush=True)
        anatomies = [tissue_map(p) for p in default_label_maps()]
        catalog_path = generate_abdomen(out / "data", cases=cases, seed=seed, progress=progress, anatomies=anatomies)
        test_path = generate_abdomen(out / "test-data", cases=test_cases, seed=seed + 1000, anatomies=anatomies)
        train_changes = {"spacing": (DEMO_SPACING_MM,) * 3, **(train_changes or {})}
    else:
        print(f"[1/5] synthetic multi-institution phantom -> {out / 'data'} (training), "
              f"{out / 'test-data'} (test, data seed {seed + 1000})", flush=True)
        catalog_path = generate_collection(out / "data", cases=cases, shape=shape, seed=seed, progress=progress,
                                           kidneys=kidneys)
        test_path = generate_collection(out / "test-data", cases=test_cases, shape=shape, seed=seed + 1000,
                                        kidneys=kidneys)
    if ct_window is not None:
        declare_ct_window(catalog_path, ct_window)
    cfg = demo_train_config(steps, shape, seed, **(train_changes or {}))
    net = demo_network(preset, base_width)
    print(f"[2/5] training the {preset} universal model (width {net.base_width}) jointly on every institution "
          f"({cfg.total_steps} steps, patch {cfg.patch_size[0]}^3 at {cfg.spacing[0]:.2f} mm)", flush=True)
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    result = run_training(catalog_path, net, cfg, run, device=device, progress=progress)
    package_dir = Path(result["package"])
    model_zip = Path(shutil.make_archive(str(out / "model"), "zip", package_dir))
    package = load_package(model_zip)
    from .training.atlas_baseline import atlas_from_catalog
    atlas = atlas_from_catalog(catalog_path)
    print(f"[3/5] predicting {test_cases} test cases per institution -> {out / 'predictions'} "
          "(and the atlas baseline on the same cases)", flush=True)
    atlas_table: dict = {}
    table = score_test_cases(package, test_path.parent, device, out / "predictions", overlays, atlas=atlas,
                             atlas_table=atlas_table)
    print(f"[4/5] Dice per institution x task, mean of {test_cases} test cases (largest component, "
          "on the input grid); in brackets: the atlas baseline (no image looked at)", flush=True)
    means = {inst: {t: float(np.mean(v)) for t, v in tasks.items()} for inst, tasks in table.items()}
    atlas_means = {inst: {t: float(np.mean(v)) for t, v in tasks.items()} for inst, tasks in atlas_table.items()}
    print(format_table(means, atlas_means, package.config.tasks))
    real = {}
    folder = find_real_scans(real_scans)
    if anatomy == "amos" and folder is not None:
        print(f"[5/5] real scans never trained on ({folder}): Dice against TotalSegmentator's segmentations "
              "(a program's output, not a person's)", flush=True)
        real = score_real_scans(package, atlas, folder, device, out / "real-scans")
        print(format_table({k: v["model"] for k, v in real.items()}, {k: v["atlas"] for k, v in real.items()},
                           package.config.tasks))
    elif anatomy == "amos":
        print("[5/5] real scans: skipped (no folder with TotalSegmentator's example CT and MR: "
              "pass real_scans=DIR)", flush=True)
    summary = {"anatomy": anatomy, "dice": means, "atlas": atlas_means,
               "cases": {k: {t: v for t, v in r.items()} for k, r in table.items()},
               "atlas_cases": atlas_table, "real_scans": real,
               "steps": result["steps"], "seconds": round(time.time() - t0, 1), "seed": seed,
               "test_cases": test_cases, "train_config": cfg.to_dict(), "kidneys": kidneys,
               "model": str(model_zip), "catalog": str(catalog_path),
               **provenance(" ".join(sys.argv))}
    (out / "dice.json").write_text(json.dumps(summary, indent=2))
    bar_chart({inst: row for inst, row in means.items()}, out / "dice.png",
              title="Demo: Dice per institution x task (one universal model)")
    print(f"done in {summary['seconds']:.0f} s: {out / 'dice.json'}, {out / 'dice.png'}, "
          f"{out / 'predictions'} (.seg.nrrd + .png), model {model_zip}")
    return summary


def format_table(means: dict, atlas: dict, tasks) -> str:
    lines = [f"{'':44s} " + " ".join(f"{t:>15s}" for t in tasks)]
    for name, row in means.items():
        cells = []
        for t in tasks:
            if t not in row:
                cells.append(f"{'-':>15s}")
            elif t in atlas.get(name, {}):
                cells.append(f"{row[t]:7.3f} [{atlas[name][t]:5.3f}]")
            else:
                cells.append(f"{row[t]:15.3f}")
        lines.append(f"{name:44s} " + " ".join(cells))
    return "\n".join(lines)


# TotalSegmentator's example scans (tests/reference_files, Apache-2.0): image, segmentation,
# modality, and the segmentation's ids per demo task ("total" / "total_mr" class maps).
REAL_SCANS = {
    "real CT (TotalSegmentator example)": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "CT",
                                           {"liver": [5], "spleen": [1], "kidney": [2, 3], "pancreas": [7]}),
    "real MR-T1 (TotalSegmentator example)": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR-T1",
                                              {"liver": [5], "spleen": [1], "kidney": [2, 3], "pancreas": [7]}),
}


def find_real_scans(real_scans) -> Path | None:
    if real_scans is None:
        return None
    if real_scans == "auto":
        folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "body-examples"
        return folder if folder.is_dir() else None
    return Path(real_scans)


def score_real_scans(package, atlas, folder: Path, device: str = "auto", pictures: Path | None = None) -> dict:
    """Dice of ``package`` and of the ``atlas`` baseline on the real scans of ``REAL_SCANS`` in
    ``folder``, against TotalSegmentator's segmentations; a PNG montage per scan in ``pictures``."""
    predictor = Predictor(package, device=device)
    infos = {t.name: t for t in package.tasks}
    out = {}
    for name, (image_file, seg_file, modality, ids) in REAL_SCANS.items():
        tasks = [t for t in ids if t in package.config.tasks]
        image = sitk.ReadImage(str(folder / image_file))
        pred = predictor.predict(folder / image_file, modality, tasks, PredictOptions(largest_component=True))
        seg = sitk.ReadImage(str(folder / seg_file))
        lab = sitk.GetArrayViewFromImage(seg)
        atlas_masks = atlas.segment(image, modality, tasks)
        row, atlas_row, reference = {}, {}, {}
        for t in tasks:
            truth = np.isin(lab, ids[t])
            if not truth.any():
                continue
            row[t] = dice(sitk.GetArrayViewFromImage(pred.masks[t]) > 0, truth)
            if t in atlas_masks:
                atlas_row[t] = dice(atlas_masks[t], truth)
            reference[t] = sitk.GetImageFromArray(truth.astype(np.uint8))
            reference[t].CopyInformation(seg)
        out[name] = {"model": row, "atlas": atlas_row, "image": image_file, "reference": seg_file,
                     "reference_kind": "TotalSegmentator's output (automatic), not manual"}
        if pictures is not None:
            pictures.mkdir(parents=True, exist_ok=True)
            stem = image_file.split(".")[0]
            write_seg_nrrd(pictures / f"{stem}.seg.nrrd", pred.reference, pred.masks, infos)
            overlay_montage(pred.reference, {t: pred.masks[t] for t in row}, {t: infos[t].color for t in row},
                            pictures / f"{stem}.png",
                            title=f"{name} (solid: UniversalSeg, dashed: TotalSegmentator)", reference=reference)
    return out


def score_test_cases(package, test_root: Path, device: str = "auto", predictions: Path | None = None,
                     overlays: int = 0, catalogs=(("catalog.yaml", "test"), ("catalog-heldout.yaml", "left out of training")),
                     atlas=None, atlas_table: dict | None = None) -> dict[str, dict[str, list]]:
    """Dice per '<institution> (<why>)' x task x case of ``package`` on every case of the test
    collection in ``test_root`` (largest components, on each input grid, as ``predict`` does);
    with ``predictions``: a .seg.nrrd per case and a PNG montage for the first ``overlays``. With
    an ``atlas`` (training.atlas_baseline), its Dice on the same cases goes into ``atlas_table``."""
    predictor = Predictor(package, device=device)
    infos = {t.name: t for t in package.tasks}
    jobs = [(ds, c, why, n) for name, why in catalogs
            for ds in load_catalog(Path(test_root) / name).datasets
            for n, c in enumerate(ds.splits["train"] + ds.splits["validation"])]
    table: dict[str, dict[str, list]] = {}
    for ds, case, why, n in jobs:
        tasks = [t for t in ds.tasks if t in package.config.tasks]
        pred = predictor.predict(case.image, ds.modality, tasks, PredictOptions(largest_component=True))
        label = sitk.ReadImage(str(case.label))
        lab = sitk.GetArrayViewFromImage(label)
        reference = {}
        atlas_masks = {} if atlas is None else atlas.segment(sitk.ReadImage(str(case.image)), ds.modality, tasks)
        for t in tasks:
            truth = np.isin(lab, ds.label_map[t])
            got = sitk.GetArrayViewFromImage(pred.masks[t]) > 0
            table.setdefault(f"{ds.name} ({why})", {}).setdefault(t, []).append(dice(got, truth))
            if atlas is not None and t in atlas_masks:
                atlas_table.setdefault(f"{ds.name} ({why})", {}).setdefault(t, []).append(dice(atlas_masks[t], truth))
            if predictions is not None and n < overlays:  # the montage's dashed reference
                reference[t] = sitk.GetImageFromArray(truth.astype(np.uint8))
                reference[t].CopyInformation(label)
        if predictions is not None:
            write_seg_nrrd(predictions / f"{case.id}.seg.nrrd", pred.reference, pred.masks, infos)
            if n < overlays:
                overlay_montage(pred.reference, pred.masks, {t: infos[t].color for t in tasks},
                                predictions / f"{case.id}.png",
                                title=f"{case.id} - {ds.modality} - {why} (solid: prediction, dashed: reference)",
                                reference=reference)
    return table
