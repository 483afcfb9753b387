"""A full disk: every output either is complete or does not exist, with a one-line error and exit 2
(ITK's NIfTI writer only prints "wrote only N of M bytes" and returns)."""
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import tmpfs
from UniversalSeg.data.image_io import check_complete
from UniversalSeg.inference.writers import atomic_write


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs (root can mount one here and in CI), full to the last byte: leaving some KiB
    free made the predict test depend on how well the model's mask compresses (a tiny model whose
    mask was nearly all one value fitted into 16 KiB); without root,
    test_short_write_is_never_renamed_into_place covers the rule for short writes."""
    with tmpfs(tmp_path / "disk", "size=96k") as mount:
        with open(mount / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(bytes(1024))
            except OSError:
                pass
        yield mount


@pytest.mark.parametrize("output", ["o.nii", "o.nii.gz", "o.seg.nrrd", "o.nrrd"])
def test_predict_on_a_full_disk_fails_cleanly(trained_run, tmp_path, small_disk, output):
    image = tmp_path / "ct.nrrd"
    img = sitk.GetImageFromArray((np.random.default_rng(0).random((64, 64, 64)) * 300).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(img, str(image))
    args = ["--probabilities", str(small_disk / "prob")] if output == "o.nii.gz" else ["--threshold", "0.01"]
    proc = subprocess.run([sys.executable, "-m", "UniversalSeg", "predict", "--model", trained_run["package"],
                           "--input", str(image), "--modality", "CT", "--output", str(small_disk / output),
                           "--progress", "none", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()[-1]) > 0
    assert "free space or choose another output location" in proc.stderr
    left = [p for p in small_disk.rglob("*") if p.is_file() and p.name != "filler"]
    assert not [p for p in left if p.name.startswith(".")]  # no hidden temporary
    for p in left:  # what was written before the disk filled up (the labelmap before the
        check_complete(p)  # probability maps) is complete, never truncated
        assert sitk.ReadImage(str(p)).GetSize() == (64, 64, 64)
    if output != "o.nii.gz":
        assert left == []


def test_short_write_is_never_renamed_into_place(tmp_path):
    """The same rule without a small disk: a writer that leaves a short NIfTI (as ITK does)."""
    img = sitk.GetImageFromArray(np.ones((30, 30, 30), np.uint8))

    def short_writer(tmp):
        sitk.WriteImage(img, str(tmp))
        tmp.write_bytes(tmp.read_bytes()[:-500])

    for name in ("labels.nii", "labels.nii.gz"):
        with pytest.raises(OSError, match="written incompletely"):
            atomic_write(tmp_path / name, short_writer)
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path):
    stale = tmp_path / ".labels.nii.gz.k3j_x9q2.nii.gz"  # what mkstemp left when the run was killed
    stale.write_bytes(b"half")
    other = tmp_path / ".notes.txt"
    other.write_text("mine")
    img = sitk.GetImageFromArray(np.ones((8, 8, 8), np.uint8))
    atomic_write(tmp_path / "labels.nii.gz", lambda tmp: sitk.WriteImage(img, str(tmp)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt", "labels.nii.gz"]


def test_a_read_only_output_folder_is_refused_before_the_model_loads(tmp_path):
    """Root ignores file permissions, so the read-only folder is a read-only tmpfs mount."""
    image = tmp_path / "ct.nrrd"
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    sitk.WriteImage(img, str(image))
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        for output in (mount / "x.seg.nrrd", mount / "new" / "folder" / "x.nii.gz"):
            proc = subprocess.run([sys.executable, "-m", "UniversalSeg", "predict", "--model", "no-such-model",
                                   "--input", str(image), "--modality", "CT", "--output", str(output)],
                                  capture_output=True, text=True)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            assert f"cannot write in {mount} (read-only or no permission)" in proc.stderr
