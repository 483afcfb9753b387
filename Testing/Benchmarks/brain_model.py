"""The shipped brain model on acquisitions it never saw in training, its speed and memory.

    python Testing/Benchmarks/brain_model.py --out Testing/Benchmarks/results/brain [--model brain-synth]

1. The REAL template T1 (skull-stripped, 1 mm; the one real image behind the training label maps):
   Dice per task against its tissue map.
2. Simulated acquisitions of whole heads made from label maps with a seed never used in training
   (other layer thicknesses) and with settings outside the training ranges: a T1 at 1x1x5 mm with a
   strong bias field and heavy noise, a "mixed" contrast whose tissue intensities are drawn at
   random (no trained modality has them; run as MR-T2), a T2 at 4 mm isotropic, and a CT at
   0.9x0.9x5 mm. Each image lies on its own grid; Dice against the label map on that grid. The MR
   ones again with ``--largest-component`` (brain, head): the model puts spurious blobs into the
   noisy air around a whole head, and that option (the panel's and the CLI's) removes them.
3. A rotated (20 degrees), anisotropic (1.2x1.2x3 mm) copy of the template T1: the output must lie on
   the exact input grid (checked), and its Dice.
4. Speed and memory: a 1 mm whole-head T1 of 180x220x180 voxels predicted in fp32 in a fresh
   process (seconds, peak RSS), threads as the predictor chooses.
5. Overlays: the template prediction and the simulated CT (PNG).
Writes OUT/brain_model.json and OUT/brain_model.md (the table README shows).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from UniversalSeg.data.brain_template import TASK_VALUES, TISSUES, head_label_map, template_t1, template_tissues
from UniversalSeg.data.synthesis import TISSUE_MODELS, synthesize
from UniversalSeg.inference import Predictor, PredictOptions
from UniversalSeg.model_download import resolve_model
from UniversalSeg.training.evaluation import dice
from UniversalSeg.visualization import overlay_montage

TEST_SEED = 1000  # the training label maps use seeds (0, i)


def on_grid(image: sitk.Image, spacing, size=None, direction=None, nearest=False) -> sitk.Image:
    """``image`` resampled onto a grid of ``spacing`` covering the same box (optionally rotated)."""
    old = np.array(image.GetSize()) * np.array(image.GetSpacing())
    size = size or [int(round(o / s)) for o, s in zip(old, spacing)]
    direction = np.array(direction if direction is not None else image.GetDirection()).reshape(3, 3)
    center = np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    origin = center - direction @ (np.array(spacing) * (np.array(size) - 1) / 2)
    ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetDirection(direction.ravel().tolist())
    ref.SetOrigin(origin.tolist())
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, ref, sitk.Transform(), interp, 0.0, image.GetPixelID())


def acquire(labels: sitk.Image, modality: str, spacing, rng, tissue_model=None, bias=0.0, noise=0.0):
    """An image of ``modality`` drawn from ``labels`` at 1 mm, then acquired at ``spacing``:
    averaged over each acquired voxel (a thick slice is the mean of the thin ones), plus a bias
    field and noise beyond the training ranges when asked. Returns (image, labels on its grid)."""
    arr = torch.from_numpy(sitk.GetArrayFromImage(labels).astype(np.int64))
    fine = synthesize(arr, TISSUES, modality, labels.GetSpacing()[::-1], rng, acquisition=False,
                      model=tissue_model).numpy()
    img = sitk.GetImageFromArray(fine.astype(np.float32))
    img.CopyInformation(labels)
    sigma = [max(s / 2.5, 0.01) for s in spacing]  # the acquisition's own partial volume
    acquired = on_grid(sitk.SmoothingRecursiveGaussian(img, sigma), spacing)
    out = sitk.GetArrayFromImage(acquired)
    if bias:
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in out.shape], indexing="ij")
        out = out * np.exp(bias * (xx + 0.5 * yy - 0.7 * zz))
    if noise:
        out = out + rng.normal(0, noise * float(np.percentile(out, 99)), out.shape)
    if modality == "CT":
        out = out + rng.normal(0, 8.0, out.shape)  # a CT's quantum noise, HU
    image = sitk.GetImageFromArray(out.astype(np.float32))
    image.CopyInformation(acquired)
    return image, on_grid(labels, spacing, nearest=True)


def scores(pred, labels: sitk.Image, tasks) -> dict:
    lab = sitk.GetArrayFromImage(labels)
    return {t: round(dice(sitk.GetArrayViewFromImage(pred.masks[t]) > 0, np.isin(lab, TASK_VALUES[t])), 3)
            for t in tasks}


def speed_child(model: str, path: str) -> None:
    package = resolve_model(model, progress=False)
    predictor = Predictor(package, device="cpu", precision="fp32")
    t = time.perf_counter()
    predictor.predict(sitk.ReadImage(path), "MR-T1", [t.name for t in package.tasks], PredictOptions())
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(json.dumps({"seconds": round(seconds, 1), "peak_rss_gib": round(rss, 2)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain-synth", help="package path or catalog id")
    parser.add_argument("--out", default="Testing/Benchmarks/results/brain")
    parser.add_argument("--speed-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.speed_child:
        speed_child(*args.speed_child)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    package = resolve_model(args.model, progress=False)
    predictor = Predictor(package, device="cpu", precision="fp32")
    colors = {t.name: t.color for t in package.tasks}
    tasks = ["brain", "gray-matter", "white-matter", "csf"]
    rows, rng = {}, np.random.default_rng(TEST_SEED)

    t1, tissues = template_t1(), template_tissues()
    pred = predictor.predict(t1, "MR-T1", tasks, PredictOptions())
    rows["template T1 (real, skull-stripped, 1 mm)"] = scores(pred, tissues, tasks)
    overlay_montage(t1, {t: pred.masks[t] for t in ("gray-matter", "white-matter", "csf")}, colors,
                    out / "brain_template_t1.png", title="MNI152 T1 (real): prediction")

    head = head_label_map(tissues, np.random.default_rng([TEST_SEED, 0]))
    random_contrast = {t: (lo, lo) for t, (lo, _) in TISSUE_MODELS["MR-T2"].items()}
    for t in random_contrast:
        v = float(rng.uniform(0.0, 1.0))
        random_contrast[t] = (v, v)
    random_contrast["air"] = (0.0, 0.02)
    cases = [("T1, 1x1x5 mm, strong bias, heavy noise", "MR-T1", (1.0, 1.0, 5.0), None, 0.8, 0.12),
             ("random contrast (run as MR-T2), 2 mm", "MR-T2", (2.0, 2.0, 2.0), random_contrast, 0.3, 0.05),
             ("T2, 4 mm isotropic", "MR-T2", (4.0, 4.0, 4.0), None, 0.0, 0.03),
             ("FLAIR, 1x1x5 mm", "MR-FLAIR", (1.0, 1.0, 5.0), None, 0.3, 0.05),
             ("CT, 0.9x0.9x5 mm", "CT", (0.9, 0.9, 5.0), None, 0.0, 0.0)]
    for name, modality, spacing, model, bias, noise in cases:
        image, labels = acquire(head, modality, spacing, rng, model, bias, noise)
        pred = predictor.predict(image, modality, tasks + ["head"], PredictOptions())
        rows[f"simulated {name}"] = scores(pred, labels, tasks + ["head"])
        if modality != "CT":  # whole-head MR: spurious blobs in noisy air, which --largest-component drops
            pred = predictor.predict(image, modality, ["brain", "head"], PredictOptions(largest_component=True))
            rows[f"simulated {name}, --largest-component"] = scores(pred, labels, ["brain", "head"])
        if modality == "CT":
            overlay_montage(image, {t: pred.masks[t] for t in ("brain", "head")}, colors,
                            out / "brain_simulated_ct.png", title=f"simulated {name}: prediction")

    rotation = sitk.Euler3DTransform((0, 0, 0), np.deg2rad(20), np.deg2rad(-10), np.deg2rad(15))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(t1.GetDirection()).reshape(3, 3)
    oblique = on_grid(t1, (1.2, 1.2, 3.0), direction=direction.ravel())
    oblique_labels = on_grid(tissues, (1.2, 1.2, 3.0), direction=direction.ravel(), nearest=True)
    pred = predictor.predict(oblique, "MR-T1", tasks, PredictOptions())
    grid_ok = all(m.GetSize() == oblique.GetSize() and m.GetOrigin() == oblique.GetOrigin()
                  and m.GetSpacing() == oblique.GetSpacing() and m.GetDirection() == oblique.GetDirection()
                  for m in pred.masks.values())
    rows["template T1 rotated 20/10/15 deg, 1.2x1.2x3 mm"] = scores(pred, oblique_labels, tasks)

    # 1 mm whole head, 180x220x180, in a fresh process (its own peak memory)
    big, _ = acquire(head, "MR-T1", (1.0, 1.0, 1.0), np.random.default_rng([TEST_SEED, 1]))
    size = big.GetSize()
    box = [max(0, (s - w) // 2) for s, w in zip(size, (180, 220, 180))]
    big = sitk.RegionOfInterest(big, [min(w, s) for s, w in zip(size, (180, 220, 180))], box)
    big_path = out / "whole_head_t1_1mm.nii.gz"
    sitk.WriteImage(big, str(big_path))
    child = subprocess.run([sys.executable, __file__, "--speed-child", args.model, str(big_path)],
                           capture_output=True, text=True, check=True)
    speed = json.loads(child.stdout.strip().splitlines()[-1])
    big_path.unlink()

    result = {"model": args.model, "dice": rows, "output_on_input_grid": grid_ok,
              "whole_head_1mm": {"size": list(big.GetSize()), **speed}, "test_seed": TEST_SEED}
    (out / "brain_model.json").write_text(json.dumps(result, indent=2))
    cols = tasks + ["head"]
    lines = ["| acquisition | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c in row else "-" for c in cols) + " |")
    lines.append("")
    lines.append(f"Output on the exact input grid of the rotated copy: {grid_ok}. Whole head "
                 f"{tuple(big.GetSize())} at 1 mm, fp32, CPU: {speed['seconds']} s, peak RSS "
                 f"{speed['peak_rss_gib']} GiB.")
    (out / "brain_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
