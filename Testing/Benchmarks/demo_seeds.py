"""The demo on real anatomy over several training seeds: the numbers README and RESULTS quote.

Question: what does `universalseg demo` reach, seed to seed, against the atlas baseline (a mean
training label map placed by the body's centre; training/atlas_baseline.py) and on the real CT and
MR it never trained on (Dice against TotalSegmentator's segmentations: a program's output)?

    python Testing/Benchmarks/demo_seeds.py --out /tmp/demo-seeds --seeds 0 1 2 3 4
    python Testing/Benchmarks/demo_seeds.py --out /tmp/demo-seeds --summarize-only

Each seed is one full demo (its own training collection from data seed S, its own test cases
from S + 1000, its own model); a seed already done (DIR/seedS/dice.json) is not run again.
Intervals: the hierarchical bootstrap (training seeds, then each seed's own test cases: design
"nested"; training/statistics.py), 95 %; the model-minus-atlas difference is paired (same cases).
The primary measure, fixed before the runs: mean Dice per institution x structure on the test
cases; the goals (stated before the runs): on seen institutions every structure beats the atlas
by >= 0.10 and reaches 0.80 (liver, spleen) / 0.75 (kidney); on the real CT liver >= 0.85,
spleen and kidney >= 0.75; on the real MR liver >= 0.75. Writes results/demo_seeds.json (with
command, commit, version, CPU model, threads) and prints the tables for RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import provenance  # noqa: E402

GOALS = {"liver": 0.80, "spleen": 0.80, "kidney": 0.75}
REAL_GOALS = {("real CT (TotalSegmentator example)", "liver"): 0.85,
              ("real CT (TotalSegmentator example)", "spleen"): 0.75,
              ("real CT (TotalSegmentator example)", "kidney"): 0.75,
              ("real MR-T1 (TotalSegmentator example)", "liver"): 0.75}
ATLAS_MARGIN = 0.10


def summarize(runs: dict[int, dict]) -> dict:
    from UniversalSeg.training.statistics import hierarchical_bootstrap, paired_hierarchical_bootstrap
    seeds = sorted(runs)
    first = runs[seeds[0]]
    cells = {}
    for site, tasks in first["cases"].items():
        for task in tasks:
            model = [runs[s]["cases"][site][task] for s in seeds]
            atlas = [runs[s]["atlas_cases"][site][task] for s in seeds]
            cell = {"seeds": len(seeds), "cases_per_seed": len(model[0])}
            if len(seeds) >= 2:
                m = hierarchical_bootstrap(model, design="nested")
                d = paired_hierarchical_bootstrap(atlas, model, design="nested", margin=ATLAS_MARGIN)
                cell.update(model=m.to_dict(), atlas_mean=float(np.mean([np.mean(a) for a in atlas])),
                            model_minus_atlas=d.to_dict())
            else:
                cell.update(model={"mean": float(np.mean(model[0]))}, atlas_mean=float(np.mean(atlas[0])))
            seen = "left out" not in site
            goal = GOALS.get(task)
            if seen:
                cell["goal"] = {"beats_atlas_by": ATLAS_MARGIN, "dice": goal}
                cell["beats_atlas_by_margin"] = bool(cell["model"]["mean"] - cell["atlas_mean"] >= ATLAS_MARGIN)
                cell["dice_goal_met"] = None if goal is None else bool(cell["model"]["mean"] >= goal)
                cell["goal_met"] = bool(cell["beats_atlas_by_margin"] and cell["dice_goal_met"] is not False)
            cells[f"{site}/{task}"] = cell
    real = {}
    for scan in first.get("real_scans", {}):
        for task in first["real_scans"][scan]["model"]:
            values = [runs[s]["real_scans"][scan]["model"][task] for s in seeds]
            atlas = [runs[s]["real_scans"][scan]["atlas"].get(task, float("nan")) for s in seeds]
            goal = REAL_GOALS.get((scan, task))
            real[f"{scan}/{task}"] = {"per_seed": values, "mean": float(np.mean(values)),
                                      "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                                      "min": float(np.min(values)), "max": float(np.max(values)),
                                      "atlas_mean": float(np.nanmean(atlas)), "goal": goal,
                                      "goal_met": None if goal is None else bool(np.mean(values) >= goal)}
    seconds = [runs[s]["seconds"] for s in seeds]
    return {"seeds": seeds, "cells": cells, "real_scans": real, "demo_seconds": seconds,
            "steps": first["steps"], "test_cases": first["test_cases"]}


def tables(summary: dict) -> str:
    lines = ["| institution / structure | model (95 % interval) | atlas | model - atlas (interval) | seeds ahead | goal |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, c in summary["cells"].items():
        m = c["model"]
        interval = f" [{m['low']:.2f}, {m['high']:.2f}]" if "low" in m else ""
        d = c.get("model_minus_atlas")
        diff = f"{d['difference']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" if d else "-"
        ahead = f"{d['seeds_b_ahead']} of {d['seeds']}" if d else "-"
        goal = ""
        if "goal_met" in c:
            goal = f"atlas + {ATLAS_MARGIN:.2f}: {'yes' if c['beats_atlas_by_margin'] else 'NO'}"
            if c["dice_goal_met"] is not None:
                goal += f"; >= {c['goal']['dice']:.2f}: {'yes' if c['dice_goal_met'] else 'NO'}"
        lines.append(f"| {key} | {m['mean']:.3f}{interval} | {c['atlas_mean']:.3f} | {diff} | {ahead} | {goal} |")
    lines += ["", "| real scan / structure | mean Dice (SD over seeds; min-max) | atlas | goal |", "| --- | --- | --- | --- |"]
    for key, r in summary["real_scans"].items():
        sd = f"{r['sd']:.3f}" if r["sd"] is not None else "-"
        goal = "" if r["goal"] is None else f">= {r['goal']:.2f}: {'met' if r['goal_met'] else 'NOT met'}"
        lines.append(f"| {key} | {r['mean']:.3f} ({sd}; {r['min']:.2f}-{r['max']:.2f}) | {r['atlas_mean']:.3f} | {goal} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the runs (one demo per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, help="training steps (default: the demo's)")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--result", default=str(ROOT / "Testing/Benchmarks/results/demo_seeds.json"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.summarize_only:
        from UniversalSeg.demo import DEMO_STEPS, run_demo
        for seed in args.seeds:
            if (out / f"seed{seed}" / "dice.json").exists():
                continue
            t0 = time.time()
            run_demo(out / f"seed{seed}", steps=args.steps or DEMO_STEPS, seed=seed, progress=False, overlays=1)
            print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
    runs = {int(p.parent.name[4:]): json.loads(p.read_text()) for p in sorted(out.glob("seed*/dice.json"))}
    runs = {s: r for s, r in runs.items() if s in args.seeds}
    if not runs:
        print(f"no finished seed under {out}", file=sys.stderr)
        return 1
    summary = summarize(runs)
    summary["runs"] = {s: {k: r.get(k) for k in ("seconds", "commit", "version", "cpu", "threads", "command")}
                       for s, r in runs.items()}
    summary.update(provenance(" ".join(["python", "Testing/Benchmarks/demo_seeds.py", *sys.argv[1:]])))
    Path(args.result).write_text(json.dumps(summary, indent=2))
    print(tables(summary))
    print(f"\nwritten: {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
