"""Bad input to ``universalseg predict`` (outputs, images, options): the exit code, one line that
names the problem, no traceback, and not a byte changed under the working folder (no input
overwritten, no output half-written). Each row prepares the working folder and returns the
arguments after ``predict --model MODEL --modality CT --progress none``."""
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input_checks import assert_refused, tree_state
from UniversalSeg import model_package
from UniversalSeg.cli import main


def image(path, spacing=(2.0, 2.0, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def _probabilities_over_input(tasks):
    def prepare(work, package):
        scan = image(work / "scans" / "liver.nii.gz")
        return ["--input", str(scan), "--output", str(work / "out.seg.nrrd"),
                "--probabilities", str(work / "scans"), *tasks]
    return prepare


def _probabilities_over_output(work, package):
    return ["--input", str(image(work / "ct.nrrd")), "--output", str(work / "p" / "liver.nii.gz"),
            "--probabilities", str(work / "p")]


def _output_is_a_link_to_the_input(link):
    def prepare(work, package):
        scan = image(work / "ct.nrrd")
        link(scan, work / "linked.nrrd")
        return ["--input", str(scan), "--output", str(work / "linked.nrrd")]
    return prepare


def _probability_map_is_a_folder(work, package):
    (work / "p" / "spleen.nii.gz").mkdir(parents=True)
    return ["--input", str(image(work / "ct.nrrd")), "--output", str(work / "o.seg.nrrd"),
            "--probabilities", str(work / "p")]


def _probabilities_in_a_file(work, package):
    (work / "notes.txt").write_text("not a folder")
    return ["--input", str(image(work / "ct.nrrd")), "--output", str(work / "o.seg.nrrd"),
            "--probabilities", str(work / "notes.txt" / "p")]


def _batch_onto_one_output(work, package):
    image(work / "batch" / "a.nrrd")
    image(work / "batch" / "a.nii.gz")
    return ["--input", str(work / "batch"), "--output", str(work / "out")]


def _nifti_spacing(axis, value):
    """A NIfTI whose stored pixdim[axis] is ``value`` (written byte-wise: nibabel and ITK both
    replace a 0 with 1 when they write or read)."""
    def prepare(work, package):
        import gzip
        import struct
        path = image(work / "ct.nii.gz")
        data = bytearray(gzip.decompress(path.read_bytes()))
        data[76 + 4 * axis:80 + 4 * axis] = struct.pack("<f", value)
        path.write_bytes(gzip.compress(bytes(data)))
        return ["--input", str(path), "--output", str(work / "o.seg.nrrd")]
    return prepare


def _model_id_and_local_folder(work, package):
    shutil.copytree(package, work / "brain-synth")  # a folder named like the shipped model's id
    return ["--model", "brain-synth", "--input", str(image(work / "ct.nrrd")), "--output", str(work / "o.seg.nrrd")]


def _output(name):
    return lambda work, package: ["--input", str(image(work / "ct.nrrd")), "--output", str(work / name)]


def _fifo_input(work, package):
    os.mkfifo(work / "ct.nrrd")  # reading it would wait for a writer that never comes
    return ["--input", str(work / "ct.nrrd"), "--output", str(work / "o.seg.nrrd")]


def _fifo_in_a_batch(work, package):
    image(work / "batch" / "a.nrrd")
    os.mkfifo(work / "batch" / "b.nrrd")
    return ["--input", str(work / "batch"), "--output", str(work / "out")]


def _fifo_points(work, package):
    os.mkfifo(work / "points.json")
    return ["--input", str(image(work / "ct.nrrd")), "--output", str(work / "o.seg.nrrd"),
            "--points", str(work / "points.json")]


def _small_negative_roi(work, package):
    """``--roi`` with numbers in exponent notation (-1e-05) is parsed as numbers, not as options:
    the run goes on to the output check, which this row makes fail."""
    return ["--input", str(image(work / "ct.nrrd")), "--roi", "-1e-05", "20", "-2.5E+1", "20", "-.5", "20",
            "--output", str(work / "x.nhdr")]


def _series(edit=None, second=False):
    """A small CT series (Testing/Python/dicom_series.py), its headers changed by ``edit(dataset, k)``,
    with a second series in the same folder if asked; a DICOM SEG output."""
    def prepare(work, package):
        import pydicom

        from dicom_series import write_ct_series
        hu = np.random.default_rng(0).normal(0, 100, (6, 24, 24))
        series = write_ct_series(work / "dicom", hu)
        if second:
            other = write_ct_series(work / "other", hu[:3])
            for f in other["files"]:
                ds = pydicom.dcmread(f)
                ds.SeriesDescription = "localizer"
                ds.save_as(work / "dicom" / ("b" + f.name))
            shutil.rmtree(work / "other")
        for k, f in enumerate(series["files"] if edit else ()):
            ds = pydicom.dcmread(f)
            edit(ds, k, work / "dicom")
            ds.save_as(f)
        return ["--input", str(work / "dicom"), "--output", str(work / "seg.dcm")]
    return prepare


def _drop(key):
    return lambda ds, k, folder: delattr(ds, key) if key in ds else None


def _duplicate_slice(ds, k, folder):
    """Slice 2 once more under another instance UID (a file copied twice into the export)."""
    if k == 2:
        import pydicom
        copy = ds.copy()
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        copy.InstanceNumber = 99
        copy.save_as(folder / "again.dcm")


def _long_code_meaning(work, package):
    import json
    model = work / "model"
    shutil.copytree(package, model)
    meta = json.loads((model / "model.json").read_text())
    meta["tasks"][0]["type"]["meaning"] = "Liver " * 14
    (model / "model.json").write_text(json.dumps(meta))
    return ["--model", str(model), *_series()(work, package)]


CASES = {  # name: (prepare(work, model package) -> arguments, exit code, message)
    "probabilities-over-input": (_probabilities_over_input([]),
                                 2, "liver.nii.gz is the input image, which would be overwritten"),
    "probabilities-over-input-tasks": (_probabilities_over_input(["--tasks", "liver"]),
                                       2, "liver.nii.gz is the input image, which would be overwritten"),
    "probabilities-over-output": (_probabilities_over_output,
                                  2, "and the liver probability map of --probabilities"),
    "output-symlink-to-input": (_output_is_a_link_to_the_input(lambda s, d: d.symlink_to(s)),
                                2, "is the input image, which would be overwritten"),
    "output-hardlink-to-input": (_output_is_a_link_to_the_input(lambda s, d: os.link(s, d)),
                                 2, "is the input image, which would be overwritten"),
    "probability-map-is-a-folder": (_probability_map_is_a_folder, 2, "spleen.nii.gz is a folder"),
    "probabilities-in-a-file": (_probabilities_in_a_file, 2, "notes.txt is a file, not a folder"),
    "batch-onto-one-output": (_batch_onto_one_output, 2, "would both be written to"),
    "pixdim-zero": (_nifti_spacing(2, 0.0), 2, "voxel spacing 0.0 along axis j (pixdim[2]), which ITK "
                    "would read as 1 mm; set the real spacing"),
    "pixdim-nan": (_nifti_spacing(3, float("nan")), 2, "voxel spacing nan along axis k (pixdim[3])"),
    "model-id-and-local-folder": (_model_id_and_local_folder, 2, "model 'brain-synth' is both a catalog model id "
                                  "and a folder in the working folder; write ./brain-synth for the local one"),
    "output-nhdr": (_output("x.nhdr"), 2, "x.nhdr: a detached header (.nhdr, .mhd) is written as two files"),
    "output-mhd": (_output("x.MHD"), 2, "x.MHD: a detached header (.nhdr, .mhd) is written as two files"),
    "input-fifo": (_fifo_input, 2, "ct.nrrd is a FIFO (named pipe), not an image file"),
    "input-fifo-in-a-batch": (_fifo_in_a_batch, 2, "b.nrrd is a FIFO (named pipe), not an image file"),
    "points-fifo": (_fifo_points, 2, "points.json is a FIFO (named pipe), not a file"),
    "roi-exponent-negative": (_small_negative_roi, 2, "x.nhdr: a detached header"),
    "dicom-two-series": (_series(second=True), 2, "folder holds 2 DICOM series: "),
    "dicom-two-series-labelmap": (lambda w, p: _series(second=True)(w, p)[:-1] + [str(w / "o.nii.gz")], 2,
                                  "slices); move the files of the one to segment into a folder of their own"),
    "dicom-seg-no-frame-of-reference": (_series(_drop("FrameOfReferenceUID")), 2,
                                        "have no FrameOfReferenceUID, which a DICOM SEG must copy from its source"),
    "dicom-seg-no-position": (_series(_drop("ImagePositionPatient")), 2, "have no ImagePositionPatient"),
    "dicom-seg-duplicate-position": (_series(_duplicate_slice), 2, "lie at the same position"),
    "dicom-seg-long-code-meaning": (_long_code_meaning, 2, "has a meaning of 84 characters or a scheme of 3; "
                                    "DICOM allows 64 and 16"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_predict_input_is_refused_before_the_model_loads(trained_run, tmp_path, capsys, monkeypatch, case):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    prepare, expected_code, message = CASES[case]
    args = prepare(work, trained_run["package"])
    before = tree_state(work)

    def no_loading(path):
        raise AssertionError(f"the weights of {path} were read before the input was refused")
    monkeypatch.setattr(model_package, "load_package", no_loading)
    code = main(["predict", "--model", str(trained_run["package"]), "--modality", "CT", "--progress", "none",
                 *args])
    assert_refused(code, capsys.readouterr().err, expected_code, message, before, tree_state(work))


def _interrupt(proc, started):
    """Wait until ``started()`` returns, send SIGINT, and return (stderr, seconds until the end)."""
    import signal
    import time
    try:
        started()
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        _, err = proc.communicate(timeout=30)
        return err, time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_stops_a_running_predict_within_seconds_and_leaves_nothing(trained_run, tmp_path):
    """SIGINT (Ctrl-C) in the middle of the sliding window: exit 130 within a few seconds, no
    output and no temporary file left; a long inference (256^3 at the model's spacing) is started
    and interrupted once its progress says the windows run."""
    import subprocess
    import sys
    import time
    work = tmp_path / "work"
    work.mkdir()
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 50, (256, 256, 256)).astype(np.float32))
    img.SetSpacing([5.625] * 3)
    sitk.WriteImage(img, str(work / "ct.nrrd"))
    del img
    before = tree_state(work)
    proc = subprocess.Popen([sys.executable, "-m", "UniversalSeg", "predict", "--model", str(trained_run["package"]),
                             "--input", str(work / "ct.nrrd"), "--modality", "CT", "--no-crop",
                             "--output", str(work / "out.seg.nrrd"), "--probabilities", str(work / "p"),
                             "--progress", "json", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    def started():
        deadline = time.time() + 240
        for line in proc.stdout:  # json progress lines
            if '"infer"' in line or time.time() > deadline:
                break
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before it could be interrupted"
    err, took = _interrupt(proc, started)
    assert proc.returncode == 130 and took < 5, (proc.returncode, took, err[-2000:])
    assert "Traceback" not in err and "interrupted" in err, err[-2000:]
    assert tree_state(work) == before


STUCK_IN_C = """
import signal, sys, time
from pathlib import Path
from UniversalSeg import cli
from UniversalSeg.commands import info
from UniversalSeg.inference.writers import atomic_write

def stuck(args):  # a long call into C while the output's temporary file is open
    def write(tmp):
        tmp.write_bytes(b"half")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # this thread never sees it
        print("writing", flush=True)
        time.sleep(120)
    atomic_write(Path(sys.argv[1]) / "out.seg.nrrd", write)

info.run = stuck
sys.exit(cli.main(["info", "x"]))
"""


def test_ctrl_c_ends_the_process_while_the_main_thread_is_inside_a_long_c_call(tmp_path):
    """KeyboardInterrupt waits for the main thread's next Python step; when that is minutes away
    (emulated: SIGINT blocked in the main thread), the process still ends within a few seconds
    with exit 130, and the temporary file it was writing is gone."""
    import subprocess
    import sys
    before = tree_state(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", STUCK_IN_C, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    def started():
        assert proc.stdout.readline().strip() == "writing"
        assert len(tree_state(tmp_path)) == len(before) + 1  # the temporary file
    err, took = _interrupt(proc, started)
    assert proc.returncode == 130 and took < 6, (proc.returncode, took, err[-2000:])
    assert err.strip().splitlines()[-1] == "universalseg info: interrupted" and "Traceback" not in err, err
    assert tree_state(tmp_path) == before
