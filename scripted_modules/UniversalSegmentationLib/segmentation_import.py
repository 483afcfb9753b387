"""MRML side: volume node -> file for the core, result file -> segments, and undo of a run.

Needs ``slicer`` (MRML, Segmentations), never ``qt``: tested against ``slicer-core``.

Importing a result into a segmentation node:
- the whole result is read and checked first, outside the scene; only then are segments swapped
  in, in one modification, so a failure leaves the scene as it was;
- only the segments of the tasks that were run are replaced (segment ID = task name), in their
  place in the list; the user's other segments are never touched;
- with ``keep_edited``, a segment the user changed since UniversalSeg wrote it (voxels, name or
  color) is kept: each imported segment carries a fingerprint (tag ``UniversalSeg.Fingerprint``)
  that does not depend on how Slicer packs segments into layers;
- non-overlapping segments share labelmap layers (a lesion inside an organ keeps its own), as
  Segment Editor stores them: 100 structures cost about one volume, not 100;
- the segmentation gets display nodes (a node made by code has none, so it would be invisible),
  the input volume's reference geometry (DICOM SEG export) and parent transform, and its place in
  the volume's study;
- an ``UndoRecord`` restores exactly what the run replaced or added. Slicer's scene undo is off by
  default in the application, so ``SaveStateForUndo`` cannot be relied on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

FINGERPRINT_TAG = "UniversalSeg.Fingerprint"
LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def write_volume(volume_node, path: str | Path) -> Path:
    """Write a scalar volume node (its IJK-to-RAS, without its parent transform) to NRRD."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # a temporary file: speed over size
    if not storage.WriteData(volume_node):
        raise RuntimeError(f"could not write volume {volume_node.GetName()!r} to {path}")
    return Path(path)


def read_segmentation_file(path: str | Path):
    """(scratch scene, segmentation node) read from a .seg.nrrd file in a scene of its own, not the
    user's (the storage node gives the node display nodes, which need a scene). Keep the scene
    referenced while the node is used."""
    scratch = slicer.vtkMRMLScene()
    node = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scratch.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(node):
        raise RuntimeError(f"the segmentation process ended without a readable result ({Path(path).name})")
    return scratch, node


def segment_tag(segment, key: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else ""


def fingerprint(segmentation, segment_id: str) -> str:
    """Hash of a segment's voxels (absolute IJK indices on its grid), name and color. The same
    whichever layer holds the segment and whatever that layer's extent."""
    segment = segmentation.GetSegment(segment_id)
    h = hashlib.sha1(f"{segment.GetName()}|{np.round(segment.GetColor(), 4).tolist()}".encode())
    image = segment.GetRepresentation(LABELMAP)
    if image is None or image.GetPointData().GetScalars() is None:
        return h.hexdigest()
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(dims) <= 0:
        return h.hexdigest()
    mask = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]) == segment.GetLabelValue()
    nonzero = np.argwhere(mask)
    if len(nonzero):
        lo, hi = nonzero.min(0), nonzero.max(0) + 1
        cropped = np.ascontiguousarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        start = lo + np.array(extent[4::-2])  # (k, j, i) start in absolute indices
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        geometry = np.round(slicer.util.arrayFromVTKMatrix(matrix), 4)
        h.update(cropped.tobytes() + str((cropped.shape, start.tolist(), geometry.tolist())).encode())
    return h.hexdigest()


def user_edited(segmentation, segment_id: str) -> bool:
    """True when the segment was not written by UniversalSeg, or was changed since."""
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        return False
    stored = segment_tag(segment, FINGERPRINT_TAG)
    return not stored or stored != fingerprint(segmentation, segment_id)


@dataclass
class UndoRecord:
    """What one run changed in one segmentation node, and how to put it back."""
    segmentation_node: object
    added: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    previous: object = None          # vtkSegmentation holding copies of the replaced segments
    previous_order: list = field(default_factory=list)
    created_node: bool = False       # the run created the node: undo removes it

    def undo(self) -> bool:
        """Remove what the run added, put back what it replaced; True when that left nothing of a
        node the run created, which is then removed (segments the user added since keep it)."""
        node = self.segmentation_node
        scene = node.GetScene()
        if scene is None:
            raise RuntimeError("the segmentation of the last run is no longer in the scene")
        dst = node.GetSegmentation()
        if self.created_node and dst.GetNumberOfSegments() == sum(dst.GetSegment(s) is not None for s in self.added):
            scene.RemoveNode(node)  # nothing in it but the run's segments
            return True
        was_modified = node.StartModify()
        try:
            for segment_id in self.added + self.replaced:
                if dst.GetSegment(segment_id) is not None:
                    dst.RemoveSegment(segment_id)
            for segment_id in self.replaced:
                dst.CopySegmentFromSegmentation(self.previous, segment_id, False)
            for index, segment_id in enumerate(i for i in self.previous_order if dst.GetSegment(i)):
                dst.SetSegmentIndex(segment_id, index)
            dst.CollapseBinaryLabelmaps(False)
        finally:
            node.EndModify(was_modified)
        return False


def import_result(path: str | Path, segmentation_node, volume_node, keep_edited: bool = True,
                  created_node: bool = False) -> UndoRecord:
    """Swap the segments of a result file into ``segmentation_node``; returns how to undo it."""
    dst = segmentation_node.GetSegmentation()
    transform_id = volume_node.GetTransformNodeID()
    if dst.GetNumberOfSegments() and segmentation_node.GetTransformNodeID() != transform_id:
        raise RuntimeError(f"the segmentation {segmentation_node.GetName()!r} is under another transform "
                           "than the input volume; choose 'Create new segmentation' as output")
    scratch, result = read_segmentation_file(path)  # first the whole result, outside the user's scene
    src = result.GetSegmentation()
    record = UndoRecord(segmentation_node, previous=slicer.vtkSegmentation(),
                        previous_order=list(dst.GetSegmentIDs()), created_node=created_node)
    prints = {}
    for segment_id in list(src.GetSegmentIDs()):
        if dst.GetSegment(segment_id) is None:
            record.added.append(segment_id)
        elif keep_edited and user_edited(dst, segment_id):
            record.kept.append(segment_id)
            continue
        else:
            record.replaced.append(segment_id)
            record.previous.CopySegmentFromSegmentation(dst, segment_id, False)
        prints[segment_id] = fingerprint(src, segment_id)

    was_modified = segmentation_node.StartModify()
    try:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        for segment_id in record.replaced:
            index = dst.GetSegmentIndex(segment_id)
            dst.RemoveSegment(segment_id)
            dst.CopySegmentFromSegmentation(src, segment_id, False)
            dst.SetSegmentIndex(segment_id, index)
        for segment_id in record.added:
            dst.CopySegmentFromSegmentation(src, segment_id, False)
        for segment_id, value in prints.items():
            dst.GetSegment(segment_id).SetTag(FINGERPRINT_TAG, value)
        dst.CollapseBinaryLabelmaps(False)  # shared layers wherever segments do not overlap
    finally:
        segmentation_node.EndModify(was_modified)
        scratch.Clear(True)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetAndObserveTransformNodeID(transform_id)  # the result is in the volume's frame
    place_under_study(segmentation_node, volume_node)
    return record


def place_under_study(segmentation_node, volume_node) -> None:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(segmentation_node.GetScene())
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volume_node)
    parent = sh.GetItemParent(volume_item) if volume_item else 0
    if not parent:
        return
    item = sh.GetItemByDataNode(segmentation_node)
    if item:
        sh.SetItemParent(item, parent)
    else:  # the Slicer application adds items automatically; a bare MRML scene does not
        sh.CreateItem(parent, segmentation_node)
