"""The panel's side of the correction loop (#13), against the real MRML core and a real child
process: add corrected cases (asking before replacing), fine-tune in the background, and the new
version registered next to its parent with its record (parent, mode, date, cases)."""
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
sys.path.append(str(Path(__file__).parents[2] / "scripted_modules"))  # after the core package

from test_slicer_logic import volume_from_case  # noqa: E402
from UniversalSegmentationLib.logic import UniversalSegLogic, wait  # noqa: E402
from UniversalSegmentationLib.models import available_models, model_summary  # noqa: E402
from UniversalSegmentationLib.panel_state import PanelState  # noqa: E402


def test_add_cases_then_finetune_registers_a_new_version(app_scene, trained_run, synth_collection, tmp_path):
    image = next((synth_collection.parent / "ct-hospital-a" / "imagesTr").glob("*.nii.gz"))
    volume, _ = volume_from_case(image, app_scene)
    seg = app_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "corrected")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    shape = slicer.util.arrayFromVolume(volume).shape
    for sid, name, box in (("liver", "Liver", np.s_[8:20, 8:20, 8:20]), ("s2", "Spleen", np.s_[20:26, 4:10, 8:14]),
                           ("s3", "My notes", np.s_[1:3, 1:3, 1:3])):
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        seg.GetSegmentation().AddEmptySegment(sid, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, volume)

    state = PanelState()
    state.select_model(state.load_models([trained_run["package"]], select=trained_run["package"]))
    folder = str(tmp_path / "MyCases")
    questions = []

    def ask(answer):
        return lambda text: questions.append(text) or answer

    status = state.add_case(volume, seg, folder, "CT", False, ask(True))
    assert status == "Saved 'abdomen-ct' (liver, spleen). Cases: liver 1, spleen 1"  # "My notes": no model task
    assert not questions  # a new name: nothing to ask
    status = state.add_case(volume, seg, folder, "CT", False, ask(False))
    assert "Saved 'abdomen-ct-2'" in status and "liver 2, spleen 2" in status and len(questions) == 1
    status = state.add_case(volume, seg, folder, "CT", False, ask(True))  # replace: still two cases
    assert "Saved 'abdomen-ct'" in status and "liver 2, spleen 2" in status and len(questions) == 2

    logic = UniversalSegLogic(python=sys.executable)
    with pytest.raises(ValueError, match="add cases to your training set first"):
        logic.start_finetune(state.finetune_spec(), str(tmp_path / "empty"), "adapt")
    job = wait(logic.start_finetune(state.finetune_spec(), folder, "adapt", extra=("--steps", "3")), timeout=600)
    assert job.succeeded, job.message
    assert "is in the model list" in job.message
    # registered next to the parent: the list names parent, mode and date; the card tells the record
    choices = available_models([trained_run["package"], str(job.model)])
    labels = [c.label for c in choices if c.spec == str(job.model)]
    assert len(labels) == 1 and "(adapt of model, 20" in labels[0]
    assert any(c.spec == trained_run["package"] for c in choices)  # one click back to the parent
    card = model_summary(next(c for c in choices if c.spec == str(job.model)))["card"]
    assert "Fine-tuned version" in card and "(adapt," in card and "cases: liver 2, spleen 2" in card
    assert "select it to go back" in card
