"""Click refinement (#15): the stage leaves the automatic model alone, clicks in RAS mm land on
the right voxels of an oblique volume, a region equals the whole volume's answer, undo, the
simulated clicks, ``predict --points`` and the warm worker (bad requests, exit with its parent)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from UniversalSeg.data.synthetic import generate_collection  # noqa: F401  (fixtures use it)
from UniversalSeg.errors import InputError
from UniversalSeg.inference import Predictor, PredictOptions
from UniversalSeg.inference.interactive import InteractiveSession, read_points
from UniversalSeg.model_package import load_package
from UniversalSeg.networks import ModelConfig, UniversalSegNet
from UniversalSeg.networks.prompt_stage import MARGIN, PromptStage, click_maps
from UniversalSeg.training.click_simulation import next_click
from UniversalSeg.training.config import TrainConfig
from UniversalSeg.training.trainer import Trainer

from conftest import TINY_TRAIN_NET, tiny_config

ROOT = Path(__file__).parents[2]


def test_the_stage_leaves_automatic_training_bit_identical(synth_collection, tmp_path, monkeypatch):
    """Same seed, with and without --clicks: every automatic weight is bit-identical after
    training (detached features, own random numbers, own gradient clipping), the stage learnt.
    The thread count is fixed: a changing one changes the last bits of any CPU run."""
    monkeypatch.setenv("UNIVERSALSEG_THREADS", "1")
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the governor's, restored after
    states = {}
    for clicks in (0, 3):
        cfg = TrainConfig(spacing=(5.625,) * 3, patch_size=(32, 32, 32), batch_size=2, epochs=1,
                          iterations_per_epoch=4, num_workers=0, lr=3e-3, checkpoint_every=100,
                          warmup_epochs=0.5, validate_every=10, clicks=clicks)
        trainer = Trainer(synth_collection, ModelConfig.from_dict(TINY_TRAIN_NET), cfg, tmp_path / str(clicks),
                          device="cpu", progress=False)
        trainer.fit()
        states[clicks] = trainer.net.state_dict()
        trainer.close()
    assert torch.get_num_threads() == threads
    plain, with_stage = states[0], states[3]
    assert set(with_stage) - set(plain) and all(k.startswith("prompt.") for k in set(with_stage) - set(plain))
    assert [k for k in plain if not torch.equal(plain[k], with_stage[k])] == []
    assert with_stage["prompt.out.weight"].abs().sum() > 0  # zero at the start: it trained


def test_prompt_free_outputs_do_not_depend_on_the_stage(volume):
    torch.manual_seed(0)
    plain = UniversalSegNet(tiny_config()).eval()
    torch.manual_seed(0)
    staged = UniversalSegNet(tiny_config(prompt={"enabled": True, "width": 4})).eval()
    ctx = plain.context([["liver", "kidney"]] * 2, ["CT", "MR-T1"], ["hospital-a", "hospital-b"])
    with torch.no_grad():
        a, b = plain(volume, ctx), staged(volume, ctx)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["features"], b["features"])
    # a new stage changes nothing until trained, clicks or not
    pos, neg = click_maps((32, 32, 32), [((10, 12, 14), True), ((20, 5, 5), False)], 2.0)
    one = b["logits"][:1, :1]
    with torch.no_grad():
        refined = staged.refine(b["features"][:1], one, pos, neg)
    assert torch.equal(refined, one.clamp(-8, 8))
    with pytest.raises(InputError, match="no click-refinement stage"):
        plain.refine(a["features"][:1], one, pos, neg)


def test_a_region_gives_what_the_whole_volume_gives():
    """The session recomputes a region with MARGIN voxels of context, its start on the stage's
    4-voxel phase: inside the region the values equal those of the whole volume."""
    torch.manual_seed(3)
    stage = PromptStage(6, ModelConfig.from_dict({**TINY_TRAIN_NET, "prompt": {"enabled": True, "width": 4}}).prompt)
    torch.nn.init.normal_(stage.out.weight, std=5.0)
    features, logits = torch.randn(1, 6, 88, 84, 92), torch.randn(1, 1, 88, 84, 92) * 3
    clicks = [((44, 40, 47), True), ((50, 30, 40), False)]
    with torch.no_grad():
        whole = stage(features, logits, *click_maps((88, 84, 92), clicks, 2.0))
        lo, hi = np.array([28, 24, 31]), np.array([61, 57, 64])
        c_lo = (np.maximum(lo - MARGIN, 0) // 4) * 4
        c_hi = np.minimum(hi + MARGIN, [88, 84, 92])
        ctx = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(c_lo, c_hi))
        part = stage(features[ctx], logits[ctx], *click_maps(c_hi - c_lo, clicks, 2.0, offset=c_lo))
    inner = (0, 0) + tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, c_lo))
    region = (0, 0) + tuple(slice(a, b) for a, b in zip(lo, hi))
    assert (part[inner] - whole[region]).abs().max() < 1e-4
    assert (whole[region] - logits[region].clamp(-8, 8)).abs().max() > 0.1  # the stage did act


def test_simulated_clicks_go_to_the_centre_of_the_largest_error():
    truth = np.zeros((30, 30, 30), bool)
    truth[5:25, 5:25, 5:25] = True
    pred = truth.copy()
    pred[8:15, 8:15, 8:15] = False                      # a missed 7^3 cube
    assert next_click(pred, truth) == ((11, 11, 11), True)
    pred = truth.copy()
    pred[26:30, 0:10, 0:10] = True                      # a false positive outside
    point, positive = next_click(pred, truth)
    assert not positive and 26 <= point[0] < 30 and point[1] < 10 and point[2] < 10
    assert next_click(truth, truth) is None
    rng = np.random.default_rng(0)
    pred = truth.copy()
    pred[8:15, 8:15, 8:15] = False
    for _ in range(20):  # the random variant stays in the inner half of the error
        (i, j, k), positive = next_click(pred, truth, rng)
        assert positive and all(9 <= v <= 13 for v in (i, j, k))


class ClickPainter(torch.nn.Module):
    """A stand-in stage whose answer is known: inside where a positive blob is > 0.5."""
    sigma = 2.0

    def forward(self, features, logits, positive, negative):
        return torch.where(positive > 0.5, 20.0, -20.0).expand_as(logits)


class NegativePainter(ClickPainter):
    """Inside everywhere but where a negative blob is > 0.5: only the blob may change."""

    def forward(self, features, logits, positive, negative):
        return torch.where(negative > 0.5, -20.0, 20.0).expand_as(logits)


def oblique_image():
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100, 10, (30, 36, 40)).astype(np.float32))
    image.SetSpacing((4.0, 5.0, 6.0))
    rotation = sitk.VersorTransform((0.3, 1.0, 0.2), 0.6)  # an oblique direction
    image.SetDirection(rotation.GetMatrix())
    image.SetOrigin((-60.0, 20.0, -35.0))
    return image


def test_clicks_in_ras_mm_land_on_the_right_voxels_of_an_oblique_volume(click_model):
    predictor = Predictor(load_package(click_model), device="cpu")
    image = oblique_image()
    session = InteractiveSession(predictor, image, "CT", ["liver"], PredictOptions(crop_foreground=False))
    predictor.net.prompt = ClickPainter()
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)  # a known start: the model's own mask is random
    empty.CopyInformation(image)
    session.set_mask("liver", empty)
    before = session.masks["liver"].copy()
    voxel = (22, 17, 12)  # (i, j, k) of the input grid
    x, y, z = image.TransformIndexToPhysicalPoint(voxel)
    change = session.refine("liver", [((-x, -y, z), True)])  # RAS = LPS with x, y negated
    mask = session.masks["liver"]
    assert mask[voxel[2], voxel[1], voxel[0]] == 1
    # the painted blob (radius ~2.35 model voxels of 5.625 mm) is centred on the click
    (i0, i1), (j0, j1), (k0, k1) = change.box
    changed = np.argwhere(mask != before)                     # (k, j, i)
    assert len(changed) > 20
    assert changed[:, 2].min() >= i0 and changed[:, 2].max() < i1 and changed[:, 0].min() >= k0
    assert np.all(mask[before > 0] == 1)  # a positive click only adds
    centre = np.mean([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in p[::-1])) for p in changed], 0)
    assert np.linalg.norm(centre - np.array([x, y, z])) < 5.625
    assert np.array_equal(change.mask, mask[k0:k1, j0:j1, i0:i1])
    # a negative click only removes: the painter turns its blob off, nothing else changes
    predictor.net.prompt = NegativePainter()
    filled = session.masks["liver"].copy()
    session.refine("liver", [((-x, -y, z), False)])
    removed = session.masks["liver"]
    assert removed[voxel[2], voxel[1], voxel[0]] == 0 and not np.any(removed > filled)
    session.undo("liver")
    assert np.array_equal(session.masks["liver"], filled)
    predictor.net.prompt = ClickPainter()
    # undo puts back every voxel and the clicks
    session.undo("liver")
    assert np.array_equal(session.masks["liver"], before) and session.clicks["liver"] == []
    assert session.undo("liver") is None
    with pytest.raises(InputError, match="outside the image"):
        session.refine("liver", [((5000.0, 0.0, 0.0), True)])
    with pytest.raises(InputError, match="not open in this session"):
        session.refine("spleen", [((-x, -y, z), True)])


def test_set_mask_makes_an_edited_mask_the_start(click_model):
    predictor = Predictor(load_package(click_model), device="cpu")
    image = oblique_image()
    session = InteractiveSession(predictor, image, "CT", ["liver"], PredictOptions(crop_foreground=False))
    edited = np.zeros((30, 36, 40), np.uint8)
    edited[5:20, 10:30, 8:30] = 1
    mask = sitk.GetImageFromArray(edited)
    mask.CopyInformation(image)
    session.set_mask("liver", mask)
    assert np.array_equal(session.masks["liver"], edited)
    assert float(session.logits["liver"].max()) == 8.0 and float(session.logits["liver"].min()) == -8.0
    wrong = sitk.Image(5, 5, 5, sitk.sitkUInt8)
    with pytest.raises(InputError, match="not on the image's grid"):
        session.set_mask("liver", wrong)


def test_a_model_without_the_stage_is_refused_with_a_clear_error(trained_run):
    predictor = Predictor(load_package(trained_run["package"]), device="cpu")
    with pytest.raises(InputError, match="no click-refinement stage"):
        InteractiveSession(predictor, oblique_image(), "CT", ["liver"])


def test_predict_with_points(painting_click_model, synth_collection, tmp_path):
    image = next((synth_collection.parent / "ct-hospital-a" / "imagesTr").glob("*.nii.gz"))
    ref = sitk.ReadImage(str(image))
    voxel = (5, 6, 7)
    x, y, z = ref.TransformIndexToPhysicalPoint(voxel)
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"task": "liver", "position": [-x, -y, z], "label": "positive"}]}))
    cmd = [sys.executable, "-m", "UniversalSeg", "predict", "--model", painting_click_model, "--input", str(image),
           "--modality", "CT", "--tasks", "liver", "--progress", "none"]
    out = tmp_path / "refined.nii.gz"
    run = subprocess.run(cmd + ["--output", str(out), "--points", str(points)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    plain = tmp_path / "plain.nii.gz"
    assert subprocess.run(cmd + ["--output", str(plain)], capture_output=True).returncode == 0
    refined, auto = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (out, plain))
    assert refined[voxel[::-1]] == 1 and np.all(refined >= auto)  # the click's voxel is in; a positive click only adds

    bad = tmp_path / "bad.json"
    for content, message in (({"points": [{"task": "liver", "position": [1, 2], "label": "positive"}]}, "three RAS"),
                             ({"points": [{"task": "liver", "position": [1, 2, 3], "label": "yes"}]}, "positive"),
                             ({"points": [{"task": "brain", "position": [1, 2, 3], "label": "positive"}]}, "not among"),
                             ({"points": []}, "at least one point")):
        bad.write_text(json.dumps(content))
        target = tmp_path / "never.nii.gz"
        run = subprocess.run(cmd + ["--output", str(target), "--points", str(bad)], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and not target.exists()
    bad.write_text(json.dumps({"points": [{"position": [1, 2, 3], "label": "positive"}]}))
    assert read_points(bad, ["liver"]) == [("liver", (1.0, 2.0, 3.0), True)]  # one task: it is implied
    with pytest.raises(InputError, match="not among the requested tasks"):
        read_points(bad, ["liver", "spleen"])


def test_predict_points_needs_a_model_with_the_stage(trained_run, synth_collection, tmp_path):
    image = next((synth_collection.parent / "ct-hospital-a" / "imagesTr").glob("*.nii.gz"))
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"position": [0, 0, 0], "label": "positive"}]}))
    out = tmp_path / "x.nii.gz"
    run = subprocess.run([sys.executable, "-m", "UniversalSeg", "predict", "--model", trained_run["package"],
                          "--input", str(image), "--modality", "CT", "--tasks", "liver", "--output", str(out),
                          "--points", str(points), "--progress", "none"], capture_output=True, text=True)
    assert run.returncode == 2 and "no click-refinement stage" in run.stderr and not out.exists(), run.stderr


def _worker_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("UNIVERSALSEG_PARENT_PID", None)
    return env


def test_the_worker_survives_bad_requests(painting_click_model, synth_collection, slicer_lib):
    from UniversalSegmentationLib.refine_worker import RefineWorker, WorkerError, decode_mask
    image = next((synth_collection.parent / "ct-hospital-a" / "imagesTr").glob("*.nii.gz"))
    worker = RefineWorker()
    worker.start([sys.executable, "-m", "UniversalSeg", "worker"], env=_worker_env())
    try:
        for request, message in (({"cmd": "refine", "task": "liver", "points": []}, "no image is open"),
                                 ({"cmd": "fly"}, "unknown command"),
                                 ({"cmd": "open", "model": "/no/such/model.zip", "image": str(image),
                                   "modality": "CT"}, "model"),
                                 ({"cmd": "open", "model": painting_click_model, "image": "/no/such.nii.gz",
                                   "modality": "CT"}, "such"),
                                 ({"cmd": "open", "model": painting_click_model, "image": str(image),
                                   "modality": "XR"}, "XR")):
            with pytest.raises(WorkerError, match=message):
                worker.request(request)
        worker.proc.stdin.write("not json\n")
        worker.proc.stdin.flush()
        reply = worker.request({"cmd": "open", "model": painting_click_model, "image": str(image),
                                "modality": "CT", "tasks": ["liver"]})
        assert reply["tasks"] == ["liver"] and worker.running
        with pytest.raises(WorkerError, match="outside the image"):
            worker.request({"cmd": "refine", "task": "liver", "points": [{"position": [1e4, 0, 0], "label": "positive"}]})
        with pytest.raises(WorkerError, match="position"):
            worker.request({"cmd": "refine", "task": "liver", "points": [{"where": 1}]})
        ref = sitk.ReadImage(str(image))
        x, y, z = ref.TransformIndexToPhysicalPoint((10, 10, 10))
        box, values = decode_mask(worker.request({"cmd": "refine", "task": "liver", "points": [
            {"position": [-x, -y, z], "label": "positive"}]}))
        (i0, i1), (j0, j1), (k0, k1) = box
        assert values[10 - k0, 10 - j0, 10 - i0] == 1 and values.shape == (k1 - k0, j1 - j0, i1 - i0)
        assert worker.request({"cmd": "undo", "task": "liver"})["box"] == [list(b) for b in box]
        assert worker.request({"cmd": "undo", "task": "liver"})["box"] is None
    finally:
        worker.stop()
    assert worker.proc is None


def test_the_worker_exits_with_its_parent(tmp_path):
    """A parent starts the worker (UNIVERSALSEG_PARENT_PID = its pid) and is killed: the worker,
    in its own session, ends within a few seconds."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, UNIVERSALSEG_PARENT_PID=str(os.getpid()))\n"
        "p = subprocess.Popen([sys.executable, '-m', 'UniversalSeg', 'worker'], stdin=subprocess.PIPE,\n"
        "                     stdout=subprocess.PIPE, env=env, start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "p.stdout.readline()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=_worker_env())
    worker_pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "ready"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        try:  # a zombie of init counts as gone
            if Path(f"/proc/{worker_pid}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker_pid, signal.SIGKILL)
        pytest.fail("the worker outlived its parent by 20 s")


def test_finetune_clicks_mode_adds_the_stage_and_keeps_every_other_weight(trained_run, synth_collection, tmp_path):
    """How a model trained without clicks (the shipped brain model) gets its stage."""
    out = tmp_path / "clicks-run"
    run = subprocess.run([sys.executable, "-m", "UniversalSeg", "finetune", "--model", trained_run["package"],
                          "--catalog", str(synth_collection), "--out", str(out), "--mode", "clicks",
                          "--steps", "4", "--clicks", "3", "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    parent, child = load_package(trained_run["package"]), load_package(out / "model")
    assert not parent.config.prompt.enabled and child.config.prompt.enabled
    assert child.meta["provenance"]["finetune"]["mode"] == "clicks"
    for name, value in parent.state_dict.items():
        assert torch.equal(value, child.state_dict[name]), name
    assert child.state_dict["prompt.out.weight"].abs().sum() > 0
    bad = subprocess.run([sys.executable, "-m", "UniversalSeg", "finetune", "--model", trained_run["package"],
                          "--catalog", str(synth_collection), "--out", str(tmp_path / "x"), "--mode", "clicks",
                          "--replay", str(synth_collection)], capture_output=True, text=True)
    assert bad.returncode == 2 and "freezes every old weight" in bad.stderr


def test_cancel_ends_an_open_and_the_worker_goes_on(painting_click_model, synth_collection):
    from UniversalSeg.inference.worker import Worker
    image = next((synth_collection.parent / "ct-hospital-a" / "imagesTr").glob("*.nii.gz"))
    messages = []
    worker = Worker(write=messages.append)
    worker.write = lambda m: (messages.append(m), "progress" in m and worker.cancel.set())  # cancel at once
    request = {"id": 7, "cmd": "open", "model": painting_click_model, "image": str(image), "modality": "CT"}
    assert worker.handle(request) == {"id": 7, "ok": False, "cancelled": True, "error": "cancelled"}
    assert worker.session is None and len(messages) == 1
    worker.write = messages.append
    assert worker.handle(request)["ok"] and worker.session is not None


def test_the_brain_recipe_adds_its_click_stage_last(trained_run, synth_collection, tmp_path):
    from UniversalSeg.zoo.brain import add_click_stage, write_package
    path = add_click_stage(trained_run["package"], synth_collection, tmp_path / "clicks", steps=2, seed=0,
                           device="cpu", progress=False)
    parent, child = load_package(trained_run["package"]), load_package(path)
    assert child.config.prompt.enabled
    assert all(torch.equal(v, child.state_dict[k]) for k, v in parent.state_dict.items())
    shipped = load_package(write_package(path, tmp_path, 10, 0, 5))
    assert "finetune" not in shipped.meta["provenance"] and "click_stage" in shipped.meta["provenance"]
    # `zoo card`: the benchmark's numbers go into the card, the weights stay bit for bit
    (tmp_path / "build.json").write_text(json.dumps({"seconds": 5, "steps": 10, "seed": 0, "trained": path}))
    bench = tmp_path / "brain_model.json"
    bench.write_text(json.dumps({"dice": {"template T1": {"brain": 0.984, "csf": 0.5}}}))
    run = subprocess.run([sys.executable, "-m", "UniversalSeg", "zoo", "card", "brain", "--out", str(tmp_path),
                          "--validation", str(bench)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    carded = load_package(next(tmp_path.glob("brain-synth-*.zip")))
    assert "template T1: brain 0.98, csf 0.50" in carded.meta["provenance"]["card"]["validation"]
    assert all(torch.equal(v, shipped.state_dict[k]) for k, v in carded.state_dict.items())
    bad = subprocess.run([sys.executable, "-m", "UniversalSeg", "zoo", "card", "brain", "--out", str(tmp_path / "none"),
                          "--validation", str(bench)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "build.json" in bad.stderr, bad.stderr
