"""Partial-label loss and the DDP-aware, resumable dataset-weighted sampler."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from UniversalSeg.data.sampler import DatasetWeightedSampler
from UniversalSeg.training.losses import PartialLabelLoss, per_task_losses


def test_unannotated_tasks_get_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    target = (torch.rand(2, 3, 8, 8, 8) > 0.7).float()
    supervised = torch.tensor([[True, False, True], [False, True, False]])
    outputs = {"logits": logits, "modality_logits": torch.randn(2, 4, requires_grad=True)}
    loss, parts = PartialLabelLoss()(outputs, target, supervised, torch.tensor([0, 2]), torch.tensor([-1, -1]))
    loss.backward()
    per_entry = logits.grad.abs().flatten(2).sum(-1)
    assert torch.all(per_entry[~supervised] == 0)
    assert torch.all(per_entry[supervised] > 0)
    assert set(parts) == {"segmentation", "modality"}


def test_loss_ignores_what_it_is_not_told_about():
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 8, 8, 8)
    target = (torch.rand(1, 2, 8, 8, 8) > 0.5).float()
    loss_fn = PartialLabelLoss()
    base, _ = loss_fn({"logits": logits}, target, torch.tensor([[True, False]]), None, None)
    changed = target.clone()
    changed[:, 1] = 1 - changed[:, 1]  # the unannotated task's "labels" are garbage
    other, _ = loss_fn({"logits": logits}, changed, torch.tensor([[True, False]]), None, None)
    assert torch.equal(base, other)


def test_tversky_alpha_leans_against_the_current_error():
    target = torch.zeros(1, 2, 4, 4, 4)
    target[:, :, :2] = 1
    over = torch.full((1, 2, 4, 4, 4), 5.0)  # predicts everything: false positives dominate
    bce, tversky = per_task_losses(over, target)
    assert (tversky > 0).all() and torch.isfinite(bce).all()
    perfect = torch.where(target > 0, 20.0, -20.0)
    _, tv = per_task_losses(perfect, target)
    assert tv.max() < 1e-3


def test_tversky_weight_keeps_its_gradient_as_in_the_reference():
    """Hermes' BinaryDiceLoss computes alpha = clamp(FP / (FP + FN)) from the prediction and does
    not detach it; the gradient therefore differs from the detached variant's, and equals the
    gradient of the formula written out with alpha as a function of the logits."""
    torch.manual_seed(0)
    target = (torch.rand(1, 1, 6, 6, 6) > 0.6).float()
    logits = (torch.randn(1, 1, 6, 6, 6) * 0.3).requires_grad_()  # alpha inside (0.2, 0.8): not clamped
    grads = {}
    for detach in (False, True):
        logits.grad = None
        per_task_losses(logits, target, detach_alpha=detach)[1].sum().backward()
        grads[detach] = logits.grad.clone()
    p = torch.sigmoid(logits.detach()).requires_grad_()
    tp, fp, fn = (p * target).sum(), (p * (1 - target)).sum(), ((1 - p) * target).sum()
    alpha = fp / (fp + fn + 1e-5)
    assert 0.2 < float(alpha) < 0.8
    (1 - (tp + 1e-5) / (tp + alpha * fp + (1 - alpha) * fn + 1e-5)).backward()
    by_hand = p.grad * p.detach() * (1 - p.detach())  # chain rule through the sigmoid
    torch.testing.assert_close(grads[False], by_hand, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads[False], grads[True])


def test_dice_loss_is_the_soft_dice_of_each_sample_and_task():
    """loss='dice' (TrainConfig.loss): 1 - (2 TP + s) / (2 TP + FP + FN + s), i.e. Tversky at
    alpha 0.5, per (sample, task); the BCE term is the same as the adaptive loss's."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 5, 5)
    target = (torch.rand(2, 3, 5, 5, 5) > 0.5).float()
    bce, dice = per_task_losses(logits, target, fixed_alpha=0.5)
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    inter = (p * t).sum(-1)
    expected = 1 - (2 * inter + 2e-5) / (p.sum(-1) + t.sum(-1) + 2e-5)
    torch.testing.assert_close(dice, expected)
    torch.testing.assert_close(bce, per_task_losses(logits, target)[0])
    supervised = torch.ones(2, 3, dtype=torch.bool)
    loss, _ = PartialLabelLoss(kind="dice")({"logits": logits}, target, supervised, None, None)
    torch.testing.assert_close(loss, (bce + expected).mean())
    adaptive, _ = PartialLabelLoss()({"logits": logits}, target, supervised, None, None)
    assert not torch.allclose(loss, adaptive)


def test_sampler_follows_dataset_weights():
    dataset_of_case = [0] * 2 + [1] * 10 + [2] * 5
    s = DatasetWeightedSampler(dataset_of_case, [1.0, 1.0, 2.0], samples_per_epoch=8000, seed=1)
    counts = torch.bincount(torch.tensor([dataset_of_case[i] for i, _ in s]), minlength=3).float()
    torch.testing.assert_close(counts / counts.sum(), torch.tensor([0.25, 0.25, 0.5]), atol=0.02, rtol=0)


def test_sampler_shards_are_disjoint_complete_and_resumable():
    cases = [0, 0, 1, 1, 1]
    shards = [list(DatasetWeightedSampler(cases, [1, 1], 12, seed=3, rank=r, world_size=3)) for r in range(3)]
    plan = DatasetWeightedSampler(cases, [1, 1], 12, seed=3).plan(0)
    assert sorted(sum(shards, [])) == sorted(plan)
    assert all(len(s) == 4 for s in shards)
    s = DatasetWeightedSampler(cases, [1, 1], 12, seed=3, rank=1, world_size=3)
    s.skip(2)
    assert list(s) == shards[1][2:]
    s.set_epoch(1)
    assert list(s) != shards[1]  # a new epoch draws a new plan
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        DatasetWeightedSampler(cases, [1, 1], 10, world_size=3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    s = DatasetWeightedSampler([0, 0, 1, 1, 1, 2], [1, 2, 1], 16, seed=7, rank=dist.get_rank(),
                               world_size=dist.get_world_size())
    mine = list(s)
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        out.put(gathered)
    dist.destroy_process_group()


def test_sampler_under_two_real_gloo_processes():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_gloo_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    gathered = queue.get(timeout=120)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    a, b = gathered
    plan = DatasetWeightedSampler([0, 0, 1, 1, 1, 2], [1, 2, 1], 16, seed=7).plan(0)
    assert len(a) == len(b) == 8
    assert a == plan[0::2] and b == plan[1::2]


def test_case_sampling_weights_datasets_by_their_cases():
    dataset_of_case = [0] * 2 + [1] * 10 + [2] * 8
    s = DatasetWeightedSampler(dataset_of_case, [1.0, 1.0, 1.0], samples_per_epoch=20000, seed=2, by="case")
    counts = torch.bincount(torch.tensor([dataset_of_case[i] for i, _ in s]), minlength=3).float()
    torch.testing.assert_close(counts / counts.sum(), torch.tensor([0.1, 0.5, 0.4]), atol=0.015, rtol=0)


def test_composed_batches_on_every_process():
    """distinct-sites: every batch from different datasets; every-site (MS-Net): every batch holds
    each dataset equally often. Per process under DDP sharding, resumable to the sample."""
    dataset_of_case = [0] * 3 + [1] * 4 + [2] * 2 + [3] * 5
    world = 2
    for batches, batch in (("distinct-sites", 3), ("every-site", 8)):
        make = lambda r: DatasetWeightedSampler(dataset_of_case, [1, 1, 2, 1], 16 * batch, seed=5, rank=r,
                                                world_size=world, batches=batches, batch_size=batch)
        shards = [list(make(r)) for r in range(world)]
        for shard in shards:
            assert len(shard) == 8 * batch
            for k in range(0, len(shard), batch):
                sites = sorted(dataset_of_case[c] for c, _ in shard[k:k + batch])
                assert sites == (sorted(set(sites)) if batches == "distinct-sites" else [0, 0, 1, 1, 2, 2, 3, 3])
        resumed = make(1)
        resumed.skip(batch)
        assert list(resumed) == shards[1][batch:]
    with pytest.raises(ValueError, match="multiple of the batch size"):
        DatasetWeightedSampler(dataset_of_case, [1, 1, 1, 1], 10, batches="distinct-sites", batch_size=3)
    with pytest.raises(ValueError, match="multiple of the number of datasets"):
        DatasetWeightedSampler(dataset_of_case, [1, 1, 1, 1], 12, batches="every-site", batch_size=6)


def test_reference_augmentation_preset_and_low_resolution_step():
    from UniversalSeg.data.transforms import augmentation
    from UniversalSeg.training.config import TrainConfig, TrainConfigError
    cfg = TrainConfig().replace(augmentation="reference")
    assert (cfg.augmentation.affine_prob, cfg.augmentation.rotate_degrees, cfg.augmentation.scale) == (0.5, 30.0, 0.3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # survives the checkpoint round trip
    names = [type(t).__name__ for t in augmentation((32, 32, 32), cfg.augmentation, 3).transforms]
    assert "RandSimulateLowResolutiond" in names
    assert "RandSimulateLowResolutiond" not in [type(t).__name__ for t in
                                                augmentation((32, 32, 32), TrainConfig().augmentation, 3).transforms]
    with pytest.raises(TrainConfigError, match="unknown augmentation preset 'strong'"):
        TrainConfig().replace(augmentation="strong")


def _box_case(size=32):
    from monai.data import MetaTensor
    label = torch.zeros(1, size, size, size)
    label[0, 4:14, 8:24, 8:24] = 1  # on the left of axis 0 only: a mirror moves it
    return {"image": MetaTensor(label * 10.0), "target": MetaTensor(label.to(torch.uint8)),
            "label": MetaTensor(label)}


def test_left_right_flip_mirrors_image_and_targets_together():
    from UniversalSeg.data.transforms import AugmentationConfig, augmentation
    aug = AugmentationConfig(affine_prob=0.0, intensity_prob=0.0, flip_prob=1.0)
    chain = augmentation((32, 32, 32), aug, 2)
    chain.set_random_state(seed=3)
    case = _box_case()
    out = chain(dict(case))
    out = out[0] if isinstance(out, list) else out
    torch.testing.assert_close(out["target"].as_tensor(), case["target"].as_tensor().flip(1))  # RAS axis 0
    torch.testing.assert_close(out["image"].as_tensor(), case["image"].as_tensor().flip(1))
    assert "RandFlipd" not in [type(t).__name__ for t in augmentation((32,) * 3, AugmentationConfig(), 2).transforms]


def test_shear_bends_the_box_and_keeps_image_and_targets_aligned():
    from UniversalSeg.data.transforms import AugmentationConfig, augmentation
    results = {}
    for shear in (0.0, 0.3):
        aug = AugmentationConfig(affine_prob=1.0, rotate_degrees=0.0, scale=0.0, shear=shear, intensity_prob=0.0)
        chain = augmentation((32, 32, 32), aug, 2)
        chain.set_random_state(seed=5)
        out = chain(_box_case(40))
        out = out[0] if isinstance(out, list) else out
        target = out["target"].as_tensor()[0].bool()
        idx = target.nonzero()
        box = torch.prod(idx.max(0).values - idx.min(0).values + 1)
        results[shear] = float(target.sum()) / float(box)  # 1.0: still an axis-aligned box
        image = out["image"].as_tensor()[0]
        assert float(((image > 5) == target).float().mean()) > 0.98  # same transform for both
    assert results[0.0] == 1.0 and results[0.3] < 0.9
    from UniversalSeg.training.config import TrainConfig, TrainConfigError
    with pytest.raises(TrainConfigError, match="augmentation.shear: a number in"):
        TrainConfig().replace(augmentation={"shear": 2.0})


def test_intensity_remapping_reorders_tissues_reproducibly_and_leaves_the_cache_alone():
    """RandIntensityRemapd (Ivanovska et al. 2020's random remapping curves): the patch keeps its
    intensity range, tissues can swap their order (the point: shape, not contrast), the same seed
    gives the same curve (resumable training), and the input tensor - a crop may be a view of the
    cached volume - is never written to."""
    from monai.data import MetaTensor

    from UniversalSeg.data.transforms import AugmentationConfig, RandIntensityRemapd, augmentation
    tissues = MetaTensor(torch.arange(5.0).repeat_interleave(200).reshape(1, 10, 10, 10))  # 5 ordered "tissues"
    before = tissues.clone()
    reordered = 0
    for seed in range(20):
        remap = RandIntensityRemapd("image", prob=1.0)
        remap.set_random_state(seed)
        out = remap({"image": tissues})["image"]
        remap.set_random_state(seed)
        assert torch.equal(out, remap({"image": tissues})["image"])
        assert isinstance(out, MetaTensor) and out.shape == tissues.shape
        assert float(out.min()) >= 0.0 - 1e-6 and float(out.max()) <= 4.0 + 1e-6
        means = [float(out[tissues == t].mean()) for t in range(5)]
        reordered += means != sorted(means) and means != sorted(means, reverse=True)
    assert torch.equal(tissues, before)
    assert 10 <= reordered < 20, reordered  # most curves swap some tissues, not all (seeds fixed)
    skip = RandIntensityRemapd("image", prob=0.0)
    assert skip({"image": tissues})["image"] is tissues
    names = [type(t).__name__ for t in augmentation((8,) * 3, AugmentationConfig(remap_prob=0.3), 2).transforms]
    assert "RandIntensityRemapd" in names
    transforms = augmentation((8,) * 3, AugmentationConfig(), 2).transforms
    assert "RandIntensityRemapd" not in [type(t).__name__ for t in transforms]
    from UniversalSeg.training.config import TrainConfig, TrainConfigError
    with pytest.raises(TrainConfigError, match="augmentation.remap_prob: a probability"):
        TrainConfig().replace(augmentation={"remap_prob": 1.5})
    # remap_modalities: only those cases are remapped (e.g. MR, not CT's Hounsfield units)
    only_mr = RandIntensityRemapd("image", prob=1.0, modalities=["MR-T1", "MR-T2"])
    only_mr.set_random_state(0)
    assert only_mr({"image": tissues, "modality": "CT"})["image"] is tissues
    assert not torch.equal(only_mr({"image": tissues, "modality": "MR-T2"})["image"], tissues)
    cfg = TrainConfig().replace(augmentation={"remap_prob": 0.5, "remap_modalities": ["MR-T1"]})
    assert cfg.augmentation.remap_modalities == ("MR-T1",)
    assert TrainConfig().replace(augmentation={"remap_modalities": "MR-T1"}).augmentation.remap_modalities == ("MR-T1",)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # a run's saved settings
    step = next(t for t in augmentation((8,) * 3, cfg.augmentation, 2).transforms
                if isinstance(t, RandIntensityRemapd))
    assert step.modalities == {"MR-T1"}


def test_gin_style_augmentation_changes_texture_keeps_the_norm_and_is_reproducible():
    """RandGlobalIntensityNonlineard (GIN, Ouyang et al. 2022): a random shallow convolution network
    mixed with the image and scaled back to its Frobenius norm. With 3x3x3 kernels a voxel's new
    intensity depends on its neighbours (two voxels of the same intensity with different
    neighbourhoods end apart), with 1x1x1 kernels only on itself; the same seed gives the same
    network (resumable training), and the cached input is never written to."""
    from monai.data import MetaTensor

    from UniversalSeg.data.transforms import AugmentationConfig, RandGlobalIntensityNonlineard, augmentation
    image = torch.zeros(1, 12, 12, 12)
    image[0, 2:6, 2:6, 2:6] = 1.0   # a cube of intensity 1 inside background 0 ...
    image[0, 7:11, 7:11, 7:11] = 1.0
    image[0, 8:10, 8:10, 8:10] = 3.0  # ... and one whose centre is brighter
    image = MetaTensor(image)
    before = image.clone()
    spread = {}
    for kernels in ((1,), (3,)):
        gaps = []
        for seed in range(10):
            gin = RandGlobalIntensityNonlineard("image", prob=1.0, kernels=kernels)
            gin.set_random_state(seed)
            out = gin({"image": image})["image"]
            gin.set_random_state(seed)
            assert torch.equal(out, gin({"image": image})["image"])
            assert isinstance(out, MetaTensor) and out.shape == image.shape
            assert float(out.norm()) == pytest.approx(float(image.norm()), rel=1e-4)
            # two voxels of intensity 1: a first cube's centre and a second cube's rim beside the bright core
            gaps.append(abs(float(out[0, 3, 3, 3] - out[0, 7, 8, 8])))
        spread[kernels] = max(gaps)
    assert spread[(1,)] < 1e-5 and spread[(3,)] > 0.05, spread
    assert torch.equal(image, before)
    assert RandGlobalIntensityNonlineard("image", prob=0.0)({"image": image})["image"] is image
    names = [type(t).__name__ for t in augmentation((8,) * 3, AugmentationConfig(gin_prob=0.5), 2).transforms]
    assert "RandGlobalIntensityNonlineard" in names
    assert "RandGlobalIntensityNonlineard" not in [type(t).__name__ for t in
                                                   augmentation((8,) * 3, AugmentationConfig(), 2).transforms]
    from UniversalSeg.training.config import TrainConfig, TrainConfigError
    with pytest.raises(TrainConfigError, match="augmentation.gin_prob: a probability"):
        TrainConfig().replace(augmentation={"gin_prob": -0.1})
