"""Segment images with a model package: every requested task in one pass.

    universalseg predict --model MODEL --input IMAGE --modality CT --output OUT.seg.nrrd
                         [--tasks liver,spleen] [--device auto|cpu|cuda] [--precision auto|fp32|bf16|fp16]
                         [--backend torch|openvino|auto]
                         [--overlap 0.5] [--roi x0 x1 y0 y1 z0 z1] [--fast] [--largest-component]
                         [--probabilities DIR] [--progress bar|json|none] [--points points.json]

MODEL is a package folder, a .zip, or a model id from Resources/Models.json (downloaded once,
checksum verified, cached). IMAGE is any file SimpleITK reads or a DICOM series folder; a folder
of image files runs a batch into the --output folder. OUT ending in .seg.nrrd gives a Slicer
segmentation (one segment per task, overlaps kept); .nii.gz / .nrrd / .mha gives a labelmap; .dcm
gives a DICOM SEG that references the input DICOM series (names, colors and codes kept).
--points applies corrective clicks after the automatic pass (the model needs its click-refinement
stage): {"points": [{"task": "liver", "position": [x, y, z], "label": "positive"}]}, RAS mm, in order.
Exit codes: 0 done, 2 bad input (image, names, options), 3 model problem (corrupt, newer format,
checksum), 4 out of memory, 1 anything else.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from ..errors import InputError

__all__ = ["HELP", "IMAGE_SUFFIXES", "OUTPUT_SUFFIXES", "check_options", "check_outputs", "input_files",
           "parse_thresholds", "planned_outputs", "register", "requested_tasks", "run"]

HELP = "segment images with a model (one pass for all requested tasks)"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_SUFFIXES = (".seg.nrrd", ".dcm", ".nii.gz", ".nii", ".nrrd", ".mha")  # single files only


def register(parser):
    parser.add_argument("--model", required=True, help="package folder, .zip or catalog id")
    parser.add_argument("--input", required=True, help="image file, DICOM folder, or folder of images")
    parser.add_argument("--modality", required=True, help="imaging modality, e.g. CT, MR-T1, PET")
    parser.add_argument("--tasks", help="comma-separated task names (default: every task of the model)")
    parser.add_argument("--output", required=True,
                        help="OUT.seg.nrrd, OUT.nii.gz, OUT.dcm (DICOM SEG of a DICOM input), or a folder for batches")
    parser.add_argument("--format", choices=["seg", "labelmap"], default="seg",
                        help="file type written into an output folder (default seg)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--backend", default="torch", choices=["torch", "openvino", "auto"],
                        help="who runs the network on the CPU: torch (default), openvino (fp32; about 1.3x "
                        "faster than torch's fp32 on a whole brain on a 2-core Xeon; needs pip install openvino; "
                        "exported once per model, task list and modality, then cached), auto (openvino where "
                        "it is installed and torch would run fp32 on the CPU)")
    parser.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default 0.5)")
    parser.add_argument("--sw-batch", type=int, default=None,
                        help="windows per forward pass (default: as many as a voxel budget holds: 4 windows of "
                             "48^3 on CPU, 4 of 128^3 on GPU; halved on GPU out-of-memory)")
    parser.add_argument("--roi", type=float, nargs=6, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"),
                        help="crop to this box, RAS millimetres")
    parser.add_argument("--no-crop", action="store_true", help="do not crop to the body/foreground")
    parser.add_argument("--fast", action="store_true", help="overlap 0.25 (fewer windows)")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep each task's largest connected components: as many as the structure "
                        "has parts (both kidneys: 2); lesions are left untouched")
    parser.add_argument("--threshold", default=None,
                        help="probability threshold: one number, or task=value,task=value")
    parser.add_argument("--overlap-policy", choices=["order", "probability"], default="order",
                        help="labelmaps only: who wins where tasks overlap")
    parser.add_argument("--probabilities", help="also write one probability map per task here")
    parser.add_argument("--points", help="JSON file of corrective clicks (RAS mm, positive/negative per "
                        "point) applied in order after the automatic pass; one input image")
    parser.add_argument("--domain", help="training domain (site) of the image, if the model has plug-ins")
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    parser.set_defaults(run=run)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--threshold: {text.strip()!r} is not a number") from None
    if not 0.0 < value < 1.0:  # also false for NaN
        raise InputError(f"--threshold {text.strip()}: must be a number between 0 and 1")
    return value


def parse_thresholds(text, tasks):
    """One probability for every task, or task=value pairs for requested tasks."""
    if not text:
        return {}
    if "=" not in text:
        return {t: _probability(text) for t in tasks}
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in tasks:
            raise InputError(f"--threshold names task {name.strip()!r}, which is not among the requested "
                             f"tasks {', '.join(tasks)}")
        out[name.strip()] = _probability(value)
    return out


def requested_tasks(text, model_tasks) -> list:
    if text is None:
        return list(model_tasks)
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise InputError(f"--tasks {text!r} names no task; leave it out to run every task of the model")
    return tasks


def check_options(args) -> None:
    """Options that need no model: refused before anything is loaded or written."""
    for name in ("overlap", "roi"):
        value = getattr(args, name)
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(math.isfinite(v) for v in values):
            raise InputError(f"--{name} needs finite numbers, got {value}")


def _inputs(path: Path, output: Path, fmt: str):
    """(input, output) pairs: one image, or every image file of a folder into an output folder,
    each output of a known type (``check_outputs`` compares them with the inputs and each other)."""
    from ..inference.writers import check_single_file
    pairs = [(path, output)]  # a file, or a DICOM series folder
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
        if files:
            suffix = ".seg.nrrd" if fmt == "seg" else ".nii.gz"
            if output.name.lower().endswith(OUTPUT_SUFFIXES + IMAGE_SUFFIXES):
                raise InputError(f"--input {path} is a folder of {len(files)} images: --output must be a folder")
            if output.resolve() == path.resolve():
                raise InputError(f"--output {output} is the input folder: choose another folder for the results")
            pairs = [(f, output / (_stem(f) + suffix)) for f in files]
    for _, dst in pairs:
        check_single_file(dst)
        if not dst.name.lower().endswith(OUTPUT_SUFFIXES):
            raise InputError(f"--output {dst}: end it with .seg.nrrd, .nii.gz, .nii, .nrrd, .mha or .dcm")
    return pairs


def planned_outputs(jobs, probabilities, tasks) -> list[tuple[Path, str, str]]:
    """Every file the run will write, as (path, who writes it, what to change). ``tasks`` None:
    not known yet (the probability maps are left out)."""
    out = []
    for src, dst in jobs:
        if len(jobs) > 1:
            out.append((dst, f"the result of --input {src.name}", "rename one of them"))
        else:
            out.append((dst, f"--output {dst}", "choose another --output name"))
        if probabilities and tasks is not None:
            folder = Path(probabilities) / (_stem(src) if len(jobs) > 1 else "")
            out += [(folder / f"{t}.nii.gz", f"the {t} probability map of --probabilities {probabilities}",
                     "choose another --probabilities folder") for t in tasks]
    return out


def input_files(jobs, others) -> list[tuple[Path, str]]:
    """What the run reads and must never overwrite: the images (every file of a DICOM series
    folder), the --points file, a local model package's files."""
    out = []
    for src, _ in jobs:
        files = [f for f in src.iterdir() if f.is_file()] if src.is_dir() else [src]
        out += [(f, "the input image" if f == src else f"a file of the input series {src}") for f in files]
    for path, what in others:
        if path is not None and Path(path).exists():
            path = Path(path)
            out += [(f, what) for f in ([*path.iterdir()] if path.is_dir() else [path])]
    return out


def _same_file_key(path: Path):
    """Two names of one file (the same path, a symbolic or a hard link) give one key."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_outputs(outputs, inputs) -> None:
    """Before any model is loaded: no output of the run lands on anything it reads or on another of
    its outputs (a probability map over the input CT or over the labelmap, two cases of a batch on
    one file), no output is an existing folder, and every output folder can be written."""
    read = {_same_file_key(path): what for path, what in inputs}
    written = {}
    for path, who, fix in outputs:
        key = _same_file_key(path)
        if key in read:
            raise InputError(f"{who}: {path} is {read[key]}, which would be overwritten; {fix}")
        if key in written:
            raise InputError(f"{written[key]} and {who} would both be written to {path}: {fix}")
        if path.is_dir():
            raise InputError(f"{who}: {path} is a folder; {fix}")
        written[key] = who
    for folder in dict.fromkeys(path.parent for path, _, _ in outputs):
        _check_writable(folder, next(who for path, who, _ in outputs if path.parent == folder))


def _check_writable(folder: Path, who: str) -> None:
    """Before an hour of inference: the output folder (or the existing folder it will be made in)
    can be written (``access`` also reports a read-only file system to root)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{who}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{who}: cannot write in {existing} (read-only or no permission); "
                         "choose another output location")


def _stem(path: Path) -> str:
    name = path.name
    for s in IMAGE_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _refined(predictor, src, args, tasks, options, points, report):
    """The automatic pass, then the clicks in order (``inference.interactive``)."""
    import time

    from ..inference.interactive import InteractiveSession
    from ..inference.predictor import Prediction
    t0 = time.perf_counter()
    session = InteractiveSession(predictor, src, args.modality, tasks, options, report, domain=args.domain)
    for task, position, positive in points:
        session.refine(task, [(position, positive)])
    return Prediction(session.grid.reference, tasks, {t: session.mask(t) for t in tasks}, {},
                      {"total": time.perf_counter() - t0}, str(predictor.device),
                      predictor.precision, list(predictor.warnings))


def run(args) -> int:
    from ..data.image_io import check_header
    from ..inference import PredictOptions, Predictor, write_labelmap, write_probabilities, write_seg_nrrd
    from ..inference.cpu_backend import check_backend, use_backend
    from ..inference.dicom_seg import check_dicom_codes, check_dicom_output, wants_dicom_seg, write_dicom_seg
    from ..inference.progress import make_reporter
    from ..model_download import resolve_model_path
    from ..model_metadata import read_summary
    from ..model_package import load_package
    from ..networks.context import Vocabulary

    check_options(args)
    check_backend(args.backend)  # --backend openvino without OpenVINO: one line, before any work
    jobs = _inputs(Path(args.input), Path(args.output), args.format)
    if args.points and (len(jobs) > 1 or args.probabilities or args.overlap_policy == "probability"):
        raise InputError("--points refines ONE image and gives masks only: leave out a folder --input, "
                         "--probabilities and --overlap-policy probability")
    read = [(args.points, "the --points file"), (args.model, "a file of the model package")]
    named_tasks = requested_tasks(args.tasks, ()) if args.tasks is not None else None
    check_outputs(planned_outputs(jobs, args.probabilities, named_tasks), input_files(jobs, read))
    for src, dst in jobs:  # every input's header before the model is loaded and any case is run
        check_header(src)
        check_dicom_output(src, dst)
    report = make_reporter(args.progress)
    model_path = resolve_model_path(args.model, progress=args.progress != "none")
    summary = read_summary(model_path)  # model.json only: names are checked before the weights are read
    vocab = Vocabulary([t.name for t in summary.tasks], summary.modalities)
    tasks = requested_tasks(args.tasks, vocab.tasks)
    for t in tasks:
        vocab.task_id(t)
    vocab.modality_id(args.modality)
    thresholds = parse_thresholds(args.threshold, tasks)
    for _, dst in jobs:
        check_dicom_codes(dst, [t for t in summary.tasks if t.name in tasks])
    check_outputs(planned_outputs(jobs, args.probabilities, tasks),  # now with the model's task names
                  input_files(jobs, read + [(model_path, "a file of the model package")]))
    points = None
    if args.points:  # a bad --points file is refused before the weights are read
        from ..inference.interactive import read_points
        points = read_points(args.points, tasks)
    package = load_package(model_path)
    predictor = Predictor(package, device=args.device, precision=args.precision)
    backend = use_backend(predictor, args.backend, args.precision)
    overlap = args.overlap if args.overlap is not None else (0.25 if args.fast else 0.5)
    options = PredictOptions(overlap=overlap, sw_batch_size=args.sw_batch,
                             thresholds=thresholds,
                             largest_component=args.largest_component, roi=args.roi,
                             crop_foreground=not args.no_crop,
                             keep_probabilities=bool(args.probabilities) or args.overlap_policy == "probability")
    infos = {t.name: t for t in package.tasks}
    written = []
    for n, (src, dst) in enumerate(jobs):
        case_report = lambda stage, f, msg="", n=n: report(stage, (n + f) / len(jobs),
                                                           f"{src.name}: {msg}" if len(jobs) > 1 else msg)
        if points is None:
            result = predictor.predict(src, args.modality, tasks, options, case_report, domain=args.domain)
        else:
            result = _refined(predictor, src, args, tasks, options, points, case_report)
        if dst.name.lower().endswith(".seg.nrrd"):
            write_seg_nrrd(dst, result.reference, result.masks, infos)
        elif wants_dicom_seg(dst):
            write_dicom_seg(dst, src, result.masks, infos)
        else:
            write_labelmap(dst, result.masks, args.overlap_policy, result.probabilities)
        written.append(str(dst))
        if args.probabilities:
            folder = Path(args.probabilities) / (_stem(src) if len(jobs) > 1 else "")
            write_probabilities(folder, result.probabilities)
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        summary = {"input": str(src), "output": str(dst), "tasks": tasks, "device": result.device,
                   "precision": result.precision, "backend": backend.name if backend is not None else "torch",
                   "seconds": {k: round(v, 3) for k, v in result.timings.items()}}
        if args.progress == "json":
            report("written", (n + 1) / len(jobs), str(dst), result=summary)
        else:
            print(json.dumps(summary))
    return 0
