"""The panel's own .seg.nrrd reader (UniversalSegmentationLib/result_reader.py, the labelmap read
once straight into its layers) against Slicer's reader (vtkMRMLSegmentationStorageNode, from
slicer-core): the same segments, IDs, names, colours, tags, label values, layer sharing, extents,
geometry and voxels, on the predictor's files (one layer and overlapping layers) and on the files
Slicer itself writes (extent offset, uncompressed); files it does not take go to Slicer's reader;
a damaged file is one line. Bounding boxes and fingerprints computed a slab at a time equal the
whole-layer ones."""
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
sys.path.append(str(Path(__file__).parents[2] / "scripted_modules"))  # after the core package

from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from UniversalSegmentationLib import segmentation_import  # noqa: E402
from UniversalSegmentationLib.result_reader import LABELMAP, read_result  # noqa: E402

fingerprints, import_result = segmentation_import.fingerprints, segmentation_import.import_result
label_boxes, slicer_read = segmentation_import.label_boxes, segmentation_import.read_segmentation_file

SHAPE = (21, 22, 24)  # (k, j, i); not a multiple of the slab
BOXES = {"liver": (slice(2, 10), slice(2, 12), slice(2, 12)), "spleen": (slice(12, 20), slice(2, 8), slice(3, 9)),
         "liver-tumor": (slice(4, 6), slice(4, 6), slice(4, 6)), "pancreas": None}  # the tumour overlaps: 2 layers


def predictor_file(path):
    """A result as the predictor writes it, on a flipped, anisotropic, shifted grid."""
    from UniversalSeg.data.terminology import task_info
    from UniversalSeg.inference.writers import write_seg_nrrd
    reference = sitk.Image(SHAPE[::-1], sitk.sitkUInt8)
    reference.SetSpacing((0.7, 0.9, 2.5))
    reference.SetOrigin((10.0, -20.0, 30.0))
    reference.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    masks = {}
    for task, box in BOXES.items():
        a = np.zeros(SHAPE, np.uint8)
        if box is not None:
            a[box] = 1
        masks[task] = sitk.GetImageFromArray(a)
        masks[task].CopyInformation(reference)
    return write_seg_nrrd(path, reference, masks, {t: task_info(t) for t in masks})


def slicer_written_file(source, path, compressed):
    """The same segments written by Slicer's storage node (cropped to the minimum extent: the
    header then has Segmentation_ReferenceImageExtentOffset)."""
    scratch, node = slicer_read(source)
    storage = scratch.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    storage.SetUseCompression(compressed)
    storage.SetCropToMinimumExtent(True)
    assert storage.WriteData(node)
    return path


def tag_keys(path):
    import nrrd
    header = nrrd.read_header(str(path))
    return {k.split(":", 1)[0] for key, v in header.items() if key.endswith("_Tags") for k in v.split("|") if ":" in k}


def describe(segmentation, keys):
    """Everything the import uses of a read segmentation, comparable across readers."""
    layers, out = {}, []
    for sid in segmentation.GetSegmentIDs():
        segment = segmentation.GetSegment(sid)
        image = segment.GetRepresentation(LABELMAP)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        out.append({"id": sid, "name": segment.GetName(), "color": np.round(segment.GetColor(), 6).tolist(),
                    "label": segment.GetLabelValue(), "layer": layers.setdefault(image.__this__, len(layers)),
                    "tags": {k: segmentation_import.segment_tag(segment, k) for k in keys},
                    "extent": image.GetExtent(), "type": image.GetScalarType(),
                    "matrix": np.round(slicer.util.arrayFromVTKMatrix(matrix), 6).tolist(),
                    "voxels": hashlib.sha1(vtk_to_numpy(image.GetPointData().GetScalars()).tobytes()).hexdigest()
                    if image.GetPointData().GetScalars() is not None else None})
    return out


@pytest.mark.parametrize("kind", ["predictor", "slicer-gzip", "slicer-raw"])
def test_the_reader_gives_what_slicers_reader_gives(tmp_path, kind):
    path = predictor_file(tmp_path / "r.seg.nrrd")
    if kind != "predictor":
        path = slicer_written_file(path, tmp_path / f"{kind}.seg.nrrd", compressed=kind == "slicer-gzip")
    ours = read_result(path)
    assert ours is not None, "the reader declined a file it is meant to take"
    scratch, node = slicer_read(path)
    keys = tag_keys(path)
    assert "TerminologyEntry" in keys
    theirs = node.GetSegmentation()
    assert describe(ours, keys) == describe(theirs, keys)
    assert ours.GetNumberOfLayers() == theirs.GetNumberOfLayers() == 2
    ids = list(theirs.GetSegmentIDs())
    assert fingerprints(ours, ids) == fingerprints(theirs, ids)


def test_files_it_does_not_take_go_to_slicers_reader_and_damage_is_one_line(scene, tmp_path):
    plain = tmp_path / "plain.seg.nrrd"  # a labelmap without segment fields: Slicer names the labels
    a = np.zeros(SHAPE, np.uint8)
    a[2:5, 2:5, 2:5] = 3
    sitk.WriteImage(sitk.GetImageFromArray(a), str(plain))
    assert read_result(plain) is None
    volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.float32), name="vol")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    import_result(plain, node, volume)
    assert node.GetSegmentation().GetNumberOfSegments() == 1

    good = predictor_file(tmp_path / "r.seg.nrrd").read_bytes()
    damaged = tmp_path / "damaged.seg.nrrd"
    damaged.write_bytes(good[:-40])  # the gzip stream cut short
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(RuntimeError, match=r"without a readable result \(damaged.seg.nrrd"):
        import_result(damaged, other, volume)
    assert other.GetSegmentation().GetNumberOfSegments() == 0


def test_slab_boxes_and_fingerprints_equal_the_whole_layer_ones(monkeypatch):
    rng = np.random.default_rng(0)
    layer = np.zeros((37, 9, 11), np.uint8)
    for label in range(1, 6):
        k, j, i = rng.integers(0, 30), rng.integers(0, 5), rng.integers(0, 6)
        layer[k:k + rng.integers(1, 8), j:j + 4, i:i + 5] = label
    whole = {}
    for label in range(1, 6):
        hit = [np.flatnonzero((layer == label).any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        whole[label] = tuple(slice(h[0], h[-1] + 1) for h in hit)
    monkeypatch.setattr(segmentation_import, "SLAB", 4)  # several slabs, boxes across slab borders
    assert label_boxes(layer) == whole
    # the hash of a box hashed a slab at a time is the hash of the whole box (fingerprints stored by
    # earlier versions stay valid)
    box = whole[1]
    one = hashlib.sha1((layer[box] == 1).tobytes()).hexdigest()
    slabs = hashlib.sha1()
    for k in range(box[0].start, box[0].stop, 4):
        slabs.update((layer[(slice(k, min(k + 4, box[0].stop)),) + box[1:]] == 1).tobytes())
    assert slabs.hexdigest() == one


@pytest.fixture
def scene(app_scene):
    return app_scene
