"""What the panel shows and allows, without Qt: the model list, the structures (filter, checked),
the modality guess, and which action the main button runs. The widget only renders this state,
so its rules are tested here directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .command import filter_tasks, guess_modality
from .i18n import tr as _
from .logic import dicom_modality
from .models import ModelChoice, available_models, model_summary


@dataclass
class PanelState:
    choices: list = field(default_factory=list)
    index: int = -1
    tasks: list = field(default_factory=list)        # dicts: name, display_name, color, ...
    modalities: list = field(default_factory=list)
    checked: set = field(default_factory=set)
    error: str = ""
    card: str = ""                                   # the model card: what it knows, its limits
    clicks: bool = False                             # the model has the click-refinement stage

    def load_models(self, folders, select: Optional[str] = None) -> int:
        """Refresh the model list; returns the index to show (``select``'s, else the first)."""
        self.choices = available_models(folders)
        return next((i for i, c in enumerate(self.choices) if c.spec == select), 0 if self.choices else -1)

    @property
    def choice(self) -> Optional[ModelChoice]:
        return self.choices[self.index] if 0 <= self.index < len(self.choices) else None

    def select_model(self, index: int) -> None:
        """A model picked: its structures (all checked) and modalities, or the reason it can't be read."""
        self.index, self.tasks, self.modalities, self.error, self.card = index, [], [], "", ""
        self.clicks = False
        if self.choice is not None:
            try:
                summary = model_summary(self.choice)
            except Exception as exc:  # noqa: BLE001 - shown in the panel, the list stays usable
                self.error = _("Cannot read the model: {error}").format(error=exc)
                return
            self.tasks, self.modalities, self.card = summary["tasks"], summary["modalities"], summary["card"]
            self.clicks = summary["clicks"]
        self.checked = {t["name"] for t in self.tasks}

    def visible(self, text: str) -> list:
        return filter_tasks(self.tasks, text)

    def toggle(self, name: str, on: bool) -> None:
        (self.checked.add if on else self.checked.discard)(name)

    def check_visible(self, text: str, on: bool) -> None:
        names = {t["name"] for t in self.visible(text)}
        self.checked = (self.checked | names) if on else (self.checked - names)

    def selected_tasks(self) -> list:
        """Checked structures in the model's order."""
        return [t["name"] for t in self.tasks if t["name"] in self.checked]

    def finetune_spec(self) -> str:
        """The selected model, for fine-tuning (it must be available here)."""
        if self.choice is None or self.choice.needs_download:
            raise ValueError(_("select a model that is installed (download it first)"))
        return self.choice.spec

    def refinable_segments(self, segmentation_node) -> list:
        """(segment ID, task, label) of the segments that stand for one of the model's structures."""
        if segmentation_node is None or not self.clicks:
            return []
        from .training_set_export import segment_task
        seg, labels = segmentation_node.GetSegmentation(), self.task_labels()
        found = []  # two segments may stand for one structure (a user's own "Liver"): both are listed
        for sid in seg.GetSegmentIDs():
            name = seg.GetSegment(sid).GetName()
            task = segment_task(sid, name, labels)
            if task in labels:
                found.append((sid, task, f"{name} ({task})"))
        return found

    def refine_problem(self, segmentation_node, modality: str) -> str:
        """Why Refine cannot start ('' when it can)."""
        if self.choice is None or self.choice.needs_download:
            return _("Select an installed model.")
        if not self.clicks:
            return _("This model has no click refinement (trained without --clicks).")
        if not modality:
            return _("Select the modality.")
        if not self.refinable_segments(segmentation_node):
            return _("No segment of the output segmentation stands for one of the model's structures.")
        return ""

    def task_labels(self) -> dict:
        """task name -> display name of the model's structures (segments are matched by either)."""
        return {t["name"]: t.get("display_name", t["name"]) for t in self.tasks}

    def add_case(self, volume_node, segmentation_node, folder: str, modality: str, new_structures: bool,
                 ask_replace) -> str:
        """"Add to my training set": the case named after the volume; if that name is taken,
        ``ask_replace(text)`` decides between replacing it and a new name. Returns the status line."""
        from .training_set_export import add_to_training_set, next_case_id, training_set_summary
        from UniversalSeg.data.training_set import case_ids, task_name
        if not folder:
            raise ValueError(_("choose the folder of your training set"))
        base = task_name(volume_node.GetName() if volume_node else "case")[:60]
        replace = base in case_ids(Path(folder)) and ask_replace(
            _("The training set already has a case '{case}'. Replace it (No: save as a new case)?").format(case=base))
        case = base if replace else next_case_id(folder, base)  # the base itself when it is free
        ids = None
        if new_structures and segmentation_node is not None:
            seg = segmentation_node.GetSegmentation()
            ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
        added = add_to_training_set(volume_node, segmentation_node, folder, modality, self.task_labels(),
                                    segment_ids=ids, case_id=case, overwrite=replace)
        return _("Saved '{case}' ({structures}). Cases: {cases}").format(
            case=added.case_id, structures=", ".join(added.structures), cases=training_set_summary(folder))

    def modality_for(self, volume_node, dicom_database=None) -> Optional[str]:
        """The model's modality that the volume's DICOM Modality or its name suggests."""
        if volume_node is None:
            return None
        return guess_modality(self.modalities, dicom_modality(volume_node, dicom_database), volume_node.GetName())

    def action(self, has_volume: bool, modality: str) -> tuple[str, bool]:
        """(button text, enabled) of the main button when no job runs."""
        if self.choice is None:
            return _("Apply"), False
        if self.choice.needs_download:
            return _("Download model"), True
        return _("Apply"), bool(has_volume and modality and self.checked)


# The device list (the parameter node's Choice, in this order): "mps" last, so that Slicer's GUI
# connector (guiConnectors.py QComboBoxToStringableConnector: item i is choice i) keeps reading the
# others right when offer_devices takes it out.
DEVICES = ("auto", "cpu", "cuda", "mps")


def offer_devices(combo, parameter_node, mps: bool) -> None:
    """Offer Apple's "mps" in the device list only where the device probe found it (``mps``); a
    parameter node that holds "mps" where it is not offered goes back to "auto" first (the list
    then never shows one device while the node holds another)."""
    if not mps and parameter_node is not None and parameter_node.device == "mps":
        parameter_node.device = "auto"
    if not mps and combo.count == len(DEVICES):
        combo.removeItem(len(DEVICES) - 1)
    elif mps and combo.count == len(DEVICES) - 1:
        combo.addItem(DEVICES[-1])


# What the input list hides (Resources/UI: hideChildNodeTypes): vtkMRMLScalarVolumeNode's
# subclasses that are not one scalar image (labelmaps; vector, tensor and diffusion volumes).
NOT_INPUT_VOLUMES = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode")


def first_input_volume(scene):
    """The first volume the input list offers (None when there is none)."""
    volumes = (scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))
    return next((v for v in volumes if not any(v.IsA(t) for t in NOT_INPUT_VOLUMES) and not v.GetHideFromEditors()),
                None)


def remember(folders: list, path: str) -> list:
    """The model folder list with ``path`` last (most recent), once."""
    return [f for f in folders if f != path] + [path]
