"""The Slicer module's own widget code (scripted_modules/UniversalSegmentation.py), run headless as
a user drives it: the real .ui on PySide6, the real MRML scene and logics (slicer-core), real child
processes, and the application layer of ``slicer_app_standins`` (PythonQt, CTK/qMRML widgets,
slicer.app, ScriptedLoadableModule, parameterNodeWrapper). Each scenario is a user's path through
the panel's signals; the asserts are what the user would see."""
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("PySide6")
import slicer_app_standins as standins  # noqa: E402
from test_refine_panel import add_place_singletons  # noqa: E402
from test_slicer_logic import volume_from_case  # noqa: E402

ROOT = Path(__file__).parents[2]
MODULE_FILE = ROOT / "scripted_modules" / "UniversalSegmentation.py"
VIEW_TRANSFORM = 2  # vtkMRMLInteractionNode::ViewTransform (Libs/MRML/Core/vtkMRMLInteractionNode.h)


class Panel:
    """The module as the application holds it: the widget in its module panel, entered or not."""

    def __init__(self, layer, module, scene):
        self.layer, self.module, self.scene = layer, module, scene
        parent = standins.wrap(standins.qMRMLWidget())
        parent.setLayout(standins.QtWidgets.QVBoxLayout())
        parent.setMRMLScene(scene)
        self.widget = module.UniversalSegmentationWidget(parent)
        self.widget.setup()
        self.ui = self.widget.ui
        self.exceptions = []

    def enter(self):  # qSlicerAbstractModuleWidget: isEntered is true while enter() runs and after
        self.widget.parent.isEntered = True
        self.widget.enter()

    def exit(self):
        self.widget.exit()
        self.widget.parent.isEntered = False

    def events(self, seconds=0.0):
        end = time.time() + seconds
        while True:
            self.layer.app.processEvents()
            if time.time() >= end:
                return
            time.sleep(0.02)

    def wait(self, until, timeout=300.0, what="the condition"):
        """Let the application run (its QTimer polls the jobs) until ``until()`` is true."""
        end = time.time() + timeout
        while time.time() < end:
            self.layer.app.processEvents()
            if until():
                return
            time.sleep(0.05)
        jobs = {s: (j.stage, j.message) for s, j in self.widget.jobs.jobs.items() if j is not None}
        pytest.fail(f"timed out waiting for {what}; status {self.ui.statusLabel.text!r}, jobs {jobs}, "
                    f"errors shown {self.layer.errors}")

    def tasks(self):
        items = [self.ui.taskListWidget.item(i) for i in range(self.ui.taskListWidget.count)]
        return [(i.text(), i.checkState() == standins.QtCore.Qt.Checked) for i in items]

    def segments(self, node):
        seg = node.GetSegmentation()
        return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


@pytest.fixture
def panel(app_scene, slicer_lib, monkeypatch, tmp_path):
    layer = standins.install(str(tmp_path / "Slicer.ini"), monkeypatch)
    add_place_singletons(app_scene)
    monkeypatch.setattr(sys, "excepthook", lambda *info: caught.append(info[1]))
    caught = []
    spec = importlib.util.spec_from_file_location("UniversalSegmentation", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    p = Panel(layer, module, app_scene)
    p.exceptions = caught  # exceptions raised in slots (PythonQt prints them in the Python console)
    yield p
    p.widget.cleanup()
    unshown = [e for e in caught if not any(str(e) in shown for shown in layer.errors)]
    assert not unshown, f"exceptions in the panel's slots that no error dialog showed: {unshown!r}"


def add_model_folder(panel, folder):
    panel.layer.file_answers.append(str(folder))
    panel.ui.modelFolderButton.click()


def load_case(panel, synth_collection, site="ct-hospital-a", index=0):
    image = sorted((synth_collection.parent / site / "imagesTr").glob("*.nii.gz"))[index]
    volume, _ = volume_from_case(image, panel.scene)
    return volume


def apply_and_wait(panel):
    panel.ui.applyButton.click()
    assert panel.ui.applyButton.text == "Cancel"
    panel.wait(lambda: panel.widget.jobs["run"] is None, what="the segmentation run")


def test_apply_segments_the_volume_with_named_coloured_segments(panel, painting_click_model, synth_collection):
    volume = load_case(panel, synth_collection)
    panel.enter()
    assert panel.ui.inputVolumeSelector.currentNode() is volume  # the first volume, preselected
    add_model_folder(panel, painting_click_model)
    assert panel.ui.modelSelector.currentText.startswith("painting")
    assert panel.ui.modalitySelector.currentText == "CT"  # guessed from the volume's name
    names = [name for name, checked in panel.tasks()]
    assert names and all(checked for _, checked in panel.tasks())
    panel.ui.taskFilterLineEdit.text = "liv"
    assert [n for n, _ in panel.tasks()] == [n for n in names if "liv" in n.lower()]
    panel.ui.selectNoTasksButton.click()  # only the visible ones
    panel.ui.taskFilterLineEdit.text = ""
    unchecked = {n for n, c in panel.tasks() if not c}
    assert unchecked == {n for n in names if "liv" in n.lower()}
    assert panel.ui.applyButton.enabled
    apply_and_wait(panel)
    assert panel.layer.errors == []
    node = panel.widget._parameterNode.outputSegmentation
    assert node is not None and panel.ui.outputSegmentationSelector.currentNode() is node
    assert sorted(panel.segments(node)) == sorted(set(names) - unchecked)
    assert panel.ui.statusLabel.text.startswith("done in")
    assert panel.ui.undoButton.enabled
    display = node.GetDisplayNode()
    assert display is not None and display.GetVisibility()
    seg = node.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):  # each segment in its structure's colour (the list's swatch)
        segment = seg.GetNthSegment(i)
        item = next(panel.ui.taskListWidget.item(k) for k in range(panel.ui.taskListWidget.count)
                    if panel.ui.taskListWidget.item(k).text() == segment.GetName())
        colour = item.icon().pixmap(12, 12).toImage().pixelColor(6, 6)
        assert np.allclose(segment.GetColor(), (colour.redF(), colour.greenF(), colour.blueF()), atol=1 / 255)
    assert panel.layer.layers[-1]["background"] is volume
    assert panel.ui.show3DButton.enabled and not panel.ui.show3DButton.checked
    panel.ui.show3DButton.click()  # Show 3D: the surfaces, as Segment Editor's button makes them
    assert node.GetSegmentation().ContainsRepresentation("Closed surface")
    panel.ui.show3DButton.click()
    assert not node.GetSegmentation().ContainsRepresentation("Closed surface")


def start_model(panel, model, synth_collection):
    volume = load_case(panel, synth_collection)
    panel.enter()
    add_model_folder(panel, model)
    return volume


def test_a_run_that_ends_while_the_user_is_in_another_module_is_still_the_output(
        panel, painting_click_model, synth_collection):
    start_model(panel, painting_click_model, synth_collection)
    panel.ui.applyButton.click()
    panel.exit()  # the user opens another module; the run goes on
    panel.wait(lambda: panel.widget.jobs["run"] is None, what="the run")
    node = panel.widget.logic.getParameterNode().outputSegmentation
    assert node is not None and panel.segments(node), "the finished run was not set as the output"
    panel.enter()
    assert panel.ui.outputSegmentationSelector.currentNode() is node
    assert panel.ui.undoButton.enabled


def start_refining(panel, index):
    panel.ui.refineCollapsibleButton.collapsed = False  # the user opens the section: the list fills
    assert panel.ui.refineSegmentSelector.count >= 2
    panel.ui.refineSegmentSelector.currentIndex = index
    chosen = panel.ui.refineSegmentSelector.currentData
    panel.ui.refineButton.click()
    refinement = panel.widget.logic.core.refinement
    assert refinement is not None
    panel.wait(lambda: refinement.ready and not refinement.pending, what="the refinement worker")
    return chosen, refinement


def test_refine_the_chosen_segment_with_clicks_then_accept_or_discard(panel, painting_click_model, synth_collection):
    volume = start_model(panel, painting_click_model, synth_collection)
    apply_and_wait(panel)
    node = panel.widget._parameterNode.outputSegmentation
    interaction = panel.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")

    chosen, refinement = start_refining(panel, 1)
    assert refinement.segment_id == chosen, "Start refining refined another segment than the one chosen"
    assert panel.ui.refineButton.text.startswith("Accept") and panel.ui.positiveClickButton.enabled
    assert panel.ui.refineSegmentSelector.currentData == chosen
    before = slicer.util.arrayFromSegmentBinaryLabelmap(node, chosen, volume).copy()
    others = {sid: slicer.util.arrayFromSegmentBinaryLabelmap(node, sid, volume).copy()
              for sid in node.GetSegmentation().GetSegmentIDs() if sid != chosen}

    panel.ui.positiveClickButton.click()  # Slicer's place mode on the positive list
    assert interaction.GetCurrentInteractionMode() == slicer.vtkMRMLInteractionNode.Place
    panel.events(0.5)  # the panel's timer shows which list is being placed
    assert panel.ui.positiveClickButton.checked and not panel.ui.negativeClickButton.checked
    panel.ui.negativeClickButton.click()
    panel.events(0.5)
    assert panel.ui.negativeClickButton.checked and not panel.ui.positiveClickButton.checked
    panel.ui.negativeClickButton.click()  # pressed again: back to view-transform mode
    panel.events(0.5)
    assert interaction.GetCurrentInteractionMode() == VIEW_TRANSFORM and not panel.ui.negativeClickButton.checked
    panel.ui.positiveClickButton.click()
    ras = [0.0, 0.0, 0.0]
    volume.GetOrigin()  # a point inside the volume: its centre
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    ras = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
    refinement.points[True].AddControlPointWorld(*ras)  # what a click in a view does in place mode
    panel.wait(lambda: len(refinement.clicks) == 1 and not refinement.pending, what="the click")
    after = slicer.util.arrayFromSegmentBinaryLabelmap(node, chosen, volume)
    assert (after != before).any(), "the click changed nothing"
    for sid, array in others.items():
        assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, sid, volume), array)
    assert "click" in panel.ui.refineStatusLabel.text

    panel.ui.undoClickButton.click()
    panel.wait(lambda: not refinement.pending, what="the undo")
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, chosen, volume), before)
    assert refinement.points[True].GetNumberOfControlPoints() == 0

    refinement.points[True].AddControlPointWorld(*ras)
    panel.wait(lambda: len(refinement.clicks) == 1 and not refinement.pending, what="the second click")
    panel.ui.refineButton.click()  # Accept
    assert panel.widget.logic.core.refinement is None and panel.ui.refineStatusLabel.text.startswith("Kept")
    assert interaction.GetCurrentInteractionMode() == VIEW_TRANSFORM, "place mode outlived Accept"
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0
    kept = slicer.util.arrayFromSegmentBinaryLabelmap(node, chosen, volume).copy()
    assert (kept != before).any()

    chosen2, refinement = start_refining(panel, 0)
    panel.ui.negativeClickButton.click()
    refinement.points[False].AddControlPointWorld(*ras)
    panel.wait(lambda: len(refinement.clicks) == 1 and not refinement.pending, what="the negative click")
    start = refinement.before.copy()
    panel.ui.discardRefineButton.click()
    assert panel.ui.refineStatusLabel.text.startswith("Put the segment back")
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, chosen2, volume), start)
    assert interaction.GetCurrentInteractionMode() == VIEW_TRANSFORM, "place mode outlived Discard"
    assert not panel.ui.positiveClickButton.enabled


def test_an_error_showing_one_job_leaves_the_other_jobs_running(panel, painting_click_model, synth_collection,
                                                                 tmp_path):
    volume = start_model(panel, painting_click_model, synth_collection)
    apply_and_wait(panel)
    node = panel.widget._parameterNode.outputSegmentation
    panel.ui.catalogPathLineEdit.currentPath = str(synth_collection)
    panel.ui.trainOutputPathLineEdit.currentPath = str(tmp_path / "run")
    panel.ui.trainButton.click()  # hours of training start
    assert panel.ui.trainButton.text == "Stop training"
    # the user draws a segment of their own and names it like one of the model's structures
    first = node.GetSegmentation().GetNthSegment(0).GetName()
    node.GetSegmentation().AddEmptySegment("my-own", first)
    mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    mask[1:4, 1:4, 1:4] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, "my-own", volume)
    apply_and_wait(panel)  # a second run into the same segmentation
    assert panel.widget.jobs["train"] is not None, "the training was cancelled by an error in another job"
    assert panel.ui.trainButton.text == "Stop training"
    panel.ui.refineCollapsibleButton.collapsed = False
    assert panel.layer.errors == []
    panel.ui.trainButton.click()
    assert panel.widget.jobs["train"] is None and "stopped" in panel.ui.trainStatusLabel.text


def test_undo_last_run_keeps_what_the_user_added_since(panel, painting_click_model, synth_collection):
    start_model(panel, painting_click_model, synth_collection)
    apply_and_wait(panel)
    node = panel.widget._parameterNode.outputSegmentation
    node.GetSegmentation().AddEmptySegment("notes", "My notes")
    panel.ui.undoButton.click()
    assert node.GetScene() is not None, "Undo deleted the segmentation with the user's own segment"
    assert panel.segments(node) == ["My notes"]
    assert not panel.ui.undoButton.enabled
    # a run into a new segmentation that the user did not touch: undo removes the node
    panel.ui.outputSegmentationSelector.setCurrentNode(None)
    apply_and_wait(panel)
    created = panel.widget._parameterNode.outputSegmentation
    assert created is not node
    panel.ui.undoButton.click()
    assert created.GetScene() is None and node.GetScene() is not None


def test_reentering_during_the_device_probe_and_a_failed_probe_is_asked_again(panel, tmp_path):
    failing = tmp_path / "python-without-torch"
    failing.write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 1\n")
    failing.chmod(0o755)
    core = panel.widget.logic.core
    core.python = str(failing)
    assert panel.ui.deviceInfoLabel.text == "detecting..."
    panel.enter()
    panel.exit()
    panel.enter()  # while the probe runs
    panel.wait(lambda: panel.widget.jobs["probe"] is None, what="the device probe")
    assert "could not detect" in panel.ui.deviceInfoLabel.text
    core.python = None  # torch is installed now (the dependency step ran)
    panel.exit()
    panel.enter()
    assert panel.widget.jobs["probe"] is not None, "a failed device probe is never asked again"
    panel.wait(lambda: panel.widget.jobs["probe"] is None, what="the second device probe")
    assert "CPU" in panel.ui.deviceInfoLabel.text or "GPU" in panel.ui.deviceInfoLabel.text
    panel.exit()
    panel.enter()
    assert panel.widget.jobs["probe"] is None  # known now: not asked again


def test_closing_the_scene_mid_run_and_mid_refinement(panel, painting_click_model, synth_collection):
    start_model(panel, painting_click_model, synth_collection)
    apply_and_wait(panel)
    chosen, refinement = start_refining(panel, 0)
    panel.ui.positiveClickButton.click()
    panel.ui.applyButton.click()
    assert panel.widget.jobs["run"] is not None
    panel.scene.Clear(0)  # File > Close scene
    interaction = panel.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    assert interaction.GetCurrentInteractionMode() == VIEW_TRANSFORM, "place mode outlived the scene"
    assert panel.widget.jobs["run"] is None and panel.widget.logic.core.refinement is None
    assert "scene was closed" in panel.ui.statusLabel.text and panel.ui.applyButton.text == "Apply"
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0
    assert panel.widget._parameterNode is not None  # entered: a new parameter node at once
    panel.events(0.5)
    assert panel.ui.applyButton.text == "Apply" and not panel.ui.applyButton.enabled  # no volume now
    assert panel.layer.errors == []


def test_add_the_corrected_case_then_fine_tune_and_stop(panel, painting_click_model, synth_collection, tmp_path):
    start_model(panel, painting_click_model, synth_collection)
    apply_and_wait(panel)
    node = panel.widget._parameterNode.outputSegmentation
    volume = panel.widget._parameterNode.inputVolume
    for k, sid in enumerate(node.GetSegmentation().GetSegmentIDs()):  # the user corrects every segment
        mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
        mask[2 + 6 * k:6 + 6 * k, 4:10, 4:10] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, sid, volume)
    panel.ui.correctionCollapsibleButton.collapsed = False
    panel.ui.trainingSetPathLineEdit.currentPath = str(tmp_path / "MyCases")
    panel.ui.addCaseButton.click()
    assert panel.ui.finetuneStatusLabel.text.startswith("Saved '"), panel.layer.errors
    assert (tmp_path / "MyCases" / "catalog.yaml").is_file()
    panel.ui.finetuneButton.click()
    assert panel.widget.jobs["finetune"] is not None and panel.ui.finetuneButton.text == "Stop fine-tuning"
    panel.events(1.0)
    panel.ui.finetuneButton.click()
    assert panel.widget.jobs["finetune"] is None and "model is unchanged" in panel.ui.finetuneStatusLabel.text
    assert panel.layer.errors == []


def test_the_module_self_test_is_skipped_with_a_message_where_torch_is_missing(panel, monkeypatch, tmp_path):
    """Slicer's "Reload and Test" (ScriptedLoadableModule.runTest, Base/Python/slicer/
    ScriptedLoadableModule.py:72-86) in a Slicer whose Python has no torch yet (every Extensions
    Index build): the test says why and how, and does not fail."""
    from UniversalSegmentationLib import self_test
    no_torch = tmp_path / "PythonSlicer"
    no_torch.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    no_torch.chmod(0o755)
    monkeypatch.setattr(self_test, "python_executable", lambda: str(no_torch))
    test = panel.module.UniversalSegmentationTest()
    test.runTest()
    assert len(test.messages) == 1 and test.messages[0].startswith("Skipped: torch cannot be imported")
    assert "No module named 'torch'" in test.messages[0]


def test_a_failing_child_shows_its_own_error(tmp_path, slicer_lib):
    from UniversalSegmentationLib.self_test import make_tiny_model
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ImportError: libtorch_cpu.so: cannot open shared object file' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="libtorch_cpu.so: cannot open shared object file"):
        make_tiny_model(tmp_path, str(broken))


def test_the_input_list_offers_scalar_images_only(panel, synth_collection):
    label = panel.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    vector = panel.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "an RGB photo")
    volume = load_case(panel, synth_collection)
    panel.enter()
    assert panel.ui.inputVolumeSelector.nodes() == [volume]   # the .ui's nodeTypes + hideChildNodeTypes
    assert panel.widget._parameterNode.inputVolume is volume  # preselected: not the labelmap added first
    assert label.IsA("vtkMRMLScalarVolumeNode") and vector.IsA("vtkMRMLScalarVolumeNode")  # why they must be hidden


def test_options_follow_each_other_and_the_parameter_node(panel):
    panel.enter()
    assert panel.ui.overlapSpinBox.enabled
    panel.ui.fastCheckBox.checked = True  # Fast mode sets the overlap itself
    assert panel.widget._parameterNode.fast and not panel.ui.overlapSpinBox.enabled
    panel.ui.overlapSpinBox.value = 0.7
    assert panel.widget._parameterNode.overlap == pytest.approx(0.7)
    observed, connects = len(panel.widget.Observations), len(standins.CONNECT_GUI_CALLS)
    for _ in range(5):  # leaving and entering never piles up observers (nor 5.10's connectGui leak)
        panel.exit()
        panel.enter()
    assert len(panel.widget.Observations) == observed
    assert len(standins.CONNECT_GUI_CALLS) == connects, "connectGui again on every enter (5.10 leaks one each)"
    assert panel.ui.fastCheckBox.checked and panel.ui.overlapSpinBox.value == pytest.approx(0.7)


def test_closing_the_scene_leaves_a_model_download_running(panel, tmp_path):
    panel.enter()
    job = panel.widget.logic.core.start_import(str(tmp_path / "model.zip"))
    panel.widget.startJob("run", job)
    panel.scene.Clear(0)
    assert panel.widget.jobs["run"] is job and not job.finished, "the scene close cancelled a model import"
    panel.wait(lambda: panel.widget.jobs["run"] is None, what="the import")
    assert "scene was closed" not in job.message and "does not exist" in job.message


def test_volumes_under_a_transform_are_refused_for_a_box_or_clicks(panel, painting_click_model, synth_collection):
    volume = start_model(panel, painting_click_model, synth_collection)
    apply_and_wait(panel)
    transform = panel.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    roi = panel.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetXYZ(0, 0, 0)
    roi.SetRadiusXYZ(20, 20, 20)
    panel.ui.roiSelector.setCurrentNode(roi)
    panel.ui.applyButton.click()
    assert panel.widget.jobs["run"] is None and "under a transform" in panel.layer.errors[-1]
    panel.ui.refineCollapsibleButton.collapsed = False
    panel.ui.refineButton.click()
    assert panel.widget.logic.core.refinement is None and "under a transform" in panel.layer.errors[-1]


def test_a_failed_click_removes_its_own_point(panel, painting_click_model, synth_collection):
    volume = start_model(panel, painting_click_model, synth_collection)
    apply_and_wait(panel)
    chosen, refinement = start_refining(panel, 0)
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    inside = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
    refinement.points[True].AddControlPointWorld(5000.0, 0.0, 0.0)  # outside the volume: refused
    refinement.points[True].AddControlPointWorld(*inside)
    panel.wait(lambda: not refinement.pending, what="both clicks")
    points = refinement.points[True]
    assert points.GetNumberOfControlPoints() == 1 and len(refinement.clicks) == 1
    kept = [0.0, 0.0, 0.0]
    points.GetNthControlPointPositionWorld(0, kept)
    assert np.allclose(kept, inside), "the failed click removed the other click's point"
    panel.ui.undoClickButton.click()  # the remaining click is the one undone
    panel.wait(lambda: not refinement.pending, what="the undo")
    assert points.GetNumberOfControlPoints() == 0 and not refinement.clicks
    panel.ui.discardRefineButton.click()
