"""What every bad-input test asserts: the exit code, one line naming the problem, no traceback,
and not a byte changed anywhere it should not be (files created, changed or removed)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def tree_state(*roots) -> dict:
    """Every file and folder under ``roots``: folders as None, files as (size, sha1), a FIFO or
    other special file by its mode (reading a FIFO would wait for a writer)."""
    state = {}
    for root in map(Path, roots):
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                state[str(path)] = None
            elif not path.is_file():
                state[str(path)] = ("special", path.stat().st_mode)
            else:
                state[str(path)] = (path.stat().st_size, hashlib.sha1(path.read_bytes()).hexdigest())
    return state


def assert_refused(code: int, err: str, expected_code: int, message: str, before: dict, after: dict) -> None:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == expected_code, (code, err[-2000:])
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (created or removed or changed), f"created {created}, removed {removed}, changed {changed}"


# A ``universalseg`` command that SIGKILLs itself at a set point (no signal handler, no finally
# block runs: as a job killed by its scheduler or the out-of-memory killer): "step:N" as training
# step N begins, "checkpoint:N" when half of step N's checkpoints/last.pt is in its temporary file,
# "none" never. Run as ``python -c KILLABLE POINT COMMAND ARGS...``.
KILLABLE = r'''
import io, os, signal, sys
import torch
from UniversalSeg.training import trainer
where, _, at = sys.argv[1].partition(":")

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "step":
    train_step = trainer.Trainer.train_step
    def killed_step(self, batch):
        if self.step == int(at):
            die()
        return train_step(self, batch)
    trainer.Trainer.train_step = killed_step
elif where == "checkpoint":
    save = torch.save
    def killed_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == int(at) and \
                os.path.basename(getattr(f, "name", "")).startswith(".last.pt."):
            whole = io.BytesIO()
            save(obj, whole, *args, **kwargs)
            f.write(whole.getvalue()[:len(whole.getvalue()) // 2])
            f.flush()
            die()
        return save(obj, f, *args, **kwargs)
    torch.save = killed_save
from UniversalSeg.cli import main
sys.exit(main(sys.argv[2:]))
'''


def run_killable(point: str, argv: list, **kwargs):
    """``argv`` (a ``universalseg`` command line, without the program) in a subprocess that
    SIGKILLs itself at ``point`` (see ``KILLABLE``); fixed threads, so that runs compare bit for bit."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "2", "UNIVERSALSEG_THREADS": "2", "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "-c", KILLABLE, point, *map(str, argv)], env=env,
                          capture_output=True, text=True, **kwargs)
