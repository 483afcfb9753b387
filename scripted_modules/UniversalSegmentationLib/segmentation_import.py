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
- memory: the result is read straight into its layers (``result_reader``), bounding boxes and
  fingerprints take a slab of slices at a time, and a re-run hands the layers it replaces whole
  to the undo record instead of copying them: at most about one labelmap beyond the result;
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

from .i18n import tr as _
from .result_reader import read_result

FINGERPRINT_TAG = "UniversalSeg.Fingerprint"
LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def write_volume(volume_node, path: str | Path) -> Path:
    """Write a scalar volume node (its IJK-to-RAS, without its parent transform) to NRRD."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # a temporary file: speed over size
    if not storage.WriteData(volume_node):
        raise RuntimeError(_("could not write volume {volume} to {path}").format(
            volume=repr(volume_node.GetName()), path=path))
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
        raise RuntimeError(_("the segmentation process ended without a readable result ({file})").format(
            file=Path(path).name))
    return scratch, node


def read_result_segmentation(path: str | Path):
    """(scratch scene or None, vtkSegmentation) of a result file: ``result_reader`` (the labelmap
    read once, straight into its layers) where it takes the file, else Slicer's reader."""
    if Path(path).is_file():
        try:
            segmentation = read_result(path)
        except Exception as error:  # truncated, not gzip, a header pynrrd refuses: one line, as Slicer's
            raise RuntimeError(_("the segmentation process ended without a readable result ({file})").format(
                file=f"{Path(path).name}: {error}")) from None
        if segmentation is not None:
            return None, segmentation
    scratch, node = read_segmentation_file(path)
    return scratch, node.GetSegmentation()


def segment_tag(segment, key: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else ""


def fingerprint(segmentation, segment_id: str) -> str:
    """Hash of a segment's voxels (absolute IJK indices on its grid), name and color. The same
    whichever layer holds the segment and whatever that layer's extent."""
    return fingerprints(segmentation, [segment_id])[segment_id]


def fingerprints(segmentation, segment_ids) -> dict:
    """``fingerprint`` of many segments, reading each shared layer once (one bounding-box pass per
    layer, then each segment hashed on its own box): 100 structures are not 100 full-volume scans."""
    result, layers = {}, {}
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        h = hashlib.sha1(f"{segment.GetName()}|{np.round(segment.GetColor(), 4).tolist()}".encode())
        result[segment_id] = h
        image = segment.GetRepresentation(LABELMAP)
        if image is not None and image.GetPointData().GetScalars() is not None:
            layers.setdefault(image.__this__, (image, []))[1].append((segment_id, segment.GetLabelValue()))
    for image, members in layers.values():
        extent = image.GetExtent()
        dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        if min(dims) <= 0:
            continue
        layer = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])  # a view
        boxes = label_boxes(layer)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        geometry = np.round(slicer.util.arrayFromVTKMatrix(matrix), 4) + 0.0  # -0.0 -> 0.0: not a change
        for segment_id, label in members:
            if label in boxes:
                box = boxes[label]
                for k in range(box[0].start, box[0].stop, SLAB):  # the bytes of ``layer[box] == label``
                    slab = (slice(k, min(k + SLAB, box[0].stop)),) + box[1:]
                    result[segment_id].update((layer[slab] == label).tobytes())
                shape = tuple(b.stop - b.start for b in box)
                start = np.array([b.start for b in box]) + np.array(extent[4::-2])  # (k, j, i) absolute
                result[segment_id].update(str((shape, start.tolist(), geometry.tolist())).encode())
    return {segment_id: h.hexdigest() for segment_id, h in result.items()}


SLAB = 16  # slices at a time: bounding boxes and hashes never copy a whole layer


def label_boxes(layer_kji: np.ndarray) -> dict:
    """label value -> (k, j, i) slices of its bounding box, for every non-zero value of a layer,
    in one pass of SLAB slices at a time (SimpleITK's LabelStatisticsImageFilter, Slicer ships
    SimpleITK; GetImageFromArray copies, so only a slab is copied at once)."""
    import SimpleITK as sitk
    found = {}
    for k in range(0, layer_kji.shape[0], SLAB):
        image = sitk.GetImageFromArray(layer_kji[k:k + SLAB])
        stats = sitk.LabelStatisticsImageFilter()
        stats.SetUseHistograms(False)  # no medians wanted: half the time
        stats.Execute(image, image)
        for label in stats.GetLabels():
            if label:
                x0, x1, y0, y1, z0, z1 = stats.GetBoundingBox(label)
                box = np.array([z0 + k, z1 + k, y0, y1, x0, x1])
                old = found.get(label, box)
                found[label] = np.r_[np.minimum(old, box)[0::2], np.maximum(old, box)[1::2]][[0, 3, 1, 4, 2, 5]]
    return {label: (slice(b[0], b[1] + 1), slice(b[2], b[3] + 1), slice(b[4], b[5] + 1))
            for label, b in found.items()}


def copy_segments(src, dst, segment_ids, move: bool = False) -> None:
    """Copy segments into ``dst`` with ONE deep copy per shared layer; vtkSegmentation::
    CopySegmentFromSegmentation deep-copies the whole layer once per segment. ``move``: no copy,
    ``dst`` takes src's layers (src must be dropped with ``remove_segments`` and not used again)."""
    copies = {}
    for segment_id in segment_ids:
        segment = src.GetSegment(segment_id)
        copy = slicer.vtkSegment()
        copy.DeepCopyMetadata(segment)  # name, colour, label value, tags (vtkSegment.cxx)
        image = segment.GetRepresentation(LABELMAP)
        if image is not None:
            if image.__this__ not in copies:
                copies[image.__this__] = image if move else slicer.vtkOrientedImageData()
                if not move:
                    copies[image.__this__].DeepCopy(image)
            copy.AddRepresentation(LABELMAP, copies[image.__this__])
        dst.AddSegment(copy, segment_id)


def layers_only_of(segmentation, segment_ids) -> list:
    """Those of ``segment_ids`` whose labelmap layer no other segment of ``segmentation`` shares:
    a re-run can hand these layers to the undo record as they are instead of copying them."""
    others = set()
    for segment_id in segmentation.GetSegmentIDs():
        if segment_id not in segment_ids:
            image = segmentation.GetSegment(segment_id).GetRepresentation(LABELMAP)
            others.add(image.__this__ if image is not None else None)
    return [s for s in segment_ids
            if getattr(segmentation.GetSegment(s).GetRepresentation(LABELMAP), "__this__", None) not in others]


def remove_segments(segmentation, segment_ids) -> None:
    """Remove segments without vtkSegmentation::RemoveSegment first separating each one out of its
    shared layer (a threshold of the whole layer per segment): its labelmap is dropped first."""
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        if segment is not None:
            segment.RemoveRepresentation(LABELMAP)
            segmentation.RemoveSegment(segment_id)


def user_edited(segmentation, segment_id: str, printed: dict | None = None) -> bool:
    """True when the segment was not written by UniversalSeg, or was changed since (``printed``:
    fingerprints already computed)."""
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        return False
    stored = segment_tag(segment, FINGERPRINT_TAG)
    now = printed[segment_id] if printed is not None else fingerprint(segmentation, segment_id)
    return not stored or stored != now


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
            raise RuntimeError(_("the segmentation of the last run is no longer in the scene"))
        dst = node.GetSegmentation()
        if self.created_node and dst.GetNumberOfSegments() == sum(dst.GetSegment(s) is not None for s in self.added):
            scene.RemoveNode(node)  # nothing in it but the run's segments
            return True
        was_modified = node.StartModify()
        try:
            remove_segments(dst, self.added + self.replaced)
            copy_segments(self.previous, dst, self.replaced, move=True)
            remove_segments(self.previous, self.replaced)  # the layers are dst's now
            for index, segment_id in enumerate(i for i in self.previous_order if dst.GetSegment(i)):
                dst.SetSegmentIndex(segment_id, index)
            dst.CollapseBinaryLabelmaps(False)
        finally:
            node.EndModify(was_modified)
        return False

    def __del__(self):  # a vtkSegmentation's destructor separates each segment out of its layer
        if self.previous is not None:
            remove_segments(self.previous, list(self.previous.GetSegmentIDs()))


def import_result(path: str | Path, segmentation_node, volume_node, keep_edited: bool = True,
                  created_node: bool = False) -> UndoRecord:
    """Swap the segments of a result file into ``segmentation_node``; returns how to undo it."""
    dst = segmentation_node.GetSegmentation()
    transform_id = volume_node.GetTransformNodeID()
    if dst.GetNumberOfSegments() and segmentation_node.GetTransformNodeID() != transform_id:
        raise RuntimeError(_("the segmentation {segmentation} is under another transform than the input volume; "
                             "choose 'Create new segmentation' as output").format(
            segmentation=repr(segmentation_node.GetName())))
    scratch, src = read_result_segmentation(path)  # first the whole result, outside the user's scene
    record = UndoRecord(segmentation_node, previous=slicer.vtkSegmentation(),
                        previous_order=list(dst.GetSegmentIDs()), created_node=created_node)
    incoming = list(src.GetSegmentIDs())
    present = [s for s in incoming if dst.GetSegment(s) is not None]
    printed = fingerprints(dst, present) if keep_edited else {}
    for segment_id in incoming:
        if dst.GetSegment(segment_id) is None:
            record.added.append(segment_id)
        elif keep_edited and user_edited(dst, segment_id, printed):
            record.kept.append(segment_id)
        else:
            record.replaced.append(segment_id)
    alone = layers_only_of(dst, record.replaced)
    copy_segments(dst, record.previous, [s for s in record.replaced if s not in alone])
    copy_segments(dst, record.previous, alone, move=True)  # dst lets go of these layers below
    prints = fingerprints(src, record.added + record.replaced)

    was_modified = segmentation_node.StartModify()
    try:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        places = {segment_id: dst.GetSegmentIndex(segment_id) for segment_id in record.replaced}
        remove_segments(dst, record.replaced)
        copy_segments(src, dst, record.replaced + record.added, move=True)  # src is dropped below
        for segment_id, index in sorted(places.items(), key=lambda item: item[1]):
            dst.SetSegmentIndex(segment_id, index)  # each in its place in the list
        for segment_id, value in prints.items():
            dst.GetSegment(segment_id).SetTag(FINGERPRINT_TAG, value)
        dst.CollapseBinaryLabelmaps(False)  # shared layers wherever segments do not overlap
    finally:
        segmentation_node.EndModify(was_modified)
        remove_segments(src, list(src.GetSegmentIDs()))  # else its destructor separates each one
        if scratch is not None:
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
