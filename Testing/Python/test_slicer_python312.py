"""3D Slicer 5.10 and newer (our minimum) run Python 3.12. `.ci/setup` builds `.venv-py312` (torch,
the core, slicer-core) with pyenv's 3.12; here the module's self-test runs on that interpreter: the
core predicts in a 3.12 child process and the MRML side imports the result."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PYTHON = ROOT / ".venv-py312" / "bin" / "python"

SCRIPT = """
import sys
sys.path.append(sys.argv[1])
assert sys.version_info[:2] == (3, 12), sys.version
from types import SimpleNamespace
import slicer
from UniversalSegmentationLib.self_test import run_self_test
scene = slicer.vtkMRMLScene()  # as conftest.app_scene builds it
logics = {"segmentations": slicer.vtkSlicerSegmentationsModuleLogic(), "volumes": slicer.vtkSlicerVolumesLogic()}
for logic in logics.values():
    logic.SetMRMLScene(scene)
slicer.mrmlScene = scene
slicer.modules = SimpleNamespace(**{k: SimpleNamespace(logic=lambda v=v: v) for k, v in logics.items()})
run_self_test(scene, lambda m: print(m, flush=True), python=sys.executable)
print("self-test passed on", sys.version.split()[0])
"""


@pytest.mark.skipif(not PYTHON.exists(), reason="no .venv-py312: run .ci/setup where a python3.12 exists")
def test_core_and_module_self_test_run_on_slicers_python(tmp_path):
    out = subprocess.run([str(PYTHON), "-c", SCRIPT, str(ROOT / "scripted_modules")], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "self-test passed on 3.12" in out.stdout
    assert "Scene is invalid" not in out.stdout + out.stderr  # the result is read in a scratch scene
