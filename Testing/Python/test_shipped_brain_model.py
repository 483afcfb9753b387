"""The brain model that ships in Resources/Models: its checksum, offline use by id, a smoke check.

The evidence (Dice under acquisitions never used in training, speed, memory) is
Testing/Benchmarks/brain_model.py; this file checks what a user relies on at every start."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSeg.data.brain_template import TASK_VALUES, template_t1, template_tissues
from UniversalSeg.model_download import load_model_catalog, resolve_model_path, sha256_of
from UniversalSeg.model_metadata import PackageError
from UniversalSeg.training.evaluation import dice

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "Resources" / "Models.json"


def brain_entry():
    return next(e for e in load_model_catalog(CATALOG) if e.id == "brain-synth")


def test_the_shipped_file_matches_its_catalog_entry_and_fits_the_size_budget():
    entry = brain_entry()
    path = CATALOG.parent / entry.file
    assert entry.shipped and not entry.url and path.is_file()
    assert path.stat().st_size == entry.size <= 25 * 2 ** 20
    assert sha256_of(path) == entry.sha256
    cmake = (ROOT / "scripted_modules" / "CMakeLists.txt").read_text()
    assert f"Resources/{entry.file}" in cmake  # installed with the Slicer extension


def test_loaded_by_id_offline_from_its_place_never_copied(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("no network for a shipped model"))
    path = resolve_model_path("brain-synth", progress=False, catalog=CATALOG)
    assert path == CATALOG.parent / brain_entry().file
    assert not (tmp_path / "cache").exists()
    out = subprocess.run([sys.executable, "-m", "UniversalSeg", "info", "brain-synth", "--json"],
                         capture_output=True, text=True, env={**__import__("os").environ,
                                                              "UNIVERSALSEG_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert [t["name"] for t in info["tasks"]] == ["brain", "gray-matter", "white-matter", "csf", "head"]
    assert set(info["modalities"]) == {"MR-T1", "MR-T2", "MR-FLAIR", "MR-PD", "CT"}
    card = info["provenance"]["card"]
    assert "MNI152" in card["trained_on"] and card["limits"] and card["intended_use"]


def test_a_changed_shipped_file_is_refused(tmp_path):
    entry = brain_entry()
    (tmp_path / "Models").mkdir()
    copy = tmp_path / entry.file
    shutil.copy(CATALOG.parent / entry.file, copy)
    with open(copy, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\0" * 10)
    catalog = tmp_path / "Models.json"
    catalog.write_text(CATALOG.read_text())
    with pytest.raises(PackageError, match="does not match its checksum"):
        resolve_model_path("brain-synth", progress=False, catalog=catalog)


def test_predict_by_id_on_the_template_t1_finds_the_brain(tmp_path):
    """Smoke check (not the evidence): the real template T1, by id, on the command line."""
    t1 = tmp_path / "t1.nii.gz"
    sitk.WriteImage(template_t1(), str(t1))
    out = tmp_path / "brain.nii.gz"  # a label map on the input grid: 1 = brain
    run = subprocess.run([sys.executable, "-m", "UniversalSeg", "predict", "--model", "brain-synth",
                          "--input", str(t1), "--modality", "MR-T1", "--tasks", "brain",
                          "--output", str(out), "--progress", "none"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    truth = np.isin(sitk.GetArrayFromImage(template_tissues()), TASK_VALUES["brain"])
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) == 1
    overlap = dice(mask, truth)
    assert overlap >= 0.95, overlap
    bad = subprocess.run([sys.executable, "-m", "UniversalSeg", "predict", "--model", "brain-synth",
                          "--input", str(t1), "--modality", "PET", "--output", str(tmp_path / "x.seg.nrrd")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "modalit" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_the_panel_lists_the_shipped_model_first_with_its_card(tmp_path, monkeypatch, slicer_lib):
    """No download button, its structures and modalities, the card as the model list's tooltip."""
    from UniversalSegmentationLib.panel_state import PanelState
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNIVERSALSEG_MODEL_CATALOG", str(CATALOG))
    state = PanelState()
    state.select_model(state.load_models([]))
    assert state.choice.label == f"brain-synth {brain_entry().version} (shipped)" and state.choice.spec == "brain-synth"
    assert not state.choice.needs_download and state.error == ""
    assert [t["display_name"] for t in state.tasks] == ["Brain", "Gray matter", "White matter",
                                                       "Cerebrospinal fluid", "Head"]
    assert "MR-FLAIR" in state.modalities and "Trained on: ONE real anatomy" in state.card
    assert "Known limits:" in state.card
    assert state.action(has_volume=True, modality="MR-T1") == ("Apply", True)
