"""Pure functions of the module: command lines, progress lines, task filter, modality guess,
settings values. No Slicer, no Qt, so they are tested directly."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .i18n import tr as _
from .paths import core_location, python_executable


@dataclass
class PredictRequest:
    model: str
    input_path: str
    modality: str
    output_path: str
    tasks: Sequence[str] = ()
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"
    overlap: float = 0.5
    fast: bool = False
    roi: Optional[Sequence[float]] = None  # RAS mm x0 x1 y0 y1 z0 z1
    largest_component: bool = False
    extra: Sequence[str] = field(default_factory=tuple)


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


def finetune_command(model: str, catalog: str, out: str, mode: str, python: Optional[str] = None,
                     resume: bool = False) -> list[str]:
    """Fine-tune ``model`` on the user's training set (``universalseg finetune``)."""
    cmd = [python or python_executable(), "-m", "UniversalSeg", "finetune", "--model", str(model),
           "--catalog", str(catalog), "--out", str(out), "--mode", mode, "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def download_command(model_id: str, python: Optional[str] = None) -> list[str]:
    """Download a catalog model into the cache, with JSON progress lines."""
    return [python or python_executable(), "-m", "UniversalSeg", "models", "download", model_id,
            "--progress", "json"]


def import_command(zip_path: str, python: Optional[str] = None) -> list[str]:
    """Validate a model zip (weights included) and copy it into the cache."""
    return [python or python_executable(), "-m", "UniversalSeg", "models", "import", str(zip_path)]


# Asks torch in a child process, so that Slicer's own process never imports it.
# 'mps': Apple's GPU backend, only where this torch has it and it works (torch.backends.mps.is_available()).
DEVICE_PROBE = ("import json, torch; cuda = torch.cuda.is_available(); mps = getattr(torch.backends, 'mps', None); "
                "print(json.dumps({'torch': torch.__version__, 'cuda': cuda, "
                "'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [], "
                "'mps': bool(mps is not None and mps.is_available())}))")


def device_probe_command(python: Optional[str] = None) -> list[str]:
    return [python or python_executable(), "-c", DEVICE_PROBE]


def probe_has_mps(probe_output: str) -> bool:
    """The device probe found Apple's MPS backend usable (False for anything else, an error included)."""
    try:
        return json.loads(probe_output.strip().splitlines()[-1]).get("mps") is True
    except (IndexError, ValueError, AttributeError):
        return False


def describe_devices(probe_output: str) -> str:
    """The device probe's JSON line -> a short text for the panel."""
    try:
        info = json.loads(probe_output.strip().splitlines()[-1])
        gpus = info["gpus"]
    except (IndexError, ValueError, KeyError, TypeError):
        last = (probe_output.strip().splitlines() or [_("no output")])[-1]
        return _("could not detect the devices: {reason}").format(reason=last)
    if gpus:
        return _("GPU: {gpus} (torch {version})").format(gpus=", ".join(gpus), version=info["torch"])
    if info.get("mps") is True:
        return _("Apple GPU (mps) and CPU (torch {version})").format(version=info["torch"])
    return _("no CUDA GPU found: CPU (torch {version})").format(version=info["torch"])


def child_environment(cpu_only: bool = False, env: Optional[dict] = None) -> dict:
    """Environment of a child process: the core package's folder on PYTHONPATH (it is not on
    PythonSlicer's path in an extension or a source checkout), UTF-8 unbuffered output, the
    parent's process id (the child exits with it, see ``UniversalSeg.parent_watch``) and, with
    ``cpu_only``, every GPU hidden. ``env`` is the base: Slicer's startup environment in the app."""
    env = dict(os.environ if env is None else env)
    core = core_location()
    if core is not None:
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(core)]
        env["PYTHONPATH"] = os.pathsep.join([str(core)] + paths)
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    env["UNIVERSALSEG_PARENT_PID"] = str(os.getpid())
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def settings_list(value) -> list[str]:
    """A list stored in QSettings, as PythonQt returns it: None, one str, or a tuple/list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v]


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
    hints = [("flair", "MR-FLAIR"), ("pd", "MR-PD"), ("t2", "MR-T2"), ("t1", "MR-T1"), ("pet", "PET"), ("suv", "PET"),
             ("cine", "cine-MR"), ("ct", "CT"), ("mr", "MR-T1")]
    for hint, modality in hints:
        if hint in name.split() or hint in name.replace(" ", ""):
            if modality in known:
                return modality
    return None
