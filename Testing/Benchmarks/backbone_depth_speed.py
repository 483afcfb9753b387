"""Would a lighter backbone be >= 1.5x faster than a DynUNet of its own parameter count? One forward
pass of SIZE^3 per network, every network in the SAME run, repeats interleaved.

Variants of the ``small`` preset (15 tasks, as the predictor runs it: ``prepare_model``), each with
a MONAI DynUNet (filters f x [1, 2, 4, 8, 10, 10]) whose f gives the parameter count nearest the
variant's: the preset as it ships (1 block at full resolution in the encoder, 2 in the decoder, 2
per level below), 1 block in the decoder's full-resolution level, 1 block at every level. The
variants are untrained: this measures speed only; whether a lighter backbone segments as well is a
question for training and evaluation, not for this script.

    python Testing/Benchmarks/backbone_depth_speed.py [--size 128] [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_speed import matched_width, parameters, timed_rounds  # noqa: E402

from UniversalSeg.networks import ModelConfig, UniversalSegNet, prepare_model  # noqa: E402
from UniversalSeg.provenance import load_average, provenance  # noqa: E402

VARIANTS = {
    "small as shipped": {},
    "1 block in the decoder's full-resolution level": {"decoder_blocks": [1, 2, 2, 2]},
    "1 block at every level": {"encoder_blocks": [1, 1, 1, 1], "decoder_blocks": [1, 1, 1, 1]},
}


def dynunet(tasks: int):
    from monai.networks.nets import DynUNet

    def build(f):
        return DynUNet(3, 1, tasks, kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2], upsample_kernel_size=[2] * 5,
                       filters=[f, 2 * f, 4 * f, 8 * f, 10 * f, 10 * f], norm_name="instance", res_block=False)
    return build


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    record = {**provenance(" ".join(["python", "Testing/Benchmarks/backbone_depth_speed.py"] + (argv or sys.argv[1:]))),
              "load_average_before": load_average(), "size": args.size, "tasks": args.tasks}
    torch.manual_seed(0)
    names = [f"task{i}" for i in range(args.tasks)]
    x = torch.randn(1, 1, args.size, args.size, args.size).contiguous(memory_format=torch.channels_last_3d)
    runs, params, pairs = {}, {}, {}
    for name, overrides in VARIANTS.items():
        cfg = ModelConfig.preset("small", tasks=names, modalities=["CT", "MR-T1"], **overrides)
        net = prepare_model(UniversalSegNet(cfg).eval(), torch.device("cpu"))
        ctx = net.context(names, "CT")
        params[name] = parameters(net)
        runs[name] = lambda net=net, ctx=ctx: net(x, ctx)
        f, dyn = matched_width(dynunet(args.tasks), params[name], range(8, 41))
        dyn = dyn.eval()
        other = f"DynUNet {f}..{10 * f} (matched to: {name})"
        params[other] = parameters(dyn)
        runs[other] = lambda dyn=dyn: dyn(x)
        pairs[name] = other
    times = timed_rounds(runs, args.repeats, "fp32")
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = {name: medians[other] / medians[name] for name, other in pairs.items()}
    record.update({"variants": VARIANTS, "parameters": params, "seconds": times, "median_seconds": medians,
                   "dynunet / variant (> 1: ours faster; goal >= 1.5)": ratio,
                   "load_average_after": load_average()})
    print(f"{args.size}^3, fp32, {args.tasks} tasks, {args.repeats} repeats interleaved (medians):")
    for name, other in pairs.items():
        print(f"  {name:48s} {params[name] / 1e6:6.2f} M {medians[name]:6.2f} s | {other}: "
              f"{params[other] / 1e6:6.2f} M {medians[other]:6.2f} s | {ratio[name]:.2f}x")
    print(f"{record['cpu']}, {record['threads']} threads, load {record['load_average_before']} -> "
          f"{record['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
