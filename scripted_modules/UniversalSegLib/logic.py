"""The module's logic: volume node + choices -> background ``universalseg predict`` -> segments.

Slicer-bound (MRML) but Qt-free, so the same class serves the GUI, Slicer's Python console,
the self-test and the tests that run against ``slicer-core``. The process runner is injected.

    logic = UniversalSegLogic()
    job = logic.start(volume, model, "CT", ["liver", "spleen"], segmentation)   # returns at once
    while not job.finished: job.poll()      # the GUI calls poll() from a QTimer
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .command import PredictRequest, child_environment, parse_progress_line, predict_command, train_command
from .process_runner import ProcessRunner
from .segmentation_import import import_result, write_volume


@dataclass
class PredictionJob:
    logic: "UniversalSegLogic"
    request: PredictRequest
    volume_node: object
    segmentation_node: object
    keep_edited: bool
    workdir: Path
    runner: object
    on_progress: Optional[Callable] = None
    started: float = field(default_factory=time.time)
    finished: bool = False
    succeeded: bool = False
    message: str = ""
    fraction: float = 0.0
    stage: str = "starting"
    log: list = field(default_factory=list)
    outcome: Optional[dict] = None
    retried_on_cpu: bool = False

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def poll(self) -> bool:
        """Read progress; when the process has ended, import the result. Returns ``finished``."""
        if self.finished:
            return True
        for line in self.runner.poll():
            p = parse_progress_line(line)
            if p is None:
                self.log.append(line)
                continue
            self.stage, self.fraction, self.message = p.stage, p.fraction, p.message
            if self.on_progress:
                self.on_progress(self)
        if self.runner.running:
            return False
        self.runner.wait()
        for line in self.runner.poll():  # lines that arrived after the last poll
            p = parse_progress_line(line)
            if p is None:
                self.log.append(line)
        code = self.runner.returncode
        errors = "\n".join(self.runner.stderr_lines[-20:])
        if self.runner.cancelled:
            self._finish(False, "cancelled; the scene is unchanged")
        elif code == 0:
            self.outcome = import_result(self.request.output_path, self.segmentation_node,
                                         self.volume_node, self.keep_edited)
            self._finish(True, f"done in {self.elapsed:.1f} s: added {self.outcome['added']}, "
                               f"replaced {self.outcome['replaced']}, kept edited {self.outcome['kept']}")
        elif self.request.device != "cpu" and not self.retried_on_cpu and "CUDA" in errors:
            self.log.append("GPU error; running again on the CPU:\n" + errors)
            self.retried_on_cpu = True
            self.request.device = "cpu"
            self.runner.start(predict_command(self.request, self.logic.python),
                              env=child_environment(cpu_only=True), cwd=str(self.workdir))
            self.stage, self.message = "restarting", "GPU error: running on the CPU instead"
            return False
        else:
            last = [l for l in self.runner.stderr_lines if l.strip()]
            self._finish(False, last[-1] if last else f"the segmentation process failed (exit code {code})")
        return True

    def cancel(self) -> None:
        self.runner.cancel()
        self.poll()

    def _finish(self, ok: bool, message: str) -> None:
        self.finished, self.succeeded, self.message = True, ok, message
        if ok:
            self.fraction = 1.0
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.on_progress:
            self.on_progress(self)


class UniversalSegLogic:
    def __init__(self, runner_factory: Callable = ProcessRunner, python: Optional[str] = None):
        self.runner_factory = runner_factory
        self.python = python

    @staticmethod
    def model_metadata(model: str) -> dict:
        """Tasks (name, display name, color) and modalities of a package, without its weights."""
        from .models import read_metadata
        return read_metadata(model)

    def start(self, volume_node, model: str, modality: str, tasks: Sequence[str], segmentation_node,
              device: str = "auto", precision: str = "auto", overlap: float = 0.5, fast: bool = False,
              roi: Optional[Sequence[float]] = None, keep_edited: bool = True,
              on_progress: Optional[Callable] = None) -> PredictionJob:
        if volume_node is None:
            raise ValueError("select an input volume")
        if not tasks:
            raise ValueError("select at least one structure to segment")
        workdir = Path(tempfile.mkdtemp(prefix="UniversalSeg-"))
        image = write_volume(volume_node, workdir / "input.nrrd")
        request = PredictRequest(model=str(model), input_path=str(image), modality=modality,
                                 output_path=str(workdir / "result.seg.nrrd"), tasks=list(tasks),
                                 device=device, precision=precision, overlap=overlap, fast=fast, roi=roi)
        runner = self.runner_factory()
        runner.start(predict_command(request, self.python), env=child_environment(cpu_only=device == "cpu"),
                     cwd=str(workdir))  # never the module folder: its UniversalSeg.py would shadow the core
        return PredictionJob(self, request, volume_node, segmentation_node, keep_edited, workdir,
                             runner, on_progress)

    def run(self, *args, timeout: float = 3600, **kwargs) -> PredictionJob:
        """Blocking version (scripts, self-test): start and poll until finished."""
        job = self.start(*args, **kwargs)
        deadline = time.time() + timeout
        while not job.poll():
            if time.time() > deadline:
                job.cancel()
                raise TimeoutError("the segmentation did not finish in time")
            time.sleep(0.1)
        return job

    def start_training(self, catalog: str, config: str, out: str, resume: bool = False):
        """Fine-tune / train in a background process; the caller polls ``runner.running``."""
        runner = self.runner_factory()
        runner.start(train_command(catalog, config, out, self.python, resume), env=child_environment())
        return runner
