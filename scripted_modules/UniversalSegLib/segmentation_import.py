"""MRML side: volume node -> file for the core, result file -> segmentation node.

Needs ``slicer`` (MRML, Segmentations logic), never ``qt``: tested against ``slicer-core``.

Importing a result into an existing segmentation:
- saves the scene state for undo first;
- replaces only the segments of the tasks that were run (segment ID = task name) and never
  touches the user's other segments;
- with ``keep_edited``, a segment the user changed since UniversalSeg wrote it is kept: each
  imported segment carries a fingerprint of its voxels (tag ``UniversalSeg.Fingerprint``);
- sets the reference geometry from the input volume (so DICOM SEG export works) and places the
  segmentation under the volume's study in the subject hierarchy.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import slicer

FINGERPRINT_TAG = "UniversalSeg.Fingerprint"


def write_volume(volume_node, path: str | Path) -> Path:
    """Write a scalar volume node (with its IJK-to-RAS geometry) to NRRD for the core CLI."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # a temporary file: speed over size
    if not storage.WriteData(volume_node):
        raise RuntimeError(f"could not write volume {volume_node.GetName()!r} to {path}")
    return Path(path)


def read_segmentation_file(path: str | Path, scene):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "__UniversalSeg_result__")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"could not read the segmentation {path}")
    return node


def fingerprint(segmentation_node, segment_id: str) -> str:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    array = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, segment_id)
    if array is None:
        return "empty"
    mask = np.ascontiguousarray(array == segment.GetLabelValue())
    return hashlib.sha1(mask.tobytes() + str(mask.shape).encode()).hexdigest()


def segment_tag(segment, key: str) -> str:
    import vtk
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else ""


def user_edited(segmentation_node, segment_id: str) -> bool:
    """True when the segment was not written by UniversalSeg, or was changed since."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return False
    stored = segment_tag(segment, FINGERPRINT_TAG)
    return not stored or stored != fingerprint(segmentation_node, segment_id)


def import_result(path: str | Path, segmentation_node, volume_node, keep_edited: bool = True) -> dict:
    """Copy the segments of a result file into ``segmentation_node``; returns what happened."""
    scene = segmentation_node.GetScene()
    scene.SaveStateForUndo()
    result = read_segmentation_file(path, scene)
    try:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        src, dst = result.GetSegmentation(), segmentation_node.GetSegmentation()
        replaced, added, kept = [], [], []
        for segment_id in list(src.GetSegmentIDs()):
            if dst.GetSegment(segment_id) is not None:
                if keep_edited and user_edited(segmentation_node, segment_id):
                    kept.append(segment_id)
                    continue
                dst.RemoveSegment(segment_id)
                replaced.append(segment_id)
            else:
                added.append(segment_id)
            dst.CopySegmentFromSegmentation(src, segment_id, False)
            dst.GetSegment(segment_id).SetTag(FINGERPRINT_TAG, fingerprint(segmentation_node, segment_id))
    finally:
        scene.RemoveNode(result)
    place_under_study(segmentation_node, volume_node)
    return {"added": added, "replaced": replaced, "kept": kept}


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
