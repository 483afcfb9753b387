"""Bad input to the Slicer module's logic (real MRML scene from slicer-core, real child processes):
the panel's own checks raise one clear ``ValueError`` before anything starts; whatever the child
refuses ends the job with its one-line message (no traceback), the scene exactly as it was (no
node added, no segment changed), and no temporary folder left behind."""
import hashlib
import sys
import tempfile
import zipfile

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytestmark = pytest.mark.usefixtures("slicer_lib")


def scene_state(scene):
    """Every node (class, name) and every segment (id, name, voxels) of the scene."""
    state = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        state.append((node.GetClassName(), node.GetName()))
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for k in range(segmentation.GetNumberOfSegments()):
                sid = segmentation.GetNthSegmentID(k)
                voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, sid)
                state.append((sid, segmentation.GetSegment(sid).GetName(),
                              hashlib.sha1(np.ascontiguousarray(voxels)).hexdigest()))
    return state


def volume(array=None, name="CT"):
    if array is None:
        array = (np.random.default_rng(0).random((24, 24, 24)) * 300).astype(np.float32)
    return slicer.util.addVolumeFromArray(array, name=name)


@pytest.fixture
def world(app_scene, tiny_model, tmp_path, monkeypatch):
    """A scene with a CT volume and a segmentation the user made; temporary folders in tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ct = volume()
    seg = app_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    sid = seg.GetSegmentation().AddEmptySegment("liver", "liver")
    mask = np.zeros((24, 24, 24), np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, ct)
    return {"scene": app_scene, "ct": ct, "seg": seg, "model": str(tiny_model), "tmp": tmp_path / "tmp",
            "dir": tmp_path}


def _corrupt_zip(w):
    path = w["dir"] / "broken.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    return str(path)


def _foreign_zip(w):
    path = w["dir"] / "foreign.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.json", '{"format": "nnunet"}')
    return str(path)


def _nan(w):
    array = slicer.util.arrayFromVolume(w["ct"]).copy()
    array[3, 3, 3] = np.nan
    return volume(array, "CT with NaN")


def _rgb(w):
    node = w["scene"].AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    slicer.util.updateVolumeFromArray(node, np.zeros((4, 24, 24, 3), np.uint8))
    return node


CHILD_REFUSES = {  # name: (changes to the default request, words of the message)
    "unknown-modality": ({"modality": "XRAY"}, "unknown modality 'XRAY'"),
    "unknown-task": ({"tasks": ["liverr"]}, "unknown task 'liverr'"),
    "missing-model": ({"model": lambda w: str(w["dir"] / "no-model")}, "is neither a package folder"),
    "corrupt-model": ({"model": _corrupt_zip}, "neither a model package folder nor a valid zip"),
    "foreign-model": ({"model": _foreign_zip}, "is not a UniversalSeg model description"),
    "constant-volume": ({"volume": lambda w: volume(np.full((24, 24, 24), 5, np.float32), "flat")},
                        "constant image"),
    "single-slice": ({"volume": lambda w: volume(np.ones((1, 24, 24), np.float32), "slice")},
                     "single slice"),
    "nan-voxels": ({"volume": _nan}, "NaN"),
    "rgb-volume": ({"volume": _rgb}, "components per voxel"),
    "roi-outside": ({"roi": [500, 600, 500, 600, 500, 600]}, "does not overlap the image"),
    "roi-nan": ({"roi": [0, float("nan"), 0, 10, 0, 10]}, "--roi needs finite numbers"),
    "overlap": ({"overlap": 1.5}, "overlap must be in [0, 1)"),
    "device": ({"device": "gpu0"}, "device 'gpu0' is not a device"),
}


@pytest.mark.parametrize("case", CHILD_REFUSES)
def test_what_the_child_refuses_ends_the_job_and_changes_nothing(world, case):
    from UniversalSegmentationLib.logic import UniversalSegLogic, wait
    changes, message = CHILD_REFUSES[case]
    request = {"volume_node": world["ct"], "model": world["model"], "modality": "CT", "tasks": ["liver"],
               "segmentation_node": world["seg"], "device": "cpu"}
    for key, value in changes.items():
        request["volume_node" if key == "volume" else key] = value(world) if callable(value) else value
    before = scene_state(world["scene"])
    job = wait(UniversalSegLogic(python=sys.executable).start(**request), 300)
    assert job.finished and not job.succeeded
    assert message in job.message and "Traceback" not in job.message, job.message
    assert job.message.startswith("universalseg predict: error:") and "\n" not in job.message
    assert scene_state(world["scene"]) == before
    assert list(world["tmp"].iterdir()) == []


PANEL_REFUSES = {  # refused by the logic itself before a process starts
    "no-volume": ({"volume_node": None}, "select an input volume"),
    "removed-volume": ({"volume_node": "removed"}, "select an input volume"),
    "no-tasks": ({"tasks": []}, "select at least one structure"),
    "no-modality": ({"modality": ""}, "select the modality"),
}


@pytest.mark.parametrize("case", PANEL_REFUSES)
def test_what_the_panel_refuses_starts_nothing(world, case):
    from UniversalSegmentationLib.logic import UniversalSegLogic
    changes, message = PANEL_REFUSES[case]
    request = {"volume_node": world["ct"], "model": world["model"], "modality": "CT", "tasks": ["liver"]}
    request.update(changes)
    if request["volume_node"] == "removed":
        other = volume(name="gone")
        world["scene"].RemoveNode(other)
        request["volume_node"] = other
    before = scene_state(world["scene"])
    with pytest.raises(ValueError, match=message):
        UniversalSegLogic(python=sys.executable).start(**request)
    assert scene_state(world["scene"]) == before and list(world["tmp"].iterdir()) == []


def test_undo_without_a_run_and_bad_downloads_imports_and_training(world):
    from UniversalSegmentationLib.logic import UniversalSegLogic, wait
    logic = UniversalSegLogic(python=sys.executable)
    before = scene_state(world["scene"])
    with pytest.raises(ValueError, match="there is no run to undo"):
        logic.undo_last_run()
    for job, message in ((logic.start_download("no-such-model"), "no model 'no-such-model' in the catalog"),
                         (logic.start_import(_corrupt_zip(world)), "is not a zip file"),
                         (logic.start_import(_foreign_zip(world)), "is not a UniversalSeg model description")):
        wait(job, 120)
        assert not job.succeeded and message in job.message and "Traceback" not in job.message, job.message
    assert scene_state(world["scene"]) == before and list(world["tmp"].iterdir()) == []
