"""The panel's background work with real child processes and a real MRML scene (slicer-core):
jobs that end cleanly whatever happens (scene closed mid-run, a child that exits 0 without a
result), the process runner's rules (no console window on Windows, undecodable bytes), children
that exit with Slicer, catalog downloads from the panel, device detection, and the panel state."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytestmark = pytest.mark.usefixtures("slicer_lib")


def small_volume(name="abdomen CT"):
    return slicer.util.addVolumeFromArray((np.random.default_rng(0).random((24, 24, 24)) * 300).astype(np.float32),
                                          name=name)


def segmentation_count(scene):
    return scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")


def test_scene_closed_during_a_run_ends_the_job_once_and_changes_nothing(app_scene, tiny_model):
    from UniversalSegmentationLib.logic import UniversalSegLogic
    volume = small_volume()
    job = UniversalSegLogic(python=sys.executable).start(volume, str(tiny_model), "CT", ["liver"], device="cpu")
    workdir, process = job.workdir, job.runner.proc
    app_scene.Clear(False)  # File > Close scene while the child is still loading torch
    assert job.poll() is True and not job.succeeded
    assert "removed" in job.message and "scene" in job.message
    assert process.poll() is not None  # the child was killed, not left running
    assert not workdir.exists()
    assert segmentation_count(app_scene) == 0
    assert job.poll() is True  # polling again is harmless: no second error, no exception


def test_child_that_exits_0_without_a_result_fails_cleanly(app_scene, tmp_path):
    from UniversalSegmentationLib.logic import UniversalSegLogic, wait
    fake_python = tmp_path / "python-that-does-nothing"
    fake_python.write_text("#!/bin/sh\nexit 0\n")
    fake_python.chmod(0o755)
    volume = small_volume()
    job = wait(UniversalSegLogic(python=str(fake_python)).start(volume, "m", "CT", ["liver"]), 30)
    assert not job.succeeded and "without a readable result" in job.message
    assert segmentation_count(app_scene) == 0 and not job.workdir.exists()


def test_runner_reads_undecodable_bytes_and_never_opens_console_windows(tmp_path):
    from UniversalSegmentationLib.process_runner import ProcessRunner, popen_options
    windows = popen_options("nt")
    assert windows["creationflags"] == 0x08000000 | 0x00000200  # CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP
    assert "start_new_session" not in windows
    assert popen_options("posix")["start_new_session"] is True
    assert windows["errors"] == "replace" and windows["encoding"] == "utf-8"
    runner = ProcessRunner()
    runner.start([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'bad \\xff\\xfe bytes\\nnext line\\n');"
                  "sys.stderr.buffer.write(b'\\xc3(\\n')"], cwd=str(tmp_path))
    runner.wait(20)
    assert runner.poll() == ["bad \ufffd\ufffd bytes", "next line"]
    assert runner.stderr_lines == ["\ufffd("]


def test_children_exit_with_the_program_that_started_them(tmp_path):
    """Slicer killed (or crashed): its child process ends by itself within a few seconds."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time, os\n"
        "env = dict(os.environ, UNIVERSALSEG_PARENT_PID=str(os.getpid()))\n"
        "child = subprocess.Popen([sys.executable, '-c', 'from UniversalSeg.parent_watch import exit_with_parent;"
        " import time; exit_with_parent(poll=0.1); time.sleep(120)'], env=env, start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n")])
    deadline = time.time() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child), "the child outlived its parent"


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_child_environment_marks_the_parent():
    from UniversalSegmentationLib.command import child_environment
    env = child_environment(cpu_only=True, env={"PYTHONPATH": "/x"})
    assert env["UNIVERSALSEG_PARENT_PID"] == str(os.getpid())
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PYTHONIOENCODING"] == "utf-8"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(Path(__file__).parents[2]), "/x"]


@pytest.mark.parametrize("value, expected", [(None, []), ("", []), ("/a", ["/a"]), (("/a", "/b"), ["/a", "/b"]),
                                             (["/a"], ["/a"])])
def test_settings_lists_as_pythonqt_returns_them(value, expected):
    from UniversalSegmentationLib.command import settings_list
    assert settings_list(value) == expected


def test_catalog_model_is_downloaded_from_the_panel_then_listed_as_installed(tmp_path, tiny_model, monkeypatch):
    """A catalog entry ("download") is usable: the download runs in a child with progress lines,
    is checked against its SHA-256, and the model then appears as installed with its structures."""
    import hashlib

    from UniversalSegmentationLib.logic import UniversalSegLogic, wait
    from UniversalSegmentationLib.panel_state import PanelState
    package = tmp_path / "tiny.zip"
    with zipfile.ZipFile(package, "w") as z:
        for f in ("model.json", "model.safetensors"):
            z.write(tiny_model / f, f)
    data = package.read_bytes()
    catalog = tmp_path / "Models.json"
    catalog.write_text(json.dumps({"format_version": 1, "models": [{
        "id": "tiny-ct", "version": "1.0", "url": package.as_uri(), "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data), "tasks": ["liver", "spleen", "liver-tumor"], "modalities": ["CT"]}]}))
    monkeypatch.setenv("UNIVERSALSEG_MODEL_CATALOG", str(catalog))
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    state = PanelState()
    state.select_model(state.load_models([]))
    assert state.choice.needs_download and [t["name"] for t in state.tasks] == ["liver", "spleen", "liver-tumor"]
    assert state.action(has_volume=False, modality="") == ("Download model", True)
    job = wait(UniversalSegLogic(python=sys.executable).start_download("tiny-ct"), 120)
    assert job.succeeded, job.message
    assert Path(job.path) == tmp_path / "cache" / "models" / "tiny-ct-1.0.zip"
    state.select_model(state.load_models([], select=job.path))
    assert state.choice.label == "tiny-ct-1.0 (installed)" and not state.choice.needs_download
    assert state.modalities == ["CT"] and state.selected_tasks() == ["liver", "spleen", "liver-tumor"]
    assert state.action(has_volume=True, modality="CT") == ("Apply", True)


def test_panel_state_rules(tiny_model, tmp_path, monkeypatch, app_scene):
    from UniversalSegmentationLib.panel_state import PanelState, remember
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("UNIVERSALSEG_MODEL_CATALOG", str(tmp_path / "none.json"))
    broken = tmp_path / "broken"
    broken.mkdir()
    state = PanelState()
    index = state.load_models([str(broken), str(tiny_model), str(tmp_path / "gone")], select=str(tiny_model))
    assert [c.spec for c in state.choices] == [str(broken), str(tiny_model)]  # missing folders are skipped
    state.select_model(0)
    assert "Cannot read the model" in state.error and state.action(True, "CT") == ("Apply", False)
    state.select_model(index)
    assert state.error == "" and state.modalities == ["CT"]
    state.check_visible("tumor", False)
    assert state.selected_tasks() == ["liver", "spleen"]
    state.toggle("liver", False)
    assert state.action(True, "CT") == ("Apply", True)
    state.check_visible("", False)
    assert state.action(True, "CT") == ("Apply", False)  # nothing checked
    volume = small_volume("Abdomen_CT_venous")
    assert state.modality_for(volume) == "CT" and state.modality_for(None) is None
    assert remember(["/a", "/b"], "/a") == ["/b", "/a"]


def test_job_slots_and_device_probe(tmp_path):
    from UniversalSegmentationLib.job_slots import JobSlots
    from UniversalSegmentationLib.logic import UniversalSegLogic, wait
    logic = UniversalSegLogic(python=sys.executable)
    slots = JobSlots()
    probe = logic.start_device_probe()
    slots.start("probe", probe)
    second = logic.start_device_probe()
    with pytest.raises(ValueError, match="already running"):
        slots.start("probe", second)
    assert second.finished  # the refused job was cancelled, not left running
    deadline = time.time() + 120
    events = []
    while not slots.idle and time.time() < deadline:
        events += slots.poll()
        time.sleep(0.1)
    assert events[-1][0] == "probe" and events[-1][2] is True
    import torch
    assert probe.message == f"no CUDA GPU found: CPU (torch {torch.__version__})"
    slots.start("train", wait(logic.start_device_probe(), 120))
    assert len(slots.cancel_all("closing")) == 1 and slots.idle


def test_training_from_the_panel_checks_its_inputs_and_reports_failure(tmp_path):
    from UniversalSegmentationLib.logic import UniversalSegLogic, wait
    logic = UniversalSegLogic(python=sys.executable)
    with pytest.raises(ValueError, match="catalog"):
        logic.start_training(str(tmp_path / "missing.yaml"), "small", str(tmp_path / "run"))
    with pytest.raises(ValueError, match="run folder"):
        (tmp_path / "c.yaml").write_text("datasets: []\n")
        logic.start_training(str(tmp_path / "c.yaml"), "small", "")
    job = wait(logic.start_training(str(tmp_path / "c.yaml"), "small", str(tmp_path / "run")), 120)
    assert not job.succeeded and job.message.startswith("universalseg train: error")


def test_cancel_after_the_process_ended_imports_nothing(app_scene, tiny_model):
    from UniversalSegmentationLib.logic import UniversalSegLogic
    volume = small_volume()
    job = UniversalSegLogic(python=sys.executable).start(volume, str(tiny_model), "CT", ["liver"], device="cpu")
    job.runner.wait(300)  # the child has written its result; the GUI has not polled yet
    job.cancel()
    assert job.poll() and not job.succeeded and job.message == "cancelled"
    assert segmentation_count(app_scene) == 0 and not job.workdir.exists()


def test_cancel_on_windows_has_no_console_window_and_logs_are_bounded(slicer_lib, tmp_path):
    import sys

    from UniversalSegmentationLib import logic, process_runner
    command, options = process_runner.kill_tree_options(1234, "nt")
    assert command[:4] == ["taskkill", "/F", "/T", "/PID"] and options["creationflags"] & 0x08000000
    assert process_runner.kill_tree_options(1234, "posix") == (None, {})
    runner = process_runner.ProcessRunner()  # hours of training log lines: the last ones are kept
    runner.start([sys.executable, "-c", "import sys\nfor i in range(5000): print(i); print(i, file=sys.stderr)"])
    job = logic.TrainingJob(runner, tmp_path)
    while not job.poll():
        pass
    assert runner.stderr_lines[-1] == "4999" and len(runner.stderr_lines) <= 2 * process_runner.MAX_STDERR_LINES
    assert job.log[-1] == "4999" and len(job.log) <= 2 * logic.MAX_LINES and len(job.output) == logic.MAX_LINES
