"""Writing files all or nothing, with the modes the user's umask gives, and refusing special files.

``atomic_write`` is the one way the package writes a file atomically: the content goes to a
private temporary in the same folder (``mkstemp``: 0600), is flushed to disk, gets the mode an
ordinary ``open()`` would give it under the user's umask and is renamed over the target
(``os.replace``: atomic on POSIX and Windows). A folder written the same way (``mkdtemp``: 0700)
gets its mode from ``apply_umask(..., directory=True)``. So results, checkpoints and model
folders are shared the way the user's other files are, and a run killed at any instant leaves
the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["PENDING", "apply_umask", "atomic_write", "current_umask", "special_kind"]


# temporaries being written right now (atomic writers add and discard them): what a Ctrl-C that
# cannot wait for the main thread removes before the process ends (``cli``)
PENDING: set[str] = set()


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def apply_umask(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` (and, for a folder, its files) the default mode under the current umask."""
    mask = current_umask()
    path = Path(path)
    if directory:
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            apply_umask(child, child.is_dir())
    else:
        os.chmod(path, 0o666 & ~mask)


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str | None = None) -> Path:
    """Write ``path`` all or nothing.

    Args:
        path: the file to write; its folder is created if need be.
        write: called with the temporary's path (an empty file, same folder as ``path``); it
            writes the whole content there.
        suffix: the temporary's suffix (default: ``path``'s), for writers that pick the format
            by the file name.

    Returns:
        ``path``, now holding what ``write`` wrote, with the umask's mode.

    The temporary is named ``.NAME.XXXXXXXX<suffix>`` (NAME cut to 40 characters, so a legal
    output name never makes an illegal temporary name); one of that pattern left by a killed
    run is removed first. The temporary is fsynced before the rename, so a delayed write error
    (a full disk) surfaces here and not after the rename. On any failure, Ctrl-C included, the
    temporary is removed (it is in ``PENDING`` while being written) and ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name[:40]}."
    suffix = path.suffix if suffix is None else suffix
    stale = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix))
    for old in path.parent.glob(".*"):  # left by a run that was killed while writing this file
        if stale.fullmatch(old.name):
            old.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    PENDING.add(tmp)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            try:
                os.fsync(f.fileno())
            except OSError as exc:  # a delayed write error: name the file the user asked for
                raise OSError(exc.errno, exc.strerror, str(path)) from None
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        PENDING.discard(tmp)
    return path


def special_kind(path: str | Path) -> str | None:
    """What a path that is neither a regular file nor a folder is ("a FIFO (named pipe)", "a
    device", "a socket"), None otherwise: reading one would block or never end, so every reader
    of user files refuses it by name first."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"
