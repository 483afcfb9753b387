"""Speed anchor for the universal network: one 128^3 forward pass, fp32 and bf16, on this machine.

Prints, measured in ONE run (so ratios are fair on a noisy machine):
- the small preset with 15 tasks (priors fused at 5 sites), channels-last (our default layout);
- the same network in plain NCDHW layout (how the reference runs it);
- the backbone alone (no priors, no head): the cost of context priors = full / backbone;
- MONAI DynUNet, nnU-Net-like (filters 32..320), the usual baseline.
The reference small Hermes takes ~9 s fp32 / ~4 s bf16 on this 2-core CPU; our goal is at least
1.3x faster than that at equal output, and priors costing <= 10% over the backbone with 15 tasks.

    python Testing/Benchmarks/network_speed.py [--size 128] [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from UniversalSeg.networks import ModelConfig, UniversalSegNet, autocast

REFERENCE_SECONDS = {"fp32": 9.0, "bf16": 4.0}


def timed(fn, repeats):
    fn()  # warm-up: oneDNN primitive creation, allocator
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=15)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    tasks = [f"task{i}" for i in range(args.tasks)]
    cfg = ModelConfig.preset("small", tasks=tasks, modalities=["CT", "MR-T1"])
    net = UniversalSegNet(cfg).eval()
    ctx = net.context(tasks, "CT")
    x = torch.randn(1, 1, *(args.size,) * 3)

    from monai.networks.nets import DynUNet
    dyn = DynUNet(3, 1, args.tasks, kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2],
                  upsample_kernel_size=[2] * 5, filters=[32, 64, 128, 256, 320, 320],
                  norm_name="instance", res_block=False).eval()

    cl = torch.channels_last_3d
    net_cl = UniversalSegNet(cfg).eval()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=cl)
    x_cl = x.contiguous(memory_format=cl)
    runs = {
        "ours (channels-last)": lambda: net_cl(x_cl, ctx),
        "ours (NCDHW, reference layout)": lambda: net(x, ctx),
        "backbone only (channels-last)": lambda: net_cl.backbone(x_cl, ctx),
        "MONAI DynUNet 32..320": lambda: dyn(x),
    }
    results = {"size": args.size, "tasks": args.tasks, "threads": torch.get_num_threads(),
               "seconds": {}}
    for precision in ("fp32", "bf16"):
        for name, fn in runs.items():
            with torch.inference_mode(), autocast(cpu, precision):
                s = timed(fn, args.repeats)
            results["seconds"][f"{name} {precision}"] = s
            print(f"{precision:5s} {name:34s} {s:7.2f} s", flush=True)
    sec = results["seconds"]
    print("\nratios (measured in this run)")
    for precision in ("fp32", "bf16"):
        ours = sec[f"ours (channels-last) {precision}"]
        ratios = {
            "reference Hermes time / ours": REFERENCE_SECONDS[precision] / ours,
            "NCDHW layout / channels-last": sec[f"ours (NCDHW, reference layout) {precision}"] / ours,
            f"ours with {args.tasks} tasks / backbone only": ours / sec[f"backbone only (channels-last) {precision}"],
            "DynUNet / ours": sec[f"MONAI DynUNet 32..320 {precision}"] / ours,
        }
        results[f"ratios {precision}"] = ratios
        for k, v in ratios.items():
            print(f"  {precision:5s} {k:44s} {v:5.2f}x")
    print(f"  bf16 speed-up over fp32 (ours): {sec['ours (channels-last) fp32'] / sec['ours (channels-last) bf16']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
