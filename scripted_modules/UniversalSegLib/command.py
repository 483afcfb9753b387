"""Pure functions of the module: no Slicer, no Qt, so they are tested directly."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


@dataclass
class PredictRequest:
    model: str
    input_path: str
    modality: str
    output_path: str
    tasks: Sequence[str] = ()
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"
    overlap: float = 0.5
    fast: bool = False
    roi: Optional[Sequence[float]] = None  # RAS mm x0 x1 y0 y1 z0 z1
    largest_component: bool = False
    extra: Sequence[str] = field(default_factory=tuple)


def python_executable() -> str:
    """Slicer's PythonSlicer next to the running interpreter when there is one."""
    here = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = here / name
        if candidate.exists():
            return str(candidate)
    return sys.executable


def predict_command(req: PredictRequest, python: Optional[str] = None) -> list[str]:
    """The argument list (never a shell string) that runs ``universalseg predict``."""
    cmd = [python or python_executable(), "-m", "UniversalSeg", "predict",
           "--model", str(req.model), "--input", str(req.input_path), "--modality", req.modality,
           "--output", str(req.output_path), "--device", req.device, "--precision", req.precision,
           "--overlap", f"{req.overlap:g}", "--progress", "json"]
    if req.tasks:
        cmd += ["--tasks", ",".join(req.tasks)]
    if req.fast:
        cmd.append("--fast")
    if req.roi is not None:
        cmd += ["--roi"] + [f"{v:g}" for v in req.roi]
    if req.largest_component:
        cmd.append("--largest-component")
    return cmd + list(req.extra)


def train_command(catalog: str, config: str, out: str, python: Optional[str] = None,
                  resume: bool = False, extra: Sequence[str] = ()) -> list[str]:
    cmd = [python or python_executable(), "-m", "UniversalSeg", "train", "--catalog", str(catalog),
           "--config", str(config), "--out", str(out), "--no-progress"]
    if resume:
        cmd.append("--resume")
    return cmd + list(extra)


def core_location() -> Optional[Path]:
    """The folder that holds the core package ``UniversalSeg/``: next to this library when
    installed as an extension, the repository root in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent, here.parent.parent):
        if (candidate / "UniversalSeg" / "__init__.py").exists():
            return candidate
    return None


def child_environment(cpu_only: bool = False, env: Optional[dict] = None) -> dict:
    """Environment of the child process: the core package first on PYTHONPATH (ahead of the
    Slicer module file of the same name), and with ``cpu_only`` every GPU hidden."""
    env = dict(os.environ if env is None else env)
    core = core_location()
    if core is not None:
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(core)]
        env["PYTHONPATH"] = os.pathsep.join([str(core)] + paths)
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


@dataclass
class Progress:
    stage: str
    fraction: float
    message: str
    result: Optional[dict] = None


def parse_progress_line(line: str) -> Optional[Progress]:
    """One line of ``--progress json`` output -> Progress; anything else -> None (a log line)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "stage" not in data or "fraction" not in data:
        return None
    return Progress(str(data["stage"]), float(data["fraction"]), str(data.get("message", "")),
                    data.get("result"))


def filter_tasks(tasks: Sequence[dict], text: str) -> list[dict]:
    """Tasks whose name or display name contains every word of ``text`` (case-insensitive)."""
    words = text.lower().split()
    return [t for t in tasks
            if all(w in f"{t['name']} {t.get('display_name', '')}".lower() for w in words)]


def guess_modality(known: Sequence[str], dicom_modality: str = "", volume_name: str = "") -> Optional[str]:
    """Preselect a modality the model knows from the DICOM Modality tag or the volume's name."""
    known = list(known)
    by_dicom = {"CT": "CT", "PT": "PET", "MR": "MR-T1"}
    if dicom_modality and by_dicom.get(dicom_modality.upper()) in known:
        return by_dicom[dicom_modality.upper()]
    name = volume_name.lower().replace("_", " ").replace("-", " ")
    hints = [("flair", "MR-FLAIR"), ("t2", "MR-T2"), ("t1", "MR-T1"), ("pet", "PET"), ("suv", "PET"),
             ("cine", "cine-MR"), ("ct", "CT"), ("mr", "MR-T1")]
    for hint, modality in hints:
        if hint in name.split() or hint in name.replace(" ", ""):
            if modality in known:
                return modality
    return None
