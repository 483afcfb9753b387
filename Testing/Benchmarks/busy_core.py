"""How much slower training and the demo get when another program keeps one core busy.

Each configuration runs in a fresh process twice, on an idle machine and next to a busy loop
(``python -c "while True: pass"``), and the ratio busy/idle is printed. Configurations:
- fixed: as many torch threads as cores all the time (torch's default; ``UNIVERSALSEG_THREADS``)
- passive: the same, with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning)
- governor: UniversalSeg's default, ``cpu_threads.ThreadGovernor`` (threads = free cores)

    python Testing/Benchmarks/busy_core.py [--steps 40] [--demo-steps 100] [--out results/busy_core.json]

Part 1 times training steps of the small preset (the 40^3 demo's network; 32^3 patches, batch 2; median
of the steps after the first 10). Part 2 runs ``universalseg demo`` reduced (``--demo-steps``
training steps, 4 cases per institution) end to end, wall-clock. Ratios are measured in one run.
Part 0 checks what the governor reads: the share of a core that a busy loop beside us is measured to
take from the free cores (about 1.0 on an otherwise idle machine; less when other programs already
use the cores). It depends on the machine's load, so it is measured here, not asserted in the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = r'''
import json, sys, time
import torch
from UniversalSeg.cpu_threads import ThreadGovernor
from UniversalSeg.networks import ModelConfig, SegContext, UniversalSegNet, prepare_input, prepare_model
from UniversalSeg.training.losses import PartialLabelLoss
governor = ThreadGovernor()
torch.manual_seed(0)
cpu = torch.device("cpu")
tasks = ["liver", "spleen", "kidney", "liver-tumor"]
net = prepare_model(UniversalSegNet(ModelConfig.preset("small", tasks, ["CT"])), cpu).train()
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
x = prepare_input(torch.randn(2, 1, 32, 32, 32), cpu)
target = (torch.rand(2, 4, 32, 32, 32) > 0.9).float()
ctx = SegContext(torch.arange(4).repeat(2, 1), torch.zeros(2, dtype=torch.long), torch.full((2,), -1))
times, threads = [], []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    logits = net(x, ctx)["logits"]
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
    threads.append(governor.update())
late = sorted(times[10:])
print(json.dumps({"median_s": late[len(late) // 2], "threads_at_end": threads[-1]}))
'''

CONFIGS = {"fixed": {"UNIVERSALSEG_THREADS": str(len(os.sched_getaffinity(0)))},
           "passive": {"UNIVERSALSEG_THREADS": str(len(os.sched_getaffinity(0))), "OMP_WAIT_POLICY": "PASSIVE"},
           "governor": {}}


def clean_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "UNIVERSALSEG_THREADS",
                                                            "OMP_WAIT_POLICY")}
    return {**env, **extra}


def busy_loop():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_steps(extra: dict, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, str(steps)], capture_output=True, text=True,
                         env=clean_env(extra), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_demo(extra: dict, steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "UniversalSeg", "demo", "--out", folder, "--steps", str(steps),
                        "--cases", "4", "--no-progress"], env=clean_env(extra), check=True, capture_output=True)
        return time.perf_counter() - t


def both(measure):
    idle = measure()
    hog = busy_loop()
    try:
        busy = measure()
    finally:
        hog.kill()
        hog.wait()
    return idle, busy


def measured_hog(seconds: float = 1.5) -> float:
    """Free cores without a busy loop minus free cores with one, each over ``seconds``."""
    from UniversalSeg import cpu_threads
    cores = cpu_threads.our_cores()

    def free_during(busy: bool) -> float:
        hog = busy_loop() if busy else None
        time.sleep(0.3)  # the interpreter has started
        before = cpu_threads.sample(cores)
        try:
            time.sleep(seconds)
        finally:
            after = cpu_threads.sample(cores)
            if hog is not None:
                hog.kill()
                hog.wait()
        return cpu_threads.free_cores(before, after, len(cores))

    return free_during(False) - free_during(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--demo-steps", type=int, default=100, help="0 skips the demo part")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "busy_core.json"))
    args = parser.parse_args()
    results = {"cores": len(os.sched_getaffinity(0)), "steps": {}, "demo": {}}
    print(f"{len(os.sched_getaffinity(0))} cores; one more process keeps one core busy")
    results["hog_measured_cores"] = measured_hog()
    print(f"a busy loop beside us is measured as {results['hog_measured_cores']:.2f} of a core taken "
          "(about 1.0 on an idle machine)", flush=True)
    for name, extra in CONFIGS.items():
        idle, busy = both(lambda: run_steps(extra, args.steps))
        ratio = busy["median_s"] / idle["median_s"]
        results["steps"][name] = {"idle_s": idle["median_s"], "busy_s": busy["median_s"], "ratio": ratio,
                                  "threads_busy": busy["threads_at_end"], "threads_idle": idle["threads_at_end"]}
        print(f"training step  {name:9s} idle {idle['median_s'] * 1000:6.0f} ms   busy {busy['median_s'] * 1000:6.0f} ms"
              f"   busy/idle {ratio:4.2f}   threads idle/busy {idle['threads_at_end']}/{busy['threads_at_end']}",
              flush=True)
    if args.demo_steps:
        for name in ("fixed", "governor"):
            idle, busy = both(lambda: run_demo(CONFIGS[name], args.demo_steps))
            results["demo"][name] = {"idle_s": idle, "busy_s": busy, "ratio": busy / idle}
            print(f"demo ({args.demo_steps} steps) {name:9s} idle {idle:6.0f} s    busy {busy:6.0f} s    "
                  f"busy/idle {busy / idle:4.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
