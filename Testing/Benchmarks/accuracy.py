"""Accuracy study: is one universal model worth it? (the claim of every seed paper)

With the same training recipe and the same number of iterations x batch per model, compare on the
validation cases of the seen institutions AND on an institution left out of training:
  (a) universal: task + modality priors, dynamic head (Hermes);
  (b) traditional: one model per institution (each trained as long as (a); 5x the compute);
  (c) naive joint: one shared network, one output channel per global task, partial-label loss,
      no priors (static head);
  (d) universal + each harmonization plug-in (domain BN, polynomial/U-Harmony, class-aware,
      domain-separable convolutions); the held-out institution is run without a domain id.
Reports Dice per task (mean and spread over seeds), parameter counts, JSON and a PNG bar chart.

    python Testing/Benchmarks/accuracy.py --out Testing/Benchmarks/results/accuracy \
           [--steps 300] [--seeds 0 1 2] [--cases 8] [--shape 40] [--base-width 16]
    # real data, same study: a catalog of seen datasets and one of held-out datasets
    python Testing/Benchmarks/accuracy.py --catalog seen.yaml --heldout heldout.yaml \
           --spacing 1.5 --patch 128 --steps 40000 --base-width 32 --out results/real
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from UniversalSeg.data.catalog import load_catalog
from UniversalSeg.data.dataset import PreprocessedCases
from UniversalSeg.data.synthetic import generate_collection
from UniversalSeg.model_package import load_package
from UniversalSeg.networks import ModelConfig
from UniversalSeg.training.config import TrainConfig
from UniversalSeg.training.evaluation import evaluate_cases
from UniversalSeg.training.trainer import run_training
from UniversalSeg.visualization import bar_chart

PLUGINS = {"domain_batch": {"norm": "domain_batch"}, "polynomial": {"norm": "polynomial"},
           "class_aware": {"norm": "class_aware"}, "domain_separable": {"conv": "domain_separable"}}


def network(base_width: int, kind: str) -> ModelConfig:
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


def evaluate(package_path, catalog, split_names):
    """Dice per dataset/task on the given splits, for the tasks and modalities the model knows
    (a per-institution model knows only its own); unknown domains run with domain id -1."""
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
    return evaluate_cases(package.build("cpu"), cases, package.patch_size, torch.device("cpu"))["dice"]


def main(argv=None):
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
    ap.add_argument("--methods", nargs="+", default=["universal", "per-institution", "naive", *PLUGINS])
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.catalog:
        catalog_path, heldout_path = Path(args.catalog), Path(args.heldout) if args.heldout else None
        spacing = args.spacing or 1.5
    else:
        catalog_path = generate_collection(out / "data", cases=args.cases, shape=args.shape, seed=0)
        heldout_path = catalog_path.parent / "catalog-heldout.yaml"
        spacing = args.spacing or 180.0 / args.shape
    seen = load_catalog(catalog_path)
    held = load_catalog(heldout_path) if heldout_path else None
    epochs = max(1, args.steps // 50)
    cfg = TrainConfig(spacing=(spacing,) * 3, patch_size=(args.patch,) * 3, batch_size=2, epochs=epochs,
                      iterations_per_epoch=args.steps // epochs, validate_every=epochs, lr=3e-3,
                      warmup_epochs=0.5, num_workers=0, checkpoint_every=10_000)
    results = {}
    for method in args.methods:
        for seed in args.seeds:
            run_cfg = cfg.replace(seed=seed)
            key = f"{method}/seed{seed}"
            jobs = []
            if method == "per-institution":
                for ds in seen.datasets:
                    sub = single_dataset_catalog(catalog_path, ds.name, out / f"catalog-{ds.name}.yaml")
                    jobs.append((sub, network(args.base_width, "universal"), out / "runs" / f"{key}-{ds.name}"))
            else:
                jobs.append((catalog_path, network(args.base_width, method), out / "runs" / key))
            seen_dice, held_dice, params = {}, {}, 0
            for cat, net, run in jobs:
                if not (run / "model" / "model.json").exists():
                    run_training(cat, net, run_cfg, run, device="cpu", progress=False)
                package = run / "model"
                params += sum(v.numel() for v in load_package(package).state_dict.values())
                own = load_catalog(cat)
                seen_dice.update(evaluate(package, own, ["validation"]))
                if held is not None:
                    for k, v in evaluate(package, held, ["train", "validation", "test"]).items():
                        held_dice.setdefault(k, []).append(v)
            held_dice = {k: max(v) for k, v in held_dice.items()}  # per-institution: best model per task
            results[key] = {"seen": seen_dice, "heldout": held_dice, "parameters": params}
            print(f"{key:32s} seen mean {statistics.fmean(seen_dice.values()):.3f}  held-out mean "
                  f"{statistics.fmean(held_dice.values()) if held_dice else float('nan'):.3f}  params {params / 1e6:.2f}M",
                  flush=True)
    summary = {}
    for method in args.methods:
        runs = [results[f"{method}/seed{s}"] for s in args.seeds]
        row = {}
        for part in ("seen", "heldout"):
            for k in sorted({k for r in runs for k in r[part]}):
                vals = [r[part][k] for r in runs if k in r[part]]
                row[f"{part}:{k}"] = {"mean": statistics.fmean(vals), "sd": statistics.pstdev(vals)}
        summary[method] = {"dice": row, "parameters": runs[0]["parameters"]}
    uni = summary.get("universal", {}).get("dice", {})
    per = summary.get("per-institution", {}).get("dice", {})
    shared = [k for k in uni if k.startswith("seen:") and k in per]
    verdict = {}
    if shared:
        wins = sum(uni[k]["mean"] >= per[k]["mean"] for k in shared)
        verdict = {"tasks_compared": len(shared), "universal_at_least_as_good": wins,
                   "share": wins / len(shared)}
    report = {"command": "python Testing/Benchmarks/accuracy.py " + " ".join(argv or __import__("sys").argv[1:]),
              "steps": args.steps, "seeds": args.seeds, "summary": summary, "runs": results,
              "universal_vs_per_institution": verdict}
    (out / "accuracy.json").write_text(json.dumps(report, indent=2))
    for part in ("seen", "heldout"):
        groups = {m: {k.split(":", 1)[1]: v["mean"] for k, v in summary[m]["dice"].items() if k.startswith(part)}
                  for m in args.methods}
        errs = {m: {k.split(":", 1)[1]: v["sd"] for k, v in summary[m]["dice"].items() if k.startswith(part)}
                for m in args.methods}
        bar_chart(groups, out / f"accuracy-{part}.png", errors=errs,
                  title=f"Dice on {'validation cases of seen' if part == 'seen' else 'the held-out'} institution(s)")
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
