"""Training throughput and peak memory of the small preset on this machine, fp32 vs bf16.

One training iteration = forward + partial-label loss + backward + AdamW step + EMA update, on
random patches with 6 tasks requested per sample (real data loading is cached and not timed).
Each precision runs in its own subprocess so that its peak RSS is its own.

    python Testing/Benchmarks/training_speed.py [--patch 128] [--batch 1] [--iterations 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(precision: str, patch: int, batch: int, iterations: int) -> dict:
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from UniversalSeg.networks import (ModelConfig, SegContext, UniversalSegNet, autocast,
                                       prepare_input, prepare_model)
    from UniversalSeg.training.losses import PartialLabelLoss
    from UniversalSeg.training.trainer import parameter_groups

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    tasks = ["liver", "spleen", "kidney", "liver-tumor", "pancreas", "brain"]
    net = prepare_model(UniversalSegNet(ModelConfig.preset("small", tasks, ["CT", "MR-T1"])), cpu).train()
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True)
    opt = torch.optim.AdamW(parameter_groups(net, 0.01, 1e-3), lr=1e-3)
    loss_fn = PartialLabelLoss()
    x = prepare_input(torch.randn(batch, 1, patch, patch, patch), cpu)
    target = (torch.rand(batch, len(tasks), patch, patch, patch) > 0.9).to(torch.uint8)
    ctx = SegContext(torch.arange(len(tasks)).repeat(batch, 1), torch.zeros(batch, dtype=torch.long),
                     torch.full((batch,), -1))

    def step():
        with autocast(cpu, precision):
            out = net(x, ctx)
        loss, _ = loss_fn(out, target, ctx.task_mask, ctx.modality_ids, ctx.domain_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update_parameters(net)

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(iterations):
        step()
    seconds = (time.perf_counter() - t) / iterations
    return {"precision": precision, "seconds_per_iteration": seconds,
            "iterations_per_second": 1 / seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.patch, args.batch, args.iterations)))
        return
    results = []
    for precision in ("fp32", "bf16"):
        out = subprocess.run([sys.executable, __file__, "--child", precision, "--patch", str(args.patch),
                              "--batch", str(args.batch), "--iterations", str(args.iterations)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(f"{precision:5s} {r['seconds_per_iteration']:6.2f} s/it  {r['iterations_per_second']:.3f} it/s  "
              f"peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    print(f"bf16 / fp32 throughput: {results[1]['iterations_per_second'] / results[0]['iterations_per_second']:.2f}x; "
          f"peak memory ratio {results[1]['peak_rss_gb'] / results[0]['peak_rss_gb']:.2f}x "
          f"(small preset, patch {args.patch}^3, batch {args.batch})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"patch": args.patch, "batch": args.batch, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
