"""Training cases per institution (2 / 4 / 8 / 16): where does one universal model pay?

Pooling institutions should pay most when each has few labelled cases. For every number of
training cases per seen institution this runs accuracy.py (universal vs one model per institution,
same recipe, same steps, same seeds; the data seed varied with the seed) and compares them on the
SAME test cases (``--test-cases`` per institution from data seed + 1000, never trained on): the
hierarchical bootstrap 95 % interval of the mean Dice difference (the seeds, then every seen
(case, task) within them: accuracy.compare), the seeds in which the universal model is ahead, and
the left-out institution. Writes sweep.json (with its provenance), sweep.md (the table
Testing/Benchmarks/STUDIES.md quotes) and sweep.png.

    python Testing/Benchmarks/cases_sweep.py --out Testing/Benchmarks/results/cases_sweep \
           [--train-cases 2 4 8 16] [--seeds 0 1 2] [--steps 600] [--shape 64] [--patch 48] \
           [--base-width 8] [--device cuda] [--jobs 8]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import accuracy  # noqa: E402  (the study this sweep repeats)
from provenance import provenance  # noqa: E402



def cases_for(train_cases: int) -> int:
    """Cases to synthesize so that ``train_cases`` remain for training after the catalog's 20 %
    validation split (round(0.2 n), at least one)."""
    n = train_cases + 1
    while n - max(1, round(0.2 * n)) < train_cases:
        n += 1
    return n


def heldout(report, method: str) -> dict:
    """Left-out institution Dice per task: mean and SD over seeds."""
    out = {}
    for k, v in report["summary"][method]["dice"].items():
        if k.startswith("heldout:"):
            out[k.split(":", 1)[1]] = {"mean": v["mean"], "sd": v["sd"]}
    return out


def compare(report, method: str) -> dict:
    """``method`` against the five per-institution models: pooled test Dice / NSD, paired bootstrap."""
    out, seeds = {}, {m: report["summary"][m]["seeds"] for m in (method, "per-institution")}
    for metric in ("dice", "nsd"):
        cmp = accuracy.pooled_paired(report["runs"], method, "per-institution", seeds[method],
                                     seeds["per-institution"], metric)
        if cmp:
            out[metric] = {"universal": cmp["mean_b"], "per_institution": cmp["mean_a"], "paired": cmp}
    return out


def summarize(report, train_cases: int) -> dict:
    row = {"train_cases": train_cases, **compare(report, "universal")}
    row["heldout"] = {m: heldout(report, m) for m in ("universal", "per-institution")}
    row["parameters"] = {m: report["summary"][m]["parameters"] for m in ("universal", "per-institution")}
    if "universal-total-budget" in report["summary"]:  # equal compute: one model as long as the five
        verdict = report["universal_vs_per_institution"]["universal-total-budget vs per-institution"]
        seeds = {m: report["summary"][m]["seeds"] for m in ("universal-total-budget", "per-institution")}
        tasks = accuracy.paired(report["runs"], "universal-total-budget", "per-institution",  # per task, test cases
                                seeds["universal-total-budget"], seeds["per-institution"])
        row["equal_compute"] = {**compare(report, "universal-total-budget"),
                                "tasks_non_inferior": sum(v["non_inferior"] for v in tasks.values()),
                                "tasks": len(tasks),
                                "heldout_mean": {"universal": verdict["heldout_mean_universal"],
                                                 "per_institution": verdict["heldout_mean_baseline"]}}
    return row


def _difference(d: dict) -> str:
    return f"{d['paired']['difference']:+.3f} [{d['paired']['low']:+.3f}, {d['paired']['high']:+.3f}]"


def _ahead(d: dict) -> str:
    p = d["paired"]
    return f"{p['seeds_b_ahead']} of {p['seeds']}" if "seeds_b_ahead" in p else "-"


def markdown(rows, seeds) -> str:
    lines = ["| training cases per institution | universal | per-institution | difference (95 % interval) | "
             "non-inferior (-0.02) | seeds universal ahead | NSD universal / per-institution | "
             "left-out liver / spleen / kidney (universal) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d, h = r["dice"], r["heldout"]["universal"]
        nsd = f"{r['nsd']['universal']:.3f} / {r['nsd']['per_institution']:.3f}" if "nsd" in r else "-"
        left = " / ".join(f"{h[k]['mean']:.2f}" if k in h else "-"
                          for k in (f"mr-t1-hospital-f/{t}" for t in ("liver", "spleen", "kidney")))
        lines.append(
            f"| {r['train_cases']} | {d['universal']:.3f} | {d['per_institution']:.3f} | {_difference(d)} | "
            f"{'yes' if d['paired']['non_inferior'] else 'no'} | {_ahead(d)} | "
            f"{nsd} | {left} |")
    lines.append("")
    hierarchical = all(r["dice"]["paired"].get("interval") == "hierarchical" for r in rows)
    lines.append(f"Seen institutions' test cases, mean Dice over seeds {seeds} and every (case, task); difference = "
                 "universal - per-institution, " + (
                     "95 % interval from the hierarchical bootstrap (the seeds, then the (case, task) pairs: "
                     "seed-to-seed variance included)." if hierarchical else
                     "case bootstrap over (case, task), each averaged over the seeds (seed variance NOT included)."))
    equal = [r for r in rows if "equal_compute" in r]
    if equal:
        lines += ["", "At equal compute (`universal-total-budget`: the universal model trained as many steps as "
                  "the five per-institution models together):", "",
                  "| training cases per institution | universal | per-institution | difference (95 % interval) | "
                  "non-inferior (-0.02) | seeds universal ahead | seen tasks non-inferior, each on its own | "
                  "left-out mean universal / per-institution |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in equal:
            e = r["equal_compute"]
            lines.append(f"| {r['train_cases']} | {e['dice']['universal']:.3f} | {e['dice']['per_institution']:.3f} | "
                         f"{_difference(e['dice'])} | {'yes' if e['dice']['paired']['non_inferior'] else 'no'} | "
                         f"{_ahead(e['dice'])} | {e['tasks_non_inferior']} of {e['tasks']} | "
                         f"{e['heldout_mean']['universal']:.2f} / {e['heldout_mean']['per_institution']:.2f} |")
        lines += ["", "Left-out mean: over its three tasks; a task a model cannot segment (the per-institution "
                  "models: the MR-T1 kidney) counts 0."]
    return "\n".join(lines) + "\n"


def figure(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = [r["train_cases"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, label in (("universal", "universal, the same steps as each per-institution model"),
                       ("per_institution", "one model per institution")):
        ax.plot(n, [r["dice"][key] for r in rows], marker="o", label=label)
    equal = [r for r in rows if "equal_compute" in r]
    if equal:
        ax.plot([r["train_cases"] for r in equal], [r["equal_compute"]["dice"]["universal"] for r in equal],
                marker="s", linestyle="--", label="universal at equal compute")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_xlabel("training cases per institution")
    ax.set_ylabel("mean test Dice, seen institutions")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="Testing/Benchmarks/results/cases_sweep")
    ap.add_argument("--train-cases", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--summarize-only", action="store_true", help="only re-read the runs' accuracy.json")
    ap.add_argument("--equal-compute", action="store_true",
                    help="also train universal-total-budget (one model, as many steps as the five together)")
    args, passthrough = ap.parse_known_args(argv)
    out = Path(args.out)
    rows = []
    for n in args.train_cases:
        sub = out / f"train-{n}"
        if not args.summarize_only:
            accuracy.main(["--out", str(sub), "--cases", str(cases_for(n)), "--seeds", *map(str, args.seeds),
                           "--methods", "universal", "per-institution",
                           *(["universal-total-budget"] if args.equal_compute else []), "--vary-data-seed",
                           *passthrough])
        rows.append(summarize(json.loads((sub / "accuracy.json").read_text()), n))
    command = "python Testing/Benchmarks/cases_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    threads = next((int(v) for k, v in zip(passthrough, passthrough[1:]) if k == "--threads" and v != "0"), None)
    (out / "sweep.json").write_text(json.dumps({"command": command, "seeds": args.seeds, "rows": rows,
                                                "provenance": provenance(command, threads)}, indent=2))
    (out / "sweep.md").write_text(markdown(rows, args.seeds))
    figure(rows, out / "sweep.png")
    print((out / "sweep.md").read_text())


if __name__ == "__main__":
    main()
