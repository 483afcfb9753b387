"""The whole product on the embedded synthetic default: data, joint training, prediction, report.

    universalseg demo [--out universalseg-demo] [--steps 600] [--cases 8] [--shape 40] [--test-cases 4]

Writes DIR/data (collection + catalog), DIR/run (checkpoints, TensorBoard, logs),
DIR/test-data (test cases from data seed + 1000, never trained on), DIR/predictions (.seg.nrrd per
test case, a .png for the first of each institution), DIR/dice.json + dice.png, DIR/model.zip.
More --steps, --cases or a larger --shape make it longer and better.
"""
from ..errors import InputError

HELP = "run the end-to-end demo on the synthetic multi-institution collection"


def register(parser):
    parser.add_argument("--out", default="universalseg-demo", help="output folder")
    parser.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    parser.add_argument("--cases", type=int, default=8, help="cases per institution (default 8)")
    parser.add_argument("--shape", type=int, default=40, help="voxels per axis (default 40)")
    parser.add_argument("--test-cases", type=int, default=4,
                        help="test cases per institution, never used in training (default 4)")
    parser.add_argument("--preset", default="small", choices=["small", "base", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..demo import run_demo
    if args.steps < 1 or args.cases < 3 or args.shape < 32 or args.test_cases < 1:
        raise InputError("--steps >= 1, --cases >= 3, --shape >= 32 and --test-cases >= 1 are needed")
    run_demo(args.out, args.steps, args.cases, args.shape, args.seed, args.preset, args.device,
             progress=not args.no_progress, test_cases=args.test_cases)
    return 0
