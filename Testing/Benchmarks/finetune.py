"""The correction loop, measured: fine-tune a demo model with 3 corrected cases of the site it
never saw, and teach it a structure it never had, on the demo's collection (the phantom; real
anatomy with ``--demo-seeds``, the parents of ``demo_seeds.py``).

    python Testing/Benchmarks/finetune.py --out Testing/Benchmarks/results/finetune \\
        --models-from Testing/Benchmarks/results/demo_study/runs --arm dice --seeds 0 1 2

Per seed: the PARENT is the demo model of that seed (``--models-from``: a demo_study.py run folder
with model.zip, data/ and test-data/; else one is trained here: ``universalseg demo``'s recipe, 64^3
at width 8 and 800 steps by default; ``--shape 40 --width 16 --demo-steps 600`` is the 40^3 recipe
of the results before version 0.7.0).
1. adapt: ``universalseg finetune --mode adapt`` on 3 labelled cases of the left-out MR-T1 site
   (its ground truth stands in for the user's corrections), replaying the five seen sites
   (``--replay``, half of the samples). Before/after Dice on the TEST cases (data seed + 1000,
   never trained on) of the left-out site and of the seen sites.
2. add-tasks: a NEW structure, the left kidney ("kidney-left": the kidney voxels on the patient's
   left), learnt from 3 cases of ct-hospital-a with every old weight frozen; its Dice on that
   site's test cases (largest component kept), the new structure's mean probability inside the
   left and inside the right kidney (does it tell them apart?), and whether the old structures'
   outputs stay bit-identical (every voxel of every test prediction).

Writes OUT/finetune.json: ``heldout_before``, ``heldout_after``, ``seen_before``, ``seen_after``
(mean Dice over tasks and seeds), per seed the same, and the add-tasks results. ``--quick``: one
seed, fewer steps (a few minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

LEFT_OUT, NEW_SITE = "mr-t1-hospital-f", "ct-hospital-a"
# label values of the demo's collections: the phantom (data/phantom.py) and real anatomy (data/abdomen_collection.py)
LABELS = {"phantom": {"liver": 1, "spleen": 3, "kidney": 4}, "amos": {"liver": 1, "spleen": 2, "kidney": 3, "pancreas": 4}}
LEFT_KIDNEY = 5  # the new structure's value (free in both)


def cli(*args) -> None:
    env = {**os.environ}
    env.setdefault("UNIVERSALSEG_THREADS", "2")
    proc = subprocess.run([sys.executable, "-m", "UniversalSeg", *args, "--no-progress"],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")


def user_catalog(path: Path, root: Path, cases: list[str], labels: dict, name: str, modality: str) -> Path:
    """The user's training set: ``cases`` of the nnU-Net folder ``root``, all for training."""
    path.write_text(yaml.safe_dump({"datasets": [{
        "name": name, "modality": modality, "labels": labels,
        "cases": [{"id": c, "image": str(root / "imagesTr" / f"{c}_0000.nii.gz"),
                   "label": str(root / "labelsTr" / f"{c}.nii.gz")} for c in cases],
        "split": {"validation": 0.0}}]}))
    return path


def left_kidney_copy(src: Path, dst: Path, kidney: int = 4) -> Path:
    """The site with its kidney label split: value 5 where the kidney lies on the patient's left
    (LPS x > 0), ``kidney`` on the right. Images are linked, labels rewritten."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for image in sorted((src / "imagesTr").glob("*.nii.gz")):
        link = dst / "imagesTr" / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
    for label in sorted((src / "labelsTr").glob("*.nii.gz")):
        img = sitk.ReadImage(str(label))
        arr = sitk.GetArrayFromImage(img)
        kji = np.argwhere(arr == kidney)
        lps = np.array([img.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in kji])
        arr[tuple(kji[lps[:, 0] > 0].T)] = LEFT_KIDNEY
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(dst / "labelsTr" / label.name), useCompression=True)
    return dst


def mean_dice(table: dict, rows) -> float:
    values = [statistics.mean(v) for row, tasks in table.items() if rows(row) for v in tasks.values()]
    return float(statistics.mean(values)) if values else float("nan")


def per_task(table: dict) -> dict:
    return {row: {t: round(statistics.mean(v), 3) for t, v in tasks.items()} for row, tasks in table.items()}


def one_seed(seed: int, parent_dir: Path, out: Path, steps: int, cases: int, anatomy: str = "phantom") -> dict:
    from UniversalSeg.demo import score_test_cases
    from UniversalSeg.inference import Predictor, PredictOptions
    from UniversalSeg.model_package import load_package
    from UniversalSeg.training.evaluation import dice
    data, test = parent_dir / "data", parent_dir / "test-data"
    parent = load_package(parent_dir / "model.zip")
    work = out / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    result = {"seed": seed, "parent": str(parent_dir / "model.zip")}
    t0 = time.time()
    before = score_test_cases(parent, test, "cpu")
    # 1. adapt to the left-out site from `cases` corrected cases, replaying the seen sites
    ids = sorted(p.name[:-len(".nii.gz")] for p in (data / LEFT_OUT / "labelsTr").glob("*.nii.gz"))[:cases]
    values = LABELS[anatomy]
    mine = user_catalog(work / "my-cases.yaml", data / LEFT_OUT, ids, {t: [v] for t, v in values.items()},
                        "my-mr-t1-cases", "MR-T1")
    run = work / "adapt"
    if not (run / "model" / "model.json").exists():
        cli("finetune", "--model", str(parent_dir / "model.zip"), "--catalog", str(mine), "--out", str(run),
            "--mode", "adapt", "--replay", str(data / "catalog.yaml"), "--steps", str(steps), "--seed", str(seed),
            "--device", "cpu", "--evaluate", "none")
    after = score_test_cases(load_package(run / "model"), test, "cpu")
    held = lambda row: "left out" in row  # noqa: E731
    seen = lambda row: "left out" not in row  # noqa: E731
    result.update(heldout_before=mean_dice(before, held), heldout_after=mean_dice(after, held),
                  seen_before=mean_dice(before, seen), seen_after=mean_dice(after, seen),
                  before=per_task(before), after=per_task(after), adapt_cases=ids)
    # 2. add-tasks: the left kidney, a structure the parent never had, from `cases` CT cases
    split = left_kidney_copy(data / NEW_SITE, work / "ct-left-kidney", values["kidney"])
    split_test = left_kidney_copy(test / NEW_SITE, work / "ct-left-kidney-test", values["kidney"])
    ids = sorted(p.name[:-len(".nii.gz")] for p in (split / "labelsTr").glob("*.nii.gz"))[:cases]
    new_cat = user_catalog(work / "new-structure.yaml", split, ids,
                           {"liver": [values["liver"]], "spleen": [values["spleen"]], "kidney-left": [LEFT_KIDNEY],
                            "kidney": [values["kidney"], LEFT_KIDNEY]}, "my-ct-cases", "CT")
    run = work / "add-tasks"
    if not (run / "model" / "model.json").exists():
        cli("finetune", "--model", str(parent_dir / "model.zip"), "--catalog", str(new_cat), "--out", str(run),
            "--mode", "add-tasks", "--steps", str(steps), "--seed", str(seed), "--device", "cpu",
            "--evaluate", "none")
    child = load_package(run / "model")
    old_tasks = list(parent.config.tasks)
    identical, dices, p_left, p_right = True, [], [], []
    p_old, p_new = Predictor(parent, device="cpu"), Predictor(child, device="cpu")
    for image in sorted((split_test / "imagesTr").glob("*.nii.gz")):
        keep = PredictOptions(keep_probabilities=True)
        a = p_old.predict(str(image), "CT", old_tasks, keep)
        b = p_new.predict(str(image), "CT", old_tasks + ["kidney-left"],
                          PredictOptions(largest_component=True, keep_probabilities=True))
        c = p_new.predict(str(image), "CT", old_tasks, keep)
        identical &= all(np.array_equal(sitk.GetArrayViewFromImage(a.probabilities[t]),
                                        sitk.GetArrayViewFromImage(c.probabilities[t])) for t in old_tasks)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(split_test / "labelsTr" / image.name.replace("_0000", ""))))
        got = sitk.GetArrayViewFromImage(b.masks["kidney-left"]) > 0
        truth = label == LEFT_KIDNEY
        # training.evaluation.dice, but 0.0 (not 1.0) where both are empty, as the results were made
        dices.append(dice(got, truth) if got.any() or truth.any() else 0.0)
        # does it know LEFT? (the largest-component filter keeps one kidney: which one decides the Dice)
        prob = sitk.GetArrayViewFromImage(b.probabilities["kidney-left"])
        p_left.append(float(prob[truth].mean()))
        p_right.append(float(prob[label == values["kidney"]].mean()))
    result["add_tasks"] = {"structure": "kidney-left", "site": NEW_SITE, "cases": ids,
                           "dice_new_structure": float(statistics.mean(dices)),
                           "dice_per_case": [round(d, 3) for d in dices],
                           "probability_in_left_kidney": round(statistics.mean(p_left), 3),
                           "probability_in_right_kidney": round(statistics.mean(p_right), 3),
                           "old_outputs_identical": bool(identical)}
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps({k: v for k, v in result.items() if k not in ("before", "after")}), flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("finetune-benchmark"))
    ap.add_argument("--models-from", type=Path, help="a demo_study.py 'runs' folder (<arm>-seed<S>/model.zip ...)")
    ap.add_argument("--arm", default="default", help="which demo_study arm's models")
    ap.add_argument("--demo-seeds", type=Path, help="parents from a demo_seeds.py folder (seed<S>/model.zip, data/, "
                    "test-data/: the demo on real anatomy)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps (default 150)")
    ap.add_argument("--cases", type=int, default=3, help="corrected cases (default 3)")
    ap.add_argument("--demo-steps", type=int, help="parent training steps when no --models-from "
                    "(default: the demo's, 800)")
    ap.add_argument("--shape", type=int, help="the parent's grid, voxels per axis (default: the demo's, 64)")
    ap.add_argument("--width", type=int, help="the parent's network width (default: the demo's, 8)")
    ap.add_argument("--quick", action="store_true", help="one seed, 40 steps, a 150-step parent")
    args = ap.parse_args(argv)
    from UniversalSeg.demo import DEMO_SHAPE, DEMO_STEPS, DEMO_WIDTH
    args.demo_steps, args.shape = args.demo_steps or DEMO_STEPS, args.shape or DEMO_SHAPE
    args.width = args.width or DEMO_WIDTH
    if args.quick:
        args.seeds, args.steps, args.demo_steps = args.seeds[:1], 40, 150
    args.out = args.out.resolve()  # catalogs written below name absolute paths
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        parent_dir = (args.models_from.resolve() / f"{args.arm}-seed{seed}" if args.models_from
                      else args.demo_seeds.resolve() / f"seed{seed}" if args.demo_seeds
                      else args.out / f"parent-seed{seed}")
        anatomy = json.loads((parent_dir / "dice.json").read_text()).get("anatomy", "phantom") \
            if (parent_dir / "dice.json").exists() else "phantom"
        if not (parent_dir / "model.zip").exists():
            from UniversalSeg.demo import run_demo
            run_demo(parent_dir, steps=args.demo_steps, seed=seed, progress=False, overlays=0, shape=args.shape,
                     base_width=args.width, anatomy="phantom")  # the study of version 0.7.0 ran on the phantom
        results.append(one_seed(seed, parent_dir, args.out, args.steps, args.cases, anatomy))
    keys = ("heldout_before", "heldout_after", "seen_before", "seen_after")
    summary = {k: float(statistics.mean(r[k] for r in results)) for k in keys}
    summary["heldout_gain"] = summary["heldout_after"] - summary["heldout_before"]
    summary["seen_change"] = summary["seen_after"] - summary["seen_before"]
    summary["add_tasks_dice"] = float(statistics.mean(r["add_tasks"]["dice_new_structure"] for r in results))
    summary["add_tasks_old_outputs_identical"] = all(r["add_tasks"]["old_outputs_identical"] for r in results)
    summary["add_tasks_probability_left_right"] = [
        round(statistics.mean(r["add_tasks"][f"probability_in_{side}_kidney"] for r in results), 3)
        for side in ("left", "right")]
    summary.update(seeds=args.seeds, steps=args.steps, cases=args.cases, runs=results,
                   parent=None if args.models_from else {"shape": args.shape, "width": args.width,
                                                         "steps": args.demo_steps},
                   command="python Testing/Benchmarks/finetune.py " + " ".join(argv or sys.argv[1:]),
                   goals={"heldout_gain >= 0.10": summary["heldout_gain"] >= 0.10,
                          "seen_change >= -0.02": summary["seen_change"] >= -0.02})
    (args.out / "finetune.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
