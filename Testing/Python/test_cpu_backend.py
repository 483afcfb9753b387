"""The optional OpenVINO CPU backend (``inference/cpu_backend.py``, ``predict --backend``).

- probabilities equal to torch's fp32 ones within ``TOLERANCE`` (5e-3): a tiny network (conftest's
  tiny_config) on single windows and batches, the whole predictor on a small image, and the
  shipped brain model on one 48^3 window; bf16 refused, ``auto`` only where torch runs fp32;
- the export cache: a hit loads without exporting, another context is a miss, an entry with a
  damaged file, without its checksum file or with another key is rebuilt and never loaded, the
  entries used longest ago go beyond ``MAX_ENTRIES``;
- without OpenVINO (its import made to fail), ``--backend openvino`` ends with one line saying how
  to install it (exit 2) and ``auto`` falls back to torch.

The tests that run OpenVINO are skipped, saying so, where it is not installed.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import tiny_config
from UniversalSeg.data.modalities import KNOWN_MODALITIES
from UniversalSeg.data.terminology import task_info
from UniversalSeg.inference import PredictOptions, Predictor, cpu_backend
from UniversalSeg.inference.cpu_backend import (
    TOLERANCE,
    BackendUnavailableError,
    OpenVinoBackend,
    make_backend,
    runtime_available,
    use_backend,
)
from UniversalSeg.model_package import load_package, save_package
from UniversalSeg.networks import UniversalSegNet

ROOT = Path(__file__).resolve().parents[2]
BRAIN = ROOT / "Resources" / "Models" / "brain-synth-1.0.1.zip"
PATCH = (32, 32, 32)
needs_openvino = pytest.mark.skipif(not runtime_available(),
                                    reason=f"OpenVINO is not installed ({cpu_backend.INSTALL_HINT})")


def window_probabilities(net, window, task_ids, modality_id):
    ctx = net.context([net.config.tasks[i] for i in task_ids], net.config.modalities[modality_id],
                      batch=window.shape[0])
    with torch.inference_mode():
        return torch.sigmoid(net(window, ctx)["logits"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny package, and its export for every task on CT (the context ``predict`` asks for),
    in a cache folder the tests copy."""
    folder = tmp_path_factory.mktemp("cpu_backend")
    torch.manual_seed(0)
    cfg = tiny_config()
    path = save_package(folder / "pkg", UniversalSegNet(cfg).eval(), [task_info(t) for t in cfg.tasks],
                        dict(KNOWN_MODALITIES), (4.0, 4.0, 4.0), PATCH)
    package = load_package(path)
    context = (list(range(len(cfg.tasks))), 0, -1)
    cache = folder / "cache"
    if runtime_available():
        backend = OpenVinoBackend(package.config, package.state_dict, PATCH, cache / "openvino")
        with torch.inference_mode():  # as the predictor's sliding window calls it
            backend.window_function(*context)
        assert backend.events == ["export"]
    return {"package": package, "path": path, "cache": cache, "context": context}


def fresh_cache(tiny, tmp_path) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(tiny["cache"], root)
    return root / "openvino"


@needs_openvino
def test_tiny_network_probabilities_equal_torch(tiny):
    package = tiny["package"]
    net = package.build("cpu")
    run = OpenVinoBackend(package.config, package.state_dict, PATCH, tiny["cache"] / "openvino").window_function(
        *tiny["context"])
    torch.manual_seed(3)
    for windows in (torch.randn(1, 1, *PATCH), torch.randn(3, 1, *PATCH)):  # one, then a batch of windows
        expected = window_probabilities(net, windows, *tiny["context"][:2])
        got = torch.sigmoid(run(windows))
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= TOLERANCE


@needs_openvino
def test_cache_hit_miss_and_damaged_entries_rebuilt(tiny, tmp_path, monkeypatch):
    package, context = tiny["package"], tiny["context"]
    root = fresh_cache(tiny, tmp_path)
    [entry] = [p for p in root.iterdir() if not p.name.startswith(".")]
    pristine = tmp_path / "pristine"
    shutil.copytree(entry, pristine)
    exports = []

    def export(config, state, task_ids, modality_id, domain_id, patch):  # stands in for the 30 s export
        exports.append((list(task_ids), modality_id))
        return cpu_backend.load_openvino().Core().read_model(str(pristine / "model.xml"))
    monkeypatch.setattr(cpu_backend, "export_openvino", export)
    backend = lambda: OpenVinoBackend(package.config, package.state_dict, PATCH, root)

    hit = backend()
    hit.window_function(*context)
    assert hit.events == ["hit"] and exports == []

    miss = backend()
    miss.window_function([1, 0], 2, -1)  # another task list and modality: another entry
    assert miss.events == ["export"] and exports == [([1, 0], 2)]
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 2

    net = package.build("cpu")
    torch.manual_seed(4)
    window = torch.randn(2, 1, *PATCH)
    expected = window_probabilities(net, window, *context[:2])
    damages = {
        "a damaged weight file": lambda: (entry / "model.bin").write_bytes(
            (entry / "model.bin").read_bytes()[:-8] + b"\x7f" * 8),
        "a partial entry (no checksum file)": lambda: (entry / "entry.json").unlink(),
        "a truncated graph": lambda: (entry / "model.xml").write_text("<?xml"),
        "another key in its checksum file": lambda: (entry / "entry.json").write_text(
            (entry / "entry.json").read_text().replace('"modality_id": 0', '"modality_id": 1')),
    }
    for what, damage in damages.items():
        damage()
        exports.clear()
        rebuilt = backend()
        run = rebuilt.window_function(*context)
        assert rebuilt.events == ["export"] and len(exports) == 1, what
        assert float((torch.sigmoid(run(window)) - expected).abs().max()) <= TOLERANCE, what
        assert cpu_backend.ExportCache._problem(entry, rebuilt.cache_key(*context)) is None, what
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # no temporary left behind

    monkeypatch.setattr(cpu_backend, "MAX_ENTRIES", 2)  # the entry used longest ago goes
    backend().window_function(*context)  # used now
    backend().window_function([2], 1, -1)
    kept = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert kept == sorted([entry.name, rebuilt.cache.path(rebuilt.cache_key([2], 1, -1)).name])


@needs_openvino
def test_predictor_with_openvino_equals_torch(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(fresh_cache(tiny, tmp_path).parent))
    rng = np.random.default_rng(0)
    array = rng.normal(0, 1, (36, 44, 40)).astype(np.float32)
    array[10:26, 12:30, 8:30] += 3.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.5, 4.0))
    options = PredictOptions(keep_probabilities=True, crop_foreground=False)
    torch_result = Predictor(tiny["package"], device="cpu", precision="fp32").predict(image, "CT", options=options)
    fast = Predictor(tiny["package"], device="cpu")  # auto precision: bf16 on a CPU with AMX
    assert use_backend(fast, "openvino") is fast.backend is not None
    result = fast.predict(image, "CT", options=options)
    assert fast.backend.events == ["hit"]  # the module's export, found by its key
    assert result.precision == "fp32"
    for task in result.tasks:
        p = sitk.GetArrayFromImage(result.probabilities[task])
        q = sitk.GetArrayFromImage(torch_result.probabilities[task])
        assert np.abs(p - q).max() <= TOLERANCE
        differ = sitk.GetArrayFromImage(result.masks[task]) != sitk.GetArrayFromImage(torch_result.masks[task])
        assert np.all(np.abs(q[differ] - 0.5) <= TOLERANCE)  # masks differ only right at the threshold


@needs_openvino
def test_predict_command_with_the_backend(tiny, tmp_path, monkeypatch, capsys):
    from UniversalSeg.cli import main
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(fresh_cache(tiny, tmp_path).parent))
    image, out = tmp_path / "ct.nii.gz", tmp_path / "ct.seg.nrrd"
    array = np.zeros((20, 24, 28), np.float32)
    array[5:15, 6:18, 7:21] = 100.0
    sitk.WriteImage(sitk.GetImageFromArray(array), str(image))
    code = main(["predict", "--model", str(tiny["path"]), "--input", str(image), "--modality", "CT",
                 "--output", str(out), "--backend", "openvino", "--progress", "none"])
    assert code == 0 and out.exists()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"] == "openvino" and summary["precision"] == "fp32"


@needs_openvino
def test_shipped_brain_model_one_window(tmp_path):
    package = load_package(BRAIN)
    patch = tuple(package.patch_size)
    torch.manual_seed(5)  # a smooth head-like window: a bright ball in noise, normalized
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in patch], indexing="ij"))
    window = ((grid.pow(2).sum(0) < 0.5).float() * 2 + 0.3 * torch.randn(patch))[None, None]
    task_ids, modality_id = list(range(len(package.config.tasks))), package.config.modalities.index("MR-T1")
    expected = window_probabilities(package.build("cpu"), window, task_ids, modality_id)
    run = OpenVinoBackend(package.config, package.state_dict, patch, tmp_path).window_function(task_ids,
                                                                                                modality_id, -1)
    assert float((torch.sigmoid(run(window)) - expected).abs().max()) <= TOLERANCE


@needs_openvino
def test_backend_choice(tiny, monkeypatch):
    package, cpu = tiny["package"], torch.device("cpu")
    with pytest.raises(BackendUnavailableError, match="--device cpu"):
        make_backend("openvino", package, torch.device("cuda"))
    with pytest.raises(BackendUnavailableError, match="fp32"):
        make_backend("openvino", package, cpu, "bf16")
    assert make_backend("openvino", package, cpu, "auto") is not None  # fp32 even where auto means bf16
    assert make_backend("torch", package, cpu) is None
    assert make_backend("auto", package, torch.device("cuda")) is None  # auto: torch there ...
    assert make_backend("auto", package, cpu, "bf16") is None
    assert make_backend("auto", package, cpu, "fp32") is not None
    from UniversalSeg.networks import precision  # ... and where torch's automatic precision is bf16
    monkeypatch.setattr(precision, "cpu_supports_fast_bf16", lambda: True)
    assert make_backend("auto", package, cpu, "auto") is None
    monkeypatch.setattr(precision, "cpu_supports_fast_bf16", lambda: False)
    assert make_backend("auto", package, cpu, "auto") is not None


def test_without_openvino_one_clear_line(tiny, tmp_path, monkeypatch, capsys):
    from UniversalSeg.cli import main
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    assert not runtime_available()
    assert make_backend("auto", tiny["package"], torch.device("cpu")) is None
    image = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(8 ** 3, dtype=np.float32).reshape(8, 8, 8)), str(image))
    out = tmp_path / "out.seg.nrrd"
    code = main(["predict", "--model", str(BRAIN),
                 "--input", str(image), "--modality", "CT", "--output", str(out), "--backend", "openvino"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "OpenVINO" in err[0] and "pip install" in err[0], err
    assert not out.exists()
