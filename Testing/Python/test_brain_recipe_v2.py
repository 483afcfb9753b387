"""brain-synth recipe 2.0.0: label values -> tasks, SynthSeg-style generation, a tiny build.

Uses the 20 real label maps at ../shared/data/synthseg-label-maps beside the repository (skipped
with a message where they are absent); the tiny build runs on 3 of them shrunk to 32^3."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from UniversalSeg.data.label_synthesis import (
    GeneratorSettings,
    draw_image,
    flip_left_right,
    generate,
    mirror_table,
    targets,
)
from UniversalSeg.data.terminology import task_info
from UniversalSeg.zoo import brain_v2

MAPS = brain_v2.default_maps()
needs_maps = pytest.mark.skipif(not (MAPS / "training_seg_01.nii.gz").is_file(),
                                reason=f"the SynthSeg label maps are not at {MAPS} (../shared/data)")


def settings() -> GeneratorSettings:
    return GeneratorSettings.from_dict(brain_v2.generator_block())


def test_tasks_left_right_and_head_labels():
    tasks = brain_v2.structures()
    assert tasks["hippocampus-left"] == (17,) and tasks["hippocampus-right"] == (53,)
    assert tasks["lateral-ventricle-left"] == (4, 5) and tasks["lateral-ventricle-right"] == (43, 44)
    assert tasks["cerebral-cortex-left"] == (3,) and tasks["cerebral-white-matter-right"] == (41,)
    # the 500-range labels are never a task's own, only the head's
    for name, values in tasks.items():
        if name != "head":
            assert all(v < 500 for v in values), name
    assert set(brain_v2.HEAD_TISSUES) <= set(tasks["head"])
    assert 24 not in tasks["brain"] and 24 in tasks["csf"] and 24 in tasks["head"]
    assert set(tasks["brain"]) >= {2, 3, 4, 5, 16, 17, 41, 53}
    # every structure that has a side comes as a left and a right task
    sided = [n for n in tasks if n.endswith("-left")]
    assert len(sided) == 13 and all(n.replace("-left", "-right") in tasks for n in sided)
    # mutually exclusive structures: disjoint label values; brain and head (which contain them) in no group
    group = brain_v2.EXCLUSIVE_GROUPS[0]
    assert "brain" not in group and "head" not in group and len(group) == len(tasks) - 2
    seen = set()
    for name in group:
        assert not seen & set(tasks[name]), name
        seen |= set(tasks[name])


def test_terminology_of_the_structures():
    left, right = task_info("hippocampus-left"), task_info("hippocampus-right")
    assert left.type.value == right.type.value == "5366008"  # SCT Hippocampus
    assert (left.modifier.value, right.modifier.value) == ("7771000", "24028007")  # SCT Left / Right
    assert task_info("thalamus-left").type.value == "119406000" and task_info("brain-stem").type.value == "119238007"
    assert left.display_name == "Left hippocampus"
    assert task_info("liver").modifier is None and "modifier" not in task_info("liver").to_dict()
    from UniversalSeg.inference.writers import segment_fields
    assert segment_fields(right)["terminology"]["typeModifier"] == ["SCT", "24028007", "Right"]


def test_flip_swaps_left_and_right():
    labels = torch.zeros(6, 3, 3, dtype=torch.int16)
    labels[0] = 17  # left hippocampus on one side of axis 0 (RAS: left-right)
    labels[5] = 41  # right white matter on the other
    labels[2] = 16  # brain stem, a midline structure
    flipped = flip_left_right(labels, mirror_table(settings(), 600))
    assert (flipped[5] == 53).all() and (flipped[0] == 2).all() and (flipped[3] == 16).all()
    assert torch.equal(flip_left_right(flipped, mirror_table(settings(), 600)), labels)


def test_settings_refuse_bad_input():
    with pytest.raises(Exception, match="tissues"):
        GeneratorSettings.from_dict({"tissues": {2: "marble"}})
    with pytest.raises(Exception, match="two twins"):
        GeneratorSettings.from_dict({"tissues": {2: "white-matter"}, "mirror": {2: 41, 41: 3}})
    with pytest.raises(Exception, match="probability"):
        GeneratorSettings.from_dict({"tissues": {2: "white-matter"}, "flip": 2})


@needs_maps
def test_generation_shapes_ranges_determinism():
    import SimpleITK as sitk
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(MAPS / "training_seg_01.nii.gz")))
    labels = torch.from_numpy(labels.astype(np.int16))
    s = settings()
    for modality in ("MR-T1", "CT"):
        one = generate(labels, s, modality, (48, 40, 32), (1, 1, 1), np.random.default_rng(7))
        two = generate(labels, s, modality, (48, 40, 32), (1, 1, 1), np.random.default_rng(7))
        other = generate(labels, s, modality, (48, 40, 32), (1, 1, 1), np.random.default_rng(8))
        crop, image = one
        assert crop.shape == image.shape == (48, 40, 32) and crop.dtype == torch.int16 and image.dtype == torch.float32
        assert torch.equal(crop, two[0]) and torch.equal(image, two[1])  # same seed: same pair
        assert not torch.equal(image, other[1])
        assert set(torch.unique(crop).tolist()) <= set(torch.unique(labels).tolist())  # nearest: no new values
        if modality == "CT":
            assert image.min() > -1200 and image.max() < 2500  # Hounsfield units
        else:
            assert image.min() >= 0 and image.max() <= 1
    # a thick-slice acquisition blurs along its thick axis only
    block = labels[60:124, 60:124, 60:124]
    t1 = draw_image(block, s, "MR-T1", (1, 1, 1), np.random.default_rng(0), resolution=(1, 1, 1))
    thick = draw_image(block, s, "MR-T1", (1, 1, 1), np.random.default_rng(0), resolution=(1, 1, 7))
    along = lambda im, axis: float(im.diff(dim=axis).abs().mean())  # noqa: E731
    assert along(thick, 2) < 0.6 * along(t1, 2)
    # task targets from a patch: left and right apart, head labels only in "head"
    values = [list(v) for v in brain_v2.structures().values()]
    tgt = targets(crop, values)
    names = list(brain_v2.structures())
    assert tgt.shape == (len(names), 48, 40, 32) and tgt.dtype == torch.uint8
    assert torch.equal(tgt[names.index("head")].bool(), crop > 0)
    group = [names.index(n) for n in brain_v2.EXCLUSIVE_GROUPS[0]]
    assert int(tgt[group].sum(0).max()) <= 1


def _tiny_maps(folder: Path) -> None:
    import SimpleITK as sitk
    folder.mkdir()
    for i in (1, 2, 3):
        image = sitk.ReadImage(str(MAPS / f"training_seg_{i:02d}.nii.gz"))
        small = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[::8, ::8, ::8].astype(np.int16))
        small.SetDirection(image.GetDirection())  # 1 mm: a 32 mm "head" the recipe takes as it is
        sitk.WriteImage(small, str(folder / f"training_seg_{i:02d}.nii.gz"))


@needs_maps
def test_tiny_build_writes_a_loadable_package(tmp_path):
    from UniversalSeg.model_package import load_package
    _tiny_maps(tmp_path / "maps")
    out = tmp_path / "build"
    cmd = [sys.executable, "-m", "UniversalSeg", "zoo", "build", "brain", "--out", str(out), "--maps",
           str(tmp_path / "maps"), "--held-out", "training_seg_03", "--steps", "4", "--click-steps", "2",
           "--patch", "32", "--width", "4", "--validations", "2", "--no-progress"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "UNIVERSALSEG_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    package = load_package(out / "brain-synth-2.0.0.zip")
    assert list(package.config.tasks) == list(brain_v2.TASKS)
    assert package.meta["provenance"]["version"] == "2.0.0"
    assert package.meta["provenance"]["held_out"] == ["training_seg_03"]
    assert package.meta["provenance"]["exclusive_groups"] == brain_v2.EXCLUSIVE_GROUPS
    assert package.meta["exclusive_groups"] == brain_v2.EXCLUSIVE_GROUPS  # model.json's field, read by prediction
    from UniversalSeg.inference import Predictor
    assert Predictor(package, device="cpu").exclusive_groups == brain_v2.EXCLUSIVE_GROUPS
    assert package.config.prompt.enabled  # the click stage was trained
    card = package.meta["provenance"]["card"]
    assert "SynthSeg" in card["trained_on"] and "Apache-2.0" in card["licence"]
    assert "training_seg_03" in card["held_out"]
    history = [json.loads(line) for line in (out / "run" / "validation-history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    assert any(k.startswith("heldout-t1-1mm/hippocampus-left") for k in history[0]["dice"])
    prov = package.meta["provenance"]  # the card quotes the kept checkpoint's held-out validation
    assert prov["best_step"] in (2, 4) and prov["validation"]["step"] == prov["best_step"]
    assert f"at step {prov['best_step']}" in card["validation"]
    assert (out / "run" / "checkpoints" / "best.pt").is_file() and (out / "learning-curve.png").stat().st_size > 1000
    # the held-out subject never trains
    catalog = (out / "data" / "catalog.yaml").read_text()
    assert "training_seg_03.nii.gz" not in catalog and "training_seg_01.nii.gz" in catalog
    # bad input: one line, exit code 2 (InputError)
    bad = subprocess.run([*cmd[:6], "--out", str(tmp_path / "x"), "--maps", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "label maps not found" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
