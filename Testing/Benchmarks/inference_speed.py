"""End-to-end inference benchmark on a ~240x240x160 volume at model spacing (base preset, no TTA).

Measured in ONE run, each configuration in its own subprocess (so peak RSS is its own):
- ours: ``Predictor.predict`` from the NIfTI file to the written ``.seg.nrrd``, every task of a
  20-task model in one pass (bf16 on this AMX CPU, overlap 0.5, Gaussian weighting);
- ours with 1 task (cost of 20 tasks vs 1), ours in fp32 (bf16 speed-up), ours without the
  foreground crop;
- MONAI DynUNet (nnU-Net-like, filters 32..320, 20 output channels) in MONAI's default
  ``sliding_window_inference`` (overlap 0.5, constant weighting, fp32) on the same preprocessed
  tensor (its I/O is not even counted).
Goals: ours <= 0.5x DynUNet's time; 20 tasks <= 1.15x of 1 task; bf16 >= 1.6x faster than fp32;
pipeline overhead (I/O, resampling, normalization, aggregation, export) <= 15%; peak RSS <= 3 GB.

    python Testing/Benchmarks/inference_speed.py [--shape 240 240 160] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACING = (1.5, 1.5, 1.5)
TASKS = [f"structure-{i:02d}" for i in range(20)]


def make_inputs(folder: Path, shape) -> tuple[Path, Path]:
    import numpy as np
    import SimpleITK as sitk

    from UniversalSeg.data.modalities import KNOWN_MODALITIES
    from UniversalSeg.data.terminology import task_info
    from UniversalSeg.model_package import save_package
    from UniversalSeg.networks import ModelConfig, UniversalSegNet

    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape[::-1]], indexing="ij")
    body = (xx / 0.9) ** 2 + (yy / 0.75) ** 2 + (zz / 1.1) ** 2 < 1  # a body filling most of the FOV
    ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, body.shape)
    img = sitk.GetImageFromArray(ct.astype(np.float32))
    img.SetSpacing(SPACING)
    image_path = folder / "volume.nii.gz"
    sitk.WriteImage(img, str(image_path))
    cfg = ModelConfig.preset("base", TASKS, ["CT"])
    model = save_package(folder / "model", UniversalSegNet(cfg), [task_info(t, index=i) for i, t in enumerate(TASKS)],
                         dict(KNOWN_MODALITIES), SPACING, (128, 128, 128))
    return image_path, model


def run_ours(image, model, precision, ntasks, crop, out):
    from UniversalSeg.inference import Predictor, PredictOptions, write_seg_nrrd
    from UniversalSeg.model_package import load_package
    t0 = time.perf_counter()
    package = load_package(model)
    predictor = Predictor(package, device="cpu", precision=precision)
    tasks = TASKS[:ntasks]
    result = predictor.predict(image, "CT", tasks, PredictOptions(overlap=0.5, crop_foreground=crop))
    write_seg_nrrd(out, result.reference, result.masks, {t.name: t for t in package.tasks})
    total = time.perf_counter() - t0
    return {"seconds": total, "infer_seconds": result.timings["infer"],
            "overhead_fraction": (total - result.timings["infer"]) / total}


def run_dynunet(image):
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import DynUNet
    from UniversalSeg.data.image_io import to_metatensor, read_sitk
    from UniversalSeg.data.modalities import KNOWN_MODALITIES
    from UniversalSeg.data.transforms import preprocessing
    x = preprocessing(SPACING, KNOWN_MODALITIES, with_label=False)(
        {"image": to_metatensor(read_sitk(image)), "modality": "CT"})["image"].as_tensor()[None]
    net = DynUNet(3, 1, len(TASKS), kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2],
                  upsample_kernel_size=[2] * 5, filters=[32, 64, 128, 256, 320, 320],
                  norm_name="instance", res_block=False).eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        sliding_window_inference(x, (128, 128, 128), 2, net, overlap=0.5)
    return {"seconds": time.perf_counter() - t0}


def child(args):
    if args.child == "dynunet":
        r = run_dynunet(Path(args.image))
    else:
        precision, ntasks, crop = args.child.split(":")
        r = run_ours(Path(args.image), Path(args.model), precision, int(ntasks), crop == "crop",
                     Path(tempfile.mkdtemp()) / "out.seg.nrrd")
    r["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(r))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 160])
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    folder = Path(tempfile.mkdtemp(prefix="universalseg-bench-"))
    image, model = make_inputs(folder, args.shape)
    configs = {"ours bf16, 20 tasks": "bf16:20:crop", "ours bf16, 1 task": "bf16:1:crop",
               "ours fp32, 20 tasks": "fp32:20:crop", "ours bf16, 20 tasks, no crop": "bf16:20:nocrop",
               "DynUNet fp32 (MONAI sliding window)": "dynunet"}
    results = {}
    for name, spec in configs.items():
        out = subprocess.run([sys.executable, __file__, "--child", spec, "--image", str(image),
                              "--model", str(model)], check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        extra = f", infer {r['infer_seconds']:.1f} s, overhead {100 * r['overhead_fraction']:.1f}%" if "infer_seconds" in r else ""
        print(f"{name:40s} {r['seconds']:7.1f} s{extra}, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    ours, dyn = results["ours bf16, 20 tasks"], results["DynUNet fp32 (MONAI sliding window)"]
    ratios = {
        "ours / DynUNet time (goal <= 0.5)": ours["seconds"] / dyn["seconds"],
        "ours without crop / DynUNet time": results["ours bf16, 20 tasks, no crop"]["seconds"] / dyn["seconds"],
        "20 tasks / 1 task (goal <= 1.15)": ours["seconds"] / results["ours bf16, 1 task"]["seconds"],
        "fp32 / bf16 time (goal >= 1.6)": results["ours fp32, 20 tasks"]["seconds"] / ours["seconds"],
        "pipeline overhead share (goal <= 0.15)": ours["overhead_fraction"],
        "peak RSS GB (goal <= 3)": ours["peak_rss_gb"],
    }
    print(f"\nratios measured in this run (volume {'x'.join(map(str, args.shape))} at {SPACING} mm, base preset):")
    for k, v in ratios.items():
        print(f"  {k:42s} {v:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": args.shape, "results": results, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
