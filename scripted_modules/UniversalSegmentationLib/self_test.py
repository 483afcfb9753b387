"""The module's self-test: a tiny random model, an oblique volume, a run into a new segmentation,
a failing run, a re-run that keeps an edited segment, undo, and a click refinement with undo. Slicer runs it from
``UniversalSegmentationTest`` (menu: Reload and Test); pytest runs the very same function against
``slicer-core`` (Testing/Python/test_slicer_self_test.py), so it is known to pass before anyone
opens Slicer.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .command import child_environment
from .logic import UniversalSegLogic
from .paths import python_executable

TINY_MODEL = (
    "import sys\n"
    "from UniversalSeg.model_package import save_package\n"
    "from UniversalSeg.networks import ModelConfig, UniversalSegNet\n"
    "from UniversalSeg.data.terminology import task_info\n"
    "from UniversalSeg.data.modalities import KNOWN_MODALITIES\n"
    "c = ModelConfig.from_dict({'tasks': ['liver', 'spleen', 'liver-tumor'], 'modalities': ['CT'],"
    " 'base_width': 4, 'fusion': {'head_dim': 4, 'modality_tokens': 2}, 'prompt': {'enabled': True, 'width': 4}})\n"
    "net = UniversalSegNet(c)\n"
    "net.prompt.out.bias.data.fill_(20.0)  # its click stage turns the region around a click on\n"
    "save_package(sys.argv[1], net, [task_info(t) for t in c.tasks],"
    " dict(KNOWN_MODALITIES), (3.0, 3.0, 3.0), (32, 32, 32))\n")


def make_tiny_model(folder: Path, python: str) -> Path:
    model = folder / "tiny"
    done = subprocess.run([python, "-c", TINY_MODEL, str(model)], env=child_environment(), cwd=folder,
                          capture_output=True, text=True)
    if done.returncode != 0:  # the child's own words, not just its exit code
        raise RuntimeError(f"writing the tiny model failed (exit code {done.returncode}):\n{done.stderr[-2000:]}")
    return model


def torch_problem(python: str) -> str:
    """Why ``python`` cannot run the core ('' when it imports torch). Slicer's Python has no torch
    until the module installs it on first use, e.g. in every Extensions Index build."""
    done = subprocess.run([python, "-c", "import torch"], env=child_environment(), capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return "" if done.returncode == 0 else (lines[-1] if lines else f"exit code {done.returncode}")


def oblique_volume(scene):
    import slicer
    import vtk
    volume = slicer.util.addVolumeFromArray((np.random.default_rng(0).random((40, 36, 32)) * 400 - 100)
                                            .astype(np.float32), name="oblique CT")
    m = vtk.vtkMatrix4x4()
    for r, c, v in ((0, 0, -2.5), (1, 1, 0.0), (1, 2, 3.0), (2, 2, 0.0), (2, 1, 2.0), (0, 3, 40.0)):
        m.SetElement(r, c, v)
    volume.SetIJKToRASMatrix(m)
    return volume


def names(node) -> list:
    s = node.GetSegmentation()
    return [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def run_self_test(scene, say=print, python: str | None = None) -> bool:
    """Runs every step; False (and says why) when it is skipped because torch is not installed."""
    python = python or python_executable()
    problem = torch_problem(python)
    if problem:
        say(f"Skipped: torch cannot be imported ({problem}). UniversalSeg installs it the first time you "
            "press Apply; run the test again after that.")
        return False
    folder = Path(tempfile.mkdtemp(prefix="UniversalSeg-selftest-"))
    try:
        _steps(scene, say, python, folder)
        return True
    finally:  # the tiny model and the training set go with the test
        shutil.rmtree(folder, ignore_errors=True)


def _steps(scene, say, python: str, folder: Path) -> None:
    import slicer
    say("A tiny random model, written by the core in a child process")
    model = str(make_tiny_model(folder, python))
    logic = UniversalSegLogic(python=python)
    volume = oblique_volume(scene)
    n_segmentations = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")

    say("A failing run (unknown modality) leaves no segmentation behind")
    job = logic.run(volume, model, "PET", ["liver"], None, device="cpu")
    check(not job.succeeded and "PET" in job.message, f"expected a modality error, got {job.message!r}")
    check(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == n_segmentations, "an empty output was left")

    say("A run into a new segmentation: named, visible, on the volume's grid")
    job = logic.run(volume, model, "CT", ["liver", "spleen", "liver-tumor"], None, device="cpu")
    check(job.succeeded, job.message)
    seg = job.segmentation_node
    check(names(seg) == ["Liver", "Spleen", "Liver tumor"], f"segment names {names(seg)}")
    check(seg.GetDisplayNode() is not None, "the new segmentation has no display node")
    liver = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume)
    check(liver.shape == slicer.util.arrayFromVolume(volume).shape, "the result is not on the volume's grid")

    say("The user edits the spleen; a re-run keeps it and replaces the rest")
    spleen = np.zeros(liver.shape, np.uint8)
    spleen[2:5, 2:5, 2:5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(spleen, seg, "spleen", volume)
    before_liver = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume).copy()
    job = logic.run(volume, model, "CT", ["liver", "spleen"], seg, device="cpu")
    check(job.succeeded and job.undo.kept == ["spleen"] and job.undo.replaced == ["liver"],
          f"re-run: {job.message}")
    check(int(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "spleen", volume).sum()) == 27, "the edit was lost")

    say("The corrected spleen goes into a training set, on the volume's grid (#13)")
    import SimpleITK as sitk
    from .training_set_export import add_to_training_set
    added = add_to_training_set(volume, seg, folder / "MyCases", "CT", {"liver": "Liver", "spleen": "Spleen"},
                                segment_ids=["spleen"])
    saved = sitk.ReadImage(str(folder / "MyCases" / added.dataset / "labelsTr" / f"{added.case_id}.nii.gz"))
    check(saved.GetSize()[::-1] == spleen.shape and int(sitk.GetArrayFromImage(saved).sum()) == 27,
          "the saved label is not the corrected spleen on the volume's grid")

    say("Undo last run puts back exactly what it replaced")
    logic.undo_last_run()
    check(names(seg) == ["Liver", "Spleen", "Liver tumor"], f"after undo: {names(seg)}")
    check(np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume), before_liver),
          "undo did not restore the liver")

    say("Refine with clicks (#15): a positive click adds to the liver, undo takes it back")
    import time

    import vtk
    # the user's edit is the start (the random model's own liver may already cover the click)
    start = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    start[2:6, 2:6, 2:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(start, seg, "liver", volume)
    spleen_now = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "spleen", volume)
    refinement = logic.start_refinement(volume, seg, "liver", "liver", "CT", model, device="cpu")
    try:
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        ras = (slicer.util.arrayFromVTKMatrix(m) @ np.array([16.0, 18.0, 20.0, 1.0]))[:3]
        refinement.points[True].AddControlPointWorld(*ras)

        def settle():
            deadline = time.time() + 300
            while not (refinement.ready and not refinement.pending):
                errors = refinement.poll()
                check(not errors and time.time() < deadline, f"refinement: {errors or 'no answer in time'}")
                time.sleep(0.05)

        settle()
        liver = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume)
        check(liver[20, 18, 16] == 1 and liver.sum() > start.sum(), "the click did not add to the liver")
        check(np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "spleen", volume), spleen_now),
              "a click on the liver changed the spleen")
        refinement.undo()
        settle()
        check(np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", volume), start),
              "undo did not restore the liver")
    finally:
        logic.stop_worker()
