"""Fine-tune a model on your own (corrected) cases: better on your scans, or new structures.

    universalseg finetune --model MODEL --catalog MY_CASES.yaml --out RUN
                          [--mode adapt|add-tasks|clicks] [--replay ORIGINAL.yaml] [--resume]

MODEL is a package (folder or .zip), a cached name or a catalog id. ``--mode adapt`` (default)
fine-tunes every weight on the model's own tasks; ``--replay`` mixes the model's original data
in (``--replay-share`` of the samples) and ``--anchor`` pulls the weights towards the parent's
(L2-SP), both against forgetting. ``--mode add-tasks`` learns the catalog's NEW structures with
every old weight frozen: the old structures' outputs stay bit-identical. ``--mode clicks`` adds
(or retrains) the click-refinement stage with every other weight frozen: the automatic outputs
stay bit-identical, and the model refines with clicks (``--clicks``, default 5). The package in
RUN/model records its parent, the mode and the cases per task. Settings default to the parent's
training settings (its spacing and patch always); see ``training/finetune.py``. This module
parses the flags; ``training.finetune.run_finetune`` does the work.
"""
__all__ = ["HELP", "register", "run"]

HELP = "fine-tune a model on your own cases (adapt, or add new structures with the old ones frozen)"


def register(parser):
    parser.add_argument("--model", required=True, help="model package (folder/.zip), cached name or catalog id")
    parser.add_argument("--catalog", required=True, help="your cases: a dataset catalog (.yaml / .json)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, model)")
    parser.add_argument("--mode", default="adapt", choices=["adapt", "add-tasks", "clicks"])
    parser.add_argument("--clicks", type=int, help="clicks mode: 1..N simulated clicks per step (default 5)")
    parser.add_argument("--replay", help="the model's original catalog, replayed against forgetting (adapt)")
    parser.add_argument("--replay-share", type=float,
                        help="share of the samples drawn from --replay (default 0.75: at 0.5 the seen "
                             "sites lost 0.05 Dice in the benchmark)")
    parser.add_argument("--anchor", type=float,
                        help="L2-SP weight towards the parent's weights (adapt; default 0.01 without "
                             "--replay, 0 with it)")
    parser.add_argument("--steps", type=int, help="training steps (default 150)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the parent's)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--name", default="", help="name of the new version (default <parent>-finetuned)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate", default="auto", choices=["auto", "rotation", "none"],
                        help="before/after Dice on your own cases, each held out by rotation (up to 3 "
                             "extra fine-tunings); auto: when you have 3 or more cases")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, default=0, dest="num_workers")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..training.finetune import run_finetune
    flags = dict(replay=args.replay, replay_share=args.replay_share, anchor=args.anchor, steps=args.steps,
                 lr=args.lr, batch_size=args.batch_size, name=args.name, seed=args.seed, clicks=args.clicks,
                 evaluate=args.evaluate, resume=args.resume, device=args.device, num_workers=args.num_workers,
                 checkpoint_every=args.checkpoint_every)
    # a flag not given: the library's default (the recipe's steps, clicks and replay share)
    result = run_finetune(args.model, args.catalog, args.out, args.mode, progress=not args.no_progress,
                          **{k: v for k, v in flags.items() if v is not None})
    print(json.dumps({k: v for k, v in result.items() if k != "validation"}))
    return 0
