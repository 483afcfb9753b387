"""Exclusive task groups (``exclusive_groups`` in model.json): a voxel is at most one task of a group.

A tiny static-head network whose output biases are set so that the raw sigmoids of liver, spleen
and kidney overlap almost everywhere (and "brain", in no group, is on everywhere: it nests), saved
with ``save_package`` and the groups added to its model.json. Checked: the predictor's masks, the
labelmap, .seg.nrrd and DICOM SEG files, click refinement (session and worker), and the rule
itself (argmax among the members that reach their threshold); a package without the field gives
the masks of the plain threshold path bit for bit (the shipped brain model); bad groups are
refused with one line, exit 3.
"""
import base64
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from conftest import tiny_config
from dicom_series import write_ct_series
from test_click_refinement import ClickPainter, NegativePainter  # stand-in click stages with known answers
from UniversalSeg.cli import main
from UniversalSeg.data.modalities import KNOWN_MODALITIES
from UniversalSeg.data.terminology import task_info
from UniversalSeg.exclusive_groups import ExclusiveResolver, read_groups, with_members
from UniversalSeg.inference import PredictOptions, Predictor
from UniversalSeg.inference.interactive import InteractiveSession
from UniversalSeg.inference.worker import Worker
from UniversalSeg.model_metadata import PackageError, read_summary
from UniversalSeg.model_package import load_package, save_package
from UniversalSeg.networks import UniversalSegNet

GROUP = ["liver", "spleen", "kidney"]
SHIPPED = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "brain-synth-1.0.1.zip"


def with_groups(path: Path, groups) -> Path:
    meta = json.loads((path / "model.json").read_text())
    if groups is None:
        meta.pop("exclusive_groups", None)
    else:
        meta["exclusive_groups"] = groups
    (path / "model.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """A package (folder) whose group members' raw sigmoids are all >= 0.5 almost everywhere."""
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(domains=[], head="static",
                                      prompt={"enabled": True, "width": 4, "sigma": 2.0})).eval()
    with torch.no_grad():
        kernels = net.task_head.kernels.weight  # [task, C + 1]: weights, then the bias
        kernels.zero_()
        for channel, task in enumerate(GROUP):  # logit 2 + 2 * feature channel: each wins where its channel is highest
            kernels[net.config.tasks.index(task), channel] = 2.0
        for task, bias in {"liver": 2.0, "spleen": 2.0, "kidney": 2.0, "tumor": -30.0, "brain": 30.0}.items():
            kernels[net.config.tasks.index(task), -1] = bias
    path = save_package(tmp_path_factory.mktemp("exclusive") / "pkg", net, [task_info(t) for t in net.config.tasks],
                        dict(KNOWN_MODALITIES), (5.625,) * 3, (32, 32, 32))
    return with_groups(path, [GROUP])


def image_kji():
    rng = np.random.default_rng(0)
    return rng.normal(100, 30, (30, 36, 40)).astype(np.float32)


def oblique_ct() -> sitk.Image:
    image = sitk.GetImageFromArray(image_kji())
    image.SetSpacing((4.0, 5.0, 6.0))
    image.SetDirection(sitk.VersorTransform((0.3, 1.0, 0.2), 0.6).GetMatrix())  # oblique
    image.SetOrigin((-60.0, 20.0, -35.0))
    return image



def arrays(result, tasks):
    return {t: sitk.GetArrayFromImage(result.masks[t]).astype(bool) for t in tasks}


def assert_disjoint(masks: dict, tasks=GROUP):
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            assert not np.any(masks[a] & masks[b]), f"voxels in both {a} and {b}"


def test_the_masks_are_the_argmax_of_the_raw_probabilities_and_nested_tasks_still_nest(overlapping):
    predictor = Predictor(load_package(overlapping), device="cpu", precision="fp32")
    tasks = GROUP + ["brain"]
    result = predictor.predict(oblique_ct(), "CT", tasks, PredictOptions(keep_probabilities=True))
    probs = np.stack([sitk.GetArrayFromImage(result.probabilities[t]) for t in GROUP])
    raw = probs >= 0.5
    assert (raw.sum(0) >= 2).mean() > 0.5, "the fixture must make the raw sigmoids overlap"
    masks = arrays(result, tasks)
    assert_disjoint(masks)
    # the rule: the most probable member where it reaches the threshold, else none
    winner = probs.argmax(0)
    for k, task in enumerate(GROUP):
        expected = (winner == k) & (probs.max(0) >= 0.5)
        assert np.array_equal(masks[task], expected), task
        assert masks[task].sum() > 100, f"{task} wins somewhere"
    # probability maps stay raw (they overlap); "brain" (in no group) is its own threshold and nests
    assert np.array_equal(masks["brain"], sitk.GetArrayFromImage(result.probabilities["brain"]) >= 0.5)
    union = masks["liver"] | masks["spleen"] | masks["kidney"]
    assert union.any() and np.all(masks["brain"][union])


def test_a_task_asked_alone_is_resolved_against_its_group_mates(overlapping):
    predictor = Predictor(load_package(overlapping), device="cpu", precision="fp32")
    assert predictor.with_group_members(["spleen", "brain"]) == ["spleen", "brain", "liver", "kidney"]
    alone = predictor.predict(oblique_ct(), "CT", ["spleen"], PredictOptions(keep_probabilities=True))
    assert list(alone.masks) == ["spleen"] and list(alone.probabilities) == ["spleen"]  # mates not returned
    spleen = sitk.GetArrayFromImage(alone.masks["spleen"]).astype(bool)
    raw = sitk.GetArrayFromImage(alone.probabilities["spleen"]) >= 0.5
    assert spleen.sum() < 0.6 * raw.sum(), "the hidden mates took their voxels"
    # the same query (spleen, then its mates) gives the same mask as asking for all three
    together = predictor.predict(oblique_ct(), "CT", ["spleen", "liver", "kidney"])
    assert np.array_equal(spleen, sitk.GetArrayFromImage(together.masks["spleen"]).astype(bool))


def test_the_written_files_hold_no_voxel_in_two_exclusive_tasks(overlapping, tmp_path):
    image = oblique_ct()
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    folder = tmp_path / "series"
    info = write_ct_series(folder, image_kji(), spacing=(4.0, 5.0, 6.0), origin=(-60.0, 20.0, -35.0))
    args = ["predict", "--model", str(overlapping), "--modality", "CT", "--progress", "none", "--tasks"]
    ct = ["--input", str(tmp_path / "ct.nrrd"), "--output"]
    assert main(args + ["liver,spleen,kidney,brain"] + ct + [str(tmp_path / "out.seg.nrrd")]) == 0
    assert main(args + ["liver,spleen,kidney,brain", "--input", str(folder),
                        "--output", str(tmp_path / "out.dcm")]) == 0
    assert main(args + ["liver,spleen,kidney"] + ct + [str(tmp_path / "group.seg.nrrd")]) == 0
    assert main(args + ["liver,spleen,kidney"] + ct + [str(tmp_path / "group.nii.gz")]) == 0

    seg = slicerio.read_segmentation(str(tmp_path / "out.seg.nrrd"))
    masks = {s["id"]: slicerio.segment_mask(seg, s).astype(bool) for s in seg["segments"]}
    assert all(masks[t].any() for t in GROUP)
    assert_disjoint(masks)
    assert np.all(masks["brain"][masks["liver"] | masks["spleen"] | masks["kidney"]])  # nested, own layer
    # the labelmap of the group alone: each member keeps every voxel of its segment (before the
    # groups, kidney, written last, overwrote nearly everything)
    seg = slicerio.read_segmentation(str(tmp_path / "group.seg.nrrd"))
    group = {s["id"]: slicerio.segment_mask(seg, s).astype(bool) for s in seg["segments"]}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "group.nii.gz"))).transpose(2, 1, 0)
    for value, task in enumerate(GROUP, start=1):
        assert group[task].any() and np.array_equal(label == value, group[task]), task

    dicom = hd.seg.segread(str(tmp_path / "out.dcm"))
    pixels = dicom.get_pixels_by_source_instance(info["instances"], segment_numbers=[1, 2, 3, 4]) > 0
    assert pixels[..., :3].any(axis=(0, 1, 2)).all() and pixels[..., 3].any()
    assert pixels[..., :3].sum(-1).max() == 1, "a DICOM SEG voxel in two exclusive segments"
    assert np.all(pixels[..., 3][pixels[..., :3].any(-1)])


def test_click_refinement_keeps_the_group_exclusive(overlapping):
    predictor = Predictor(load_package(overlapping), device="cpu", precision="fp32")
    image = oblique_ct()
    session = InteractiveSession(predictor, image, "CT", ["liver", "spleen", "brain"],
                                 PredictOptions(crop_foreground=False))
    assert set(session.logits) == {"liver", "spleen", "brain", "kidney"}  # the hidden mate is computed
    auto = predictor.predict(image, "CT", ["liver", "spleen", "brain"], PredictOptions(crop_foreground=False))
    for task in ("liver", "spleen", "brain"):  # the automatic pass is predict's
        assert np.array_equal(session.masks[task], sitk.GetArrayFromImage(auto.masks[task])), task
    start = {t: m.copy() for t, m in session.masks.items()}
    predictor.net.prompt = ClickPainter()
    voxel = tuple(int(v) for v in np.argwhere(start["spleen"].astype(bool))[len(np.argwhere(start["spleen"])) // 2])
    x, y, z = image.TransformIndexToPhysicalPoint(voxel[::-1])  # (k, j, i) -> (i, j, k)
    change = session.refine("liver", [((-x, -y, z), True)])
    liver, spleen = session.masks["liver"].astype(bool), session.masks["spleen"].astype(bool)
    assert liver[voxel] and not spleen[voxel], "the positive click took the spleen voxel"
    assert not np.any(liver & spleen)
    (i0, i1), (j0, j1), (k0, k1) = change.box
    assert np.array_equal(change.mask, session.masks["liver"][k0:k1, j0:j1, i0:i1])
    also = {c.task: c for c in change.also}
    assert set(also) == {"spleen"} and also["spleen"].box == change.box  # brain nests: untouched
    assert np.array_equal(also["spleen"].mask, session.masks["spleen"][k0:k1, j0:j1, i0:i1])
    assert not np.any(change.mask.astype(bool) & also["spleen"].mask.astype(bool))
    assert np.array_equal(session.masks["brain"], start["brain"])
    # a negative click on liver gives its voxels back to the most probable mate that reaches 0.5
    predictor.net.prompt = NegativePainter()
    session.refine("liver", [((-x, -y, z), False)])
    liver, spleen = session.masks["liver"].astype(bool), session.masks["spleen"].astype(bool)
    assert not liver[voxel] and not np.any(liver & spleen)
    # undo twice: every mask as the automatic pass left it
    session.undo("liver")
    undone = session.undo("liver")
    assert {c.task for c in undone.also} == {"spleen"}
    for task in start:
        assert np.array_equal(session.masks[task], start[task]), task


def test_the_worker_returns_the_mates_it_changed(overlapping, tmp_path):
    image = oblique_ct()
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    worker = Worker(write=lambda message: None)
    opened = worker.handle({"id": 1, "cmd": "open", "model": str(overlapping), "image": str(tmp_path / "ct.nrrd"),
                            "modality": "CT", "tasks": ["liver", "spleen"], "device": "cpu"})
    assert opened["ok"] and opened["tasks"] == ["liver", "spleen"], opened
    worker.session.predictor.net.prompt = ClickPainter()

    def decode(reply):
        return np.frombuffer(zlib.decompress(base64.b64decode(reply["mask"])), np.uint8).reshape(reply["shape"])

    spleen = worker.session.masks["spleen"]
    voxel = np.argwhere(spleen)[len(np.argwhere(spleen)) // 2]
    x, y, z = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in voxel[::-1]))
    reply = worker.handle({"id": 2, "cmd": "refine", "task": "liver",
                           "points": [{"position": [-x, -y, z], "label": "positive"}]})
    assert reply["ok"] and [a["task"] for a in reply["also"]] == ["spleen"], reply.get("error")
    assert reply["also"][0]["box"] == reply["box"]
    assert not np.any(decode(reply) & decode(reply["also"][0]))
    full = {t: worker.handle({"cmd": "mask", "task": t}) for t in ("liver", "spleen")}
    assert "also" not in full["liver"] and not np.any(decode(full["liver"]) & decode(full["spleen"]))


@pytest.fixture(scope="module")
def brain_case(tmp_path_factory):
    """The shipped brain model as a folder, and a 64 mm cube of the MNI152 T1 (one window)."""
    from UniversalSeg.data.brain_template import template_t1
    folder = tmp_path_factory.mktemp("shipped") / "brain-synth"
    folder.mkdir()
    import zipfile
    with zipfile.ZipFile(SHIPPED) as z:
        z.extractall(folder)
    t1 = template_t1()
    size = t1.GetSize()
    start = [s // 2 - 32 for s in size]
    return folder, sitk.RegionOfInterest(t1, [64, 64, 64], start)


def old_masks(predictor, image, tasks, options):
    """Step 5 as it was before groups existed: each task thresholded alone on the input grid."""
    grid = predictor.prepare(image, "MR-T1", len(tasks), options)
    probs = predictor._infer(grid.volume, [predictor.vocab.task_id(t) for t in tasks],
                             predictor.vocab.modality_id("MR-T1"), predictor.vocab.domain_id(None), options,
                             lambda *a, **k: None)
    out = {}
    for i, task in enumerate(tasks):
        on_input = sitk.Resample(grid.sitk_image(probs[i]), grid.reference, sitk.Transform(), sitk.sitkLinear,
                                 0.0, sitk.sitkFloat32)
        out[task] = sitk.BinaryThreshold(on_input, 0.5, 2.0, 1, 0)
    return out


def test_a_package_without_groups_predicts_as_before_and_with_them_is_exclusive(brain_case):
    folder, image = brain_case
    tasks = ["brain", "gray-matter", "white-matter", "csf", "head"]
    tissues = ["gray-matter", "white-matter", "csf"]
    options = PredictOptions()
    plain = Predictor(load_package(folder), device="cpu", precision="fp32")
    assert "exclusive_groups" not in plain.package.meta and plain.with_group_members(tasks) == tasks
    before = old_masks(plain, image, tasks, options)
    now = plain.predict(image, "MR-T1", tasks, options)
    for task in tasks:  # bit for bit, on the same grid
        assert np.array_equal(sitk.GetArrayFromImage(now.masks[task]), sitk.GetArrayFromImage(before[task])), task
        assert now.masks[task].GetOrigin() == image.GetOrigin() and now.masks[task].GetSize() == image.GetSize()
    old = {t: sitk.GetArrayFromImage(before[t]).astype(bool) for t in tasks}
    assert (np.sum([old[t] for t in tissues], 0) >= 2).any(), "the shipped model's tissues overlap"

    grouped = Predictor(load_package(with_groups(folder, [tissues])), device="cpu", precision="fp32")
    try:
        result = grouped.predict(image, "MR-T1", tasks, options)
    finally:
        with_groups(folder, None)
    masks = arrays(result, tasks)
    assert_disjoint(masks, tissues)
    for task in ("brain", "head"):  # in no group: exactly as before, still containing the tissues
        assert np.array_equal(masks[task], old[task]), task
    assert (masks["brain"] & masks["gray-matter"]).any() and (masks["head"] & masks["white-matter"]).any()
    # resolution only takes voxels away from a tissue's own threshold, and keeps every voxel some tissue had
    for task in tissues:
        assert not np.any(masks[task] & ~old[task]), task
    assert np.array_equal(masks["gray-matter"] | masks["white-matter"] | masks["csf"],
                          old["gray-matter"] | old["white-matter"] | old["csf"])


@pytest.mark.parametrize("groups, message", [
    ({"a": ["liver"]}, "must be a list of groups, each a list of task names"),
    ([["liver", 3]], "must be a list of groups"),
    (["liver", "spleen"], "must be a list of groups"),
    ([["liver", "pancreas"]], "exclusive_groups[0] names 'pancreas', which is not a task of this model"),
    ([["liver"]], "exclusive_groups[0] has 1 task(s); a group needs at least 2"),
    ([["liver", "spleen"], []], "exclusive_groups[1] has 0 task(s)"),
    ([["liver", "spleen"], ["kidney", "spleen"]],
     "task 'spleen' is in exclusive_groups[0] too; a task belongs to at most one group"),
    ([["liver", "spleen", "liver"]], "task 'liver' is in the same group twice"),
])
def test_bad_groups_are_refused_with_one_line(overlapping, tmp_path, capsys, groups, message):
    path = shutil.copytree(overlapping, tmp_path / "bad")
    with_groups(path, groups)
    for read in (read_summary, load_package):
        with pytest.raises(PackageError) as err:
            read(path)
        assert message in str(err.value) and "\n" not in str(err.value) and str(path) in str(err.value)
    assert main(["info", str(path)]) == 3
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    out = tmp_path / "never.seg.nrrd"
    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(oblique_ct(), str(image))
    assert main(["predict", "--model", str(path), "--input", str(image), "--modality", "CT", "--output", str(out),
                 "--progress", "none"]) == 3
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_cli_refuses_bad_groups_without_a_traceback(overlapping, tmp_path):
    path = with_groups(shutil.copytree(overlapping, tmp_path / "bad"), [["liver", "pancreas"]])
    run = subprocess.run([sys.executable, "-m", "UniversalSeg", "info", str(path)], capture_output=True, text=True)
    assert run.returncode == 3 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "'pancreas', which is not a task of this model" in run.stderr


def test_info_shows_the_groups(overlapping, capsys):
    assert main(["info", str(overlapping)]) == 0
    out = capsys.readouterr().out
    assert "exclusive groups (1; a voxel is at most one task of a group):" in out and "liver, spleen, kidney" in out
    assert main(["info", str(overlapping), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exclusive_groups"] == [GROUP]
    assert read_summary(overlapping).exclusive_groups == [GROUP]


def test_the_rule_with_per_task_thresholds_and_ties():
    resolver = ExclusiveResolver([["a", "b"], ["c", "d"]], ["b"])
    assert "a" in resolver and "c" not in resolver  # only the groups of the asked tasks
    a = np.array([0.9, 0.6, 0.3, 0.7, 0.55], np.float32)
    b = np.array([0.8, 0.7, 0.2, 0.7, 0.65], np.float32)
    resolver.add("b", b, 0.7)  # b's own threshold 0.7: 0.65 is background for b
    resolver.add("a", a, 0.5)
    assert resolver.mask("a").tolist() == [1, 0, 0, 1, 1]  # tie (0.7): the member listed first
    assert resolver.mask("b").tolist() == [0, 1, 0, 0, 0]
    assert with_members(["d", "x"], [["a", "b"], ["c", "d"]]) == ["d", "x", "c"]
    assert read_groups({}, ["a"], "m") == []
