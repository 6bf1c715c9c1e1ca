"""Run an experiment in its own process and stream what it measures back while it runs.

    result = memlab.run(Experiment(workload="cnn", batch_size=64))
    handle = memlab.start(experiment, on_sample=print)   # returns at once
    handle.samples      # grows live: {"t", "tensor_bytes", "phase", "rss", "rss_anon", ...}
    handle.cancel(); handle.wait() -> RunResult

Why a process per run (ARCHITECTURE.md, "Process model"): the notebook's own memory would
pollute RSS, a crash or an out-of-memory must never take the kernel down, and each measurement
should start from a fresh allocator. The worker is started with ``spawn`` (a forked copy of a
kernel that has touched torch's thread pools is unsafe) and talks over a ``multiprocessing``
pipe.

Every run ends with a status: ``ok``; ``oom`` (over ``budget_bytes`` of tracked memory, or
killed past the hard RSS cap); ``error`` (an exception, or a worker that died: its last stderr
lines are in the message); ``cancelled``. The parent never waits on a dead or silent worker.

Torch-side helpers that are not measured runs (an estimate, an accuracy check) go to one
long-lived *service* worker through :func:`call` and :func:`submit`, so that torch is never
imported into the notebook's kernel (ARCHITECTURE.md, "Process model"). One scheduler orders
the two kinds of work: a job does not start while a run is in progress, and a run's measured block
does not begin while a job runs (a prediction must not take the cores a timed step is
measured on); runs still get a fresh process each ("measure in a fresh process").
"""

from __future__ import annotations

from memlab.runner.runs import RunHandle, run, shutdown_warm_worker, start, warm_up
from memlab.runner.service import Job, WorkerError, call, shutdown_service, submit

__all__ = [
    "Job",
    "RunHandle",
    "WorkerError",
    "call",
    "run",
    "shutdown_service",
    "shutdown_warm_worker",
    "start",
    "submit",
    "warm_up",
]
