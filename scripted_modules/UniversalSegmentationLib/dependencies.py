"""Installing the core's dependencies inside 3D Slicer, on first use, after asking once.

Rules (read in Slicer's and SlicerPyTorch's sources, held by Testing/Python/test_slicer_rules.py):
- Slicer's own numpy, SimpleITK and vtk are never installed over: Slicer's ``sitkUtils`` and
  its modules depend on the builds Slicer ships. They are only checked; if one is too old the
  user is told which Slicer version is needed. A constraints file pins them (and torch) to the
  installed versions, so that pip cannot replace them as a dependency of something else either.
- torch comes only from the PyTorch extension (``PyTorchUtils``), which picks the build that
  matches the GPU driver: ``installTorch(askConfirmation=False, torchVersionRequirement=...)``.
  MONAI is then resolved under the constraint ``torch==<installed>``, so pip picks a MONAI that
  this torch satisfies instead of replacing the driver-matched torch.
- Versions are checked with ``packaging`` specifiers, not mere presence.
- Slicer >= 5.12: ``import slicer.packaging`` then ``pip_ensure(..., constraints=...,
  prompt_install=False)``; older: ``slicer.util.pip_install(["-c", constraints, ...])``.
- One question for everything (torch and packages), not one dialog per step.

``plan`` is pure (tested); ``ensure_dependencies`` runs it inside Slicer with the app's installers.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .paths import resources_dir
from .i18n import tr as _

SLICER_OWNED = {"numpy", "simpleitk", "vtk"}  # canonical names; shipped and built by Slicer
TORCH_REQUIREMENT = ">=2.4"                    # the core's torch range (pyproject.toml)
IMPORT_NAMES = {"torch": "torch", "monai": "monai", "SimpleITK": "SimpleITK",
                "safetensors": "safetensors", "slicerio": "slicerio", "pyyaml": "yaml",
                "tqdm": "tqdm", "pynrrd": "nrrd", "nibabel": "nibabel", "numpy": "numpy"}


def requirements_file() -> Path:
    return resources_dir() / "requirements.txt"


def load_requirements(path: Optional[Path] = None) -> list[Requirement]:
    lines = (path or requirements_file()).read_text().splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith(("#", "-"))]


def installed_versions(names) -> dict[str, Optional[str]]:
    """Installed distribution versions by canonical name (None: not installed). A Slicer-owned
    package that is importable but has no metadata counts as present (version unknown)."""
    out = {}
    for name in names:
        key = canonicalize_name(name)
        try:
            out[key] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = IMPORT_NAMES.get(name, name)
            present = key in SLICER_OWNED and importlib.util.find_spec(module) is not None
            out[key] = "unknown" if present else None
    return out


@dataclass
class Plan:
    torch_needed: bool = False
    install: list = field(default_factory=list)       # requirement strings for pip
    constraints: list = field(default_factory=list)   # "name==version" pins for pip -c
    problems: list = field(default_factory=list)      # what no install may fix

    @property
    def nothing_to_do(self) -> bool:
        return not (self.torch_needed or self.install or self.problems)

    def question(self) -> str:
        what = ([_("torch (from the PyTorch extension, the build for your GPU)")] if self.torch_needed else [])
        return _("UniversalSeg needs these Python packages: {packages}.\nInstall them now? This can take several "
                 "minutes; Slicer may ask to restart.").format(packages=", ".join(what + self.install))


def plan(requirements: list[Requirement], installed: dict[str, Optional[str]]) -> Plan:
    p = Plan()
    torch = installed.get("torch")
    if torch is None or not Requirement("torch" + TORCH_REQUIREMENT).specifier.contains(torch, prereleases=True):
        p.torch_needed = True
    for req in requirements:
        key = canonicalize_name(req.name)
        version = installed.get(key)
        satisfied = version is not None and (version == "unknown" or req.specifier.contains(version, prereleases=True))
        if key in SLICER_OWNED:
            if not satisfied:
                p.problems.append(_("{package} {version} does not satisfy {requirement}: it comes with 3D Slicer "
                                    "and is not replaced; use Slicer 5.10 or newer").format(
                    package=req.name, version=version or _("missing"), requirement=req))
        elif not satisfied:
            p.install.append(str(req))
    pins = {k: v for k, v in installed.items() if (k in SLICER_OWNED or k == "torch") and v not in (None, "unknown")}
    p.constraints = [f"{k}=={v}" for k, v in sorted(pins.items())]
    return p


def current_plan() -> Plan:
    requirements = load_requirements()
    return plan(requirements, installed_versions(["torch"] + [r.name for r in requirements]))


def ensure_dependencies(confirm: Callable[[str], bool], install_torch: Callable[[str], object],
                        pip_install: Callable[[list, Path], None]) -> bool:
    """Ask once, then install torch (``install_torch(requirement)``) and the packages
    (``pip_install(requirements, constraints_file)``); True when everything is there."""
    p = current_plan()
    if p.problems:
        raise RuntimeError("; ".join(p.problems))
    if p.nothing_to_do:
        return True
    if not confirm(p.question()):
        return False
    if p.torch_needed:
        if install_torch(TORCH_REQUIREMENT) is None:
            raise RuntimeError(_("PyTorch was not installed (see the PyTorch Utils module)"))
        p = current_plan()  # the constraints now pin the torch that was just installed
    if p.install:
        with tempfile.TemporaryDirectory(prefix="UniversalSeg-pip-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text("\n".join(p.constraints) + "\n")
            pip_install(p.install, constraints)
    left = current_plan()
    return not (left.torch_needed or left.install)


def slicer_installers():
    """The application's installers, per Slicer version (needs ``slicer.app``)."""
    import slicer

    def install_torch(requirement):
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_("install the 'PyTorch' extension from the Extensions Manager first "
                                 "(it installs the torch build that matches your GPU)")) from None
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=requirement)

    def pip_install(requirements, constraints):
        try:
            import slicer.packaging as packaging  # Slicer >= 5.12
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(requirements, constraints=str(constraints), prompt_install=False,
                                 requester="UniversalSeg")
        else:
            slicer.util.pip_install(["-c", str(constraints)] + list(requirements))

    return install_torch, pip_install


def ensure_in_slicer() -> bool:
    """The panel's entry: ask, install, show any failure in a dialog (needs ``slicer.app``)."""
    import slicer
    with slicer.util.tryWithErrorDisplay(_("Installing UniversalSeg's dependencies failed."), waitCursor=True):
        return ensure_dependencies(slicer.util.confirmOkCancelDisplay, *slicer_installers())
