"""Files we write atomically start as private temporaries (``mkstemp``: 0600, ``mkdtemp``: 0700).
Before they are renamed into place they get the mode an ordinary ``open()`` or ``mkdir`` would
give them under the user's umask, so that results, checkpoints and model folders are shared the
way the user's other files are."""
from __future__ import annotations

import os
from pathlib import Path


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
