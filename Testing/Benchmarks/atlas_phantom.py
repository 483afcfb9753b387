"""The atlas baseline beside the committed phantom studies: does the model beat a map that looks
at no image?

    python Testing/Benchmarks/atlas_phantom.py [--out Testing/Benchmarks/results/atlas_phantom.json]
           [--work DIR]   # keep the regenerated collections (default: a temporary folder)
    python Testing/Benchmarks/atlas_phantom.py --table-from Testing/Benchmarks/results/atlas_phantom.json

For each committed study it regenerates exactly the collections the study used (the same
``generate_collection`` arguments, read from the study's recorded command and settings), builds
the atlas of each training seed's TRAINING split (``training.atlas_baseline.atlas_from_catalog``:
the mean training label map per structure, placed by the body's centre of mass, put at the test
image's body centre and thresholded at 0.5) and scores it on the same test cases with the study's
own Dice rule:

- the accuracy study (``results/accuracy/accuracy.json``, 40^3, and ``results/accuracy/grid-64/``,
  64^3): training seed S on data seed S (``--vary-data-seed``), 20 test cases per seen institution
  from data seed 1000, every seed scored on the same cases (crossed design). Dice on the model grid
  (the label resampled to 180/shape mm, RAS, nearest: ``PreprocessedCases``), the mask as it comes
  (no largest-component step), MONAI's ``compute_dice`` (empty vs empty = 1), as
  ``training.evaluation.evaluate_cases`` scores the models. The atlas's probability is resampled
  straight onto that grid. Arms: ``universal`` and ``universal-total-budget``. The left-out
  institution has no per-case test scores in the study (its Dice is a mean over the held-out site of
  each seed's own collection): atlas and model means per seed, no interval.
- the demo study (``results/demo_study/grid-64/study.json``, arm ``grid-64-800``): seed S trains on
  data seed S (8 cases per institution, 64^3), 4 test cases per institution from data seed
  S + 1000, each seed its own cases (nested design). Dice on each test image's own grid after each
  task's largest components (``PredictOptions(largest_component=True)``: 2 for the kidneys, all
  for lesions), ``demo.dice``, as ``demo.score_test_cases`` scores the model.

Pairs are (training seed, test case). The accuracy study stores case ids: the atlas is paired by
id. The demo study stores each cell's scores in the order ``score_test_cases`` read the cases
(``splits["train"] + splits["validation"]`` of the test catalog), without ids: the same order is
rebuilt and recorded with its ids, and checked against three cases that RESULTS.md names with
their Dice (seed 0's montages). Per cell: the atlas's and the model's mean over seeds (of each
seed's mean over its cases) and the hierarchical bootstrap 95 % interval of model - atlas
(``paired_hierarchical_bootstrap``: seeds, then cases; 10,000 replicates, seed 0). The phantom's
generator is checked first against ``results/boundary_regime.json`` (voxel counts of seed 5).
No training: 7-39 min on 2 cores shared with other work (39 min: the recorded run).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from provenance import provenance  # noqa: E402

RESULTS = HERE / "results"
ACCURACY_STUDIES = (RESULTS / "accuracy" / "accuracy.json", RESULTS / "accuracy" / "grid-64" / "accuracy.json")
ACCURACY_ARMS = ("universal", "universal-total-budget")
DEMO_STUDY, DEMO_ARM = RESULTS / "demo_study" / "grid-64" / "study.json", "grid-64-800"
# run_demo's defaults when grid-64-800 ran (version 0.6.0); the arm sets shape, width and steps only
DEMO_CASES, DEMO_KIDNEYS = 8, "posterior"
# Cases RESULTS.md names with their Dice in the seed-0 run of grid-64-800 (its montage captions):
# (row, task, case id, Dice): the rebuilt case order must put each id where its Dice is.
DEMO_ANCHORS = (("ct-hospital-b (test)", "liver-tumor", "ct-hospital-b_003", 0.66),
                ("pet-hospital-e (test)", "liver-tumor", "pet-hospital-e_000", 0.87),
                ("mr-t1-hospital-f (left out of training)", "kidney", "mr-t1-hospital-f_000", 0.32))
DEMO_CATALOGS = (("catalog.yaml", "test"), ("catalog-heldout.yaml", "left out of training"))
BEAT_BY = 0.10  # the margin a model should beat the atlas by


def generate_collection(*args, **kwargs):
    """The ellipsoid phantom's generator (``data.phantom``; ``data.synthetic`` is its older name)."""
    try:
        from UniversalSeg.data.phantom import generate_collection as generate
    except ImportError:
        from UniversalSeg.data.synthetic import generate_collection as generate
    return generate(*args, **kwargs)


# ---------------------------------------------------------------- settings of the committed studies

def accuracy_settings(report: dict) -> dict:
    """The data settings of an accuracy.json, from its recorded command (every part of a merged
    study must agree: ``--merge-from`` refuses other data, this checks it again)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--shape", type=int, default=40)
    ap.add_argument("--spacing", type=float)
    ap.add_argument("--test-cases", type=int, default=20)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--vary-data-seed", action="store_true")
    ap.add_argument("--catalog")
    parts = []
    for part in report["command"].split(" + "):
        words = shlex.split(part.split(" (merged")[0])
        args, _ = ap.parse_known_args(words[2:])
        if args.catalog:
            raise ValueError("a study on a catalog (real data), not on the synthetic phantom")
        parts.append((args.cases, args.shape, args.spacing, args.test_cases, args.data_seed, args.vary_data_seed))
    if len(set(parts)) != 1:
        raise ValueError(f"the merged commands disagree on the data: {sorted(set(parts))}")
    cases, shape, spacing, test_cases, data_seed, vary = parts[0]
    if bool(vary) != bool(report.get("vary_data_seed")):
        raise ValueError("the recorded command and vary_data_seed disagree")
    return {"cases": cases, "shape": shape, "spacing": spacing or 180.0 / shape, "test_cases": test_cases,
            "data_seed": data_seed, "vary_data_seed": vary, "test_data_seed": data_seed + 1000,
            "kidneys": "posterior"}


# ---------------------------------------------------------------- scoring rules

def model_grid(target) -> sitk.Image:
    """An empty SimpleITK image on the grid of a preprocessed MetaTensor [T, X, Y, Z] (RAS affine)."""
    affine = np.asarray(target.affine, dtype=float)
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS
    m = flip @ affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    grid = sitk.Image([int(s) for s in target.shape[1:]], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection((m / spacing).flatten().tolist())
    grid.SetOrigin((flip @ affine[:3, 3]).tolist())
    return grid


def atlas_on_grid(atlas, centre: np.ndarray, grid: sitk.Image, task: str) -> np.ndarray:
    """The atlas's mask of ``task`` (probability >= 0.5), put at ``centre`` (LPS mm: the test
    image's body centre), on ``grid``; [X, Y, Z] as the preprocessed tensors."""
    shift = sitk.TranslationTransform(3, (-np.asarray(centre)).tolist())
    prob = sitk.Resample(atlas.probability(task), grid, shift, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(prob).transpose(2, 1, 0) >= 0.5


def score_on_model_grid(atlas, catalog, spacing: float, splits=("train", "validation", "test")) -> list[dict]:
    """The accuracy study's rule for the atlas: every case of ``catalog``'s ``splits`` preprocessed as
    the models' test cases are (RAS, ``spacing`` mm, nearest for the label), the atlas resampled onto
    that grid, Dice per task by ``evaluation.dice_per_task`` (MONAI compute_dice, empty vs empty 1).
    Also the Dice of the case's own label resampled onto the rebuilt grid (nearest) against the
    preprocessed target: 1.0 when the grid is rebuilt right."""
    import torch
    from UniversalSeg.data.dataset import PreprocessedCases
    from UniversalSeg.training.atlas_baseline import body_centre
    from UniversalSeg.training.evaluation import dice_per_task
    records = [{"image": str(c.image), "label": str(c.label), "case_id": c.id, "dataset": ds.name,
                "modality": ds.modality, "task_names": list(ds.label_map),
                "task_values": [list(v) for v in ds.label_map.values()], "task_ids": [0] * len(ds.label_map),
                "modality_id": 0, "domain_id": -1}
               for ds in catalog.datasets for split in splits for c in ds.splits.get(split, [])]
    out = []
    for rec, case in zip(records, PreprocessedCases(records, (spacing,) * 3, catalog.modalities)):
        image = sitk.ReadImage(rec["image"])
        centre = body_centre(image, rec["modality"])
        grid = model_grid(case["target"])
        target = torch.as_tensor(case["target"].as_tensor())[None].float()
        masks = np.stack([atlas_on_grid(atlas, centre, grid, t) for t in rec["task_names"]])
        dice = dice_per_task(torch.as_tensor(masks)[None].float() * 2 - 1, target)
        label = sitk.Resample(sitk.ReadImage(rec["label"]), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        lab = sitk.GetArrayFromImage(label).transpose(2, 1, 0)
        own = np.stack([np.isin(lab, v) for v in rec["task_values"]])
        check = dice_per_task(torch.as_tensor(own)[None].float() * 2 - 1, target)
        out += [{"case": rec["case_id"], "dataset": rec["dataset"], "task": t, "dice": float(d),
                 "grid_check": float(g)} for t, d, g in zip(rec["task_names"], dice, check)]
    return out


def score_on_input_grid(atlas, test_root: Path) -> dict:
    """The demo's rule for the atlas, case for case as ``demo.score_test_cases``: every case of the
    test collection in the order it reads them, the atlas on the input grid, each task's largest
    components, ``demo.dice``. -> {row: {task: [Dice]}}, {row: [case ids]}."""
    from UniversalSeg.data.catalog import load_catalog
    from UniversalSeg.data.terminology import KNOWN_TASKS
    from UniversalSeg.demo import dice
    from UniversalSeg.inference.predictor import largest_components
    table, ids = {}, {}
    for name, why in DEMO_CATALOGS:
        for ds in load_catalog(Path(test_root) / name).datasets:
            row = f"{ds.name} ({why})"
            for case in ds.splits["train"] + ds.splits["validation"]:
                ids.setdefault(row, []).append(case.id)
                image = sitk.ReadImage(str(case.image))
                lab = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
                masks = atlas.segment(image, ds.modality, ds.tasks)
                for task in ds.tasks:
                    mask = sitk.GetImageFromArray(masks[task].astype(np.uint8))
                    mask.CopyInformation(image)
                    mask = largest_components(mask, KNOWN_TASKS[task].parts)
                    got = sitk.GetArrayViewFromImage(mask) > 0
                    table.setdefault(row, {}).setdefault(task, []).append(dice(got, np.isin(lab, ds.label_map[task])))
    return table, ids


# ---------------------------------------------------------------- pairing and intervals

def pair_by_id(model_cases: list[dict], atlas_cases: list[dict]) -> dict:
    """{(dataset, task): ([case ids], [model Dice], [atlas Dice])} over the (dataset, task, case)
    keys both have; refuses a case one side scored and the other did not, or a key scored twice."""
    def index(rows, who):
        out = {}
        for r in rows:
            key = (r["dataset"], r["task"], r["case"])
            if key in out:
                raise ValueError(f"{who}: {key} scored twice")
            out[key] = r["dice"]
        return out
    m, a = index(model_cases, "model"), index(atlas_cases, "atlas")
    if set(m) != set(a):
        only = sorted(set(m) ^ set(a))[:5]
        raise ValueError(f"model and atlas scored different test cases, e.g. {only}")
    cells = {}
    for key in sorted(m):
        ids, mv, av = cells.setdefault(key[:2], ([], [], []))
        ids.append(key[2])
        mv.append(m[key])
        av.append(a[key])
    return cells


def comparison(model: list[list[float]], atlas: list[list[float]], design: str) -> dict:
    """Model and atlas per seed x case -> means over seeds and the interval of model - atlas."""
    from UniversalSeg.training.statistics import paired_hierarchical_bootstrap
    cmp = paired_hierarchical_bootstrap(atlas, model, design=design)
    return {"atlas": cmp.mean_a, "model": cmp.mean_b, "difference": cmp.difference, "low": cmp.low,
            "high": cmp.high, "seeds": cmp.seeds, "cases": cmp.cases, "design": design,
            "per_seed_difference": list(cmp.per_seed_difference), "seeds_model_ahead": cmp.seeds_b_ahead,
            "model_better": cmp.better, "beats_by_margin": verdict(cmp.difference, cmp.low),
            "atlas_per_seed": [float(np.mean(r)) for r in atlas], "model_per_seed": [float(np.mean(r)) for r in model]}


def verdict(difference: float, low: float) -> str:
    """Does the model beat the atlas by BEAT_BY? "yes": the whole interval is above it; "mean
    only": the mean is, the interval reaches below; "no": the mean is not."""
    return "yes" if low >= BEAT_BY else "mean only" if difference >= BEAT_BY else "no"


# ---------------------------------------------------------------- the studies

def check_generator() -> dict:
    """Regenerate results/boundary_regime.json's structures (seed 5, 4 cases, 40^3 and 64^3) and
    compare their mean voxel counts: the generator still draws the committed phantom."""
    from boundary_regime import measure
    committed = json.loads((RESULTS / "boundary_regime.json").read_text())
    worst = 0.0
    for shape in committed["shapes"]:
        now = measure(shape, committed["cases"], committed["seed"])
        then = committed["result"][str(shape)]
        if set(now) != set(then):
            raise SystemExit(f"the phantom generator changed: structures {sorted(set(now) ^ set(then))}")
        worst = max(worst, max(abs(now[k]["voxels"] - then[k]["voxels"]) for k in then))
    if worst > 0:
        raise SystemExit(f"the phantom generator changed: voxel counts differ by up to {worst} from "
                         "results/boundary_regime.json; the committed studies' data cannot be regenerated")
    return {"against": "results/boundary_regime.json", "seed": committed["seed"], "cases": committed["cases"],
            "shapes": committed["shapes"], "largest_voxel_count_difference": worst}


def accuracy_study(path: Path, work: Path) -> dict:
    from UniversalSeg.data.catalog import load_catalog
    from UniversalSeg.training.atlas_baseline import atlas_from_catalog
    report = json.loads(path.read_text())
    settings = accuracy_settings(report)
    seeds = {arm: report["summary"][arm]["seeds"] for arm in ACCURACY_ARMS if arm in report["summary"]}
    all_seeds = sorted({s for v in seeds.values() for s in v})
    folder = work / f"accuracy-{settings['shape']}"
    test = load_catalog(generate_collection(folder / "test-data", cases=settings["test_cases"],
                                            shape=settings["shape"], seed=settings["test_data_seed"]))
    atlas_cases, atlas_held, train_ids = {}, {}, {}
    for s in all_seeds:
        data_seed = settings["data_seed"] + s if settings["vary_data_seed"] else settings["data_seed"]
        catalog_path = generate_collection(folder / f"data-{data_seed}", cases=settings["cases"],
                                           shape=settings["shape"], seed=data_seed)
        atlas = atlas_from_catalog(catalog_path)
        train_ids[s] = {ds.name: [c.id for c in ds.splits["train"]] for ds in load_catalog(catalog_path).datasets}
        atlas_cases[s] = score_on_model_grid(atlas, test, settings["spacing"])
        held = score_on_model_grid(atlas, load_catalog(catalog_path.parent / "catalog-heldout.yaml"),
                                   settings["spacing"])
        atlas_held[s] = {f"{r['dataset']}/{r['task']}": [] for r in held}
        for r in held:
            atlas_held[s][f"{r['dataset']}/{r['task']}"].append(r["dice"])
        print(f"  {path.relative_to(RESULTS)}: atlas of seed {s} (data seed {data_seed}) scored", flush=True)
    grid_check = {}
    for rows in atlas_cases.values():
        for r in rows:
            key = f"{r['dataset']}/{r['task']}"
            grid_check[key] = min(grid_check.get(key, 1.0), r["grid_check"])
    arms = {}
    for arm, arm_seeds in seeds.items():
        paired = {s: pair_by_id(report["runs"][f"{arm}/seed{s}"]["test_cases"], atlas_cases[s]) for s in arm_seeds}
        keys = sorted(paired[arm_seeds[0]])
        for s in arm_seeds:  # crossed: every seed the same (dataset, task) cells with the same case ids
            if sorted(paired[s]) != keys or any(paired[s][k][0] != paired[arm_seeds[0]][k][0] for k in keys):
                raise ValueError(f"{arm}: seed {s} was scored on other test cases than seed {arm_seeds[0]}")
        cells = {"/".join(k): comparison([paired[s][k][1] for s in arm_seeds], [paired[s][k][2] for s in arm_seeds],
                                         "crossed") for k in keys}
        pooled = comparison([[v for k in keys for v in paired[s][k][1]] for s in arm_seeds],
                            [[v for k in keys for v in paired[s][k][2]] for s in arm_seeds], "crossed")
        left_out = {}
        for task in sorted(atlas_held[arm_seeds[0]]):
            m = [report["runs"][f"{arm}/seed{s}"]["heldout"][task] for s in arm_seeds]
            a = [statistics.fmean(atlas_held[s][task]) for s in arm_seeds]
            left_out[task] = {"atlas": statistics.fmean(a), "model": statistics.fmean(m),
                              "difference": statistics.fmean(m) - statistics.fmean(a),
                              "atlas_per_seed": a, "model_per_seed": m,
                              "cases_per_seed": len(atlas_held[arm_seeds[0]][task]), "interval": None}
        arms[arm] = {"seeds": arm_seeds, "cells": cells, "pooled": pooled, "left_out": left_out,
                     "case_ids": {"/".join(k): paired[arm_seeds[0]][k][0] for k in keys}}
    return {"study": str(path.relative_to(HERE.parents[1])), "settings": settings,
            "rule": "Dice on the model grid (180/shape mm, RAS; label nearest), no largest-component step, "
                    "MONAI compute_dice (empty vs empty 1): training.evaluation.evaluate_cases",
            "pairing": "by (training seed, dataset, task, case id); crossed design (every seed the same 20 "
                       "test cases per institution)",
            "left_out_note": "the study keeps only each seed's mean on the held-out site of its own training "
                             "collection (all its cases): means per seed, no interval",
            "grid_check": {"what": "the lowest Dice, per cell, of each test case's own label resampled (nearest, "
                                   "SimpleITK) onto the rebuilt model grid against the preprocessed target (MONAI): "
                                   "1 where every voxel agrees. Below 1 only where the site's slices are thicker "
                                   "than the model grid (ct-hospital-b, 9 mm): every other model slice lies exactly "
                                   "halfway between two slices and the two libraries break that tie differently",
                           "min_dice": grid_check}, "train_case_ids": {str(s): v for s, v in train_ids.items()},
            "arms": arms}


def demo_study(path: Path, work: Path) -> dict:
    from UniversalSeg.data.catalog import load_catalog
    from UniversalSeg.training.atlas_baseline import atlas_from_catalog
    from demo_study import ARMS
    study = json.loads(path.read_text())
    arm_settings = ARMS[DEMO_ARM][1]
    if "cases" in arm_settings or "kidneys" in arm_settings:
        raise ValueError(f"{DEMO_ARM} sets cases or kidneys itself; DEMO_CASES / DEMO_KIDNEYS do not apply")
    runs = {int(k.split("seed")[1]): v for k, v in study["runs"].items() if k.startswith(DEMO_ARM + "/")}
    model, atlas_scores, case_ids, train_ids, settings = {}, {}, {}, {}, {}
    for s, run in sorted(runs.items()):
        shape = round(180.0 / run["train_config"]["spacing"][0])
        settings[s] = {"cases": DEMO_CASES, "shape": shape, "seed": run["seed"], "test_cases": run["test_cases"],
                       "test_data_seed": run["seed"] + 1000, "kidneys": DEMO_KIDNEYS}
        folder = work / f"demo-seed{s}"
        catalog_path = generate_collection(folder / "data", cases=DEMO_CASES, shape=shape, seed=run["seed"],
                                           kidneys=DEMO_KIDNEYS)
        test_path = generate_collection(folder / "test-data", cases=run["test_cases"], shape=shape,
                                        seed=run["seed"] + 1000, kidneys=DEMO_KIDNEYS)
        train_ids[s] = {ds.name: [c.id for c in ds.splits["train"]] for ds in load_catalog(catalog_path).datasets}
        atlas_scores[s], case_ids[s] = score_on_input_grid(atlas_from_catalog(catalog_path), test_path.parent)
        model[s] = run["cases"]
        print(f"  {path.relative_to(RESULTS)}: atlas of seed {s} scored", flush=True)
    anchors = []
    for row, task, cid, expected in DEMO_ANCHORS:  # the rebuilt order against the ids RESULTS.md names
        got = model[0][row][task][case_ids[0][row].index(cid)]
        if round(got, 2) != expected:
            raise ValueError(f"case order: {cid} should score {expected} in seed 0 (RESULTS.md); at its rebuilt "
                             f"position the study has {got:.3f}")
        anchors.append({"row": row, "task": task, "case": cid, "dice": got, "position": case_ids[0][row].index(cid)})
    cells, seeds = {}, sorted(runs)
    for row in model[seeds[0]]:
        for task in model[seeds[0]][row]:
            m = [model[s][row][task] for s in seeds]
            a = [atlas_scores[s][row][task] for s in seeds]
            if any(len(x) != len(y) for x, y in zip(m, a)):
                raise ValueError(f"{row}/{task}: the model and the atlas scored different numbers of cases")
            cells[f"{row}/{task}"] = comparison(m, a, "nested")
    seen = [k for k in cells if "left out" not in k]
    flat = lambda scores, s, keys: [v for k in keys for v in scores[s][k.rsplit("/", 1)[0]][k.rsplit("/", 1)[1]]]
    pooled = {"seen": comparison([flat(model, s, seen) for s in seeds], [flat(atlas_scores, s, seen) for s in seeds],
                                 "nested")}
    return {"study": str(path.relative_to(HERE.parents[1])), "arm": DEMO_ARM,
            "settings": {str(s): v for s, v in settings.items()},
            "rule": "Dice on each test image's own grid after each task's largest components (kidney 2, liver and "
                    "spleen 1, lesions all), demo.dice (empty vs empty 1): demo.score_test_cases",
            "pairing": "by (training seed, case): the study stores scores in the order score_test_cases read the "
                       "cases (splits train + validation of the test catalog), no ids; that order rebuilt, with ids "
                       "below, and checked against the cases RESULTS.md names with their Dice",
            "order_anchors": anchors, "cells": cells, "pooled": pooled,
            "case_ids": {str(s): v for s, v in case_ids.items()},
            "train_case_ids": {str(s): v for s, v in train_ids.items()}}


# ---------------------------------------------------------------- tables

MARKS = {"yes": "", "mean only": " °", "no": " ✗"}
LEGEND = ("model - atlas: mean difference [95 % hierarchical bootstrap interval]; ✗: the model does not beat "
          "the atlas by 0.10 on average; °: it does on average, but the interval reaches below +0.10")


def _interval(c: dict) -> str:
    return f"{c['difference']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]{MARKS[c['beats_by_margin']]}"


def accuracy_table(result: dict) -> str:
    arms = list(result["arms"])
    s = result["settings"]
    lines = [f"Accuracy study at {s['shape']}^3 (`{result['study']}`): the {s['test_cases']} test cases per seen "
             f"institution from data seed {s['test_data_seed']} (every seed the same), Dice on the model grid; "
             f"mean over seeds {result['arms'][arms[0]]['seeds']}; {LEGEND}. Left-out rows: each seed's held-out "
             "site of its own collection, means only (the study kept no per-case scores there).", "",
             "| task | atlas | " + " | ".join(f"{a} | {a} - atlas" for a in arms) + " |",
             "|---" * (2 + 2 * len(arms)) + "|"]
    first = result["arms"][arms[0]]
    for key in first["cells"]:
        lines.append(f"| {key} | {first['cells'][key]['atlas']:.2f} | " + " | ".join(
            f"{result['arms'][a]['cells'][key]['model']:.2f} | {_interval(result['arms'][a]['cells'][key])}"
            for a in arms) + " |")
    p = first["pooled"]
    lines.append(f"| **pooled** ({p['cases']} case-tasks) | {p['atlas']:.2f} | " + " | ".join(
        f"{result['arms'][a]['pooled']['model']:.2f} | {_interval(result['arms'][a]['pooled'])}" for a in arms) + " |")
    for task in first["left_out"]:
        lines.append(f"| **left-out** {task} | {first['left_out'][task]['atlas']:.2f} | " + " | ".join(
            f"{result['arms'][a]['left_out'][task]['model']:.2f} | {result['arms'][a]['left_out'][task]['difference']:+.2f}"
            for a in arms) + " |")
    return "\n".join(lines)


def demo_table(result: dict) -> str:
    seeds = sorted(int(k) for k in result["settings"])
    lines = [f"Demo study, arm {result['arm']} (`{result['study']}`): each seed's own 4 test cases per institution, "
             f"Dice on the input grid after the largest components; mean over seeds {seeds}; {LEGEND}.", "",
             "| institution | task | atlas | model | model - atlas |", "|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        row, task = key.rsplit("/", 1)
        lines.append(f"| {row} | {task} | {c['atlas']:.2f} | {c['model']:.2f} | {_interval(c)} |")
    p = result["pooled"]["seen"]
    lines.append(f"| **pooled, seen sites** ({p['cases']} case-tasks per seed) | | {p['atlas']:.2f} | {p['model']:.2f} | "
                 f"{_interval(p)} |")
    return "\n".join(lines)


def tables(report: dict) -> str:
    return "\n\n".join([accuracy_table(r) for r in report["accuracy"]] + [demo_table(report["demo"])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "atlas_phantom.json")
    ap.add_argument("--work", type=Path, help="folder for the regenerated collections (default: temporary)")
    ap.add_argument("--table-from", type=Path, metavar="JSON", help="only print the tables of a finished report")
    args = ap.parse_args(argv)
    if args.table_from:
        print(tables(json.loads(args.table_from.read_text())))
        return 0
    import torch
    torch.set_num_threads(1)
    t0 = time.time()
    command = "python Testing/Benchmarks/atlas_phantom.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        generator = check_generator()
        accuracy = [accuracy_study(p, work) for p in ACCURACY_STUDIES]
        demo = demo_study(DEMO_STUDY, work)
    report = {"command": command, "seconds": round(time.time() - t0, 1), "beat_by": BEAT_BY,
              "bootstrap": "training.statistics.paired_hierarchical_bootstrap (seeds, then cases), 10,000 "
                           "replicates, seed 0, 95 % percentile interval of model - atlas",
              "generator_check": generator, "accuracy": accuracy, "demo": demo,
              "provenance": provenance(command, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(tables(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
