"""What a demo training step costs, with and without the click-refinement stage, in one run.

    python Testing/Benchmarks/demo_step_cost.py [--out results/demo_step_cost.json] [--threads 2]
        [--steps 12] [--rounds 2]

Builds the demo's trainer (``universalseg demo``'s recipe: 64^3 collection, the small preset at
width 8, 48^3 patches, batch 2) three times - the click stage off, trained on every step, trained on
every 2nd step (the 0.7.0 trial) - and times the same ``--steps`` batches through
``Trainer.train_step`` (forward, losses, backward, AdamW, EMA; the batches are loaded before the
clock starts). The variants take turns for ``--rounds`` rounds so that a drifting machine shows as
spread, not as a difference; the thread count is fixed. Prints seconds per step and the ratios to
the stage-off step, writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"no click stage": {"clicks": 0}, "click stage every step": {"clicks": 5, "click_every": 1},
            "click stage every 2nd step": {"clicks": 5, "click_every": 2}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the numbers here (JSON)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per variant and round (even)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ["UNIVERSALSEG_THREADS"] = str(args.threads)  # the governor leaves a chosen count alone
    import torch
    from UniversalSeg.data.phantom import generate_collection
    from UniversalSeg.demo import DEMO_SHAPE, DEMO_STEPS, demo_network, demo_train_config
    from UniversalSeg.training.trainer import Trainer
    torch.set_num_threads(args.threads)
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = generate_collection(Path(tmp) / "data", cases=8, shape=DEMO_SHAPE, seed=0)
        trainers, batches = {}, None
        for name, settings in VARIANTS.items():
            cfg = demo_train_config(DEMO_STEPS, DEMO_SHAPE, 0, **settings)
            trainers[name] = Trainer(catalog, demo_network("small", 8), cfg, Path(tmp) / name.replace(" ", "-"),
                                     device="cpu", progress=False)
            trainers[name].model.train()
            if batches is None:  # the same batches for every variant
                loader = iter(trainers[name].loader)
                batches = [next(loader) for _ in range(args.steps + 2)]
            for batch in batches[:2]:  # warm-up (oneDNN picks its kernels)
                trainers[name].train_step(batch)
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                trainer.step = 0  # even steps first: every 2nd-step variant trains the stage on half
                t0 = time.perf_counter()
                for batch in batches[2:]:
                    trainer.train_step(batch)
                timings[name].append((time.perf_counter() - t0) / args.steps)
        for trainer in trainers.values():
            trainer.close()
    base = statistics.mean(timings["no click stage"])
    result = {"threads": args.threads, "steps": args.steps, "rounds": args.rounds, "shape": DEMO_SHAPE,
              "seconds_per_step": {k: [round(v, 4) for v in vs] for k, vs in timings.items()},
              "ratio_to_no_stage": {k: round(statistics.mean(vs) / base, 3) for k, vs in timings.items()},
              "command": "python Testing/Benchmarks/demo_step_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    for name, vs in timings.items():
        print(f"{name:28s} {statistics.mean(vs):.3f} s per step (rounds: {', '.join(f'{v:.3f}' for v in vs)}), "
              f"{result['ratio_to_no_stage'][name]:.2f}x the step without the stage")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
