"""Where the core package, the resources and Slicer's Python are, in every layout we ship.

- Build tree and install tree (the extension built with CMake): one folder holds the module file
  ``UniversalSegmentation.py``, this library, the core package ``UniversalSeg/`` and
  ``Resources/``. Slicer puts that folder on ``sys.path`` when it loads the module, so the core
  imports as it is.
- Source checkout (``scripted_modules/`` added to Slicer's additional module paths): the core and
  ``Resources/`` are one folder up, beside ``scripted_modules/``; ``ensure_core_importable``
  appends that folder to ``sys.path``.

The module file is called ``UniversalSegmentation`` (titled "UniversalSeg" in Slicer) so that its
name, which Slicer registers in ``sys.modules``, never shadows the core package ``UniversalSeg``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional

LIB_DIR = Path(__file__).resolve().parent
MODULE_DIR = LIB_DIR.parent


def core_location() -> Optional[Path]:
    """The folder that holds ``UniversalSeg/`` (the core): beside the module, or one folder up."""
    for candidate in (MODULE_DIR, MODULE_DIR.parent):
        if (candidate / "UniversalSeg" / "__init__.py").is_file():
            return candidate
    return None


def ensure_core_importable() -> Path:
    """Make ``import UniversalSeg`` find the core package; returns the folder that holds it."""
    spec = importlib.util.find_spec("UniversalSeg")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    core = core_location()
    if core is None:
        raise ImportError("the UniversalSeg core package is neither beside the Slicer module nor one "
                          "folder up; reinstall the UniversalSeg extension")
    sys.path.append(str(core))
    importlib.invalidate_caches()
    return core


def resources_dir() -> Path:
    """``Resources/`` beside the module (build/install tree) or one folder up (source checkout)."""
    for candidate in (MODULE_DIR / "Resources", MODULE_DIR.parent / "Resources"):
        if (candidate / "UI").is_dir():
            return candidate
    raise FileNotFoundError(f"the module's Resources folder is missing next to {MODULE_DIR}")


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` beside the running interpreter when there is one."""
    here = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = here / name
        if candidate.exists():
            return str(candidate)
    return sys.executable
