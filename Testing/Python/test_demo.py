"""The README's main job, in a reduced setting: every artifact a newcomer is promised."""
import json

import slicerio

from UniversalSeg.demo import run_demo
from UniversalSeg.model_package import load_package


def test_demo_end_to_end_reduced(tmp_path):
    summary = run_demo(tmp_path, steps=4, cases=3, shape=32, progress=False, test_cases=2)
    dice = json.loads((tmp_path / "dice.json").read_text())
    assert set(dice["dice"]) == {
        "ct-hospital-a (test)", "ct-hospital-b (test)", "mr-t1-hospital-c (test)",
        "mr-t2-hospital-d (test)", "pet-hospital-e (test)", "mr-t1-hospital-f (left out of training)"}
    assert all(0 <= v <= 1 for row in dice["dice"].values() for v in row.values())
    assert all(len(v) == 2 for row in dice["cases"].values() for v in row.values())  # 2 test cases each
    segs = sorted((tmp_path / "predictions").glob("*.seg.nrrd"))
    pngs = sorted((tmp_path / "predictions").glob("*.png"))
    assert len(segs) == 6 * 2 and len(pngs) == 6  # every test case; a montage of the first per site
    # test cases come from another data seed: none of their images is a training image
    train_imgs = {p.read_bytes() for p in (tmp_path / "data").rglob("imagesTr/*.nii.gz")}
    assert not any(p.read_bytes() in train_imgs for p in (tmp_path / "test-data").rglob("imagesTr/*.nii.gz"))
    seg = slicerio.read_segmentation(str(segs[0]), skip_voxels=True)
    assert all(s["name"] in {"Liver", "Spleen", "Kidney", "Liver tumor"} for s in seg["segments"])
    assert (tmp_path / "dice.png").stat().st_size > 10000
    package = load_package(summary["model"])
    assert package.config.base_width == 16  # the small preset
    assert package.config.prompt.enabled and package.config.prompt.width == 8  # it refines with clicks
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_demo_network_width_override_matches_the_accuracy_study_network():
    """demo_study's width arms: the width and the priors' head size change together (the head
    size must divide every fused stage's channels: 4w, 8w, 10w), nothing else does."""
    from UniversalSeg.demo import demo_network
    from UniversalSeg.networks import UniversalSegNet

    small, narrow = demo_network("small"), demo_network("small", base_width=8)
    assert (small.base_width, small.fusion.head_dim) == (16, 32)
    assert (narrow.base_width, narrow.fusion.head_dim) == (8, 8)
    assert narrow.prompt == small.prompt and narrow.fusion.sites == small.fusion.sites
    count = lambda cfg: sum(p.numel() for p in UniversalSegNet(cfg.replace(tasks=["a", "b"])).parameters())
    assert count(narrow) < count(small) / 3
