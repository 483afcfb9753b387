"""How much of a structure is boundary at the phantom's grids: the Dice a PERFECT mask scores after
one voxel of erosion, per site and structure (at a coarse grid a small structure's Dice
mostly measures boundary quantisation).

    python Testing/Benchmarks/boundary_regime.py [--shapes 40 64] [--cases 4] [--seed 5]
           [--out Testing/Benchmarks/results/boundary_regime.json]

Labels are read on each site's own grid (CT hospital B has 2x thicker slices), as the demo and
the studies score them. No training: seconds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from UniversalSeg.data.catalog import load_catalog
from UniversalSeg.data.phantom import generate_collection


def erosion_dice(mask: np.ndarray) -> tuple[int, float, float]:
    """(voxels, share on the boundary, Dice of the mask eroded by one voxel against itself)."""
    eroded = ndimage.binary_erosion(mask)
    n, e = int(mask.sum()), int(eroded.sum())
    return n, 1 - e / n, 2 * e / (e + n)


def measure(shape: int, cases: int, seed: int) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = generate_collection(Path(tmp) / "c", cases=cases, shape=shape, seed=seed)
        for ds in load_catalog(catalog).datasets:
            for case in ds.splits["train"] + ds.splits["validation"]:
                label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
                for task, values in ds.label_map.items():
                    mask = np.isin(label, values)
                    if task == "kidney":  # one kidney: the pair's largest component
                        parts, _ = ndimage.label(mask)
                        mask = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
                    if mask.any():
                        rows.setdefault(f"{ds.name}/{task}", []).append(erosion_dice(mask))
    return {k: {"voxels": statistics.fmean(r[0] for r in v), "boundary_share": statistics.fmean(r[1] for r in v),
                "erosion_dice": statistics.fmean(r[2] for r in v), "cases": len(v)} for k, v in sorted(rows.items())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, nargs="+", default=[40, 64])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", default="Testing/Benchmarks/results/boundary_regime.json")
    args = ap.parse_args(argv)
    result = {str(s): measure(s, args.cases, args.seed) for s in args.shapes}
    Path(args.out).write_text(json.dumps({"shapes": args.shapes, "cases": args.cases, "seed": args.seed,
                                          "result": result}, indent=2))
    print("| site / structure | " + " | ".join(f"{s}^3 ({180 / s:.1f} mm): voxels, boundary, erosion Dice"
                                               for s in args.shapes) + " |")
    print("| --- |" + " --- |" * len(args.shapes))
    for key in result[str(args.shapes[0])]:
        cells = [result[str(s)].get(key) for s in args.shapes]
        print(f"| {key} | " + " | ".join(f"{c['voxels']:.0f}, {c['boundary_share']:.0%}, {c['erosion_dice']:.2f}"
                                         if c else "-" for c in cells) + " |")


if __name__ == "__main__":
    main()
