"""The user's training set (#13): corrected segments in a real MRML scene (slicer-core) -> an
nnU-Net-layout case on the volume's exact grid, a catalog that trains, nothing overwritten."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input_checks import tree_state
from UniversalSeg.data.catalog import load_catalog
from UniversalSeg.data.training_set import TrainingSetError, add_case, region_labels

slicer = pytest.importorskip("slicer")
sys.path.append(str(Path(__file__).parents[2] / "scripted_modules"))  # after the core package

from test_slicer_logic import volume_from_case  # noqa: E402
from UniversalSegmentationLib.training_set_export import add_to_training_set, next_case_id, training_set_summary  # noqa: E402

MODEL_TASKS = {"liver": "Liver", "spleen": "Spleen", "kidney": "Kidney", "liver-tumor": "Liver tumor"}


def corrected_scene(scene, image_path):
    """The CT-B case (flipped axes, thick slices) with a liver (ID = task, as UniversalSeg names
    it), a lesion the user drew inside AND across the liver's edge, and a user-named new structure."""
    volume, img = volume_from_case(image_path, scene)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "corrected")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    shape = slicer.util.arrayFromVolume(volume).shape
    masks = {}
    for sid, name, box in (("liver", "Liver", (slice(4, 12), slice(6, 20), slice(5, 18))),
                           ("Segment_2", "Liver tumor", (slice(9, 14), slice(10, 14), slice(10, 13))),
                           ("Segment_3", "Renal cortex", (slice(2, 5), slice(20, 26), slice(20, 26)))):
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        seg.GetSegmentation().AddEmptySegment(sid, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, volume)
        masks[sid] = mask.astype(bool)
    return volume, seg, img, masks


def test_corrected_segments_become_a_case_on_the_volumes_exact_grid(app_scene, synth_collection, tmp_path):
    image_path = next((synth_collection.parent / "ct-hospital-b" / "imagesTr").glob("*.nii.gz"))
    volume, seg, img, masks = corrected_scene(app_scene, image_path)
    folder = tmp_path / "MyCases"
    nodes_before = app_scene.GetNumberOfNodes()
    added = add_to_training_set(volume, seg, folder, "CT", MODEL_TASKS,
                                segment_ids=["liver", "Segment_2", "Segment_3"])
    assert app_scene.GetNumberOfNodes() == nodes_before  # no temporary node left in the scene
    assert added.case_id == "abdomen-ct" and added.structures == ("liver", "liver-tumor", "renal-cortex")
    cat = load_catalog(folder / "catalog.yaml")
    ds = cat.dataset("ct_liver_liver-tumor_renal-cortex")
    assert ds.modality == "CT" and [c.id for c in ds.splits["train"]] == ["abdomen-ct"]
    label = sitk.ReadImage(str(ds.splits["train"][0].label))
    image = sitk.ReadImage(str(ds.splits["train"][0].image))
    for written in (label, image):  # the grid of the original file, which the volume node carries
        assert written.GetSize() == img.GetSize()
        np.testing.assert_allclose(written.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetSpacing(), img.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(written.GetDirection(), img.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(img))
    lab = sitk.GetArrayFromImage(label)
    for sid, task in (("liver", "liver"), ("Segment_2", "liver-tumor"), ("Segment_3", "renal-cortex")):
        np.testing.assert_array_equal(np.isin(lab, ds.label_map[task]), masks[sid])  # overlap kept
    assert training_set_summary(folder) == "liver 1, liver-tumor 1, renal-cortex 1"


def test_only_the_models_structures_by_default_and_nothing_overwritten(app_scene, synth_collection, tmp_path):
    image_path = next((synth_collection.parent / "ct-hospital-b" / "imagesTr").glob("*.nii.gz"))
    volume, seg, img, masks = corrected_scene(app_scene, image_path)
    folder = tmp_path / "MyCases"
    first = add_to_training_set(volume, seg, folder, "CT", MODEL_TASKS)
    assert first.structures == ("liver", "liver-tumor")  # "Renal cortex" is no model task: not by default
    before = tree_state(folder)
    with pytest.raises(TrainingSetError, match="already in the training set .* confirm replacing it"):
        add_to_training_set(volume, seg, folder, "CT", MODEL_TASKS, case_id=first.case_id)
    assert tree_state(folder) == before
    assert next_case_id(folder, volume.GetName()) == "abdomen-ct-2"
    again = add_to_training_set(volume, seg, folder, "CT", MODEL_TASKS, segment_ids=["liver"],
                                case_id=first.case_id, overwrite=True)  # replaced: now in the liver-only set
    cat = load_catalog(folder / "catalog.yaml")
    assert [d.name for d in cat.datasets] == ["ct_liver"] and again.counts == {"liver": 1}
    with pytest.raises(TrainingSetError, match="empty"):
        seg.GetSegmentation().AddEmptySegment("spleen", "Spleen")
        add_to_training_set(volume, seg, folder, "CT", MODEL_TASKS, segment_ids=["spleen"], case_id="x")
    with pytest.raises(TrainingSetError, match="case name"):
        add_to_training_set(volume, seg, folder, "CT", MODEL_TASKS, case_id="../escape")


def test_region_labels_keep_every_overlap():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    c = np.zeros_like(a)
    a[:2], b[1:3], c[3, 3, 3] = True, True, True
    label, values, names = region_labels({"b": b, "a": a, "c": c})
    for name, mask in (("a", a), ("b", b), ("c", c)):
        assert (np.isin(label, values[name]) == mask).all()
    assert names == {"a": 1, "b": 2, "c": 3, "a+b": 4}
    img = sitk.GetImageFromArray(np.zeros((4, 4, 5), np.float32))
    with pytest.raises(TrainingSetError, match="not on the volume's grid"):
        add_case("/nonexistent-never-written", img, {"a": a}, "CT", "c1")
