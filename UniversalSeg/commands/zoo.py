"""Build a shipped model from its recipe (``UniversalSeg/zoo``).

    universalseg zoo build brain --out DIR [--recipe 2.0.0] [--steps N] [--click-steps N] [--seed 0] [--resume]
    universalseg zoo build brain --recipe 1.0.1 --out DIR      # the shipped one-template model
    universalseg zoo card brain --out DIR --validation brain_model.json   # 1.0.1 builds

Recipe 2.0.0 (``zoo/brain_v2.py``) learns from the 20 SynthSeg label maps (``--maps``, default
../shared/data/synthseg-label-maps beside the repository) with ``--held-out`` subjects kept for
validation; 1.0.1 (``zoo/brain.py``) from the MNI152 template.

Writes DIR/data (label maps + catalog), DIR/run (checkpoints, logs), DIR/clicks (the click
stage's run, everything else frozen) and DIR/brain-synth-<version>.zip,
the package that ships in Resources/Models (copy it there and update Models.json's sha256/size).
``zoo card`` rewrites that package with the model card's validation numbers from
Testing/Benchmarks/brain_model.py's JSON (run on it first); the weights stay as they are.
"""
from ..errors import InputError

__all__ = ["HELP", "RECIPES", "VERSIONS", "register", "run"]

HELP = "build a shipped model (brain) from its recipe"
RECIPES = ("brain",)
VERSIONS = ("2.0.0", "1.0.1")


def register(parser):
    sub = parser.add_subparsers(dest="zoo_command", required=True)
    build = sub.add_parser("build", help="train a shipped model from its recipe")
    build.add_argument("name", choices=RECIPES)
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--recipe", choices=VERSIONS, default="2.0.0",
                       help="recipe version (default 2.0.0: 20 real label maps; 1.0.1: the MNI152 template)")
    build.add_argument("--steps", type=int, default=None,
                       help="training steps (default 2.0.0: 60000, 1.0.1: 1500)")
    build.add_argument("--click-steps", type=int, default=None,
                       help="then train the click-refinement stage, all else frozen (default 2.0.0: 2000, "
                            "1.0.1: 300; 0: none)")
    build.add_argument("--maps", help="2.0.0: folder of the SynthSeg label maps (training_seg_*.nii.gz)")
    build.add_argument("--held-out", nargs="+", metavar="ID",
                       help="2.0.0: subjects kept out of training for validation (default: the recipe's 4)")
    build.add_argument("--patch", type=int, default=96, help="2.0.0: patch edge in voxels at 1 mm (default 96)")
    build.add_argument("--width", type=int, default=16, help="2.0.0: the network's base width (default 16)")
    build.add_argument("--batch", type=int, default=2, help="2.0.0: batch size (default 2)")
    build.add_argument("--validations", type=int, default=60,
                       help="2.0.0: validations on the held-out subjects during the build (default 60)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--device", default="auto")
    build.add_argument("--resume", action="store_true", help="continue an interrupted build")
    build.add_argument("--no-progress", action="store_true")
    card = sub.add_parser("card", help="write the benchmark's numbers into a built package's model card")
    card.add_argument("name", choices=RECIPES)
    card.add_argument("--out", required=True, help="the folder of a finished `zoo build`")
    card.add_argument("--validation", required=True, help="Testing/Benchmarks/brain_model.py's JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..zoo.brain import build_brain, write_card_validation
    if args.zoo_command == "card":
        print(f"wrote {write_card_validation(args.out, args.validation)}")
        return 0
    v2 = args.recipe == "2.0.0"
    steps = args.steps if args.steps is not None else (60000 if v2 else 1500)
    click_steps = args.click_steps if args.click_steps is not None else (2000 if v2 else 300)
    if steps < 1 or click_steps < 0:
        raise InputError("--steps must be at least 1 and --click-steps at least 0")
    if v2:
        from ..zoo.brain_v2 import HELD_OUT, build_brain_v2
        for name, value, low in (("--patch", args.patch, 16), ("--width", args.width, 4), ("--batch", args.batch, 1),
                                 ("--validations", args.validations, 1)):
            if value < low:
                raise InputError(f"{name} must be at least {low}, got {value}")
        path = build_brain_v2(args.out, steps=steps, seed=args.seed, width=args.width, patch=args.patch,
                              batch=args.batch, validations=args.validations, device=args.device,
                              progress=not args.no_progress, resume=args.resume, click_steps=click_steps,
                              maps=args.maps, held_out=tuple(args.held_out or HELD_OUT))
    else:
        path = build_brain(args.out, steps=steps, seed=args.seed, device=args.device,
                           progress=not args.no_progress, resume=args.resume, click_steps=click_steps)
    print(f"wrote {path}")
    return 0
