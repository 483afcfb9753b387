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

from conftest import TINY_TRAIN_NET, tiny_config
from UniversalSeg.data.phantom import generate_collection  # noqa: F401  (fixtures use it)
from UniversalSeg.errors import InputError
from UniversalSeg.inference import PredictOptions, Predictor
from UniversalSeg.inference.interactive import InteractiveSession, read_points
from UniversalSeg.model_package import load_package
from UniversalSeg.networks import ModelConfig, UniversalSegNet
from UniversalSeg.networks.click_stage import MARGIN, ClickStage, click_maps
from UniversalSeg.training.click_simulation import next_click
from UniversalSeg.training.config import TrainConfig
from UniversalSeg.training.trainer import Trainer

ROOT = Path(__file__).parents[2]


def test_the_click_stage_old_names_remain_aliases():
    """networks.prompt_stage, PromptStage and PromptConfig (the click stage's old code names) still
    import, as the new ones, with a DeprecationWarning for the module."""
    import importlib
    import sys
    import warnings

    from UniversalSeg.networks import click_stage
    from UniversalSeg.networks.config import ClickStageConfig, PromptConfig
    sys.modules.pop("UniversalSeg.networks.prompt_stage", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("UniversalSeg.networks.prompt_stage")
    assert old is click_stage and old.PromptStage is ClickStage and PromptConfig is ClickStageConfig
    assert any(issubclass(w.category, DeprecationWarning) and "click_stage" in str(w.message) for w in caught)


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
        refined = staged.refine(b["features"][:1], one, pos, neg, torch.tensor([0]))
    assert torch.equal(refined, one.clamp(-8, 8))
    with pytest.raises(InputError, match="no click-refinement stage"):
        plain.refine(a["features"][:1], one, pos, neg, torch.tensor([0]))


NESTED = 20  # voxels per axis of the nested-structure scenes


def nested_scenes(rng, scenes):
    """Scenes of an organ (radius 6) with a lesion (radius 2.2) inside, one positive click at the
    lesion's centre, as [organ, lesion] sample pairs with the SAME features (the backbone's features
    are shared by every task): only the task tells the stage which structure the click means."""
    grid = np.stack(np.meshgrid(*[np.arange(NESTED)] * 3, indexing="ij"), -1).astype(np.float32)
    features, truths, clicks = [], [], []
    for _ in range(scenes):
        centre = rng.uniform(8, 12, 3)
        organ = np.linalg.norm(grid - centre, axis=-1) <= 6
        spot = centre + rng.uniform(-2.5, 2.5, 3)
        lesion = np.linalg.norm(grid - spot, axis=-1) <= 2.2
        f = np.stack([organ, lesion, rng.normal(0, 0.3, organ.shape)]).astype(np.float32)
        positive, _ = click_maps((NESTED,) * 3, [(tuple(spot), True)], 2.0)
        for truth in (organ, lesion):
            features.append(f), truths.append(truth), clicks.append(positive[0])
    return (torch.from_numpy(np.stack(features)), torch.from_numpy(np.stack(truths)[:, None].astype(np.float32)),
            torch.stack(clicks), torch.tensor([0, 1] * scenes))


def nested_dice(conditioned: bool, steps: int = 250) -> tuple[float, float]:
    """Train a stage on nested scenes (2 per step) and give its mean Dice on 3 new scenes for the
    organ and for the lesion."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    stage = ClickStage(3, ModelConfig.from_dict({**TINY_TRAIN_NET, "prompt": {
        "enabled": True, "width": 4, "task_conditioned": conditioned}}).prompt, 2)
    optimizer = torch.optim.Adam(stage.parameters(), lr=1e-2)
    for _ in range(steps):
        features, truth, positive, tasks = nested_scenes(rng, 2)
        out = stage(features, torch.full_like(truth, -2.0), positive, torch.zeros_like(positive), tasks)
        p = torch.sigmoid(out)
        dice_loss = 1 - 2 * (p * truth).sum((2, 3, 4)) / (p.sum((2, 3, 4)) + truth.sum((2, 3, 4)))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, truth) + dice_loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    features, truth, positive, tasks = nested_scenes(np.random.default_rng(1000), 3)
    with torch.no_grad():
        mask = stage(features, torch.full_like(truth, -2.0), positive, torch.zeros_like(positive), tasks) > 0
    truth = truth > 0
    scores = [2 * (m & t).sum().item() / (m.sum() + t.sum()).item() for m, t in zip(mask, truth)]
    return float(np.mean(scores[0::2])), float(np.mean(scores[1::2]))


def test_a_task_conditioned_stage_tells_a_lesion_click_from_an_organ_click():
    """The defect it fixes (the 64^3 demo model: a click beside a 28-voxel PET lesion grew 807
    voxels of liver): features are shared by the tasks, so a task-blind stage gives ONE answer to a
    click inside a lesion inside an organ. Trained the same way, the task's FiLM rows let the stage
    give the organ for the organ and the lesion for the lesion."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        organ, lesion = nested_dice(conditioned=True)
        blind_organ, blind_lesion = nested_dice(conditioned=False)
    finally:
        torch.set_num_threads(threads)
    assert organ > 0.85 and lesion > 0.8, (organ, lesion)
    assert blind_lesion < 0.3, blind_lesion  # one mask for both: the organ's


def test_format_1_click_stages_are_task_blind_and_new_rows_grow_with_tasks(volume):
    """A package of format 1 (before task conditioning) rebuilds its stage as it was; configs are
    written back as format 2; add_tasks grows the stage's FiLM rows and leaves old tasks' refinement
    bit-identical."""
    old = {**tiny_config().to_dict(), "format_version": 1, "prompt": {"enabled": True, "width": 4}}
    assert ModelConfig.from_dict(old).prompt.task_conditioned is False
    assert ModelConfig.from_dict(old).to_dict()["format_version"] == 2
    assert UniversalSegNet(ModelConfig.from_dict(old)).prompt.task_film is None
    assert ModelConfig.from_dict({**old, "format_version": 2}).prompt.task_conditioned is True
    # train --clicks / finetune --mode clicks: a stage added now is conditioned, an old one stays as it is
    assert ModelConfig.from_dict(old).with_click_stage().prompt.task_conditioned is False
    no_stage = ModelConfig.from_dict({**old, "prompt": {}})
    assert no_stage.prompt.task_conditioned is False and no_stage.with_click_stage().prompt.task_conditioned is True
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(prompt={"enabled": True, "width": 4})).eval()
    for table in net.prompt.task_film:
        torch.nn.init.normal_(table.weight, std=0.5)
    torch.nn.init.normal_(net.prompt.out.weight, std=1.0)
    ctx = net.context([["liver"]], ["CT"], batch=1)
    pos, neg = click_maps((32, 32, 32), [((10, 12, 14), True)], 2.0)
    with torch.no_grad():
        out = net(volume[:1], ctx)
        by_task = [net.refine(out["features"], out["logits"], pos, neg, torch.tensor([t])) for t in (0, 1)]
    assert not torch.equal(by_task[0], by_task[1])  # the task changes the answer
    rows = net.prompt.task_film[0].num_rows
    net.add_tasks(["pancreas"])
    assert [t.num_rows for t in net.prompt.task_film] == [rows + 1] * 2
    with torch.no_grad():
        assert torch.equal(net.refine(out["features"], out["logits"], pos, neg, torch.tensor([0])), by_task[0])
    with pytest.raises(ValueError, match="task-conditioned"):
        net.refine(out["features"], out["logits"], pos, neg, None)


def test_a_region_gives_what_the_whole_volume_gives():
    """The session recomputes a region with MARGIN voxels of context, its start on the stage's
    4-voxel phase: inside the region the values equal those of the whole volume."""
    torch.manual_seed(3)
    stage = ClickStage(6, ModelConfig.from_dict({**TINY_TRAIN_NET, "prompt": {"enabled": True, "width": 4}}).prompt, 2)
    torch.nn.init.normal_(stage.out.weight, std=5.0)
    for table in stage.task_film:  # the task's FiLM acts too (it starts at the identity)
        torch.nn.init.normal_(table.weight, std=0.5)
    task = torch.tensor([1])
    features, logits = torch.randn(1, 6, 88, 84, 92), torch.randn(1, 1, 88, 84, 92) * 3
    clicks = [((44, 40, 47), True), ((50, 30, 40), False)]
    with torch.no_grad():
        whole = stage(features, logits, *click_maps((88, 84, 92), clicks, 2.0), task)
        lo, hi = np.array([28, 24, 31]), np.array([61, 57, 64])
        c_lo = (np.maximum(lo - MARGIN, 0) // 4) * 4
        c_hi = np.minimum(hi + MARGIN, [88, 84, 92])
        ctx = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(c_lo, c_hi))
        part = stage(features[ctx], logits[ctx], *click_maps(c_hi - c_lo, clicks, 2.0, offset=c_lo), task)
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


def test_click_distances_on_the_error_box_equal_those_on_the_whole_volume():
    """next_click's distance transform runs on the error's bounding box (padded by one voxel), for
    speed: the distances must be exactly those of the whole volume, errors at the edge included
    (the volume's edge counts as boundary)."""
    from scipy.ndimage import binary_dilation, distance_transform_edt

    from UniversalSeg.training.click_simulation import _inner_distance
    rng = np.random.default_rng(3)
    for n in range(30):
        error = rng.random((20, 24, 18)) < 0.003 * (1 + n % 5)
        error = binary_dilation(error, iterations=int(rng.integers(1, 4)))
        if n % 3 == 0:
            error[:, :4, :] = True                      # touching the volume's edge
        whole = distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1, 1:-1]
        assert np.array_equal(_inner_distance(error), whole)
    one = np.zeros((9, 9, 9), bool)
    one[4, 4, 4] = True
    assert _inner_distance(one)[4, 4, 4] == 1.0 and _inner_distance(one).sum() == 1.0


def test_click_every_trains_the_stage_on_every_nth_step_only(synth_collection, tmp_path, monkeypatch):
    """``click_every`` 2: the stage's loss on steps 0, 2, ... only (half its cost); it is a checked
    setting, and an older run's settings (without it) read as 1."""
    from UniversalSeg.training.config import TrainConfigError
    from UniversalSeg.training.trainer import changed_settings
    monkeypatch.setenv("UNIVERSALSEG_THREADS", "1")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    cfg = TrainConfig(spacing=(5.625,) * 3, patch_size=(32, 32, 32), batch_size=2, epochs=1,
                      iterations_per_epoch=4, num_workers=0, checkpoint_every=100, validate_every=10,
                      clicks=2, click_every=2)
    trainer = Trainer(synth_collection, ModelConfig.from_dict(TINY_TRAIN_NET), cfg, tmp_path / "run",
                      device="cpu", progress=False)
    batches = iter(trainer.loader)
    with_clicks = ["clicks" in trainer.train_step(next(batches)) for _ in range(4)]
    trainer.close()
    assert with_clicks == [True, False, True, False]
    with pytest.raises(TrainConfigError, match="click_every: a positive integer"):
        TrainConfig.from_dict({"click_every": 0})
    before = TrainConfig().to_dict()
    del before["click_every"]
    assert changed_settings(before, TrainConfig().to_dict()) == []


def test_click_lr_scale_scales_only_the_stages_steps(synth_collection, tmp_path, monkeypatch):
    """``click_lr_scale`` 2: the stage's parameters in groups of their own at twice the learning
    rate (AdamW's first step moves each by lr * g / |g|: exactly twice as far), every automatic
    weight bit-identical to scale 1; scale 1 keeps the two groups of before (older checkpoints
    resume); a checked setting."""
    from UniversalSeg.training.config import TrainConfigError
    monkeypatch.setenv("UNIVERSALSEG_THREADS", "1")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    moved, groups = {}, {}
    for scale in (1.0, 2.0):
        cfg = TrainConfig(spacing=(5.625,) * 3, patch_size=(32, 32, 32), batch_size=2, epochs=1,
                          iterations_per_epoch=4, num_workers=0, checkpoint_every=100, validate_every=10,
                          clicks=2, click_lr_scale=scale, grad_clip=0.0, weight_decay=0.0)
        trainer = Trainer(synth_collection, ModelConfig.from_dict(TINY_TRAIN_NET), cfg, tmp_path / str(scale),
                          device="cpu", progress=False)
        before = {k: v.detach().clone() for k, v in trainer.net.named_parameters()}
        assert "clicks" in trainer.train_step(next(iter(trainer.loader)))
        moved[scale] = {k: (v.detach() - before[k]) for k, v in trainer.net.named_parameters()}
        groups[scale] = [g["lr"] for g in trainer.optimizer.param_groups]
        trainer.close()
    assert len(groups[1.0]) == 2 and groups[2.0][2:] == [2 * groups[2.0][0]] * 2
    stage = [k for k in moved[1.0] if k.startswith("prompt.")]
    assert stage and len(stage) < len(moved[1.0])
    for k, step in moved[1.0].items():
        if k.startswith("prompt."):
            torch.testing.assert_close(moved[2.0][k], 2 * step, rtol=1e-4, atol=1e-7)
        else:
            assert torch.equal(moved[2.0][k], step), k
    assert sum(float(moved[2.0][k].abs().sum()) for k in stage) > 0
    with pytest.raises(TrainConfigError, match="click_lr_scale: a number above 0"):
        TrainConfig.from_dict({"click_lr_scale": 0})


def test_boundary_error_starts_are_the_truth_one_or_two_voxels_off():
    from scipy.ndimage import distance_transform_edt

    from UniversalSeg.training.click_simulation import boundary_error
    truth = np.zeros((30, 30, 30), bool)
    truth[8:22, 9:20, 10:21] = True
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(40):
        start = boundary_error(truth, rng)
        grown = start.sum() > truth.sum()
        inner, outer = (truth, start) if grown else (start, truth)
        assert np.all(outer[inner])                       # nested: only the rim differs
        rim = distance_transform_edt(~inner)[outer & ~inner] if grown else distance_transform_edt(outer)[outer & ~inner]
        assert 0 < rim.max() <= 2                          # by one or two voxels
        kinds.add((grown, int(rim.max())))
    assert kinds == {(True, 1), (True, 2), (False, 1), (False, 2)}
    lesion = np.zeros((30, 30, 30), bool)
    lesion[14:16, 14:16, 14:16] = True                    # too small to erode: it grows instead
    assert all(boundary_error(lesion, rng).sum() > 8 for _ in range(10))
    assert not boundary_error(np.zeros((5, 5, 5), bool), rng).any()


def test_click_boundary_share_is_a_checked_setting_and_draws_boundary_starts(monkeypatch):
    from UniversalSeg.training import click_simulation
    from UniversalSeg.training.config import TrainConfigError
    from UniversalSeg.training.trainer import changed_settings
    assert TrainConfig().click_boundary_share == 0.0  # off: measured, no gain (README)
    with pytest.raises(TrainConfigError, match="click_boundary_share: a share between 0 and 0.5"):
        TrainConfig.from_dict({"click_boundary_share": 0.7})
    before = TrainConfig().to_dict()
    del before["click_boundary_share"]  # a run started before the setting: no boundary starts
    assert changed_settings(before, TrainConfig().to_dict()) == []
    assert changed_settings(before, TrainConfig(click_boundary_share=0.25).to_dict()) == [
        "click_boundary_share: 0.0 -> 0.25"]
    stage = ClickStage(3, ModelConfig.from_dict({**TINY_TRAIN_NET, "prompt": {"enabled": True, "width": 4}}).prompt, 2)

    class Net:
        prompt = stage
        refine = staticmethod(stage)
    starts = []
    real = click_simulation.boundary_error
    monkeypatch.setattr(click_simulation, "boundary_error", lambda t, rng: starts.append(t.sum()) or real(t, rng))
    target = torch.zeros(64, 2, 12, 12, 12)
    target[:, :, 3:9, 3:9, 3:9] = 1
    args = (Net(), torch.randn(64, 3, 12, 12, 12), torch.randn(64, 2, 12, 12, 12), target,
            torch.ones(64, 2, dtype=torch.bool), torch.tensor([[0, 1]] * 64), 1)
    assert click_simulation.refinement_loss(*args, np.random.default_rng(0), boundary_share=0.0) is not None
    assert starts == []
    click_simulation.refinement_loss(*args, np.random.default_rng(0), boundary_share=0.5)
    # the other half start empty: about 32 of 64 from the truth (216 voxels) 1-2 voxels off
    assert 20 < len(starts) < 44 and set(starts) == {216}


class ClickPainter(torch.nn.Module):
    """A stand-in stage whose answer is known: inside where a positive blob is > 0.5."""
    sigma = 2.0

    def forward(self, features, logits, positive, negative, task_ids):
        return torch.where(positive > 0.5, 20.0, -20.0).expand_as(logits)


class NegativePainter(ClickPainter):
    """Inside everywhere but where a negative blob is > 0.5: only the blob may change."""

    def forward(self, features, logits, positive, negative, task_ids):
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
        for request, message in (({"cmd": "refine", "task": "liver", "points": [
                                       {"position": [0, 0, 0], "label": "positive"}]}, "no image is open"),
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
            worker.request({"cmd": "refine", "task": "liver",
                            "points": [{"position": [1e4, 0, 0], "label": "positive"}]})
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
