"""End-to-end inference against a MONAI DynUNet of the same parameter count, in one run.

A ~240x240x160 volume at model spacing, the ``base`` preset with 20 tasks, 128^3 windows, overlap
0.5, no TTA. Each configuration runs in its own subprocess (so peak RSS is its own), one after the
other in the same run:
- ours: ``Predictor.predict`` from the NIfTI file to the written ``.seg.nrrd``, every task of the
  20-task model in one pass, ``auto`` precision (bf16 only on CPUs with AMX or AVX512-bf16);
- ours with 1 task (the cost of 20 tasks), ours in fp32 (when ``auto`` chose bf16), ours without
  the foreground crop;
- MONAI DynUNet (nnU-Net-like, filters f x [1, 2, 4, 8, 10, 10], f chosen for the parameter count
  nearest ours; 20 output channels) in MONAI's ``sliding_window_inference`` (overlap 0.5, Gaussian
  weighting, 1 window per pass) on the same preprocessed tensor (its I/O is not counted), in fp32
  and, where ``auto`` chose bf16, in bf16 too (autocast, bf16 input and blending, as ours).
Goals: ours <= 0.5x DynUNet's time (ratios at the same precision are printed too); 20 tasks <= 1.15x of 1 task; pipeline overhead (I/O,
resampling, normalization, aggregation, export) <= 15 %; peak RSS <= 3 GB. Records the command,
commit, version, CPU model, flags, threads and load average.

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
    precision = predictor.precision
    write_seg_nrrd(out, result.reference, result.masks, {t.name: t for t in package.tasks})
    total = time.perf_counter() - t0
    return {"seconds": total, "infer_seconds": result.timings["infer"], "precision": precision,
            "overhead_fraction": (total - result.timings["infer"]) / total}


def ours_parameters() -> int:
    from UniversalSeg.networks import ModelConfig, UniversalSegNet
    net = UniversalSegNet(ModelConfig.preset("base", TASKS, ["CT"]))
    return sum(p.numel() for p in net.parameters())


def same_size_dynunet():
    """(f, DynUNet) with the parameter count nearest ours."""
    from monai.networks.nets import DynUNet

    def build(f):
        return DynUNet(3, 1, len(TASKS), kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2],
                       upsample_kernel_size=[2] * 5, filters=[f, 2 * f, 4 * f, 8 * f, 10 * f, 10 * f],
                       norm_name="instance", res_block=False)
    target = ours_parameters()
    f = min(range(8, 65), key=lambda w: abs(sum(p.numel() for p in build(w).parameters()) - target))
    return f, build(f)


def run_dynunet(image, precision="fp32"):
    import torch
    from monai.inferers import sliding_window_inference
    from UniversalSeg.data.image_io import to_metatensor, read_sitk
    from UniversalSeg.data.modalities import KNOWN_MODALITIES
    from UniversalSeg.data.transforms import preprocessing
    x = preprocessing(SPACING, KNOWN_MODALITIES, with_label=False)(
        {"image": to_metatensor(read_sitk(image)), "modality": "CT"})["image"].as_tensor()[None]
    f, net = same_size_dynunet()
    net = net.eval().to(memory_format=torch.channels_last_3d)
    t0 = time.perf_counter()
    # bf16 as ours runs it: autocast, the input and the blending in bf16
    half = precision == "bf16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
        sliding_window_inference(x.to(torch.bfloat16) if half else x, (128, 128, 128), 1, net, overlap=0.5,
                                 mode="gaussian")
    return {"seconds": time.perf_counter() - t0, "filters": f,
            "parameters": sum(p.numel() for p in net.parameters()), "ours_parameters": ours_parameters()}


def child(args):
    if args.child.startswith("dynunet"):
        r = run_dynunet(Path(args.image), args.child.partition(":")[2] or "fp32")
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
    import torch

    from UniversalSeg.networks import resolve_precision
    from UniversalSeg.provenance import load_average, provenance
    auto = resolve_precision("auto", torch.device("cpu"))
    folder = Path(tempfile.mkdtemp(prefix="universalseg-bench-"))
    image, model = make_inputs(folder, args.shape)
    configs = {f"ours {auto}, 20 tasks": f"{auto}:20:crop", f"ours {auto}, 1 task": f"{auto}:1:crop",
               f"ours {auto}, 20 tasks, no crop": f"{auto}:20:nocrop",
               "DynUNet, same size, fp32 (MONAI sliding window)": "dynunet"}
    if auto != "fp32":
        configs["ours fp32, 20 tasks"] = "fp32:20:crop"
        configs[f"DynUNet, same size, {auto} (MONAI sliding window)"] = f"dynunet:{auto}"
    record = {**provenance(" ".join(["python", "Testing/Benchmarks/inference_speed.py"] + (argv or sys.argv[1:]))),
              "load_average_before": load_average(), "auto_precision": auto}
    results = {}
    for name, spec in configs.items():
        out = subprocess.run([sys.executable, __file__, "--child", spec, "--image", str(image),
                              "--model", str(model)], check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        extra = f", infer {r['infer_seconds']:.1f} s, overhead {100 * r['overhead_fraction']:.1f}%" if "infer_seconds" in r else ""
        if "filters" in r:
            extra = f" (filters {r['filters']}: {r['parameters'] / 1e6:.2f} M parameters, ours {r['ours_parameters'] / 1e6:.2f} M)"
        print(f"{name:48s} {r['seconds']:7.1f} s{extra}, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    ours, dyn = results[f"ours {auto}, 20 tasks"], results["DynUNet, same size, fp32 (MONAI sliding window)"]
    ratios = {
        "ours / same-size DynUNet time (goal <= 0.5)": ours["seconds"] / dyn["seconds"],
        "ours without crop / same-size DynUNet time": results[f"ours {auto}, 20 tasks, no crop"]["seconds"] / dyn["seconds"],
        "20 tasks / 1 task (goal <= 1.15)": ours["seconds"] / results[f"ours {auto}, 1 task"]["seconds"],
        "pipeline overhead share (goal <= 0.15)": ours["overhead_fraction"],
        "peak RSS GB (goal <= 3)": ours["peak_rss_gb"],
    }
    if auto != "fp32":
        ratios["fp32 / bf16 time"] = results["ours fp32, 20 tasks"]["seconds"] / ours["seconds"]
        ratios["ours fp32 / same-size DynUNet fp32 time"] = results["ours fp32, 20 tasks"]["seconds"] / dyn["seconds"]
        ratios[f"ours {auto} / same-size DynUNet {auto} time"] = \
            ours["seconds"] / results[f"DynUNet, same size, {auto} (MONAI sliding window)"]["seconds"]
    record["load_average_after"] = load_average()
    print(f"\nratios measured in this run (volume {'x'.join(map(str, args.shape))} at {SPACING} mm, base preset; "
          f"{record['cpu']}, {record['threads']} threads, load {record['load_average_before']} -> "
          f"{record['load_average_after']}):")
    for k, v in ratios.items():
        print(f"  {k:48s} {v:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**record, "shape": args.shape, "results": results, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
