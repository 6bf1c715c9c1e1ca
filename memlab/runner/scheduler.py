"""The scheduler: service jobs and measured runs never overlap.

ARCHITECTURE.md, "Process model".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memlab.runner.runs import RunHandle


# ============================================================================================
class _Scheduler:
    """Orders the service worker's jobs and the measured runs (ARCHITECTURE.md, "Process model":
    the view never slows the run it measures, and on a 2-core laptop an estimate beside a
    timed step would). A job starts only while no run is in progress; a run's measured block
    begins only while no job runs (its build and warm-up, which are not measured, may overlap
    the job that was already running when it started)."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.runs: set[RunHandle] = set()  # runs in progress
        self.measuring: set[RunHandle] = set()  # runs past their gate
        self.job_running = False

    def run_started(self, handle: RunHandle) -> None:
        with self.cv:
            self.runs.add(handle)

    def run_ended(self, handle: RunHandle) -> None:
        with self.cv:
            self.runs.discard(handle)
            self.measuring.discard(handle)
            self.cv.notify_all()

    def begin_measuring(self, handle: RunHandle) -> bool:
        """Whether ``handle``'s measured block may begin now (no job running)."""
        with self.cv:
            if self.job_running:
                return False
            self.measuring.add(handle)
            return True

    @contextlib.contextmanager
    def gates_held(self) -> Iterator[bool]:
        """Hold every run's measured block at its gate while the block runs, as a service job
        does, so runs started inside it can be released together (``memlab.contention``: two
        runs whose timed passes must overlap). Yields whether it holds them: ``False`` when a
        job already runs, whose end opens the gates instead."""
        with self.cv:
            held = not self.job_running
            if held:
                self.job_running = True
        try:
            yield held
        finally:
            if held:
                with self.cv:
                    self.job_running = False
                    self.cv.notify_all()


_sched = _Scheduler()
