"""Real-image check: grey / white matter of the MNI152 template under simulated acquisitions.

nilearn ships the MNI152 T1 template with its grey- and white-matter probability maps (no
download). This script simulates acquisitions of that real anatomy: a random rigid pose and
small scaling, a resolution (isotropic or anisotropic), noise, a smooth bias field and a contrast
change (gamma). It trains the small universal model (tasks grey-matter, white-matter; modality
MR-T1) on acquisitions drawn from one set of settings and evaluates, on whole volumes, on
acquisitions made with settings never used in training (coarser, noisier, other contrast).

    python Testing/Benchmarks/mni_gm_wm.py --out Testing/Benchmarks/results/mni [--steps 300]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from UniversalSeg.networks import ModelConfig
from UniversalSeg.training.config import TrainConfig
from UniversalSeg.training.trainer import run_training

DATA = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
TRAIN_SETTINGS = {"spacing": [(2.0, 2.0, 2.0), (2.0, 2.0, 3.0), (2.5, 2.5, 2.5)],
                  "noise": (0.02, 0.05), "bias": (0.0, 0.3), "gamma": (0.85, 1.15)}
TEST_SETTINGS = {"spacing": [(3.0, 3.0, 3.0), (1.8, 1.8, 4.0)],
                 "noise": (0.07, 0.10), "bias": (0.3, 0.45), "gamma": (0.7, 0.8)}


def simulate(t1, gm, wm, settings, rng):
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    center = np.array(t1.TransformContinuousIndexToPhysicalPoint([s / 2 for s in t1.GetSize()]))
    euler = sitk.Euler3DTransform(tuple(center), *[float(a) for a in angles], tuple(rng.uniform(-5, 5, 3)))
    spacing = settings["spacing"][rng.integers(len(settings["spacing"]))]
    size = [int(round(200 / s)) for s in spacing]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetDirection(t1.GetDirection())
    ref.SetOrigin(tuple(center - np.array(t1.GetDirection()).reshape(3, 3) @ (np.array(size) * spacing / 2)))
    img = sitk.Resample(t1, ref, euler, sitk.sitkLinear, 0.0)
    g = sitk.Resample(gm, ref, euler, sitk.sitkLinear, 0.0)
    w = sitk.Resample(wm, ref, euler, sitk.sitkLinear, 0.0)
    arr = sitk.GetArrayFromImage(img) / 255.0
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in arr.shape], indexing="ij")
    b = rng.uniform(*settings["bias"])
    bias = np.exp(b * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * zz * xx))
    arr = np.clip(arr, 0, None) ** rng.uniform(*settings["gamma"]) * bias
    arr = arr + rng.normal(0, rng.uniform(*settings["noise"]), arr.shape)
    out = sitk.GetImageFromArray((arr * 1000).astype(np.float32))
    out.CopyInformation(ref)
    ga, wa = sitk.GetArrayFromImage(g), sitk.GetArrayFromImage(w)
    label = np.where((ga > 0.5) & (ga >= wa), 1, np.where(wa > 0.5, 2, 0)).astype(np.uint8)
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(ref)
    return out, lab


def write_dataset(root: Path, name: str, n: int, settings, seed: int, t1, gm, wm):
    (root / name / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / name / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, lab = simulate(t1, gm, wm, settings, rng)
        sitk.WriteImage(img, str(root / name / "imagesTr" / f"{name}_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(lab, str(root / name / "labelsTr" / f"{name}_{i:03d}.nii.gz"))
    (root / name / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR-T1"}, "labels": {"background": 0, "grey-matter": 1, "white-matter": 2},
        "numTraining": n, "file_ending": ".nii.gz"}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="Testing/Benchmarks/results/mni")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-cases", type=int, default=8)
    ap.add_argument("--test-cases", type=int, default=4)
    ap.add_argument("--base-width", type=int, default=16)
    args = ap.parse_args(argv)
    out = Path(args.out)
    t1 = sitk.ReadImage(str(DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    gm = sitk.ReadImage(str(DATA / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    wm = sitk.ReadImage(str(DATA / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    data = out / "data"
    write_dataset(data, "mni-train", args.train_cases, TRAIN_SETTINGS, 0, t1, gm, wm)
    write_dataset(data, "mni-unseen", args.test_cases, TEST_SETTINGS, 1, t1, gm, wm)
    labels = {"grey-matter": 1, "white-matter": 2}
    train_cat = data / "catalog.yaml"
    train_cat.write_text(yaml.safe_dump({"datasets": [{"name": "mni-train", "modality": "MR-T1", "root": "mni-train",
                                                       "labels": labels, "split": {"validation": 0.25}}]}))
    test_cat = data / "catalog-unseen.yaml"
    unseen_ids = [f"mni-unseen_{i:03d}" for i in range(args.test_cases)]
    test_cat.write_text(yaml.safe_dump({"datasets": [{"name": "mni-unseen", "modality": "MR-T1", "root": "mni-unseen",
                                                      "labels": labels, "split": {"validation": unseen_ids}}]}))
    net = {"tasks": ["x"], "modalities": ["CT"], "base_width": args.base_width}
    if args.base_width < 32:
        net["fusion"] = {"head_dim": args.base_width}
    epochs = max(1, args.steps // 50)
    cfg = TrainConfig(spacing=(3.0, 3.0, 3.0), patch_size=(48, 48, 48), batch_size=2, epochs=epochs,
                      iterations_per_epoch=args.steps // epochs, validate_every=epochs, lr=3e-3,
                      warmup_epochs=0.5, num_workers=0, checkpoint_every=10_000)
    run = out / "runs" / "mni"
    result = run_training(train_cat, ModelConfig.from_dict(net), cfg, run, device="cpu", progress=False)
    from UniversalSeg.cli import main as cli
    cli(["evaluate", "--model", result["package"], "--catalog", str(test_cat), "--json", str(out / "unseen.json")])
    report = {"command": "python Testing/Benchmarks/mni_gm_wm.py " + " ".join(argv or __import__("sys").argv[1:]),
              "seen_settings_validation": result["validation"], "unseen_settings": json.loads((out / "unseen.json").read_text()),
              "train_settings": str(TRAIN_SETTINGS), "test_settings": str(TEST_SETTINGS)}
    (out / "mni_gm_wm.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"seen": result["validation"]["dice"], "unseen": report["unseen_settings"]["dice"]}, indent=2))


if __name__ == "__main__":
    main()
