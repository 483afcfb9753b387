"""Accuracy study: is one universal model worth it? (the claim of every seed paper)

With the same training recipe and the same number of iterations x batch per model, compare on the
validation cases of the seen institutions AND on an institution left out of training:
  (a) universal: task + modality priors, dynamic head (Hermes);
  (b) traditional: one model per institution, each trained as long as (a) ("per-institution":
      5x the compute of (a)), and with (a)'s budget split between them ("per-institution-split":
      the same total compute);
  (a') "universal-total-budget": (a) trained as long as the per-institution models together
      (steps x number of seen institutions): the same total compute as (b) "per-institution";
  (a'') "universal-wide": the capacity-fair arm, (a) at --wide-width (default 16: still fewer
      parameters than five per-institution models);
  (c) naive joint: one shared network, one output channel per global task, partial-label loss,
      no priors (static head);
  (d) universal + each harmonization plug-in (domain BN, polynomial/U-Harmony, class-aware,
      domain-separable convolutions); the held-out institution is run without a domain id. Domain
      BN trains as MS-Net does: every site in every step (``--batches every-site``, one patch per
      site), for as many patches in all as the other arms.
Reports Dice per task (mean and spread over seeds), parameter counts, JSON and a PNG bar chart;
and, on TEST cases never used in training (synthetic: ``--test-cases`` per institution from
another data seed; real data: ``--test-catalog``), hierarchical bootstrap 95 % intervals of the
Dice difference per task (the training seeds, then the test cases: every seed's model scored the
same cases, so the design is crossed; ``training.statistics``) with a non-inferiority verdict
(margin -0.02) and the number of seeds in which the arm is ahead, and normalized surface Dice
(``--nsd-tolerance``, default one model voxel) for every case in accuracy.json, with its own
paired table. ``--vary-data-seed``: seed S trains on the collection of data seed S; learning curves
(``--curve-points`` validations per run) in accuracy-curves.png; every model gets the demo's recipe
(``--loss``, ``--remap``); ``--device cuda`` trains and scores on a GPU. ± in the tables is the
sample SD over seeds; accuracy.json records its provenance (command, commit, version, CPU, threads).

    python Testing/Benchmarks/accuracy.py --out Testing/Benchmarks/results/accuracy \
           [--steps 300] [--seeds 0 1 2] [--cases 8] [--shape 40] [--base-width 16] [--jobs 2]
           [--methods universal-total-budget ... --seeds-total-budget 0]  # the long arm: fewer seeds
    # the first run (version 0.4.0, Testing/Benchmarks/STUDIES.md): --steps 400 --seeds 0 1 2
    #   --cases 8 --shape 40 --base-width 8
    #   --wide-width 16 --vary-data-seed --curve-points 4 --test-cases 20 --jobs 2 --threads 1
    #   --methods universal universal-wide per-institution naive
    # then (0.4.0, STUDIES.md): the same settings with --jobs 1 and --methods universal-total-budget
    #   (--merge-from the first run's accuracy.json), then --methods per-institution-split domain_batch
    #   polynomial class_aware domain_separable, then --methods (none) --merge-from <both reports>
    # real data, same study: a catalog of seen datasets and one of held-out datasets
    python Testing/Benchmarks/accuracy.py --catalog seen.yaml --heldout heldout.yaml \
           --spacing 1.5 --patch 128 --steps 40000 --base-width 32 --out results/real
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

import yaml

from UniversalSeg.data.catalog import load_catalog
from UniversalSeg.data.dataset import PreprocessedCases
from UniversalSeg.data.phantom import generate_collection
from UniversalSeg.model_package import load_package
from UniversalSeg.networks import ModelConfig
from UniversalSeg.training.config import AugmentationConfig, TrainConfig
from UniversalSeg.training.evaluation import evaluate_cases
from UniversalSeg.training.statistics import paired_bootstrap, paired_hierarchical_bootstrap
from UniversalSeg.training.trainer import run_training
from UniversalSeg.visualization import bar_chart

sys.path.insert(0, str(Path(__file__).parent))
from provenance import provenance  # noqa: E402

PLUGINS = {"domain_batch": {"norm": "domain_batch"}, "polynomial": {"norm": "polynomial"},
           "class_aware": {"norm": "class_aware"}, "domain_separable": {"conv": "domain_separable"}}


def network(base_width: int, kind: str) -> ModelConfig:
    """``kind``: "universal", "naive" or a plug-in name (PLUGINS)."""
    data = {"tasks": ["x"], "modalities": ["CT"], "base_width": base_width}
    if base_width < 32:
        data["fusion"] = {"head_dim": base_width}
    if kind == "naive":
        data.update(head="static", fusion={"sites": {}})
    elif kind in PLUGINS:
        data["harmonization"] = PLUGINS[kind]
        data["domains"] = ["placeholder"]
    return ModelConfig.from_dict(data)


def single_dataset_catalog(catalog_path: Path, name: str, out: Path) -> Path:
    data = yaml.safe_load(catalog_path.read_text())
    entry = next(d for d in data["datasets"] if d["name"] == name)
    entry = {**entry, "root": str((catalog_path.parent / entry["root"]).resolve())} if "root" in entry else entry
    out.write_text(yaml.safe_dump({"format_version": 1, "datasets": [entry]}))
    return out


def evaluate(package_path, catalog, split_names, cases_out=None, nsd_tolerance=None, device="cpu"):
    """Dice per dataset/task on the given splits, for the tasks and modalities the model knows
    (a per-institution model knows only its own); unknown domains run with domain id -1.
    ``cases_out``: a list that receives every (case, task) score (Dice, and NSD with a tolerance)."""
    import torch
    package = load_package(package_path)
    cfg = package.config
    records = []
    for ds in catalog.datasets:
        if ds.modality not in cfg.modalities:
            continue
        known = {t: v for t, v in ds.label_map.items() if t in cfg.tasks}
        if not known:
            continue
        for split in split_names:
            for case in ds.splits.get(split, []):
                records.append({"image": str(case.image), "label": str(case.label), "case_id": case.id,
                                "dataset": ds.name, "modality": ds.modality, "task_names": list(known),
                                "task_values": [list(v) for v in known.values()],
                                "task_ids": [list(cfg.tasks).index(t) for t in known],
                                "modality_id": list(cfg.modalities).index(ds.modality),
                                "domain_id": list(cfg.domains).index(ds.name) if ds.name in cfg.domains else -1})
    if not records:
        return {}
    cases = PreprocessedCases(records, package.spacing, package.modalities)
    result = evaluate_cases(package.build(device), cases, package.patch_size, torch.device(device),
                            spacing=package.spacing, nsd_tolerance_mm=nsd_tolerance)
    if cases_out is not None:
        cases_out.extend(result["cases"])
    return result["dice"]


def train_config(steps: int, seed: int, spacing: float, patch: int, loss: str = "dice",
                 remap: float = 0.25, curve_points: int = 1, ema_warmup: bool = True) -> TrainConfig:
    """The recipe every model of the study gets: the demo's (soft Dice + BCE, intensity remapping p
    0.25; ``--loss tversky --remap 0`` is Hermes' loss without remapping). ``curve_points``
    validations along the run (validation-history.jsonl: the learning curve). ``ema_warmup=False``
    is the EMA of versions before 0.5.0 (constant decay; training/ema.py says why it changed)."""
    epochs = max(1, steps // 50)
    return TrainConfig(spacing=(spacing,) * 3, patch_size=(patch,) * 3, batch_size=2, epochs=epochs,
                       iterations_per_epoch=max(1, steps // epochs),
                       validate_every=max(1, epochs // max(1, curve_points)), lr=3e-3,
                       warmup_epochs=0.5, num_workers=0, checkpoint_every=10_000, seed=seed, loss=loss,
                       ema_warmup=ema_warmup, augmentation=AugmentationConfig(remap_prob=remap))


def _train(job, threads: int, device: str = "cpu"):
    """One training run (in a worker process when --jobs > 1); skipped when already done."""
    import torch
    torch.set_num_threads(threads)
    catalog, net, cfg, run = job
    if not (run / "model" / "model.json").exists():
        run_training(catalog, net, cfg, run, device=device, progress=False)
    return run


def plan(method, seed, args, seen, catalog_path, spacing, out):
    """The training runs of one method and seed: [(catalog, network, train config, run dir)]."""
    key = f"{method}/seed{seed}"
    recipe = dict(loss=args.loss, remap=args.remap, curve_points=args.curve_points,
                  ema_warmup=not args.no_ema_warmup)
    if method.startswith("per-institution"):
        n = len(seen.datasets)
        steps = args.steps if method == "per-institution" else max(1, args.steps // n)
        cfg = train_config(steps, seed, spacing, args.patch, **recipe)
        # one catalog per training collection (a seed's own with --vary-data-seed), under --out:
        # never written beside a user's catalog
        folder = out / "catalogs" / catalog_path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        return [(single_dataset_catalog(catalog_path, ds.name, folder / f"catalog-{ds.name}.yaml"),
                 network(args.base_width, "universal"), cfg, out / "runs" / f"{key}-{ds.name}")
                for ds in seen.datasets]
    steps = args.steps * len(seen.datasets) if method == "universal-total-budget" else args.steps
    # universal-wide: the capacity-fair arm, wider but still fewer parameters than the five
    # per-institution models together
    width = args.wide_width if method == "universal-wide" else args.base_width
    kind = "universal" if method in ("universal-total-budget", "universal-wide") else method
    cfg = train_config(steps, seed, spacing, args.patch, **recipe)
    if method == "domain_batch":  # MS-Net as its paper trains it: every site in every step, each
        # through its own BN (a batch of one patch per site), for as many patches as the other arms see
        n = len(seen.datasets)
        cfg = train_config(max(1, round(steps * cfg.batch_size / n)), seed, spacing, args.patch, **recipe
                           ).replace(batches="every-site", batch_size=n)
    return [(catalog_path, network(width, kind), cfg, out / "runs" / key)]


def run_all(jobs, workers: int, threads: int = 0, device: str = "cpu"):
    """Train every run, ``workers`` at a time, the CPU threads shared between them (on a GPU the
    runs share it too: these networks are far too small to fill one)."""
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    if workers <= 1:
        for job in jobs:
            _train(job, threads, device)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    # longest runs first, so that the pool does not end on one long run
    jobs = sorted(jobs, key=lambda j: -j[2].total_steps)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for run in pool.map(_train, jobs, [threads] * len(jobs), [device] * len(jobs)):
            print(f"trained {run}", flush=True)


def verdicts(summary):
    """The issue's goal, checked on the seed means: universal >= per-institution on >= 80 % of the
    seen tasks with fewer parameters, and better on the left-out institution."""
    out = {}
    pairs = [("universal", "per-institution"), ("universal", "per-institution-split"),
             ("universal-total-budget", "per-institution"), ("universal-wide", "per-institution")]
    for mine, base in pairs:
        if mine not in summary or base not in summary:
            continue
        uni = summary[mine]
        u, p = uni["dice"], summary[base]["dice"]
        seen = [k for k in u if k.startswith("seen:") and k in p]
        held = [k for k in u if k.startswith("heldout:")]
        wins = sum(u[k]["mean"] >= p[k]["mean"] for k in seen)
        both_fail = sum(max(u[k]["mean"], p[k]["mean"]) < 0.05 for k in seen)  # a tie that says nothing
        mean = lambda d, keys: statistics.fmean(d[k]["mean"] if k in d else 0.0 for k in keys) if keys else None
        out[f"{mine} vs {base}"] = {
            "seen_tasks_compared": len(seen), "universal_at_least_as_good": wins,
            "share": wins / len(seen) if seen else None, "goal_share": 0.8,
            "ties_where_both_fail": both_fail,
            "parameters_universal": uni["parameters"], "parameters_baseline": summary[base]["parameters"],
            "heldout_tasks": len(held),
            "heldout_tasks_baseline_cannot_segment": [k.split(":", 1)[1] for k in held if k not in p],
            "heldout_mean_universal": mean(u, held),
            "heldout_mean_baseline": mean(p, held),  # a task the baseline cannot segment counts 0
            "heldout_mean_on_shared_tasks": {"universal": mean(u, [k for k in held if k in p]),
                                              "baseline": mean(p, [k for k in held if k in p])},
        }
        v = out[f"{mine} vs {base}"]
        v["goal_met"] = bool(v["share"] is not None and v["share"] >= 0.8
                             and v["parameters_universal"] < v["parameters_baseline"]
                             and (v["heldout_mean_universal"] or 0) > (v["heldout_mean_baseline"] or 0))
    return out


def per_case(runs: dict, method: str, seeds, metric: str = "dice") -> dict:
    """Every seen (dataset, task, case) test score of ``method``, averaged over its seeds."""
    scores = {}
    for s in seeds:
        for c in runs[f"{method}/seed{s}"].get("test_cases", []):
            if metric in c:
                scores.setdefault((c["dataset"], c["task"], c["case"]), []).append(c[metric])
    return {k: statistics.fmean(v) for k, v in scores.items()}


def per_seed_case(runs: dict, method: str, seeds, metric: str = "dice") -> dict:
    """{seed: {(dataset, task, case): test score}} of ``method``."""
    return {s: {(c["dataset"], c["task"], c["case"]): c[metric]
                for c in runs[f"{method}/seed{s}"].get("test_cases", []) if metric in c} for s in seeds}


def compare(runs: dict, mine: str, base: str, seeds_mine, seeds_base, metric: str = "dice",
            keep=lambda key: True) -> dict | None:
    """mean(mine - base) over the seen test (dataset, task, case) keys that ``keep`` accepts.
    Seed s of one arm pairs with seed s of the other (with --vary-data-seed: the same training
    collection); with >= 2 such seeds, the hierarchical bootstrap (seeds, then cases; crossed:
    every seed scored the same test cases) gives the interval, and ``seeds_b_ahead`` the seeds in
    which ``mine`` is ahead. With fewer, each arm's cases are averaged over its own seeds and only
    the cases are resampled (``"interval": "cases only"``: seed variance not included)."""
    shared = [s for s in seeds_mine if s in seeds_base]
    if len(shared) >= 2:
        a, b = per_seed_case(runs, base, shared, metric), per_seed_case(runs, mine, shared, metric)
        keys = sorted(k for k in set.intersection(*(set(a[s]) & set(b[s]) for s in shared)) if keep(k))
        if not keys:
            return None
        cmp = paired_hierarchical_bootstrap([[a[s][k] for k in keys] for s in shared],
                                            [[b[s][k] for k in keys] for s in shared], design="crossed")
        return {**cmp.to_dict(), "interval": "hierarchical", "seeds_used": shared}
    a, b = per_case(runs, base, seeds_base, metric), per_case(runs, mine, seeds_mine, metric)
    keys = sorted(k for k in set(a) & set(b) if keep(k))
    if not keys:
        return None
    return {**paired_bootstrap([a[k] for k in keys], [b[k] for k in keys]).to_dict(), "interval": "cases only"}


def paired(runs: dict, mine: str, base: str, seeds_mine, seeds_base, metric: str = "dice") -> dict:
    """Per seen dataset/task: the interval of mean(mine - base) over the TEST cases (``compare``:
    hierarchical over seeds and cases) and the non-inferiority verdict."""
    a, b = per_case(runs, base, seeds_base, metric), per_case(runs, mine, seeds_mine, metric)
    out = {}
    for ds_task in sorted({k[:2] for k in a} & {k[:2] for k in b}):
        comparison = compare(runs, mine, base, seeds_mine, seeds_base, metric, lambda k, t=ds_task: k[:2] == t)
        if comparison:
            out["/".join(ds_task)] = comparison
    return out


PAIRS = (("universal", "per-institution"), ("universal", "per-institution-split"), ("universal", "naive"),
         ("universal-wide", "per-institution"), ("universal-total-budget", "per-institution"),
         *((plugin, "universal") for plugin in PLUGINS))  # does a plug-in add to the universal model?


def pooled_paired(runs: dict, mine: str, base: str, seeds_mine, seeds_base, metric: str = "dice"):
    """One comparison over every seen (dataset, task, case) both methods scored: the pooled
    verdict (each task's table row has only its 20 cases; this has them all)."""
    return compare(runs, mine, base, seeds_mine, seeds_base, metric)


def paired_comparisons(runs: dict, seeds: dict) -> tuple[dict, dict]:
    """The paired tables (Dice, NSD) of every pair in PAIRS whose two methods ran."""
    dice, nsd = {}, {}
    for mine, base in PAIRS:
        if mine in seeds and base in seeds:
            dice[f"{mine} vs {base}"] = paired(runs, mine, base, seeds[mine], seeds[base])
            nsd[f"{mine} vs {base}"] = paired(runs, mine, base, seeds[mine], seeds[base], "nsd")
    return dice, nsd


def summarize(results: dict, methods, seeds: dict) -> dict:
    """Per method: validation Dice per seen / left-out task, mean and sample SD (n - 1) over seeds
    (0 with one seed), parameters, seeds, the mean over seen tasks."""
    summary = {}
    for method in methods:
        runs = [results[f"{method}/seed{s}"] for s in seeds[method]]
        row = {}
        for part in ("seen", "heldout"):
            for k in sorted({k for r in runs for k in r[part]}):
                vals = [r[part][k] for r in runs if k in r[part]]
                row[f"{part}:{k}"] = {"mean": statistics.fmean(vals),
                                      "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
        summary[method] = {"dice": row, "parameters": runs[0]["parameters"], "seeds": seeds[method],
                           "seen_mean": statistics.fmean(v["mean"] for k, v in row.items() if k.startswith("seen:"))}
    return summary


def markdown(report) -> str:
    """The README's tables, written from accuracy.json: Dice mean ± SD over seeds per task and
    method (validation cases), parameter counts, the verdict against the per-institution
    baselines, and the paired tables on the test cases (hierarchical bootstrap)."""
    summary, methods = report["summary"], list(report["summary"])
    keys = sorted({k for m in methods for k in summary[m]["dice"]}, key=lambda k: (k.startswith("heldout"), k))
    lines = ["| task | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for k in keys:
        part, name = k.split(":", 1)
        cells = []
        for m in methods:
            v = summary[m]["dice"].get(k)
            cells.append("-" if v is None else f"{v['mean']:.2f} ± {v['sd']:.2f}")
        lines.append(f"| {'**left-out** ' if part == 'heldout' else ''}{name} | " + " | ".join(cells) + " |")
    lines.append("| mean over seen tasks | " + " | ".join(f"{summary[m]['seen_mean']:.3f}" for m in methods) + " |")
    lines.append("| parameters | " + " | ".join(f"{summary[m]['parameters'] / 1e6:.2f}M" for m in methods) + " |")
    for base, v in report["universal_vs_per_institution"].items():
        lines.append("")
        lines.append(
            f"{base}: at least as good on {v['universal_at_least_as_good']} of "
            f"{v['seen_tasks_compared']} seen tasks ({v['share']:.0%}; goal 80 %"
            f"{'; of them ' + str(v['ties_where_both_fail']) + ' where both fail (Dice < 0.05)' if v.get('ties_where_both_fail') else ''}), parameters "
            f"{v['parameters_universal'] / 1e6:.2f}M vs {v['parameters_baseline'] / 1e6:.2f}M, left-out "
            f"institution mean {v['heldout_mean_universal']:.3f} vs {v['heldout_mean_baseline']:.3f} "
            f"(tasks the baseline cannot segment count 0: {', '.join(v['heldout_tasks_baseline_cannot_segment']) or 'none'}; "
            f"on shared tasks {v['heldout_mean_on_shared_tasks']['universal']:.3f} vs "
            f"{v['heldout_mean_on_shared_tasks']['baseline']:.3f}) - goal {'met' if v['goal_met'] else 'NOT met'}.")
    nsd_tables = report.get("paired_nsd", {})

    def ahead(v):
        return f"{v['seeds_b_ahead']} of {v['seeds']}" if "seeds_b_ahead" in v else "-"
    for name, table in report.get("paired", {}).items():
        first = next(iter(table.values()), {})
        n = first.get("cases", 0)
        nsd = nsd_tables.get(name, {})
        if first.get("interval") == "hierarchical":
            how = (f"hierarchical bootstrap 95 % interval of the Dice difference: the {first['seeds']} training "
                   f"seeds, then the {n} test cases per task within each (every seed scored the same cases)")
        else:
            how = (f"case bootstrap 95 % interval of the Dice difference over {n} test cases per task, each "
                   "averaged over the seeds first (fewer than 2 seeds shared by both arms: seed-to-seed "
                   "variance NOT in the interval)")
        lines += ["", f"{name} (test cases, {how}; non-inferior: interval above -0.02; seeds ahead: seeds "
                      f"whose mean difference is above 0; NSD: normalized surface Dice at "
                      f"{report.get('nsd_tolerance_mm', 0):.2f} mm, the same comparison):", "",
                  "| task | mean difference | 95 % interval | non-inferior | better | seeds ahead | NSD difference "
                  "| NSD 95 % interval |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for task, v in table.items():
            w = nsd.get(task)
            surface = f"{w['difference']:+.3f} | [{w['low']:+.3f}, {w['high']:+.3f}]" if w else "- | -"
            lines.append(f"| {task} | {v['difference']:+.3f} | [{v['low']:+.3f}, {v['high']:+.3f}] | "
                         f"{'yes' if v['non_inferior'] else 'no'} | {'yes' if v['better'] else 'no'} | {ahead(v)} | "
                         f"{surface} |")
        lines.append(f"| **non-inferior on** | {sum(v['non_inferior'] for v in table.values())} of {len(table)} | | | | | "
                     f"{sum(w['non_inferior'] for w in nsd.values())} of {len(nsd)} (NSD) | |" if nsd else
                     f"| **non-inferior on** | {sum(v['non_inferior'] for v in table.values())} of {len(table)} | | | | | | |")
        mine, base = name.split(" vs ")
        seeds = {m: summary[m]["seeds"] for m in (mine, base)}
        pool = {metric: pooled_paired(report["runs"], mine, base, seeds[mine], seeds[base], metric)
                for metric in ("dice", "nsd")}
        if pool["dice"]:
            d, w = pool["dice"], pool["nsd"]
            surface = f"{w['difference']:+.3f} | [{w['low']:+.3f}, {w['high']:+.3f}]" if w else "- | -"
            lines.append(f"| **pooled** ({d['cases']} case-tasks) | {d['difference']:+.3f} | "
                         f"[{d['low']:+.3f}, {d['high']:+.3f}] | {'yes' if d['non_inferior'] else 'no'} | "
                         f"{'yes' if d['better'] else 'no'} | {ahead(d)} | {surface} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    import sys
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="Testing/Benchmarks/results/accuracy")
    ap.add_argument("--catalog")
    ap.add_argument("--heldout")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--shape", type=int, default=40)
    ap.add_argument("--base-width", type=int, default=16)
    ap.add_argument("--spacing", type=float)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=1, help="training runs at a time (CPU threads are shared)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per run (default: cores / jobs)")
    ap.add_argument("--seeds-total-budget", type=int, nargs="+", help="seeds of universal-total-budget "
                    "(default: --seeds; it costs as much as the five per-institution models)")
    ap.add_argument("--test-cases", type=int, default=20,
                    help="synthetic data: test cases per institution, from another data seed (default 20)")
    ap.add_argument("--data-seed", type=int, default=0, help="synthetic data: the training collection's seed")
    ap.add_argument("--test-catalog", help="real data: a catalog of test cases (default: the validation split)")
    ap.add_argument("--nsd-tolerance", type=float, default=None,
                    help="also score normalized surface Dice at this tolerance in mm (default: one model voxel)")
    ap.add_argument("--table-from", metavar="JSON", help="only print the Markdown tables of an accuracy.json")
    ap.add_argument("--curves", action="store_true",
                    help="with --table-from: also redraw accuracy-curves.png beside that accuracy.json")
    ap.add_argument("--methods", nargs="*",
                    default=["universal", "per-institution", "per-institution-split", "naive", *PLUGINS])
    ap.add_argument("--wide-width", type=int, default=16,
                    help="base width of the capacity-fair arm universal-wide (default 16)")
    ap.add_argument("--vary-data-seed", action="store_true",
                    help="synthetic data: seed s trains on the collection of data seed --data-seed + s")
    ap.add_argument("--curve-points", type=int, default=4,
                    help="validations per run: the learning curves (default 4)")
    ap.add_argument("--loss", default="dice", help="training loss of every model (default: the demo's, dice)")
    ap.add_argument("--remap", type=float, default=0.25,
                    help="intensity remapping probability of every model (default: the demo's, 0.25)")
    ap.add_argument("--no-ema-warmup", action="store_true",
                    help="the constant-decay EMA of versions before 0.5.0 (the committed results/accuracy)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (training and evaluation)")
    ap.add_argument("--merge-from", metavar="JSON", nargs="+",
                    help="finished accuracy.json files of the same study (same data, steps, widths and recipe): "
                         "their methods that --methods does not name join this report as they are "
                         "(--methods with no name: only merge them)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.table_from:
        # recomputed from the runs (every seed's validation and test scores), so that a report
        # written by an earlier version prints today's SDs and intervals
        report = json.loads(Path(args.table_from).read_text())
        seeds = {m: v["seeds"] for m, v in report["summary"].items()}
        report["summary"] = summarize(report["runs"], list(report["summary"]), seeds)
        if report.get("paired") or any(r.get("test_cases") for r in report["runs"].values()):
            report["paired"], report["paired_nsd"] = paired_comparisons(report["runs"], seeds)
        print(markdown(report))
        if args.curves:  # redraw the learning curves of a finished report beside it
            learning_curves(report["runs"], {m: v["seeds"] for m, v in report["summary"].items()},
                            Path(args.table_from).with_name("accuracy-curves.png"))
        return
    out = Path(args.out)
    if not args.methods and not args.merge_from:
        raise SystemExit("--methods: name at least one method (or merge finished studies with --merge-from)")
    spacing = args.spacing or (1.5 if args.catalog else 180.0 / args.shape)  # the models' mm per voxel
    merged = [merge_source(path, args, spacing) for path in args.merge_from] if args.merge_from else None
    out.mkdir(parents=True, exist_ok=True)
    if args.catalog:
        catalog_path, heldout_path = Path(args.catalog), Path(args.heldout) if args.heldout else None
        catalogs = {s: (catalog_path, heldout_path) for s in set(args.seeds) | set(args.seeds_total_budget or [])}
        test_path = Path(args.test_catalog) if args.test_catalog else None
    else:
        # --vary-data-seed: seed s trains on the collection of data seed (--data-seed + s), so the
        # spread over seeds includes which training cases were drawn, not only the initialisation
        catalogs = {}
        for s in sorted(set(args.seeds) | set(args.seeds_total_budget or [])) if args.methods else []:
            data_seed = args.data_seed + s if args.vary_data_seed else args.data_seed
            path = generate_collection(out / f"data-{data_seed}", cases=args.cases, shape=args.shape, seed=data_seed)
            catalogs[s] = (path, path.parent / "catalog-heldout.yaml")
        # test cases never seen in training: the same institutions drawn from another data seed
        test_path = generate_collection(out / "test-data", cases=args.test_cases, shape=args.shape,
                                        seed=args.data_seed + 1000) if args.test_cases and args.methods else None
    test = load_catalog(test_path) if test_path else None
    nsd_tolerance = args.nsd_tolerance or spacing
    seeds = {m: (args.seeds_total_budget or args.seeds) if m == "universal-total-budget" else args.seeds
             for m in args.methods}
    plans = {(m, s): plan(m, s, args, load_catalog(catalogs[s][0]), catalogs[s][0], spacing, out)
             for m in args.methods for s in seeds[m]}
    run_all([job for jobs in plans.values() for job in jobs], args.jobs, args.threads, args.device)

    results = {}
    for (method, seed), jobs in plans.items():
        key = f"{method}/seed{seed}"
        held = load_catalog(catalogs[seed][1]) if catalogs[seed][1] else None
        seen_dice, held_dice, params, test_cases, curves = {}, {}, 0, [], {}
        for cat, _, _, run in jobs:
            package = run / "model"
            params += sum(v.numel() for v in load_package(package).state_dict.values())
            trained_on = load_catalog(cat)
            seen_dice.update(evaluate(package, trained_on, ["validation"], device=args.device))
            history = run / "validation-history.jsonl"
            if history.exists():  # the learning curve: mean validation Dice over steps
                curves[run.name] = [{"step": r["step"], "mean_dice": r["mean_dice"]}
                                    for r in map(json.loads, history.read_text().splitlines())]
            if test is not None:  # a per-institution model is scored on its own institution only
                names = {d.name for d in trained_on.datasets}
                own = [d for d in test.datasets if d.name in names]
                evaluate(package, dataclasses.replace(test, datasets=own), ["train", "validation", "test"],
                         test_cases, nsd_tolerance, args.device)
            if held is not None:
                for k, v in evaluate(package, held, ["train", "validation", "test"], device=args.device).items():
                    held_dice.setdefault(k, []).append(v)
        held_dice = {k: max(v) for k, v in held_dice.items()}  # per-institution: best model per task
        results[key] = {"seen": seen_dice, "heldout": held_dice, "parameters": params, "test_cases": test_cases,
                        "curves": curves}
        print(f"{key:36s} seen mean {statistics.fmean(seen_dice.values()):.3f}  held-out mean "
              f"{statistics.fmean(held_dice.values()) if held_dice else float('nan'):.3f}  params {params / 1e6:.2f}M",
              flush=True)
    methods = list(args.methods)
    command = "python Testing/Benchmarks/accuracy.py " + " ".join(argv)
    if merged is not None:  # the earlier study's other methods, as they were
        methods, command = merge_into(results, seeds, merged, args, command)
    summary = summarize(results, methods, seeds)
    verdict = verdicts(summary)
    scored = any(r.get("test_cases") for r in results.values())  # test cases: here or in a merged study
    paired_tables, nsd_tables = paired_comparisons(results, seeds) if scored else ({}, {})
    report = {"command": command,
              "steps": args.steps, "seeds": args.seeds, "base_width": args.base_width,
              "wide_width": args.wide_width, "vary_data_seed": args.vary_data_seed, "device": args.device,
              "loss": args.loss, "remap": args.remap, "ema_warmup": not args.no_ema_warmup,
              "summary": summary,
              "runs": results, "universal_vs_per_institution": verdict, "paired": paired_tables, "paired_nsd": nsd_tables,
              "nsd_tolerance_mm": nsd_tolerance,
              "provenance": provenance(command, args.threads or max(1, (os.cpu_count() or 1) // args.jobs),
                                       jobs=args.jobs, device=args.device)}
    (out / "accuracy.json").write_text(json.dumps(report, indent=2))
    (out / "accuracy.md").write_text(markdown(report))
    for part in ("seen", "heldout"):
        groups = {m: {k.split(":", 1)[1]: v["mean"] for k, v in summary[m]["dice"].items() if k.startswith(part)}
                  for m in methods}
        errs = {m: {k.split(":", 1)[1]: v["sd"] for k, v in summary[m]["dice"].items() if k.startswith(part)}
                for m in methods}
        bar_chart(groups, out / f"accuracy-{part}.png", errors=errs,
                  title=f"Dice on {'validation cases of seen' if part == 'seen' else 'the held-out'} institution(s)"
                        f" - mean and SD over seeds {args.seeds}")
    learning_curves(results, seeds, out / "accuracy-curves.png")
    print(json.dumps(verdict, indent=2))


MERGE_KEYS = ("steps", "base_width", "wide_width", "vary_data_seed", "loss", "remap", "nsd_tolerance_mm", "device",
              "ema_warmup")


def merge_source(path, args, spacing: float) -> dict:
    """An earlier report ``--merge-from`` names, checked BEFORE anything trains: it must be a
    study of the same recipe (MERGE_KEYS), or the merged table would compare unlike runs."""
    path = Path(path)
    try:
        old = json.loads(path.read_text())
        runs, summary = old["runs"], old["summary"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--merge-from {path}: not a finished accuracy.json ({e.__class__.__name__}: {e})")
    mine = {"steps": args.steps, "base_width": args.base_width, "wide_width": args.wide_width,
            "vary_data_seed": args.vary_data_seed, "loss": args.loss, "remap": args.remap,
            "nsd_tolerance_mm": args.nsd_tolerance or spacing, "device": args.device,
            "ema_warmup": not args.no_ema_warmup}
    old = {**old, "ema_warmup": old.get("ema_warmup", False)}  # reports before the key: no warm-up
    differ = [f"{k} {old.get(k)!r} vs {mine[k]!r}" for k in MERGE_KEYS if old.get(k) != mine[k]]
    if differ:
        raise SystemExit(f"--merge-from {path}: another study's settings ({'; '.join(differ)}); "
                         "run with the same settings or without --merge-from")
    return {"path": str(path), "runs": runs, "summary": summary, "command": old.get("command", "?")}


def merge_into(results: dict, seeds: dict, sources: list, args, command: str) -> tuple[list, str]:
    """Add the earlier reports' methods that this run did not train to ``results`` and ``seeds``
    (in place); every run must have been scored on the same test cases, or the paired tables
    would pair different cases, and a method may come from one report only. Returns (methods in
    the reports' order, then the new ones; the command of every part)."""
    def case_ids(run):
        return tuple(sorted({(c["dataset"], c["case"]) for c in run.get("test_cases", [])}))
    cases = {case_ids(r) for r in results.values() if r.get("test_cases")}
    methods, origin = [], {}
    for source in sources:
        for m in source["summary"]:
            if m in args.methods:
                continue
            if m in origin:
                raise SystemExit(f"--merge-from: {m} is in both {origin[m]} and {source['path']}; merge one of them")
            origin[m] = source["path"]
            methods.append(m)
            seeds[m] = source["summary"][m]["seeds"]
            for s in seeds[m]:
                run = source["runs"][f"{m}/seed{s}"]
                cases |= {case_ids(run)} if run.get("test_cases") else set()
                if len(cases) > 1:
                    raise SystemExit(f"--merge-from {source['path']}: {m} seed {s} was scored on other test cases")
                results[f"{m}/seed{s}"] = run
    parts = [s["command"] for s in sources] + ([command] if args.methods else [])
    return methods + list(args.methods), " + ".join(parts) + " (merged: --merge-from)"


def curve_points(results, method, method_seeds):
    """{training steps of one model: [mean validation Dice]} and {training steps summed over the
    method's models: [...]}; a per-institution run's five models each add a point."""
    per_model, total = {}, {}
    for s in method_seeds:
        curves = results[f"{method}/seed{s}"].get("curves", {})
        for curve in curves.values():
            for r in curve:
                per_model.setdefault(r["step"], []).append(r["mean_dice"])
                total.setdefault(r["step"] * len(curves), []).append(r["mean_dice"])
    return per_model, total


def learning_curves(results, seeds, path):
    """Mean validation Dice over training steps, one line per method (mean over seeds; a
    per-institution method averages its five models): against one model's steps, and against
    the steps of all the method's models together (where the equal-compute arm lines up with the
    five per-institution models; an MS-Net step, five site batches, still counts as one)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for method, method_seeds in seeds.items():
        for ax, points in zip(axes, curve_points(results, method, method_seeds)):
            if points:
                steps = sorted(points)
                ax.plot(steps, [statistics.fmean(points[k]) for k in steps], marker="o", label=method)
    axes[0].set_xlabel("training steps of one model")
    axes[1].set_xlabel("training steps of all the method's models together")
    axes[0].set_ylabel("mean validation Dice")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves (validation cases of the seen institutions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
