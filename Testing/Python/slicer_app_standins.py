"""What the 3D Slicer APPLICATION adds to slicer-core, imitated just far enough to run the module's
widget code (``scripted_modules/UniversalSegmentation.py``) headless on PySide6.

slicer-core (PyPI) is Slicer's real MRML core plus Slicer's real ``slicer/util.py``; it has no Qt.
The application adds: PythonQt (Qt objects whose properties read and write as attributes and whose
signals connect by C++ signature strings), the CTK and qMRML widgets of the .ui, ``slicer.app``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``. Each stand-in below cites
the source it imitates: Slicer/Slicer at commit 583e9b37 (2026-08-21) and commontk/CTK at 868d56c7
(2026-08-12); paths are inside those repositories. Everything else is real: the MRML scene,
Segmentations and Markups logic (slicer-core), Slicer's own ``slicer.util`` functions
(``loadUI``, ``childWidgetVariables``, ``tryWithErrorDisplay``, ``VTKObservationMixin``,
``errorDisplay`` ...), Qt widgets (PySide6) and the module's child processes.

``install(tmp_path)`` puts the layer in place and returns the handles a test drives.
"""
from __future__ import annotations

import os
import re
import sys
import types
import typing
import xml.etree.ElementTree as ET
from dataclasses import dataclass

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# PySide6's Qt is loaded before slicer-core's VTK, the order this harness is tested in
# isort: off
from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6.QtCore import Property, Signal  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

import slicer  # noqa: E402  (slicer-core: the real MRML core and slicer.util)
import vtk  # noqa: E402
# isort: on


# ---------------------------------------------------------------------------------------- PythonQt
class PythonQtObject:
    """A QObject as PythonQt shows it (MeVisLab/pythonqt src/PythonQtInstanceWrapper.cpp,
    PythonQtInstanceWrapper_getattro / _setattro): a Q_PROPERTY reads and writes as an attribute
    (``label.text = "x"``; it wins over a method of the same name), ``name`` is ``objectName``,
    methods take and return wrapped objects, and ``obj.connect("clicked()", slot)`` connects by the
    C++ signature (PythonQtStdDecorators::connect)."""

    def __init__(self, qobject):
        object.__setattr__(self, "_q", qobject)

    def __getattr__(self, name):
        q = object.__getattribute__(self, "_q")
        if name == "name":
            return q.objectName()
        if q.metaObject().indexOfProperty(name) >= 0:
            return wrap(q.property(name))
        attr = getattr(q, name)
        if isinstance(attr, QtCore.SignalInstance) or not callable(attr):
            return attr
        return lambda *args, **kwargs: wrap(attr(*map(unwrap, args), **{k: unwrap(v) for k, v in kwargs.items()}))

    def __setattr__(self, name, value):
        q = object.__getattribute__(self, "_q")
        if name == "name":
            q.setObjectName(value)
        elif q.metaObject().indexOfProperty(name) >= 0:
            if not q.setProperty(name, unwrap(value)):
                raise AttributeError(f"property {name} of {type(q).__name__} is read-only or of another type")
        else:  # PythonQt keeps other attributes in the wrapper's own dict
            object.__setattr__(self, name, value)

    def connect(self, signature, slot):
        signal_of(self._q, signature).connect(lambda *args: slot(*map(wrap, args)))
        return True

    def __eq__(self, other):
        return unwrap(other) is self._q

    def __hash__(self):
        return id(self._q)

    def __repr__(self):
        return f"<PythonQt {type(self._q).__name__} {self._q.objectName()!r}>"


def signal_of(qobject, signature: str):
    """The signal named by a C++ signature: 'currentNodeChanged(vtkMRMLNode*)' -> the signal object."""
    match = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", signature)
    if not match:
        raise ValueError(f"not a signal signature: {signature!r}")
    signal = getattr(qobject, match.group(1))
    if not isinstance(signal, QtCore.SignalInstance):
        raise AttributeError(f"{type(qobject).__name__} has no signal {signature}")
    return signal


def wrap(value):
    """The one wrapper of a QObject (PythonQt keeps one per object); lists element-wise."""
    if isinstance(value, QtCore.QObject):
        cached = _PROXIES.get(id(value))
        if cached is None or object.__getattribute__(cached, "_q") is not value:
            cached = _PROXIES[id(value)] = PythonQtObject(value)
            value.destroyed.connect(lambda *_, key=id(value): _PROXIES.pop(key, None))
        return cached
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def unwrap(value):
    return object.__getattribute__(value, "_q") if isinstance(value, PythonQtObject) else value


_PROXIES: dict = {}


# ---------------------------------------------------------------------------- CTK and qMRML widgets
class qMRMLWidget(QtWidgets.QWidget):
    """Libs/MRML/Widgets/qMRMLWidget.h:65,71 and .cxx:61-69: setMRMLScene stores the scene and
    emits mrmlSceneChanged(vtkMRMLScene*) (the .ui connects it to each node selector)."""
    mrmlSceneChanged = Signal(object)

    def setMRMLScene(self, scene):
        if scene is getattr(self, "_scene", None):
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return getattr(self, "_scene", None)


class qMRMLNodeComboBox(QtWidgets.QWidget):
    """Libs/MRML/Widgets/qMRMLNodeComboBox.h:61-93 (properties), :325 currentNodeChanged(vtkMRMLNode*);
    which nodes it lists: qMRMLSortFilterProxyModel.cxx:233 (hidden nodes only with showHidden),
    :238/:269 (node->IsA(nodeType): subclasses are listed), :276 (showChildNodeTypes false: exact
    class only), :283 (hideChildNodeTypes). With noneEnabled the current node stays "None" until
    chosen, and becomes None when its node leaves the scene (qMRMLNodeComboBox.cxx:719-760)."""
    currentNodeChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._current, self._tag_added, self._tag_removed = None, None, None, None
        self._props = {"nodeTypes": [], "showHidden": False, "showChildNodeTypes": True, "hideChildNodeTypes": [],
                       "noneEnabled": False, "addEnabled": True, "removeEnabled": True, "renameEnabled": False,
                       "editEnabled": False, "noneDisplay": "None", "baseName": "", "selectNodeUponCreation": True}

    def _p(name, kind):  # noqa: N805 - a property factory
        return Property(kind, lambda self: self._props[name], lambda self, v: self._props.__setitem__(name, v))

    nodeTypes = _p("nodeTypes", "QStringList")
    hideChildNodeTypes = _p("hideChildNodeTypes", "QStringList")
    showHidden, showChildNodeTypes = _p("showHidden", bool), _p("showChildNodeTypes", bool)
    noneEnabled, addEnabled, removeEnabled = _p("noneEnabled", bool), _p("addEnabled", bool), _p("removeEnabled", bool)
    renameEnabled, editEnabled = _p("renameEnabled", bool), _p("editEnabled", bool)
    selectNodeUponCreation = _p("selectNodeUponCreation", bool)
    noneDisplay, baseName = _p("noneDisplay", str), _p("baseName", str)
    del _p

    def accepts(self, node) -> bool:
        p = self._props
        if node is None or (not p["showHidden"] and node.GetHideFromEditors()):
            return False
        for node_type in p["nodeTypes"]:
            if not node.IsA(node_type):
                continue
            if not p["showChildNodeTypes"] and node.GetClassName() != node_type:
                continue
            if any(node.IsA(hidden) for hidden in p["hideChildNodeTypes"]):
                continue
            return True
        return False

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        if self._scene is not None:
            self._scene.RemoveObserver(self._tag_added)
            self._scene.RemoveObserver(self._tag_removed)
        self._scene = scene
        self._tag_added = scene.AddObserver(scene.NodeAddedEvent, self._on_added)
        self._tag_removed = scene.AddObserver(scene.NodeRemovedEvent, self._on_removed)
        if not self._props["noneEnabled"]:
            self.setCurrentNode(next(iter(self.nodes()), None))

    def _on_added(self, caller, event):
        if self._current is None and not self._props["noneEnabled"]:
            self.setCurrentNode(next(iter(self.nodes()), None))

    def _on_removed(self, caller, event):
        if self._current is not None and self._current.GetScene() is None:
            self._current = None
            self.currentNodeChanged.emit(None)

    def nodes(self) -> list:
        if self._scene is None:
            return []
        found = [self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes())]
        return [n for n in found if self.accepts(n)]

    def mrmlScene(self):
        return self._scene

    def currentNode(self):
        return self._current

    def currentNodeID(self):
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node):  # qMRMLNodeComboBox.cxx:870
        if node is not None and not self.accepts(node):
            return  # not in the list: the combo box cannot show it
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)

    def setCurrentNodeID(self, node_id):  # qMRMLNodeComboBox.cxx:882
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """CTK Libs/Widgets/ctkCollapsibleButton.h:48 (collapsed, NOTIFY contentsCollapsed) and :151
    contentsCollapsed(bool); ``text`` is the button's title."""
    contentsCollapsed = Signal(bool)

    def _get_collapsed(self):
        return getattr(self, "_collapsed", False)

    def _set_collapsed(self, value):
        if value != self._get_collapsed():
            self._collapsed = value
            self.contentsCollapsed.emit(value)

    collapsed = Property(bool, _get_collapsed, _set_collapsed)
    text = Property(str, QtWidgets.QGroupBox.title, QtWidgets.QGroupBox.setTitle)


class ctkPathLineEdit(QtWidgets.QWidget):
    """CTK Libs/Widgets/ctkPathLineEdit.h:76 currentPath (USER), :255 currentPathChanged(QString),
    :96 settingKey (the history of paths is kept in QSettings under that key), :125 nameFilters."""
    currentPathChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._path, self._key, self._name_filters = "", "", []

    def _set_path(self, path):
        if path != self._path:
            self._path = path
            self.currentPathChanged.emit(path)

    currentPath = Property(str, lambda self: self._path, _set_path)
    settingKey = Property(str, lambda self: self._key, lambda self, v: setattr(self, "_key", v))
    nameFilters = Property("QStringList", lambda self: self._name_filters,
                           lambda self, v: setattr(self, "_name_filters", v))

    def setCurrentPath(self, path):
        self._set_path(path)


class qMRMLSegmentationShow3DButton(QtWidgets.QToolButton):
    """Modules/Loadable/Segmentations/Widgets/qMRMLSegmentationShow3DButton.cxx (v5.10.0):
    setSegmentationNode (:210) observes the node; updateWidgetFromMRML (:231-247) enables the
    button when the node has segments and checks it when a closed surface exists; onToggled
    (:309-350) creates the closed surface (3D) or removes it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setText("Show 3D")
        self.setCheckable(True)
        self._node, self._tag = None, None
        self.toggled.connect(self.onToggled)
        self.updateWidgetFromMRML()

    def setSegmentationNode(self, node):
        if node is self._node:
            return
        if self._node is not None:
            self._node.RemoveObserver(self._tag)
        self._node = node
        self._tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *_: self.updateWidgetFromMRML()) \
            if node is not None else None
        self.updateWidgetFromMRML()

    def updateWidgetFromMRML(self):
        segmentation = self._node.GetSegmentation() if self._node is not None else None
        self.setEnabled(bool(segmentation and segmentation.GetNumberOfSegments()))
        blocked = self.blockSignals(True)
        self.setChecked(bool(segmentation and segmentation.ContainsRepresentation(CLOSED_SURFACE)))
        self.blockSignals(blocked)

    def onToggled(self, on):
        if self._node is None:
            return
        segmentation = self._node.GetSegmentation()
        if on:
            if segmentation.CreateRepresentation(CLOSED_SURFACE) and self._node.GetDisplayNode() is not None:
                self._node.GetDisplayNode().SetPreferredDisplayRepresentationName3D(CLOSED_SURFACE)
        elif segmentation.GetSourceRepresentationName() != CLOSED_SURFACE:
            segmentation.RemoveRepresentation(CLOSED_SURFACE)


CLOSED_SURFACE = "Closed surface"  # vtkSegmentationConverter::GetSegmentationClosedSurfaceRepresentationName()
CUSTOM_WIDGETS = (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit, qMRMLSegmentationShow3DButton)


class PythonQtUiLoader:
    """``qt.QUiLoader`` as Slicer's slicer.util.loadUI uses it: the CTK and qMRML classes known
    (Slicer registers their designer plugins), the .ui's <connections> made by signature, the
    loaded widget wrapped."""

    def load(self, qfile):
        path = qfile.fileName()
        loader = QUiLoader()
        for cls in CUSTOM_WIDGETS:
            loader.registerCustomWidget(cls)
        widget = loader.load(qfile)
        if widget is None:
            return None
        for connection in ET.parse(path).iter("connection"):
            sender, signal, receiver, slot = (connection.find(t).text for t in ("sender", "signal", "receiver", "slot"))
            find = (lambda name: widget if widget.objectName() == name else widget.findChild(QtCore.QObject, name))
            target = getattr(find(receiver), slot.split("(")[0])
            signal_of(find(sender), signal).connect(target)
        return wrap(widget)


# ------------------------------------------------------------------------------------ the qt module
class QFileDialog:
    """PythonQt's static QFileDialog functions return the chosen path as a str ('' when
    cancelled). The test queues the user's answers in ``answers``."""
    answers: list = []

    @staticmethod
    def getOpenFileName(*args):
        return QFileDialog.answers.pop(0) if QFileDialog.answers else ""

    @staticmethod
    def getExistingDirectory(*args):
        return QFileDialog.answers.pop(0) if QFileDialog.answers else ""


def make_qt_module(settings_path: str) -> types.ModuleType:
    qt = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if name.startswith("Q"):
                setattr(qt, name, getattr(source, name))
    qt.QUiLoader = PythonQtUiLoader
    qt.QFileDialog = QFileDialog
    qt.QTimer = lambda *args: wrap(QtCore.QTimer(*args))
    qt.QVBoxLayout = lambda *args: wrap(QtWidgets.QVBoxLayout(*map(unwrap, args)))
    # The application's settings file (qSlicerCoreApplication: organization/application settings)
    qt.QSettings = lambda *args: QtCore.QSettings(settings_path, QtCore.QSettings.IniFormat)
    return qt


# ----------------------------------------------------------------------------------- slicer.app
class Application:
    """The few qSlicerApplication members the module and slicer.util reach
    (Base/QTGUI/qSlicerApplication.h, Base/QTCore/qSlicerCoreApplication.h)."""
    applicationName = "Slicer"

    def __init__(self):
        self.override_cursors = 0

    def testingEnabled(self):  # qSlicerCoreApplication::testingEnabled: dialogs are shown (logged here)
        return False

    def topLevelWidgets(self):  # no qSlicerMainWindow: slicer.util.mainWindow() is None
        return []

    def setOverrideCursor(self, cursor):
        self.override_cursors += 1

    def restoreOverrideCursor(self):
        self.override_cursors -= 1

    def processEvents(self):
        QtWidgets.QApplication.processEvents()

    def startupEnvironment(self):  # qSlicerCoreApplication::startupEnvironment: a QProcessEnvironment
        env = QtCore.QProcessEnvironment()
        for key, value in os.environ.items():
            env.insert(key, value)
        return env

    def translate(self, context, text):  # QCoreApplication::translate: no translation loaded
        return text

    def layoutManager(self):  # no views
        return None

    def moduleManager(self):
        return wrap(QtCore.QObject())


# ------------------------------------------------------------ slicer.ScriptedLoadableModule
def make_scripted_loadable_module() -> types.ModuleType:
    """Base/Python/slicer/ScriptedLoadableModule.py, the parts a module's classes inherit."""
    import unittest
    m = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:  # :17-52
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__

    class ScriptedLoadableModuleWidget:  # :88-111: a qMRMLWidget with a QVBoxLayout when no parent
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__[:-6]
            self.developerMode = False
            if not parent:
                self.parent = wrap(qMRMLWidget())
                self.parent.setLayout(QtWidgets.QVBoxLayout())
                self.parent.setMRMLScene(slicer.mrmlScene)
            else:
                self.parent = parent
            self.layout = self.parent.layout()
            self.parent.isEntered = False  # qSlicerAbstractModuleWidget::isEntered, set by the module panel
            if not parent:
                self.setup()
                self.parent.show()

        def setup(self):  # :232 (the developer section is not shown: developer mode off)
            pass

        def cleanup(self):  # :117
            pass

    class ScriptedLoadableModuleLogic:  # :296-365
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__[:-5]
            self.isSingletonParameterNode = True

        def getParameterNode(self):  # :310-330
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                if node.GetAttribute("ModuleName") != self.moduleName:
                    node.SetAttribute("ModuleName", self.moduleName)
                return node
            return slicer.mrmlScene.AddNode(self.createParameterNode())

        def createParameterNode(self):  # :345-365
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):  # :367-
        def delayDisplay(self, message, requestedDelay=None, msec=None):  # :389 (logs the message)
            self.messages = getattr(self, "messages", []) + [message]

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(m, cls.__name__, cls)
    return m


# ---------------------------------------------------------------- slicer.parameterNodeWrapper
@dataclass
class Choice:  # Base/Python/slicer/parameterNodeWrapper/validators.py (Choice)
    choices: list


@dataclass
class WithinRange:  # validators.py (WithinRange)
    minimum: float
    maximum: float


def _split(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    return annotation, []


def _first(extras, kind):
    return next((e for e in extras if isinstance(e, kind)), None)


class _Connector:
    """guiConnectors.py GuiConnector (:53-111): read/write the widget, call back on change; the
    widget classes are compared with ``type(widget) ==`` as each ``canRepresent`` does."""

    def __init__(self, widget, base, extras):
        self.widget, self.base, self.callback = widget, base, None
        kind = type(unwrap(widget)).__name__
        self.kind = kind
        if kind == "qMRMLNodeComboBox":      # :745-775, the annotation overwrites nodeTypes
            widget.nodeTypes = [base.__name__]
            self.signal = "currentNodeChanged"
        elif kind == "QComboBox":            # :418-462, refilled with the Choice values
            choice = _first(extras, Choice)
            if choice is None:
                raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
            self.choices = choice.choices
            widget.clear()
            for c in self.choices:
                widget.addItem(str(c))
            self.signal = "currentIndexChanged"
        elif kind == "QCheckBox":            # :162-193
            self.signal = "stateChanged"
        elif kind == "QDoubleSpinBox":       # :340-416
            bounds = _first(extras, WithinRange)
            if bounds is not None:
                widget.minimum, widget.maximum = bounds.minimum, bounds.maximum
            self.signal = "valueChanged"
        else:
            raise RuntimeError(f"no GUI connector for {kind} with {base}")
        getattr(unwrap(widget), self.signal).connect(self.changed)

    def changed(self, *args):
        if self.callback:
            self.callback()

    def read(self):
        w = self.widget
        return {"qMRMLNodeComboBox": lambda: w.currentNode(), "QComboBox": lambda: self.choices[w.currentIndex],
                "QCheckBox": lambda: w.checked, "QDoubleSpinBox": lambda: w.value}[self.kind]()

    def write(self, value):
        w = self.widget
        if self.kind == "qMRMLNodeComboBox":
            w.setCurrentNode(value)
        elif self.kind == "QComboBox":
            w.currentIndex = self.choices.index(value)
        elif self.kind == "QCheckBox":
            w.checked = value
        else:
            w.value = value

    def disconnect(self):
        self.callback = None
        getattr(unwrap(self.widget), self.signal).disconnect(self.changed)


# Slicer 5.10's _disconnectGui (wrapper.py:256-260 at v5.10.0) does not remove the ModifiedEvent
# observer that _connectParametersToGui adds (:212): every connectGui call leaks one there. Calls are
# counted so that a test can hold the module to one call per parameter node.
CONNECT_GUI_CALLS: list = []


def parameterNodeWrapper(cls):
    """wrapper.py:305-361: a typed view of a vtkMRMLScriptedModuleNode. Node fields are node
    references, the others parameters as text (serializers.py:236-412); defaults written on
    first use (:130-145); connectGui binds the widgets whose SlicerParameterName is a field
    (:243-256), both ways (:173-215); disconnectGui(tag) unbinds (:258-266)."""
    fields = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name, None) for name in fields}

    def is_node(base):
        return isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode)

    def read(self, name):
        base, _ = _split(fields[name])
        node = self.parameterNode
        if is_node(base):
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        return (text == "True") if base is bool else base(text)

    def write(self, name, value):
        base, extras = _split(fields[name])
        node = self.parameterNode
        if is_node(base):
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            return
        choice, bounds = _first(extras, Choice), _first(extras, WithinRange)
        if choice is not None and value not in choice.choices:
            raise ValueError(f"{value!r} is not one of {choice.choices}")
        if bounds is not None and not bounds.minimum <= value <= bounds.maximum:
            raise ValueError(f"{value!r} is outside [{bounds.minimum}, {bounds.maximum}]")
        node.SetParameter(name, str(value))

    def init(self, parameterNode):
        self.parameterNode, self._guis, self._next_tag, self._updating = parameterNode, {}, 0, False
        for name in fields:
            if not (parameterNode.GetParameterNames() and name in parameterNode.GetParameterNames()):
                write(self, name, defaults[name])

    def update_gui(self, caller=None, event=None):
        if self._updating:
            return
        self._updating = True
        try:
            for mapping in self._guis.values():
                for name, connector in mapping["connectors"].items():
                    connector.write(read(self, name))
        finally:
            self._updating = False

    def connectGui(self, gui):
        CONNECT_GUI_CALLS.append(self.parameterNode)  # Slicer 5.10 leaks an observer per call (see below)
        mapping = {}
        for widget in gui.__dict__.values():
            name = widget.property("SlicerParameterName")
            if name:
                base, extras = _split(fields[name])
                connector = _Connector(widget, base, extras)
                connector.write(read(self, name))
                connector.callback = (lambda n=name, c=connector: None if self._updating else write(self, n, c.read()))
                mapping[name] = connector
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        observer = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, update_gui.__get__(self))
        self._guis[tag] = {"connectors": mapping, "observer": observer}
        return tag

    def disconnectGui(self, tag):
        entry = self._guis.pop(tag, None)
        if entry is not None:
            for connector in entry["connectors"].values():
                connector.disconnect()
            self.parameterNode.RemoveObserver(entry["observer"])

    for name in fields:
        setattr(cls, name, property(lambda self, n=name: read(self, n), lambda self, v, n=name: write(self, n, v)))
    cls.__init__, cls.connectGui, cls.disconnectGui = init, connectGui, disconnectGui
    cls.AddObserver = (lambda self, event, callback, priority=0.0:
                       self.parameterNode.AddObserver(event, callback, priority))
    cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    return cls


def make_i18n_module() -> types.ModuleType:
    """Base/Python/slicer/i18n.py (:9 translate, :52 tr): through slicer.app.translate."""
    m = types.ModuleType("slicer.i18n")
    m.translate = lambda context, text: slicer.app.translate(context, text)
    m.tr = lambda text: slicer.app.translate("UniversalSegmentation", text)
    return m


def make_parameter_node_wrapper_module() -> types.ModuleType:
    m = types.ModuleType("slicer.parameterNodeWrapper")
    m.parameterNodeWrapper, m.Choice, m.WithinRange = parameterNodeWrapper, Choice, WithinRange
    return m


# ------------------------------------------------------------------------------------ install
def install(settings_path: str, monkeypatch) -> types.SimpleNamespace:
    """Put qt, ctk, slicer.app, slicer.ScriptedLoadableModule and slicer.parameterNodeWrapper in
    place (undone by ``monkeypatch``); returns the QApplication and the recorders."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    qt = make_qt_module(settings_path)
    ctk = types.ModuleType("ctk")
    for cls in (ctkCollapsibleButton, ctkPathLineEdit):
        setattr(ctk, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", make_scripted_loadable_module())
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", make_parameter_node_wrapper_module())
    monkeypatch.setitem(sys.modules, "slicer.i18n", make_i18n_module())
    application = Application()
    monkeypatch.setattr(slicer, "app", application, raising=False)
    monkeypatch.setattr(slicer, "qMRMLWidget", qMRMLWidget, raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", qMRMLNodeComboBox, raising=False)
    errors, layers = [], []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: layers.append(kw))
    questions = []  # confirmYesNoDisplay / confirmOkCancelDisplay: the user answers Yes / OK
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kw: questions.append(text) or True)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: questions.append(text) or True)
    QFileDialog.answers = []
    return types.SimpleNamespace(app=app, qt=qt, application=application, errors=errors, layers=layers,
                                 questions=questions, file_answers=QFileDialog.answers)
