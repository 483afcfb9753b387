"""The README's main job, in a reduced setting: every artifact a newcomer is promised."""
import json

import slicerio

from UniversalSeg.demo import run_demo
from UniversalSeg.model_package import load_package


def test_demo_end_to_end_reduced(tmp_path):
    summary = run_demo(tmp_path, steps=4, cases=3, shape=32, progress=False)
    dice = json.loads((tmp_path / "dice.json").read_text())
    assert set(dice["dice"]) == {
        "ct-hospital-a (validation)", "ct-hospital-b (validation)", "mr-t1-hospital-c (validation)",
        "mr-t2-hospital-d (validation)", "pet-hospital-e (validation)", "mr-t1-hospital-f (left out of training)"}
    assert all(0 <= v <= 1 for row in dice["dice"].values() for v in row.values())
    segs = sorted((tmp_path / "predictions").glob("*.seg.nrrd"))
    pngs = sorted((tmp_path / "predictions").glob("*.png"))
    assert len(segs) == len(pngs) == 5 + 3  # one validation case per institution + 3 held-out cases
    seg = slicerio.read_segmentation(str(segs[0]), skip_voxels=True)
    assert all(s["name"] in {"Liver", "Spleen", "Kidney", "Liver tumor"} for s in seg["segments"])
    assert (tmp_path / "dice.png").stat().st_size > 10000
    package = load_package(summary["model"])
    assert package.config.base_width == 16  # the small preset
    assert (tmp_path / "run" / "tensorboard").is_dir()
