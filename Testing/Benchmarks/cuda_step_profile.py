"""Where a training step's time goes on CUDA: ms per step of the accuracy study's network under
variants (precision, channels-last, cudnn.benchmark, patch, width), then torch.profiler's tables.

    python Testing/Benchmarks/cuda_step_profile.py CATALOG      (e.g. `universalseg synth D --shape 64`)

Result on an H100 (results/cuda/cuda_step_profile.log): 110-157 ms per step for 12 ms of GPU work;
~2,300 kernel launches and ~900 dtype casts per step: launch-bound at this network size.
"""
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import UniversalSeg.networks.precision as P
from accuracy import network, train_config
from UniversalSeg.training.trainer import Trainer

if len(sys.argv) != 2:
    sys.exit("usage: python Testing/Benchmarks/cuda_step_profile.py CATALOG  (needs a CUDA GPU)")
catalog = sys.argv[1]


def make(precision="auto", channels_last=True, patch=48, width=8):
    P.memory_format = (lambda d: torch.channels_last_3d) if channels_last else (lambda d: torch.contiguous_format)
    cfg = train_config(100, 0, 180 / 64, patch)
    cfg = dataclasses.replace(cfg, precision=precision)
    return Trainer(catalog, network(width, "universal"), cfg, f"/tmp/prof-{precision}-{channels_last}-{patch}-{width}", "cuda", progress=False)


def timeit(t, n=20, benchmark=True):
    torch.backends.cudnn.benchmark = benchmark
    it = iter(t.loader)
    batches = [next(it) for _ in range(n + 5)]
    for b in batches[:5]:
        t.train_step(b)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches[5:]:
        t.train_step(b)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n

t0 = time.perf_counter(); it = iter(make().loader); [next(it) for _ in range(10)]
print(f"data: {(time.perf_counter() - t0) / 10:.3f} s per batch (incl. start)", flush=True)
for kw, bench in [({}, True), ({}, False), ({"channels_last": False}, True), ({"channels_last": False}, False),
                  ({"precision": "fp32"}, True), ({"precision": "fp32", "channels_last": False}, False),
                  ({"patch": 32}, True), ({"width": 16}, True)]:
    t = make(**kw)
    print(f"{kw} cudnn.benchmark={bench}: {timeit(t, benchmark=bench) * 1000:.0f} ms/step", flush=True)
t = make()
torch.backends.cudnn.benchmark = True
it = iter(t.loader); batches = [next(it) for _ in range(15)]
for b in batches[:5]:
    t.train_step(b)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for b in batches[5:]:
        t.train_step(b)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18))
