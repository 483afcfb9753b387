"""The panel's background jobs, one per slot: "run" (segment, download or import a model),
"train", "finetune", "probe" (which devices torch sees). The GUI's timer calls ``poll()`` and renders the
events; a finished job leaves its slot, and ``cancel_all`` ends every child process (scene
closed, Slicer closing). Qt-free, so tested with real child processes.
"""
from __future__ import annotations

from .i18n import tr as _
SLOTS = ("run", "train", "finetune", "probe")


class JobSlots:
    def __init__(self):
        self.jobs = dict.fromkeys(SLOTS)

    def __getitem__(self, slot: str):
        return self.jobs[slot]

    def start(self, slot: str, job) -> None:
        if self.jobs[slot] is not None:
            job.cancel(_("another job of this kind is running"))
            raise ValueError(_("a {slot} job is already running; cancel it first").format(slot=slot))
        self.jobs[slot] = job

    def poll(self) -> list:
        """(slot, job, finished) for every job that was running; finished ones leave their slot."""
        events = []
        for slot, job in self.jobs.items():
            if job is not None:
                finished = job.poll()
                if finished:
                    self.jobs[slot] = None
                events.append((slot, job, finished))
        return events

    def cancel(self, slot: str, reason: str) -> list:
        """Cancel the job in ``slot`` (if any) and empty the slot; returns it as a list (0 or 1)."""
        job, self.jobs[slot] = self.jobs[slot], None
        if job is None:
            return []
        job.cancel(reason)
        return [job]

    def cancel_all(self, reason: str) -> list:
        """Cancel every job and empty the slots; returns the jobs (finished, ``reason`` as message)."""
        cancelled = [job for job in self.jobs.values() if job is not None]
        for job in cancelled:
            job.cancel(reason)
        self.jobs = dict.fromkeys(SLOTS)
        return cancelled

    @property
    def idle(self) -> bool:
        return all(job is None for job in self.jobs.values())
