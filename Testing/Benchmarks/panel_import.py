"""How long the Slicer panel's GUI thread is busy with a result: importing N structures into a new
segmentation, re-running into it (replacing all), and writing one click's box, on the real MRML core
(slicer-core), each measured in a fresh process for its peak memory.

Goals (Slicer panel): 100 structures on 512x512x400 imported in <= 10 s with peak extra memory
<= 2x the labelmap; a re-run replacing all <= 15 s; one click's write <= 0.1 s at 300x512x512.

    python Testing/Benchmarks/panel_import.py                       # the goal sizes (about 3 GB)
    python Testing/Benchmarks/panel_import.py --shape 256 256 200   # smaller

Prints one JSON line per measurement and a summary with the CPU model, threads and version.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.append(str(ROOT / "scripted_modules"))
sys.path.append(str(ROOT / "Testing" / "Python"))




def status_mb(field: str) -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":")) / 1024


def start_peak() -> float:
    """Resident memory now, and the kernel's peak (VmHWM) reset to it (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mb("VmRSS")


def peak_mb() -> float:
    return status_mb("VmHWM")


def scene_with_logics():
    from mrml_app_scene import app_scene
    return app_scene()


def make_inputs(folder: Path, shape, structures: int, seed: int = 0):
    """A volume (NRRD) and a result file with ``structures`` non-overlapping boxes in one layer,
    as the predictor writes non-overlapping structures."""
    import numpy as np
    import SimpleITK as sitk
    import slicerio
    from UniversalSeg.data.terminology import task_info
    from UniversalSeg.inference.writers import segment_fields
    k, j, i = shape
    rng = np.random.default_rng(seed)
    volume = sitk.GetImageFromArray(rng.normal(0, 100, shape).astype(np.int16))
    volume.SetSpacing((0.8, 0.8, 1.0))
    sitk.WriteImage(volume, str(folder / "volume.nrrd"))
    layer = np.zeros(shape, np.uint8)
    grid = int(np.ceil(structures ** (1 / 3)))
    cell = np.array(shape) // grid
    segments = []
    for n in range(structures):
        c = np.array(np.unravel_index(n, (grid,) * 3)) * cell
        size = (cell * rng.uniform(0.4, 0.9, 3)).astype(int)
        layer[c[0]:c[0] + size[0], c[1]:c[1] + size[1], c[2]:c[2] + size[2]] = n + 1
        seg = segment_fields(task_info(f"structure-{n:03d}"))
        seg.update({"labelValue": n + 1, "layer": 0,
                    "extent": [c[2], c[2] + size[2] - 1, c[1], c[1] + size[1] - 1, c[0], c[0] + size[0] - 1]})
        segments.append(seg)
    lps = np.diag([0.8, 0.8, 1.0, 1.0])
    slicerio.write_segmentation(str(folder / "result.seg.nrrd"),
                                {"voxels": layer.transpose(2, 1, 0), "ijkToLPS": lps, "segments": segments},
                                compression_level=1)


def measure(what: str, folder: Path) -> dict:
    import numpy as np
    import SimpleITK  # noqa: F401 - loaded before the baseline: library code is not the import's memory
    import slicer
    from UniversalSegmentationLib.refinement import write_box
    from UniversalSegmentationLib.segmentation_import import import_result
    scene = scene_with_logics()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(folder / "volume.nrrd"))
    assert storage.ReadData(volume), "could not read the volume"
    base = start_peak()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    t0 = time.perf_counter()
    import_result(folder / "result.seg.nrrd", node, volume, created_node=True)
    seconds = time.perf_counter() - t0
    if what == "rerun":
        base = start_peak()
        t0 = time.perf_counter()
        import_result(folder / "result.seg.nrrd", node, volume, keep_edited=True)
        seconds = time.perf_counter() - t0
    elif what in ("click-box", "click-full"):
        sid = node.GetSegmentation().GetNthSegmentID(0)
        box = ((10, 42), (10, 42), (10, 42))
        values = np.ones((32, 32, 32), np.uint8)
        t0 = time.perf_counter()
        if what == "click-box":  # the first click also gives the segment a layer of its own
            write_box(node, sid, volume, box, values)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            write_box(node, sid, volume, ((12, 44), (12, 44), (12, 44)), values)
        else:  # the whole segment through a temporary labelmap node (slicer.util), as clicks were written
            full = slicer.util.arrayFromSegmentBinaryLabelmap(node, sid, volume)
            full[10:42, 10:42, 10:42] = values
            slicer.util.updateSegmentBinaryLabelmapFromArray(full, node, sid, volume)
        seconds = time.perf_counter() - t0
    labelmap_mb = np.prod(slicer.util.arrayFromVolume(volume).shape) / 2 ** 20
    extra = {"first_click_seconds": round(first, 3)} if what == "click-box" else {}
    return {"what": what, "seconds": round(seconds, 3), **extra, "peak_extra_mb": round(peak_mb() - base, 1),
            "labelmap_mb": round(float(labelmap_mb), 1), "segments": node.GetSegmentation().GetNumberOfSegments()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(400, 512, 512), metavar=("K", "J", "I"),
                        help="volume size in (slices, rows, columns)")
    parser.add_argument("--structures", type=int, default=100)
    parser.add_argument("--out", help="also write the rows and the machine to this JSON file")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, Path(args.folder))))
        return
    from UniversalSeg import __version__
    from UniversalSeg.provenance import cpu_model
    with tempfile.TemporaryDirectory() as tmp:
        make_inputs(Path(tmp), tuple(args.shape), args.structures)
        rows = []
        for what in ("import", "rerun", "click-box", "click-full"):
            out = subprocess.run([sys.executable, __file__, "--only", what, "--folder", tmp],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    times = {r["what"]: r["seconds"] for r in rows}
    summary = {"shape": args.shape, "structures": args.structures, "version": __version__,
               "cpu": cpu_model(), "threads": os.cpu_count(),
               "click_full_over_box": round(times["click-full"] / max(times["click-box"], 1e-6), 1)}
    print(json.dumps(summary))
    if args.out:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "commit": commit, **summary,
                                              "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
