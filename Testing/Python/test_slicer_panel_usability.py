"""The panel harness (``test_slicer_panel.py``) on what a Slicer user expects beyond the main path:
keys for the Add / Remove click buttons that no Slicer binding uses, Apple's ``mps`` in the device
list only where the device probe finds it, and Slicer's MRHead sample segmented in two clicks."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("PySide6")
from PySide6.QtTest import QTest  # noqa: E402

import slicer_app_standins as standins  # noqa: E402
import test_slicer_panel as harness  # noqa: E402
from test_slicer_panel import ROOT, VIEW_TRANSFORM, apply_and_wait, start_model, start_refining  # noqa: E402

panel = harness.panel  # the harness's fixture: the module's widget, set up, with the stand-ins installed

UI = ROOT / "Resources" / "UI" / "UniversalSegmentation.ui"

# Keys Slicer 5.10 already binds (Slicer at tag v5.10.0), written as QKeySequence::toString writes them.
SLICER_KEYS = {
    # Base/QTApp/Resources/UI/qSlicerMainWindow.ui:370-777 (File, Edit, View actions)
    "Ctrl+O", "Ctrl+S", "Ctrl+W", "Ctrl+Z", "Ctrl+Y", "Ctrl+4", "Ctrl+2", "Ctrl+X", "Ctrl+C", "Ctrl+V", "Ctrl+6",
    "Ctrl+H",
    # Base/QTApp/qSlicerMainWindow.cxx:155 (module panel), :354 (error log), :398 (Python console)
    "Ctrl+5", "Ctrl+0", "Ctrl+3", "Ctrl+`",
    # Base/QTGUI/qSlicerModuleSelectorToolBar.cxx:119 (find module), :179 / :199 (previous / next module)
    "Ctrl+F", "Ctrl+Left", "Ctrl+Right",
    # Modules/Loadable/Markups/Widgets/qMRMLMarkupsToolBar.cxx:84-86 (application-wide place shortcuts)
    "Ctrl+Shift+A", "Ctrl+Shift+T", "Ctrl+Shift+Space",
    # Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.cxx:2312 / :2321 (effects 1-10),
    # :2328 Esc, :2334 Space, :2340 / :2343 undo, :2347 / :2350 redo, :2356-2359 previous / next
    # segment, :2375 intensity mask
    *[str(i) for i in range(10)], *[f"Shift+{i}" for i in range(10)], "Esc", "Space", "Z", "Y", "Ctrl+Shift+Z",
    "Q", "W", "/", "*", ",", ".", ">", "<", "I",
    # Libs/MRML/DisplayableManager/vtkMRMLSliceIntersectionWidget.cxx:168-196 (slice views:
    # g t f b v V [ ] { } r), vtkMRMLCameraWidget.cxx:97-111 (+ - Ctrl+b r),
    # Modules/Loadable/Markups/VTKWidgets/vtkSlicerMarkupsWidget.cxx:69-72 (s Del Backspace on a point)
    "G", "T", "F", "B", "V", "Shift+V", "[", "]", "{", "}", "R", "+", "-", "Ctrl+B", "S", "Del", "Backspace",
}


def ui_shortcuts():
    return {w.get("name"): p.find("string").text for w in ET.parse(UI).iter("widget")
            for p in w.findall("property") if p.get("name") == "shortcut"}


def test_click_keys_collide_with_no_slicer_binding(panel):
    assert ui_shortcuts() == {"positiveClickButton": "A", "negativeClickButton": "D"}
    for button in (panel.ui.positiveClickButton, panel.ui.negativeClickButton):
        key = standins.unwrap(button).shortcut().toString()  # as Qt reads the .ui
        assert key and key not in SLICER_KEYS, f"{key} is bound by Slicer already"
        assert f"key {key}" in button.toolTip


def show(panel):
    """The module panel on screen in the active window, the focus on a button (not a text field)."""
    window = standins.unwrap(panel.widget.parent)
    window.show()
    window.activateWindow()
    assert QTest.qWaitForWindowActive(window, 2000)
    standins.unwrap(panel.ui.applyButton).setFocus()
    return window


def press(window, key):
    """A key pressed in the application window: Qt's shortcut map finds the button whose shortcut it
    is (visible and enabled) and clicks it, animated (QAbstractButton::animateClick, 100 ms)."""
    QTest.keyClick(window, key)
    QTest.qWait(400)


def test_the_click_keys_start_and_end_place_mode(panel, painting_click_model, synth_collection):
    start_model(panel, painting_click_model, synth_collection)
    window, key = show(panel), standins.QtCore.Qt
    interaction = panel.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    press(window, key.Key_A)  # not refining: the buttons are disabled, the key does nothing
    assert interaction.GetCurrentInteractionMode() == VIEW_TRANSFORM
    apply_and_wait(panel)
    start_refining(panel, 0)
    standins.unwrap(panel.ui.applyButton).setFocus()
    press(window, key.Key_A)
    assert interaction.GetCurrentInteractionMode() == slicer.vtkMRMLInteractionNode.Place
    assert panel.ui.positiveClickButton.checked
    press(window, key.Key_D)  # the other list
    assert panel.ui.negativeClickButton.checked and not panel.ui.positiveClickButton.checked
    press(window, key.Key_D)  # again: place mode ends
    assert interaction.GetCurrentInteractionMode() == VIEW_TRANSFORM
    panel.ui.discardRefineButton.click()
    window.hide()


def fake_probe(tmp_path, mps):
    script = tmp_path / f"python-mps-{mps}"
    script.write_text("#!/bin/sh\necho '{\"torch\": \"2.13.0\", \"cuda\": false, \"gpus\": [], \"mps\": %s}'\n"
                      % ("true" if mps else "false"))
    script.chmod(0o755)
    return str(script)


def devices(panel):
    return [panel.ui.deviceSelector.itemText(i) for i in range(panel.ui.deviceSelector.count)]


def test_mps_is_offered_only_where_the_device_probe_finds_it(panel, tmp_path):
    assert devices(panel) == ["auto", "cpu", "cuda"]  # not before the probe answers
    core = panel.widget.logic.core
    core.python = fake_probe(tmp_path, mps=True)  # a Mac with Apple's GPU
    panel.enter()
    panel.wait(lambda: panel.widget.jobs["probe"] is None, what="the device probe")
    assert devices(panel) == ["auto", "cpu", "cuda", "mps"] and "mps" in panel.ui.deviceInfoLabel.text
    panel.ui.deviceSelector.currentIndex = 3
    assert panel.widget._parameterNode.device == "mps"
    panel.scene.Clear(0)  # a new parameter node: Slicer's connector refills the list, mps stays offered
    assert devices(panel) == ["auto", "cpu", "cuda", "mps"]

    panel.widget.devicesKnown = False  # a machine without it (asked again)
    panel.widget._parameterNode.device = "mps"  # e.g. a scene saved on a Mac
    core.python = fake_probe(tmp_path, mps=False)
    panel.exit()
    panel.enter()
    panel.wait(lambda: panel.widget.jobs["probe"] is None, what="the device probe")
    assert devices(panel) == ["auto", "cpu", "cuda"]
    assert panel.widget._parameterNode.device == "auto" and panel.ui.deviceSelector.currentText == "auto"
    panel.ui.deviceSelector.currentIndex = 2
    assert panel.widget._parameterNode.device == "cuda"  # the others still read right


def test_slicer_mrhead_sample_then_apply(panel):
    """SampleData names the volume "MRHead" (Modules/Scripted/SampleData/SampleData.py:630-631 at
    v5.10.0, a T1-weighted head MR): the shipped brain model and MR-T1 are preselected, Apply is on."""
    volume = slicer.util.addVolumeFromArray(np.zeros((16, 16, 16), np.int16), name="MRHead")
    panel.enter()
    assert panel.ui.inputVolumeSelector.currentNode() is volume
    assert panel.ui.modelSelector.currentText.startswith("brain-synth") and "(shipped)" in \
        panel.ui.modelSelector.currentText
    assert panel.ui.modalitySelector.currentText == "MR-T1"
    assert panel.ui.applyButton.text == "Apply" and panel.ui.applyButton.enabled
