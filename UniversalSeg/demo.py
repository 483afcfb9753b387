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
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .data.catalog import load_catalog
from .data.synthetic import generate_collection
from .data.transforms import AugmentationConfig
from .inference import Predictor, PredictOptions, write_seg_nrrd
from .model_package import load_package
from .networks import ModelConfig
from .training.config import TrainConfig
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


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2 * (pred & truth).sum() / denom)


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
             kidneys: str = "posterior") -> dict:
    """``overlays``: PNG montages per institution (the first N test cases). ``ct_window``: declare
    this CT window (HU) in the training catalog instead of the default CT policy. ``base_width``:
    the network's width (default: the demo's 8; None: the preset's own). ``kidneys``: where the
    phantom's kidneys lie (data/synthetic.py KIDNEYS)."""
    out = Path(out)
    t0 = time.time()
    print(f"[1/4] synthetic multi-institution collection -> {out / 'data'} (training), "
          f"{out / 'test-data'} (test, data seed {seed + 1000})", flush=True)
    catalog_path = generate_collection(out / "data", cases=cases, shape=shape, seed=seed, progress=progress,
                                       kidneys=kidneys)
    test_path = generate_collection(out / "test-data", cases=test_cases, shape=shape, seed=seed + 1000,
                                    kidneys=kidneys)
    if ct_window is not None:
        declare_ct_window(catalog_path, ct_window)
    cfg = demo_train_config(steps, shape, seed, **(train_changes or {}))
    net = demo_network(preset, base_width)
    print(f"[2/4] training the {preset} universal model (width {net.base_width}) jointly on every institution "
          f"({cfg.total_steps} steps, patch {cfg.patch_size[0]}^3 at {cfg.spacing[0]:.2f} mm)", flush=True)
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    result = run_training(catalog_path, net, cfg, run, device=device, progress=progress)
    package_dir = Path(result["package"])
    model_zip = Path(shutil.make_archive(str(out / "model"), "zip", package_dir))
    package = load_package(model_zip)
    print(f"[3/4] predicting {test_cases} test cases per institution -> {out / 'predictions'}", flush=True)
    table = score_test_cases(package, test_path.parent, device, out / "predictions", overlays)

    print(f"[4/4] Dice per institution x task, mean of {test_cases} test cases (largest component, "
          "on the input grid)", flush=True)
    means = {inst: {t: float(np.mean(v)) for t, v in tasks.items()} for inst, tasks in table.items()}
    lines = [f"{'institution':44s} " + " ".join(f"{t:>12s}" for t in package.config.tasks)]
    for inst, row in means.items():
        lines.append(f"{inst:44s} " + " ".join(f"{row[t]:12.3f}" if t in row else f"{'-':>12s}"
                                                for t in package.config.tasks))
    print("\n".join(lines))
    summary = {"dice": means, "cases": {k: {t: v for t, v in r.items()} for k, r in table.items()},
               "steps": result["steps"], "seconds": round(time.time() - t0, 1), "seed": seed,
               "test_cases": test_cases, "train_config": cfg.to_dict(), "kidneys": kidneys,
               "model": str(model_zip), "catalog": str(catalog_path)}
    (out / "dice.json").write_text(json.dumps(summary, indent=2))
    bar_chart({inst: row for inst, row in means.items()}, out / "dice.png",
              title="Demo: Dice per institution x task (one universal model)")
    print(f"done in {summary['seconds']:.0f} s: {out / 'dice.json'}, {out / 'dice.png'}, "
          f"{out / 'predictions'} (.seg.nrrd + .png), model {model_zip}")
    return summary


def score_test_cases(package, test_root: Path, device: str = "auto", predictions: Path | None = None,
                     overlays: int = 0, catalogs=(("catalog.yaml", "test"), ("catalog-heldout.yaml", "left out of training"))
                     ) -> dict[str, dict[str, list]]:
    """Dice per '<institution> (<why>)' x task x case of ``package`` on every case of the test
    collection in ``test_root`` (largest components, on each input grid, as ``predict`` does);
    with ``predictions``: a .seg.nrrd per case and a PNG montage for the first ``overlays``."""
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
        for t in tasks:
            truth = np.isin(lab, ds.label_map[t])
            got = sitk.GetArrayViewFromImage(pred.masks[t]) > 0
            table.setdefault(f"{ds.name} ({why})", {}).setdefault(t, []).append(dice(got, truth))
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
