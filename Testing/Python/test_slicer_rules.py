"""Rules a real 3D Slicer applies to our module that slicer-core and PySide6 never check. No Slicer
application runs here, so each rule was read in Slicer's own sources (Slicer/Slicer at the 5.10 and
5.12 branches and main of 2026-08, commontk/CTK main, SlicerPyTorch main) and is written down as a
table below; the tests hold our .ui, module file, CMake lists and terminology to those tables.
Where a table cites a file, the path is inside that repository."""
import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
UI = ROOT / "Resources" / "UI" / "UniversalSegmentation.ui"
MODULES = ROOT / "scripted_modules"
MODULE = MODULES / "UniversalSegmentation.py"

# Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, every `canRepresent` (identical in
# 5.10, 5.12 and main): widget class (compared with `type(widget) ==`, so no subclasses) -> the
# annotation it accepts. `connectGui` creates every connector up front and catches nothing: one
# widget that no connector accepts makes setup() raise.
GUI_CONNECTORS = {
    "QCheckBox": "bool", "ctkCheckBox": "bool", "QPushButton": "bool", "ctkCheckablePushButton": "bool",
    "QSlider": "int", "QSpinBox": "int",
    "QDoubleSpinBox": "number", "ctkSliderWidget": "number", "qMRMLSliderWidget": "number",
    "ctkDoubleSlider": "number", "ctkDoubleSpinBox": "number", "qMRMLSpinBox": "number",
    "QComboBox": "choice", "ctkComboBox": "choice",
    "QLineEdit": "str", "QLabel": "str", "QTextEdit": "str",
    "ctkRangeWidget": "FloatRange", "ctkDoubleRangeSlider": "FloatRange", "qMRMLRangeWidget": "FloatRange",
    "ctkPathLineEdit": "Path", "ctkDirectoryButton": "Path",
    "qMRMLNodeComboBox": "node",
    "ctkColorPickerButton": "QColor",
}
# Same file: ctkSliderWidget/qMRMLSliderWidget "Cannot have a connection ... where the float types
# is unbounded"; QSliderOrSpinBoxToIntConnector needs bounds for a QSlider.
NEEDS_BOUNDS = {"ctkSliderWidget", "qMRMLSliderWidget", "QSlider"}

# Q_PROPERTY declarations of the custom classes our .ui sets properties on
# (Libs/MRML/Widgets/qMRMLNodeComboBox.h; CTK Libs/Widgets/ctkPathLineEdit.h, ctkCollapsibleButton.h),
# plus what every QWidget / QAbstractButton has. A property a class lacks is silently ignored.
QWIDGET = {"toolTip", "enabled", "geometry", "sizePolicy", "minimumSize", "maximumSize", "statusTip", "whatsThis"}
CUSTOM_PROPERTIES = {
    "qMRMLNodeComboBox": {"currentNodeID", "nodeTypes", "showHidden", "showChildNodeTypes", "hideChildNodeTypes",
                          "baseName", "noneEnabled", "addEnabled", "removeEnabled", "editEnabled",
                          "renameEnabled", "interactionNodeSingletonTag", "selectNodeUponCreation",
                          "noneDisplay", "sizeAdjustPolicy"},
    "ctkPathLineEdit": {"label", "filters", "currentPath", "options", "settingKey", "showBrowseButton",
                        "showHistoryButton", "sizeAdjustPolicy", "minimumContentsLength", "nameFilters"},
    "ctkCollapsibleButton": {"collapsed", "collapsedHeight", "flat", "contentsFrameShape", "contentsFrameShadow",
                             "contentsLineWidth", "contentsMidLineWidth", "buttonTextAlignment",
                             "indicatorAlignment", "text", "checkable", "checked"},
    "qMRMLWidget": set(),
}
# ctkPathLineEdit::Filter (ctkPathLineEdit.h)
PATH_FILTERS = {"Dirs", "Files", "Drives", "NoSymLinks", "AllEntries", "TypeMask", "Readable", "Writable",
                "Executable", "PermissionMask", "Modified", "Hidden", "System", "AccessMask", "AllDirs",
                "CaseSensitive", "NoDotAndDotDot", "NoDot", "NoDotDot", "NoFilter"}

# Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-*.json (5.10): the
# context name of each file and the (category, type) SNOMED CT codes it holds that we use.
SLICER_TERMINOLOGY = {
    "Segmentation category and type - 3D Slicer General Anatomy list": {
        ("123037004", t) for t in ("10200004", "78961009", "64033007", "15776009", "12738006", "80891009",
                                   "39607008", "41216001", "389081007", "389080008", "69536005")},
    "Segmentation category and type - DICOM master list": {
        ("49755003", "108369006")} | {
        ("123037004", t) for t in ("10200004", "78961009", "64033007", "15776009", "12738006", "80891009",
                                   "39607008", "41216001", "389081007", "389080008", "65216001", "69536005")},
}


def bound_widgets(ui_path=UI):
    """(object name, class, SlicerParameterName, properties) of every bound widget in a .ui."""
    out = []
    for w in ET.parse(ui_path).iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        if "SlicerParameterName" in props:
            out.append((w.get("name"), w.get("class"), props["SlicerParameterName"].find("string").text, props))
    return out


def parameter_annotations(module_path=MODULE):
    """field -> (base type text, [annotation call names]) of the @parameterNodeWrapper class."""
    tree = ast.parse(module_path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list))
    fields = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign):
            ann, extras = node.annotation, []
            if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Annotated":
                base, *rest = ann.slice.elts
                extras = [r.func.id for r in rest if isinstance(r, ast.Call)]
                ann = base
            fields[node.target.id] = (ast.unparse(ann), extras)
    return fields


def connector_problem(widget_class, base, extras, props):
    """Why Slicer's GUI connectors would refuse this binding ('' when one accepts it)."""
    kind = GUI_CONNECTORS.get(widget_class)
    if kind is None:
        return f"no GUI connector for widget class {widget_class}"
    if kind == "node":
        if not base.startswith("slicer.vtkMRML"):
            return f"qMRMLNodeComboBox needs an MRML node annotation, not {base}"
        types = [s.text for s in props["nodeTypes"].iter("string")] if "nodeTypes" in props else []
        if types != [base.split(".", 1)[1]]:  # the connector overwrites nodeTypes with the annotation
            return f"nodeTypes {types} differ from the annotation {base}"
        return ""
    if kind == "choice":
        return "" if base in ("str", "int", "float", "bool") and "Choice" in extras else \
            f"a QComboBox needs Annotated[{base}, Choice([...])] (and is refilled with those choices)"
    if kind == "number":
        if base not in ("float", "int"):
            return f"{widget_class} needs float or int, not {base}"
    elif kind != base:
        return f"{widget_class} needs {kind}, not {base}"
    if widget_class in NEEDS_BOUNDS and not ({"WithinRange"} & set(extras) or {"Minimum", "Maximum"} <= set(extras)):
        return f"{widget_class} needs WithinRange or Minimum and Maximum"
    return ""


def test_every_bound_widget_has_a_slicer_gui_connector():
    fields = parameter_annotations()
    bound = bound_widgets()
    assert {name for _, _, name, _ in bound} == set(fields), "every field bound, nothing bound twice"
    problems = {obj: connector_problem(cls, *fields[name], props) for obj, cls, name, props in bound}
    assert not {k: v for k, v in problems.items() if v}


def test_the_connector_table_refuses_what_broke_setup(tmp_path):
    """The defect this rule guards: ``modality: str`` bound to a plain QComboBox made connectGui raise."""
    assert "Choice" in connector_problem("QComboBox", "str", [], {})
    assert connector_problem("QComboBox", "str", ["Choice"], {}) == ""
    assert "float" in connector_problem("QCheckBox", "float", [], {})
    assert "WithinRange" in connector_problem("ctkSliderWidget", "float", [], {})
    assert connector_problem("QDoubleSpinBox", "float", ["WithinRange"], {}) == ""
    assert "no GUI connector" in connector_problem("QListWidget", "str", [], {})


def test_dynamic_combos_are_not_bound():
    """Model, modality and structures change per model: Slicer's connector would refill them."""
    bound = {obj for obj, _, _, _ in bound_widgets()}
    assert not bound & {"modelSelector", "modalitySelector", "taskListWidget", "trainConfigSelector"}


def test_ui_sets_only_properties_the_custom_classes_have():
    for w in ET.parse(UI).iter("widget"):
        allowed = CUSTOM_PROPERTIES.get(w.get("class"))
        if allowed is None:
            continue
        for p in w.findall("property"):
            if p.get("stdset") != "0":
                assert p.get("name") in allowed | QWIDGET, (w.get("name"), p.get("name"))
        for s in w.iter("set"):
            flags = {f.split("::")[1] for f in s.text.split("|")}
            assert flags <= PATH_FILTERS, flags


def test_run_folder_is_a_folder_picker_and_catalog_a_file_picker():
    filters = {w.get("name"): {f.split("::")[1] for f in w.find("property[@name='filters']/set").text.split("|")}
               for w in ET.parse(UI).iter("widget") if w.get("class") == "ctkPathLineEdit"}
    for folder in ("trainOutputPathLineEdit", "trainingSetPathLineEdit"):  # folders, never files
        assert "Dirs" in filters[folder] and "Files" not in filters[folder]
    assert "Files" in filters["catalogPathLineEdit"]


# Base/Python/slicer/util.py (main, 2026-08): `def confirmYesNoDisplay(text, windowTitle=None,
# parent=None, **kwargs)` returns `result == qt.QMessageBox.Yes` (True only for Yes; in testing
# mode it skips the dialog and returns True). PanelState.add_case calls its ask_replace with ONE
# positional text and uses the answer as a bool (Testing/Python/test_correction_loop_panel.py).
CONFIRM_YES_NO_POSITIONAL = ("text",)


def test_confirm_dialog_is_passed_where_one_text_is_asked():
    import inspect
    import sys
    sys.path.append(str(MODULES))
    from UniversalSegmentationLib.panel_state import PanelState
    source = MODULE.read_text()
    assert re.findall(r"slicer\.util\.confirmYesNoDisplay\)", source)  # passed, not called with extras
    calls = re.findall(r"ask_replace\(\s*(?:_\()?f?\"", inspect.getsource(PanelState.add_case))  # _(): translated
    assert len(calls) == len(CONFIRM_YES_NO_POSITIONAL) == 1


def test_module_file_follows_the_template_and_stays_thin():
    source = MODULE.read_text()
    tree = ast.parse(source)
    # ScriptedLoadableModuleWidget.setup() adds the "Reload & Test" box first in developer mode
    assert "layout.itemAt(" not in source
    # qSlicerScriptedLoadableModule: the module name is the file's base name; classes follow it
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"UniversalSegmentation", "UniversalSegmentationWidget", "UniversalSegmentationLogic",
            "UniversalSegmentationTest"} <= classes
    # template lifecycle: parameter node observer, scene close, enter / exit, cleanup
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "UniversalSegmentationWidget")
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert {"setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
            "initializeParameterNode", "setParameterNode"} <= methods
    # nothing heavy in Slicer's GUI process
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"torch", "monai", "UniversalSeg"}
    # the template lifecycle, jobs (each isolated: an error in one never stops another), training,
    # the correction loop's binding (add a case, fine-tune) and Refine mode's (segment list, start /
    # accept / discard, place points, undo) take 355; everything else lives in the library
    assert len(source.splitlines()) <= 355


def test_no_module_file_shadows_the_core_package():
    """Slicer loads each module file by path and registers it in sys.modules under the file's base
    name (Base/QTCore/qSlicerScriptedUtils.cxx, loadSourceAsModule)."""
    stems = {p.stem for p in MODULES.glob("*.py")}
    assert "UniversalSeg" not in stems
    assert stems == {"UniversalSegmentation"}  # Slicer tries to load every .py here as a module


def test_cmake_lists_every_module_file():
    """slicerMacroBuildScriptedModule copies and installs only the listed scripts."""
    cmake = (MODULES / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s+(UniversalSegmentationLib/\S+\.py)$", cmake, re.M))
    present = {p.relative_to(MODULES).as_posix() for p in (MODULES / "UniversalSegmentationLib").glob("*.py")}
    assert listed == present
    for resource in re.findall(r"^\s+(Resources/\S+)$", cmake, re.M):
        assert (ROOT / resource.replace("${MODULE_NAME}", "UniversalSegmentation")).is_file(), resource
    assert "find_package(Slicer 5.10 REQUIRED)" in (ROOT / "CMakeLists.txt").read_text()


@pytest.mark.parametrize("name", ["liver", "spleen", "kidney", "pancreas", "brain", "heart", "lung",
                                  "prostate", "liver-tumor", "tumor", "gray-matter", "white-matter", "csf",
                                  "head"])
def test_terminology_codes_are_in_the_slicer_context_they_name(name):
    from UniversalSeg.data.terminology import KNOWN_TASKS
    info = KNOWN_TASKS[name]
    assert info.context in SLICER_TERMINOLOGY
    assert (info.category.value, info.type.value) in SLICER_TERMINOLOGY[info.context]


def test_own_codes_fall_back_to_the_list_that_holds_every_code():
    from UniversalSeg.data.terminology import DICOM_MASTER_CONTEXT, task_info
    lesion = task_info("liver", {"type": ["SCT", "108369006", "Neoplasm"], "category": ["SCT", "49755003", "x"]})
    assert lesion.context == DICOM_MASTER_CONTEXT
    assert task_info("my-structure").context == DICOM_MASTER_CONTEXT


def test_tooltips_are_set_on_widgets_of_the_ui():
    """`widget.toolTip = text` is PythonQt setting QWidget's toolTip property (Slicer's own DICOM
    module does it on a QComboBox, Modules/Scripted/DICOM/DICOM.py): each target must be a widget
    of our .ui, so the property exists."""
    source = MODULE.read_text()
    targets = set(re.findall(r"self\.ui\.(\w+)\.toolTip\b", source))
    widgets = {w.get("name"): w.get("class") for w in ET.parse(UI).iter("widget")}
    assert targets == {"modelSelector"} and widgets["modelSelector"] == "QComboBox"
    assert "toolTip" in QWIDGET


# The signals the module connects, per widget class, as the classes declare them: Qt's own
# (QAbstractButton::clicked(bool checked = false), so "clicked()" exists; QComboBox::
# currentIndexChanged(int); QLineEdit::textChanged(const QString&); QListWidget::
# itemChanged(QListWidgetItem*)), qMRMLNodeComboBox.h (Libs/MRML/Widgets: currentNodeChanged(
# vtkMRMLNode* node)) and CTK's ctkCollapsibleButton.h (Libs/Widgets: contentsCollapsed(bool)).
# PythonQt's connect with a signature that no signal has fails at run time, in setup().
SIGNALS = {
    "QPushButton": {"clicked()", "clicked(bool)", "toggled(bool)"},
    "QComboBox": {"currentIndexChanged(int)", "currentTextChanged(QString)"},
    "QLineEdit": {"textChanged(QString)"},
    "QListWidget": {"itemChanged(QListWidgetItem*)"},
    "qMRMLNodeComboBox": {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)"},
    "ctkCollapsibleButton": {"contentsCollapsed(bool)"},
}


def test_every_connected_signal_exists_on_its_widget_class():
    widgets = {w.get("name"): w.get("class") for w in ET.parse(UI).iter("widget")}
    connections = re.findall(r'\(self\.ui\.(\w+), "([^"]+)"', MODULE.read_text())
    assert len(connections) >= 20
    for name, signal in connections:
        assert signal in SIGNALS[widgets[name]], (name, widgets[name], signal)


def test_refine_mode_uses_markups_apis_slicer_has():
    """Libs/MRML/Core/vtkMRMLMarkupsNode.h: PointPositionDefinedEvent (invoked with the point's
    index when a placed point gets its position), GetNumberOfControlPoints(),
    GetNthControlPointPositionWorld(int, double[3]), RemoveNthControlPoint(int);
    Modules/Loadable/Markups/Logic/vtkSlicerMarkupsLogic.h: SetActiveList(vtkMRMLMarkupsNode*),
    StartPlaceMode(bool persistent, vtkMRMLInteractionNode* = nullptr), reached as
    slicer.modules.markups.logic() (Slicer's own MarkupsNodeNameTest.py). ScreenCapture.py reads
    QComboBox's currentData property the way the module does."""
    source = (MODULES / "UniversalSegmentationLib" / "refinement.py").read_text()
    used = set(re.findall(r"\.(\w+)\(", source)) | set(re.findall(r"vtkMRMLMarkupsNode\.(\w+)", source))
    markups = {"PointPositionDefinedEvent", "GetNumberOfControlPoints", "GetNthControlPointPositionWorld",
               "RemoveNthControlPoint", "SetActiveList", "StartPlaceMode"}
    assert markups <= used
    assert "slicer.modules.markups.logic()" in source
    assert "StartPlaceMode(True)" in source and "GetNthControlPointPositionWorld(index, position)" in source
    assert "refineSegmentSelector.currentData" in MODULE.read_text()
