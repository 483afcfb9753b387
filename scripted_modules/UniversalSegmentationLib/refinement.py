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

from .refine_worker import decode_mask
from .segmentation_import import write_volume

POSITIVE_COLOR, NEGATIVE_COLOR = (0.2, 0.9, 0.2), (0.95, 0.2, 0.2)


class SegmentRefinement:
    def __init__(self, worker, volume_node, segmentation_node, segment_id: str, task: str, modality: str,
                 model: str, workdir: str | Path, device: str = "auto"):
        self.worker, self.volume, self.segmentation = worker, volume_node, segmentation_node
        self.segment_id, self.task, self.modality, self.model = segment_id, task, modality, model
        self.workdir, self.device = Path(workdir), device
        self.before = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
        self.ready = False
        self.status = "starting the refinement worker"
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
        self.status = "loading the model and the volume"

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
        self.status = "refining"

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
        negative list (vtkSlicerMarkupsLogic::SetActiveList / StartPlaceMode)."""
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
                errors.append(message.get("error", "failed"))
                self.status = f"last request refused: {errors[-1]}"  # stays until the next answer
                if kind == "refine" and point in self.clicks:  # THAT click changed nothing: forget it
                    self.clicks.remove(point)
                    self._remove_point(*point)
                continue
            if kind == "set_mask":
                self.ready = True
                self.status = "ready: click inside a missed region (positive) or on a false positive (negative)"
                waiting, self._waiting = self._waiting, []
                for args in waiting:
                    self.click(*args)
            elif kind in ("refine", "undo") and message.get("box") is not None:
                self.apply(message)
                self.status = (f"{len(self.clicks)} click(s); last in {message.get('seconds', 0):.2f} s"
                               if kind == "refine" else f"undone; {len(self.clicks)} click(s)")
        if not self.worker.running and self.pending:
            errors.append("the refinement worker stopped" + self.worker._last_error())
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
    every other segment stay as they are."""
    import vtk
    from vtk.util import numpy_support
    (i0, i1), (j0, j1), (k0, k1) = box
    labelmap = slicer.vtkOrientedImageData()
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    labelmap.SetImageToWorldMatrix(ijk_to_ras)
    extent = [i0, i1 - 1, j0, j1 - 1, k0, k1 - 1]
    labelmap.SetExtent(extent)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    voxels[:] = (values > 0).astype("uint8").ravel()  # VTK's x-fastest order is (k, j, i) C order
    # MODE_REPLACE would clear the whole segment first when it shares its layer with others
    # (vtkSegmentationModifier::AppendLabelmapToSegment): add the box's voxels (maximum), then take
    # away what the box no longer has (minimum), both limited to the box's extent.
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for mode in (logic.MODE_MERGE_MAX, logic.MODE_MERGE_MIN):
        if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, mode, extent):
            raise RuntimeError(f"could not write the refined box into segment {segment_id!r}")
