"""Click refinement on the synthetic collection: Dice after 0, 1, 3 and 5 simulated clicks.

    python Testing/Benchmarks/interactive.py --out Testing/Benchmarks/results/interactive [--quick]
        [--model PACKAGE] [--steps 800] [--shape 64] [--seed 0] [--test-cases 4]

Without --model it trains the demo's recipe (``universalseg demo``'s defaults: the small preset at
width 8, 800 steps, 64^3 at 2.81 mm, the click-refinement stage of width 8 on: ``clicks=5``, trained on
every step; ``--click-every 2`` on every 2nd, as the 0.7.0 comparison; ``--click-lr-scale S`` at S
times the learning rate, as in 0.8.0; before 0.6.0 the demo's 40^3 recipe: ``--shape 40
--steps 600 --width 16``), on data seed SEED. Test cases
come from data seed SEED + 1000 (never trained on), the held-out institution included. Every
case is opened in ONE warm worker (``universalseg worker``, the process the Slicer module keeps),
as the module does (largest components on); per labelled task, clicks are simulated from the
current mask against the truth on the INPUT grid (``training.click_simulation.next_click``: the
error voxel farthest from the error's boundary; a missed region gives a positive click, a false
positive a negative one), sent as RAS millimetres, and the mask the worker sends back is scored.
seconds_per_click: median round trip of a refine request (client to worker and back, mask
decoded), this CPU. --quick: 200 training steps, 2 test cases per institution (a few minutes).
--shape: the grid of the training and test collections (with --model: the test collection's).
--brain: also the shipped brain model on the real 1 mm MNI152 T1 (197 x 233 x 189, needs
nilearn): the worker's open time and 5 clicks on the brain mask (whole_head in the JSON).
--task-blind: the click stage without its per-task FiLM (the stage before version 0.7.0). With
UNIVERSALSEG_THREADS fixed, the same seed trains the same automatic model either way (the stage
never touches it), so the two runs are paired: the 0-click columns are equal.

--compare LABEL=JSON ...: only a table of finished runs (OUT/compare.md).

Writes OUT/interactive.json (dice_by_clicks: mean over tasks of the per-task mean over cases;
dice_by_task; seconds_per_click; goals) and OUT/interactive.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripted_modules"))
CLICKS = (1, 2, 3, 4, 5)
REPORTED = ("0", "1", "3", "5")


def train_model(out: Path, steps: int, seed: int, shape: int, width: int, task_blind: bool = False,
                boundary_share: float | None = None, click_every: int | None = None,
                click_lr_scale: float | None = None) -> Path:
    from UniversalSeg.data.phantom import generate_collection
    from UniversalSeg.demo import demo_network, demo_train_config
    from UniversalSeg.training.trainer import run_training
    catalog = generate_collection(out / "data", cases=8, shape=shape, seed=seed)
    cfg = demo_train_config(steps, shape, seed)  # the demo's recipe: its click stage included
    if boundary_share is not None:
        cfg = cfg.replace(click_boundary_share=boundary_share)
    if click_every is not None:
        cfg = cfg.replace(click_every=click_every)
    if click_lr_scale is not None:
        cfg = cfg.replace(click_lr_scale=click_lr_scale)
    net = demo_network("small", width)
    if task_blind:  # the stage as before version 0.7.0: no per-task FiLM (networks.click_stage)
        net = net.replace(prompt={**net.to_dict()["prompt"], "task_conditioned": False})
    result = run_training(catalog, net, cfg, out / "run", device="cpu", progress=True)
    return Path(result["package"])


def click_at(reference: sitk.Image, mask: np.ndarray, truth: np.ndarray):
    from UniversalSeg.training.click_simulation import next_click
    click = next_click(mask, truth)
    if click is None:
        return None
    (k, j, i), positive = click
    x, y, z = reference.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))  # LPS
    return {"position": [-x, -y, z], "label": "positive" if positive else "negative"}


def run_case(worker, model: str, ds, case, tasks, why, rows, seconds):
    from UniversalSeg.training.evaluation import dice
    from UniversalSegmentationLib.refine_worker import decode_mask
    worker.request({"cmd": "open", "model": model, "image": str(case.image), "modality": ds.modality,
                    "tasks": tasks, "largest_component": True, "device": "cpu"})
    reference = sitk.ReadImage(str(case.image))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    for task in tasks:
        truth = np.isin(label, ds.label_map[task])
        _, mask = decode_mask(worker.request({"cmd": "mask", "task": task}))
        mask = mask.copy() > 0
        scores = [dice(mask, truth)]
        for _ in CLICKS:
            point = click_at(reference, mask, truth)
            if point is not None:
                t0 = time.perf_counter()
                reply = worker.request({"cmd": "refine", "task": task, "points": [point]})
                box, values = decode_mask(reply)
                seconds.append(time.perf_counter() - t0)
                (i0, i1), (j0, j1), (k0, k1) = box
                mask[k0:k1, j0:j1, i0:i1] = values > 0
            scores.append(dice(mask, truth))
        rows.append({"case": case.id, "institution": f"{ds.name} ({why})", "task": task, "dice": scores})


def whole_head(worker, tmp: Path) -> dict:
    """The shipped brain model on the 1 mm MNI152 T1: open, then 5 simulated clicks on "brain"."""
    from UniversalSeg.data.brain_template import template_t1, template_tissues
    from UniversalSeg.training.evaluation import dice
    from UniversalSegmentationLib.refine_worker import decode_mask
    image, tissues = template_t1(), template_tissues()
    path = tmp / "mni152_t1.nii.gz"
    sitk.WriteImage(image, str(path))
    truth = sitk.GetArrayFromImage(tissues) > 0
    t0 = time.perf_counter()
    worker.request({"cmd": "open", "model": "brain-synth", "image": str(path), "modality": "MR-T1",
                    "tasks": ["brain"], "device": "cpu"})
    opened = time.perf_counter() - t0
    _, mask = decode_mask(worker.request({"cmd": "mask", "task": "brain"}))
    mask = mask.copy() > 0
    scores, seconds = [dice(mask, truth)], []
    for _ in CLICKS:
        point = click_at(image, mask, truth)
        if point is None:
            break
        t0 = time.perf_counter()
        box, values = decode_mask(worker.request({"cmd": "refine", "task": "brain", "points": [point]}))
        seconds.append(time.perf_counter() - t0)
        (i0, i1), (j0, j1), (k0, k1) = box
        mask[k0:k1, j0:j1, i0:i1] = values > 0
        scores.append(dice(mask, truth))
    return {"size": list(image.GetSize()), "open_seconds": round(opened, 2),
            "seconds_per_click": round(statistics.median(seconds), 4), "dice_by_clicks": [round(d, 4) for d in scores]}


def compare(runs: list[str]) -> str:
    """A markdown table of finished runs, each LABEL=OUT/interactive.json: the mean over tasks by
    clicks, the weakest task's 0 -> 5 change, and how many case x task curves end more than 0.02
    below their start (after 1 and after 5 clicks)."""
    lines = ["| run | seed | 0 clicks | 1 | 3 | 5 | weakest task, 0 -> 5 | curves down > 0.02 after 1 / 5 clicks |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        label, path = run.split("=", 1)
        r = json.loads(Path(path).read_text())
        rows = r["rows"]
        down = [sum(row["dice"][n] < row["dice"][0] - 0.02 for row in rows) for n in (1, len(CLICKS))]
        weakest = r["dice_by_task"][r["weakest_task"]]
        lines.append(f"| {label} | {r['seed']} | " + " | ".join(f"{r['dice_by_clicks'][k]:.3f}" for k in REPORTED)
                     + f" | {r['weakest_task']} {weakest['0']:.3f} -> {weakest['5']:.3f} | {down[0]} / {down[1]} of {len(rows)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", nargs="+", metavar="LABEL=JSON",
                        help="only write OUT/compare.md: a table of finished runs' interactive.json")
    parser.add_argument("--model", help="a package with the click-refinement stage (default: train one)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--shape", type=int, help="voxels per axis (default: the demo's, 64)")
    parser.add_argument("--width", type=int, help="network width when training (default: the demo's, 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-cases", type=int)
    parser.add_argument("--brain", action="store_true", help="also time the shipped brain model on a 1 mm head")
    parser.add_argument("--task-blind", action="store_true",
                        help="train the click stage without its per-task FiLM (as before version 0.7.0), for a "
                             "paired comparison: same seed and fixed threads give the same automatic model")
    parser.add_argument("--boundary-share", type=float,
                        help="the click stage's samples that start from the truth 1-2 voxels off "
                             "(training setting click_boundary_share; default: the setting's, 0)")
    parser.add_argument("--click-every", type=int,
                        help="train the click stage on every N-th step (training setting click_every; "
                             "default: the demo's, 1)")
    parser.add_argument("--click-lr-scale", type=float,
                        help="the click stage's learning rate as a multiple of lr (training setting "
                             "click_lr_scale; default: the demo's)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        table = compare(args.compare)
        (out / "compare.md").write_text(table)
        print(table)
        return 0
    from UniversalSeg.demo import DEMO_SHAPE, DEMO_STEPS, DEMO_WIDTH, demo_train_config
    steps = args.steps or (200 if args.quick else DEMO_STEPS)
    shape, width = args.shape or DEMO_SHAPE, args.width or DEMO_WIDTH
    test_cases = args.test_cases or (2 if args.quick else 4)
    from UniversalSeg.data.catalog import load_catalog
    from UniversalSeg.data.phantom import generate_collection
    from UniversalSeg.training.config import TrainConfig
    from UniversalSegmentationLib.command import child_environment
    from UniversalSegmentationLib.refine_worker import RefineWorker
    t0 = time.time()
    model = Path(args.model) if args.model else train_model(out / "work", steps, args.seed, shape, width,
                                                            args.task_blind, args.boundary_share,
                                                            args.click_every, args.click_lr_scale)
    train_seconds = time.time() - t0
    test_root = out / "work" / "test-data"
    generate_collection(test_root, cases=test_cases, shape=shape, seed=args.seed + 1000)
    env = child_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    worker = RefineWorker()
    worker.start([sys.executable, "-m", "UniversalSeg", "worker"], env=env)
    rows, seconds = [], []
    try:
        from UniversalSeg.model_package import load_package
        known = set(load_package(model).config.tasks)
        for name, why in (("catalog.yaml", "test"), ("catalog-heldout.yaml", "left out of training")):
            for ds in load_catalog(test_root / name).datasets:
                for case in ds.splits["train"] + ds.splits["validation"]:
                    tasks = [t for t in ds.tasks if t in known]
                    run_case(worker, str(model), ds, case, tasks, why, rows, seconds)
                    print(f"{case.id}: " + "; ".join(f"{r['task']} " + " ".join(f"{d:.2f}" for d in r["dice"])
                                                     for r in rows if r["case"] == case.id), flush=True)
        head = whole_head(worker, out / "work") if args.brain else None
    finally:
        worker.stop()
    by_task = {}
    for task in sorted({r["task"] for r in rows}):
        curves = np.array([r["dice"] for r in rows if r["task"] == task])
        by_task[task] = {str(n): round(float(curves[:, n].mean()), 4) for n in range(len(CLICKS) + 1)}
    by_clicks = {k: round(float(np.mean([row[k] for row in by_task.values()])), 4) for k in REPORTED}
    weakest = min(by_task, key=lambda t: by_task[t]["0"])
    gain = by_task[weakest]["5"] - by_task[weakest]["0"]
    median = statistics.median(seconds) if seconds else None
    rising = all(by_clicks[a] < by_clicks[b] for a, b in zip(REPORTED, REPORTED[1:]))
    result = {"dice_by_clicks": by_clicks, "seconds_per_click": round(median, 4) if median else None,
              "dice_by_task": by_task, "weakest_task": weakest, "weakest_gain_0_to_5": round(gain, 4),
              "goals": {"rises_with_every_click_count": rising, "weakest_gain_at_least_0.15": gain >= 0.15,
                        "at_most_1.5_s_per_click": median is not None and median <= 1.5},
              "clicks_measured": len(seconds), "whole_head": head, "cases": len({r["case"] for r in rows}),
              "model": str(model), "steps": None if args.model else steps, "seed": args.seed, "shape": shape,
              "width": None if args.model else width,
              "task_conditioned": load_package(model).config.prompt.task_conditioned,
              "click_boundary_share": None if args.model else (
                  TrainConfig().click_boundary_share if args.boundary_share is None else args.boundary_share),
              "click_every": None if args.model else (
                  demo_train_config(steps, shape, args.seed).click_every if args.click_every is None
                  else args.click_every),
              "click_lr_scale": None if args.model else (
                  demo_train_config(steps, shape, args.seed).click_lr_scale if args.click_lr_scale is None
                  else args.click_lr_scale),
              "train_seconds": None if args.model else round(train_seconds), "quick": args.quick,
              "command": "python Testing/Benchmarks/interactive.py " + " ".join(argv or sys.argv[1:]),
              "rows": rows}
    (out / "interactive.json").write_text(json.dumps(result, indent=2))
    lines = ["| task | " + " | ".join(f"{n} clicks" for n in range(len(CLICKS) + 1)) + " |",
             "|---" * (len(CLICKS) + 2) + "|"]
    for task, row in by_task.items():
        lines.append(f"| {task} | " + " | ".join(f"{row[str(n)]:.3f}" for n in range(len(CLICKS) + 1)) + " |")
    lines.append(f"\nMean over tasks: " + ", ".join(f"{k} clicks {v:.3f}" for k, v in by_clicks.items())
                 + f". Median {median:.3f} s per click (warm worker, round trip), {len(seconds)} clicks, "
                 f"{result['cases']} test cases. Goals: {result['goals']}.")
    if head:
        lines.append(f"\nShipped brain model, MNI152 T1 {head['size']} at 1 mm: open {head['open_seconds']} s, "
                     f"median {head['seconds_per_click']} s per click, brain Dice by clicks {head['dice_by_clicks']}.")
    (out / "interactive.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
