"""CPU threads follow the cores other programs leave free (Testing/Benchmarks/busy_core.py has the
speed-ups); the user's own choice is kept."""
import subprocess
import sys
import time

import pytest
import torch

from UniversalSeg import cpu_threads
from UniversalSeg.cpu_threads import CpuSample, ThreadGovernor, free_cores


def test_free_cores_counts_only_other_processes():
    before = CpuSample(when=0.0, busy=100.0, ours=40.0)
    # 2 s on 2 cores: everybody used 3.0 core-seconds, we used 2.0 -> others used 0.5 core
    after = CpuSample(when=2.0, busy=103.0, ours=42.0)
    assert free_cores(before, after, 2) == pytest.approx(1.5)
    assert free_cores(before, CpuSample(2.0, 102.0, 42.0), 2) == 2.0  # only us: every core free


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_governor_drops_a_thread_for_a_busy_core_and_takes_it_back(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("UNIVERSALSEG_THREADS", raising=False)
    samples = iter([CpuSample(0.0, 0.0, 0.0),
                    CpuSample(3.0, 9.0, 6.0),     # 3 s: we used 6 core-s, others 3 (one core) -> 1 thread
                    CpuSample(6.0, 13.5, 9.0),    # we 3, others 1.5 (half a core: it shares one with our
                                                  # spinning thread) -> still 1: a core must be 3/4 free
                    CpuSample(9.0, 19.5, 15.0)])  # only we ran -> 2 threads
    monkeypatch.setattr(cpu_threads, "sample", lambda cores: next(samples))
    monkeypatch.setattr(cpu_threads, "our_cores", lambda: [0, 1])
    torch.set_num_threads(2)
    governor = ThreadGovernor(interval=0.0)
    assert governor.enabled and torch.get_num_threads() == 2
    assert [governor.update() for _ in range(3)] == [1, 1, 2]
    assert torch.get_num_threads() == 2


def test_a_thread_count_the_user_chose_is_kept(monkeypatch, restore_threads):
    monkeypatch.setenv("UNIVERSALSEG_THREADS", "1")
    governor = ThreadGovernor(interval=0.0)
    assert not governor.enabled and torch.get_num_threads() == 1
    monkeypatch.delenv("UNIVERSALSEG_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not ThreadGovernor().enabled


def process_cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / cpu_threads.TICKS  # utime + stime


@pytest.mark.skipif(cpu_threads.sample([0]) is None, reason="no /proc (not Linux)")
def test_the_cpu_time_of_a_process_beside_us_is_counted_as_taken():
    """Against the real /proc, with a verdict that does not depend on how busy the machine is: a
    busy loop started beside us (on our cores) is waited for until it has used 0.5 s of CPU, however
    long that takes; every bit of that CPU time must show up as used by others, and the cores left
    free must be reduced by it. How much of a core the loop gets (about one on an idle machine) is
    load, and is measured by Testing/Benchmarks/busy_core.py, not asserted here."""
    cores = cpu_threads.our_cores()
    slack = 5 / cpu_threads.TICKS  # per-CPU and per-process accounting are sampled at clock ticks
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 300
        while process_cpu_seconds(hog.pid) < 0.05:  # it runs
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = cpu_threads.sample(cores)
        hog_before = process_cpu_seconds(hog.pid)  # read after `before`, and ...
        while process_cpu_seconds(hog.pid) - hog_before < 0.5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        hog_used = process_cpu_seconds(hog.pid) - hog_before
        after = cpu_threads.sample(cores)  # ... `after` read last: the loop's time lies inside
    finally:
        hog.kill()
        hog.wait()
    others = (after.busy - before.busy) - (after.ours - before.ours)
    assert others >= hog_used - slack, (others, hog_used)
    elapsed = after.when - before.when
    assert free_cores(before, after, len(cores)) <= len(cores) - (hog_used - slack) / elapsed
