"""What a ``universalseg predict`` spends before its first window: the imports, measured in fresh
processes, one after the other, in rotated order, in the same run.

Steps, each a fresh ``python -c`` (its wall time, median of the repeats):
- ``python``: the interpreter alone;
- ``torch``: ``import torch``;
- ``torch + MONAI``: ``import torch, monai`` (MONAI's ``__init__`` imports all its submodules);
- ``the predictor``: ``from UniversalSeg.inference import Predictor`` and ``load_package``, what
  the predict command imports before it reads the image;
- ``the CLI``: ``import UniversalSeg.cli`` (the parser, every sub-command's options; heavy modules
  are imported by the command that runs).
Then one ``python -X importtime`` of the predictor's imports: each package's first import
(cumulative, as CPython reports it), MONAI's heaviest subpackages and what they pull in, and the
time of UniversalSeg's own modules (their own time, summed).

    python Testing/Benchmarks/startup_imports.py [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

STEPS = {
    "python": "pass",
    "torch": "import torch",
    "torch + MONAI": "import torch, monai",
    "the predictor": "from UniversalSeg.inference import Predictor; from UniversalSeg.model_package import load_package",
    "the CLI": "import UniversalSeg.cli",
}
TOP_PACKAGES = ("torch", "monai", "SimpleITK", "numpy", "nibabel", "safetensors", "slicerio", "nrrd", "tqdm", "yaml")


def wall(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t


def import_times(code: str) -> tuple[dict, dict]:
    """({module: cumulative seconds}, {module: own seconds}) of ``python -X importtime -c code``."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], check=True, capture_output=True,
                         text=True).stderr
    cumulative, own = {}, {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line.replace("import time:", "").split("|")
        cumulative.setdefault(name.strip(), int(cumulative_us) / 1e6)
        own.setdefault(name.strip(), int(self_us) / 1e6)
    return cumulative, own


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from UniversalSeg.provenance import load_average, provenance
    record = {**provenance(" ".join(["python", "Testing/Benchmarks/startup_imports.py"] + (argv or sys.argv[1:]))),
              "load_average_before": load_average()}
    names = list(STEPS)
    times = {name: [] for name in names}
    for name in names:  # a warm-up of each: the files in the page cache, the bytecode compiled
        wall(STEPS[name])
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(round(wall(STEPS[name]), 3))
    medians = {name: statistics.median(t) for name, t in times.items()}
    modules, own = import_times(STEPS["the predictor"])
    top = {name: round(modules[name], 3) for name in TOP_PACKAGES if name in modules}
    heaviest_in_monai = sorted(((s, m) for m, s in modules.items() if m.startswith("monai.")
                                and m.count(".") == 1), reverse=True)[:6]
    record.update({"load_average_after": load_average(), "steps": STEPS, "seconds": times,
                   "median_seconds": medians, "first_import_cumulative_seconds": top,
                   "monai_subpackages_cumulative_seconds": {m: round(s, 3) for s, m in heaviest_in_monai},
                   "outside_monai_pulled_in_by_it": {m: round(modules[m], 3) for m in
                                                     ("scipy.signal", "matplotlib.pyplot") if m in modules},
                   "universalseg_own_seconds": round(sum(t for m, t in own.items() if m.startswith("UniversalSeg")), 3)})
    for name in names:
        print(f"{name:16s} median {medians[name]:5.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[name])})")
    print("first imports, cumulative seconds:", json.dumps(top))
    print("MONAI's heaviest subpackages:", json.dumps(record["monai_subpackages_cumulative_seconds"]))
    print("pulled in by MONAI:", json.dumps(record["outside_monai_pulled_in_by_it"]))
    print(f"UniversalSeg's own modules (their own time, summed): {record['universalseg_own_seconds']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
