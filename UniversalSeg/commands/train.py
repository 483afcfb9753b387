"""Train one universal model on every dataset of a catalog (partial labels, mixed modalities).

    universalseg train --catalog CATALOG --config MODEL_CONFIG --out RUN [--resume]
                       [--train-config TRAIN.yaml] [--epochs N] [--iterations N] ...

MODEL_CONFIG is a network config (e.g. Resources/Configs/network-small.yaml) or a preset name
(small, base, large); its tasks, modalities and domains are replaced by the catalog's. Settings
come from --train-config, then from the flags. Multi-GPU / multi-process:

    torchrun --nproc_per_node=4 -m UniversalSeg train --catalog C --config small --out RUN
"""
from ..errors import InputError

__all__ = ["HELP", "load_model_config", "register", "run"]

HELP = "train a universal model on a dataset catalog (resumable, torchrun DDP)"


def register(parser):
    parser.add_argument("--catalog", required=True, help="dataset catalog (.yaml / .json)")
    parser.add_argument("--config", required=True, help="network config file or preset name")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, model)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: continue although training settings changed (each change is logged)")
    parser.add_argument("--train-config", help="training settings (.yaml / .json)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--iterations", type=int, dest="iterations_per_epoch", help="iterations per epoch")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--patch", type=int, nargs="+", help="patch size (1 or 3 multiples of 16)")
    parser.add_argument("--spacing", type=float, nargs="+", help="model spacing in mm (1 or 3 values)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--augmentation", choices=["default", "reference"],
                        help="augmentation strength: default (mild) or reference (Hermes' spatial strength, "
                             "contrast, simulated low resolution)")
    parser.add_argument("--intensity-remap", type=float, metavar="P",
                        help="probability of a random non-monotonic intensity curve per patch (domain "
                             "generalization to unseen contrasts; 0 = off, the default; the demo uses 0.25)")
    parser.add_argument("--remap-modalities", metavar="M1,M2",
                        help="remap only cases of these modalities (e.g. MR-T1,MR-T2; default: all)")
    parser.add_argument("--sampling", choices=["dataset", "case"],
                        help="dataset: one weight per dataset (default); case: weighted by number of cases too")
    parser.add_argument("--batches", choices=["mixed", "distinct-sites", "every-site"],
                        help="batch composition: mixed (default), distinct-sites, or every-site (MS-Net: "
                             "each site in every step; --batch-size a multiple of the number of datasets)")
    parser.add_argument("--loss", choices=["adaptive-tversky", "dice"],
                        help="region term beside BCE: adaptive-tversky (Hermes, default) or dice")
    parser.add_argument("--clicks", type=int, metavar="N",
                        help="also train the click-refinement stage (interactive correction) with 1..N "
                             "simulated corrective clicks per step (0: off, the default)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--workers", type=int, dest="num_workers")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule "
                        "still spans --epochs; resume later with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def load_model_config(spec: str):
    from ..networks import PRESETS, ModelConfig
    if spec in PRESETS:
        return ModelConfig.preset(spec, tasks=["placeholder"], modalities=["CT"])
    return ModelConfig.load(spec)


def run(args) -> int:
    import json

    from ..training.config import TrainConfig
    from ..training.trainer import run_training
    cfg = TrainConfig.load(args.train_config) if args.train_config else TrainConfig()
    patch = args.patch and (args.patch * 3 if len(args.patch) == 1 else args.patch)
    spacing = args.spacing and (args.spacing * 3 if len(args.spacing) == 1 else args.spacing)
    cfg = cfg.replace(epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                      batch_size=args.batch_size, patch_size=patch, spacing=spacing, lr=args.lr,
                      precision=args.precision, num_workers=args.num_workers, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, augmentation=args.augmentation,
                      sampling=args.sampling, batches=args.batches, loss=args.loss,
                      clicks=args.clicks)
    if args.intensity_remap is not None or args.remap_modalities is not None:
        import dataclasses
        aug = dataclasses.asdict(cfg.augmentation)
        if args.intensity_remap is not None:
            aug["remap_prob"] = args.intensity_remap
        if args.remap_modalities is not None:
            aug["remap_modalities"] = [m.strip() for m in args.remap_modalities.split(",") if m.strip()]
        cfg = cfg.replace(augmentation=aug)
    from ..training.checkpoint import check_run_folder
    check_run_folder(args.out, args.resume)
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max-steps {args.max_steps}: must be at least 1")
    result = run_training(args.catalog, load_model_config(args.config), cfg, args.out,
                          resume=args.resume, device=args.device, max_steps=args.max_steps,
                          progress=not args.no_progress, allow_changes=args.allow_changes)
    print(json.dumps({k: v for k, v in result.items() if k != "validation"}))
    return 0
