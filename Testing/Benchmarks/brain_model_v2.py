"""brain-synth 2.x (brain structures, left/right) on real images and on held-out synthetic subjects.

    python Testing/Benchmarks/brain_model_v2.py MODEL [--out Testing/Benchmarks/results/brain-v2]
                                               [--subjects 4] [--skip-synthetic]

MODEL: any model package path (folder or .zip) or catalog id with the recipe 2.0 tasks. Writes
OUT/brain_model_v2.json, OUT/brain_model_v2.md and one overlay picture per real image. CPU,
fp32, the threads the predictor chooses (recorded with the CPU model). Not for a model in the
middle of a long build: run it on the finished package.

1. MNI152 2009a T1 (nilearn; real, skull-stripped, 1 mm) against the template's own grey and white
   matter maps thresholded at 0.5, and CSF = inside the template's brain (T1 > 0) where
   1 - GM - WM > 0.5 (nilearn ships no CSF map; the same rule as ``data.brain_template``).
   Our structures -> the template's three classes (``MNI_CLASSES``, fixed before any number was
   looked at): the template's GM map counts deep grey nuclei and cerebellar cortex as grey
   matter, so GM = cerebral + cerebellar cortex, hippocampus, amygdala, thalamus, caudate,
   putamen, pallidum, accumbens; WM = cerebral + cerebellar white matter, brain stem, ventral DC
   (white-matter tracts in T1 tissue maps); CSF = ventricles (lateral incl. inferior, 3rd, 4th)
   and CSF. "brain" is NOT scored: the image is skull-stripped, and its non-zero region (which a
   threshold at 0 scores 1.00) is no reference for it.
2. brain-t1-example (real T1, skull-stripped, FreeSurfer's automatic aseg): Dice per structure
   (agreement with FreeSurfer, not with a person), volumes beside it. The file carries no
   orientation: left-right is found from FreeSurfer's labels 2 (left) / 41 (right), superior from
   the brain stem (16) lying below the cortex, posterior from the cerebellum (8/47) lying behind
   the cerebrum, and the direction set before prediction.
3. Held-out subjects of the recipe (never trained on), synthetic images drawn by
   ``data.label_synthesis`` without deformation (seed 1000+, never a training seed): T1 at 1, 3, 5
   and 7 mm isotropic acquisition, T2, FLAIR, PD at 1 mm, CT at 1 mm. Dice and volumes per structure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from UniversalSeg.training import evaluation  # noqa: E402
from UniversalSeg.zoo import brain_v2  # noqa: E402

MNI_CLASSES = {  # written before any result (see the module docstring for why)
    "gray-matter": [f"{s}-{side}" for s in ("cerebral-cortex", "cerebellum-cortex", "hippocampus", "amygdala",
                                             "thalamus", "caudate", "putamen", "pallidum", "accumbens")
                    for side in ("left", "right")],
    "white-matter": [f"{s}-{side}" for s in ("cerebral-white-matter", "cerebellum-white-matter", "ventral-dc")
                     for side in ("left", "right")] + ["brain-stem"],
    "csf": ["lateral-ventricle-left", "lateral-ventricle-right", "third-ventricle", "fourth-ventricle", "csf"],
}
EXAMPLE = brain_v2.default_maps().parent / "brain-t1-example"
SYNTHETIC = [("T1 1 mm", "MR-T1", 1.0), ("T1 3 mm", "MR-T1", 3.0), ("T1 5 mm", "MR-T1", 5.0),
             ("T1 7 mm", "MR-T1", 7.0), ("T2 1 mm", "MR-T2", 1.0), ("FLAIR 1 mm", "MR-FLAIR", 1.0),
             ("PD 1 mm", "MR-PD", 1.0), ("CT 1 mm", "CT", 1.0)]
TEST_SEED = 1000
OVERLAP = 0.5  # the predictor's default; --overlap for a quick look (results say which)


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """``training.evaluation.dice`` to 4 places; None (not 1.0) where both masks are empty, as the
    result files record a structure absent from both (``mean_dice`` leaves it out)."""
    return round(evaluation.dice(a, b), 4) if a.any() or b.any() else None


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(bool)


def union(pred, names) -> np.ndarray:
    return np.any([array(pred.masks[n]) for n in names], axis=0)


def score_structures(pred, reference: np.ndarray, voxel_ml: float, tasks: dict[str, tuple]) -> dict:
    rows = {}
    for name, values in tasks.items():
        if name not in pred.masks:
            continue
        ref = np.isin(reference, values)
        got = array(pred.masks[name])
        rows[name] = {"dice": dice(got, ref), "volume_ml": round(float(got.sum()) * voxel_ml, 2),
                      "reference_ml": round(float(ref.sum()) * voxel_ml, 2)}
    return rows


def mean_dice(rows: dict, skip=("brain", "head")) -> float:
    values = [r["dice"] for n, r in rows.items() if n not in skip and r["dice"] is not None]
    return round(float(np.mean(values)), 4) if values else float("nan")


def oriented_example() -> tuple[sitk.Image, sitk.Image]:
    """brain-t1-example with a direction found from FreeSurfer's labels (module docstring)."""
    t1, aseg = sitk.ReadImage(str(EXAMPLE / "t1.nii.gz"), sitk.sitkFloat32), sitk.ReadImage(str(EXAMPLE / "aseg.nii.gz"))
    seg = sitk.GetArrayFromImage(aseg).transpose(2, 1, 0)  # index order i, j, k
    centre = lambda values: np.argwhere(np.isin(seg, values)).mean(0)  # noqa: E731
    lr = centre([2]) - centre([41])  # towards the left
    si = centre([3, 42]) - centre([16])  # towards superior
    pa = centre([8, 47]) - centre([3, 42])  # towards posterior
    direction = np.zeros((3, 3))
    used = set()
    for axis_lps, vec in ((0, lr), (2, si), (1, pa)):  # LPS: +x left, +y posterior, +z superior
        i = max((i for i in range(3) if i not in used), key=lambda i: abs(vec[i]))
        used.add(i)
        direction[axis_lps, i] = np.sign(vec[i])
    for image in (t1, aseg):
        image.SetDirection(direction.flatten().tolist())
    return t1, aseg


def run_real(predictor, package, out: Path, record: dict) -> None:
    from UniversalSeg.data.brain_template import nilearn_data, template_t1
    from UniversalSeg.inference import PredictOptions
    from UniversalSeg.visualization import overlay_montage
    colors = {t.name: t.color for t in package.tasks}
    tasks = [t.name for t in package.tasks]
    shown = [t for t in ("cerebral-cortex-left", "cerebral-white-matter-left", "lateral-ventricle-left",
                         "hippocampus-right", "thalamus-right", "putamen-left") if t in tasks]
    # 1. MNI152
    t1 = template_t1()
    t0 = time.time()
    pred = predictor.predict(t1, "MR-T1", tasks, PredictOptions(overlap=OVERLAP))
    seconds = time.time() - t0
    data = nilearn_data()
    gm = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))) / 255.0
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))) / 255.0
    inside = sitk.GetArrayFromImage(t1) > 0
    refs = {"gray-matter": gm > 0.5, "white-matter": wm > 0.5, "csf": inside & (1 - gm - wm > 0.5)}
    record["mni152"] = {"seconds": round(seconds, 1), "mapping": MNI_CLASSES, "classes": {
        c: {"dice": dice(union(pred, names), refs[c]), "volume_ml": round(float(union(pred, names).sum()) / 1000, 1),
            "reference_ml": round(float(refs[c].sum()) / 1000, 1)} for c, names in MNI_CLASSES.items()}}
    overlay_montage(t1, {t: pred.masks[t] for t in shown}, colors, out / "mni152_t1.png",
                    title="MNI152 2009a T1 (real): prediction")
    # 2. brain-t1-example
    if not (EXAMPLE / "t1.nii.gz").is_file():
        record["brain_t1_example"] = f"skipped: {EXAMPLE} not found"
        return
    image, aseg = oriented_example()
    t0 = time.time()
    pred = predictor.predict(image, "MR-T1", tasks, PredictOptions(overlap=OVERLAP))
    seconds = time.time() - t0
    reference = sitk.GetArrayFromImage(aseg)
    structures = {k: v for k, v in brain_v2.structures().items() if k not in ("brain", "head", "csf")}
    rows = score_structures(pred, reference, float(np.prod(aseg.GetSpacing())) / 1000, structures)
    record["brain_t1_example"] = {"seconds": round(seconds, 1), "structures": rows, "mean_dice": mean_dice(rows),
                                  "note": "agreement with FreeSurfer's automatic aseg; brain, head and CSF not "
                                          "scored (skull-stripped image; aseg has no extra-cerebral CSF)"}
    overlay_montage(image, {t: pred.masks[t] for t in shown}, colors, out / "brain_t1_example.png",
                    title="brain-t1-example (real T1): prediction")


def run_synthetic(predictor, package, subjects: int, record: dict, images=None) -> None:
    from UniversalSeg.data.label_synthesis import GeneratorSettings, draw_image
    from UniversalSeg.inference import PredictOptions
    settings = GeneratorSettings.from_dict(brain_v2.generator_block())
    files = {p.name.split(".")[0]: p for p in brain_v2.find_maps(None, brain_v2.HELD_OUT)}
    tasks = [t.name for t in package.tasks]
    table: dict[str, dict] = {}
    for s, cid in enumerate(brain_v2.HELD_OUT[:subjects]):
        grid, labels = brain_v2._read_ras(files[cid])
        inside = np.argwhere(labels > 0)
        lo, hi = np.maximum(inside.min(0) - 4, 0), np.minimum(inside.max(0) + 5, labels.shape)
        labels = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.int16)
        crop = sitk.RegionOfInterest(grid, [int(h - l) for l, h in zip(lo, hi)], [int(v) for v in lo])
        for k, (name, modality, res) in enumerate(SYNTHETIC):
            if images and name not in images:
                continue
            rng = np.random.default_rng([TEST_SEED, s, k])
            drawn = draw_image(torch.from_numpy(labels), settings, modality, (1, 1, 1), rng, resolution=(res,) * 3)
            image = sitk.GetImageFromArray(drawn.numpy().transpose(2, 1, 0))
            image.CopyInformation(crop)
            pred = predictor.predict(image, modality, tasks, PredictOptions(overlap=OVERLAP))
            rows = score_structures(pred, labels.transpose(2, 1, 0), 0.001, brain_v2.structures())
            table.setdefault(name, {})[cid] = rows
    summary = {}
    for name, per_subject in table.items():
        names = sorted({n for rows in per_subject.values() for n in rows})
        summary[name] = {"mean_dice": round(float(np.mean([mean_dice(r) for r in per_subject.values()])), 4),
                         "structures": {n: round(float(np.mean([r[n]["dice"] for r in per_subject.values()
                                                                 if r[n]["dice"] is not None])), 4) for n in names}}
    record["held_out_synthetic"] = {"subjects": list(brain_v2.HELD_OUT[:subjects]), "summary": summary,
                                    "per_subject": table}


def markdown(record: dict) -> str:
    lines = [f"# brain_model_v2.py: {record['model']} ({record['version']})", "",
             f"Command: `{record['command']}`; CPU {record['cpu']}, {record['threads']} threads, torch "
             f"{record['torch']}.", ""]
    if "mni152" in record:
        lines += ["## MNI152 2009a T1 (real) against its GM/WM maps (> 0.5) and CSF", "",
                  "| class | Dice | volume (mL) | reference (mL) |", "|---|---|---|---|"]
        lines += [f"| {c} | {r['dice']} | {r['volume_ml']} | {r['reference_ml']} |"
                  for c, r in record["mni152"]["classes"].items()]
    ex = record.get("brain_t1_example")
    if isinstance(ex, dict):
        lines += ["", f"## brain-t1-example (real T1) against FreeSurfer's aseg: mean Dice {ex['mean_dice']}", "",
                  "| structure | Dice | volume (mL) | FreeSurfer (mL) |", "|---|---|---|---|"]
        lines += [f"| {n} | {r['dice']} | {r['volume_ml']} | {r['reference_ml']} |" for n, r in ex["structures"].items()]
    syn = record.get("held_out_synthetic")
    if syn:
        lines += ["", f"## Held-out subjects ({', '.join(syn['subjects'])}), synthetic images: mean Dice", "",
                  "| image | mean Dice over the structures |", "|---|---|"]
        lines += [f"| {n} | {s['mean_dice']} |" for n, s in syn["summary"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    global OVERLAP
    from UniversalSeg.errors import InputError
    from UniversalSeg.model_metadata import PackageError
    from UniversalSeg.inference import Predictor
    from UniversalSeg.model_download import resolve_model
    from UniversalSeg.provenance import cpu_model
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model package path (folder or .zip) or catalog id")
    parser.add_argument("--out", default="Testing/Benchmarks/results/brain-v2")
    parser.add_argument("--subjects", type=int, default=len(brain_v2.HELD_OUT), help="held-out subjects to use")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--images", nargs="+", metavar="NAME", choices=[n for n, _, _ in SYNTHETIC],
                        help="only these synthetic images (default all: " + ", ".join(n for n, _, _ in SYNTHETIC) + ")")
    parser.add_argument("--skip-real", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=float, default=OVERLAP,
                        help="sliding-window overlap (default 0.5, the predictor's; lower only for a quick look)")
    args = parser.parse_args(argv)
    OVERLAP = args.overlap
    try:
        package = resolve_model(args.model, progress=False)
    except (InputError, PackageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = [t for t in brain_v2.TASKS if t not in {x.name for x in package.tasks}]
    if missing:
        print(f"error: {args.model} is not a brain-synth 2.x model: it lacks task(s) {missing[:4]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(package, device="cpu", precision="fp32")
    prov = package.meta.get("provenance", {})
    record = {"model": args.model, "version": prov.get("version", "?"), "command": " ".join(sys.argv),
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "overlap": OVERLAP}
    if not args.skip_real:
        run_real(predictor, package, out, record)
    if not args.skip_synthetic:
        run_synthetic(predictor, package, args.subjects, record, args.images)
    (out / "brain_model_v2.json").write_text(json.dumps(record, indent=2))
    (out / "brain_model_v2.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
