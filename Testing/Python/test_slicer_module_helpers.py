"""Pure functions of the Slicer module: progress parsing, task filtering, modality guess."""
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.append(str(ROOT / "scripted_modules"))  # after the core package

from UniversalSegmentationLib.command import (  # noqa: E402
    child_environment,
    filter_tasks,
    guess_modality,
    parse_progress_line,
    train_command,
)

TASKS = [{"name": "liver", "display_name": "Liver"}, {"name": "liver-tumor", "display_name": "Liver tumor"},
         {"name": "spleen", "display_name": "Spleen"}]


def test_progress_lines_are_parsed_and_logs_pass_through():
    p = parse_progress_line('{"stage": "infer", "fraction": 0.42, "message": "window batch 3/7"}\n')
    assert (p.stage, p.fraction, p.message) == ("infer", 0.42, "window batch 3/7")
    done = parse_progress_line('{"stage": "written", "fraction": 1.0, "message": "x", '
                               '"result": {"seconds": {"total": 3}}}')
    assert done.result == {"seconds": {"total": 3}}
    for line in ("loading model", "{not json", '{"no": "stage"}', "", "[1, 2]"):
        assert parse_progress_line(line) is None


def test_task_filter_matches_names_and_display_names():
    assert [t["name"] for t in filter_tasks(TASKS, "liv")] == ["liver", "liver-tumor"]
    assert [t["name"] for t in filter_tasks(TASKS, "TUMOR liver")] == ["liver-tumor"]
    assert filter_tasks(TASKS, "") == TASKS
    assert filter_tasks(TASKS, "kidney") == []


def test_modality_guess_from_dicom_or_name_only_among_known():
    known = ["CT", "MR-T1", "MR-T2", "PET"]
    assert guess_modality(known, "PT") == "PET"
    assert guess_modality(known, "", "Brain T2 axial") == "MR-T2"
    assert guess_modality(known, "", "abdomen_CT_venous") == "CT"
    assert guess_modality(["MR-T1"], "CT", "ct scan") is None
    assert guess_modality(known, "", "3: Unnamed series") is None


def test_child_environment_and_train_command():
    env = child_environment(cpu_only=True, env={"PYTHONPATH": "/x"})
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert env["PYTHONPATH"].split(":")[0] == str(Path(__file__).parents[2])
    cmd = train_command("c.yaml", "small", "/runs/a", python="py", resume=True)
    assert cmd == ["py", "-m", "UniversalSeg", "train", "--catalog", "c.yaml", "--config", "small",
                   "--out", "/runs/a", "--no-progress", "--resume"]


def test_slicer_installs_every_core_dependency():
    """Resources/requirements.txt (what Slicer pip-installs) covers the core's dependencies, and
    the module knows each one's import name (torch comes from the PyTorch extension; matplotlib
    draws only the demo's pictures, tensorboard is optional in training, and highdicom (the CLI's
    DICOM SEG output) would replace the pydicom Slicer pins for its DICOM module)."""
    import re

    import tomllib

    from UniversalSegmentationLib.dependencies import IMPORT_NAMES, requirements_file
    name = lambda req: re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0]
    core = {name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    lines = [line for line in requirements_file().read_text().splitlines() if line.strip() and not line.startswith("#")]
    slicer = {name(r) for r in lines}
    assert core - slicer == {"torch", "matplotlib", "tensorboard", "highdicom"}
    assert slicer | {"torch"} == set(IMPORT_NAMES)
    assert all(re.search(r">=\d", line) for line in lines)  # lower bounds pinned
