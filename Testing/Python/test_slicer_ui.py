"""The module's .ui: loads with PySide6's QUiLoader offscreen, has every widget the module uses,
binds every parameter, and a screenshot of the panel is taken into a temporary folder and compared
with the committed one (Testing/Screenshots/panel.png, for people to look at; the test never writes
into the source tree: copy the new screenshot there when the panel changes)."""
import ast
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")
from PySide6.QtCore import Property, QFile  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

ROOT = Path(__file__).parents[2]
UI = ROOT / "Resources" / "UI" / "UniversalSegmentation.ui"
MODULE = ROOT / "scripted_modules" / "UniversalSegmentation.py"
SCREENSHOT = ROOT / "Testing" / "Screenshots" / "panel.png"


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """Stand-in for CTK's collapsible button (a titled container) so the screenshot reads well."""

    def _get(self):
        return self.title()

    def _set(self, value):
        self.setTitle(("▸ " if getattr(self, "_collapsed", False) else "▾ ") + value)

    text = Property(str, _get, _set)

    def _get_c(self):
        return getattr(self, "_collapsed", False)

    def _set_c(self, value):
        self._collapsed = value

    collapsed = Property(bool, _get_c, _set_c)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    pass


class ctkPathLineEdit(QtWidgets.QLineEdit):
    pass


class qMRMLSegmentationShow3DButton(QtWidgets.QToolButton):
    def __init__(self, parent=None):  # its constructor's text (qMRMLSegmentationShow3DButton.cxx)
        super().__init__(parent)
        self.setText("Show 3D")


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def load(app):
    loader = QUiLoader()
    for cls in (ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit, qMRMLSegmentationShow3DButton):
        loader.registerCustomWidget(cls)
    f = QFile(str(UI))
    f.open(QFile.ReadOnly)
    widget = loader.load(f)
    f.close()
    assert widget is not None, loader.errorString()
    return widget


def names_used_by_module():
    return set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))


def test_every_widget_the_module_uses_exists(app):
    widget = load(app)
    present = {w.objectName() for w in widget.findChildren(QtWidgets.QWidget)}
    missing = names_used_by_module() - present
    assert not missing, f"widgets used by the module file but not in the .ui: {sorted(missing)}"


def test_parameter_bindings_match_the_parameter_node(app):
    widget = load(app)
    bound = {w.property("SlicerParameterName") for w in widget.findChildren(QtWidgets.QWidget)} - {None}
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "UniversalSegmentationParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert bound == fields


def test_panel_screenshot(app, tmp_path):
    kept = (SCREENSHOT.stat().st_mtime_ns, SCREENSHOT.read_bytes())
    widget = load(app)
    widget.findChild(qMRMLNodeComboBox, "inputVolumeSelector").addItem("abdomen CT")
    widget.findChild(QtWidgets.QComboBox, "modelSelector").addItem("synthetic-demo (imported)")
    for name, items in (("modalitySelector", ["CT", "MR-T1", "MR-T2", "PET"]), ("deviceSelector", ["auto"]),
                        ("precisionSelector", ["auto"]), ("trainConfigSelector", ["small"])):
        widget.findChild(QtWidgets.QComboBox, name).addItems(items)
    tasks = widget.findChild(QtWidgets.QListWidget, "taskListWidget")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QIcon, QPixmap
    for name, color in (("Liver", (221, 130, 101)), ("Spleen", (157, 108, 162)), ("Kidney", (185, 102, 83)),
                        ("Liver tumor", (255, 64, 64))):
        item = QtWidgets.QListWidgetItem(name)
        swatch = QPixmap(12, 12)  # as the panel shows each structure's colour
        swatch.fill(QColor(*color))
        item.setIcon(QIcon(swatch))
        item.setCheckState(Qt.Checked)
        tasks.addItem(item)
    widget.findChild(qMRMLNodeComboBox, "outputSegmentationSelector").addItem("Create new segmentation")
    widget.resize(440, 820)
    widget.show()
    app.processEvents()
    shot = tmp_path / "panel.png"
    assert widget.grab().save(str(shot))
    widget.close()
    from PySide6.QtGui import QImage
    new, committed = QImage(str(shot)), QImage(str(SCREENSHOT))
    assert len({new.pixel(x, y) for x in range(0, new.width(), 7) for y in range(0, new.height(), 7)}) > 8, \
        "the screenshot is (nearly) blank"
    # fonts differ between machines, so pixels are not compared; the panel's layout (its size) is, with
    # room for another machine's font metrics
    assert new.width() == committed.width() and abs(new.height() / committed.height() - 1) < 0.15, (
        f"the panel is now {new.width()}x{new.height()}, the committed screenshot {committed.width()}x"
        f"{committed.height()}: look at {shot} and copy it to {SCREENSHOT} if the change is meant")
    assert (SCREENSHOT.stat().st_mtime_ns, SCREENSHOT.read_bytes()) == kept, "the source tree was written"
