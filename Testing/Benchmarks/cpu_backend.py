"""Which CPU runtime runs the network's windows fastest: torch, OpenVINO or ONNX Runtime?

    python Testing/Benchmarks/cpu_backend.py [--model Resources/Models/brain-synth-1.0.1.zip]
        [--threads 1 2] [--windows 2] [--rounds 3] [--batch 1] [--out Testing/Benchmarks/results/cpu_backend.json]

One window (the model's patch, 48^3 for the shipped brain model) from the middle of the MNI152 T1
(nilearn's copy, preprocessed as ``predict`` does; random values without nilearn) goes through
every side in the SAME run: torch (the network as the predictor runs it: fp32, channels-last),
OpenVINO (the exported graph of ``UniversalSeg.inference.cpu_backend``) and ONNX Runtime (the same
``torch.export`` program through ``torch.onnx.export``; needs ``onnx`` and ``onnxscript``), each
at the same thread counts (``--threads``, default 1 and all cores), and torch once more with the
predictor's thread governor (threads = the cores other programs leave free: on a busy machine
torch's spinning OpenMP threads slow it down more than the runtimes' thread pools). The sides
are interleaved: each round times ``--windows`` calls of every side, in an order that rotates
from round to round, so a change in the machine's load falls on all of them. Printed and
written: the median seconds per window of each side, the speed-up over torch at the same thread
count and best against best, the largest difference of the probabilities from torch's, the
export times, with the command, version, commit, CPU model, cores, threads and load average.
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
from UniversalSeg.networks import UniversalSegNet, prepare_input  # noqa: E402


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
    parser.add_argument("--windows", type=int, default=2, help="timed calls per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="windows per call")
    parser.add_argument("--out", default=str(ROOT / "Testing" / "Benchmarks" / "results" / "cpu_backend.json"))
    args = parser.parse_args(argv)
    cores = torch.get_num_threads()
    thread_counts = args.threads or sorted({1, cores})
    package = load_package(args.model)
    patch = tuple(package.patch_size)
    tasks = list(package.config.tasks)
    task_ids, modality_id = list(range(len(tasks))), package.config.modalities.index(args.modality)
    window, source = one_window(package, patch)
    window = window.expand(args.batch, -1, -1, -1, -1).contiguous()
    channels_last = prepare_input(window, torch.device("cpu"))  # torch's input as the predictor hands it

    net = package.build("cpu")
    ctx = net.context(tasks, args.modality, batch=args.batch)
    # the predictor's torch: threads = the free cores, sampled before every call (the other sides set threads)
    governor, governed_threads = ThreadGovernor(interval=0.0), []

    def torch_side(threads):
        def run(x):
            if threads is None:
                governed_threads.append(governor.update())
            else:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                return net(channels_last, ctx)["logits"]
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
            sides[f"torch@{n}"] = torch_side(n)
            backend = OpenVinoBackend(package.config, package.state_dict, patch, Path(folder) / "ov", threads=n)
            sides[f"openvino@{n}"] = backend.window_function(task_ids, modality_id, -1)  # from the cache
            versions["openvino"] = backend.ov.__version__
            if onnx_path is not None:
                sides[f"onnxruntime@{n}"] = onnxruntime_side(onnx_path, n)
        sides["torch@governor"] = torch_side(None)

        reference = torch.sigmoid(sides[f"torch@{cores}"](window))
        difference = {name: float((torch.sigmoid(side(window)) - reference).abs().max())
                      for name, side in sides.items() if not name.startswith("torch")}
        times = {name: [] for name in sides}
        names = list(sides)
        for r in range(args.rounds):  # interleaved, the order rotating from round to round
            for name in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(args.windows):
                    t = time.perf_counter()
                    sides[name](window)
                    times[name].append((time.perf_counter() - t) / args.batch)
                print(f"round {r + 1}/{args.rounds} {name}: {statistics.median(times[name][-args.windows:]):.3f} s "
                      "per window", flush=True)
        torch.set_num_threads(cores)

    median = {name: statistics.median(values) for name, values in times.items()}
    speedup = {}  # torch / runtime at the same thread count, and best against best
    for name in sides:
        runtime, _, n = name.partition("@")
        if runtime != "torch":
            speedup[name] = median[f"torch@{n}"] / median[name]
    best = {r: min((v, k) for k, v in median.items() if k.startswith(r + "@")) for r in ("torch", "openvino",
                                                                                         "onnxruntime")
            if any(k.startswith(r + "@") for k in median)}
    for runtime in ("openvino", "onnxruntime"):
        if runtime in best:
            speedup[f"best {runtime} / best torch"] = best["torch"][0] / best[runtime][0]
    command = "python Testing/Benchmarks/cpu_backend.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = provenance(command.strip(), cores,
                        model=Path(args.model).name, window=list(patch), batch=args.batch, input=source,
                        tasks=tasks, modality=args.modality, rounds=args.rounds, windows_per_round=args.windows,
                        thread_counts=thread_counts, versions=versions, setup_seconds=setup,
                        governor_threads_per_call=governed_threads,
                        seconds_per_window={k: round(v, 4) for k, v in median.items()},
                        all_seconds={k: [round(x, 4) for x in v] for k, v in times.items()},
                        speedup_over_torch={k: round(v, 2) for k, v in speedup.items()},
                        best={k: v[1] for k, v in best.items()},
                        max_probability_difference=difference)
    print(f"{record['cpu']}, {cores} cores, load {record.get('load_average', '')}: seconds per "
          f"{'x'.join(map(str, patch))} window (median of {args.rounds * args.windows}); speed-up over torch at "
          "the same threads")
    for name in sides:
        extra = "" if name.startswith("torch") else (f"  {speedup[name]:.2f}x, probabilities within "
                                                     f"{difference[name]:.1e} of torch's")
        print(f"  {name:16s} {median[name]:.3f} s{extra}")
    for name, value in speedup.items():
        if name.startswith("best"):
            print(f"  {name}: {value:.2f}x ({best[name.split()[1]][1]} against {best['torch'][1]})")
    if onnx_path is None:
        print(f"  onnxruntime: {versions['onnxruntime']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
