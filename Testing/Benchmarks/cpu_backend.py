"""Which CPU runtime runs the network's windows fastest: torch, OpenVINO or ONNX Runtime?

    python Testing/Benchmarks/cpu_backend.py [--model Resources/Models/brain-synth-1.0.1.zip]
        [--threads 1 2] [--precisions fp32 bf16] [--batch 4] [--rounds 3] [--windows 1]
        [--out Testing/Benchmarks/results/cpu_backend.json]

Windows of the model's patch (48^3 for the shipped brain model; ``--batch`` per call, 4 as the
predictor passes them on a CPU) from the middle of the MNI152 T1 (nilearn's copy, preprocessed as
``predict`` does; random values without nilearn) go through every side in the SAME run: torch
(the network as the predictor runs it: channels-last, under autocast for bf16), OpenVINO (the
exported graph of ``UniversalSeg.inference.cpu_backend``, INFERENCE_PRECISION_HINT per precision)
and ONNX Runtime (the same ``torch.export`` program through ``torch.onnx.export``, fp32; needs
``onnx`` and ``onnxscript``), each at the same thread counts (``--threads``, default 1 and all
cores) and precisions (default fp32, and bf16 where the CPU has AMX or AVX512-bf16), and torch
once more as ``predict`` runs it by default: the automatic precision and the thread governor
(threads = the cores other programs leave free; on a busy machine torch's spinning OpenMP threads
slow it down more than the runtimes' thread pools). The sides are interleaved: each round times
``--windows`` calls of every side, in an order that rotates from round to round, so a change in
the machine's load falls on all of them. Printed and written: the median seconds per window of
each side, the speed-up over torch at the same precision and threads and best against best, the
largest difference of each side's probabilities from torch's fp32 ones, the export times, with
the command, version, commit, CPU model and flags, cores, threads and load average.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "Benchmarks"))
from provenance import provenance  # noqa: E402

from UniversalSeg.cpu_threads import ThreadGovernor  # noqa: E402
from UniversalSeg.inference.cpu_backend import FixedContextNet, OpenVinoBackend  # noqa: E402
from UniversalSeg.model_package import load_package  # noqa: E402
from UniversalSeg.networks import UniversalSegNet, autocast, prepare_input, resolve_precision  # noqa: E402
from UniversalSeg.networks.precision import cpu_supports_fast_bf16  # noqa: E402


def one_window(package, patch) -> tuple[torch.Tensor, str]:
    """The middle window of the preprocessed MNI152 T1, or random values without nilearn."""
    try:
        import importlib.util
        data = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
        t1 = data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        from UniversalSeg.inference import PredictOptions, Predictor
        volume = Predictor(package, device="cpu", precision="fp32").prepare(
            str(t1), "MR-T1", len(package.config.tasks), PredictOptions()).volume
        lo = [max(0, (s - p) // 2) for s, p in zip(volume.shape[1:], patch)]
        window = volume[:, lo[0]:lo[0] + patch[0], lo[1]:lo[1] + patch[1], lo[2]:lo[2] + patch[2]]
        if tuple(window.shape[1:]) == tuple(patch):
            return window[None].contiguous(), "the middle window of the MNI152 T1 (nilearn), preprocessed"
    except (ImportError, AttributeError, OSError):
        pass
    torch.manual_seed(0)
    return torch.randn(1, 1, *patch), "random normal values (nilearn absent)"


def onnxruntime_export(package, task_ids, modality_id, patch, folder):
    """ONNX Runtime's model of the same torch.export program: (path, version), or (None, the reason)."""
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch.onnx.export's exporter needs it)
    except ImportError as exc:
        return None, f"not measured: {exc.name} is not installed (pip install onnxruntime onnx onnxscript)"
    net = UniversalSegNet(package.config)
    net.load_state_dict(package.state_dict)
    fixed = FixedContextNet(net.eval(), task_ids, modality_id, -1, patch).eval()
    windows = torch.export.Dim("windows", min=1, max=4096)
    path = Path(folder) / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(fixed, (torch.zeros(2, 1, *patch),), dynamic_shapes={"window": {0: windows}})
        torch.onnx.export(program, f=str(path), dynamo=True, input_names=["window"], output_names=["logits"],
                          optimize=True, external_data=False)
    return path, ort.__version__


def onnxruntime_side(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"window": x.numpy()})[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "Resources" / "Models" / "brain-synth-1.0.1.zip"))
    parser.add_argument("--modality", default="MR-T1")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts every runtime runs at (default: 1 and all cores)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32, and bf16 where the CPU has fast bf16 (AMX or AVX512-bf16)")
    parser.add_argument("--windows", type=int, default=1, help="timed calls per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="windows per call (the predictor's CPU default: 4 of 48^3)")
    parser.add_argument("--out", default=str(ROOT / "Testing" / "Benchmarks" / "results" / "cpu_backend.json"))
    args = parser.parse_args(argv)
    cores = torch.get_num_threads()
    thread_counts = args.threads or sorted({1, cores})
    precisions = args.precisions or (["fp32", "bf16"] if cpu_supports_fast_bf16() else ["fp32"])
    package = load_package(args.model)
    patch = tuple(package.patch_size)
    tasks = list(package.config.tasks)
    task_ids, modality_id = list(range(len(tasks))), package.config.modalities.index(args.modality)
    window, source = one_window(package, patch)
    window = window.expand(args.batch, -1, -1, -1, -1).contiguous()
    channels_last = prepare_input(window, torch.device("cpu"))  # torch's input as the predictor hands it
    cpu = torch.device("cpu")

    net = package.build("cpu")
    ctx = net.context(tasks, args.modality, batch=args.batch)
    # the predictor's torch: threads = the free cores, sampled before every call (the other sides set threads)
    governor, governed_threads = ThreadGovernor(interval=0.0), []

    def torch_side(precision, threads):
        def run(x):
            if threads is None:
                governed_threads.append(governor.update())
            else:
                torch.set_num_threads(threads)
            with torch.inference_mode(), autocast(cpu, precision):
                return net(channels_last, ctx)["logits"].float()
        return run

    sides, versions, setup = {}, {"torch": torch.__version__}, {}
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        OpenVinoBackend(package.config, package.state_dict, patch, Path(folder) / "ov").window_function(
            task_ids, modality_id, -1)
        setup["openvino_export_and_compile_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        onnx_path, versions["onnxruntime"] = onnxruntime_export(package, task_ids, modality_id, patch, folder)
        setup["onnxruntime_export_s"] = round(time.perf_counter() - t, 1)
        for n in thread_counts:
            for precision in precisions:
                sides[f"torch {precision} @{n}"] = torch_side(precision, n)
                backend = OpenVinoBackend(package.config, package.state_dict, patch, Path(folder) / "ov", threads=n,
                                          precision_hint={"fp32": "f32", "bf16": "bf16"}[precision])
                sides[f"openvino {precision} @{n}"] = backend.window_function(task_ids, modality_id, -1)  # cached
                versions["openvino"] = backend.ov.__version__
            if onnx_path is not None:  # ONNX Runtime's CPU provider runs fp32
                sides[f"onnxruntime fp32 @{n}"] = onnxruntime_side(onnx_path, n)
        automatic = resolve_precision("auto", cpu)
        sides[f"torch {automatic} @governor"] = torch_side(automatic, None)  # what predict runs by default

        reference = torch.sigmoid(sides[f"torch fp32 @{cores}"](window))
        difference = {name: float((torch.sigmoid(side(window)) - reference).abs().max()) for name, side in sides.items()}
        times = {name: [] for name in sides}
        names = list(sides)
        for r in range(args.rounds):  # interleaved, the order rotating from round to round
            for name in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(args.windows):
                    t = time.perf_counter()
                    sides[name](window)
                    times[name].append((time.perf_counter() - t) / args.batch)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()), flush=True)
        torch.set_num_threads(cores)

    median = {name: statistics.median(values) for name, values in times.items()}
    speedup = {}  # torch / runtime at the same precision and thread count, and best against best
    for name in sides:
        runtime, precision, n = name.split()
        if runtime != "torch":
            speedup[name] = median[f"torch {precision} {n}"] / median[name]
    best = {}
    for runtime in ("torch", "openvino", "onnxruntime"):
        for precision in ("fp32", "bf16"):
            found = [(v, k) for k, v in median.items() if k.startswith(f"{runtime} {precision} ")]
            if found:
                best[f"{runtime} {precision}"] = min(found)
    fastest_torch = min(v for k, v in best.items() if k.startswith("torch"))
    for name, (value, side) in best.items():
        if not name.startswith("torch"):
            speedup[f"best {name} / best torch {name.split()[1]}"] = best[f"torch {name.split()[1]}"][0] / value
            speedup[f"best {name} / fastest torch"] = fastest_torch[0] / value
    command = "python Testing/Benchmarks/cpu_backend.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = provenance(command.strip(), cores,
                        model=Path(args.model).name, window=list(patch), batch=args.batch, input=source,
                        tasks=tasks, modality=args.modality, rounds=args.rounds, windows_per_round=args.windows,
                        thread_counts=thread_counts, precisions=precisions, versions=versions, setup_seconds=setup,
                        governor_threads_per_call=governed_threads,
                        seconds_per_window={k: round(v, 4) for k, v in median.items()},
                        all_seconds={k: [round(x, 4) for x in v] for k, v in times.items()},
                        speedup_over_torch={k: round(v, 3) for k, v in speedup.items()},
                        best={k: v[1] for k, v in best.items()},
                        max_probability_difference_from_torch_fp32={k: float(f"{v:.3g}") for k, v in difference.items()})
    print(f"{record['cpu']} ({', '.join(record.get('cpu_flags', []))}), {cores} cores, load "
          f"{record.get('load_average', '')}: seconds per {'x'.join(map(str, patch))} window, {args.batch} per call "
          f"(median of {args.rounds * args.windows}); speed-up over torch at the same precision and threads")
    for name in sides:
        extra = "" if name.startswith("torch") else f"  {speedup[name]:.2f}x"
        print(f"  {name:22s} {median[name]:.3f} s{extra}  (probabilities within {difference[name]:.1e} of torch fp32)")
    for name, value in speedup.items():
        if name.startswith("best"):
            print(f"  {name}: {value:.2f}x")
    if onnx_path is None:
        print(f"  onnxruntime: {versions['onnxruntime']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
