"""Build a shipped model from its recipe (``UniversalSeg/zoo``).

    universalseg zoo build brain --out DIR [--steps 1500] [--click-steps 300] [--seed 0] [--resume]
    universalseg zoo card brain --out DIR --validation brain_model.json

Writes DIR/data (label maps + catalog), DIR/run (checkpoints, logs), DIR/clicks (the click
stage's run, everything else frozen) and DIR/brain-synth-<version>.zip,
the package that ships in Resources/Models (copy it there and update Models.json's sha256/size).
``zoo card`` rewrites that package with the model card's validation numbers from
Testing/Benchmarks/brain_model.py's JSON (run on it first); the weights stay as they are.
"""
from ..errors import InputError

HELP = "build a shipped model (brain) from its recipe"
RECIPES = ("brain",)


def register(parser):
    sub = parser.add_subparsers(dest="zoo_command", required=True)
    build = sub.add_parser("build", help="train a shipped model from its recipe")
    build.add_argument("name", choices=RECIPES)
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    build.add_argument("--click-steps", type=int, default=300,
                       help="then train the click-refinement stage, all else frozen (default 300; 0: none)")
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
    if args.steps < 1 or args.click_steps < 0:
        raise InputError("--steps must be at least 1 and --click-steps at least 0")
    path = build_brain(args.out, steps=args.steps, seed=args.seed, device=args.device,
                       progress=not args.no_progress, resume=args.resume, click_steps=args.click_steps)
    print(f"wrote {path}")
    return 0
