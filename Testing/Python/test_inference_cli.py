"""`universalseg predict` / `info` end to end with a trained package, and every bad input."""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from UniversalSeg.cli import main
from UniversalSeg.model_package import PackageError, load_package
from UniversalSeg.training.evaluation import dice


@pytest.fixture(scope="module")
def package_zip(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("zip") / "synthetic.zip"
    shutil.make_archive(str(out.with_suffix("")), "zip", trained_run["package"])
    return out


def case(collection, institution="ct-hospital-b", i=0):
    root = collection.parent / institution
    return (root / "imagesTr" / f"{institution}_{i:03d}_0000.nii.gz",
            root / "labelsTr" / f"{institution}_{i:03d}.nii.gz")


def test_predict_writes_a_seg_nrrd_that_slicerio_reads_back(trained_run, synth_collection, tmp_path):
    image, label = case(synth_collection, "ct-hospital-a", 0)
    out = tmp_path / "pred.seg.nrrd"
    assert main(["predict", "--model", trained_run["package"], "--input", str(image), "--modality", "CT",
                 "--tasks", "liver,spleen,liver-tumor", "--output", str(out), "--progress", "none"]) == 0
    seg = slicerio.read_segmentation(str(out))
    names = [s["name"] for s in seg["segments"]]
    assert names == ["Liver", "Spleen", "Liver tumor"]
    liver = slicerio.segment_from_name(seg, "Liver")
    assert liver["color"] == pytest.approx([221 / 255, 130 / 255, 101 / 255], abs=1e-4)
    assert liver["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert slicerio.segment_from_name(seg, "Liver tumor")["terminology"]["category"][1] == "49755003"
    reference = sitk.ReadImage(str(image))
    lps = np.eye(4)
    lps[:3, :3] = np.array(reference.GetDirection()).reshape(3, 3) * reference.GetSpacing()
    lps[:3, 3] = reference.GetOrigin()
    np.testing.assert_allclose(seg["ijkToLPS"], lps, atol=1e-5)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label))).transpose(2, 1, 0) == 1
    mask = slicerio.segment_mask(seg, liver)
    assert mask.shape == reference.GetSize()
    assert dice(mask, truth) > 0.6


def test_overlapping_tasks_survive_in_layers_and_labelmap_policies(trained_run, synth_collection, tmp_path):
    image, _ = case(synth_collection, "ct-hospital-b", 1)
    seg_path, lab_path = tmp_path / "o.seg.nrrd", tmp_path / "o.nii.gz"
    args = ["predict", "--model", trained_run["package"], "--input", str(image), "--modality", "CT",
            "--tasks", "liver,liver-tumor", "--threshold", "liver=0.5,liver-tumor=0.0001", "--progress", "none"]
    assert main(args + ["--output", str(seg_path)]) == 0
    seg = slicerio.read_segmentation(str(seg_path))
    liver = slicerio.segment_mask(seg, slicerio.segment_from_name(seg, "Liver"))
    tumor = slicerio.segment_mask(seg, slicerio.segment_from_name(seg, "Liver tumor"))
    assert (liver & tumor).any(), "an almost-zero threshold makes the tumour overlap the liver"
    assert seg["voxels"].ndim == 4  # overlapping segments live in separate layers
    assert main(args + ["--output", str(lab_path)]) == 0
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path))).transpose(2, 1, 0)
    assert set(np.unique(lab)) <= {0, 1, 2}
    assert (lab[liver & tumor] == 2).all()  # 'order' policy: the later task wins


def test_json_progress_and_batch_folders(trained_run, synth_collection, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (0, 1):
        shutil.copy(case(synth_collection, "mr-t1-hospital-c", i)[0], folder)
    proc = subprocess.run([sys.executable, "-m", "UniversalSeg", "predict", "--model", trained_run["package"],
                           "--input", str(folder), "--modality", "MR-T1", "--output", str(tmp_path / "out"),
                           "--progress", "json", "--fast"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all({"stage", "fraction", "message"} <= set(r) for r in lines)
    fractions = [r["fraction"] for r in lines]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"read", "preprocess", "infer", "resample", "written"} <= {r["stage"] for r in lines}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "mr-t1-hospital-c_000_0000.seg.nrrd", "mr-t1-hospital-c_001_0000.seg.nrrd"]


def test_info_lists_tasks_and_modalities(trained_run, capsys):
    assert main(["info", trained_run["package"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in info["tasks"]] == ["liver", "spleen", "kidney", "liver-tumor"]
    assert info["modalities"] == ["CT", "MR-T1", "MR-T2", "PET"]


def test_info_reads_only_the_description_never_the_weights(trained_run, tmp_path):
    """A 600 MB weights member that compresses to under 1 MB: `info` must not unpack it."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(Path(trained_run["package"]) / "model.json", "model.json")
        with z.open("model.safetensors", "w", force_zip64=True) as member:
            block = bytes(1 << 24)
            for _ in range(36):
                member.write(block)
    assert bomb.stat().st_size < 2_000_000
    code = ("import re, sys; from UniversalSeg.cli import main; rc = main(['info', sys.argv[1]]); "  # VmHWM: peak RSS
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "liver-tumor" in out.stdout
    assert int(out.stdout.strip().splitlines()[-1]) < 600  # MB peak: the 600 MB member was never read


def write(tmp_path, name, array, spacing=(2.0, 2.0, 2.0), direction=None, vector=False):
    img = sitk.GetImageFromArray(array, isVector=vector)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
        if direction is not None:
            img.SetDirection(direction)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "UniversalSeg", *args], capture_output=True, text=True)
    return proc.returncode, proc.stderr


@pytest.fixture
def bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(24, 24, 24)).astype(np.float32)
    nan = noise.copy()
    nan[3, 3, 3] = np.nan
    whole = write(tmp_path, "whole.nii.gz", noise)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # ITK would read the rest as 0
    plain = write(tmp_path, "whole.nii", noise)
    cut_plain = tmp_path / "cut.nii"
    cut_plain.write_bytes(plain.read_bytes()[: plain.stat().st_size - 1000])
    return {
        "truncated-gz": cut, "truncated-nii": cut_plain,
        "complex": write(tmp_path, "complex.nrrd", (noise + 1j * noise).astype(np.complex64)),
        "huge-spacing": write(tmp_path, "huge.nrrd", noise, spacing=(1e6, 2.0, 2.0)),
        "2d": write(tmp_path, "flat.nrrd", noise[0]),
        "4d": write(tmp_path, "series.nrrd", np.stack([noise, noise])),
        "sheared": write(tmp_path, "sheared.nrrd", noise, direction=(1, 0.3, 0, 0, 1, 0, 0, 0, 1)),
        "nan": write(tmp_path, "nan.nrrd", nan),
        "nan-nifti": write(tmp_path, "nan.nii.gz", nan),  # ITK alone would read the NaN as 0
        "constant": write(tmp_path, "constant.nrrd", np.full((24, 24, 24), 7, np.float32)),
        "ok": write(tmp_path, "ok.nrrd", noise), "whole": whole,
    }


@pytest.mark.parametrize("which, message", [
    ("2d", "a 2D image"), ("4d", "a 4D image"), ("sheared", "not orthonormal"),
    ("nan", "NaN"), ("nan-nifti", "NaN"), ("constant", "constant image"),
    ("truncated-gz", "truncated or damaged: its compressed data ends early"),
    ("truncated-nii", "truncated or damaged: it holds"),
    ("complex", "complex voxels"), ("huge-spacing", "is not plausible"),
])
def test_bad_images_exit_2_with_a_clear_message_and_no_output(trained_run, bad_inputs, tmp_path, which, message):
    out = tmp_path / "result.seg.nrrd"
    code, err = run_cli("predict", "--model", trained_run["package"], "--input", str(bad_inputs[which]),
                        "--modality", "CT", "--output", str(out), "--progress", "none")
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".result*"))


@pytest.mark.parametrize("args, message", [
    (["--modality", "MRI"], "unknown modality 'MRI': this model knows the modalities"),
    (["--modality", "CT", "--tasks", "livr"], "unknown task 'livr'"),
    (["--modality", "CT", "--overlap", "1.5"], "overlap must be in [0, 1)"),
    (["--modality", "CT", "--overlap", "nan"], "--overlap needs finite numbers"),
    (["--modality", "CT", "--roi", "0", "nan", "0", "1", "0", "1"], "--roi needs finite numbers"),
    (["--modality", "CT", "--threshold", "abc"], "--threshold: 'abc' is not a number"),
    (["--modality", "CT", "--threshold", "nan"], "--threshold nan: must be a number between 0 and 1"),
    (["--modality", "CT", "--threshold", "inf"], "--threshold inf: must be a number between 0 and 1"),
    (["--modality", "CT", "--tasks", "liver", "--threshold", "spleen=0.5"], "--threshold names task 'spleen'"),
    (["--modality", "CT", "--tasks", ","], "--tasks ',' names no task"),
    (["--modality", "CT", "--device", "gpu0"], "device 'gpu0' is not a device"),
    pytest.param(["--modality", "CT", "--device", "cuda"], "no CUDA GPU is visible",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")),
])
def test_bad_names_and_options_exit_2(trained_run, bad_inputs, tmp_path, args, message):
    code, err = run_cli("predict", "--model", trained_run["package"], "--input", str(bad_inputs["ok"]),
                        "--output", str(tmp_path / "x.seg.nrrd"), "--progress", "none", *args)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_a_long_legal_output_name_is_written(trained_run, bad_inputs, tmp_path):
    out = tmp_path / ("a" * 246 + ".seg.nrrd")  # 255 characters: the longest name most file systems allow
    code, err = run_cli("predict", "--model", trained_run["package"], "--input", str(bad_inputs["ok"]),
                        "--modality", "CT", "--output", str(out), "--progress", "none")
    assert code == 0 and out.is_file(), err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_outputs_never_overwrite_inputs_or_each_other(trained_run, bad_inputs, tmp_path):
    """Checked before the model is even loaded: nothing is read, written or replaced."""
    image = bad_inputs["ok"]
    before = image.read_bytes()
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(image, batch / "a.nrrd")
    shutil.copy(image, batch / "a.nii.gz")  # both would become a.seg.nrrd
    for args, message in (([str(image), "--output", str(image)], "is the input image"),
                          ([str(batch), "--output", str(batch)], "is the input folder"),
                          ([str(batch), "--output", str(tmp_path / "out")], "would both be written to"),
                          ([str(image), "--output", str(tmp_path / "x.txt")], "end it with .seg.nrrd")):
        code, err = run_cli("predict", "--model", "no-such-model", "--input", *args, "--modality", "CT",
                            "--progress", "none")
        assert code == 2 and message in err and "Traceback" not in err, err
    assert image.read_bytes() == before and not (tmp_path / "out").exists()
    assert sorted(p.name for p in batch.iterdir()) == ["a.nii.gz", "a.nrrd"]


@pytest.mark.parametrize("field, value, message", [
    ("spacing", [1.0, float("inf"), 1.0], "spacing [1.0, inf, 1.0] must be three numbers between"),
    ("spacing", [1e6, 1.0, 1.0], "must be three numbers between"),
    ("patch", [100000, 64, 64], "patch size [100000, 64, 64] must be three numbers between"),
    ("task", "../../etc/passwd", "task name '../../etc/passwd' is not allowed"),
    ("display", "Liver\ndata file: /etc/passwd", "is not allowed: 1-128 printable characters, no line breaks"),
])
def test_hostile_model_descriptions_are_refused_before_anything_is_built(trained_run, bad_inputs, tmp_path,
                                                                           field, value, message):
    model = tmp_path / "hostile"
    shutil.copytree(trained_run["package"], model)
    meta = json.loads((model / "model.json").read_text())
    if field == "spacing":
        meta["preprocessing"]["spacing"] = value
    elif field == "patch":
        meta["inference"]["patch_size"] = value
    elif field == "task":
        meta["tasks"][0]["name"] = meta["network"]["tasks"][0] = value
    else:
        meta["tasks"][0]["display_name"] = value
    (model / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "o.seg.nrrd"
    code, err = run_cli("predict", "--model", str(model), "--input", str(bad_inputs["ok"]), "--modality", "CT",
                        "--output", str(out), "--progress", "none")
    assert code == 3 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_broken_models_exit_3(trained_run, package_zip, bad_inputs, tmp_path):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(package_zip.read_bytes()[:2000])
    newer = tmp_path / "newer"
    shutil.copytree(trained_run["package"], newer)
    meta = json.loads((newer / "model.json").read_text())
    meta["format_version"] = 99
    (newer / "model.json").write_text(json.dumps(meta))
    for model, message in ((corrupt, "neither a model package folder nor a valid zip"),
                           (newer, "newer than this UniversalSeg understands"),
                           (tmp_path / "missing.zip", "neither a package folder")):
        code, err = run_cli("predict", "--model", str(model), "--input", str(bad_inputs["ok"]),
                            "--modality", "CT", "--output", str(tmp_path / "y.seg.nrrd"), "--progress", "none")
        assert code == 3 and message in err, err
    assert not (tmp_path / "y.seg.nrrd").exists()


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_a_pickle_disguised_as_a_model_is_refused_without_running_it(trained_run, tmp_path, monkeypatch):
    import torch
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.write(trained_run["package"] + "/model.json", "model.json")
        pickled = tmp_path / "weights.pt"
        torch.save({"x": Exploit()}, pickled)
        z.write(pickled, "model.safetensors")
    with pytest.raises(PackageError, match="not a safetensors file"):
        load_package(evil)
    with pytest.raises(PackageError):
        load_package(pickled)
    assert not (tmp_path / "PWNED").exists()


def test_every_input_of_a_batch_is_checked_before_the_first_case(trained_run, bad_inputs, tmp_path, monkeypatch):
    """A bad file late in a batch ends the run before any inference: nothing is written."""
    from UniversalSeg.data import image_io
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("a.nrrd", "b.nrrd"):
        shutil.copy(bad_inputs["ok"], batch / name)
    shutil.copy(bad_inputs["truncated-gz"], batch / "z.nii.gz")  # sorted last
    out = tmp_path / "results"
    code, err = run_cli("predict", "--model", trained_run["package"], "--input", str(batch), "--modality", "CT",
                        "--output", str(out), "--progress", "none")
    assert code == 2 and "z.nii.gz: the file is truncated or damaged" in err and "Traceback" not in err, err
    assert not out.exists()
    # the header check reads a whole .nii.gz only when its gzip trailer disagrees with its header
    reads = []
    monkeypatch.setattr(image_io, "check_complete", lambda path, strict=False: reads.append(path))
    image_io.check_header(bad_inputs["whole"])
    assert reads == []
    image_io.check_header(bad_inputs["truncated-gz"])
    assert reads == [bad_inputs["truncated-gz"]]
