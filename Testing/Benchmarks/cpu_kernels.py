"""Which CPU kernels the network and its optimizer get, and what they cost, measured in one run.

Questions:
1. 3D convolutions with batch 1: PyTorch sends those with N x C x D x H <= 20480 (a heuristic tuned
   for 2D) to its reference kernel ``slow_conv3d``; how much slower is that than oneDNN, which
   ``networks/onednn_convolution.py`` uses for every size when no gradient is taken? Per shape:
   PyTorch's choice, the routed convolution, and (for reference) a batch of 2 per sample.
2. The whole ``small`` preset, one window (48^3 and 96^3, 15 tasks) without gradients: PyTorch's
   kernels against ``prepare_model``'s routing; the largest difference of their logits.
3. One AdamW step on the small preset's parameters (408 tensors): the for-loop implementation,
   ``foreach`` and ``fused`` (what the trainer uses on CPU and CUDA).
Repeats are interleaved (round r rotates the order); medians reported. Records command, commit,
version, CPU model and flags, threads, load average.

    python Testing/Benchmarks/cpu_kernels.py [--repeats 5] [--json Testing/Benchmarks/results/cpu_kernels.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from UniversalSeg.networks import ModelConfig, SegContext, UniversalSegNet, prepare_input, prepare_model  # noqa: E402
from UniversalSeg.networks.onednn_convolution import use_onednn_convolutions  # noqa: E402
from UniversalSeg.provenance import load_average, provenance  # noqa: E402
from UniversalSeg.training.trainer import parameter_groups  # noqa: E402

CONV_SHAPES = [(16, 48), (16, 32), (32, 24), (64, 12), (128, 8)]  # (channels, edge)


def interleaved(runs: dict, repeats: int) -> dict:
    names = list(runs)
    times = {n: [] for n in names}
    for name in names:  # warm-up: oneDNN primitive creation
        runs[name]()
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def convolutions(repeats: int) -> list[dict]:
    rows = []
    cl = torch.channels_last_3d
    for channels, edge in CONV_SHAPES:
        torch.manual_seed(0)
        plain = torch.nn.Conv3d(channels, channels, 3, padding=1).to(memory_format=cl)
        routed = copy.deepcopy(plain)
        use_onednn_convolutions(routed)
        x1 = torch.randn(1, channels, edge, edge, edge).contiguous(memory_format=cl)
        x2 = torch.randn(2, channels, edge, edge, edge).contiguous(memory_format=cl)
        with torch.inference_mode():
            med = interleaved({"pytorch": lambda: plain(x1), "onednn": lambda: routed(x1),
                               "batch2": lambda: plain(x2)}, repeats)
        rows.append({"channels": channels, "edge": edge, "n_c_d_h": channels * edge * edge,
                     "pytorch_ms": round(1000 * med["pytorch"], 2), "onednn_ms": round(1000 * med["onednn"], 2),
                     "batch2_per_sample_ms": round(500 * med["batch2"], 2),
                     "pytorch_over_onednn": round(med["pytorch"] / med["onednn"], 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def networks(repeats: int) -> list[dict]:
    rows = []
    tasks = [f"task{i}" for i in range(15)]
    cpu = torch.device("cpu")
    for edge in (48, 96):
        torch.manual_seed(0)
        net = UniversalSegNet(ModelConfig.preset("small", tasks, ["CT"])).eval()
        plain = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
        routed = prepare_model(net, cpu)
        x = prepare_input(torch.randn(1, 1, edge, edge, edge), cpu)
        ctx = SegContext(torch.arange(15)[None], torch.zeros(1, dtype=torch.long), torch.full((1,), -1))
        with torch.inference_mode():
            med = interleaved({"pytorch": lambda: plain(x, ctx), "onednn": lambda: routed(x, ctx)}, repeats)
            diff = (plain(x, ctx)["logits"] - routed(x, ctx)["logits"]).abs().max().item()
        rows.append({"window": edge, "pytorch_s": round(med["pytorch"], 3), "onednn_s": round(med["onednn"], 3),
                     "pytorch_over_onednn": round(med["pytorch"] / med["onednn"], 2), "max_logit_difference": diff})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def optimizer(repeats: int) -> dict:
    torch.manual_seed(0)
    net = UniversalSegNet(ModelConfig.preset("small", ["liver", "spleen", "kidney", "liver-tumor", "pancreas", "brain"],
                                             ["CT", "MR-T1"]))
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    variants = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    optims = {k: torch.optim.AdamW(parameter_groups(net, 0.01, 1e-3), lr=1e-3, **kw) for k, kw in variants.items()}
    med = interleaved({k: o.step for k, o in optims.items()}, repeats)
    row = {"tensors": len(list(net.parameters())), "parameters": sum(p.numel() for p in net.parameters()),
           **{f"{k}_s": round(v, 4) for k, v in med.items()},
           "for_loop_over_fused": round(med["for-loop"] / med["fused"], 2)}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    record = {**provenance(" ".join(["python", "Testing/Benchmarks/cpu_kernels.py"] + (argv or sys.argv[1:]))),
              "torch": torch.__version__}
    record.update(convolutions=convolutions(args.repeats), networks=networks(args.repeats),
                  optimizer=optimizer(args.repeats), load_average_after=load_average())
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
