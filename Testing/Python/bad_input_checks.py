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
