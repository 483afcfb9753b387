"""The client of the warm worker (``universalseg worker``): one persistent child process.

Unlike a segmentation run (one process per run, see ``process_runner``), click refinement needs
the model and the image to stay loaded between clicks, so one child keeps them; requests and
replies are JSON lines over its stdin/stdout (protocol: ``UniversalSeg/inference/worker.py``).
Slicer-free: the widget calls ``poll()`` from a ``qt.QTimer``; tests and the benchmark call
``request()``, which waits. The child gets ``UNIVERSALSEG_PARENT_PID`` (``command.child_environment``)
and exits with Slicer; ``stop()`` asks it to close and kills it if it does not.

    worker = RefineWorker(); worker.start()
    worker.send({"cmd": "open", ...})        # -> request id
    for message in worker.poll(): ...         # progress lines and replies, in order
"""
from __future__ import annotations

import base64
import json
import queue
import subprocess
import threading
import time
import zlib
from typing import Optional, Sequence

from .command import child_environment
from .i18n import tr as _
from .paths import python_executable
from .process_runner import popen_options


def worker_command(python: Optional[str] = None) -> list[str]:
    return [python or python_executable(), "-m", "UniversalSeg", "worker"]


def decode_mask(reply: dict):
    """A mask reply -> (box ((i0, i1), (j0, j1), (k0, k1)), uint8 array in (k, j, i) order)."""
    import numpy as np
    array = np.frombuffer(zlib.decompress(base64.b64decode(reply["mask"])), dtype=np.uint8)
    return tuple(tuple(b) for b in reply["box"]), array.reshape(reply["shape"])


class WorkerError(RuntimeError):
    """The worker answered a request with an error (its one-line message), or died."""


class RefineWorker:
    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self.messages: "queue.Queue[dict]" = queue.Queue()
        self.stderr_lines: list[str] = []
        self._next_id = 0

    def start(self, cmd: Optional[Sequence[str]] = None, env: Optional[dict] = None) -> None:
        if self.running:
            return
        options = {**popen_options(), "stdin": subprocess.PIPE}
        self.proc = subprocess.Popen(list(cmd or worker_command()), env=env or child_environment(), **options)
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:  # not protocol: a stray print of a library; keep it as a log line
                self.stderr_lines.append(line.rstrip("\n"))
                continue
            if isinstance(message, dict):
                self.messages.put(message)

    def _pump_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            del self.stderr_lines[:-200]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, request: dict) -> int:
        if not self.running:
            raise WorkerError(_("the refinement worker is not running") + self._last_error())
        self._next_id += 1
        try:
            self.proc.stdin.write(json.dumps({**request, "id": self._next_id}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise WorkerError(_("the refinement worker stopped") + self._last_error()) from None
        return self._next_id

    def cancel(self) -> None:
        """End a running "open" (its reply comes back with "cancelled")."""
        if self.running:
            try:
                self.proc.stdin.write('{"cmd": "cancel"}\n')
                self.proc.stdin.flush()
            except OSError:
                pass

    def poll(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def request(self, request: dict, timeout: float = 600.0) -> dict:
        """Send and wait for the reply (progress lines are skipped); raise ``WorkerError`` on an
        error reply, a dead worker or the timeout."""
        rid = self.send(request)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                message = self.messages.get(timeout=0.05)
            except queue.Empty:
                if not self.running:
                    raise WorkerError(_("the refinement worker stopped") + self._last_error()) from None
                continue
            if message.get("id") == rid and "ok" in message:
                if not message["ok"]:
                    raise WorkerError(message.get("error", _("failed")))
                return message
        raise WorkerError(_("no answer from the refinement worker in {seconds} s").format(seconds=f"{timeout:.0f}"))

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.running:
            try:
                self.proc.stdin.write('{"cmd": "close"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _last_error(self) -> str:
        lines = [line for line in self.stderr_lines if line.strip()]
        return f": {lines[-1]}" if lines else ""
