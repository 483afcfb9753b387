"""Re-derive the committed intervals and verdicts with the seeds inside them (no training).

The accuracy study, the cases sweep and the demo study were first reported with intervals that
average each test case over the training seeds and then resample the cases only, so seed-to-seed
variance never entered them. Their result JSONs keep every seed's score of every test case, so
the same claims can be recomputed with the hierarchical bootstrap (``training.statistics``: the
seeds, then the cases within each). For every comparison this writes both, side by side:

- ``committed``: the case bootstrap over seed-averaged cases, exactly as the tables were written
  (``paired_bootstrap``, seed 0: it reproduces the committed numbers);
- ``hierarchical``: ``paired_hierarchical_bootstrap`` (10,000 replicates, seed 0) with each
  seed's mean difference, and which verdicts (non-inferior at -0.02, better) changed.

Designs: the accuracy study and the sweep score every seed's models on the SAME test cases (data
seed 1000): crossed. The demo study scores seed S on test cases of data seed S + 1000: nested
(two demo arms of the same phantom share seed S's test cases, so they pair case by case).

    python Testing/Benchmarks/rederive_intervals.py --out Testing/Benchmarks/results/rederived_intervals.json

Prints the verdicts that changed. Results that hold one seed, or per-seed means without the
cases (the correction loop's finetune.json), are listed under ``not_rederived`` with the reason.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import accuracy  # noqa: E402
from provenance import provenance  # noqa: E402

from UniversalSeg.training.statistics import (hierarchical_bootstrap, paired_bootstrap,  # noqa: E402
                                               paired_hierarchical_bootstrap)

RESULTS = Path(__file__).parent / "results"
# result file -> what STUDIES.md / RESULTS.md call it
ACCURACY = {
    "accuracy/accuracy.json": "accuracy study, 40^3, 6 training cases per site (version 0.4.0)",
    "accuracy/ema-warmup/accuracy.json": "accuracy study, 40^3, EMA warm-up re-run (version 0.5.0)",
    "accuracy/grid-64/accuracy.json": "accuracy study, 64^3 (version 0.5.0)",
    "cases_sweep/train-2-accuracy.json": "cases sweep, 2 training cases per site",
    "cases_sweep/train-4-accuracy.json": "cases sweep, 4 training cases per site",
    "cases_sweep/train-8-accuracy.json": "cases sweep, 8 training cases per site",
    "cases_sweep/train-16-accuracy.json": "cases sweep, 16 training cases per site",
}
# the sweep's 6-case point is the 40^3 accuracy study
SWEEP = {2: "cases_sweep/train-2-accuracy.json", 4: "cases_sweep/train-4-accuracy.json",
         6: "accuracy/accuracy.json", 8: "cases_sweep/train-8-accuracy.json",
         16: "cases_sweep/train-16-accuracy.json"}
DEMO = ["demo_study/grid-64/study.json", "demo_study/clicks-every-2/study.json", "demo_study/cases-24/study.json",
        "demo_study/ct-window-64/study.json", "demo_study/kidneys-in-fat/study.json",
        "demo_study/ema-warmup/study.json", "demo_study/width8-1200/study.json"]
# demo arms on the default phantom with the same data seeds, hence the same test cases per seed
DEMO_PAIRS = [("clicks-every-2", "demo_study/clicks-every-2/study.json"),
              ("cases-24", "demo_study/cases-24/study.json"),
              ("ct-window-64", "demo_study/ct-window-64/study.json")]
DEMO_BASE = ("grid-64-800", "demo_study/grid-64/study.json")


def _small(d: dict) -> dict:
    keep = ("seeds", "cases", "mean_a", "mean_b", "difference", "low", "high", "non_inferior", "better",
            "per_seed_difference", "seeds_b_ahead")
    return {k: (round(v, 6) if isinstance(v, float) else [round(x, 6) for x in v] if k == "per_seed_difference"
                else v) for k, v in d.items() if k in keep}


def both(runs, mine, base, seeds, metric, keep=lambda k: True) -> dict | None:
    """The committed (case-only) and the hierarchical comparison of mine - base."""
    a, b = accuracy.per_seed_case(runs, base, seeds, metric), accuracy.per_seed_case(runs, mine, seeds, metric)
    keys = sorted(k for k in set.intersection(*(set(a[s]) & set(b[s]) for s in seeds)) if keep(k))
    if not keys:
        return None
    xa = np.array([[a[s][k] for k in keys] for s in seeds])
    xb = np.array([[b[s][k] for k in keys] for s in seeds])
    old = paired_bootstrap(xa.mean(axis=0), xb.mean(axis=0)).to_dict()
    new = paired_hierarchical_bootstrap(xa, xb, design="crossed").to_dict()
    changed = [f"{v}: {'yes' if old[v] else 'no'} -> {'yes' if new[v] else 'no'}"
               for v in ("non_inferior", "better") if old[v] != new[v]]
    return {"committed": _small(old), "hierarchical": _small(new), "changed": changed}


def accuracy_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    runs, seeds = report["runs"], {m: v["seeds"] for m, v in report["summary"].items()}
    out = {}
    for mine, base in accuracy.PAIRS:
        if mine not in seeds or base not in seeds:
            continue
        shared = [s for s in seeds[mine] if s in seeds[base]]
        if len(shared) < 2:
            continue
        name = f"{mine} vs {base}"
        out[name] = {}
        for metric in ("dice", "nsd"):
            tasks = sorted({k[:2] for k in accuracy.per_seed_case(runs, base, shared[:1], metric)[shared[0]]})
            rows = {"/".join(t): both(runs, mine, base, shared, metric, lambda k, t=t: k[:2] == t) for t in tasks}
            rows = {k: v for k, v in rows.items() if v}
            if not rows:
                continue
            rows["pooled"] = both(runs, mine, base, shared, metric)
            per_task = [v for k, v in rows.items() if k != "pooled"]
            out[name][metric] = {
                "seeds": shared, "rows": rows,
                "tasks_non_inferior": {"committed": sum(v["committed"]["non_inferior"] for v in per_task),
                                       "hierarchical": sum(v["hierarchical"]["non_inferior"] for v in per_task),
                                       "of": len(per_task)},
                "tasks_better": {"committed": sum(v["committed"]["better"] for v in per_task),
                                 "hierarchical": sum(v["hierarchical"]["better"] for v in per_task),
                                 "of": len(per_task)}}
    return out


def demo_cells(path: Path) -> dict:
    """Per arm and cell: the mean over seeds x test cases with its nested hierarchical interval."""
    runs = json.loads(path.read_text())["runs"]
    arms: dict = {}
    for key, run in runs.items():
        arm = key.split("/")[0]
        for row, tasks in run.get("cases", {}).items():
            for task, scores in tasks.items():
                arms.setdefault(arm, {}).setdefault(f"{row}/{task}", []).append(scores)
    out = {}
    for arm, cells in arms.items():
        for cell, per_seed in cells.items():
            if len(per_seed) < 2:
                continue
            i = hierarchical_bootstrap(per_seed, design="nested")
            out.setdefault(arm, {})[cell] = {"seeds": i.seeds, "cases": i.cases, "mean": round(i.mean, 4),
                                             "low": round(i.low, 4), "high": round(i.high, 4),
                                             "per_seed": [round(x, 4) for x in i.per_seed]}
    return out


def demo_pair(mine: tuple, base: tuple) -> dict:
    """mine - base per cell, seed s with seed s (the same test cases), nested hierarchical."""
    def load(arm, path):
        runs = json.loads((RESULTS / path).read_text())["runs"]
        return {int(k.split("seed")[1]): r["cases"] for k, r in runs.items() if k.split("/")[0] == arm}
    a, b = load(*base), load(*mine)
    seeds = sorted(set(a) & set(b))
    out = {}
    for row in a[seeds[0]]:
        for task in a[seeds[0]][row]:
            xa = [a[s][row][task] for s in seeds]
            xb = [b[s].get(row, {}).get(task) for s in seeds]
            if any(x is None for x in xb):
                continue
            new = paired_hierarchical_bootstrap(xa, xb, design="nested").to_dict()
            out[f"{row}/{task}"] = _small(new)
    return {"seeds": seeds, "cells": out,
            "cells_higher": sum(v["difference"] > 0 for v in out.values()),
            "cells_better": sum(v["better"] for v in out.values()),
            "cells_worse": sum(v["high"] < 0 for v in out.values()), "of": len(out)}


def changes(studies: dict) -> list[str]:
    lines = []
    for path, study in studies.items():
        for name, metrics in study["comparisons"].items():
            for metric, table in metrics.items():
                for task, v in table["rows"].items():
                    if v["changed"]:
                        h = v["hierarchical"]
                        lines.append(f"{path} | {name} | {metric} | {task}: {v['committed']['difference']:+.3f} "
                                     f"[{v['committed']['low']:+.3f}, {v['committed']['high']:+.3f}] -> "
                                     f"[{h['low']:+.3f}, {h['high']:+.3f}], per seed "
                                     f"{' / '.join(f'{d:+.3f}' for d in h['per_seed_difference'])}: "
                                     + "; ".join(v["changed"]))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "rederived_intervals.json")
    args = ap.parse_args(argv)
    command = " ".join(["python Testing/Benchmarks/rederive_intervals.py", *(sys.argv[1:] if argv is None else argv)])
    studies = {p: {"what": what, "design": "crossed", "comparisons": accuracy_report(RESULTS / p)}
               for p, what in ACCURACY.items()}
    sweep = {}
    for n, p in SWEEP.items():
        row = {}
        for arm in ("universal", "universal-total-budget"):
            cmp = studies[p]["comparisons"].get(f"{arm} vs per-institution", {}).get("dice")
            if cmp:
                row[arm] = {"pooled": cmp["rows"]["pooled"], "tasks_non_inferior": cmp["tasks_non_inferior"]}
        sweep[n] = row
    demo = {p: demo_cells(RESULTS / p) for p in DEMO}
    pairs = {f"{m[0]} vs {DEMO_BASE[0]}": demo_pair(m, DEMO_BASE) for m in DEMO_PAIRS}
    changed = changes(studies)
    record = {
        "provenance": provenance(command),
        "method": "hierarchical (two-stage) bootstrap, UniversalSeg.training.statistics: seeds resampled with "
                  "replacement, then test cases within each resampled seed; 10,000 replicates, seed 0, percentile "
                  "95 % interval; non-inferior: lower end above -0.02; better: lower end above 0. 'committed': the "
                  "case bootstrap over seed-averaged cases the tables were written with.",
        "accuracy_studies": studies,
        "cases_sweep": sweep,
        "demo_cells": demo,
        "demo_pairs": pairs,
        "changed_verdicts": changed,
        "not_rederived": {
            "finetune/grid-64/finetune.json": "per-seed task means only (no per-case scores)",
            "interactive/*": "one training seed per file (the click tables compare seeds side by side)",
            "accuracy/ct-lesion-dedicated/accuracy.json": "one seed",
            "accuracy/phantom-v1/accuracy.json": "no test cases (validation means only)",
            "demo_study/gin/study.json": "one seed",
            "demo_study/grid-64-900/study.json": "one seed",
            "demo_study/grid-48/study.json": "one seed"},
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(changed)} verdicts changed:")
    print("\n".join(changed))
    for n, row in sweep.items():
        for arm, v in row.items():
            c, h = v["pooled"]["committed"], v["pooled"]["hierarchical"]
            print(f"sweep {n:2d} {arm:24s} {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] -> "
                  f"[{h['low']:+.3f}, {h['high']:+.3f}] NI {c['non_inferior']}->{h['non_inferior']} "
                  f"seeds ahead {h['seeds_b_ahead']} of {h['seeds']}; tasks NI {v['tasks_non_inferior']}")
    for name, p in pairs.items():
        print(f"{name}: higher in {p['cells_higher']}, better in {p['cells_better']}, worse in {p['cells_worse']} "
              f"of {p['of']} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
