"""Refine mode: clicks on the views correct one segment through the warm worker (MRML, no Qt).

    refine = SegmentRefinement(worker, volume, segmentation, "liver-segment-id", "liver", "CT",
                               model, workdir)
    refine.start()                  # the worker opens the volume, takes the segment as it is now
    refine.poll()                   # from a QTimer: progress, then each click's change is applied
    refine.undo()                   # the last click's change is taken back (and its point removed)
    refine.accept() / refine.discard()   # keep the segment / put back what it was before

Clicks are control points of two markups point lists (positive: green, negative: red) that the
user places with Slicer's place mode; a defined point (``PointPositionDefinedEvent``, checked in
Slicer's vtkMRMLMarkupsNode) becomes a "refine" request with its world (RAS) position. The
worker answers with the changed box of the volume's voxel grid; only that box of THIS segment is
written back (``slicer.util.arrayFromSegmentBinaryLabelmap`` / ``updateSegmentBinaryLabelmapFromArray``
on the volume's geometry), so other segments never change. The segment's content when Refine
starts is sent to the worker first (``set_mask``): edits made in Segment Editor are refined, not
replaced by the model's own result.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import slicer

from .i18n import tr as _
from .refine_worker import decode_mask
from .segmentation_import import write_volume

LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
POSITIVE_COLOR, NEGATIVE_COLOR = (0.2, 0.9, 0.2), (0.95, 0.2, 0.2)


class SegmentRefinement:
    def __init__(self, worker, volume_node, segmentation_node, segment_id: str, task: str, modality: str,
                 model: str, workdir: str | Path, device: str = "auto"):
        self.worker, self.volume, self.segmentation = worker, volume_node, segmentation_node
        self.segment_id, self.task, self.modality, self.model = segment_id, task, modality, model
        self.workdir, self.device = Path(workdir), device
        self.before = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
        self.ready = False
        self.status = _("starting the refinement worker")
        self.pending: dict[int, str] = {}      # request id -> what it was
        self.points_of: dict[int, tuple] = {}  # refine request id -> its (markups node, point index)
        self.mates_before: dict[str, object] = {}  # exclusive mates' segments as they were, once changed
        self.clicks: list[tuple] = []          # (markups node, point index) per applied click, for undo
        self._waiting: list[tuple] = []        # clicks made before the worker was ready
        self.points = {True: self._point_list("positive", POSITIVE_COLOR),
                       False: self._point_list("negative", NEGATIVE_COLOR)}
        self._observers = [(node, node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                                   lambda caller, event, positive=positive: self._point_defined(caller, positive)))
                           for positive, node in self.points.items()]

    def _point_list(self, kind: str, color) -> "slicer.vtkMRMLMarkupsFiducialNode":
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"UniversalSeg {kind} clicks")
        node.SetSaveWithScene(False)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*color)
            display.SetColor(*color)
        return node

    # ------------------------------------------------------------------ requests
    def start(self) -> None:
        import SimpleITK as sitk
        self.workdir.mkdir(parents=True, exist_ok=True)
        image_path = write_volume(self.volume, self.workdir / "refine-image.nrrd")
        mask = sitk.GetImageFromArray(self.before.astype("uint8"))
        mask.CopyInformation(sitk.ReadImage(str(image_path)))
        mask_path = self.workdir / "refine-mask.nrrd"
        sitk.WriteImage(mask, str(mask_path))
        self.worker.start()
        self.pending[self.worker.send({"cmd": "open", "model": self.model, "image": str(image_path),
                                       "modality": self.modality, "tasks": [self.task],
                                       "device": self.device})] = "open"
        self.pending[self.worker.send({"cmd": "set_mask", "task": self.task, "file": str(mask_path)})] = "set_mask"
        self.status = _("loading the model and the volume")

    def _point_defined(self, node, positive: bool) -> None:
        index = node.GetNumberOfControlPoints() - 1
        if index < 0:
            return
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        self.click(position, positive, node, index)

    def click(self, ras, positive: bool, node=None, index: Optional[int] = None) -> None:
        if not self.ready:
            self._waiting.append((ras, positive, node, index))
            return
        rid = self.worker.send({"cmd": "refine", "task": self.task, "points": [
            {"position": [float(v) for v in ras], "label": "positive" if positive else "negative"}]})
        self.pending[rid] = "refine"
        self.points_of[rid] = (node, index)
        self.clicks.append((node, index))
        self.status = _("refining")

    def undo(self) -> bool:
        """Take back the last click; False when there is none."""
        if not self.clicks:
            return False
        self._remove_point(*self.clicks.pop())
        self.pending[self.worker.send({"cmd": "undo", "task": self.task})] = "undo"
        return True

    def _remove_point(self, node, index) -> None:
        """Remove a click's point; the later points of its list move down one index."""
        if node is not None and index is not None and index < node.GetNumberOfControlPoints():
            node.RemoveNthControlPoint(index)
            self.clicks = [(n, i - 1 if n is node and i is not None and i > index else i) for n, i in self.clicks]
            self.points_of = {r: (n, i - 1 if n is node and i is not None and i > index else i)
                              for r, (n, i) in self.points_of.items()}

    def place(self, positive: bool) -> None:
        """Slicer's place mode (persistent: one click per point until Escape) on the positive or
        negative list (vtkSlicerMarkupsLogic::SetActiveList / StartPlaceMode); if it is on for
        that list already, back to view-transform mode (the button is pressed again)."""
        if self.placing(positive):
            self._stop_place_mode()
            return
        markups = slicer.modules.markups.logic()
        markups.SetActiveList(self.points[positive])
        markups.StartPlaceMode(True)

    # ------------------------------------------------------------------ replies
    def poll(self) -> list[str]:
        """Handle the worker's messages; returns error messages to show (one line each)."""
        errors = []
        for message in self.worker.poll():
            kind = self.pending.get(message.get("id"))
            if "progress" in message:
                self.status = f"{message.get('message') or message.get('stage')} ({100 * message['progress']:.0f} %)"
                continue
            if kind is None or "ok" not in message:
                continue
            del self.pending[message["id"]]
            point = self.points_of.pop(message["id"], None)
            if not message["ok"]:
                errors.append(message.get("error", _("failed")))
                self.status = _("last request refused: {error}").format(error=errors[-1])  # stays until the next answer
                if kind == "refine" and point in self.clicks:  # THAT click changed nothing: forget it
                    self.clicks.remove(point)
                    self._remove_point(*point)
                continue
            if kind == "set_mask":
                self.ready = True
                self.status = _("ready: click inside a missed region (positive) or on a false positive (negative)")
                waiting, self._waiting = self._waiting, []
                for args in waiting:
                    self.click(*args)
            elif kind in ("refine", "undo") and message.get("box") is not None:
                self.apply(message)
                self.status = (_("{clicks} click(s); last in {seconds} s").format(
                    clicks=len(self.clicks), seconds=f"{message.get('seconds', 0):.2f}") if kind == "refine"
                    else _("undone; {clicks} click(s)").format(clicks=len(self.clicks)))
        if not self.worker.running and self.pending:
            errors.append(_("the refinement worker stopped") + self.worker._last_error())
            self.pending.clear()
        return errors

    def apply(self, reply: dict) -> None:
        """Write a mask reply's box into the segment: only this segment, only that box, straight
        into the segmentation as Segment Editor's effects do (vtkSlicerSegmentationsModuleLogic::
        SetBinaryLabelmapToSegment with an extent), never the whole volume through scene nodes."""
        box, values = decode_mask(reply)
        write_box(self.segmentation, self.segment_id, self.volume, box, values)
        for mate in reply.get("also", []):  # mutually exclusive structures that gave or took voxels
            segment_id = mate["task"]        # imported results: segment ID = task name
            if self.segmentation.GetSegmentation().GetSegment(segment_id) is None:
                continue
            if segment_id not in self.mates_before:  # for Discard
                self.mates_before[segment_id] = slicer.util.arrayFromSegmentBinaryLabelmap(
                    self.segmentation, segment_id, self.volume).copy()
            write_box(self.segmentation, segment_id, self.volume, *decode_mask(mate))

    # ------------------------------------------------------------------ end
    def accept(self) -> None:
        self._remove_points()

    def discard(self) -> None:
        """Put the segment (and any exclusive mate a click changed) back as it was when Refine started."""
        slicer.util.updateSegmentBinaryLabelmapFromArray(self.before, self.segmentation, self.segment_id, self.volume)
        for segment_id, before in self.mates_before.items():
            if self.segmentation.GetSegmentation().GetSegment(segment_id) is not None:
                slicer.util.updateSegmentBinaryLabelmapFromArray(before, self.segmentation, segment_id, self.volume)
        self._remove_points()

    def _remove_points(self) -> None:
        self._stop_place_mode()  # first: persistent place mode on a removed list makes a stray one
        for node, tag in self._observers:
            node.RemoveObserver(tag)
        self._observers = []
        for node in self.points.values():
            if node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)

    def placing(self, positive: bool) -> bool:
        """Place mode is on for the positive (or negative) list: its button shows pressed."""
        scene = slicer.mrmlScene
        selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        return (interaction is not None and selection is not None
                and interaction.GetCurrentInteractionMode() == interaction.Place
                and selection.GetActivePlaceNodeID() == self.points[positive].GetID())

    def _stop_place_mode(self) -> None:
        """Back to view-transform mode if the user is placing points into one of our lists
        (vtkMRMLSelectionNode::GetActivePlaceNodeID, vtkMRMLInteractionNode::SwitchToViewTransformMode;
        the singletons' IDs as vtkSlicerMarkupsLogic looks them up)."""
        scene = slicer.mrmlScene
        selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        ours = {node.GetID() for node in self.points.values()}
        if interaction is not None and selection is not None and selection.GetActivePlaceNodeID() in ours \
                and interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SwitchToViewTransformMode()


def write_box(segmentation_node, segment_id: str, volume_node, box, values) -> None:
    """Replace the voxels of ``box`` ((i0, i1), (j0, j1), (k0, k1), ends excluded) of a segment
    with ``values`` (uint8, (k, j, i)) on the volume's voxel grid; the rest of the segment and
    every other segment stay as they are.

    The cost follows the segment's own extent, not the volume: Slicer's setter
    (vtkSlicerSegmentationsModuleLogic::SetBinaryLabelmapToSegment) replaces a segment by its
    input, so the input is the segment's current labelmap (its effective extent grown to the box)
    with the box written in. A segment on another grid than the volume takes the whole-volume path.
    """
    import vtk
    from vtk.util import numpy_support
    (i0, i1), (j0, j1), (k0, k1) = box
    segmentation = segmentation_node.GetSegmentation()
    segmentation.SeparateSegmentLabelmap(segment_id)  # its own layer: other segments never change
    segment = segmentation.GetSegment(segment_id)
    current = segment.GetRepresentation(LABELMAP)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    if current is not None and not _same_grid(current, ijk_to_ras):
        full = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
        full[k0:k1, j0:j1, i0:i1] = values
        slicer.util.updateSegmentBinaryLabelmapFromArray(full, segmentation_node, segment_id, volume_node)
        return
    old = list(current.GetExtent()) if current is not None and current.GetPointData().GetScalars() is not None \
        else [0, -1, 0, -1, 0, -1]
    has_old = old[0] <= old[1] and old[2] <= old[3] and old[4] <= old[5]
    new = [i0, i1 - 1, j0, j1 - 1, k0, k1 - 1]
    extent = [min(o, n) if has_old else n for o, n in zip(old[0::2], new[0::2])]
    extent = [v for pair in zip(extent, [max(o, n) if has_old else n for o, n in zip(old[1::2], new[1::2])])
              for v in pair]
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetImageToWorldMatrix(ijk_to_ras)
    labelmap.SetExtent(extent)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    out = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1])
    out[:] = 0
    if has_old:
        odims = [old[1] - old[0] + 1, old[3] - old[2] + 1, old[5] - old[4] + 1]
        before = numpy_support.vtk_to_numpy(current.GetPointData().GetScalars()).reshape(odims[::-1])
        k, j, i = old[4] - extent[4], old[2] - extent[2], old[0] - extent[0]
        out[k:k + odims[2], j:j + odims[1], i:i + odims[0]] = before == segment.GetLabelValue()
    out[k0 - extent[4]:k1 - extent[4], j0 - extent[2]:j1 - extent[2], i0 - extent[0]:i1 - extent[0]] = values > 0
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(_("could not write the refined box into segment {segment}").format(segment=repr(segment_id)))


def _same_grid(image, ijk_to_ras) -> bool:
    import numpy as np
    import vtk
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return np.allclose(slicer.util.arrayFromVTKMatrix(matrix), slicer.util.arrayFromVTKMatrix(ijk_to_ras), atol=1e-6)
