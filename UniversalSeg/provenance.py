"""What every benchmark result records about where it came from: the command, the git commit
(with ``-dirty`` when the working tree had uncommitted changes), the package version, the CPU
model (and the instruction-set flags that decide speed), the thread count, the load average and
the date."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (an editable install)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown"


SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of the instruction sets that decide CPU inference speed (AVX2, AVX-512, AMX) the CPU has."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [flag for flag in SPEED_FLAGS if flag in flags]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def git_commit() -> str:
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        return (commit + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(command: str, threads: int | None = None, **extra) -> dict:
    """``threads``: the torch threads each run used (default: what torch uses in this process)."""
    from UniversalSeg import __version__
    if threads is None:
        import torch
        threads = torch.get_num_threads()
    return {"command": command, "commit": git_commit(), "version": __version__, "cpu": cpu_model(),
            "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": threads,
            "load_average": load_average(), "date": datetime.date.today().isoformat(), **extra}
