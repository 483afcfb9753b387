"""Files we write atomically start as private temporaries (``mkstemp``: 0600, ``mkdtemp``: 0700).
Before they are renamed into place they get the mode an ordinary ``open()`` or ``mkdir`` would
give them under the user's umask, so that results, checkpoints and model folders are shared the
way the user's other files are."""
from __future__ import annotations

import os
from pathlib import Path


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
