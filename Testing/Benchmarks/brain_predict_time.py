"""How long a user waits for the shipped brain model on the MNI152 T1: one ``universalseg predict``
command, start-up, reading, inference, resampling and the written ``.seg.nrrd`` included.

Question: does a whole-head T1 take <= 20 s with the default settings, and what do the default
window batch (a voxel budget: 4 windows of 48^3 per pass on CPU) and, where installed, another CPU
backend change against one window per pass? Each variant is a fresh process; the variants take
turns (round r runs them in rotated order) so that what else the machine does falls on each alike.

    python Testing/Benchmarks/brain_predict_time.py [--repeats 3] [--variant NAME=ARGS ...]
        [--json Testing/Benchmarks/results/brain_predict_time.json]

Input: the MNI152 2009a T1 (1 mm, skull-stripped; nilearn's file, the ``zoo`` extra), every task of
the model, ``--modality MR-T1``. Reported per variant: median and minimum seconds of the whole
command, the masks' agreement with the first variant (voxels that differ, per task), and the
ratios of the medians. Records command, commit, version, CPU model and flags, threads, load.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEFAULT_VARIANTS = {"default": "", "one window per pass": "--sw-batch 1"}


def run(image: Path, out: Path, extra: str) -> float:
    command = [sys.executable, "-m", "UniversalSeg", "predict", "--model", "brain-synth", "--modality", "MR-T1",
               "--input", str(image), "--output", str(out), "--device", "cpu", "--progress", "none",
               *shlex.split(extra)]
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def differing_voxels(a: Path, b: Path) -> dict:
    import slicerio
    import numpy as np
    sa, sb = slicerio.read_segmentation(str(a)), slicerio.read_segmentation(str(b))
    out = {}
    for segment in sa["segments"]:
        name = segment["name"]
        ma = slicerio.extract_segments(sa, [(name, 1)])["voxels"]
        mb = slicerio.extract_segments(sb, [(name, 1)])["voxels"]
        out[name] = int(np.count_nonzero(ma != mb))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="extra predict arguments to compare (default: the default settings and --sw-batch 1)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from UniversalSeg.data.brain_template import template_t1
    from UniversalSeg.provenance import load_average, provenance
    import SimpleITK as sitk
    variants = dict(v.split("=", 1) for v in args.variant) if args.variant else dict(DEFAULT_VARIANTS)
    record = {**provenance(" ".join(["python", "Testing/Benchmarks/brain_predict_time.py"] + (argv or sys.argv[1:]))),
              "load_average_before": load_average(), "variants": variants}
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "mni152_t1.nii.gz"
        sitk.WriteImage(template_t1(), str(image))
        times = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                seconds = run(image, Path(tmp) / f"{names.index(name)}.seg.nrrd", variants[name])
                times[name].append(round(seconds, 2))
                print(f"round {r + 1}: {name:24s} {seconds:6.1f} s", flush=True)
        agreement = {name: differing_voxels(Path(tmp) / "0.seg.nrrd", Path(tmp) / f"{i}.seg.nrrd")
                     for i, name in enumerate(names[1:], 1)}
    medians = {name: statistics.median(t) for name, t in times.items()}
    first = names[0]
    record.update(seconds=times, median_seconds=medians, min_seconds={n: min(t) for n, t in times.items()},
                  ratios_to_first={n: round(medians[n] / medians[first], 3) for n in names},
                  differing_voxels_vs_first=agreement, load_average_after=load_average())
    print(f"\n{record['cpu']} ({', '.join(record['cpu_flags'])}), {record['threads']} threads, "
          f"load {record['load_average_before']} -> {record['load_average_after']}")
    for name in names:
        print(f"  {name:24s} median {medians[name]:6.1f} s  min {min(times[name]):6.1f} s  "
              f"x{record['ratios_to_first'][name]:.2f} of {first}")
    for name, diff in agreement.items():
        print(f"  voxels differing from {first}: {name}: {diff}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
