"""The accuracy study's driver, at a toy budget, through the catalog path a user with real MSD
data would take: the right runs, the same budget rule, the verdict and every report file."""
import importlib.util
import json
from pathlib import Path

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
    train_ids = {p.name for p in (out / "data").rglob("*_0000.nii.gz")}
    test_files = list((out / "test-data").rglob("*_0000.nii.gz"))
    assert len(test_files) == 6 * 3
    # another data seed: the same names, other anatomy
    a = out / "data" / "ct-hospital-a" / "imagesTr" / "ct-hospital-a_000_0000.nii.gz"
    b = out / "test-data" / "ct-hospital-a" / "imagesTr" / "ct-hospital-a_000_0000.nii.gz"
    assert a.name in train_ids and a.read_bytes() != b.read_bytes()
    cases = report["runs"]["universal/seed0"]["test_cases"]
    assert len({c["case"] for c in cases if c["dataset"] == "ct-hospital-a"}) == 3
    assert all(0 <= c["dice"] <= 1 and 0 <= c["nsd"] <= 1 for c in cases)
    table = report["paired"]["universal vs per-institution-split"]
    assert len(table) == 11 and all(v["cases"] == 3 and v["low"] <= v["difference"] <= v["high"]
                                    for v in table.values())
    assert "paired bootstrap 95 % interval" in (out / "accuracy.md").read_text()
