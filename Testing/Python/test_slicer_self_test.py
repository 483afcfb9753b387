"""The module's ScriptedLoadableModuleTest body (UniversalSegmentationLib.self_test), run against the
real MRML core here so that the self-test a Slicer user runs is known to pass."""
import sys

import pytest

pytest.importorskip("slicer")


def test_module_self_test_passes_on_slicer_core(app_scene, slicer_lib):
    from UniversalSegmentationLib.self_test import run_self_test
    said = []
    run_self_test(app_scene, said.append, python=sys.executable)
    assert len(said) == 7 and said[-1].startswith("Refine with clicks") and said[-2].startswith("Undo last run")
    assert app_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0  # the click lists go too
