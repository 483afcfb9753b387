"""How many CPU threads torch uses, chosen from the cores other programs leave free.

torch's CPU wheels use GNU OpenMP, whose threads spin while they wait for each other. With as
many threads as cores and one core busy with another program, every parallel region waits for
the thread that shares the busy core: a training step took 3.5x as long here and the demo 2.9x
(Testing/Benchmarks/busy_core.py). One thread per FREE core avoids it; passive waiting
(``OMP_WAIT_POLICY=PASSIVE``) avoids it too but made the idle machine 1.3x slower.

``ThreadGovernor.update()`` is called between steps (training steps, sliding-window batches):
at most every ``interval`` seconds it reads how much CPU time the machine's other processes used
on our cores since the last call (Linux ``/proc/stat`` minus our own ``/proc/self/stat``) and
sets ``torch.set_num_threads`` to the cores they left (a core counts when at least 3/4 of it is
free: while our spinning threads share a core with another program, that program gets only about
half of it). The upper limit is torch's thread count when the governor starts (cores, or cores
per process under torchrun). A thread count the user chose (``OMP_NUM_THREADS``,
``UNIVERSALSEG_THREADS``) is left alone; so is any system without ``/proc``. A changing thread count
can change the last bits of CPU reductions: runs that must be bit-exactly reproducible (or resumed
bit-exactly) fix the count with one of those variables.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

__all__ = ["TICKS", "CpuSample", "ThreadGovernor", "free_cores", "our_cores", "sample", "user_chose_threads"]

log = logging.getLogger("UniversalSeg.threads")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    when: float
    busy: float   # seconds of CPU time spent on our cores by everybody
    ours: float   # seconds of CPU time spent by this process (all its threads)


def our_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def sample(cores: list[int]) -> Optional[CpuSample]:
    """CPU time used so far on ``cores`` (user, nice, system, irq, softirq, steal) and by us."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    wanted, busy = {f"cpu{c}" for c in cores}, 0
    for line in lines:
        name, *values = line.split()
        if name in wanted:
            v = [int(x) for x in values]
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    ours = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return CpuSample(time.monotonic(), busy / TICKS, ours / TICKS)


def free_cores(before: CpuSample, after: CpuSample, cores: int) -> float:
    """Cores the other processes left free between two samples."""
    elapsed = after.when - before.when
    if elapsed <= 0:
        return float(cores)
    others = max(0.0, (after.busy - before.busy) - (after.ours - before.ours)) / elapsed
    return max(0.0, cores - others)


def user_chose_threads() -> bool:
    return bool(os.environ.get("OMP_NUM_THREADS") or os.environ.get("UNIVERSALSEG_THREADS"))


class ThreadGovernor:
    """Keeps torch's intra-op thread count at the number of free cores (at most ``limit``)."""

    def __init__(self, limit: Optional[int] = None, interval: float = 2.0, enabled: Optional[bool] = None):
        import torch
        self.cores = our_cores()
        self.limit = max(1, min(limit or torch.get_num_threads(), len(self.cores)))
        self.interval = interval
        self.enabled = (not user_chose_threads()) if enabled is None else enabled
        if os.environ.get("UNIVERSALSEG_THREADS"):
            torch.set_num_threads(max(1, int(os.environ["UNIVERSALSEG_THREADS"])))
        self.last = sample(self.cores) if self.enabled else None
        self.enabled = self.enabled and self.last is not None
        if self.enabled:
            torch.set_num_threads(self.limit)

    def update(self) -> int:
        """Call between steps; returns the thread count in use."""
        import torch
        if not self.enabled or time.monotonic() - self.last.when < self.interval:
            return torch.get_num_threads()
        now = sample(self.cores)
        if now is None:
            return torch.get_num_threads()
        free = free_cores(self.last, now, len(self.cores))
        self.last = now
        threads = max(1, min(self.limit, int(free + 0.25)))  # a core at least 3/4 free counts
        if threads != torch.get_num_threads():
            log.info("CPU threads %d -> %d (other programs use %.1f of %d cores)", torch.get_num_threads(),
                     threads, len(self.cores) - free, len(self.cores))
            torch.set_num_threads(threads)
        return threads
