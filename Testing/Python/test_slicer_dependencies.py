"""Installing the core's dependencies inside Slicer: which packages, with which pins, asked once.

The rules come from Slicer's sources (SuperBuild: 5.10 builds SimpleITK 2.5.2 and ships numpy 2.0.2
and packaging 25.0; 5.12 ships SimpleITK 2.5.5 as a wheel; Base/Python/slicer/packaging.py exists
from 5.12 with ``pip_ensure(requirements, constraints=..., prompt_install=...)``) and SlicerPyTorch
(``PyTorchUtilsLogic().installTorch(askConfirmation, forceComputationBackend,
torchVersionRequirement, ...)``). The installers themselves need ``slicer.app``; here they are
recorded, the plan and the order of steps are real."""
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.usefixtures("slicer_lib")

REQS = [Requirement(r) for r in ("monai>=1.4,<2", "SimpleITK>=2.3", "numpy>=1.24", "safetensors>=0.4")]


def test_slicer_owned_packages_are_never_installed_only_checked_and_pinned():
    from UniversalSegmentationLib.dependencies import plan
    p = plan(REQS, {"torch": "2.5.1+cu121", "monai": None, "simpleitk": "2.5.2", "numpy": "2.0.2",
                    "safetensors": "0.4.5"})
    assert p.install == ["monai<2,>=1.4"] and not p.torch_needed and not p.problems
    # pip may pick only a MONAI that this torch satisfies, and never touches Slicer's own builds
    assert p.constraints == ["numpy==2.0.2", "simpleitk==2.5.2", "torch==2.5.1+cu121"]
    old = plan(REQS, {"torch": "2.5.1", "monai": "1.4.0", "simpleitk": "2.2.0", "numpy": None, "safetensors": "0.4.5"})
    assert old.install == [] and len(old.problems) == 2  # too old / missing: told, not replaced
    assert all("Slicer 5.10" in problem for problem in old.problems)


def test_versions_are_checked_not_only_presence():
    from UniversalSegmentationLib.dependencies import plan
    p = plan(REQS, {"torch": "2.1.0", "monai": "1.3.2", "simpleitk": "unknown", "numpy": "1.26.4",
                    "safetensors": "0.4.0"})
    assert p.torch_needed and p.install == ["monai<2,>=1.4"]
    assert "simpleitk" not in " ".join(p.constraints)  # present without metadata: kept as it is
    assert plan(REQS, {"torch": None, "monai": "2.0.0", "simpleitk": "2.5.5", "numpy": "2.4.6",
                       "safetensors": "0.5"}).install == ["monai<2,>=1.4"]


def test_one_question_torch_first_through_pytorchutils_then_pip_with_constraints(monkeypatch):
    from UniversalSegmentationLib import dependencies
    installed = {"torch": None, "monai": None, "simpleitk": "2.5.2", "numpy": "2.0.2", "safetensors": "0.4.5",
                 "slicerio": "1.4", "pynrrd": "1.0", "nibabel": "5.0", "pyyaml": "6.0", "tqdm": "4.66"}
    monkeypatch.setattr(dependencies, "installed_versions", lambda names: dict(installed))
    calls = []

    def confirm(message):
        calls.append(("confirm", message))
        return True

    def install_torch(requirement):
        calls.append(("torch", requirement))
        installed["torch"] = "2.5.1+cu121"
        return object()

    def pip_install(requirements, constraints):
        calls.append(("pip", list(requirements), Path(constraints).read_text().split()))
        installed["monai"] = "1.5.0"

    assert dependencies.ensure_dependencies(confirm, install_torch, pip_install) is True
    assert [c[0] for c in calls] == ["confirm", "torch", "pip"]
    assert "torch" in calls[0][1] and "monai" in calls[0][1]
    assert calls[1] == ("torch", ">=2.4")
    assert calls[2][1] == ["monai<2,>=1.4"]
    assert "torch==2.5.1+cu121" in calls[2][2] and "numpy==2.0.2" in calls[2][2]  # the torch just installed
    calls.clear()
    assert dependencies.ensure_dependencies(confirm, install_torch, pip_install) is True
    assert calls == []  # nothing missing: no question at all


def test_declined_or_impossible_installs_change_nothing(monkeypatch):
    from UniversalSegmentationLib import dependencies
    versions = {"torch": None, "monai": None, "simpleitk": "2.5.2", "numpy": "2.0.2"}
    monkeypatch.setattr(dependencies, "installed_versions", lambda names: {n.lower(): versions.get(n.lower(), "9")
                                                                             for n in names})
    never = lambda *a: pytest.fail("nothing may be installed")  # noqa: E731
    assert dependencies.ensure_dependencies(lambda m: False, never, never) is False
    versions["simpleitk"] = "2.1.0"
    with pytest.raises(RuntimeError, match="SimpleITK 2.1.0 does not satisfy"):
        dependencies.ensure_dependencies(lambda m: True, never, never)


def test_the_module_pins_every_requirement_and_names_its_imports():
    from UniversalSegmentationLib.dependencies import IMPORT_NAMES, load_requirements
    reqs = load_requirements()
    assert all(r.specifier for r in reqs)
    assert {r.name for r in reqs} | {"torch"} == set(IMPORT_NAMES)
    monai = next(r for r in reqs if r.name == "monai")
    assert not monai.specifier.contains("2.0.0")  # an upper bound: no surprise major version
