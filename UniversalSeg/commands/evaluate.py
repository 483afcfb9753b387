"""Dice per dataset x task of a model package on a catalog split (whole volumes, sliding window).

    universalseg evaluate --model RUN/model --catalog CATALOG [--split validation] [--json out.json]
                          [--nsd-tolerance 2.0]

--json writes the table and every case's scores (for paired comparisons between models);
--nsd-tolerance MM adds MONAI's normalized surface Dice at that boundary tolerance.
"""
from ..errors import InputError

__all__ = ["HELP", "register", "run"]

HELP = "Dice table per dataset x task of a model on a catalog split"


def register(parser):
    parser.add_argument("--model", required=True, help="model package (folder or .zip)")
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the table and every case's scores here")
    parser.add_argument("--nsd-tolerance", type=float, help="also report normalized surface Dice (tolerance, mm)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..data.catalog import check_files, load_catalog
    from ..data.dataset import PreprocessedCases, case_records
    from ..model_package import load_package
    from ..networks import resolve_device
    from ..training.evaluation import evaluate_cases, format_dice_table
    package = load_package(args.model)
    catalog = load_catalog(args.catalog)
    cfg = package.config
    unknown = [t for t in catalog.task_names if t not in cfg.tasks]
    if unknown:
        raise InputError(f"the catalog labels tasks the model does not know: {unknown}; "
                         f"the model knows {list(cfg.tasks)}")
    bad_mod = [m for m in catalog.modality_names if m not in cfg.modalities]
    if bad_mod:
        raise InputError(f"modalities {bad_mod} are unknown to the model ({list(cfg.modalities)})")
    check_files(catalog, splits=(args.split,))
    records = case_records(catalog, args.split, cfg.tasks, cfg.modalities, cfg.domains)
    if not records:
        raise InputError(f"the catalog has no cases in split {args.split!r}")
    device = resolve_device(args.device)
    cases = PreprocessedCases(records, package.spacing, package.modalities, progress=True)
    if args.nsd_tolerance is not None and not 0 < args.nsd_tolerance < 1000:  # also false for NaN
        raise InputError(f"--nsd-tolerance {args.nsd_tolerance}: a distance in mm, above 0")
    result = evaluate_cases(package.build(device), cases, package.patch_size, device, args.overlap,
                            progress=True, spacing=package.spacing, nsd_tolerance_mm=args.nsd_tolerance)
    print(format_dice_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
