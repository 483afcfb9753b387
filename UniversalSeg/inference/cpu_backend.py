"""An optional CPU backend: the sliding window's network passes through OpenVINO instead of torch.

    predictor = Predictor(package, device="cpu")
    use_backend(predictor, "openvino")              # predictor.backend; "torch" (None) is the default
    predictor.predict("t1.nii.gz", "MR-T1")         # its CPU windows now run through OpenVINO

    backend = make_backend("openvino", package, torch.device("cpu"))  # None: torch runs the windows
    run = backend.window_function(task_ids, modality_id, domain_id)  # exported once, then cached
    logits = run(window)                                              # [N, 1, *patch] -> [N, T, *patch]

Why OpenVINO, and when: ``Testing/Benchmarks/cpu_backend.py`` runs torch, OpenVINO and ONNX Runtime
on windows of the shipped brain model in one run, interleaved, at the same thread counts. On a
2-core Intel Xeon with AVX-512 and AMX shared with other jobs (load average 6-9), OpenVINO was
faster than ONNX Runtime in every setting (fp32; 1.2-1.7x), so it is the runtime here. Against
torch in fp32: 2.0x (one window per call) and 0.92x (four per call, the predictor's default) at
1 thread; 3.7-9.7x at 2 threads, where torch's spinning OpenMP threads wait on the busy cores
(the predictor's thread governor then gives torch 1 thread). A whole MNI152 T1 through
``predict`` (sequential runs): the network's time 19.3 s with OpenVINO fp32 against 25.3 s for
torch fp32 (1.3x) and 16.8 s for torch bf16, the automatic precision on a CPU with AMX. OpenVINO's
own bf16 was faster still but changed the masks (white matter Dice 0.69 against fp32; torch's
bf16: 0.99), so the runtime computes in fp32 and ``auto`` takes it only where torch would run
fp32 (no AMX or AVX512-bf16, or ``--precision fp32``). OpenVINO also converts torch's own export
(``torch.export``) without ONNX in between (ONNX Runtime needs ``onnx`` and ``onnxscript``).

What is exported: the network with its context FIXED (the requested task ids in their order, the
modality id, the domain id are constants of the graph; the batch of windows is the one free
dimension), returning the logits; the predictor applies the sigmoid as it does for torch. So one
export serves one (model, task list, modality, domain, patch size) and is cached per
``cache_key``: the model's checksum (network config and weights), those ids, the patch size, the
OpenVINO and torch versions and ``EXPORT_FORMAT``.

The cache lives beside the model cache (``model_download.cache_dir() / "openvino"``), never inside
a package: one folder per key, holding ``model.xml``, ``model.bin`` and ``entry.json`` (the key and
the SHA-256 of both files). An entry is written into a temporary folder and renamed into place
(complete or absent); an entry whose ``entry.json`` is missing or does not match its files (a disk
error, a hand edit, a foreign writer) is moved away and rebuilt, never loaded. The cache keeps the
``MAX_ENTRIES`` entries used last.

The runtime computes in float32 (``INFERENCE_PRECISION_HINT f32``, also on CPUs where OpenVINO
would pick bf16), one window per call, with torch's current thread count: the predictor's thread
governor sets it to the cores other programs leave free (one compiled model per count, compiled
when first needed). Probabilities agree with torch's fp32 ones within ``TOLERANCE`` (tested on a
tiny network, the whole predictor and the shipped brain model; 3.8e-3 at most on a whole MNI152
T1, where 24-115 voxels of a structure's mask differed); a mask can differ from torch's only where
a probability lies that close to its threshold.
Click refinement (which needs the network's features) and GPUs keep torch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..file_modes import apply_umask, atomic_write
from ..networks import ModelConfig, SegContext, UniversalSegNet, resolve_precision

__all__ = ["BACKENDS", "EXPORT_FORMAT", "INSTALL_HINT", "MAX_ENTRIES", "OPENVINO_VERSION", "TOLERANCE",
           "BackendUnavailableError", "ExportCache", "FixedContextNet",
           "OpenVinoBackend", "check_backend", "load_openvino", "make_backend", "model_checksum",
           "runtime_available", "use_backend"]

log = logging.getLogger("UniversalSeg.cpu_backend")

BACKENDS = ("torch", "openvino", "auto")
OPENVINO_VERSION = "2026.4.1"  # the version measured and tested (pyproject's cpu-fast extra)
INSTALL_HINT = f'pip install "openvino=={OPENVINO_VERSION}" (or pip install "UniversalSeg[cpu-fast]")'
EXPORT_FORMAT = 1  # bump when what is exported changes: older cache entries are then not used
# |probability(OpenVINO) - probability(torch)|, both fp32, at most this (tested; a whole MNI152 T1
# through the brain model: 3.8e-3 at most, 24-115 voxels of a structure's mask differed)
TOLERANCE = 5e-3
ENTRY = "entry.json"
FILES = ("model.xml", "model.bin")
STALE_TEMPORARY_S = 3600.0  # a temporary folder this old was left by a killed run
MAX_ENTRIES = 16  # the cache keeps the entries used last (the brain model's: 36 MB each)


class BackendUnavailableError(InputError):
    """The requested backend cannot run here (runtime not installed, not a CPU, a precision it lacks)."""


def load_openvino():
    """The ``openvino`` module, or one clear error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError(f"--backend openvino needs OpenVINO, which is not installed: "
                                      f"{INSTALL_HINT}; or use --backend torch") from None
    return openvino


def runtime_available() -> bool:
    try:
        load_openvino()
    except BackendUnavailableError:
        return False
    return True


def check_backend(name: str) -> None:
    """Refuse an unknown backend name, or ``openvino`` where it is not installed (before any work)."""
    if name not in BACKENDS:
        raise InputError(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "openvino":
        load_openvino()


def make_backend(name: str, package, device: torch.device, precision: str = "auto",
                 cache: Optional[Path] = None) -> Optional["OpenVinoBackend"]:
    """The backend that runs the windows: None for torch. ``precision``: the one asked for (before
    ``auto`` is resolved). The runtime computes in fp32 (OpenVINO's bf16 changed the brain model's
    masks: white matter Dice 0.69 against fp32, torch's bf16 0.99). ``auto``: OpenVINO where torch
    would run fp32 on the CPU (no bf16 asked for, none chosen by ``auto`` for lack of AMX or
    AVX512-bf16: there torch's bf16 was faster than OpenVINO's fp32), torch otherwise."""
    check_backend(name)
    device = torch.device(device)
    if name == "torch":
        return None
    if name == "auto":
        if (device.type != "cpu" or resolve_precision(precision, device) != "fp32"
                or not runtime_available()):
            return None
    elif device.type != "cpu":
        raise BackendUnavailableError(f"--backend openvino runs on the CPU, not on {device}: use --device cpu "
                                      "or --backend torch")
    elif precision not in ("auto", "fp32"):
        raise BackendUnavailableError(f"--backend openvino computes in fp32, not {precision} (its bf16 changed "
                                      "the masks): leave out --precision, or use --backend torch")
    return OpenVinoBackend(package.config, package.state_dict, package.patch_size, cache)


def use_backend(predictor, name: str, precision: str = "auto") -> Optional["OpenVinoBackend"]:
    """Let ``predictor`` (an ``inference.Predictor``) run its CPU windows through the backend
    ``name`` (``precision``: the one asked for, before ``auto`` was resolved); returns the
    backend, None for torch. With a runtime the predictor's precision becomes fp32."""
    predictor.backend = make_backend(name, predictor.package, predictor.device, precision)
    if predictor.backend is not None:
        predictor.precision = "fp32"
    return predictor.backend


def model_checksum(config: ModelConfig, state_dict: dict) -> str:
    """SHA-256 of the network config and every weight (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class FixedContextNet(nn.Module):
    """The network with its context fixed: windows [N, C, *patch] -> logits [N, T, *patch]."""

    def __init__(self, net: UniversalSegNet, task_ids: Sequence[int], modality_id: int, domain_id: int,
                 patch: Sequence[int]):
        super().__init__()
        self.net = net
        self.register_buffer("task_ids", torch.tensor([list(task_ids)], dtype=torch.long))
        self.register_buffer("modality_id", torch.tensor([modality_id], dtype=torch.long))
        self.register_buffer("domain_id", torch.tensor([domain_id], dtype=torch.long))
        # checked once here: the checks read tensor values, which an exported graph cannot branch on
        net.check_input(torch.zeros(1, net.config.in_channels, *patch), self.context(1))
        net.check_input = lambda image, ctx: None  # this private copy of the network only

    def context(self, n: int) -> SegContext:
        return SegContext(self.task_ids.expand(n, -1), self.modality_id.expand(n), self.domain_id.expand(n))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.net(window, self.context(window.shape[0]))["logits"]


def export_openvino(config: ModelConfig, state_dict: dict, task_ids: Sequence[int], modality_id: int,
                    domain_id: int, patch: Sequence[int]):
    """The OpenVINO model of the network with this context (``torch.export``, then ``convert_model``),
    the number of windows per call left free."""
    ov = load_openvino()
    # the predictor's windows run under inference_mode: tensors made there cannot be traced, so the
    # network, its context and the trace are made outside it
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = UniversalSegNet(config)
        net.load_state_dict(state_dict)
        fixed = FixedContextNet(net.eval(), task_ids, modality_id, domain_id, patch).eval()
        # two windows: torch.export would fix a batch dimension of 1 as a constant
        example = torch.zeros(2, config.in_channels, *patch)
        windows = torch.export.Dim("windows", min=1, max=4096)
        program = torch.export.export(fixed, (example,), dynamic_shapes={"window": {0: windows}})
        return ov.convert_model(program)


class ExportCache:
    """Exported models on disk, one checksummed folder per key (see the module's docstring)."""

    def __init__(self, root: Optional[Path] = None):
        if root is None:
            from ..model_download import cache_dir
            root = cache_dir() / "openvino"
        self.root = Path(root)

    @staticmethod
    def folder_name(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: dict) -> Path:
        return self.root / self.folder_name(key)

    def load(self, key: dict) -> Optional[Path]:
        """The entry's ``model.xml`` if the entry is complete and intact; a damaged one is removed."""
        folder = self.path(key)
        if not folder.exists():
            return None
        problem = self._problem(folder, key)
        if problem is None:
            try:
                os.utime(folder / ENTRY)  # used now: pruned last
            except OSError:
                pass
            return folder / FILES[0]
        log.warning("the cached OpenVINO model %s is %s: rebuilding it", folder, problem)
        self._remove(folder)
        return None

    @staticmethod
    def _problem(folder: Path, key: dict) -> Optional[str]:
        try:
            entry = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"incomplete (no readable {ENTRY})"
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("files"), dict):
            return f"not the entry its name says ({ENTRY} differs)"
        for name in FILES:
            if entry["files"].get(name) != _sha256(folder / name):
                return f"damaged ({name} does not match its checksum)"
        return None

    def store(self, key: dict, model) -> Path:
        """Write ``model`` (an ``openvino.Model``) as the entry of ``key``, all or nothing."""
        ov = load_openvino()
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            ov.save_model(model, str(tmp / FILES[0]), compress_to_fp16=False)
            entry = {"key": key, "files": {name: _sha256(tmp / name) for name in FILES}}
            atomic_write(tmp / ENTRY, lambda p: p.write_text(json.dumps(entry, indent=1), encoding="utf-8"))
            apply_umask(tmp, directory=True)
            folder = self.path(key)
            if folder.exists():  # damaged (load removes it) or written meanwhile by another process
                if self.load(key) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return folder / FILES[0]
            try:
                os.rename(tmp, folder)
            except OSError:  # another process renamed its copy first
                shutil.rmtree(tmp, ignore_errors=True)
                if self.load(key) is None:
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(keep=folder)
        return folder / FILES[0]

    def _prune(self, keep: Path) -> None:
        """Remove the entries used longest ago beyond ``MAX_ENTRIES`` (never ``keep``)."""
        def used(folder: Path) -> float:
            try:
                return (folder / ENTRY).stat().st_mtime
            except OSError:
                return 0.0
        entries = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep),
                         key=used, reverse=True)
        for old in entries[max(0, MAX_ENTRIES - 1):]:
            self._remove(old)

    def _remove(self, folder: Path) -> None:
        """Move a folder out of the way at once (atomic), then delete it."""
        trash = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root)) / "old"
        try:
            os.rename(folder, trash)
        except OSError:
            pass  # already gone (another process)
        shutil.rmtree(trash.parent, ignore_errors=True)

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for tmp in self.root.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass


def _sha256(path: Path) -> Optional[str]:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


class OpenVinoBackend:
    """Runs windows of one model through OpenVINO on the CPU; exports and compiles once per context."""

    name = "openvino"

    def __init__(self, config: ModelConfig, state_dict: dict, patch_size: Sequence[int],
                 cache: Optional[Path] = None, threads: Optional[int] = None, precision_hint: str = "f32"):
        self.ov = load_openvino()
        self.precision_hint = precision_hint  # "bf16" for measurements only: it changed the masks
        self.config, self.state_dict, self.patch = config, state_dict, tuple(int(p) for p in patch_size)
        self.cache = ExportCache(cache)
        self.threads = threads
        self.checksum = model_checksum(config, state_dict)
        self.core = self.ov.Core()
        self.models: dict[tuple, object] = {}  # context -> openvino.Model
        self.compiled: dict[tuple, object] = {}  # (context, threads) -> compiled model
        self.events: list[str] = []  # "hit" / "export" per context, in order (for tests and logs)

    def cache_key(self, task_ids: Sequence[int], modality_id: int, domain_id: int) -> dict:
        return {"format": EXPORT_FORMAT, "model_sha256": self.checksum, "task_ids": [int(t) for t in task_ids],
                "modality_id": int(modality_id), "domain_id": int(domain_id), "patch": list(self.patch),
                "runtime": "openvino", "runtime_version": self.ov.__version__, "torch": torch.__version__}

    def window_function(self, task_ids: Sequence[int], modality_id: int,
                        domain_id: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """windows [N, C, *patch] (any dtype, any memory format) -> float32 logits [N, T, *patch].
        Each call runs with torch's current thread count (which the predictor's thread governor
        sets to the cores other programs leave free), or ``threads``: compiled once per count."""
        context = (tuple(int(t) for t in task_ids), int(modality_id), int(domain_id))
        if context not in self.models:
            self.models[context] = self._load(*context)

        def run(window: torch.Tensor) -> torch.Tensor:
            threads = self.threads or torch.get_num_threads()
            compiled = self.compiled.get((context, threads))
            if compiled is None:
                compiled = self.compiled[context, threads] = self.core.compile_model(self.models[context], "CPU", {
                    "INFERENCE_PRECISION_HINT": self.precision_hint, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": threads})
            array = window.detach().to("cpu", torch.float32).contiguous().numpy()
            # one window per call: the graph compiled for a fixed shape ran 10-25 % faster per window
            # than one compiled for any number of windows (Intel Xeon with AMX, fp32 and bf16)
            logits = np.concatenate([compiled(array[i:i + 1])[0] for i in range(array.shape[0])])
            return torch.from_numpy(logits).to(window.device)
        return run

    def _load(self, task_ids, modality_id, domain_id):
        """The OpenVINO model of this context: from the cache, else exported and cached first."""
        key = self.cache_key(task_ids, modality_id, domain_id)
        xml = self.cache.load(key)
        if xml is None:
            t0 = time.perf_counter()
            model = export_openvino(self.config, self.state_dict, task_ids, modality_id, domain_id, self.patch)
            xml = self.cache.store(key, model)
            self.events.append("export")
            log.info("exported the network for OpenVINO in %.1f s (cached in %s)", time.perf_counter() - t0,
                     xml.parent)
        else:
            self.events.append("hit")
        model = self.core.read_model(str(xml))
        model.reshape([1, self.config.in_channels, *self.patch])  # see window_function
        return model
