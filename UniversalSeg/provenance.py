"""What every benchmark result records about where it came from: the command, the git commit
(with ``-dirty`` when the working tree had uncommitted changes), the package version, the CPU
model, the thread count and the date."""
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
            "cores": os.cpu_count(), "threads": threads, "date": datetime.date.today().isoformat(), **extra}
