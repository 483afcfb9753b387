"""Broken catalogs, configs, dataset.json and model.json: one line that says where, an exit code,
no traceback, nothing written."""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from UniversalSeg.structured_file import read_structured


class Bad(ValueError):
    pass


@pytest.mark.parametrize("name, text, message", [
    ("c.yaml", "datasets: [\n  - name: x\n  bad", "is not valid YAML: line 2, column 3: expected the node content"),
    ("c.json", '{"datasets": [1, 2,]}', "is not valid JSON: line 1, column 20"),
    ("c.json", "[" * 100000 + "]" * 100000, "is nested too deeply"),
    ("c.yaml", "!!python/object/apply:os.system ['touch PWNED']", "is not valid YAML"),
])
def test_parse_errors_are_one_line_with_the_place(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(Bad, match=None) as info:
        read_structured(path, "catalog", Bad)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def test_binary_files_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(Bad, match="is not a text file"):
        read_structured(path, "catalog", Bad)


def run_cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "UniversalSeg", *args], capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stderr


def test_msd_entry_without_label_and_broken_yaml_stop_training_cleanly(tmp_path):
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "liver"},
                                                   "training": [{"image": "./imagesTr/a.nii.gz"}]}))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"datasets:\n  - name: a\n    root: {root}\n    modality: CT\n    labels: {{liver: 1}}\n")
    code, err = run_cli("train", "--catalog", str(catalog), "--config", "small", "--out", str(tmp_path / "run"),
                        "--no-progress")
    assert code == 2 and 'training[0] needs "image" and "label"' in err and "Traceback" not in err, err
    catalog.write_text("datasets: [\n  - name: x\n  bad")
    code, err = run_cli("train", "--catalog", str(catalog), "--config", "small", "--out", str(tmp_path / "run"),
                        "--no-progress")
    assert code == 2 and "line 2, column 3" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_hostile_model_json_and_encrypted_members_exit_3(trained_run, tmp_path):
    deep = tmp_path / "deep"
    shutil.copytree(trained_run["package"], deep)
    (deep / "model.json").write_text("[" * 100000 + "]" * 100000)
    enc = tmp_path / "enc.zip"
    with zipfile.ZipFile(enc, "w") as z:
        for f in ("model.json", "model.safetensors"):
            z.write(Path(trained_run["package"]) / f, f)
    data = bytearray(enc.read_bytes())
    data[data.find(b"PK\x03\x04") + 6] |= 1  # "encrypted" flag in the local and central headers
    data[data.find(b"PK\x01\x02") + 8] |= 1
    enc.write_bytes(bytes(data))
    for model, message in ((deep, "nested too deeply"), (enc, "is encrypted")):
        code, err = run_cli("info", str(model))
        assert code == 3 and message in err and "Traceback" not in err, err
