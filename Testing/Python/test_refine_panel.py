"""Refine mode's MRML side (#15), against the real MRML core and a real warm worker: points
placed in the views refine ONE segment box by box, undo restores it voxel for voxel, discard puts
back the start, other segments never change; the panel lists what can be refined."""
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
sys.path.append(str(Path(__file__).parents[2] / "scripted_modules"))  # after the core package

from test_slicer_logic import volume_from_case  # noqa: E402
from UniversalSegmentationLib.logic import UniversalSegLogic  # noqa: E402
from UniversalSegmentationLib.panel_state import PanelState  # noqa: E402


def settle(refinement, until, timeout=120.0):
    end = time.time() + timeout
    errors = []
    while time.time() < end:
        errors += refinement.poll()
        if until():
            return errors
        time.sleep(0.05)
    pytest.fail(f"timed out; status {refinement.status!r}, errors {errors}, worker log "
                f"{refinement.worker.stderr_lines[-5:]}")


def add_place_singletons(scene):
    """The application's selection and interaction singletons (slicer-core's scene has none)."""
    for cls in (slicer.vtkMRMLSelectionNode, slicer.vtkMRMLInteractionNode):
        node = cls()
        node.SetSingletonTag("Singleton")
        scene.AddNode(node)
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLScene(scene)
    slicer.modules.markups = type("M", (), {"logic": staticmethod(lambda: logic)})
    return logic


def test_clicks_refine_one_segment_with_undo_and_discard(app_scene, painting_click_model, trained_run,
                                                         synth_collection):
    image = next((synth_collection.parent / "ct-hospital-a" / "imagesTr").glob("*.nii.gz"))
    volume, _ = volume_from_case(image, app_scene)
    seg = app_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    shape = slicer.util.arrayFromVolume(volume).shape
    for sid, name, box in (("seg-liver", "Liver", np.s_[4:12, 4:12, 4:12]),
                           ("seg-spleen", "Spleen", np.s_[20:26, 20:26, 20:26]),
                           ("seg-notes", "My notes", np.s_[1:3, 1:3, 1:3])):
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        seg.GetSegmentation().AddEmptySegment(sid, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, volume)

    def array(sid):
        return slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume)

    start_liver, start_spleen = array("seg-liver"), array("seg-spleen")

    state = PanelState()
    state.select_model(state.load_models([trained_run["package"]], select=trained_run["package"]))
    assert "no click refinement" in state.refine_problem(seg, "CT") and state.refinable_segments(seg) == []
    state.select_model(state.load_models([painting_click_model], select=painting_click_model))
    assert state.clicks and state.refine_problem(seg, "CT") == ""
    assert [(s, t) for s, t, _ in state.refinable_segments(seg)] == [("seg-liver", "liver"), ("seg-spleen", "spleen")]

    markups_logic = add_place_singletons(app_scene)
    logic = UniversalSegLogic(python=sys.executable)
    try:
        refinement = logic.start_refinement(volume, seg, "seg-liver", "liver", "CT", painting_click_model, device="cpu")
        # a click before the worker is ready waits for it
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))
        target = np.array([20, 8, 14])  # (i, j, k): outside the liver box
        ras = (ijk_to_ras @ np.array([*target, 1.0]))[:3]
        refinement.points[True].AddControlPointWorld(*ras)
        settle(refinement, lambda: refinement.ready and not refinement.pending)
        after = array("seg-liver")
        assert after[target[2], target[1], target[0]] == 1          # the click's voxel is in the segment
        assert (after != start_liver).sum() > 10
        assert np.array_equal(array("seg-spleen"), start_spleen)    # the other segment never changes
        changed = np.argwhere(after != start_liver)
        assert changed.min(0).tolist() != [0, 0, 0] or changed.max(0).tolist() != [s - 1 for s in shape]

        # Slicer's place mode on the negative list
        refinement.place(False)
        interaction = app_scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        assert interaction.GetCurrentInteractionMode() == slicer.vtkMRMLInteractionNode.Place
        assert markups_logic.GetActiveListID() == refinement.points[False].GetID()

        # undo: the segment voxel for voxel as before the click, and the click's point removed
        assert refinement.undo()
        settle(refinement, lambda: not refinement.pending)
        assert np.array_equal(array("seg-liver"), start_liver)
        assert refinement.points[True].GetNumberOfControlPoints() == 0 and not refinement.undo()

        # a bad click (outside the volume) is reported in one line and forgotten
        refinement.points[True].AddControlPointWorld(5000.0, 0.0, 0.0)
        errors = settle(refinement, lambda: not refinement.pending)
        assert len(errors) == 1 and "outside the image" in errors[0] and not refinement.clicks

        # another click, then discard: the segment as it was when refining started
        refinement.points[True].AddControlPointWorld(*ras)
        settle(refinement, lambda: not refinement.pending)
        assert not np.array_equal(array("seg-liver"), start_liver)
        workdir = refinement.workdir
        logic.end_refinement(accept=False)
        assert np.array_equal(array("seg-liver"), start_liver) and np.array_equal(array("seg-spleen"), start_spleen)
        assert refinement.points[True].GetScene() is None and not workdir.exists()
        assert logic.refine_worker.running  # warm for the next refinement
    finally:
        worker = logic.refine_worker
        logic.stop_worker()
    assert not worker.running and logic.refinement is None


def _ijk_to_ras(volume):
    import vtk
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return m


def test_a_click_box_keeps_the_segment_outside_it_and_every_other_segment(app_scene):
    """Segments sharing one layer (as results are imported): writing a box must not clear the
    rest of the segment (MODE_REPLACE would: vtkSegmentationModifier clears a shared segment)."""
    from UniversalSegmentationLib.refinement import write_box
    volume = slicer.util.addVolumeFromArray(np.zeros((20, 22, 24), np.int16), name="v")
    seg = app_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for sid, box in (("a", np.s_[2:10, 2:10, 2:10]), ("b", np.s_[12:18, 12:18, 12:18])):
        mask = np.zeros((20, 22, 24), np.uint8)
        mask[box] = 1
        seg.GetSegmentation().AddEmptySegment(sid, sid)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, volume)
    seg.GetSegmentation().CollapseBinaryLabelmaps(False)
    assert seg.GetSegmentation().GetNumberOfLayers() == 1
    before_a = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "a", volume).copy()
    before_b = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "b", volume).copy()
    values = np.zeros((4, 4, 4), np.uint8)
    values[:, :, 2:] = 1  # (k, j, i): half of the box on, half off
    write_box(seg, "a", volume, ((6, 10), (6, 10), (6, 10)), values)
    expected = before_a.copy()
    expected[6:10, 6:10, 6:10] = values
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "a", volume), expected)
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "b", volume), before_b)


def test_a_click_that_changes_exclusive_mates_updates_their_segments_and_discard_restores_them(app_scene):
    """A model with mutually exclusive structures answers a click with the mates whose voxels it
    took ("also"); the panel writes those boxes too, and Discard puts them back."""
    from types import SimpleNamespace

    from UniversalSeg.inference.worker import encode_mask
    from UniversalSegmentationLib.refinement import SegmentRefinement
    add_place_singletons(app_scene)
    volume = slicer.util.addVolumeFromArray(np.zeros((12, 12, 12), np.int16), name="v")
    seg = app_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for sid, box in (("cortex", np.s_[0:6]), ("white-matter", np.s_[6:12])):
        mask = np.zeros((12, 12, 12), np.uint8)
        mask[box] = 1
        seg.GetSegmentation().AddEmptySegment(sid, sid)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, volume)
    start = {s: slicer.util.arrayFromSegmentBinaryLabelmap(seg, s, volume).copy() for s in ("cortex", "white-matter")}
    worker = SimpleNamespace(send=lambda message: 0)
    refinement = SegmentRefinement(worker, volume, seg, "cortex", "cortex", "MR-T1", "model", "/tmp/unused")
    box = [[0, 12], [0, 12], [6, 8]]  # (i, j, k): slices 6-7 go from white matter to cortex
    on, off = np.ones((2, 12, 12), np.uint8), np.zeros((2, 12, 12), np.uint8)
    refinement.apply({"box": box, "shape": [2, 12, 12], "mask": encode_mask(on),
                      "also": [{"task": "white-matter", "box": box, "shape": [2, 12, 12], "mask": encode_mask(off)}]})
    cortex = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "cortex", volume)
    white = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "white-matter", volume)
    assert cortex[:8].all() and not cortex[8:].any() and not white[:8].any() and white[8:].all()
    assert not (cortex & white).any()
    refinement.discard()
    for sid, array in start.items():
        assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume), array)


def test_click_boxes_written_anywhere_keep_the_rest_exact_on_an_oblique_grid(app_scene):
    """Random boxes (inside, across and outside the segment's extent), an emptied segment
    filled again, segments sharing a layer, an oblique volume: each write changes exactly its box
    of exactly its segment."""
    import vtk

    from UniversalSegmentationLib.refinement import write_box
    shape = (20, 22, 24)
    volume = slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), name="oblique")
    m = vtk.vtkMatrix4x4()
    for r, c, v in ((0, 0, -1.5), (1, 1, 0.0), (1, 2, 2.0), (2, 2, 0.0), (2, 1, 1.2), (0, 3, 10.0)):
        m.SetElement(r, c, v)
    volume.SetIJKToRASMatrix(m)
    seg = app_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for sid, box in (("a", np.s_[1:4, 1:4, 1:4]), ("b", np.s_[12:18, 12:18, 12:18]), ("c", np.s_[0:0])):
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        seg.GetSegmentation().AddEmptySegment(sid, sid)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, volume)
    seg.GetSegmentation().CollapseBinaryLabelmaps(False)

    def array(sid):
        return slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume).copy()

    b = array("b")
    rng = np.random.default_rng(0)
    for sid in ("a", "c"):
        for _ in range(5):
            lo = rng.integers(0, shape)
            hi = np.minimum(lo + rng.integers(1, 12, 3), shape)
            values = (rng.random(hi - lo) > 0.5).astype(np.uint8)
            expected = array(sid)
            expected[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = values
            write_box(seg, sid, volume, ((lo[2], hi[2]), (lo[1], hi[1]), (lo[0], hi[0])), values)
            assert np.array_equal(array(sid), expected) and np.array_equal(array("b"), b)
        write_box(seg, sid, volume, ((0, 24), (0, 22), (0, 20)), np.zeros(shape, np.uint8))
        assert not array(sid).any()
        write_box(seg, sid, volume, ((2, 5), (2, 5), (2, 5)), np.ones((3, 3, 3), np.uint8))
        assert array(sid).sum() == 27 and np.array_equal(array("b"), b)
