"""End this process when the program that started it is gone.

The Slicer module runs predictions and training in child processes, in their own process group
so that Cancel can kill the whole tree. A process group of its own also means that nothing ends
the child when Slicer exits or crashes: a training run would go on holding the GPU. The module
therefore sets ``UNIVERSALSEG_PARENT_PID`` and the command line calls ``exit_with_parent`` from
it: a daemon thread checks every ``poll`` seconds that the parent is alive and otherwise ends
this process at once (``os._exit``; checkpoints are written atomically, so a killed training run
resumes bit-exactly with ``--resume``).
"""
from __future__ import annotations

import os
import threading
import time

__all__ = ["ENV", "exit_with_parent", "parent_alive"]

ENV = "UNIVERSALSEG_PARENT_PID"


def parent_alive(pid: int, original_ppid: int) -> bool:
    if os.name == "nt":
        import ctypes
        synchronize, wait_object_0 = 0x00100000, 0
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(synchronize, False, pid)
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) != wait_object_0
        finally:
            kernel32.CloseHandle(handle)
    # POSIX: an orphan is re-parented (to init or a subreaper), so its parent id changes
    return os.getppid() == original_ppid and _exists(pid)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_with_parent(pid: int | None = None, poll: float = 2.0, code: int = 143) -> threading.Thread | None:
    """Start the watchdog for ``pid`` (default: ``$UNIVERSALSEG_PARENT_PID``); None if unset."""
    if pid is None:
        value = os.environ.get(ENV, "")
        if not value.isdigit():
            return None
        pid = int(value)
    original_ppid = os.getppid()

    def watch():
        while parent_alive(pid, original_ppid):
            time.sleep(poll)
        os._exit(code)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
