"""The whole product on real abdominal anatomy: data, joint training, prediction, report.

    universalseg demo [--out universalseg-demo] [--steps 800] [--cases 8] [--width 8]
                      [--test-cases 4] [--real-scans DIR] [--phantom [--shape 64]]

Writes DIR/data (a multi-institution collection drawn from real AMOS 2022 label maps + catalog),
DIR/run (checkpoints, TensorBoard, logs), DIR/test-data (test cases from data seed + 1000, never
trained on), DIR/predictions (.seg.nrrd per test case, a .png for the first of each institution),
DIR/real-scans (the real CT and MR of --real-scans, segmented: .seg.nrrd + .png), DIR/dice.json +
dice.png (the model's Dice beside an atlas baseline's), DIR/model.zip. More --steps or --cases
make it longer and better. --phantom runs the ellipsoid phantom of versions 0.4.0-0.8.0 instead.
"""
from ..errors import InputError

HELP = "run the end-to-end demo on a multi-institution collection drawn from real abdominal anatomy"


def register(parser):
    parser.add_argument("--out", default="universalseg-demo", help="output folder")
    # the defaults live in demo.py (DEMO_*; imported only when the demo runs: it loads torch)
    parser.add_argument("--steps", type=int, help="training steps (default 800)")
    parser.add_argument("--cases", type=int, default=8, help="cases per institution (default 8)")
    parser.add_argument("--width", type=int, help="the network's base width (default: 8 with the small "
                                                  "preset, else the preset's own)")
    parser.add_argument("--test-cases", type=int, default=4,
                        help="test cases per institution, never used in training (default 4)")
    parser.add_argument("--real-scans", metavar="DIR",
                        help="a folder with TotalSegmentator's example CT and MR (tests/reference_files) to "
                             "segment too (default: ../shared/data/body-examples beside the repository, if there)")
    parser.add_argument("--phantom", action="store_true",
                        help="the ellipsoid phantom of versions 0.4.0-0.8.0 instead of real anatomy")
    parser.add_argument("--shape", type=int, help="with --phantom: voxels per axis (default 64: 2.81 mm; up to 40 "
                                                  "the model trains on 32^3 patches, above on 48^3)")
    parser.add_argument("--preset", default="small", choices=["small", "base", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..demo import DEMO_SHAPE, DEMO_STEPS, DEMO_WIDTH, REAL_SCANS, run_demo
    steps = DEMO_STEPS if args.steps is None else args.steps
    shape = DEMO_SHAPE if args.shape is None else args.shape
    width = args.width if args.width is not None else DEMO_WIDTH if args.preset == "small" else None
    if steps < 1 or args.cases < 3 or shape < 32 or args.test_cases < 1 or (width is not None and width < 4):
        raise InputError("--steps >= 1, --cases >= 3, --shape >= 32, --width >= 4 and --test-cases >= 1 "
                         "are needed")
    if args.shape is not None and not args.phantom:
        raise InputError("--shape is the phantom's grid: use it with --phantom (real anatomy is drawn at 4 mm)")
    real = "auto"
    if args.real_scans is not None:
        real = Path(args.real_scans)
        missing = [f for image, seg, _, _ in REAL_SCANS.values() for f in (image, seg) if not (real / f).is_file()]
        if missing:
            raise InputError(f"--real-scans {real}: missing {', '.join(missing)} (TotalSegmentator's "
                             "tests/reference_files hold them)")
    run_demo(args.out, steps, args.cases, shape, args.seed, args.preset, args.device,
             progress=not args.no_progress, test_cases=args.test_cases, base_width=width,
             anatomy="phantom" if args.phantom else "amos", real_scans=real)
    return 0
