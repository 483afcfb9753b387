"""Model packages as the Slicer GUI sees them, WITHOUT importing the core package.

Why not import ``UniversalSeg`` here: Slicer loads this module's file ``UniversalSeg.py`` as the
Python module ``UniversalSeg``, which shadows the core package of the same name inside the Slicer
process. So the GUI process never imports the core: it reads ``model.json`` directly (a few
lines, mirroring ``UniversalSeg.model_package.package_metadata``) and runs everything else
(validation on import, prediction, training) in a child ``PythonSlicer`` process, where the core
package comes first on the path (see ``command.child_environment``).
"""
from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

from .command import child_environment, python_executable

SUPPORTED_FORMAT = 1


def cache_dir() -> Path:
    """Same rule as the core: $UNIVERSALSEG_CACHE, else $XDG_CACHE_HOME or ~/.cache, /universalseg."""
    root = os.environ.get("UNIVERSALSEG_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "universalseg"


def read_metadata(path: str | Path) -> dict:
    """tasks / modalities / spacing of a package folder or zip, from model.json only."""
    path = Path(path)
    try:
        if path.is_dir():
            meta = json.loads((path / "model.json").read_text())
        else:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("model.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable model package ({exc})") from None
    if meta.get("format") != "universalseg-model":
        raise ValueError(f"{path} is not a UniversalSeg model package")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > SUPPORTED_FORMAT:
        raise ValueError(f"{path} has a newer package format; update the UniversalSeg extension")
    return {"tasks": meta["tasks"], "modalities": list(meta["network"]["modalities"]),
            "spacing": meta["preprocessing"]["spacing"]}


def catalog_entries(resources: Path) -> list[dict]:
    path = resources / "Models.json"
    return json.loads(path.read_text()).get("models", []) if path.is_file() else []


def cached_packages() -> list[Path]:
    return sorted((cache_dir() / "models").glob("*.zip"))


def import_package(zip_path: str | Path, python: str | None = None) -> Path:
    """Validate and copy a model zip into the cache with the core CLI (a child process)."""
    proc = subprocess.run([python or python_executable(), "-m", "UniversalSeg", "models", "import",
                           str(zip_path)], capture_output=True, text=True, env=child_environment())
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "import failed")
    return Path(proc.stdout.strip().splitlines()[-1])
