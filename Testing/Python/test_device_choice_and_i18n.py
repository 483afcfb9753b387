"""The automatic CPU precision (bf16 only where the CPU has AMX or AVX512-bf16); Apple's ``mps``
device (core resolver, the panel's device probe and device list) with torch.backends.mps
monkeypatched (no Apple hardware here), and the Slicer module library's visible
strings going through Slicer's translation in the context Slicer gives a package's file."""
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from UniversalSeg.errors import InputError
from UniversalSeg.networks import precision
from UniversalSeg.networks.precision import memory_format, resolve_device, resolve_precision

sys.path.append(str(Path(__file__).parents[2] / "scripted_modules"))  # after the core package
from UniversalSegmentationLib import command, panel_state  # noqa: E402
from UniversalSegmentationLib.command import DEVICE_PROBE, describe_devices, probe_has_mps  # noqa: E402
from UniversalSegmentationLib.panel_state import DEVICES, offer_devices  # noqa: E402


def fake_mps(monkeypatch, available):
    monkeypatch.setattr(torch.backends, "mps", types.SimpleNamespace(is_available=lambda: available))


@pytest.mark.parametrize("amx, avx512_bf16, expected", [
    (False, False, "fp32"),  # AVX2 only: bf16 would be emulated, about 11x slower than fp32
    (True, False, "bf16"),
    (False, True, "bf16"),
])
def test_auto_precision_picks_bf16_only_with_cpu_support(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice is kept


def test_mps_is_resolved_only_where_torch_has_it(monkeypatch):
    fake_mps(monkeypatch, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device("auto") == torch.device("cpu")  # auto never picks mps
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    assert memory_format(torch.device("mps")) == torch.contiguous_format
    assert memory_format(torch.device("cpu")) == torch.channels_last_3d
    fake_mps(monkeypatch, False)
    with pytest.raises(InputError, match="'mps' was asked for but .* no Apple GPU"):
        resolve_device("mps")
    monkeypatch.delattr(torch.backends, "mps")  # a torch built without the backend
    assert not precision.mps_available()
    with pytest.raises(InputError, match="mps"):
        resolve_device("mps")


def test_the_device_probe_reports_mps():
    out = subprocess.run([sys.executable, "-c", DEVICE_PROBE], capture_output=True, text=True, check=True).stdout
    info = json.loads(out.splitlines()[-1])
    assert info["mps"] is (torch.backends.mps.is_available())  # False on this machine
    assert probe_has_mps(out) is info["mps"]
    mac = json.dumps({"torch": "2.13.0", "cuda": False, "gpus": [], "mps": True})
    assert probe_has_mps(mac) and describe_devices(mac) == "Apple GPU (mps) and CPU (torch 2.13.0)"
    for other in ("", "Traceback ...", "[]", '{"mps": "yes"}', json.dumps({"torch": "2", "gpus": []})):
        assert probe_has_mps(other) is False


class Combo:  # the QComboBox members offer_devices uses (PythonQt: count is a property)
    def __init__(self, items):
        self.items = list(items)

    @property
    def count(self):
        return len(self.items)

    def removeItem(self, index):  # noqa: N802 - Qt's name
        del self.items[index]

    def addItem(self, text):  # noqa: N802 - Qt's name
        self.items.append(text)


def test_offer_devices_adds_and_removes_mps_only():
    combo, node = Combo(DEVICES), types.SimpleNamespace(device="mps")
    offer_devices(combo, node, mps=False)
    assert combo.items == ["auto", "cpu", "cuda"] and node.device == "auto"
    offer_devices(combo, node, mps=False)  # again: nothing more removed
    assert combo.items == ["auto", "cpu", "cuda"]
    offer_devices(combo, node, mps=True)
    assert combo.items == list(DEVICES) and DEVICES[-1] == "mps"
    node.device = "mps"
    offer_devices(combo, node, mps=True)
    assert combo.items == list(DEVICES) and node.device == "mps"


def test_visible_strings_go_through_slicer_translation(monkeypatch):
    """In the application (slicer.app present) through slicer.i18n.translate with the context
    "UniversalSegmentationLib.<file>" (Base/Python/slicer/i18n.py getContext: package.file);
    without it (slicer-core, PythonSlicer) the text itself."""
    slicer = pytest.importorskip("slicer")
    from UniversalSegmentationLib.models import ModelChoice
    state = panel_state.PanelState(choices=[ModelChoice("m", "m")], index=0)
    assert state.action(True, "") == ("Apply", False)  # no application: the English text
    seen = []
    i18n = types.ModuleType("slicer.i18n")
    i18n.translate = lambda context, text: seen.append((context, text)) or f"<{text}>"
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(), raising=False)
    assert state.action(True, "") == ("<Apply>", False)
    assert state.refine_problem(None, "CT") == "<This model has no click refinement (trained without --clicks).>"
    mac = json.dumps({"torch": "2.13.0", "cuda": False, "gpus": [], "mps": True})
    assert command.describe_devices(mac) == "<Apple GPU (mps) and CPU (torch {version})>".format(version="2.13.0")
    assert ("UniversalSegmentationLib.panel_state", "Apply") in seen
    assert ("UniversalSegmentationLib.command", "Apple GPU (mps) and CPU (torch {version})") in seen
