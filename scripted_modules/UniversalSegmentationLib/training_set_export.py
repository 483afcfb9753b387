"""MRML side of "Add to my training set": the volume and its corrected segments -> a case of the
user's training set (``UniversalSeg.data.training_set``: nnU-Net layout + catalog.yaml).

Needs ``slicer`` (MRML, Segmentations), never ``qt``: tested against ``slicer-core``.
- which segments: those named by the model's tasks (segment ID = task name, as UniversalSeg
  imports them, or the task's display name, e.g. "Liver"), and any other segment the user
  selects, whose name becomes a NEW task ("Renal cortex" -> renal-cortex: fine-tune with
  ``--mode add-tasks``);
- voxels: ``slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, id, volume)``, each segment
  exported on the volume's own grid (Slicer resamples a segment whose geometry differs), so the
  label map lies exactly on the saved image's voxels;
- the image: the volume node as Slicer writes it (``write_volume``: its IJK-to-RAS, without a
  parent transform), read back with SimpleITK so the core writes image and label together.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import slicer

from .paths import ensure_core_importable
from .i18n import tr as _
from .segmentation_import import write_volume

ensure_core_importable()
from UniversalSeg.data.training_set import (AddedCase, TrainingSetError, add_case, case_ids,  # noqa: E402
                                            structure_counts, task_name)


def segment_task(segment_id: str, segment_name: str, model_tasks: dict) -> str:
    """The task a segment stands for: its ID or name if the model has that task (by task name or
    display name, any case), else the name made into a new task name."""
    for key in (segment_id, segment_name):
        if key in model_tasks:
            return key
    by_display = {str(label).lower(): task for task, label in model_tasks.items()}
    return by_display.get(segment_name.strip().lower(), task_name(segment_name))


def training_segments(segmentation_node, model_tasks: dict, segment_ids: Optional[Sequence[str]] = None) -> dict:
    """segment ID -> task name for the segments to save: ``segment_ids`` when given, else every
    segment that stands for one of the model's tasks."""
    seg = segmentation_node.GetSegmentation()
    ids = list(segment_ids) if segment_ids is not None else \
        [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    chosen = {}
    for sid in ids:
        segment = seg.GetSegment(sid)
        if segment is None:
            raise TrainingSetError(_("segment {segment} is not in {segmentation}").format(
                segment=repr(sid), segmentation=repr(segmentation_node.GetName())))
        task = segment_task(sid, segment.GetName(), model_tasks)
        if segment_ids is None and task not in model_tasks:
            continue
        if task in chosen.values():
            raise TrainingSetError(_("two segments stand for {task}; rename or leave one out").format(task=repr(task)))
        chosen[sid] = task
    return chosen


def add_to_training_set(volume_node, segmentation_node, folder: str | Path, modality: str,
                        model_tasks: dict, segment_ids: Optional[Sequence[str]] = None,
                        case_id: Optional[str] = None, overwrite: bool = False) -> AddedCase:
    """Save the volume and its (corrected) segments as a case of the training set in ``folder``.
    ``model_tasks``: task name -> display name of the model's tasks. Refuses (TrainingSetError)
    a taken case name unless ``overwrite``, empty segments, and a volume without voxels."""
    import SimpleITK as sitk
    if volume_node is None or volume_node.GetImageData() is None:
        raise TrainingSetError(_("select the volume the segments were drawn on"))
    if segmentation_node is None:
        raise TrainingSetError(_("select the segmentation with the corrected segments"))
    if not modality:
        raise TrainingSetError(_("select the modality of the volume"))
    chosen = training_segments(segmentation_node, model_tasks, segment_ids)
    if not chosen:
        raise TrainingSetError(_("no segment stands for one of the model's structures; select the segments to save"))
    case_id = case_id or next_case_id(folder, volume_node.GetName())
    masks = {task: slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, sid, volume_node) > 0
             for sid, task in chosen.items()}
    with tempfile.TemporaryDirectory(prefix="UniversalSeg-case-") as tmp:
        image = sitk.ReadImage(str(write_volume(volume_node, Path(tmp) / "image.nrrd")))
    Path(folder).mkdir(parents=True, exist_ok=True)
    return add_case(folder, image, masks, modality, case_id, overwrite=overwrite)


def next_case_id(folder: str | Path, volume_name: str) -> str:
    """A free case name from the volume's name: "CT chest" -> ct-chest, ct-chest-2, ..."""
    base = task_name(volume_name or "case")[:60]
    taken = case_ids(Path(folder)) if Path(folder).exists() else set()
    n, candidate = 1, base
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def training_set_summary(folder: str | Path) -> str:
    """One line for the panel: cases per structure."""
    counts = structure_counts(folder) if Path(folder).exists() else {}
    if not counts:
        return _("no cases yet")
    return ", ".join(f"{task} {n}" for task, n in sorted(counts.items()))
