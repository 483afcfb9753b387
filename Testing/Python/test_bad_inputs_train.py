"""Bad input to ``universalseg train`` and its catalogs: exit 2, one line that names the problem,
no traceback, and nothing created or changed (the run folder is not even made)."""
import errno
import json
import os
import shutil
import signal
import subprocess

import pytest
import SimpleITK as sitk
import torch

from bad_input_checks import assert_refused, run_killable, tree_state
from conftest import TINY_TRAIN_NET, tmpfs
from UniversalSeg.cli import main
from UniversalSeg.training.checkpoint import load_checkpoint

CATALOG = ("datasets:\n- name: a\n  modality: CT\n  root: ct-hospital-a\n"
           "  labels: {liver: [1], spleen: [3], kidney: [4]}\n")


def _work(synth_collection, folder):
    shutil.copytree(synth_collection.parent / "ct-hospital-a", folder / "ct-hospital-a")
    (folder / "catalog.yaml").write_text(CATALOG)
    (folder / "net.json").write_text(json.dumps(TINY_TRAIN_NET))
    return folder


@pytest.fixture
def work(synth_collection, tmp_path):
    """One dataset of the synthetic collection with its own catalog, and a tiny network config."""
    return _work(synth_collection, tmp_path)


def _edit_label(path, edit):
    image = sitk.ReadImage(str(path))
    edited = edit(image)
    sitk.WriteImage(edited, str(path))


def _set_value(image):
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 9
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _shift(image):
    image.SetOrigin((50.0, 0.0, 0.0))
    return image


def _msd_without_label(work):
    dataset = json.loads((work / "ct-hospital-a/dataset.json").read_text())
    dataset["training"] = [{"image": "./imagesTr/ct-hospital-a_000_0000.nii.gz"}]
    (work / "ct-hospital-a/dataset.json").write_text(json.dumps(dataset))


def _catalog(text):
    return lambda work: (work / "catalog.yaml").write_text(text)


def _run_folder(work):
    """A run that exists (a checkpoint is all ``--resume`` looks for before it reads anything)."""
    (work / "run" / "checkpoints").mkdir(parents=True)
    (work / "run" / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")


LABEL = "ct-hospital-a/labelsTr/ct-hospital-a_001.nii.gz"
CASES = {  # name: (prepare(work) or None, extra arguments, message)
    "yaml-syntax": (_catalog("datasets: [a, b\n"), [], "is not valid YAML: line 2, column 1"),
    "weight-nan": (_catalog(CATALOG + "  weight: .nan\n"), [], "weight must be a positive number, got nan"),
    "weight-inf": (_catalog(CATALOG + "  weight: .inf\n"), [], "weight must be a positive number, got inf"),
    "no-datasets": (_catalog("datasets: []\n"), [], "'datasets' must be a non-empty list"),
    "unknown-modality": (_catalog(CATALOG.replace("CT", "XRAY")), [], "unknown modality 'XRAY'"),
    "unknown-key": (_catalog(CATALOG + "  wieght: 2\n"), [], "wieght"),
    "msd-without-label": (_msd_without_label, [], 'training[0] needs "image" and "label" file names'),
    "label-values": (lambda w: _edit_label(w / LABEL, _set_value), [],
                     "holds values [9] that the catalog's label map"),
    "label-off-grid": (lambda w: _edit_label(w / LABEL, _shift), [],
                       "is not on the grid of image"),
    "label-truncated": (lambda w: (w / LABEL).write_bytes((w / LABEL).read_bytes()[:300]), [],
                        "the file is truncated or damaged"),
    "label-missing": (lambda w: (w / LABEL).unlink(), [], "have no label in"),
    "lr-nan": (None, ["--lr", "nan"], "lr: a number in (0, 10], got nan"),
    "spacing-nan": (None, ["--spacing", "nan"], "spacing: three numbers between 0.01 and 100.0 mm, got [nan"),
    "spacing-huge": (None, ["--spacing", "1e6"], "spacing: three numbers between"),
    "remap-2": (None, ["--intensity-remap", "2"], "augmentation.remap_prob: a probability in [0, 1], got 2.0"),
    "remap-modality": (None, ["--intensity-remap", "0.3", "--remap-modalities", "MR-T1,XRAY"],
                       "augmentation.remap_modalities: unknown modality 'XRAY'; known: "),
    "patch-20": (None, ["--patch", "20"], "multiples of the network's stride 16"),
    "workers-negative": (None, ["--workers", "-1"], "num_workers: a whole number >= 0, got -1"),
    "max-steps-0": (None, ["--max-steps", "0"], "--max-steps 0: must be at least 1"),
    "batch-0": (None, ["--batch-size", "0"], "batch_size: a positive integer, got 0"),
    "missing-catalog": (lambda w: (w / "catalog.yaml").unlink(), [], "catalog.yaml does not exist"),
    "missing-config": (lambda w: (w / "net.json").unlink(), [], "net.json does not exist"),
    "broken-config": (lambda w: (w / "net.json").write_text("{\"tasks\": [}"), [], "is not valid JSON"),
    "train-config-key": (lambda w: (w / "t.yaml").write_text("lr: 0.1\nlearning_rate: 2\n"),
                         ["--train-config", "{work}/t.yaml"], "unknown training settings ['learning_rate']"),
    "train-config-loss": (lambda w: (w / "t.yaml").write_text("loss: focal\n"),
                          ["--train-config", "{work}/t.yaml"], "loss: one of adaptive-tversky, dice, got 'focal'"),
    "device": (None, ["--device", "gpu0"], "device 'gpu0' is not a device"),
    "config-without-tasks": (lambda w: (w / "net.json").write_text(json.dumps(
        {k: v for k, v in TINY_TRAIN_NET.items() if k != "tasks"})), [], "net.json: tasks: missing"),
    "patch-1600": (None, ["--patch", "1600"], "at most 16777216 voxels in all, got [1600, 1600, 1600]"),
    "patch-float": (lambda w: (w / "t.yaml").write_text("patch_size: 32.5\n"), ["--train-config", "{work}/t.yaml"],
                    "patch_size: three numbers between 16 and 512 voxels: whole numbers"),
    "patch-float-list": (lambda w: (w / "t.yaml").write_text("patch_size: [32, 32.0, 32]\n"),
                         ["--train-config", "{work}/t.yaml"], "got [32, 32.0, 32]"),
    "resume-mistyped": (_run_folder, ["--resume", "--out", "{work}/rnu"],
                        "--resume: {work}/rnu does not exist (did you mean {work}/run?); run folders there: "
                        "{work}/run; leave out --resume"),
    "resume-parent-folder": (_run_folder, ["--resume", "--out", "{work}"],
                             "--resume: {work} holds no run (no train.log, no checkpoints)"),
}


def _train(work, extra, out=None):
    extra = [a.replace("{work}", str(work)) for a in extra]
    return main(["train", "--catalog", str(work / "catalog.yaml"), "--config", str(work / "net.json"),
                 "--out", str(out or work / "run"), "--epochs", "1", "--iterations", "2", "--batch-size", "2",
                 "--patch", "32", "--spacing", "5.625", "--workers", "0", "--no-progress", *extra])


@pytest.mark.parametrize("case", CASES)
def test_bad_training_input_exits_2_and_creates_nothing(work, capsys, case):
    prepare, extra, message = CASES[case]
    if prepare:
        prepare(work)
    before = tree_state(work)
    code = _train(work, extra)
    assert_refused(code, capsys.readouterr().err, 2, message.replace("{work}", str(work)), before,
                   tree_state(work))


def test_an_empty_or_foreign_checkpoint_is_refused_and_kept(work, capsys):
    run = work / "run"
    (run / "checkpoints").mkdir(parents=True)
    for content, message in ((b"", "is not a readable UniversalSeg training checkpoint"),
                             (None, "is not a UniversalSeg training checkpoint (foreign file)")):
        if content is None:
            torch.save({"weights": torch.zeros(3)}, run / "checkpoints" / "last.pt")
        else:
            (run / "checkpoints" / "last.pt").write_bytes(content)
        before = tree_state(work)
        code = _train(work, ["--resume"])
        assert_refused(code, capsys.readouterr().err, 2, message, before, tree_state(work))


def test_a_file_as_run_folder_is_refused(work, capsys):
    (work / "run").write_text("my notes")
    before = tree_state(work)
    code = _train(work, [])
    assert_refused(code, capsys.readouterr().err, 2, "--out", before, tree_state(work))
    assert (work / "run").read_text() == "my notes"


def test_a_read_only_run_folder_and_a_full_disk_end_in_one_line(work, capsys):
    """Root ignores file permissions, so the read-only folder is a read-only mount; the full disk a
    300 KiB tmpfs that fills while the first checkpoint is written."""
    with tmpfs(work / "ro", "ro,size=64k") as read_only, tmpfs(work / "small", "size=300k") as small:
        code = _train(work, ["--checkpoint-every", "1"], out=read_only / "run")
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "Read-only file system" in err, err[-2000:]
        code = _train(work, ["--checkpoint-every", "1"], out=small / "run")
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err[-2000:]
        assert "No space left on device" in err and "free space" in err, err[-2000:]
        checkpoints = small / "run" / "checkpoints"
        assert not list(checkpoints.glob(".*")), "a temporary checkpoint was left behind"
        assert not (checkpoints / "last.pt").exists() or torch.load(checkpoints / "last.pt", weights_only=True)


@pytest.mark.parametrize("resume", [False, True])
def test_an_existing_read_only_run_folder_is_refused_before_training_starts(work, capsys, monkeypatch, resume):
    """A run folder that exists but cannot be written (a read-only mount: root ignores file
    permissions) is refused in one line before the data are read, not at the first checkpoint."""
    from UniversalSeg.training import trainer

    def no_training(*args, **kwargs):
        raise AssertionError("training started in a read-only run folder")
    monkeypatch.setattr(trainer.Trainer, "__init__", no_training)
    with tmpfs(work / "ro", "size=64k") as folder:
        if resume:  # a started run, then the disk became read-only
            (folder / "checkpoints").mkdir()
            (folder / "train.log").write_text("started\n")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        before = tree_state(work)
        code = _train(work, ["--resume"] if resume else [], out=folder)
        assert_refused(code, capsys.readouterr().err, 2, f"--out {folder} cannot be written (Read-only file system)",
                       before, tree_state(work))


def test_a_full_disk_while_a_checkpoint_is_written_keeps_the_previous_one(work, capsys, monkeypatch):
    """ENOSPC in the middle of the second checkpoint (injected into torch.save after some bytes):
    one line, exit 2, the first checkpoint intact and no temporary left; --resume goes on from it."""
    from UniversalSeg.training import checkpoint
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(obj.get("step") if isinstance(obj, dict) else None)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    last = work / "run" / "checkpoints" / "last.pt"
    code = _train(work, ["--checkpoint-every", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert "No space left on device" in lines[0] and "free space" in lines[0], lines
    assert checkpoint.load_checkpoint(last)["step"] == calls[0] == 1
    assert not [p.name for p in last.parent.iterdir() if p.name != "last.pt"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert _train(work, ["--checkpoint-every", "1", "--resume"]) == 0
    assert checkpoint.load_checkpoint(last)["step"] == 2


def _killable(work, out, point, *extra):
    """Three steps (one epoch), a checkpoint after each, the validation before the last one."""
    return run_killable(point, ["train", "--catalog", work / "catalog.yaml", "--config", work / "net.json",
                                "--out", out, "--epochs", "1", "--iterations", "3", "--batch-size", "2",
                                "--patch", "32", "--spacing", "5.625", "--workers", "0",
                                "--checkpoint-every", "1", "--no-progress", *extra])


@pytest.fixture(scope="module")
def uninterrupted(synth_collection, tmp_path_factory):
    """The run that the killed and resumed ones must equal, bit for bit."""
    work = _work(synth_collection, tmp_path_factory.mktemp("uninterrupted"))
    proc = _killable(work, work / "run", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def _tensors(state, prefix=""):
    """Every tensor of a checkpoint (weights, EMA, optimizer moments, random state) by its path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


@pytest.mark.parametrize("point", ["step:0", "checkpoint:1", "checkpoint:3"])
def test_a_run_killed_at_any_point_resumes_bit_exactly(uninterrupted, tmp_path, point):
    """SIGKILL as the first step begins (no checkpoint yet; the run folder holds only what was
    written before it, e.g. ``tensorboard/``), half-way through writing the first checkpoint, and
    half-way through writing the last one (after the validation before it): ``--resume`` goes on
    from the last complete checkpoint (from step 0 where there is none, saying so), removes the
    half-written temporary and ends with the weights, EMA, optimizer and random state, and the
    learning curve, of the run that was not killed."""
    run = tmp_path / "run"
    proc = _killable(uninterrupted, run, point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    if point.startswith("checkpoint"):
        assert list((run / "checkpoints").glob(".last.pt.*.tmp")), "no half-written temporary to resume past"
    proc = _killable(uninterrupted, run, "none", "--resume")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    said = "resumed from" if point == "checkpoint:3" else "holds no checkpoints/last.pt yet; starting a new run"
    assert said in (run / "train.log").read_text()
    full = load_checkpoint(uninterrupted / "run" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["step"] == full["step"] == 3
    a, b = _tensors(full), _tensors(resumed)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    history = (uninterrupted / "run" / "validation-history.jsonl").read_text()
    assert (run / "validation-history.jsonl").read_text() == history and history.count("\n") == 1


def test_a_truncated_damaged_or_unsafe_last_checkpoint_is_refused_and_kept(work, capsys):
    """``checkpoints/last.pt`` cut short, with one byte of a tensor changed (the zip structure
    intact: torch would load a wrong weight), or a pickle that would run code: one line that
    names the file and what to do, exit 2, nothing changed; nothing is unpickled beyond tensors."""
    last = work / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"format": "universalseg-checkpoint", "step": 1, "model": {"w": torch.arange(4096.0)}}, last)
    whole = last.read_bytes()
    data = whole.index(torch.arange(4096.0)[1000:1001].numpy().tobytes())
    flipped = bytearray(whole)
    flipped[data] ^= 0x40
    (last.parent / "best.pt").write_bytes(whole)
    for content, message in (
            (whole[:len(whole) // 2], "the file is cut short (it ends before its zip directory)"),
            (whole[:-1], "the file is cut short"),
            (whole[:2], "(corrupt, truncated or not a weights-only torch file)"),
            (bytes(flipped), "data/0 fails its CRC-32 check (the file was changed after it was written)"),
            (None, "Weights only load failed")):
        if content is None:
            torch.save({"format": "universalseg-checkpoint", "hook": shutil.rmtree}, last)
        else:
            last.write_bytes(content)
        before = tree_state(work)
        code = _train(work, ["--resume"])
        err = capsys.readouterr().err
        assert_refused(code, err, 2, message, before, tree_state(work))
        assert f"{last} is not a readable UniversalSeg training checkpoint" in err
        assert f"put back an intact copy, or copy {last.parent / 'best.pt'} over it to go on from the best " \
               "validation's step, or move it away to start the run again from step 0" in err
