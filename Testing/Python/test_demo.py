"""The README's main job, in a reduced setting: every artifact a newcomer is promised."""
import json

import slicerio

from UniversalSeg.demo import run_demo
from UniversalSeg.model_package import load_package


def test_demo_end_to_end_reduced(tmp_path):
    summary = run_demo(tmp_path, steps=4, cases=3, progress=False, test_cases=1)
    dice = json.loads((tmp_path / "dice.json").read_text())
    assert dice["anatomy"] == "amos"
    sites = {"ct-hospital-a (test)", "ct-hospital-b (test)", "mr-t1-hospital-c (test)",
             "mr-t2-hospital-d (test)", "pet-hospital-e (test)", "mr-t1-hospital-f (left out of training)"}
    assert set(dice["dice"]) == set(dice["atlas"]) == sites
    # partial labels: each site is scored on the structures it labels, the atlas on the same ones
    assert set(dice["dice"]["ct-hospital-b (test)"]) == set(dice["atlas"]["ct-hospital-b (test)"]) == {"liver", "pancreas"}
    assert all(0 <= v <= 1 for table in (dice["dice"], dice["atlas"]) for row in table.values() for v in row.values())
    assert all(len(v) == 1 for row in dice["cases"].values() for v in row.values())  # 1 test case each
    # the atlas baseline is a real baseline: the liver, large and always in one place, is found
    assert min(dice["atlas"][s]["liver"] for s in sites if "liver" in dice["atlas"][s]) > 0.3
    segs = sorted((tmp_path / "predictions").glob("*.seg.nrrd"))
    pngs = sorted((tmp_path / "predictions").glob("*.png"))
    assert len(segs) == 6 and len(pngs) == 6  # every test case; a montage of the first per site
    # test cases come from another data seed: none of their images is a training image
    train_imgs = {p.read_bytes() for p in (tmp_path / "data").rglob("imagesTr/*.nii.gz")}
    assert not any(p.read_bytes() in train_imgs for p in (tmp_path / "test-data").rglob("imagesTr/*.nii.gz"))
    seg = slicerio.read_segmentation(str(segs[0]), skip_voxels=True)
    assert all(s["name"] in {"Liver", "Spleen", "Kidney", "Pancreas"} for s in seg["segments"])
    assert (tmp_path / "dice.png").stat().st_size > 10000
    # the real scans (CI has ../shared/data): scored against TotalSegmentator, said to be automatic
    real = dice["real_scans"]
    assert set(real) == {"real CT (TotalSegmentator example)", "real MR-T1 (TotalSegmentator example)"}
    assert set(real["real CT (TotalSegmentator example)"]["model"]) == {"liver", "spleen", "kidney", "pancreas"}
    assert all("automatic" in r["reference_kind"] for r in real.values())
    assert len(list((tmp_path / "real-scans").glob("*.png"))) == 2
    for key in ("command", "commit", "version", "cpu", "threads"):
        assert key in dice
    package = load_package(summary["model"])
    assert package.config.base_width == 8  # the demo's width (the small preset's own is 16)
    assert package.config.prompt.enabled and package.config.prompt.width == 8  # it refines with clicks
    assert package.config.tasks == ["liver", "spleen", "kidney", "pancreas"] or \
        sorted(package.config.tasks) == ["kidney", "liver", "pancreas", "spleen"]
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_demo_network_width_override_matches_the_accuracy_study_network():
    """demo_study's width arms: the width and the priors' head size change together (the head
    size must divide every fused stage's channels: 4w, 8w, 10w), nothing else does."""
    from UniversalSeg.demo import demo_network
    from UniversalSeg.networks import UniversalSegNet

    small, narrow = demo_network("small"), demo_network("small", base_width=8)
    assert demo_network("small", base_width=16) == small  # the preset's width: the preset's network (head_dim 32)
    assert (small.base_width, small.fusion.head_dim) == (16, 32)
    assert (narrow.base_width, narrow.fusion.head_dim) == (8, 8)
    assert narrow.prompt == small.prompt and narrow.fusion.sites == small.fusion.sites
    count = lambda cfg: sum(p.numel() for p in UniversalSegNet(cfg.replace(tasks=["a", "b"])).parameters())
    assert count(narrow) < count(small) / 3


def test_demo_defaults_are_the_studied_recipe(monkeypatch, tmp_path):
    """`universalseg demo` trains on real anatomy with the demo's recipe; `--phantom` runs exactly
    demo_study.py's arm grid-64-800 (the phantom studies' table comes from that arm); --width and
    --preset change only the width."""
    import importlib.util
    import inspect
    from pathlib import Path

    import UniversalSeg.demo as demo
    from UniversalSeg import cli

    spec = importlib.util.spec_from_file_location(
        "demo_study", Path(__file__).resolve().parents[1] / "Benchmarks" / "demo_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    arm = dict(study.ARMS["grid-64-800"][1])
    train = arm.pop("train")
    defaults = inspect.signature(demo.run_demo).parameters
    assert {k: defaults[k].default for k in arm} == arm == {"shape": 64, "base_width": 8, "steps": 800}
    assert defaults["anatomy"].default == "amos"
    recipe = demo.demo_train_config(demo.DEMO_STEPS, demo.DEMO_SHAPE, 0)
    assert train == {"click_every": 1, "click_lr_scale": 1.0} and recipe.replace(**train) == recipe
    assert recipe.clicks == 5
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: calls.append((a, k)))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    (out, steps, cases, shape, seed, preset, _), options = calls[-1]
    assert (steps, cases, seed, preset, options["base_width"]) == (800, 8, 0, "small", 8)
    assert options["anatomy"] == "amos" and options["real_scans"] == "auto"
    assert cli.main(["demo", "--out", str(tmp_path), "--phantom"]) == 0
    (out, steps, cases, shape, seed, preset, _), options = calls[-1]
    assert (steps, cases, shape, options["anatomy"]) == (800, 8, 64, "phantom")
    assert cli.main(["demo", "--out", str(tmp_path), "--width", "16", "--phantom", "--shape", "40"]) == 0
    assert calls[-1][0][3] == 40 and calls[-1][1]["base_width"] == 16
    assert cli.main(["demo", "--out", str(tmp_path), "--preset", "base"]) == 0
    assert calls[-1][1]["base_width"] is None  # the preset's own width
    assert cli.main(["demo", "--out", str(tmp_path), "--width", "2"]) == 2  # a clear error, no run
    assert cli.main(["demo", "--out", str(tmp_path), "--shape", "40"]) == 2  # the phantom's option alone
    assert cli.main(["demo", "--out", str(tmp_path), "--real-scans", str(tmp_path)]) == 2  # no scans there
    assert len(calls) == 4
    # the help states the defaults without importing torch: the literals must follow demo.py
    demo_parser = cli.build_parser()._subparsers._group_actions[0].choices["demo"]
    helps = {a.dest: a.help for a in demo_parser._actions}
    assert f"default {demo.DEMO_STEPS})" in helps["steps"] and f"default {demo.DEMO_SHAPE}:" in helps["shape"]
    assert f"default: {demo.DEMO_WIDTH} with" in helps["width"]
    assert f"[--steps {demo.DEMO_STEPS}] [--cases 8] [--width {demo.DEMO_WIDTH}]" in demo_parser.description
    # the arms run before the demo moved to 64^3 keep their 40^3 recipe, and every arm that does not
    # set its own the click stage on every step at the base learning rate
    assert study.ARMS["no-remap"][1]["shape"] == 40
    pinned = {"click_every": 1, "click_lr_scale": 1.0}
    assert study.ARMS["grid-40"][1] == {**study.GRID_40, "train": pinned}
    assert study.ARMS["no-remap"][1]["train"] == {**pinned, "augmentation": {"remap_prob": 0.0}}
    assert study.ARMS["clicks-every-2"][1] == {"shape": 64, "base_width": 8, "steps": 1000,
                                               "train": {"click_every": 2, "click_lr_scale": 1.0}}


def test_study_tables_over_several_studies_never_merge_one_arm_across_them(tmp_path):
    """demo_study.py --table-from A B: the same arm and seed in two studies (the same recipe on
    another phantom) are two rows, each with its own mean; other arms keep their names."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "demo_study", Path(__file__).resolve().parents[1] / "Benchmarks" / "demo_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)

    def run(kidney):
        return {"dice": {"ct-hospital-a (test)": {"kidney": kidney}}, "cases": {}, "seconds": 1.0, "seed": 0,
                "test_cases": 4, "train_config": {"spacing": [2.8125] * 3}, "steps": 800}

    paths = []
    for name, runs in (("old", {"grid-64-800/seed0": run(0.4), "gin/seed0": run(0.3)}),
                       ("new", {"grid-64-800/seed0": run(0.9)})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "study.json").write_text(json.dumps({"runs": runs}))
        paths.append(tmp_path / name / "study.json")
    merged = study.merge_studies(paths)
    assert sorted(merged) == ["gin/seed0", "grid-64-800 (new)/seed0", "grid-64-800/seed0"]
    _, cells = study.summarize(merged)
    kidney = "ct-hospital-a (test)/kidney"
    assert cells["grid-64-800"][kidney]["mean"] == 0.4 and cells["grid-64-800 (new)"][kidney]["mean"] == 0.9
    assert "| grid-64-800 (new) | 1 of 1 |" in study.compact(cells)
