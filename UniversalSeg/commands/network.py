"""Describe a network config: parameter counts per part, fusion sites, plug-ins; optionally time
one forward pass.

    universalseg network Resources/Configs/network-small.yaml --forward 64 --precision bf16
"""
from __future__ import annotations

import time

from ..errors import InputError

__all__ = ["HELP", "register", "run"]

HELP = "describe a network config (parameters, sites, plug-ins) and optionally time a forward pass"


def register(parser):
    parser.add_argument("config", help="model config (.yaml or .json), or a preset name: small, base, large")
    parser.add_argument("--forward", type=int, metavar="SIZE",
                        help="run one forward pass on a SIZE^3 volume with every task")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ..networks import (
        PRESETS,
        ModelConfig,
        UniversalSegNet,
        autocast,
        prepare_input,
        prepare_model,
        resolve_device,
        resolve_precision,
    )
    if args.config in PRESETS:
        cfg = ModelConfig.preset(args.config, tasks=["structure"], modalities=["CT"])
    else:
        cfg = ModelConfig.load(args.config)
    net = UniversalSegNet(cfg).eval()
    total, backbone = net.num_parameters(), net.num_parameters("backbone")
    h = cfg.harmonization
    print(f"channels      {list(cfg.channels)}")
    print(f"parameters    {total / 1e6:.2f}M total, {backbone / 1e6:.2f}M backbone, "
          f"{(total - backbone) / 1e6:.2f}M priors + fusion + heads")
    print(f"fusion sites  {dict(cfg.fusion.sites) or 'none (no priors)'}; head: {cfg.head}")
    print(f"plug-ins      norm={h.norm}, conv={h.conv}")
    print(f"tasks ({len(cfg.tasks)})   {', '.join(cfg.tasks)}")
    print(f"modalities    {', '.join(cfg.modalities)}")
    if cfg.domains:
        print(f"domains       {', '.join(cfg.domains)}")
    if args.forward:
        size = args.forward
        if size % cfg.divisor:
            raise InputError(f"--forward {size}: the size must be a multiple of {cfg.divisor}")
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)
        net = prepare_model(net, device)
        x = prepare_input(torch.randn(1, cfg.in_channels, size, size, size), device)
        ctx = net.context(list(cfg.tasks), cfg.modalities[0], device=device)
        with torch.inference_mode(), autocast(device, precision):
            net(x, ctx)  # warm-up
            t = time.perf_counter()
            out = net(x, ctx)["logits"]
            if device.type == "cuda":
                torch.cuda.synchronize()
        print(f"forward       {size}^3 on {device} ({precision}): {time.perf_counter() - t:.2f} s, "
              f"logits {tuple(out.shape)}")
    return 0
