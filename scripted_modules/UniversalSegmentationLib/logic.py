"""The module's logic: background jobs (segment, download, train, detect devices) and undo.

Slicer-bound (MRML) but Qt-free, so the same class serves the GUI, Slicer's Python console,
the self-test and the tests that run against ``slicer-core``. The process runner is injected.

    logic = UniversalSegLogic()
    job = logic.start(volume, model, "CT", ["liver", "spleen"])   # returns at once
    while not job.poll(): ...         # the GUI calls poll() from a QTimer
    job.segmentation_node             # created only when the result is in; None after a failure
    logic.undo_last_run()             # puts back exactly what the run replaced or added

A job never raises from ``poll()``: whatever goes wrong (the process fails, the scene is closed,
the input volume is deleted meanwhile, the result is unreadable) finishes it with a message,
kills its process and removes its temporary folder, so a GUI timer cannot fire on an error forever.
"""
from __future__ import annotations

import collections
import json
import logging
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

from .command import (PredictRequest, child_environment, describe_devices, device_probe_command, download_command,
                      finetune_command, import_command, parse_progress_line, predict_command, probe_has_mps,
                      train_command)
from .i18n import tr as _
from .process_runner import ProcessRunner
from .refine_worker import RefineWorker, worker_command
from .refinement import SegmentRefinement
from .segmentation_import import UndoRecord, import_result, write_volume


MAX_LINES = 1000


class Job:
    """A child process with progress: ``poll()`` until it returns True, or ``cancel()``."""

    def __init__(self, runner, workdir: Optional[Path] = None):
        self.runner, self.workdir = runner, workdir
        self.started = time.time()
        self.finished = self.succeeded = False
        self.stage, self.fraction, self.message = _("starting"), 0.0, ""
        self.log: list[str] = []      # lines not yet shown; the GUI empties it (the last MAX_LINES kept)
        self.output = collections.deque(maxlen=MAX_LINES)  # the last stdout lines that are not progress

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def poll(self) -> bool:
        if self.finished:
            return True
        try:
            self._read_lines()
            problem = self.check()
            if problem:
                self.runner.cancel()
                self.finish(False, problem)
            elif not self.runner.running:
                self.runner.wait()
                self._read_lines()
                self.ended(self.runner.returncode)
        except Exception as exc:  # noqa: BLE001 - a job must end, never raise into a timer
            logging.error("UniversalSeg job failed:\n%s", traceback.format_exc())
            self.runner.cancel()
            self.finish(False, f"{type(exc).__name__}: {exc}")
        return self.finished

    def _read_lines(self) -> None:
        for line in self.runner.poll():
            p = parse_progress_line(line)
            if p is None:
                self.log.append(line)
                self.output.append(line)
                if len(self.log) > 2 * MAX_LINES:  # nobody shows a training job's lines: keep the last
                    del self.log[:-MAX_LINES]
            else:
                self.stage, self.fraction, self.message = p.stage, p.fraction, p.message

    def drain_log(self) -> list:
        """The log lines not shown yet (the GUI appends them to its log box)."""
        lines, self.log = self.log, []
        return lines

    def check(self) -> str:
        """A reason to stop the job now (its nodes are gone, ...); empty while all is well."""
        return ""

    def ended(self, code: int) -> None:
        if self.runner.cancelled:
            self.finish(False, _("cancelled"))
        elif code == 0:
            self.finish(True, _("done in {seconds} s").format(seconds=f"{self.elapsed:.1f}"))
        else:
            self.finish(False, self.last_error(code))

    def last_error(self, code: int) -> str:
        lines = [line for line in self.runner.stderr_lines if line.strip()]
        return lines[-1] if lines else _("the process failed (exit code {code})").format(code=code)

    def cancel(self, reason: str = "") -> None:
        if self.finished:
            return
        reason = reason or _("cancelled")
        self.runner.cancel()
        self.finish(False, reason)

    def finish(self, ok: bool, message: str) -> None:
        if self.finished:
            return
        self.finished, self.succeeded, self.message = True, ok, message
        if ok:
            self.fraction = 1.0
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


class PredictionJob(Job):
    def __init__(self, logic: "UniversalSegLogic", request: PredictRequest, volume_node, segmentation_node,
                 output_name: str, keep_edited: bool, workdir: Path, runner):
        super().__init__(runner, workdir)
        self.logic, self.request, self.volume_node = logic, request, volume_node
        self.segmentation_node, self.output_name, self.keep_edited = segmentation_node, output_name, keep_edited
        self.scene = volume_node.GetScene()
        self.undo: Optional[UndoRecord] = None
        self.retried_on_cpu = False

    def check(self) -> str:
        if self.volume_node.GetScene() is None:
            return _("the input volume was removed (or the scene closed) during the run; nothing was changed")
        return ""

    def ended(self, code: int) -> None:
        errors = "\n".join(self.runner.stderr_lines[-20:])
        if code == 0 and not self.runner.cancelled:
            self.import_result()
        elif code != 0 and not self.runner.cancelled and self.request.device != "cpu" \
                and not self.retried_on_cpu and "CUDA" in errors:
            self.log.append("GPU error; running again on the CPU:\n" + errors)
            self.retried_on_cpu, self.request.device = True, "cpu"
            self.runner.start(predict_command(self.request, self.logic.python),
                              env=self.logic.environment(cpu_only=True), cwd=str(self.workdir))
            self.stage, self.message = _("restarting"), _("GPU error: running on the CPU instead")
        else:
            super().ended(code)

    def import_result(self) -> None:
        node, created = self.segmentation_node, False
        if node is None or node.GetScene() is None:  # none chosen, or deleted meanwhile
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.output_name)
            created = True
        try:
            self.undo = import_result(self.request.output_path, node, self.volume_node,
                                      self.keep_edited, created_node=created)
        except Exception:
            if created:
                self.scene.RemoveNode(node)  # never leave an empty segmentation behind
            raise
        self.segmentation_node = node
        self.logic.last_run = self.undo
        u = self.undo
        done = _("done in {seconds} s: added {added}, replaced {replaced}").format(
            seconds=f"{self.elapsed:.1f}", added=len(u.added), replaced=len(u.replaced))
        kept = _(", kept {kept} you edited ({segments})").format(kept=len(u.kept), segments=", ".join(u.kept))
        self.finish(True, done + (kept if u.kept else ""))


class DownloadJob(Job):
    """Downloads a catalog model; ``path`` is the verified zip in the cache when it succeeds."""

    path: Optional[str] = None

    def ended(self, code: int) -> None:
        super().ended(code)
        if self.succeeded and self.output:
            self.path = self.output[-1].strip()


class TrainingJob(Job):
    """``universalseg train`` in the background; ``model`` is the package folder it writes."""

    def __init__(self, runner, out: Path):
        super().__init__(runner)
        self.model = out / "model"

    def _read_lines(self) -> None:
        super()._read_lines()
        if self.runner.stderr_lines:  # training logs on stderr
            self.message = self.runner.stderr_lines[-1]

    def ended(self, code: int) -> None:
        super().ended(code)
        if self.succeeded and not (self.model / "model.json").is_file():
            self.succeeded, self.message = False, _("training ended without writing {model}").format(model=self.model)
        elif self.succeeded:
            self.message = _("Done: {model} is in the model list.").format(model=self.model)
            report = self.model.parent / "before_after.json"  # fine-tuning: old vs new on the user's cases
            if report.is_file():
                self.message += " " + str(json.loads(report.read_text()).get("summary", ""))


class DeviceProbe(Job):
    """Which devices torch sees, asked in a child process; ``message`` is the answer, ``mps`` whether
    Apple's GPU backend is there to offer."""
    mps = False

    def ended(self, code: int) -> None:
        super().ended(code)
        self.mps = self.succeeded and probe_has_mps("\n".join(self.output))
        self.message = describe_devices("\n".join(self.output) if self.succeeded else self.message)


class UniversalSegLogic:
    def __init__(self, runner_factory: Callable = ProcessRunner, python: Optional[str] = None,
                 base_env: Optional[dict] = None):
        self.runner_factory, self.python, self.base_env = runner_factory, python, base_env
        self.last_run: Optional[UndoRecord] = None
        self.refine_worker = RefineWorker()   # warm between refinements: the model stays loaded
        self.refinement: Optional[SegmentRefinement] = None

    def start_refinement(self, volume_node, segmentation_node, segment_id: str, task: str, modality: str,
                         model: str, device: str = "auto") -> SegmentRefinement:
        """Refine mode on one segment (``refinement.SegmentRefinement``); the worker starts once."""
        if volume_node is None or segmentation_node is None or not segment_id:
            raise ValueError(_("select the volume, the segmentation and the segment to refine"))
        if volume_node.GetParentTransformNode() is not None:
            raise ValueError(transformed_volume_problem(volume_node, "clicks"))
        if self.refinement is not None:
            self.end_refinement(accept=True)
        if not self.refine_worker.running:
            self.refine_worker.start(worker_command(self.python), env=self.environment(device == "cpu"))
        workdir = Path(tempfile.mkdtemp(prefix="UniversalSeg-refine-"))
        self.refinement = SegmentRefinement(self.refine_worker, volume_node, segmentation_node, segment_id,
                                            task, modality, model, workdir, device)
        self.refinement.start()
        return self.refinement

    def end_refinement(self, accept: bool = True) -> None:
        """Keep (accept) or put back (discard) the refined segment; the worker stays warm."""
        refinement, self.refinement = self.refinement, None
        if refinement is not None:
            (refinement.accept if accept else refinement.discard)()
            shutil.rmtree(refinement.workdir, ignore_errors=True)

    def stop_worker(self) -> None:
        if self.refinement is not None:
            self.end_refinement(accept=True)
        self.refine_worker.stop()

    def environment(self, cpu_only: bool = False) -> dict:
        return child_environment(cpu_only=cpu_only, env=self.base_env)

    def _launch(self, cmd: list, cwd: Path, cpu_only: bool = False):
        runner = self.runner_factory()
        runner.start(cmd, env=self.environment(cpu_only), cwd=str(cwd))
        return runner

    def start(self, volume_node, model: str, modality: str, tasks: Sequence[str], segmentation_node=None,
              device: str = "auto", precision: str = "auto", overlap: float = 0.5, fast: bool = False,
              roi: Optional[Sequence[float]] = None, keep_edited: bool = True,
              largest_component: bool = False) -> PredictionJob:
        """Segment in the background. ``segmentation_node`` None: a new node is created when
        (and only when) the result is in."""
        if volume_node is None or volume_node.GetScene() is None:
            raise ValueError(_("select an input volume"))
        if roi is not None and volume_node.GetParentTransformNode() is not None:
            raise ValueError(transformed_volume_problem(volume_node, "a region of interest"))
        if not tasks:
            raise ValueError(_("select at least one structure to segment"))
        if not modality:
            raise ValueError(_("select the modality of the input volume"))
        workdir = Path(tempfile.mkdtemp(prefix="UniversalSeg-"))
        try:
            image = write_volume(volume_node, workdir / "input.nrrd")
            request = PredictRequest(model=str(model), input_path=str(image), modality=modality,
                                     output_path=str(workdir / "result.seg.nrrd"), tasks=list(tasks),
                                     device=device, precision=precision, overlap=overlap, fast=fast, roi=roi,
                                     largest_component=largest_component)
            runner = self._launch(predict_command(request, self.python), workdir, cpu_only=device == "cpu")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return PredictionJob(self, request, volume_node, segmentation_node,
                             f"{volume_node.GetName()} UniversalSeg", keep_edited, workdir, runner)

    def run(self, *args, timeout: float = 3600, **kwargs) -> PredictionJob:
        """Blocking version (scripts, self-test): start and poll until finished."""
        job = self.start(*args, **kwargs)
        wait(job, timeout)
        return job

    def undo_last_run(self) -> str:
        """Put back the segments the last run replaced and remove those it added."""
        if self.last_run is None:
            raise ValueError(_("there is no run to undo"))
        record, self.last_run = self.last_run, None
        if record.undo():
            return _("undone: removed the segmentation the run created")
        return _("undone: removed {added} added, restored {replaced} replaced").format(
            added=len(record.added), replaced=len(record.replaced))

    def start_download(self, model_id: str) -> DownloadJob:
        workdir = Path(tempfile.mkdtemp(prefix="UniversalSeg-download-"))
        return DownloadJob(self._launch(download_command(model_id, self.python), workdir), workdir)

    def start_import(self, zip_path: str) -> DownloadJob:
        """Validate a model zip (weights included) and copy it into the cache; ``path`` is the copy."""
        workdir = Path(tempfile.mkdtemp(prefix="UniversalSeg-import-"))
        return DownloadJob(self._launch(import_command(zip_path, self.python), workdir), workdir)

    def start_device_probe(self) -> DeviceProbe:
        workdir = Path(tempfile.mkdtemp(prefix="UniversalSeg-probe-"))
        return DeviceProbe(self._launch(device_probe_command(self.python), workdir), workdir)

    def start_training(self, catalog: str, config: str, out: str, resume: bool = False) -> TrainingJob:
        if not catalog or not Path(catalog).is_file():
            raise ValueError(_("choose the dataset catalog file (catalog.yaml)"))
        if not out:
            raise ValueError(_("choose the run folder"))
        out_path = Path(out)
        out_path.mkdir(parents=True, exist_ok=True)
        return TrainingJob(self._launch(train_command(catalog, config, out, self.python, resume), out_path),
                           out_path)


    def start_finetune(self, model: str, training_set: str, mode: str, extra: Sequence[str] = ()) -> TrainingJob:
        """Fine-tune ``model`` on the training set in the background; the new version is written
        to TRAINING_SET/versions/<model>-<mode>-<time>/model (the old model stays as it is)."""
        catalog = Path(training_set or "") / "catalog.yaml"
        if not training_set or not catalog.is_file():
            raise ValueError(_("add cases to your training set first (it has no catalog.yaml yet)"))
        if mode not in ("adapt", "add-tasks"):
            raise ValueError(_("unknown fine-tuning mode {mode}").format(mode=repr(mode)))
        stem = Path(str(model)).name.split(".")[0] or "model"
        out = Path(training_set) / "versions" / f"{stem}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=False)
        cmd = finetune_command(model, str(catalog), str(out), mode, self.python) + list(extra)
        return TrainingJob(self._launch(cmd, out), out)


def transformed_volume_problem(volume_node, what: str) -> str:
    """Points and boxes are placed in world coordinates, the volume is segmented in its own
    (vtkMRMLTransformableNode::GetParentTransformNode): refuse rather than miss the place."""
    return (f"{what} cannot be used while the volume {volume_node.GetName()!r} is under a transform: "
            "harden the transform (Data module: right-click the volume > Harden transform) or remove it")


def roi_bounds(roi_node) -> Optional[list]:
    """RAS bounds [x0, x1, y0, y1, z0, z1] of a markups ROI node (None: no ROI)."""
    if roi_node is None:
        return None
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    return bounds


def dicom_modality(volume_node, database) -> str:
    """The DICOM Modality (0008,0060) of a volume loaded from DICOM; "" otherwise."""
    uids = volume_node.GetAttribute("DICOM.instanceUIDs") if volume_node is not None else None
    if not uids or database is None:
        return ""
    return database.instanceValue(uids.split()[0], "0008,0060") or ""


def wait(job: Job, timeout: float = 3600) -> Job:
    deadline = time.time() + timeout
    while not job.poll():
        if time.time() > deadline:
            job.cancel(_("did not finish in time"))
            raise TimeoutError(_("the job did not finish in time"))
        time.sleep(0.1)
    return job
