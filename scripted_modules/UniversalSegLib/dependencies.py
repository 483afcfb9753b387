"""Installing the core's dependencies inside 3D Slicer, on first use, after asking.

torch comes from the PyTorch extension (``PyTorchUtils`` picks the CUDA build that matches the
driver; declared in EXTENSION_DEPENDS); everything else from ``Resources/requirements.txt`` with
pinned lower bounds, through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or
``slicer.util.pip_install`` on older versions. Needs ``slicer.app``: not run by the tests here.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

IMPORT_NAMES = {"torch": "torch", "monai": "monai", "SimpleITK": "SimpleITK",
                "safetensors": "safetensors", "slicerio": "slicerio", "pyyaml": "yaml",
                "tqdm": "tqdm", "pynrrd": "nrrd", "nibabel": "nibabel", "numpy": "numpy"}


def requirements_file() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "Resources" / "requirements.txt",
                      here.parents[1] / "Resources" / "requirements.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("Resources/requirements.txt not found next to the module")


def missing_packages() -> list[str]:
    return [pkg for pkg, mod in IMPORT_NAMES.items() if importlib.util.find_spec(mod) is None]


def ensure_dependencies(confirm) -> bool:
    """Install what is missing after ``confirm(message)`` says yes; True when all is there."""
    import slicer
    missing = missing_packages()
    if not missing:
        return True
    if not confirm("UniversalSeg needs these Python packages: " + ", ".join(missing) +
                   ".\nInstall them now? (This can take several minutes; Slicer may need a restart.)"):
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("PyTorch installation failed")
        except ImportError:
            raise RuntimeError("install the 'PyTorch' extension from the Extensions Manager first "
                               "(it installs the torch build that matches your GPU)") from None
    path = requirements_file()
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(packaging.load_requirements(str(path)))
    else:
        lines = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
        slicer.util.pip_install(lines)
    return not missing_packages()
