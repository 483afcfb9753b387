"""Peak memory of one prediction with many tasks on a large volume, this tree against an earlier
revision, measured in the same run.

Each measurement is a fresh process (its peak resident memory is its own): read the image,
``Predictor.predict`` every task of a 20-task model, write the ``.seg.nrrd``. The model is a
small network with random weights (memory does not depend on what it learned): base width 4,
128^3 windows, the volume at the model's spacing, so the model grid is the input grid. The
earlier revision's ``UniversalSeg`` is extracted with ``git archive`` to a temporary folder and
imported from there; the sides alternate (before, after, after, before, ...) so that what else
the machine does falls on both alike.

Reported per side: peak resident memory of the process (``ru_maxrss``), the same minus the
resident memory once the model is loaded (what the prediction adds), bytes per voxel, seconds;
and the ratios after / before of the medians.

    python Testing/Benchmarks/inference_memory.py --before REV [--shape 384 384 256] [--tasks 20]
        [--repeats 1] [--out Testing/Benchmarks/results/inference_memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPACING = (1.5, 1.5, 1.5)




def rss_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024


def make_inputs(folder: Path, shape, tasks: int) -> tuple[Path, Path]:
    import numpy as np
    import SimpleITK as sitk
    import torch

    from UniversalSeg.data.modalities import KNOWN_MODALITIES
    from UniversalSeg.data.terminology import task_info
    from UniversalSeg.model_package import save_package
    from UniversalSeg.networks import ModelConfig, UniversalSegNet

    rng = np.random.default_rng(0)
    size = tuple(shape)  # (i, j, k)
    image = np.full(size[::-1], -1000.0, np.float32)
    for k in range(size[2]):  # slice by slice: a body filling most of the field of view
        zz = np.linspace(-1, 1, size[2])[k]
        yy, xx = np.meshgrid(np.linspace(-1, 1, size[1]), np.linspace(-1, 1, size[0]), indexing="ij")
        inside = (xx / 0.9) ** 2 + (yy / 0.75) ** 2 + (zz / 1.1) ** 2 < 1
        image[k][inside] = 40.0
        image[k] += rng.normal(0, 20, inside.shape).astype(np.float32)
    img = sitk.GetImageFromArray(image)
    img.SetSpacing(SPACING)
    img.SetOrigin((-211.3, -187.9, 40.25))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # LPS, as a DICOM series is
    path = folder / "volume.nii.gz"
    sitk.WriteImage(img, str(path))
    names = [f"structure-{i:02d}" for i in range(tasks)]
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"tasks": names, "modalities": ["CT"], "base_width": 4,
                                 "fusion": {"head_dim": 4, "modality_tokens": 2}})
    model = save_package(folder / "model", UniversalSegNet(cfg), [task_info(t, index=i) for i, t in enumerate(names)],
                         dict(KNOWN_MODALITIES), SPACING, (128, 128, 128))
    return path, model


def child(image: str, model: str) -> dict:
    import UniversalSeg
    from UniversalSeg.inference import Predictor, write_seg_nrrd
    from UniversalSeg.model_package import load_package
    package = load_package(model)
    predictor = Predictor(package, device="cpu", precision="fp32")
    loaded = rss_mb()
    t = time.perf_counter()
    result = predictor.predict(image, "CT")
    with tempfile.TemporaryDirectory() as tmp:
        write_seg_nrrd(Path(tmp) / "out.seg.nrrd", result.reference, result.masks, {t.name: t for t in package.tasks})
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    voxels = 1
    for n in result.reference.GetSize():
        voxels *= n
    return {"package": str(Path(UniversalSeg.__file__).parent), "peak_rss_mb": round(peak, 1),
            "model_loaded_rss_mb": round(loaded, 1), "peak_extra_mb": round(peak - loaded, 1),
            "extra_bytes_per_voxel": round((peak - loaded) * 2**20 / voxels, 1), "seconds": round(seconds, 1),
            "timings": {k: round(v, 1) for k, v in result.timings.items()}}


def git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=False, help="the git revision to compare with (e.g. the commit before a change)")
    ap.add_argument("--shape", type=int, nargs=3, default=[384, 384, 256], metavar=("I", "J", "K"))
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1, help="measurements per side")
    ap.add_argument("--out", help="also write the results here (JSON)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        # this side's own package (the PYTHONPATH folder), not an editable install of the work tree
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        print(json.dumps(child(*args.child)))
        return
    from UniversalSeg.provenance import load_average, provenance
    work = Path(tempfile.mkdtemp(prefix="universalseg-memory-"))
    image, model = make_inputs(work, args.shape, args.tasks)
    sides = {"after": (ROOT, git("rev-parse", "--short", "HEAD") + (" + working tree" if git("status", "--porcelain",
                                                                                               "UniversalSeg") else ""))}
    if args.before:
        old = work / "before"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "UniversalSeg"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        sides["before"] = (old, git("rev-parse", "--short", args.before))
    else:
        print("no --before revision: measuring this tree only", flush=True)
    rows = {side: [] for side in sides}
    load_before = load_average()
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for side in order:
            root, _ = sides[side]
            env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            out = subprocess.run([sys.executable, __file__, "--child", str(image), str(model)], env=env, cwd=work,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            assert Path(row["package"]).parent == Path(root).resolve(), (row["package"], root)
            rows[side].append(row)
            print(side, json.dumps(row), flush=True)
    summary = {side: {k: statistics.median(r[k] for r in rows[side])
                      for k in ("peak_rss_mb", "peak_extra_mb", "extra_bytes_per_voxel", "seconds")} for side in sides}
    ratios = {}
    if "before" in sides:
        ratios = {f"{k} after / before": round(summary["after"][k] / summary["before"][k], 3)
                  for k in ("peak_rss_mb", "peak_extra_mb", "seconds")}
    result = {**provenance(" ".join(["python", "Testing/Benchmarks/inference_memory.py"] + (argv or sys.argv[1:])),
                           threads=os.cpu_count()),
              "after": sides["after"][1], "before": sides.get("before", (None, None))[1],
              "load_average_before": load_before, "load_average_after": load_average(), "shape": args.shape, "tasks": args.tasks,
              "spacing_mm": SPACING, "window": [128, 128, 128], "summary": summary, "ratios": ratios, "rows": rows}
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
