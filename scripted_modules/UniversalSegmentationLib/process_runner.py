"""Run a command in the background, read its lines, cancel it with its whole process tree.

Why a process per run (and not a warm worker thread inside Slicer): the segmentation runs in its
own interpreter (``PythonSlicer``), so a crash, a CUDA error or a memory blow-up cannot take
Slicer down, all GPU memory is returned when it ends, and Cancel is a plain kill of the process
group. The price, re-loading the model (about a second on CPU for our packages), is small next
to a whole-volume inference.

The runner is Slicer-free: the widget polls ``poll()`` from a ``qt.QTimer``; tests use it with a
real child process. It is injectable: the logic accepts any object with ``start``, ``poll``,
``cancel`` and ``returncode``.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from typing import Optional, Sequence

from .i18n import tr as _

# Windows process creation flags (winbase.h): no console window for the child (Slicer's
# ``launchConsoleProcess`` hides it too), and a process group of its own for Ctrl-Break / taskkill.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def popen_options(os_name: str = os.name) -> dict:
    """How a child is started: never a console window on Windows; its own process group
    (Windows) or session (POSIX) so that Cancel kills its whole tree; output decoded as UTF-8
    with undecodable bytes replaced, so that one bad byte never stalls a reader."""
    options = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
               "text": True, "encoding": "utf-8", "errors": "replace", "bufsize": 1}
    if os_name == "nt":
        options["creationflags"] = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    else:
        options["start_new_session"] = True
    return options


def kill_tree_options(pid: int, os_name: str = os.name):
    """How Cancel ends a child and everything it started: ``taskkill /T`` without a console
    window on Windows (a bare subprocess.run flashes one), the process group on POSIX."""
    if os_name == "nt":
        return ["taskkill", "/F", "/T", "/PID", str(pid)], {"capture_output": True, "creationflags": CREATE_NO_WINDOW}
    return None, {}


MAX_STDERR_LINES = 1000  # a training run logs for hours: the last lines are kept, not all


class ProcessRunner:
    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stderr_lines: list[str] = []
        self._threads: list[threading.Thread] = []
        self.cancelled = False

    def start(self, cmd: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None) -> None:
        if self.running:
            raise RuntimeError(_("a process is already running; cancel it first"))
        self.cancelled = False
        self.stderr_lines = []
        self.proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, **popen_options())
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, stream, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.lines.put(line.rstrip("\n"))
            else:
                self.stderr_lines.append(line.rstrip("\n"))
                if len(self.stderr_lines) > 2 * MAX_STDERR_LINES:
                    del self.stderr_lines[:-MAX_STDERR_LINES]
        stream.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def poll(self) -> list[str]:
        """New stdout lines since the last call (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return code

    def cancel(self) -> None:
        """Kill the process and everything it started."""
        if not self.running:
            return
        self.cancelled = True
        command, options = kill_tree_options(self.proc.pid)
        if command:
            subprocess.run(command, **options)
        else:
            try:
                os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
