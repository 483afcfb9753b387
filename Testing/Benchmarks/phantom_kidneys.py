"""Where the phantom's kidneys lie, per placement (data/phantom.py KIDNEYS), and what it looks like.

    python Testing/Benchmarks/phantom_kidneys.py --out Testing/Benchmarks/results/phantom_kidneys

For ``--cases`` cases of data seed ``--seed`` (the demo's anatomy draws), each kidney's share in the
abdominal cavity (inside the muscle wall), in the muscle wall and in the subcutaneous fat, measured
on the phantom's own ellipsoids on a 1 mm grid; then, on the held-out MR-T1 scanner's images
(``--shape``), the share of the voxels one out from a kidney (no organ) that are at least 1.6x
brighter than the kidney, i.e. fat it stands out from. Writes OUT/phantom_kidneys.json, .md and
.png (an axial and a sagittal slice through the left kidney per placement: the ct-hospital-a and
held-out MR-T1 images, the kidney outlined).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from UniversalSeg.data.phantom import FOV_MM, KIDNEYS, _anatomy, _ellipsoid, generate_collection  # noqa: E402


def geometry(kidneys: str, seed: int, cases: int) -> dict:
    """Mean share of the kidneys' volume in the cavity, the wall and the subcutaneous fat."""
    grid = np.stack(np.meshgrid(*[np.arange(-95.0, 95.0, 1.0)] * 3, indexing="ij"), -1).astype(np.float32)

    def inside(center, radii):
        return _ellipsoid(grid, np.asarray(center, np.float32), np.asarray(radii, np.float32))

    shares = []
    for c in range(cases):
        anatomy = _anatomy(np.random.default_rng([seed, 5, c]), kidneys)  # 5: the held-out site's draws
        cavity, wall_outer = inside(*anatomy["visceral"]), inside(*anatomy["muscle"])
        kidney = inside(*anatomy["kidney-left"]) | inside(*anatomy["kidney-right"])
        n = kidney.sum()
        shares.append(((kidney & cavity).sum() / n, (kidney & wall_outer & ~cavity).sum() / n,
                       (kidney & ~wall_outer).sum() / n))
    mean = np.mean(shares, axis=0)
    return {"cavity": round(float(mean[0]), 3), "muscle_wall": round(float(mean[1]), 3),
            "subcutaneous": round(float(mean[2]), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shape", type=int, default=64)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result, fig = {}, plt.figure(figsize=(12, 3.4 * len(KIDNEYS)))
    axes = fig.subplots(len(KIDNEYS), 4, squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for row, kidneys in enumerate(KIDNEYS):
            generate_collection(Path(tmp) / kidneys, cases=args.cases, shape=args.shape, seed=args.seed,
                                kidneys=kidneys)
            fat = []
            for c in range(args.cases):
                site = Path(tmp) / kidneys / "mr-t1-hospital-f"
                case = f"mr-t1-hospital-f_{c:03d}"
                image = sitk.GetArrayFromImage(sitk.ReadImage(str(site / "imagesTr" / f"{case}_0000.nii.gz")))
                label = sitk.GetArrayFromImage(sitk.ReadImage(str(site / "labelsTr" / f"{case}.nii.gz")))
                kidney = label == 4
                shell = ndimage.binary_dilation(kidney) & (label == 0)
                core = float(np.median(image[ndimage.binary_erosion(kidney)]))
                fat.append(float((image[shell] > 1.6 * core).mean()))
            result[kidneys] = {**geometry(kidneys, args.seed, args.cases),
                               "held_out_mr_t1_edge_is_fat": round(float(np.mean(fat)), 3)}
            for col, site in enumerate(("ct-hospital-a", "mr-t1-hospital-f")):
                img = sitk.ReadImage(str(Path(tmp) / kidneys / site / "imagesTr" / f"{site}_000_0000.nii.gz"))
                lab = sitk.ReadImage(str(Path(tmp) / kidneys / site / "labelsTr" / f"{site}_000.nii.gz"))
                ref = sitk.Image([args.shape] * 3, sitk.sitkFloat32)  # one LPS-aligned grid for both sites
                ref.SetSpacing([FOV_MM / args.shape] * 3)
                ref.SetOrigin([-FOV_MM / 2 + FOV_MM / args.shape / 2] * 3)
                a = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear))
                k = sitk.GetArrayFromImage(sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                         0, sitk.sitkUInt8)) == 4
                left = np.argwhere(k)
                left = left[left[:, 2] > args.shape // 2]  # +x is the patient's left
                z, _, x = (int(v) for v in np.round(left.mean(0)))
                if site == "ct-hospital-a":
                    a = np.clip(a, -160, 240)
                for j, (view, mask) in enumerate(((a[z], k[z]), (a[:, :, x][::-1], k[:, :, x][::-1]))):
                    ax = axes[row, 2 * col + j]
                    ax.imshow(view, cmap="gray")
                    ax.contour(mask, levels=[0.5], colors="r", linewidths=0.8)
                    ax.set_title(f"{kidneys}: {site}, {'axial' if j == 0 else 'sagittal'}", fontsize=9)
                    ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out / "phantom_kidneys.png", dpi=70)
    lines = ["| kidneys | in the cavity | in the muscle wall | in the subcutaneous fat | held-out MR-T1: edge voxels that are fat |",
             "|---|---|---|---|---|"]
    for kidneys, r in result.items():
        lines.append(f"| {kidneys} | {r['cavity']:.2f} | {r['muscle_wall']:.2f} | {r['subcutaneous']:.2f} | "
                     f"{r['held_out_mr_t1_edge_is_fat']:.2f} |")
    table = "\n".join(lines) + "\n"
    command = "python Testing/Benchmarks/phantom_kidneys.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "phantom_kidneys.json").write_text(json.dumps({"command": command, "seed": args.seed,
                                                               "cases": args.cases, "shape": args.shape,
                                                               "placements": result}, indent=1))
    (args.out / "phantom_kidneys.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
