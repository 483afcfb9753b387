"""UniversalSeg 3D Slicer module: Module / Widget / Logic / Test over the Slicer-free core.

The work happens in the core package ``UniversalSeg`` (run in a background ``PythonSlicer``
process) and in ``UniversalSegLib`` (command lines, process runner, MRML import); this file only
binds the panel to them.
"""
import os
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from UniversalSegLib import models
from UniversalSegLib.command import child_environment, filter_tasks, guess_modality, python_executable
from UniversalSegLib.logic import UniversalSegLogic as CoreLogic

# NB: inside Slicer the name "UniversalSeg" is this file, so the core package is never imported
# here; it runs in child PythonSlicer processes (UniversalSegLib.models explains).
_here = Path(__file__).resolve().parent


class UniversalSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        super().__init__(parent)
        parent.title = "UniversalSeg"
        parent.categories = ["Segmentation"]
        parent.contributors = ["UniversalSeg developers"]
        parent.helpText = ("One universal model segments many structures of CT, MR and PET volumes in a "
                           "single pass, steered by the modality and the structures you pick.")
        parent.acknowledgementText = "Methods: Hermes, U-Harmony, 3D U2-Net, CateNorm, MS-Net (see README)."


@parameterNodeWrapper
class UniversalSegParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    roi: slicer.vtkMRMLMarkupsROINode
    modality: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    precision: Annotated[str, Choice(["auto", "fp32", "bf16", "fp16"])] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.5
    fast: bool = False
    keepEdited: bool = True


class UniversalSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def setup(self):
        super().setup()
        ui_path = next(p for p in (Path(self.resourcePath("UI/UniversalSeg.ui")),
                                   _here.parent / "Resources" / "UI" / "UniversalSeg.ui") if p.exists())
        self.layout.addWidget(slicer.util.loadUI(str(ui_path)))
        self.ui = slicer.util.childWidgetVariables(self.layout.itemAt(0).widget())
        self.layout.itemAt(0).widget().setMRMLScene(slicer.mrmlScene)
        self.logic, self.job, self.training = UniversalSegLogic(), None, None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)
        for combo, values in ((self.ui.deviceSelector, ["auto", "cpu", "cuda"]),
                              (self.ui.precisionSelector, ["auto", "fp32", "bf16", "fp16"]),
                              (self.ui.trainConfigSelector, ["small", "base", "large"])):
            combo.addItems(values)
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription()
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.importModelButton.connect("clicked()", self.onImportModel)
        self.ui.modelFolderButton.connect("clicked()", self.onModelFolder)
        self.ui.taskFilterLineEdit.connect("textChanged(QString)", lambda t: self.showTasks())
        self.ui.taskListWidget.connect("itemChanged(QListWidgetItem*)", self.onTaskToggled)
        self.ui.selectAllTasksButton.connect("clicked()", lambda: self.checkAll(True))
        self.ui.selectNoTasksButton.connect("clicked()", lambda: self.checkAll(False))
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda n: self.preselectModality())
        self.ui.applyButton.connect("clicked()", self.onApply)
        self.ui.trainButton.connect("clicked()", self.onTrain)
        self._parameterNode = self.logic.getParameterNode()
        self._parameterNode.connectGui(self.ui)
        self.tasks, self.checked = [], set()
        self.refreshModels()

    # --- model, modality and task list --------------------------------------------------------
    def refreshModels(self, select: Optional[str] = None):
        self.ui.modelSelector.clear()
        for label, path in self.logic.availableModels():
            self.ui.modelSelector.addItem(label, path)
        if select:
            self.ui.modelSelector.setCurrentIndex(max(0, self.ui.modelSelector.findData(select)))

    def onModelChanged(self, index):
        path = self.ui.modelSelector.itemData(index)
        self.tasks, meta = [], None
        if path:
            try:
                meta = CoreLogic.model_metadata(path)
            except Exception as exc:
                self.ui.statusLabel.text = f"Cannot read the model: {exc}"
        self.ui.modalitySelector.clear()
        if meta:
            self.tasks = meta["tasks"]
            self.checked = {t["name"] for t in self.tasks}
            self.ui.modalitySelector.addItems(meta["modalities"])
            self.preselectModality()
        self.showTasks()

    def preselectModality(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        known = [self.ui.modalitySelector.itemText(i) for i in range(self.ui.modalitySelector.count)]
        if volume is not None and known:
            guess = guess_modality(known, self.logic.dicomModality(volume), volume.GetName())
            if guess:
                self.ui.modalitySelector.setCurrentText(guess)
        self.updateApply()

    def showTasks(self):
        blocked = self.ui.taskListWidget.blockSignals(True)  # repopulating is not the user toggling
        self.ui.taskListWidget.clear()
        for t in filter_tasks(self.tasks, self.ui.taskFilterLineEdit.text):
            item = qt.QListWidgetItem(t.get("display_name", t["name"]))
            item.setData(qt.Qt.UserRole, t["name"])
            item.setForeground(qt.QBrush(qt.QColor(*t["color"])))
            item.setCheckState(qt.Qt.Checked if t["name"] in self.checked else qt.Qt.Unchecked)
            self.ui.taskListWidget.addItem(item)
        self.ui.taskListWidget.blockSignals(blocked)
        self.updateApply()

    def onTaskToggled(self, item):
        name = item.data(qt.Qt.UserRole)
        (self.checked.add if item.checkState() == qt.Qt.Checked else self.checked.discard)(name)
        self.updateApply()

    def checkAll(self, on):
        visible = [self.ui.taskListWidget.item(i).data(qt.Qt.UserRole) for i in range(self.ui.taskListWidget.count)]
        self.checked = (self.checked | set(visible)) if on else (self.checked - set(visible))
        self.showTasks()

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import model", "", "Model package (*.zip)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not import the model.", waitCursor=True):
                self.refreshModels(select=self.logic.importModel(path))

    def onModelFolder(self):
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model package folder")
        if path:
            self.logic.addModelFolder(path)
            self.refreshModels(select=path)

    # --- run / cancel ------------------------------------------------------------------------
    def updateApply(self):
        if self.job is None:
            p = self._parameterNode
            ready = bool(p.inputVolume and self.ui.modelSelector.currentData and self.checked and
                         self.ui.modalitySelector.currentText)
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.text = "Apply"

    def onApply(self):
        if self.job is not None:
            self.job.cancel()
            return
        if not self.logic.ensureDependencies():
            return
        p = self._parameterNode
        if p.outputSegmentation is None:
            p.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                      f"{p.inputVolume.GetName()} UniversalSeg")
        roi = self.logic.roiBounds(p.roi) if p.roi else None
        tasks = [t["name"] for t in self.tasks if t["name"] in self.checked]
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            self.job = self.logic.core.start(p.inputVolume, self.ui.modelSelector.currentData,
                                             self.ui.modalitySelector.currentText, tasks, p.outputSegmentation,
                                             device=p.device, precision=p.precision, overlap=p.overlap,
                                             fast=p.fast, roi=roi, keep_edited=p.keepEdited)
            self.ui.applyButton.text = "Cancel"
            self.ui.logTextEdit.clear()
            self.timer.start()

    def onTimer(self):
        job = self.job
        finished = job.poll()
        self.ui.progressBar.value = int(100 * job.fraction)
        self.ui.statusLabel.text = f"{job.stage}: {job.message}"
        for line in job.log:
            self.ui.logTextEdit.appendPlainText(line)
        job.log.clear()
        if finished:
            self.timer.stop()
            self.ui.timingLabel.text = f"Last run: {job.elapsed:.1f} s"
            if job.succeeded:
                p = self._parameterNode
                p.outputSegmentation.CreateClosedSurfaceRepresentation()
                slicer.util.setSliceViewerLayers(background=p.inputVolume)
            self.job = None
            self.updateApply()

    def onTrain(self):
        if self.training is not None and self.training.running:
            self.training.cancel()
            return
        out = self.ui.trainOutputPathLineEdit.currentPath
        self.training = self.logic.core.start_training(self.ui.catalogPathLineEdit.currentPath,
                                                       self.ui.trainConfigSelector.currentText, out)
        self.ui.trainButton.text = "Stop training"
        self.trainTimer = qt.QTimer()
        self.trainTimer.connect("timeout()", lambda: self.onTrainingTimer(out))
        self.trainTimer.start(2000)

    def onTrainingTimer(self, out):
        if self.training.running:
            self.ui.trainStatusLabel.text = (self.training.stderr_lines[-1] if self.training.stderr_lines else "training...")
            return
        self.trainTimer.stop()
        self.ui.trainButton.text = "Start training in the background"
        model = Path(out) / "model"
        if self.training.returncode == 0 and model.exists():
            self.logic.addModelFolder(str(model))
            self.refreshModels(select=str(model))
            self.ui.trainStatusLabel.text = f"Done: {model} is in the model list."
        else:
            self.ui.trainStatusLabel.text = "Training stopped: " + "\n".join(self.training.stderr_lines[-3:])

    def cleanup(self):
        if self.job is not None:
            self.job.cancel()


class UniversalSegLogic(ScriptedLoadableModuleLogic):
    """Slicer-app glue (settings, dialogs, dependencies) around ``UniversalSegLib.logic``."""

    def __init__(self):
        super().__init__()
        self.core = CoreLogic()

    def getParameterNode(self):
        return UniversalSegParameterNode(super().getParameterNode())

    def availableModels(self):
        resources = next(p for p in (_here / "Resources", _here.parent / "Resources") if p.exists())
        found = [(f"{p.stem} (imported)", str(p)) for p in models.cached_packages()]
        found += [(f"{Path(f).parent.name}/{Path(f).name} (folder)", f) for f in self.modelFolders()]
        found += [(f"{e['id']} {e['version']} (download)", e["id"]) for e in models.catalog_entries(resources)]
        return found

    def modelFolders(self):
        return [f for f in slicer.app.settings().value("UniversalSeg/ModelFolders", []) or [] if os.path.isdir(f)]

    def addModelFolder(self, folder):
        folders = [f for f in self.modelFolders() if f != folder] + [folder]
        slicer.app.settings().setValue("UniversalSeg/ModelFolders", folders)

    def importModel(self, path):
        return str(models.import_package(path))

    @staticmethod
    def dicomModality(volume):
        uid = volume.GetAttribute("DICOM.instanceUIDs")
        if uid and hasattr(slicer, "dicomDatabase") and slicer.dicomDatabase:
            return slicer.dicomDatabase.instanceValue(uid.split()[0], "0008,0060") or ""
        return ""

    @staticmethod
    def roiBounds(roi):
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)
        return bounds

    @staticmethod
    def deviceDescription():
        try:
            import torch
            if torch.cuda.is_available():
                return f"GPU: {torch.cuda.get_device_name(0)}"
            return "no CUDA GPU found: CPU"
        except ImportError:
            return "PyTorch not installed yet"

    def ensureDependencies(self):
        from UniversalSegLib.dependencies import ensure_dependencies
        with slicer.util.tryWithErrorDisplay("Installing dependencies failed.", waitCursor=True):
            return ensure_dependencies(lambda message: slicer.util.confirmOkCancelDisplay(message))
        return False


class UniversalSegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a small volume, a tiny random model on CPU, names and geometry."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_segment_names_and_geometry()

    def test_segment_names_and_geometry(self):
        import subprocess
        import tempfile

        import numpy as np

        self.delayDisplay("Tiny random model (written by the core in a child process)")
        model = Path(tempfile.mkdtemp()) / "tiny"
        subprocess.run([python_executable(), "-c",
                        "import sys; from UniversalSeg.model_package import save_package;"
                        "from UniversalSeg.networks import ModelConfig, UniversalSegNet;"
                        "from UniversalSeg.data.terminology import task_info;"
                        "from UniversalSeg.data.modalities import KNOWN_MODALITIES;"
                        "c = ModelConfig.from_dict({'tasks': ['liver', 'spleen'], 'modalities': ['CT'],"
                        " 'base_width': 4, 'fusion': {'head_dim': 4, 'modality_tokens': 2}});"
                        "save_package(sys.argv[1], UniversalSegNet(c), [task_info(t) for t in c.tasks],"
                        " dict(KNOWN_MODALITIES), (3.0, 3.0, 3.0), (32, 32, 32))", str(model)],
                       check=True, env=child_environment())
        self.delayDisplay("48^3 volume with an oblique IJK-to-RAS, segmented on the CPU")
        volume = slicer.util.addVolumeFromArray((np.random.rand(48, 48, 48) * 400 - 100).astype(np.float32))
        m = vtk.vtkMatrix4x4()
        for r, c, v in ((0, 0, -2.5), (1, 1, 0.0), (1, 2, 3.0), (2, 2, 0.0), (2, 1, 2.0), (0, 3, 40.0)):
            m.SetElement(r, c, v)
        volume.SetIJKToRASMatrix(m)
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        job = CoreLogic().run(volume, str(model), "CT", ["liver", "spleen"], seg, device="cpu")
        self.assertTrue(job.succeeded, job.message)
        names = [seg.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(seg.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, ["Liver", "Spleen"])
        labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume)
        self.assertEqual(labelmap.shape, slicer.util.arrayFromVolume(volume).shape)
        self.delayDisplay("Test passed")
