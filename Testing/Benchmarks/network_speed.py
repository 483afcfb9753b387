"""Forward-pass speed of the universal network against the reference Hermes and MONAI baselines of
the same size, every network measured in the SAME run, repeats interleaved.

Networks (one window of SIZE^3, batch 1, inference mode, fp32 unless --bf16):
- ours: the ``small`` preset with 15 tasks as the predictor runs it (``prepare_model``:
  channels-last, convolutions on oneDNN at every size), and with PyTorch's own choice of
  convolution kernel (``slow_conv3d`` for small batch-1 layers);
- ours in plain NCDHW layout, and our backbone alone (no priors, no head): the cost of the layout
  and of the context priors;
- the reference Hermes U-Net (Gao et al., CVPR 2024) from its public code
  (github.com/yhygao/universal-medical-image-segmentation), ``Hermes_UNet(1, 16,
  scale=[[2,2,2]]*4, kernel_size=[[3,3,3]]*5, tn=72, mn=6)`` asked for the same 15 tasks, imported
  by path from a checkout given with --reference-repo (a work tree, or a bare git directory whose
  HEAD is extracted to a temporary folder); only its imports are shimmed (``einops`` is imported
  there but unused). Without --reference-repo the reference is skipped, and said so;
- MONAI DynUNet (nnU-Net-like, filters f x [1, 2, 4, 8, 10, 10]) and MONAI SegResNet
  (init_filters f; GroupNorm with 4 groups, so that f may be any multiple of 4), each f chosen
  for the parameter count nearest ours; the DynUNet also with its convolutions on oneDNN (the
  same routing as ours: a control for what the routing alone gives).

Each network is warmed up once (oneDNN primitive creation), then timed REPEATS times; the rounds
rotate the order so that a busy spell of the machine falls on every network alike. Medians and
minima (on a busy machine the minimum is the time least inflated by other programs), and ratios
to ours from each. Recorded: the command, commit, version, CPU model and flags,
threads, load average before and after, parameter counts.

    python Testing/Benchmarks/network_speed.py --reference-repo PATH [--size 128] [--repeats 5]
        [--also-size 96] [--json Testing/Benchmarks/results/network_speed.json]
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from UniversalSeg.provenance import load_average, provenance
from UniversalSeg.networks import ModelConfig, UniversalSegNet, autocast, prepare_model
from UniversalSeg.networks.onednn_convolution import use_onednn_convolutions

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_ARGS = "Hermes_UNet(1, 16, scale=[[2,2,2]]*4, kernel_size=[[3,3,3]]*5, tn=72, mn=6)"








def parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def reference_tree(path: Path, scratch: Path) -> Path:
    """A folder holding the reference code's ``model/dim3``: ``path`` itself when it is a work
    tree, else ``path``'s HEAD extracted (a bare git directory, as a mirror is)."""
    if (path / "model" / "dim3" / "hermes_unet.py").is_file():
        return path
    archive = subprocess.run(["git", "--git-dir", str(path), "archive", "HEAD", "model"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
    if not (scratch / "model" / "dim3" / "hermes_unet.py").is_file():
        raise SystemExit(f"{path}: no model/dim3/hermes_unet.py there; give a checkout of "
                         "yhygao/universal-medical-image-segmentation")
    return scratch


def load_reference(tree: Path):
    """The reference ``Hermes_UNet`` class, its modules loaded from ``tree/model/dim3`` as a package
    of their own (its ``__init__`` is not run: it also imports the MedFormer variant). Shim: an
    ``einops`` stand-in when einops is not installed (the reference imports ``rearrange`` but
    every use of it is commented out)."""
    try:
        import einops  # noqa: F401
    except ImportError:
        shim = types.ModuleType("einops")

        def rearrange(*args, **kwargs):
            raise NotImplementedError("einops shim: the reference network was expected not to call rearrange")
        shim.rearrange = rearrange
        sys.modules["einops"] = shim
    package = types.ModuleType("hermes_reference")
    package.__path__ = [str(tree / "model" / "dim3")]
    sys.modules["hermes_reference"] = package
    return importlib.import_module("hermes_reference.hermes_unet").Hermes_UNet


def use_onednn(net: torch.nn.Module) -> torch.nn.Module:
    use_onednn_convolutions(net)
    return net


def matched_width(build, target: int, widths) -> tuple[int, torch.nn.Module]:
    """The width among ``widths`` whose network's parameter count is nearest ``target``."""
    best = min(widths, key=lambda w: abs(parameters(build(w)) - target))
    return best, build(best)


def timed_rounds(runs: dict, repeats: int, precision: str) -> dict:
    """{name: [seconds per repeat]}: each network warmed up once, then the rounds interleaved."""
    cpu = torch.device("cpu")
    names = list(runs)
    times = {n: [] for n in names}
    with torch.inference_mode(), autocast(cpu, precision):
        for name in names:
            runs[name]()
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t)
    return times


def measure(size: int, tasks: int, repeats: int, precision: str, reference_cls) -> dict:
    torch.manual_seed(0)
    names = [f"task{i}" for i in range(tasks)]
    cfg = ModelConfig.preset("small", tasks=names, modalities=["CT", "MR-T1"])
    net = UniversalSegNet(cfg).eval()
    ctx = net.context(names, "CT")
    cl = torch.channels_last_3d
    net_cl = UniversalSegNet(cfg).eval()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=cl)  # PyTorch's own convolution kernels
    net_run = UniversalSegNet(cfg).eval()
    net_run.load_state_dict(net.state_dict())
    net_run = prepare_model(net_run, torch.device("cpu"))  # as the predictor runs it: oneDNN convolutions
    x = torch.randn(1, 1, size, size, size)
    x_cl = x.contiguous(memory_format=cl)
    ours_params = parameters(net)

    from monai.networks.nets import DynUNet, SegResNet

    def dynunet(f):
        return DynUNet(3, 1, tasks, kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2], upsample_kernel_size=[2] * 5,
                       filters=[f, 2 * f, 4 * f, 8 * f, 10 * f, 10 * f], norm_name="instance", res_block=False)

    def segresnet(f):
        return SegResNet(spatial_dims=3, init_filters=f, in_channels=1, out_channels=tasks,
                         norm=("GROUP", {"num_groups": 4}))

    dyn_f, dyn = matched_width(dynunet, ours_params, range(8, 41))
    seg_f, seg = matched_width(segresnet, ours_params, range(8, 65, 4))
    dyn, seg = dyn.eval(), seg.eval()
    dyn_run = use_onednn(copy.deepcopy(dyn))
    networks = {"ours (channels-last)": (net_run, lambda: net_run(x_cl, ctx)),
                "ours, PyTorch's convolution choice (channels-last)": (net_cl, lambda: net_cl(x_cl, ctx)),
                "ours (NCDHW)": (net, lambda: net(x, ctx)),
                "ours, backbone only (channels-last)": (net_cl.backbone, lambda: net_cl.backbone(x_cl, ctx)),
                f"MONAI DynUNet {dyn_f}..{10 * dyn_f}": (dyn, lambda: dyn(x)),
                f"MONAI DynUNet {dyn_f}..{10 * dyn_f}, oneDNN convolutions": (dyn_run, lambda: dyn_run(x)),
                f"MONAI SegResNet {seg_f}": (seg, lambda: seg(x))}
    if reference_cls is not None:
        ref = reference_cls(1, 16, scale=[[2, 2, 2]] * 4, kernel_size=[[3, 3, 3]] * 5, tn=72, mn=6).eval()
        tgt_idx, mod_idx = torch.arange(tasks)[None], torch.zeros(1, 1, dtype=torch.long)
        out, _ = ref(torch.randn(1, 1, 64, 64, 64), tgt_idx, mod_idx)
        assert out.shape[1] == tasks, out.shape  # one output per asked task, as ours
        networks["reference Hermes small"] = (ref, lambda: ref(x, tgt_idx, mod_idx))
    times = timed_rounds({k: fn for k, (_, fn) in networks.items()}, repeats, precision)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {"size": size, "precision": precision, "tasks": tasks,
            "parameters": {k: parameters(m) for k, (m, _) in networks.items()},
            "median_seconds": med, "min_seconds": best, "seconds": times,
            "ratios of medians (time / ours; > 1: ours faster)": ratios(med),
            "ratios of minima (time / ours; > 1: ours faster)": ratios(best)}


def ratios(seconds: dict) -> dict:
    ours = seconds["ours (channels-last)"]
    out = {f"{k} / ours": seconds[k] / ours for k in seconds if not k.startswith("ours")}
    out["ours NCDHW / ours channels-last"] = seconds["ours (NCDHW)"] / ours
    out["PyTorch's convolution choice / oneDNN convolutions"] = \
        seconds["ours, PyTorch's convolution choice (channels-last)"] / ours
    out["ours / backbone only (cost of the priors)"] = ours / seconds["ours, backbone only (channels-last)"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--also-size", type=int, nargs="*", default=[], help="further window sizes, measured alike")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=15)
    ap.add_argument("--bf16", action="store_true", help="also measure under bf16 autocast")
    ap.add_argument("--reference-repo", type=Path,
                    help="a checkout (or bare git directory) of yhygao/universal-medical-image-segmentation")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    reference_cls, scratch = None, tempfile.TemporaryDirectory()
    if args.reference_repo is None:
        print("reference Hermes SKIPPED: no --reference-repo given (a checkout of "
              "yhygao/universal-medical-image-segmentation); its ratio is not measured", flush=True)
    else:
        reference_cls = load_reference(reference_tree(args.reference_repo, Path(scratch.name)))
    results = {**provenance(" ".join(["python", "Testing/Benchmarks/network_speed.py"] + (argv or sys.argv[1:]))),
               "torch": torch.__version__, "load_average_before": load_average(),
               "reference": REFERENCE_ARGS if reference_cls else "skipped (no --reference-repo)", "runs": []}
    for size in [args.size] + list(args.also_size):
        if size % 32:
            print(f"{size}^3 skipped: every network here halves the size five times (a multiple of 32 is needed)",
                  flush=True)
            continue
        for precision in ("fp32", "bf16") if args.bf16 else ("fp32",):
            run = measure(size, args.tasks, args.repeats, precision, reference_cls)
            results["runs"].append(run)
            print(f"\n{size}^3, {precision}, {args.tasks} tasks, {args.repeats} repeats (interleaved): median, min")
            for name, s in run["median_seconds"].items():
                print(f"  {name:40s} {s:7.2f} s {run['min_seconds'][name]:7.2f} s  "
                      f"{run['parameters'][name] / 1e6:6.2f} M parameters")
            med, best = (run[f"ratios of {k} (time / ours; > 1: ours faster)"] for k in ("medians", "minima"))
            for name in med:
                print(f"  {name:52s} {med[name]:5.2f}x {best[name]:5.2f}x")
            if args.json:  # after every run: a later failure loses nothing measured
                Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    results["load_average_after"] = load_average()
    print(f"\n{results['cpu']} ({', '.join(results['cpu_flags'])}), {results['threads']} threads, "
          f"load {results['load_average_before']} -> {results['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
