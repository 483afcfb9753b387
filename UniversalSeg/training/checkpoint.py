"""Atomic, safe checkpoints: never a half-written file, never an unpickled object from outside.

``save_atomic`` writes to a temporary file in the same folder, fsyncs it and renames it over the
target (``os.replace`` is atomic on POSIX and Windows), so a run killed at any instant leaves
either the previous checkpoint or the new one. ``load_checkpoint`` uses
``torch.load(weights_only=True)``: tensors and plain containers only, no code execution, after
checking every member of the file against the CRC-32 that ``torch.save`` stored for it (torch
does not check them, so a damaged byte in a tensor would otherwise load as a wrong weight).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InputError
from ..file_modes import atomic_write

__all__ = ["CheckpointError", "check_run_folder", "load_checkpoint", "save_atomic"]


class CheckpointError(InputError):
    pass


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` all or nothing (``file_modes.atomic_write``; the temporary
    ends in ``.tmp``, which a resumed run clears from its checkpoints folder)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        # through a Python file object: a full disk then raises an OSError (given a path, torch's
        # C++ writer reports only "iostream error")
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
                f.flush()
            except (OSError, RuntimeError) as exc:
                # a full disk: torch.save's zip writer turns the OSError into a RuntimeError
                cause = exc if isinstance(exc, OSError) else exc.__context__
                if not isinstance(cause, OSError):
                    raise
                raise OSError(cause.errno, cause.strerror or "the checkpoint could not be written",
                              str(path)) from None

    atomic_write(path, write, suffix=".tmp")


# what a run writes before its first checkpoint: a folder with one of them is a started run
STARTED = ("train.log", "checkpoints", "tensorboard", "validation.json", "validation-history.jsonl")


def check_run_folder(out: str | Path, resume: bool) -> None:
    """``--out`` of ``train`` and ``finetune``, before anything is read: a file is refused, and so is
    ``--resume`` where no run was ever started (a mistyped name would silently start a new run);
    the message names the run folders that do exist beside it (and in it). A started run without a
    checkpoint yet (a requeued job stopped or killed early: a ``train.log``, ``checkpoints/``,
    ``tensorboard/`` or a validation table, or an empty folder) starts anew, with a warning."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder for the run")
    _check_writable(out)
    if not resume or (out / "checkpoints" / "last.pt").exists():
        return
    if out.is_dir() and (any((out / name).exists() for name in STARTED) or not any(out.iterdir())):
        return
    from ..model_metadata import printable
    runs = []
    for folder in (out.parent, out):
        if folder.is_dir():
            runs += sorted(str(p) for p in folder.iterdir()
                           if p != out and (p / "checkpoints" / "last.pt").is_file())
    import difflib
    close = difflib.get_close_matches(str(out), runs, n=1, cutoff=0.6)
    where = (f" (did you mean {printable(close[0])}?)" if close else "") + (
        f"; run folders there: {', '.join(printable(r) for r in runs[:10])}{' ...' if len(runs) > 10 else ''}"
        if runs else f"; {printable(out.parent)} holds no run folders (with checkpoints/last.pt)")
    state = "does not exist" if not out.exists() else "holds no run (no train.log, no checkpoints)"
    raise InputError(f"--resume: {printable(out)} {state}{where}; leave out --resume to start a new run")


def _check_writable(out: Path) -> None:
    """The run folder (and its checkpoints folder), or the nearest folder above it that exists,
    must take a new file: a read-only disk or folder is refused before the data are read, not at
    the first checkpoint. A real file is made and removed (permission bits do not bind root, and a
    read-only mount shows only on writing)."""
    import tempfile

    from ..model_metadata import printable
    folders = [f for f in (out, out / "checkpoints") if f.is_dir()]
    if not folders:
        folders = [next((p for p in out.parents if p.is_dir()), Path("."))]
    for folder in folders:
        try:
            handle, name = tempfile.mkstemp(dir=folder, prefix=".universalseg-write-check-")
            os.close(handle)
            os.unlink(name)
        except OSError as exc:
            where = "" if folder in (out, out / "checkpoints") else f" in {printable(folder)}"
            raise InputError(f"--out {printable(out)} cannot be {'written' if not where else 'created'}{where} "
                             f"({exc.strerror or exc}); choose a writable folder for the run") from None


def load_checkpoint(path: str | Path, kind: str = "UniversalSeg training checkpoint", remedy: str = "") -> dict:
    """The checkpoint at ``path``, weights-only; a truncated, damaged (a member that fails its
    CRC-32) or foreign file is a ``CheckpointError`` that names it, ending with ``remedy``."""
    path = Path(path)
    try:
        damage = _damage(path)
        if damage:
            raise ValueError(damage)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable {kind} (corrupt, truncated or not a "
                              f"weights-only torch file): {_first_line(exc)}{remedy}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "universalseg-checkpoint":
        raise CheckpointError(f"{path} is not a {kind} (foreign file); start a new run or point "
                              "--out to the run that wrote it")
    return ckpt


def _damage(path: Path) -> str | None:
    """What is wrong with the zip file that ``torch.save`` wrote: a file cut short (it ends before
    its zip directory) or the first member whose CRC-32 does not match; None where nothing is. A
    file that is no zip at all is left to ``torch.load`` to refuse, and one written with
    ``torch.serialization.set_crc32_options(False)`` (every CRC-32 stored as 0) is not checked."""
    import zipfile
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        return "the file is cut short (it ends before its zip directory)" if zipped else None
    with zipfile.ZipFile(path) as archive:
        if not any(member.CRC for member in archive.infolist() if member.file_size):
            return None
        failed = archive.testzip()
    return failed and f"{failed} fails its CRC-32 check (the file was changed after it was written)"


def _first_line(exc: Exception) -> str:
    """An empty file makes torch raise with an empty message: name the exception instead."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
