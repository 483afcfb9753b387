"""The Slicer module's logic against the real Slicer core (``slicer-core`` from PyPI): real MRML
scene, volume and segmentation nodes, storage nodes and Segmentations logic. No fake MRML."""
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
sys.path.append(str(Path(__file__).parents[2] / "scripted_modules"))  # after the core package

from UniversalSegmentationLib.command import PredictRequest, predict_command  # noqa: E402
from UniversalSegmentationLib.logic import UniversalSegLogic  # noqa: E402
from UniversalSegmentationLib.process_runner import ProcessRunner  # noqa: E402
from UniversalSegmentationLib.segmentation_import import FINGERPRINT_TAG, segment_tag  # noqa: E402


@pytest.fixture
def scene(app_scene):
    assert not app_scene.GetUndoFlag()
    return app_scene


def volume_from_case(image_path, scene):
    """A scalar volume node with the case's non-identity IJK-to-RAS (flipped, thick slices)."""
    img = sitk.ReadImage(str(image_path))
    node = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(img), name="abdomen CT")
    m = vtk.vtkMatrix4x4()
    d = np.array(img.GetDirection()).reshape(3, 3) * img.GetSpacing()
    lps_to_ras = np.diag([-1, -1, 1])
    ras = lps_to_ras @ d
    origin = lps_to_ras @ np.array(img.GetOrigin())
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, ras[r, c])
        m.SetElement(r, 3, origin[r])
    node.SetIJKToRASMatrix(m)
    return node, img


def ras_of_voxels(node, kji):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    a = slicer.util.arrayFromVTKMatrix(m)
    ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
    return (a @ ijk1.T)[:3].T


def test_logic_creates_named_segments_in_the_right_place(scene, trained_run, synth_collection):
    root = synth_collection.parent / "ct-hospital-b"
    volume, img = volume_from_case(root / "imagesTr" / "ct-hospital-b_002_0000.nii.gz", scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    sh.CreateItem(study, volume)  # the Slicer application's DICOM / SH plugins do this on load
    job = UniversalSegLogic(python=sys.executable).run(volume, trained_run["package"], "CT",
                                                       ["liver", "liver-tumor"])
    seg = job.segmentation_node  # created when the result is in
    assert job.succeeded, job.message + "\n".join(job.runner.stderr_lines[-10:])
    segmentation = seg.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == ["liver", "liver-tumor"]
    liver = segmentation.GetSegment("liver")
    assert liver.GetName() == "Liver"
    np.testing.assert_allclose(liver.GetColor(), np.array([221, 130, 101]) / 255, atol=1e-3)
    assert "SCT^10200004^Liver" in segment_tag(liver, slicer.vtkSegment.GetTerminologyEntryTagName())
    tumor_entry = segment_tag(segmentation.GetSegment("liver-tumor"), "TerminologyEntry")
    assert "SCT^108369006^Neoplasm" in tumor_entry
    # each code in the Slicer terminology context that holds it (test_slicer_rules.py has the lists)
    assert tumor_entry.startswith("Segmentation category and type - DICOM master list~")
    assert segment_tag(liver, "TerminologyEntry").startswith(
        "Segmentation category and type - 3D Slicer General Anatomy list~")
    assert seg.GetDisplayNode() is not None  # a node made by code is invisible without one
    assert seg.GetName() == "abdomen CT UniversalSeg"
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is not None or \
        seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    # voxels where they should be, in RAS: compare with the reference label of the case
    got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume) > 0
    truth = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "ct-hospital-b_002.nii.gz"))), [1, 2])
    assert got.shape == truth.shape
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.6
    centroid_got = ras_of_voxels(volume, np.argwhere(got)).mean(0)
    centroid_truth = ras_of_voxels(volume, np.argwhere(truth)).mean(0)
    # within two voxels along every RAS axis (5.6 x 5.6 x 11 mm here: the 60-step test model's
    # liver is not perfect); a flipped or shifted grid would put the liver ~55 mm away (it lies
    # 28 mm right of the midline). The predictor's geometry to the voxel: test_inference_geometry.py
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    voxel_ras = np.abs(slicer.util.arrayFromVTKMatrix(m)[:3, :3]).sum(1)
    assert (np.abs(centroid_got - centroid_truth) < 2 * voxel_ras).all(), (centroid_got, centroid_truth, voxel_ras)
    assert centroid_truth[0] > 10  # RAS: +x is the patient's right, where the liver lies
    assert segment_tag(liver, FINGERPRINT_TAG)
    assert not Path(job.workdir).exists()


def test_rerun_replaces_only_the_tasks_run_and_keeps_user_edits(scene, trained_run, synth_collection):
    root = synth_collection.parent / "ct-hospital-a"
    volume, _ = volume_from_case(root / "imagesTr" / "ct-hospital-a_001_0000.nii.gz", scene)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    mine = seg.GetSegmentation().AddEmptySegment("my-notes", "My notes", [0, 1, 0])
    arr = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    arr[2:4, 2:4, 2:4] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(arr, seg, mine, volume)
    logic = UniversalSegLogic(python=sys.executable)
    first = logic.run(volume, trained_run["package"], "CT", ["liver", "spleen"], seg)
    assert first.succeeded and first.segmentation_node is seg
    # the user edits the spleen
    spleen = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "spleen", volume)
    spleen[:] = 0
    spleen[5:8, 5:8, 5:8] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(spleen, seg, "spleen", volume)
    liver_before = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume).copy()
    # the user only renames the liver: that is an edit too, so it must be kept
    seg.GetSegmentation().GetSegment("liver").SetName("Liver (checked)")
    job = logic.run(volume, trained_run["package"], "CT", ["liver", "spleen", "kidney"], seg,
                    keep_edited=True)
    assert (job.undo.added, job.undo.replaced, job.undo.kept) == (["kidney"], [], ["liver", "spleen"])
    kidney_before = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "kidney", volume).copy()
    seg.GetSegmentation().GetSegment("liver").SetName("Liver")  # back to what UniversalSeg wrote
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    half = bounds[:1] + [(bounds[0] + bounds[1]) / 2] + bounds[2:]  # a different result: half the body
    job = logic.run(volume, trained_run["package"], "CT", ["liver", "spleen", "kidney"], seg, roi=half)
    assert (job.undo.added, job.undo.replaced, job.undo.kept) == ([], ["liver", "kidney"], ["spleen"])
    ids = list(seg.GetSegmentation().GetSegmentIDs())
    assert ids == [mine, "liver", "spleen", "kidney"]  # replaced segments keep their place
    assert slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, volume).sum() == 8
    assert slicer.util.arrayFromSegmentBinaryLabelmap(seg, "spleen", volume).sum() == 27
    assert scene.GetNumberOfUndoLevels() == 0  # scene undo is off, as in the application

    # "Undo last run" works without scene undo: the liver and kidney of the second run go back
    assert not np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume), liver_before)
    logic.undo_last_run()
    assert list(seg.GetSegmentation().GetSegmentIDs()) == [mine, "liver", "spleen", "kidney"]
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume), liver_before)
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "kidney", volume), kidney_before)
    with pytest.raises(ValueError, match="no run to undo"):
        logic.undo_last_run()


def test_cancel_kills_the_process_tree_and_leaves_the_scene_unchanged(scene, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open(r'{tmp_path / 'child.pid'}', 'w').write(str(child.pid))\n"
        "print('{\"stage\": \"infer\", \"fraction\": 0.3, \"message\": \"working\"}', flush=True)\n"
        "time.sleep(300)\n")
    runner = ProcessRunner()
    runner.start([sys.executable, str(script)])
    deadline = time.time() + 30
    lines = []
    while time.time() < deadline and not (tmp_path / "child.pid").exists():
        time.sleep(0.05)
    while time.time() < deadline and not lines:
        lines = runner.poll()
        time.sleep(0.05)
    assert "infer" in lines[0]
    child = int((tmp_path / "child.pid").read_text())
    n_nodes = scene.GetNumberOfNodes()
    runner.cancel()
    assert not runner.running and runner.cancelled
    assert not alive(child, wait=10), "the grandchild process survived the cancel"
    assert scene.GetNumberOfNodes() == n_nodes


def alive(pid, wait=0.0):
    """True while the process exists and is not a zombie (killed, waiting to be reaped)."""
    deadline = time.time() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            running = state != "Z"
        except FileNotFoundError:
            running = False
        if not running or time.time() > deadline:
            return running
        time.sleep(0.1)


def test_predict_command_is_an_argument_list_not_a_shell_string():
    req = PredictRequest(model="/models/a b.zip", input_path="/tmp/in put.nrrd", modality="CT",
                         output_path="/tmp/out.seg.nrrd", tasks=["liver", "liver-tumor"], fast=True,
                         roi=(-10, 10, -5, 5, 0, 20.5))
    cmd = predict_command(req, python="/opt/Slicer/bin/PythonSlicer")
    assert cmd[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "UniversalSeg", "predict"]
    assert cmd[cmd.index("--model") + 1] == "/models/a b.zip"
    assert cmd[cmd.index("--tasks") + 1] == "liver,liver-tumor"
    assert cmd[cmd.index("--roi") + 1:cmd.index("--roi") + 7] == ["-10", "10", "-5", "5", "0", "20.5"]
    assert "--fast" in cmd and cmd[cmd.index("--progress") + 1] == "json"


def test_import_shares_layers_follows_the_volume_transform_and_refuses_a_mixed_frame(scene, tmp_path):
    """Non-overlapping segments share one labelmap layer (100 structures cost about one volume);
    the lesion inside the organ keeps its own. The result follows the input volume's parent
    transform; an existing segmentation in another frame is refused before anything changes."""
    from UniversalSeg.data.terminology import task_info
    from UniversalSeg.inference.writers import write_seg_nrrd
    from UniversalSegmentationLib.segmentation_import import import_result
    shape = (20, 22, 24)  # (k, j, i)
    reference = sitk.Image(shape[::-1], sitk.sitkUInt8)
    boxes = {"liver": (slice(2, 10), slice(2, 12), slice(2, 12)), "spleen": (slice(12, 18), slice(2, 8), slice(2, 8)),
             "liver-tumor": (slice(4, 6), slice(4, 6), slice(4, 6))}
    masks = {}
    for task, box in boxes.items():
        a = np.zeros(shape, np.uint8)
        a[box] = 1
        masks[task] = sitk.GetImageFromArray(a)
        masks[task].CopyInformation(reference)
    result = write_seg_nrrd(tmp_path / "r.seg.nrrd", reference, masks, {t: task_info(t) for t in masks})
    volume = slicer.util.addVolumeFromArray(np.zeros(shape, np.float32), name="vol")
    volume.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)  # LPS identity, as the reference
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    record = import_result(result, seg, volume)
    assert record.added == ["liver", "spleen", "liver-tumor"]
    assert seg.GetSegmentation().GetNumberOfLayers() == 2  # one per segment would be 3
    assert seg.GetSegmentation().GetLayerIndex("liver") == seg.GetSegmentation().GetLayerIndex("spleen")
    assert seg.GetTransformNodeID() == transform.GetID()
    for task, box in boxes.items():
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, task, volume)
        expected = np.zeros(shape, np.uint8)
        expected[box] = 1
        assert np.array_equal(got > 0, expected > 0), task  # to the voxel, on the volume's grid

    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    other.GetSegmentation().AddEmptySegment("mine")  # made in the world frame, no transform
    with pytest.raises(RuntimeError, match="another transform"):
        import_result(result, other, volume)
    assert list(other.GetSegmentation().GetSegmentIDs()) == ["mine"] and other.GetTransformNodeID() is None


def test_panel_options_reach_the_child_command_line(scene, tmp_path):
    """The panel's "Keep only the largest parts" (parameter largestComponent) becomes the child's
    --largest-component; unticked, the flag is absent."""
    started = []

    class Recorder:
        running, cancelled, returncode, stderr_lines = True, False, None, []

        def start(self, cmd, env=None, cwd=None):
            started.append(cmd)

        def cancel(self):
            self.cancelled = True

    volume = slicer.util.addVolumeFromArray(np.zeros((8, 8, 8), np.float32), name="v")
    logic = UniversalSegLogic(runner_factory=Recorder, python=sys.executable)
    for flag in (True, False):
        job = logic.start(volume, str(tmp_path / "model"), "CT", ["liver"], largest_component=flag)
        job.cancel()
    assert "--largest-component" in started[0] and "--largest-component" not in started[1]
