"""The accuracy study's driver, at a toy budget, through the catalog path a user with real MSD
data would take: the right runs, the same budget rule, the verdict and every report file."""
import importlib.util
import json
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "Benchmarks" / "accuracy.py"


def load_study():
    spec = importlib.util.spec_from_file_location("accuracy_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_study_on_a_catalog(synth_collection, tmp_path, capsys):
    study = load_study()
    out = tmp_path / "study"
    study.main(["--catalog", str(synth_collection), "--heldout", str(synth_collection.parent / "catalog-heldout.yaml"),
                "--out", str(out), "--steps", "5", "--seeds", "0", "1", "--base-width", "4", "--patch", "32",
                "--spacing", "5.625", "--methods", "universal", "per-institution-split"])
    report = json.loads((out / "accuracy.json").read_text())
    assert set(report["runs"]) == {"universal/seed0", "universal/seed1",
                                   "per-institution-split/seed0", "per-institution-split/seed1"}
    # same total budget: five per-institution models of 5 // 5 = 1 step each, one universal of 5
    split_runs = sorted((out / "runs" / "per-institution-split").iterdir())
    assert len(split_runs) == 2 * 5
    assert {json.loads((r / "validation.json").read_text())["step"] for r in split_runs} == {1}
    assert json.loads((out / "runs" / "universal" / "seed0" / "validation.json").read_text())["step"] == 5
    uni, per = report["summary"]["universal"], report["summary"]["per-institution-split"]
    assert len([k for k in uni["dice"] if k.startswith("seen:")]) == 11  # every labelled (site, task)
    assert all(v["n"] == 2 and 0 <= v["mean"] <= 1 and v["sd"] >= 0 for v in uni["dice"].values())
    assert per["parameters"] > 4 * uni["parameters"]  # five networks against one
    verdict = report["universal_vs_per_institution"]["universal vs per-institution-split"]
    assert verdict["seen_tasks_compared"] == 11
    # no MR-T1 training site labels the kidney: only the universal model can segment it there
    assert verdict["heldout_tasks_baseline_cannot_segment"] == ["mr-t1-hospital-f/kidney"]
    assert "heldout:mr-t1-hospital-f/kidney" in uni["dice"]
    table = (out / "accuracy.md").read_text()
    assert "| **left-out** mr-t1-hospital-f/kidney |" in table and "universal vs per-institution-split" in table
    assert report["paired"] == {}  # no test cases given: no paired verdict from validation cases
    assert {"command", "commit", "version", "cpu", "threads"} <= set(report["provenance"])
    assert report["provenance"]["command"] == report["command"]
    for part in ("seen", "heldout"):
        assert (out / f"accuracy-{part}.png").stat().st_size > 10000
    capsys.readouterr()
    study.main(["--table-from", str(out / "accuracy.json")])
    assert capsys.readouterr().out.strip() == table.strip()


def test_accuracy_study_pairs_models_on_separate_test_cases(tmp_path):
    """Synthetic path: test cases from another data seed, every case scored (Dice and NSD), and
    the paired bootstrap table per seen task."""
    study = load_study()
    out = tmp_path / "study"
    study.main(["--out", str(out), "--steps", "3", "--seeds", "0", "--cases", "3", "--shape", "32",
                "--test-cases", "3", "--base-width", "4", "--patch", "32",
                "--methods", "universal", "per-institution-split"])
    report = json.loads((out / "accuracy.json").read_text())
    train_ids = {p.name for p in (out / "data-0").rglob("*_0000.nii.gz")}
    test_files = list((out / "test-data").rglob("*_0000.nii.gz"))
    assert len(test_files) == 6 * 3
    # another data seed: the same names, other anatomy
    a = out / "data-0" / "ct-hospital-a" / "imagesTr" / "ct-hospital-a_000_0000.nii.gz"
    b = out / "test-data" / "ct-hospital-a" / "imagesTr" / "ct-hospital-a_000_0000.nii.gz"
    assert a.name in train_ids and a.read_bytes() != b.read_bytes()
    cases = report["runs"]["universal/seed0"]["test_cases"]
    assert len({c["case"] for c in cases if c["dataset"] == "ct-hospital-a"}) == 3
    assert all(0 <= c["dice"] <= 1 and 0 <= c["nsd"] <= 1 for c in cases)
    table = report["paired"]["universal vs per-institution-split"]
    assert len(table) == 11 and all(v["cases"] == 3 and v["low"] <= v["difference"] <= v["high"]
                                    for v in table.values())
    nsd = report["paired_nsd"]["universal vs per-institution-split"]
    assert set(nsd) == set(table) and all(v["low"] <= v["difference"] <= v["high"] for v in nsd.values())
    text = (out / "accuracy.md").read_text()
    # one seed: no seed-to-seed variance to put in the interval, and the table says so
    assert "case bootstrap 95 % interval" in text and "seed-to-seed variance NOT in the interval" in text
    assert "NSD 95 % interval" in text and all(v["interval"] == "cases only" for v in table.values())
    # the pooled row: one bootstrap over all 11 tasks x 3 cases, its mean the mean of the case differences
    pool = study.pooled_paired(report["runs"], "universal", "per-institution-split", [0], [0])
    assert pool["cases"] == 33 and pool["low"] <= pool["difference"] <= pool["high"]
    a = study.per_case(report["runs"], "per-institution-split", [0])
    b = study.per_case(report["runs"], "universal", [0])
    assert abs(pool["difference"] - sum(b[k] - a[k] for k in a) / 33) < 1e-9
    assert f"| **pooled** (33 case-tasks) | {pool['difference']:+.3f} |" in text

    # --merge-from: a later arm joins the finished study; refused (before training) for other settings
    settings = ["--seeds", "0", "--cases", "3", "--shape", "32", "--test-cases", "3", "--base-width", "4",
                "--patch", "32", "--methods", "universal-total-budget", "--merge-from", str(out / "accuracy.json")]
    with pytest.raises(SystemExit, match="steps 3 vs 4"):
        study.main(["--out", str(tmp_path / "other"), "--steps", "4"] + settings)
    assert not (tmp_path / "other").exists()
    with pytest.raises(SystemExit, match="ema_warmup True vs False"):  # another EMA: not the same recipe
        study.main(["--out", str(tmp_path / "other"), "--steps", "3", "--no-ema-warmup"] + settings)
    assert not (tmp_path / "other").exists()
    study.main(["--out", str(tmp_path / "later"), "--steps", "3"] + settings)
    merged = json.loads((tmp_path / "later" / "accuracy.json").read_text())
    assert list(merged["summary"]) == ["universal", "per-institution-split", "universal-total-budget"]
    for key in ("universal/seed0", "per-institution-split/seed0"):
        assert merged["runs"][key] == report["runs"][key]  # taken as they were, not retrained
    assert not (tmp_path / "later" / "runs" / "universal").exists()
    long_run = tmp_path / "later" / "runs" / "universal-total-budget" / "seed0" / "validation.json"
    assert json.loads(long_run.read_text())["step"] == 15  # 3 steps x 5 seen institutions
    assert {c["case"] for c in merged["runs"]["universal-total-budget/seed0"]["test_cases"]} == \
        {c["case"] for c in cases}
    assert "(merged: --merge-from)" in merged["command"]
    # the learning curves of a finished report, redrawn beside it
    (tmp_path / "later" / "accuracy-curves.png").unlink()
    study.main(["--table-from", str(tmp_path / "later" / "accuracy.json"), "--curves"])
    assert (tmp_path / "later" / "accuracy-curves.png").read_bytes()[:4] == b"\x89PNG"
    # merging only (no --methods): the same report again; a method in two reports is refused
    both = ["--out", str(tmp_path / "both"), "--steps", "3"] + settings[:-4] + ["--methods", "--merge-from"]
    with pytest.raises(SystemExit, match="universal is in both"):
        study.main(both + [str(out / "accuracy.json"), str(tmp_path / "later" / "accuracy.json")])
    study.main(both + [str(tmp_path / "later" / "accuracy.json")])
    again = json.loads((tmp_path / "both" / "accuracy.json").read_text())
    assert again["runs"] == merged["runs"] and again["paired"] == merged["paired"]
    assert not (tmp_path / "both" / "runs").exists() and not (tmp_path / "both" / "test-data").exists()


def test_cases_sweep_varies_training_cases_and_data_seed_on_fixed_test_cases(tmp_path):
    """cases_sweep.py: N training cases per seen site after the validation split, each seed on its
    own training collection (--vary-data-seed), scored on test cases from another data seed (the
    same for every N: data seed + 1000); a capacity-fair arm has fewer parameters than five
    per-institution models; learning curves recorded."""
    spec = importlib.util.spec_from_file_location("cases_sweep", STUDY.parent / "cases_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    from UniversalSeg.data.catalog import load_catalog
    assert [sweep.cases_for(n) for n in (2, 4, 8, 16)] == [3, 5, 10, 20]
    out = tmp_path / "sweep"
    sweep.main(["--out", str(out), "--train-cases", "2", "--seeds", "0", "1", "--steps", "2", "--shape", "32",
                "--test-cases", "1", "--base-width", "4", "--patch", "32", "--curve-points", "1", "--equal-compute"])
    for seed in (0, 1):
        catalog = load_catalog(out / "train-2" / f"data-{seed}" / "catalog.yaml")
        assert {len(d.splits["train"]) for d in catalog.datasets} == {2}
    image = "{}/ct-hospital-a/imagesTr/ct-hospital-a_000_0000.nii.gz"
    first, second = (out / "train-2" / image.format(name) for name in ("data-0", "data-1"))
    assert first.read_bytes() != second.read_bytes()
    report = json.loads((out / "sweep.json").read_text())
    assert [r["train_cases"] for r in report["rows"]] == [2]
    d = report["rows"][0]["dice"]
    assert d["paired"]["cases"] == 11  # 11 seen (site, task) x 1 test case, in each of the 2 seeds
    assert d["paired"]["interval"] == "hierarchical" and d["paired"]["seeds"] == 2
    assert len(d["paired"]["per_seed_difference"]) == 2 and 0 <= d["paired"]["seeds_b_ahead"] <= 2
    assert d["paired"]["low"] <= d["paired"]["difference"] <= d["paired"]["high"]
    assert "hierarchical bootstrap" in (out / "sweep.md").read_text()
    assert report["provenance"]["command"] == report["command"] and report["provenance"]["version"]
    assert abs(d["paired"]["difference"] - (d["universal"] - d["per_institution"])) < 1e-9
    assert set(report["rows"][0]["heldout"]["universal"]) == {"mr-t1-hospital-f/liver", "mr-t1-hospital-f/spleen",
                                                              "mr-t1-hospital-f/kidney"}
    assert (out / "sweep.png").stat().st_size > 10000 and "| 2 |" in (out / "sweep.md").read_text()
    # --equal-compute: the universal model trained as long as the five per-institution models together
    budget = out / "train-2" / "runs" / "universal-total-budget" / "seed0" / "validation.json"
    assert json.loads(budget.read_text())["step"] == 10  # 2 steps x 5 seen institutions
    e = report["rows"][0]["equal_compute"]
    assert e["tasks"] == 11 and 0 <= e["tasks_non_inferior"] <= 11
    assert abs(e["dice"]["paired"]["difference"] - (e["dice"]["universal"] - e["dice"]["per_institution"])) < 1e-9
    assert e["dice"]["per_institution"] == d["per_institution"]  # the same five models, the same cases
    assert "At equal compute" in (out / "sweep.md").read_text()
    acc = json.loads((out / "train-2" / "accuracy.json").read_text())
    assert acc["vary_data_seed"] and all(acc["runs"][f"universal/seed{s}"]["curves"] for s in (0, 1))
    # the capacity-fair arm's rule: width 16 stays under five width-8 per-institution models
    study = load_study()
    from UniversalSeg.networks import UniversalSegNet
    def params(width):
        cfg = study.network(width, "universal")
        cfg = cfg.from_dict({**cfg.to_dict(), "tasks": ["liver", "spleen", "kidney", "liver-tumor"],
                             "modalities": ["CT", "MR-T1", "MR-T2", "PET"]})
        return sum(p.numel() for p in UniversalSegNet(cfg).parameters())
    assert 3 * params(8) < params(16) < 5 * params(8)


def test_learning_curves_put_methods_on_one_model_steps_and_on_their_compute():
    """A method of five models reaches step 3 after 15 steps of compute; one model after 3."""
    study = load_study()
    results = {"universal/seed0": {"curves": {"universal": [{"step": 3, "mean_dice": 0.5},
                                                            {"step": 6, "mean_dice": 0.7}]}},
               "per-institution/seed0": {"curves": {f"site{i}": [{"step": 3, "mean_dice": 0.1 * i}]
                                                    for i in range(5)}}}
    per_model, total = study.curve_points(results, "universal", [0])
    assert per_model == total == {3: [0.5], 6: [0.7]}
    per_model, total = study.curve_points(results, "per-institution", [0])
    assert list(per_model) == [3] and list(total) == [15]
    assert total[15] == per_model[3] == [0.0, 0.1, 0.2, 0.1 * 3, 0.4]
