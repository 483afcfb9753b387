"""Profile one training step of recipe brain-synth 2.0.0 on this machine: label-map generation
(``data.label_synthesis`` through the training transform, per sample) against the network's
forward + backward + optimizer step, at the recipe's patch size.

    python Testing/Benchmarks/brain_step_profile.py [--patch 96] [--batch 2] [--width 16] [--repeats 3]

Prints one JSON line: CPU model, torch threads, seconds per part (median of --repeats after one
warm-up). Needs ../shared/data/synthseg-label-maps beside the repository.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch




def main() -> int:
    from UniversalSeg.data.label_synthesis import GeneratorSettings, generate, targets
    from UniversalSeg.data.transforms import LabelMapOnlyd, normalize_intensity
    from UniversalSeg.data.modalities import KNOWN_MODALITIES
    from UniversalSeg.networks import ModelConfig, SegContext, UniversalSegNet
    from UniversalSeg.training.losses import PartialLabelLoss
    from UniversalSeg.provenance import cpu_model
    from UniversalSeg.zoo import brain_v2
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    maps = brain_v2.find_maps(None, brain_v2.HELD_OUT)[:2]
    cached = [LabelMapOnlyd((1.0, 1.0, 1.0))({"label": str(m), "generator": {}})["label"] for m in maps]
    settings = GeneratorSettings.from_dict(brain_v2.generator_block())
    values = [list(v) for v in brain_v2.structures().values()]
    cfg = ModelConfig.preset("small", tasks=list(brain_v2.TASKS), modalities=list(brain_v2.MODALITIES),
                             base_width=args.width, fusion={"head_dim": 2 * args.width})
    net = UniversalSegNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = PartialLabelLoss()
    patch = (args.patch,) * 3
    gen_t, net_t = [], []
    for r in range(args.repeats + 1):
        t0 = time.perf_counter()
        images, tgts = [], []
        for b in range(args.batch):
            modality = brain_v2.MODALITIES[(r + b) % len(brain_v2.MODALITIES)]
            labels, image = generate(cached[b % len(cached)], settings, modality, patch, (1, 1, 1),
                                     np.random.default_rng([r, b]))
            images.append(normalize_intensity(image[None], KNOWN_MODALITIES[modality]))
            tgts.append(targets(labels, values))
        t1 = time.perf_counter()
        n = len(values)
        ctx = SegContext(torch.arange(n).repeat(args.batch, 1), torch.zeros(args.batch, dtype=torch.long),
                         torch.full((args.batch,), -1, dtype=torch.long))
        out = net(torch.stack(images), ctx)
        loss, _ = loss_fn(out, torch.stack(tgts), ctx.task_mask, ctx.modality_ids, ctx.domain_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if r:
            gen_t.append(t1 - t0)
            net_t.append(t2 - t1)
    g, n_ = statistics.median(gen_t), statistics.median(net_t)
    print(json.dumps({"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "patch": args.patch,
                      "batch": args.batch, "width": args.width, "tasks": len(values),
                      "generation_s": round(g, 3), "network_s": round(n_, 3),
                      "generation_share": round(g / (g + n_), 3), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
