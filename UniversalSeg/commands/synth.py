"""Write the synthetic multi-institution collection (MSD-like layout + catalog.yaml).

    universalseg synth OUT_DIR [--cases 10] [--shape 48] [--seed 0]
"""
from ..errors import InputError

__all__ = ["HELP", "register", "run"]

HELP = "write the synthetic multi-institution collection and its catalog"


def register(parser):
    parser.add_argument("out", help="output folder")
    parser.add_argument("--cases", type=int, default=10, help="cases per institution (default 10)")
    parser.add_argument("--shape", type=int, default=48, help="voxels per axis at base spacing (default 48)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..data.phantom import generate_collection
    if args.cases < 2 or args.shape < 16:
        raise InputError("--cases must be >= 2 (one for validation) and --shape >= 16")
    path = generate_collection(args.out, args.cases, args.shape, args.seed, progress=True)
    print(f"wrote {path} (and catalog-heldout.yaml for the held-out institution)")
    return 0
