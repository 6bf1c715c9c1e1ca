"""Memory-aware scheduling: several inference tasks share one memory budget, run for real.

    tasks = memlab.scheduling.mixed_tasks(n=8, seed=0)
    r = memlab.schedule(tasks, policy="memory-aware", budget_bytes=64 * 2**20)
    r.summary()   # deadline misses, p50/p99 latency, makespan, exact combined peak, oom count
    r.table()     # one row per task: start, end, latency, status, predicted vs measured peak
    results = memlab.scheduling.compare_policies(tasks, 64 * 2**20)   # the four on one mix

(``memlab.scheduling``, not ``memlab.schedule``: a submodule named like the public function
would replace it on the package once imported; see ``memlab.locality``.)

The picture. A machine has a memory budget (one GPU's memory, a board's RAM) and ``slots``
worker processes (default 2, the laptop's cores; one torch thread each). Tasks arrive over
time, each an inference ``Experiment`` (a model and a batch size) serving ``requests`` forward
passes, with a priority and a deadline. A *policy* picks which waiting task a free slot runs:

- ``fifo``: the earliest arrival first;
- ``priority``: the highest ``priority`` value first (ties: earliest arrival);
- ``edf``: the earliest absolute deadline (``arrival_s + deadline_s``) first;
- ``memory-aware``: FIFO order with *admission*: a task starts only if the predicted peaks of
  the running tasks plus its own fit the budget. When the oldest waiting task does not fit, a
  later one that does may pass it (backfilling: the slot would otherwise idle); the oldest
  starts as soon as enough memory is free. Each task is charged its predicted peak plus the
  estimator's tolerance (``ADMISSION_MARGIN``, 3%: ``tests/test_estimate.py``'s bar), so a
  prediction a little low cannot take the pool past the budget. A task that could never be
  admitted (its charge alone passes the budget) is refused up front with a ``ValueError``
  naming it, rather than waiting forever.

The first three never look at memory: when two big tasks run at once the pool runs out and the
one whose allocation does not fit fails with ``oom``, as on a real device.

Predicted peaks are ``memlab.estimate`` of each task's experiment (fake tensors, in the
service worker: ``memlab.jobs.estimate_each`` through ``memlab.runner.call``).

Enforcement, the shared budget. Each worker charges every CPU allocation it makes to one
counter in a ``multiprocessing.shared_memory`` block (``NativeSource.set_pool``, an atomic
``fetch_add`` in memlab's C++ allocator recorder, ``tracking/_alloc.cpp``): an allocation that
would take the pool past the budget raises ``torch.OutOfMemoryError`` in the task that asks,
before the memory is taken (``enforcement == "shared-pool"``, exact). Where the recorder cannot
be built (no C++ compiler: the profiler fallback) each worker instead publishes its live tensor
bytes in the block every 5 ms and limits itself to the budget minus what the others published
(``enforcement == "polled"``, approximate: a burst inside 5 ms, or the profiler's dispatch-level
view missing op-internal buffers, can pass the budget; the exact combined peak computed after
the fact says by how much, and a note flags it).

What is measured, exactly. Each worker records its allocation events (``time.monotonic`` ns,
system-wide ``CLOCK_MONOTONIC``, so every worker's events share one clock) from the moment a
task arrives in it until the task's memory is freed: the build, the requests, the teardown.
Merged over workers they give the combined tensor memory over time and its exact peak
(``peak_bytes``); the shared pool's own high-water mark is beside it (``pool_peak_bytes``).
A task's *measured peak* is ``memlab.track``'s peak over its requests (what ``memlab.estimate``
predicts and ``memlab.run`` measures: parameters, the request's input and its activations),
compared with the prediction per task. The request's input is the task's one synthetic batch
copied in for each request (the data set itself is kept as numpy, outside the budget: it is
the host's data, not the device's). Latency is ``end - arrival`` (waiting, building the model,
serving every request, freeing); the request times are taken inside the tracked block (the
tracker's cost, 3-18% of a small model's step, is in them: this lab compares policies, all
measured the same way).

Worker processes are spawned with ``memlab.runner.procs`` (the caller never imports torch),
kept warm for the whole schedule (and across the four policies of ``compare_policies``), and
killed at the end, on an error and on cancel; a task that fails with ``oom`` frees what it held
and its worker takes the next task; a worker that dies is replaced (its task is ``error``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memlab.timeline import _percentile

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import pandas as pd

    from memlab.config import Experiment
    from memlab.runner.procs import _Worker

__all__ = [
    "POLICIES",
    "TASK_STATUSES",
    "ENFORCEMENTS",
    "DEFAULT_BUDGET_BYTES",
    "ADMISSION_MARGIN",
    "Task",
    "TaskOutcome",
    "ScheduleResult",
    "ScheduleHandle",
    "mixed_tasks",
    "predict_peaks",
    "dispatch_order",
    "schedule",
    "start_schedule",
    "compare_policies",
    "policy_table",
    "run_alone",
    "service_times",
    "with_deadlines",
    "admission_floor",
]

POLICIES = ("fifo", "priority", "edf", "memory-aware")
#: ``done``: finished by its deadline; ``missed``: finished after it; ``oom``: an allocation did
#: not fit the budget; ``error``: the task raised or its worker died; ``cancelled``: the
#: schedule was cancelled (or timed out) before the task finished.
TASK_STATUSES = ("done", "missed", "oom", "error", "cancelled")
ENFORCEMENTS = ("shared-pool", "polled")
MIB = 2**20
#: The budget ``mixed_tasks`` is designed around: two MLPs (32 MiB of weights each), or the MLP
#: beside a large-batch transformer, do not fit together; every task fits alone.
DEFAULT_BUDGET_BYTES = 64 * MIB
#: Memory-aware admission charges each task its predicted peak times (1 + this): the
#: estimator's tolerance against measured peaks (tests/test_estimate.py, TOLERANCE).
ADMISSION_MARGIN = 0.03
_POLL_S = 0.02  # the parent's wait between looks at its workers, arrivals and cancel
_MEMORY_EVENT_S = 0.1  # how often on_event gets the pool's live bytes
_POLLED_S = 0.005  # polled enforcement: how often a worker publishes and re-reads
_TIMELINE_POINTS = 4000  # the stored combined timeline is reduced to about this many points
_BUILTIN = ("mlp", "cnn", "transformer")


# ============================================================================================
# Data (no torch)
@dataclass(frozen=True)
class Task:
    """One inference task: ``experiment`` (mode ``inference``, a built-in workload; its batch
    size is the task's) serving ``requests`` forward passes, arriving ``arrival_s`` seconds
    after the schedule starts, due ``deadline_s`` seconds after it arrives. A larger
    ``priority`` runs first under the ``priority`` policy."""

    name: str
    experiment: Experiment
    arrival_s: float = 0.0
    priority: int = 0
    deadline_s: float = 1.0
    requests: int = 5

    def __post_init__(self) -> None:
        from memlab.config import Experiment

        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Task name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.experiment, Experiment):
            raise TypeError(
                f"Task {self.name!r}: experiment must be a memlab.Experiment, "
                f"got {type(self.experiment).__name__}"
            )
        if self.experiment.mode != "inference":
            raise ValueError(
                f"Task {self.name!r}: experiment.mode must be 'inference' (a task serves "
                f"forward passes), got {self.experiment.mode!r}"
            )
        if self.experiment.workload_name not in _BUILTIN:
            raise ValueError(
                f"Task {self.name!r}: experiment.workload must be a built-in workload "
                f"({', '.join(_BUILTIN)}), got {self.experiment.workload_name!r}"
            )
        if self.experiment.device == "cuda":
            raise ValueError(f"Task {self.name!r}: tasks run on the CPU: device 'cpu' or 'auto'")
        for fname, lo in (("arrival_s", 0.0), ("deadline_s", 0.0)):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"Task {self.name!r}: {fname} must be a number, got {v!r}")
            if v < lo or (fname == "deadline_s" and v <= 0):
                raise ValueError(
                    f"Task {self.name!r}: {fname} must be "
                    f"{'> 0' if fname == 'deadline_s' else '>= 0'} seconds, got {v!r}"
                )
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ValueError(f"Task {self.name!r}: priority must be an int, got {self.priority!r}")
        if (
            isinstance(self.requests, bool)
            or not isinstance(self.requests, int)
            or self.requests < 1
        ):
            raise ValueError(
                f"Task {self.name!r}: requests must be an int >= 1, got {self.requests!r}"
            )

    @property
    def due_s(self) -> float:
        """The absolute deadline, seconds after the schedule's start."""
        return self.arrival_s + self.deadline_s

    @property
    def workload(self) -> str:
        return self.experiment.workload_name

    @property
    def batch_size(self) -> int:
        return int(self.experiment.batch_size)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["experiment"] = self.experiment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        from memlab.config import Experiment

        d = dict(d)
        d["experiment"] = Experiment.from_dict(d["experiment"])
        return cls(**d)


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one task, in seconds from the schedule's start. ``order``: the rank in
    which the policy dispatched it (0 first; ``None``: never started). ``measured_peak_bytes``:
    ``memlab.track``'s peak over its requests (``None`` if they did not all run);
    ``task_peak_bytes``: the most bytes it held at once over its whole life in the worker
    (build and teardown included), from its exact allocation events."""

    index: int
    name: str
    workload: str
    batch_size: int
    requests: int
    priority: int
    arrival_s: float
    deadline_s: float
    predicted_peak_bytes: int
    status: str
    order: int | None = None
    slot: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    measured_peak_bytes: int | None = None
    task_peak_bytes: int | None = None
    request_times_s: tuple[float, ...] = ()
    error: str | None = None

    @property
    def due_s(self) -> float:
        return self.arrival_s + self.deadline_s

    @property
    def latency_s(self) -> float | None:
        """Arrival to end (waiting included); ``None`` if it never ended."""
        return None if self.end_s is None else self.end_s - self.arrival_s

    @property
    def wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.arrival_s

    @property
    def completed(self) -> bool:
        return self.status in ("done", "missed")

    @property
    def met_deadline(self) -> bool:
        """Completed by its deadline (a failed task never met it)."""
        return self.status == "done"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["request_times_s"] = list(self.request_times_s)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskOutcome:
        d = dict(d)
        d["request_times_s"] = tuple(d.get("request_times_s", ()))
        return cls(**d)


@dataclass(frozen=True)
class ScheduleResult:
    """One schedule of ``tasks`` under ``policy`` with ``budget_bytes``, run for real.

    ``status``: ``ok``, ``cancelled`` or ``error`` (then ``error`` says why). ``timeline_s`` and
    ``timeline_bytes``: the combined tensor memory of every worker over time (a step function,
    reduced to about 4000 points keeping each bin's maximum); ``peak_bytes`` its exact peak
    over every event; ``pool_peak_bytes`` the shared pool's own high-water mark (``None`` under
    polled enforcement)."""

    policy: str
    budget_bytes: int
    slots: int
    enforcement: str
    source: str
    tasks: tuple[TaskOutcome, ...]
    status: str = "ok"
    error: str | None = None
    peak_bytes: int = 0
    pool_peak_bytes: int | None = None
    timeline_s: tuple[float, ...] = ()
    timeline_bytes: tuple[int, ...] = ()
    makespan_s: float | None = None
    pids: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    # -- derived ----------------------------------------------------------------------------
    @property
    def oom_count(self) -> int:
        return sum(t.status == "oom" for t in self.tasks)

    @property
    def deadline_misses(self) -> int:
        """Tasks that did not complete by their deadline: late ones and failed ones."""
        return sum(not t.met_deadline for t in self.tasks)

    @property
    def late_count(self) -> int:
        """Tasks that completed, but after their deadline."""
        return sum(t.status == "missed" for t in self.tasks)

    @property
    def latencies_s(self) -> list[float]:
        """Latency of each completed task (a failed task has none)."""
        return [t.latency_s for t in self.tasks if t.completed and t.latency_s is not None]

    @property
    def p50_latency_s(self) -> float | None:
        return _percentile(self.latencies_s, 50)

    @property
    def p99_latency_s(self) -> float | None:
        return _percentile(self.latencies_s, 99)

    @property
    def over_budget(self) -> bool:
        """The exact combined peak passed the budget (possible under polled enforcement)."""
        return self.peak_bytes > self.budget_bytes

    def start_order(self) -> list[str]:
        """Task names in the order the policy dispatched them."""
        started = [t for t in self.tasks if t.order is not None]
        return [t.name for t in sorted(started, key=lambda t: t.order or 0)]

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "status": self.status,
            "tasks": len(self.tasks),
            "deadline_misses": self.deadline_misses,
            "late": self.late_count,
            "oom": self.oom_count,
            "p50_latency_s": self.p50_latency_s,
            "p99_latency_s": self.p99_latency_s,
            "makespan_s": self.makespan_s,
            "peak_bytes": self.peak_bytes,
            "pool_peak_bytes": self.pool_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "enforcement": self.enforcement,
        }

    def table(self) -> pd.DataFrame:
        """One row per task, in the order given."""
        import pandas as pd

        rows = []
        for t in self.tasks:
            rows.append(
                {
                    "task": t.name,
                    "workload": t.workload,
                    "batch_size": t.batch_size,
                    "requests": t.requests,
                    "priority": t.priority,
                    "arrival_s": t.arrival_s,
                    "due_s": t.due_s,
                    "order": t.order,
                    "start_s": t.start_s,
                    "end_s": t.end_s,
                    "latency_s": t.latency_s,
                    "status": t.status,
                    "predicted_peak_bytes": t.predicted_peak_bytes,
                    "measured_peak_bytes": t.measured_peak_bytes,
                    "task_peak_bytes": t.task_peak_bytes,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["tasks"] = [t.to_dict() for t in self.tasks]
        for k in ("timeline_s", "timeline_bytes", "pids", "notes"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScheduleResult:
        d = dict(d)
        d["tasks"] = tuple(TaskOutcome.from_dict(t) for t in d["tasks"])
        for k in ("timeline_s", "timeline_bytes", "pids", "notes"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)

    def __repr__(self) -> str:
        from memlab.timeline import format_bytes

        p99 = self.p99_latency_s
        return (
            f"ScheduleResult({self.policy}, {self.status}, misses={self.deadline_misses}/"
            f"{len(self.tasks)}, oom={self.oom_count}, p99="
            f"{'n/a' if p99 is None else f'{p99:.2f} s'}, peak={format_bytes(self.peak_bytes)} "
            f"of {format_bytes(self.budget_bytes)}, {self.enforcement})"
        )


def policy_table(results: Mapping[str, ScheduleResult]) -> pd.DataFrame:
    """One row per policy: ``ScheduleResult.summary()``."""
    import pandas as pd

    return pd.DataFrame([r.summary() for r in results.values()])


# ============================================================================================
# Pure helpers
def mixed_tasks(
    n: int = 8, seed: int = 0, *, requests: tuple[int, int] = (4, 10), spread_s: float = 1.0
) -> list[Task]:
    """A seeded mix of ``n`` inference tasks over the three built-in models and batch sizes 8
    to 128, designed against ``DEFAULT_BUDGET_BYTES`` (64 MiB): every task fits alone, the
    whole mix does not (the MLP's weights alone are 32 MiB: two MLPs never fit together, nor
    the MLP beside a transformer at batch 128), so the policies differ. Models cycle
    mlp, transformer, cnn (so ``n >= 4`` holds two MLPs); batch sizes, requests (in the
    inclusive range ``requests``), priorities (0-3), arrivals (spread over ``spread_s``
    seconds) and deadlines (0.5-3 s) are drawn from ``random.Random(seed)``."""
    import random

    from memlab.config import Experiment

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    lo, hi = requests
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError("requests must be a (low, high) pair of ints with 1 <= low <= high")
    if not isinstance(spread_s, (int, float)) or spread_s < 0:
        raise ValueError(f"spread_s must be a number of seconds >= 0, got {spread_s!r}")
    rng = random.Random(seed)
    batches = {"mlp": (8, 32, 64), "transformer": (16, 64, 128), "cnn": (16, 64, 128)}
    order = ("mlp", "transformer", "cnn")
    out = []
    for i in range(n):
        w = order[i % 3]
        b = rng.choice(batches[w])
        exp = Experiment(
            workload=w, mode="inference", batch_size=b, data_size=b, device="cpu", seed=seed
        )
        out.append(
            Task(
                name=f"{i}-{w}-b{b}",
                experiment=exp,
                arrival_s=round(rng.uniform(0.0, spread_s), 3) if i else 0.0,
                priority=rng.randint(0, 3),
                deadline_s=round(rng.uniform(0.5, 3.0), 2),
                requests=rng.randint(lo, hi),
            )
        )
    return out


def _admitted_bytes(predicted: int) -> int:
    return int(math.ceil(predicted * (1.0 + ADMISSION_MARGIN)))


def _pick(
    queue: Sequence[int],
    tasks: Sequence[Task],
    policy: str,
    *,
    predicted: Sequence[int],
    running: Sequence[int],
    budget: int,
) -> int | None:
    """The waiting task (an index into ``tasks``) a free slot runs next under ``policy``, or
    ``None`` (nothing waits, or under memory-aware admission nothing fits beside ``running``)."""
    if not queue:
        return None
    if policy == "fifo":
        return min(queue, key=lambda i: (tasks[i].arrival_s, i))
    if policy == "priority":
        return min(queue, key=lambda i: (-tasks[i].priority, tasks[i].arrival_s, i))
    if policy == "edf":
        return min(queue, key=lambda i: (tasks[i].due_s, tasks[i].arrival_s, i))
    if policy == "memory-aware":
        used = sum(_admitted_bytes(predicted[j]) for j in running)
        for i in sorted(queue, key=lambda i: (tasks[i].arrival_s, i)):
            if used + _admitted_bytes(predicted[i]) <= budget:
                return i
        return None
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")


def dispatch_order(
    tasks: Sequence[Task], policy: str, predicted: Sequence[int] | None = None, budget: int = 0
) -> list[str]:
    """The order ``policy`` would dispatch ``tasks`` if they all waited at once and one slot
    took them one after another (a prediction: the measured order is
    ``ScheduleResult.start_order``). ``predicted``/``budget`` only matter for memory-aware."""
    queue = list(range(len(tasks)))
    pred = list(predicted) if predicted is not None else [0] * len(tasks)
    out = []
    while queue:
        i = _pick(queue, tasks, policy, predicted=pred, running=[], budget=budget or 2**62)
        assert i is not None
        queue.remove(i)
        out.append(tasks[i].name)
    return out


def _check_args(tasks: object, policy: object, budget_bytes: object, slots: object) -> list[Task]:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive int (bytes), got {budget_bytes!r}")
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 16:
        raise ValueError(f"slots must be an int from 1 to 16 (worker processes), got {slots!r}")
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or not tasks:
        raise ValueError("tasks must be a non-empty list of memlab.scheduling.Task")
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise TypeError(f"tasks[{i}] must be a memlab.scheduling.Task, got {type(t).__name__}")
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"task names must be unique; repeated: {', '.join(dup)}")
    return list(tasks)


def _check_admissible(tasks: Sequence[Task], predicted: Sequence[int], budget: int) -> None:
    from memlab.timeline import format_bytes

    for i, (t, p) in enumerate(zip(tasks, predicted, strict=True)):
        if _admitted_bytes(p) > budget:
            raise ValueError(
                f"budget_bytes ({budget}, {format_bytes(budget)}) is too small for tasks[{i}] "
                f"{t.name!r}: memory-aware admission charges it {_admitted_bytes(p)} bytes "
                f"(predicted peak {format_bytes(p)} + {ADMISSION_MARGIN:.0%} estimator "
                "tolerance), so it could never start; raise the budget or drop the task"
            )


def _run_experiment(exp: Experiment) -> Experiment:
    """What a task's worker builds: one batch of synthetic data, loaded in this process."""
    return exp.replace(data="ram", data_size=exp.batch_size, num_workers=0, device="cpu")


def predict_peaks(tasks: Sequence[Task], *, timeout_s: float = 300.0) -> list[int]:
    """``memlab.estimate(...).peak_bytes`` of each task's experiment (each distinct one once),
    in the service worker (this process never imports torch)."""
    from memlab import jobs
    from memlab.runner import service

    exps = [_run_experiment(t.experiment) for t in tasks]
    distinct: list[Experiment] = []
    for e in exps:
        if e not in distinct:
            distinct.append(e)
    ests = service.call(jobs.estimate_each, distinct, timeout_s=timeout_s)
    peaks = {e: int(est.peak_bytes) for e, est in zip(distinct, ests, strict=True)}
    return [peaks[e] for e in exps]


def _reduce(t: Any, b: Any, points: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """A step function of many events as about ``points`` points: per time bin its first and
    its largest value (the peak survives the reduction)."""
    import numpy as np

    if len(t) <= points:
        return tuple(float(v) for v in t), tuple(int(v) for v in b)
    edges = np.linspace(t[0], t[-1], points // 2 + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    ts: list[float] = []
    bs: list[int] = []
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], len(t)]
    for s, e in zip(starts, ends, strict=True):
        k = s + int(np.argmax(b[s:e]))
        ts.append(float(t[s]))
        bs.append(int(b[s]))
        if k != s:
            ts.append(float(t[k]))
            bs.append(int(b[k]))
    return tuple(ts), tuple(bs)


# ============================================================================================
# The worker (torch lives here only)
def _slot_main(conn: Connection, cancel: Any, stderr_path: str, *, spec: dict[str, Any]) -> None:
    """Entry point of one slot's worker (spawned by ``memlab.runner.procs._spawn``)."""
    import faulthandler
    import sys

    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives with the process
    faulthandler.enable()
    try:
        _slot_body(conn, spec)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone or stopped us
    except BaseException as e:  # noqa: BLE001 - report, never hang the parent
        import traceback

        try:
            conn.send(("fatal", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"))
        except OSError:
            pass


def _slot_body(conn: Connection, spec: dict[str, Any]) -> None:
    import gc
    from multiprocessing.shared_memory import SharedMemory

    import numpy as np
    import torch

    from memlab.config import Experiment
    from memlab.tracking.sources import NativeSource, default_source

    torch.set_num_threads(int(spec["threads"]))
    slot, nslots = int(spec["slot"]), int(spec["slots"])
    source: Any = default_source()
    shm = SharedMemory(name=spec["pool"])
    arr = np.ndarray((3 + nslots,), dtype=np.int64, buffer=shm.buf)
    assert shm.buf is not None
    addr = ctypes.addressof(ctypes.c_int64.from_buffer(shm.buf))
    native = isinstance(source, NativeSource) and source.supports_pool
    enforcement = "shared-pool" if native and spec["enforcement"] != "polled" else "polled"
    if enforcement == "shared-pool" and arr[3 + slot] != 0:
        # A replaced worker: give back what the dead one in this slot still had charged.
        source.pool_add(addr, slot, -int(arr[3 + slot]))
    arr[3 + slot] = 0 if enforcement == "polled" else arr[3 + slot]
    # First-call costs (oneDNN primitives, lazy module init) are not the first task's: one
    # request of each workload at batch 1 before the pool is charged.
    for name in spec["warm"]:
        e = Experiment(workload=name, mode="inference", batch_size=1, data_size=1, device="cpu")
        w = _build(e)
        x, _ = next(w.make_batches(1))
        w.infer(x)
        del w, x
    gc.collect()
    base = source.live()
    if enforcement == "shared-pool":
        source.set_pool(addr, slot)
    stop = threading.Event()
    if enforcement == "polled":
        threading.Thread(
            target=_publish, args=(source, arr, slot, nslots, base, stop), daemon=True
        ).start()
    conn.send(("ready", os.getpid(), enforcement, source.name))
    while True:
        msg = conn.recv()
        if msg[0] != "task":
            break
        _, idx, exp_d, requests = msg
        out = _run_task(source, Experiment.from_dict(exp_d), int(requests))
        conn.send(("done", idx, out))
    stop.set()


def _publish(source: Any, arr: Any, slot: int, nslots: int, base: int, stop: Any) -> None:
    """Polled enforcement: publish this worker's live bytes, and limit them to the budget minus
    what the other workers published (``set_limit``: an allocation past it raises OOM)."""
    while not stop.wait(_POLLED_S):
        arr[3 + slot] = max(0, source.live() - base)
        others = int(sum(int(arr[3 + j]) for j in range(nslots) if j != slot))
        budget = int(arr[2])
        source.set_limit(0 if budget <= 0 else max(1, base + budget - others))


def _build(exp: Experiment) -> Any:
    from memlab.knobs import build_experiment

    return build_experiment(exp, "cpu")


def _run_task(source: Any, exp: Experiment, requests: int) -> dict[str, Any]:
    """Build, serve ``requests`` requests (tracked), free; everything the task allocated is in
    the returned events (``t_ns``, ``delta``)."""
    import gc

    import numpy as np
    import torch

    from memlab.tracking import track
    from memlab.tracking.sources import _paired_frees

    t_start = time.monotonic()
    source.begin()
    p0 = source.position()
    status, error = "done", None
    times: list[float] = []
    measured: int | None = None
    w: Any = None
    rec: Any = None
    try:
        w = _build(exp)
        x0, _ = next(w.make_batches(1))
        x_np = x0.numpy().copy()  # the host's data: numpy, outside the allocator's budget
        del x0
        w.make_batches = None  # the data set (one batch) goes with its loader
        gc.collect()
        with track(w.model, sample_interval_s=None) as rec:
            for _ in range(requests):
                x = torch.from_numpy(x_np).clone()  # the request's input, charged to the task
                t0 = time.perf_counter()
                y = w.infer(x)
                times.append(time.perf_counter() - t0)
                del x, y
        if rec.result is not None:
            measured = int(rec.result.peak_bytes)
    except torch.OutOfMemoryError as e:
        status, error = "oom", str(e).splitlines()[0]
    except Exception as e:  # noqa: BLE001 - a failing task is a result
        status, error = "error", f"{type(e).__name__}: {e}"
    finally:
        # Everything the task held goes now, inside the recorded window (the tracker holds the
        # model: it goes too).
        w = rec = None
        gc.collect()
    if status == "done" and len(times) != requests:
        measured = None
    p1 = source.position()
    ev = source.events(p0, p1)
    source.end()
    t_end = time.monotonic()
    ev = ev[_paired_frees(ev)] if len(ev) else ev
    ev = ev[np.argsort(ev[:, 0], kind="stable")] if len(ev) else ev
    return {
        "status": status,
        "error": error,
        "t_start": t_start,
        "t_end": t_end,
        "times": times,
        "measured": measured,
        "t_ns": np.ascontiguousarray(ev[:, 0]) if len(ev) else np.zeros(0, np.int64),
        "delta": np.ascontiguousarray(ev[:, 2]) if len(ev) else np.zeros(0, np.int64),
    }


# ============================================================================================
# The parent (the caller's process: no torch)
@dataclass(eq=False)
class _Slot:
    worker: _Worker
    ready: bool = False
    task: int | None = None
    pid: int = 0


class _Pool:
    """``slots`` warm workers and the shared block they charge. Always ``close()``d."""

    def __init__(self, slots: int, warm: Sequence[str], enforcement: str, threads: int) -> None:
        from multiprocessing.shared_memory import SharedMemory

        import numpy as np

        self.n = slots
        self.warm = list(warm)
        self.threads = threads
        self.want = enforcement
        self.shm = SharedMemory(create=True, size=8 * (3 + slots))
        self.arr = np.ndarray((3 + slots,), dtype=np.int64, buffer=self.shm.buf)
        self.arr[:] = 0
        self.slots: list[_Slot] = []
        self.pids: list[int] = []
        self.enforcement: str | None = None
        self.source: str | None = None
        try:
            for i in range(slots):
                self.slots.append(self._spawn(i))
        except BaseException:
            self.close()
            raise

    def _spawn(self, i: int) -> _Slot:
        from memlab.runner.procs import _spawn

        spec = {
            "slot": i,
            "slots": self.n,
            "pool": self.shm.name,
            "warm": self.warm,
            "threads": self.threads,
            "enforcement": self.want,
        }
        w = _spawn(functools.partial(_slot_main, spec=spec), f"memlab-slot-{i}")
        self.pids.append(int(w.process.pid))
        return _Slot(w, pid=int(w.process.pid))

    def respawn(self, i: int) -> None:
        from memlab.runner.procs import _kill

        _kill(self.slots[i].worker)
        self.slots[i] = self._spawn(i)

    def on_ready(self, i: int, msg: tuple[Any, ...]) -> None:
        s = self.slots[i]
        s.ready, s.pid = True, int(msg[1])
        self.enforcement, self.source = str(msg[2]), str(msg[3])

    def wait_ready(self, deadline: float, cancelled: Callable[[], bool]) -> None:
        from multiprocessing.connection import wait

        while not all(s.ready for s in self.slots):
            if cancelled():
                raise _Stop("cancelled")
            if time.monotonic() > deadline:
                raise _Stop("timed out waiting for the workers to start")
            for i, s in enumerate(self.slots):
                if s.ready:
                    continue
                ready = wait([s.worker.conn, s.worker.process.sentinel], timeout=_POLL_S)
                if s.worker.conn in ready:
                    msg = s.worker.conn.recv()
                    if msg[0] == "ready":
                        self.on_ready(i, msg)
                    elif msg[0] == "fatal":
                        raise RuntimeError(f"scheduling worker {i} could not start: {msg[1]}")
                elif ready:
                    raise RuntimeError(f"scheduling worker {i} died while starting: {_death(s)}")

    def reset(self, budget: int) -> None:
        """A new schedule: the pool's peak from its current bytes, the budget as its limit."""
        self.arr[1] = self.arr[0]
        self.arr[2] = budget

    @property
    def live(self) -> int:
        if self.enforcement == "polled":
            return int(self.arr[3:].sum())
        return int(self.arr[0])

    def close(self) -> None:
        from memlab.runner.procs import _kill

        for s in self.slots:
            try:
                s.worker.conn.send(("stop",))
            except OSError:
                pass
        for s in self.slots:
            _kill(s.worker)
        self.slots = []
        del self.arr
        self.shm.close()
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


class _Stop(Exception):
    pass


def _death(s: _Slot) -> str:
    from memlab.runner.procs import _stderr_tail

    s.worker.process.join(timeout=1)
    code = s.worker.process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    tail = _stderr_tail(s.worker.stderr_path)
    return f"worker died ({how})" + (f"; its last stderr lines:\n{tail}" if tail else "")


def _emit(on_event: Callable[[dict[str, Any]], None] | None, notes: list[str], ev: dict) -> None:
    if on_event is None:
        return
    try:
        on_event(ev)
    except Exception as e:  # noqa: BLE001 - a view's failure must not stop the schedule
        msg = f"on_event raised {type(e).__name__}: {e} (the schedule went on)"
        if msg not in notes:
            notes.append(msg)


def _run_on_pool(
    pool: _Pool,
    tasks: Sequence[Task],
    predicted: Sequence[int],
    policy: str,
    budget: int,
    *,
    on_event: Callable[[dict[str, Any]], None] | None,
    cancelled: Callable[[], bool],
    deadline: float,
) -> ScheduleResult:
    from multiprocessing.connection import wait

    import numpy as np

    n = len(tasks)
    notes: list[str] = []
    leftover = pool.live
    if leftover:
        notes.append(f"{leftover} bytes were still charged to the pool from before this schedule")
    pool.reset(budget)
    pending = sorted(range(n), key=lambda i: (tasks[i].arrival_s, i))
    queue: list[int] = []
    info: list[dict[str, Any]] = [{"status": None} for _ in range(n)]
    seq = 0
    t0 = time.monotonic()
    last_mem = 0.0
    status, error = "ok", None
    base = {"policy": policy}

    def finish(i: int, st: str, **kw: Any) -> None:
        info[i].update(kw, status=st)
        _emit(
            on_event,
            notes,
            {
                **base,
                "kind": "ended",
                "task": tasks[i].name,
                "index": i,
                "status": st,
                "t": kw.get("end_s", time.monotonic() - t0),
            },
        )

    try:
        while any(d["status"] is None for d in info):
            now = time.monotonic() - t0
            if cancelled():
                raise _Stop("cancelled")
            if time.monotonic() > deadline:
                raise _Stop("timed out")
            while pending and tasks[pending[0]].arrival_s <= now:
                i = pending.pop(0)
                queue.append(i)
                _emit(
                    on_event,
                    notes,
                    {**base, "kind": "arrived", "task": tasks[i].name, "index": i, "t": now},
                )
            running = [j for j in (s.task for s in pool.slots) if j is not None]
            for k, s in enumerate(pool.slots):
                if not s.ready or s.task is not None:
                    continue
                pick = _pick(
                    queue, tasks, policy, predicted=predicted, running=running, budget=budget
                )
                if pick is None:
                    break
                i = pick
                queue.remove(i)
                running.append(i)
                s.task = i
                info[i].update(order=seq, slot=k, dispatched_s=now)
                seq += 1
                exp = _run_experiment(tasks[i].experiment)
                s.worker.conn.send(("task", i, exp.to_dict(), tasks[i].requests))
                _emit(
                    on_event,
                    notes,
                    {
                        **base,
                        "kind": "started",
                        "task": tasks[i].name,
                        "index": i,
                        "slot": k,
                        "t": now,
                    },
                )
            if now - last_mem >= _MEMORY_EVENT_S:
                last_mem = now
                _emit(on_event, notes, {**base, "kind": "memory", "t": now, "bytes": pool.live})
            wait_s = _POLL_S
            if pending:
                wait_s = max(0.0, min(wait_s, tasks[pending[0]].arrival_s - now))
            objs: list[Any] = []
            for s in pool.slots:
                objs += [s.worker.conn, s.worker.process.sentinel]
            ready = wait(objs, timeout=wait_s)
            for k, s in enumerate(pool.slots):
                if s.worker.conn in ready or (
                    s.worker.process.sentinel in ready and s.worker.conn.poll()
                ):
                    try:
                        msg = s.worker.conn.recv()
                    except (EOFError, OSError):
                        msg = ("dead",)
                else:
                    msg = ("dead",) if s.worker.process.sentinel in ready else None
                if msg is None:
                    continue
                if msg[0] == "ready":
                    pool.on_ready(k, msg)
                elif msg[0] == "done":
                    i, out = int(msg[1]), msg[2]
                    s.task = None
                    start_s, end_s = out["t_start"] - t0, out["t_end"] - t0
                    st = out["status"]
                    if st == "done" and end_s > tasks[i].due_s:
                        st = "missed"
                    info[i].update(events=(out["t_ns"], out["delta"]))
                    finish(
                        i,
                        st,
                        start_s=start_s,
                        end_s=end_s,
                        times=tuple(out["times"]),
                        measured=out["measured"],
                        error=out["error"],
                    )
                elif msg[0] in ("dead", "fatal"):
                    why = _death(s) if msg[0] == "dead" else str(msg[1])
                    if s.task is not None:
                        finish(
                            s.task, "error", error=f"slot {k}: {why}", end_s=time.monotonic() - t0
                        )
                        s.task = None
                    notes.append(f"slot {k}'s worker was replaced: {why.splitlines()[0]}")
                    pool.respawn(k)
    except _Stop as e:
        status = "cancelled"
        error = str(e)
    except BaseException as e:
        status, error = "error", f"{type(e).__name__}: {e}"
        raise
    finally:
        if status != "ok":
            for d in info:
                if d["status"] is None:
                    d["status"] = "cancelled"

    # -- the combined memory, exact, from every task's events ----------------------------------
    ts = [d["events"][0] for d in info if "events" in d]
    ds = [d["events"][1] for d in info if "events" in d]
    task_peaks: dict[int, int] = {}
    for i, d in enumerate(info):
        if "events" in d and len(d["events"][1]):
            task_peaks[i] = int(np.cumsum(d["events"][1]).max())
    peak = 0
    tl_s: tuple[float, ...] = ()
    tl_b: tuple[int, ...] = ()
    if ts and sum(len(t) for t in ts):
        t_all = np.concatenate(ts)
        d_all = np.concatenate(ds)
        order = np.argsort(t_all, kind="stable")
        t_all = (t_all[order] / 1e9) - t0
        b_all = np.cumsum(d_all[order])
        peak = int(b_all.max())
        tl_s, tl_b = _reduce(np.r_[0.0, t_all], np.r_[0, b_all], _TIMELINE_POINTS)
    outcomes = []
    for i, t in enumerate(tasks):
        d = info[i]
        outcomes.append(
            TaskOutcome(
                index=i,
                name=t.name,
                workload=t.workload,
                batch_size=t.batch_size,
                requests=t.requests,
                priority=t.priority,
                arrival_s=float(t.arrival_s),
                deadline_s=float(t.deadline_s),
                predicted_peak_bytes=int(predicted[i]),
                status=str(d["status"]),
                order=d.get("order"),
                slot=d.get("slot"),
                start_s=d.get("start_s"),
                end_s=d.get("end_s"),
                measured_peak_bytes=d.get("measured"),
                task_peak_bytes=task_peaks.get(i),
                request_times_s=tuple(d.get("times", ())),
                error=d.get("error"),
            )
        )
    ends = [o.end_s for o in outcomes if o.end_s is not None]
    enforcement = pool.enforcement or "shared-pool"
    if enforcement == "polled":
        notes.append(
            "enforcement polled: each worker limited itself to the budget minus what the others "
            f"published every {_POLLED_S * 1e3:.0f} ms (memlab's C++ recorder is not built "
            "here); approximate: the exact combined peak below says whether it held"
        )
    if peak > budget:
        notes.append(
            f"the exact combined peak ({peak} bytes) passed the budget ({budget} bytes): "
            + (
                "the polled monitor missed a burst"
                if enforcement == "polled"
                else "events of different processes are ordered by their timestamps, taken "
                "just after each allocation: a free and an allocation in two workers within "
                "microseconds can swap (the pool's own counter is exact: pool_peak_bytes)"
            )
        )
    return ScheduleResult(
        policy=policy,
        budget_bytes=budget,
        slots=pool.n,
        enforcement=enforcement,
        source=pool.source or "unknown",
        tasks=tuple(outcomes),
        status=status,
        error=error,
        peak_bytes=peak,
        pool_peak_bytes=int(pool.arr[1]) if enforcement == "shared-pool" else None,
        timeline_s=tl_s,
        timeline_bytes=tl_b,
        makespan_s=max(ends) if ends else None,
        pids=tuple(pool.pids),
        notes=tuple(notes),
    )


def _schedule_all(
    tasks: Sequence[Task],
    policies: Sequence[str],
    budget_bytes: int,
    *,
    slots: int,
    predicted: Sequence[int] | None,
    on_event: Callable[[dict[str, Any]], None] | None,
    cancelled: Callable[[], bool],
    timeout_s: float,
    enforcement: str,
    threads: int,
) -> dict[str, ScheduleResult]:
    deadline = time.monotonic() + timeout_s
    pred = list(predicted) if predicted is not None else predict_peaks(tasks)
    if len(pred) != len(tasks):
        raise ValueError(f"predicted must have one peak per task ({len(tasks)}), got {len(pred)}")
    if "memory-aware" in policies:
        _check_admissible(tasks, pred, budget_bytes)
    warm = sorted({t.workload for t in tasks})
    pool = _Pool(slots, warm, enforcement, threads)
    out: dict[str, ScheduleResult] = {}
    try:
        pool.wait_ready(deadline, cancelled)
        for p in policies:
            out[p] = _run_on_pool(
                pool,
                tasks,
                pred,
                p,
                budget_bytes,
                on_event=on_event,
                cancelled=cancelled,
                deadline=deadline,
            )
            if out[p].status != "ok":
                break
    except _Stop as e:
        for p in policies:
            if p not in out:
                out[p] = _unstarted(tasks, pred, p, budget_bytes, slots, str(e), pool.pids)
                break
    finally:
        pool.close()
    return out


def _unstarted(
    tasks: Sequence[Task],
    pred: Sequence[int],
    policy: str,
    budget: int,
    slots: int,
    why: str,
    pids: Sequence[int],
) -> ScheduleResult:
    return ScheduleResult(
        policy=policy,
        budget_bytes=budget,
        slots=slots,
        enforcement="shared-pool",
        source="unknown",
        tasks=tuple(
            TaskOutcome(
                i,
                t.name,
                t.workload,
                t.batch_size,
                t.requests,
                t.priority,
                float(t.arrival_s),
                float(t.deadline_s),
                int(pred[i]),
                "cancelled",
            )
            for i, t in enumerate(tasks)
        ),
        status="cancelled",
        error=why,
        pids=tuple(pids),
    )


def _check_common(
    on_event: object, timeout_s: object, enforcement: object, threads: object
) -> None:
    if on_event is not None and not callable(on_event):
        raise TypeError(f"on_event must be callable or None, got {type(on_event).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if enforcement not in ("auto", "polled"):
        raise ValueError(f"enforcement must be 'auto' or 'polled', got {enforcement!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1 (torch threads per worker), got {threads!r}")


class ScheduleHandle:
    """A schedule in progress (``start_schedule``): ``cancel()``, ``wait()``, ``result``."""

    def __init__(self, run: Callable[[Callable[[], bool]], ScheduleResult]) -> None:
        self._cancel = threading.Event()
        self._done = threading.Event()
        self.result: ScheduleResult | None = None
        self.exception: BaseException | None = None

        def body() -> None:
            try:
                self.result = run(self._cancel.is_set)
            except BaseException as e:  # noqa: BLE001 - raised in wait()
                self.exception = e
            finally:
                self._done.set()

        self._thread = threading.Thread(target=body, name="memlab-schedule", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop: every worker is killed, unfinished tasks end ``cancelled``."""
        self._cancel.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> ScheduleResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"schedule still going after {timeout} s (cancel() stops it)")
        if self.exception is not None:
            raise self.exception
        assert self.result is not None
        return self.result


def start_schedule(
    tasks: Sequence[Task],
    policy: str = "fifo",
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    slots: int = 2,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    predicted: Sequence[int] | None = None,
    timeout_s: float = 600.0,
    enforcement: str = "auto",
    threads: int = 1,
) -> ScheduleHandle:
    """``schedule`` in a background thread; returns at once (see ``schedule``)."""
    tasks = _check_args(tasks, policy, budget_bytes, slots)
    _check_common(on_event, timeout_s, enforcement, threads)

    def run(cancelled: Callable[[], bool]) -> ScheduleResult:
        return _schedule_all(
            tasks,
            [policy],
            budget_bytes,
            slots=slots,
            predicted=predicted,
            on_event=on_event,
            cancelled=cancelled,
            timeout_s=timeout_s,
            enforcement=enforcement,
            threads=threads,
        )[policy]

    return ScheduleHandle(run)


def schedule(
    tasks: Sequence[Task],
    policy: str = "fifo",
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    slots: int = 2,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    predicted: Sequence[int] | None = None,
    timeout_s: float = 600.0,
    enforcement: str = "auto",
    threads: int = 1,
) -> ScheduleResult:
    """Run ``tasks`` under ``policy`` (``fifo``, ``priority``, ``edf``, ``memory-aware``) on
    ``slots`` worker processes sharing ``budget_bytes`` of tensor memory; see the module doc.

    ``on_event(event)`` is called from a background thread for live views: ``{"kind":
    "arrived" | "started" | "ended" | "memory", "policy", "t" (s from the start), "task",
    "index", "slot", "status", "bytes"}`` (the keys each kind has). ``predicted``: the tasks'
    predicted peaks (default: ``predict_peaks``). ``enforcement="polled"`` forces the polled
    budget even where the shared pool is available (to compare them). ``threads``: torch's
    threads per worker. Never raises for a failing task (its status says); raises
    ``ValueError`` for bad input, naming the field."""
    return start_schedule(
        tasks,
        policy,
        budget_bytes=budget_bytes,
        slots=slots,
        on_event=on_event,
        predicted=predicted,
        timeout_s=timeout_s,
        enforcement=enforcement,
        threads=threads,
    ).wait()


def compare_policies(
    tasks: Sequence[Task],
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    *,
    policies: Sequence[str] = POLICIES,
    slots: int = 2,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    predicted: Sequence[int] | None = None,
    timeout_s: float = 900.0,
    enforcement: str = "auto",
    threads: int = 1,
) -> dict[str, ScheduleResult]:
    """Each of ``policies`` on the same ``tasks`` and budget, one after another on the same
    warm workers (the predictions made once): ``{policy: ScheduleResult}``; ``policy_table``
    turns it into one row per policy."""
    if isinstance(policies, str) or not policies:
        raise ValueError(f"policies must be a non-empty list of {', '.join(POLICIES)}")
    for p in policies:
        _check_args(tasks, p, budget_bytes, slots)
    _check_common(on_event, timeout_s, enforcement, threads)
    return _schedule_all(
        list(tasks),
        list(policies),
        budget_bytes,
        slots=slots,
        predicted=predicted,
        on_event=on_event,
        cancelled=lambda: False,
        timeout_s=timeout_s,
        enforcement=enforcement,
        threads=threads,
    )


# ============================================================================================
# Deadlines that mean the same on any machine (lab 09, `memlab schedule --slack`)
def run_alone(tasks: Sequence[Task], predicted: Sequence[int]) -> ScheduleResult:
    """Every task alone, one after the other (all arrived at 0, one slot, a budget twice their
    sum): the service times the deadlines are set from."""
    return schedule(
        [dataclasses.replace(t, arrival_s=0.0) for t in tasks],
        "fifo",
        budget_bytes=2 * sum(predicted),
        slots=1,
        predicted=predicted,
    )


def service_times(result: ScheduleResult) -> list[float]:
    """Each task's time in its worker (end - start), from a schedule that ran them all."""
    out = []
    for t in result.tasks:
        if t.start_s is None or t.end_s is None or t.status in ("oom", "error", "cancelled"):
            raise ValueError(f"task {t.name!r} did not complete ({t.status}): no service time")
        out.append(t.end_s - t.start_s)
    return out


def with_deadlines(
    tasks: Sequence[Task],
    service_s: Sequence[float],
    *,
    slack: tuple[float, float] = (1.5, 4.0),
    seed: int = 0,
) -> list[Task]:
    """``tasks`` with each deadline ``slack`` x its measured service time (the factor drawn per
    task, seeded): deadlines that mean the same on a fast and a slow machine."""
    rng = random.Random(seed)
    return [
        dataclasses.replace(t, deadline_s=round(max(0.05, rng.uniform(*slack) * s), 3))
        for t, s in zip(tasks, service_s, strict=True)
    ]


def admission_floor(predicted: Sequence[int]) -> int:
    """The smallest budget memory-aware admission accepts the mix under: the largest task's
    charge (its predicted peak plus the estimator's tolerance); below it that task could never
    start."""
    return max(_admitted_bytes(p) for p in predicted)
