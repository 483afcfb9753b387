"""UniversalSeg 3D Slicer module: a thin binding of the panel to ``UniversalSegmentationLib`` (tested
against slicer-core). Named ``UniversalSegmentation`` so that its ``sys.modules`` entry never shadows
the core package ``UniversalSeg``, which runs in background processes. Nothing here imports torch."""
import logging
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from UniversalSegmentationLib import dependencies
from UniversalSegmentationLib.command import settings_list
from UniversalSegmentationLib.job_slots import JobSlots
from UniversalSegmentationLib.logic import DownloadJob, PredictionJob, TrainingJob, UniversalSegLogic, roi_bounds
from UniversalSegmentationLib.panel_state import DEVICES, PanelState, first_input_volume, offer_devices, remember
from UniversalSegmentationLib.paths import resources_dir

FOLDERS_KEY = "UniversalSeg/ModelFolders"


class UniversalSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        super().__init__(parent)
        parent.title = _("UniversalSeg")
        parent.categories, parent.contributors = [_("Segmentation")], ["UniversalSeg developers"]
        parent.helpText = _("One universal model segments many structures of CT, MR and PET in one pass. <a href="
                            "'https://github.com/UniversalSeg/UniversalSeg/blob/main/Resources/Docs/slicer.md'>Guide</a>")
        parent.acknowledgementText = _("Methods: Hermes, U-Harmony, 3D U2-Net, CateNorm, MS-Net (see README).")


@parameterNodeWrapper
class UniversalSegmentationParameterNode:
    # Bound to the .ui. Model, modality and structure lists change per model: never bound (Slicer's
    # GUI connector refills a bound QComboBox with fixed Choice values).
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    roi: slicer.vtkMRMLMarkupsROINode
    device: Annotated[str, Choice(list(DEVICES))] = "auto"  # "mps" offered only where found: offer_devices
    precision: Annotated[str, Choice(["auto", "fp32", "bf16", "fp16"])] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.5
    fast: bool = False
    keepEdited: bool = True
    largestComponent: bool = False


class UniversalSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None
        self.jobs, self.state = JobSlots(), PanelState()
        self.devicesKnown = self.mps = False  # the probe answered (a failed probe is asked again on enter)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resources_dir() / "UI" / "UniversalSegmentation.ui"))
        self.layout.addWidget(uiWidget)  # keep uiWidget: in developer mode a box precedes it
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UniversalSegmentationLogic()
        self.ui.trainConfigSelector.addItems(["small", "base", "large"])
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for widget, signal, slot in (
                (self.ui.modelSelector, "currentIndexChanged(int)", self.onModelChanged),
                (self.ui.modalitySelector, "currentIndexChanged(int)", lambda i: self.updateButtons()),
                (self.ui.importModelButton, "clicked()", self.onImportModel),
                (self.ui.modelFolderButton, "clicked()", lambda: self.addModelFolder(
                    qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Model package folder")))),
                (self.ui.taskFilterLineEdit, "textChanged(QString)", lambda t: self.showTasks()),
                (self.ui.taskListWidget, "itemChanged(QListWidgetItem*)", self.onTaskToggled),
                (self.ui.selectAllTasksButton, "clicked()", lambda: self.checkVisible(True)),
                (self.ui.selectNoTasksButton, "clicked()", lambda: self.checkVisible(False)),
                (self.ui.inputVolumeSelector, "currentNodeChanged(vtkMRMLNode*)", lambda n: self.preselectModality()),
                (self.ui.outputSegmentationSelector, "currentNodeChanged(vtkMRMLNode*)", self.ui.show3DButton.setSegmentationNode),
                (self.ui.applyButton, "clicked()", self.onApply),
                (self.ui.undoButton, "clicked()", self.onUndo),
                (self.ui.trainButton, "clicked()", self.onTrain),
                (self.ui.addCaseButton, "clicked()", self.onAddCase),
                (self.ui.finetuneButton, "clicked()", self.onFinetune),
                (self.ui.refineCollapsibleButton, "contentsCollapsed(bool)", lambda c: c or self.fillRefineSegments()),
                (self.ui.refineButton, "clicked()", self.onRefine),
                (self.ui.positiveClickButton, "clicked()", lambda: self.logic.core.refinement.place(True)),
                (self.ui.negativeClickButton, "clicked()", lambda: self.logic.core.refinement.place(False)),
                (self.ui.undoClickButton, "clicked()", lambda: self.logic.core.refinement.undo()),
                (self.ui.discardRefineButton, "clicked()", lambda: self.onRefine(accept=False))):
            widget.connect(signal, slot)
        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self):  # the application closes: no child process outlives it
        self.timer.stop()
        self.jobs.cancel_all("Slicer is closing")
        self.logic.core.stop_worker()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        if not self.devicesKnown and self.jobs["probe"] is None:  # torch is asked in a child process
            self.startJob("probe", self.logic.core.start_device_probe())

    def exit(self):  # the GUI stays bound: a run may end meanwhile, and Slicer 5.10's disconnectGui leaves
        pass         # connectGui's observer on the node (one more per enter: parameterNodeWrapper/wrapper.py)

    def onSceneStartClose(self, caller, event):
        if isinstance(self.jobs["run"], PredictionJob):  # a download or import goes on
            self.stopJob("run", _("the scene was closed; the segmentation was stopped"), self.ui.statusLabel)
        self.logic.core.last_run = None
        self.logic.core.end_refinement(accept=True)  # before its nodes go
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = first_input_volume(slicer.mrmlScene)  # no labelmap

    def setParameterNode(self, parameterNode):
        if parameterNode and self._parameterNode and parameterNode.parameterNode is self._parameterNode.parameterNode:
            return self.updateButtons()  # the same node (re-entering): already bound
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode, self._parameterNodeGuiTag = parameterNode, None
        if parameterNode:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)  # refills the device list
            offer_devices(self.ui.deviceSelector, parameterNode, self.mps)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    def refreshModels(self, select=None):
        index = self.state.load_models(settings_list(qt.QSettings().value(FOLDERS_KEY)), select)
        self.ui.modelSelector.clear()  # each change of the current item calls onModelChanged
        self.ui.modelSelector.addItems([c.label for c in self.state.choices])
        self.ui.modelSelector.setCurrentIndex(index)

    def onModelChanged(self, index):
        self.state.select_model(index)
        self.ui.statusLabel.text, self.ui.modelSelector.toolTip = self.state.error, self.state.card  # card: use, limits
        self.ui.modalitySelector.clear()
        self.ui.modalitySelector.addItems(self.state.modalities)
        self.showTasks()
        self.preselectModality()

    def preselectModality(self):
        guess = self.state.modality_for(self.ui.inputVolumeSelector.currentNode(), getattr(slicer, "dicomDatabase", None))
        if guess:
            self.ui.modalitySelector.setCurrentText(guess)
        self.updateButtons()

    def showTasks(self):
        blocked = self.ui.taskListWidget.blockSignals(True)  # refilling is not the user toggling
        self.ui.taskListWidget.clear()
        for t in self.state.visible(self.ui.taskFilterLineEdit.text):
            item = qt.QListWidgetItem(t.get("display_name", t["name"]))
            item.setData(qt.Qt.UserRole, t["name"])
            swatch = qt.QPixmap(12, 12)
            swatch.fill(qt.QColor(*t["color"]))
            item.setIcon(qt.QIcon(swatch))  # the segment's colour, as Segment Editor's list shows it
            item.setCheckState(qt.Qt.Checked if t["name"] in self.state.checked else qt.Qt.Unchecked)
            self.ui.taskListWidget.addItem(item)
        self.ui.taskListWidget.blockSignals(blocked)
        self.updateButtons()

    def onTaskToggled(self, item):
        self.state.toggle(item.data(qt.Qt.UserRole), item.checkState() == qt.Qt.Checked)
        self.updateButtons()

    def checkVisible(self, on):
        self.state.check_visible(self.ui.taskFilterLineEdit.text, on)
        self.showTasks()

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import model"), "", _("Model package (*.zip)"))
        if path and dependencies.ensure_in_slicer():
            self.startJob("run", self.logic.core.start_import(path))

    def addModelFolder(self, path):
        if path:
            qt.QSettings().setValue(FOLDERS_KEY, remember(settings_list(qt.QSettings().value(FOLDERS_KEY)), path))
            self.refreshModels(select=path)

    def updateButtons(self, caller=None, event=None):
        p, running = self._parameterNode, self.jobs["run"] is not None
        self.ui.overlapSpinBox.enabled = not (p and p.fast)  # Fast mode sets the overlap (0.25)
        action = (_("Cancel"), True) if running else self.state.action(p and p.inputVolume, self.ui.modalitySelector.currentText)
        self.ui.applyButton.text, self.ui.applyButton.enabled = action
        self.ui.undoButton.enabled = not running and self.logic.core.last_run is not None
        self.ui.trainButton.text = _("Stop training") if self.jobs["train"] else _("Start training in the background")
        self.ui.finetuneButton.text = _("Stop fine-tuning") if self.jobs["finetune"] else \
            _("Fine-tune the selected model in the background")
        self.ui.addCaseButton.enabled = bool(p and p.inputVolume and p.outputSegmentation and not running)
        refining = self.logic.core.refinement is not None
        self.ui.refineButton.text = _("Accept (keep the refined segment)") if refining else _("Start refining")
        for button in (self.ui.positiveClickButton, self.ui.negativeClickButton, self.ui.undoClickButton,
                       self.ui.discardRefineButton):
            button.enabled = refining
        for button, positive in ((self.ui.positiveClickButton, True), (self.ui.negativeClickButton, False)):
            button.checked = refining and self.logic.core.refinement.placing(positive)  # place mode shown

    def fillRefineSegments(self):  # the user's choice stays chosen (by segment ID) when the list is refilled
        chosen = self.ui.refineSegmentSelector.currentData
        self.ui.refineSegmentSelector.clear()
        for sid, task, label in self.state.refinable_segments(self._parameterNode and self._parameterNode.outputSegmentation):
            self.ui.refineSegmentSelector.addItem(label, sid)
        self.ui.refineSegmentSelector.setCurrentIndex(max(0, self.ui.refineSegmentSelector.findData(chosen)))

    def onRefine(self, accept=True):  # start refining the chosen segment, or end it (accept / discard)
        core, p, modality = self.logic.core, self._parameterNode, self.ui.modalitySelector.currentText
        if core.refinement is not None:
            core.end_refinement(accept)
            self.ui.refineStatusLabel.text = _("Kept the refined segment.") if accept else _("Put the segment back.")
        elif dependencies.ensure_in_slicer():
            self.fillRefineSegments()
            problem = self.state.refine_problem(p.outputSegmentation, modality)
            self.ui.refineStatusLabel.text = problem
            with slicer.util.tryWithErrorDisplay(_("Could not start refining."), waitCursor=True):
                if not problem:
                    sid = self.ui.refineSegmentSelector.currentData
                    task = dict((s, t) for s, t, _ in self.state.refinable_segments(p.outputSegmentation))[sid]
                    core.start_refinement(p.inputVolume, p.outputSegmentation, sid, task, modality,
                                          self.state.choice.spec, device=p.device)
                    self.timer.start()
        self.updateButtons()

    def onApply(self):
        if self.jobs["run"] is not None:
            self.stopJob("run", _("cancelled"), self.ui.statusLabel)
            return
        if not dependencies.ensure_in_slicer():
            return
        p, choice = self._parameterNode, self.state.choice
        with slicer.util.tryWithErrorDisplay(_("Could not start."), waitCursor=True):
            self.startJob("run", self.logic.core.start_download(choice.spec) if choice.needs_download else
                          self.logic.core.start(
                              p.inputVolume, choice.spec, self.ui.modalitySelector.currentText,
                              self.state.selected_tasks(), p.outputSegmentation, device=p.device,
                              precision=p.precision, overlap=p.overlap, fast=p.fast, keep_edited=p.keepEdited,
                              roi=roi_bounds(p.roi), largest_component=p.largestComponent))
            self.ui.logTextEdit.clear()

    def onTrain(self):
        if self.jobs["train"] is not None:
            self.stopJob("train", "training stopped; continue it with 'Resume'", self.ui.trainStatusLabel)
        elif dependencies.ensure_in_slicer():
            with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
                self.startJob("train", self.logic.core.start_training(
                    self.ui.catalogPathLineEdit.currentPath, self.ui.trainConfigSelector.currentText,
                    self.ui.trainOutputPathLineEdit.currentPath, resume=self.ui.trainResumeCheckBox.checked))

    def onAddCase(self):  # the volume + its corrected segments -> the user's training set
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not add the case."), waitCursor=True):
            self.ui.finetuneStatusLabel.text = self.state.add_case(
                p.inputVolume, p.outputSegmentation, self.ui.trainingSetPathLineEdit.currentPath,
                self.ui.modalitySelector.currentText, self.ui.newStructuresCheckBox.checked,
                slicer.util.confirmYesNoDisplay)

    def onFinetune(self):  # a new version of the selected model, next to it in the list when done
        if self.jobs["finetune"] is not None:
            self.stopJob("finetune", "fine-tuning stopped; the model is unchanged", self.ui.finetuneStatusLabel)
        elif dependencies.ensure_in_slicer():
            with slicer.util.tryWithErrorDisplay(_("Could not start fine-tuning."), waitCursor=True):
                self.startJob("finetune", self.logic.core.start_finetune(
                    self.state.finetune_spec(), self.ui.trainingSetPathLineEdit.currentPath,
                    self.ui.finetuneModeSelector.currentText))

    def onUndo(self):
        with slicer.util.tryWithErrorDisplay(_("Could not undo the last run."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.core.undo_last_run()
            self.updateButtons()

    def startJob(self, slot, job):
        self.jobs.start(slot, job)
        self.updateButtons()
        self.timer.start()

    def stopJob(self, slot, reason, label):
        for job in self.jobs.cancel(slot, reason):
            label.text = job.message
        self.updateButtons()

    def onTimer(self):  # an error in showing one job ends that job only (never hours of training beside it)
        for slot, job, finished in self.jobs.poll():
            self.contained(f"the {slot} job", lambda: self.jobs.cancel(slot, _("stopped after an error")),
                           lambda: self.showJob(slot, job, finished))
        refinement = self.logic.core.refinement
        if refinement is not None:  # the click worker's replies: each applied to the segment
            self.contained("refining", lambda: self.logic.core.end_refinement(accept=True), lambda: setattr(
                self.ui.refineStatusLabel, "text", "; ".join(refinement.poll()) or refinement.status))
        if self.jobs.idle and self.logic.core.refinement is None:
            self.timer.stop()
        self.updateButtons()

    def contained(self, what, stop, call):
        try:
            call()
        except Exception as exc:
            logging.exception("UniversalSeg: %s failed", what)
            stop()
            slicer.util.errorDisplay(_("UniversalSeg stopped {what}: {error}").format(what=what, error=exc))

    def showJob(self, slot, job, finished):
        label = {"run": self.ui.statusLabel, "train": self.ui.trainStatusLabel, "finetune": self.ui.finetuneStatusLabel,
                 "probe": self.ui.deviceInfoLabel}[slot]
        if slot == "probe" and finished:
            self.devicesKnown, self.mps = job.succeeded, job.mps
            offer_devices(self.ui.deviceSelector, self._parameterNode, self.mps)
        if finished or slot != "probe":  # the device label keeps "detecting..." until the answer
            label.text = f"{job.stage}: {job.message}" if slot == "run" and not finished else job.message
        if slot == "run":
            self.ui.progressBar.value = int(100 * job.fraction)
            for line in job.drain_log():
                self.ui.logTextEdit.appendPlainText(line)
        if not (finished and job.succeeded):
            return
        if isinstance(job, PredictionJob):  # also when the user is in another module meanwhile
            (self._parameterNode or self.logic.getParameterNode()).outputSegmentation = job.segmentation_node
            slicer.util.setSliceViewerLayers(background=job.volume_node)
            self.fillRefineSegments()
        elif isinstance(job, TrainingJob):
            self.addModelFolder(str(job.model))
        elif isinstance(job, DownloadJob):
            self.refreshModels(select=job.path)


class UniversalSegmentationLogic(ScriptedLoadableModuleLogic):  # behaviour: UniversalSegmentationLib.logic
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.core = UniversalSegLogic(base_env=slicer.util.startupEnvironment())

    def getParameterNode(self):
        return UniversalSegmentationParameterNode(super().getParameterNode())


class UniversalSegmentationTest(ScriptedLoadableModuleTest):  # also run on slicer-core by pytest
    def runTest(self):
        from UniversalSegmentationLib.self_test import run_self_test
        slicer.mrmlScene.Clear()
        if run_self_test(slicer.mrmlScene, self.delayDisplay):
            self.delayDisplay(_("Test passed"))
