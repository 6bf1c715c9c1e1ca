"""Measured runs: one fresh worker process per run, streaming what it measures while it runs.

See ``memlab.runner`` for the picture.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import shutil
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from memlab.config import Experiment
from memlab.runner.procs import _POLL_S, _kill, _spawn, _stderr_tail, _Worker, parent_pid
from memlab.runner.scheduler import _sched
from memlab.timeline import Latency, RunResult
from memlab.tracking import procmem

SampleFn = Callable[[dict[str, Any]], None]
SamplesFn = Callable[[list[dict[str, Any]]], None]
StepFn = Callable[[dict[str, Any]], None]

_CANCEL_GRACE_S = 0.5  # after this, a worker that has not stopped between steps is killed

#: What a run's peak drill-down (``RunResult.peak_report``) names besides bytes, category,
#: phase and module: ``off`` (default), ``ops`` (the ATen op of each block) or ``lines`` (the op
#: and the source ``file:line``). Read when a run starts, in the process that starts it.
DRILLDOWN_ENV = "MEMLAB_DRILLDOWN"
DRILLDOWN_MODES: tuple[str, ...] = ("off", "ops", "lines")


def drilldown_mode() -> str:
    """``$MEMLAB_DRILLDOWN`` (``off`` when unset). Op names are not on by default: they put a
    Python dispatch mode on every op of the tracked steps, measured at +16 us per op, 13-16% of
    a tracked step of the tests' MLP and CNN (``benchmarks/drilldown.py``); the timed steps
    never carry it."""
    v = os.environ.get(DRILLDOWN_ENV, "off").strip().lower() or "off"
    if v not in DRILLDOWN_MODES:
        raise ValueError(f"{DRILLDOWN_ENV} must be one of {DRILLDOWN_MODES}, got {v!r}")
    return v


# ============================================================================================
# Worker side
# ============================================================================================
class _Cancelled(Exception):
    pass


def _worker_main(conn: Connection, cancel: Any, stderr_path: str) -> None:
    """Entry point of the worker process: import torch, say ready, run one job, exit."""
    import faulthandler
    import sys

    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives with the process
    faulthandler.enable()  # a segfault prints the Python stack to stderr, for the parent
    lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            conn.send(msg)

    try:
        import torch  # noqa: F401  (the warm part: importing torch takes most of a start)

        from memlab.tracking.sources import default_source

        default_source()
    except BaseException as e:  # noqa: BLE001 - report, never hang the parent
        send(("fatal", f"worker could not start: {type(e).__name__}: {e}"))
        return
    send(("ready",))
    msg = conn.recv()
    if msg[0] != "run":
        return
    exp = _load_experiment(msg[1])
    settle_s = float(msg[2]) if len(msg) > 2 else 0.0
    scratch_dir = str(msg[3]) if len(msg) > 3 else None  # the run's folder, the parent's to remove
    drilldown = str(msg[4]) if len(msg) > 4 else "off"
    # The process's RSS before the workload is built: Python, torch and memlab, the runtime a
    # device profile's budget does not charge (on the device, ExecuTorch's runtime is a few
    # hundred KiB, not PyTorch's hundreds of MiB); the parent caps RSS at this plus the budget.
    if exp.precision in ("int8-static", "int8-weight", "int4-weight"):
        from memlab.knobs.quantization import preload

        preload()  # the quantization libraries' code is runtime, not this model's memory
    send(("baseline", procmem.read_process_memory()["rss"]))

    def gate() -> None:
        """Wait for the parent's go before the measured block (no service job is running)."""
        send(("gate",))
        while not conn.poll(_POLL_S):
            if cancel.is_set():
                raise _Cancelled
        if conn.recv()[0] != "go":  # pragma: no cover - the parent sends nothing else
            raise RuntimeError("memlab worker: expected 'go' from the parent")

    try:
        result = _execute(
            exp,
            send,
            cancel,
            gate,
            settle_s=settle_s,
            scratch_dir=scratch_dir,
            drilldown=drilldown,
        )
    except _Cancelled:
        result = RunResult(
            peak_bytes=0,
            peak_by_category={},
            status="cancelled",
            error="cancelled by the user before measuring began",
            experiment=exp.to_dict(),
        )
    except BaseException as e:  # noqa: BLE001
        result = RunResult(
            peak_bytes=0,
            peak_by_category={},
            status="error",
            error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}",
            experiment=exp.to_dict(),
        )
    send(("result", result))
    conn.close()


def _load_experiment(payload: bytes) -> Experiment:

    exp = pickle.loads(payload)
    assert isinstance(exp, Experiment)
    return exp


def _dump_experiment(exp: Experiment) -> bytes:
    """Pickle the experiment; a user factory defined in a notebook goes by value (cloudpickle)."""

    try:
        return pickle.dumps(exp)
    except (pickle.PicklingError, AttributeError, TypeError):
        try:
            import cloudpickle
        except ImportError as e:  # pragma: no cover - cloudpickle is a dependency
            raise ImportError(
                "a workload defined in a notebook needs cloudpickle: pip install cloudpickle"
            ) from e
        return bytes(cloudpickle.dumps(exp))


class _SampleStream:
    """Samples go to the parent in batches, not one message per 10 ms beat.

    Each message wakes the parent's reader thread, which hands it to the notebook's event loop:
    at 100 messages a second that was a fifth of a core in the kernel, taken from the measured
    worker on a 2-core laptop (issue 10). While the measured block runs, the batch goes at
    each step's end (and at least every ``max_age_s``); before it, every ``max_age_s``.
    """

    def __init__(self, send: Callable[[tuple[Any, ...]], None], max_age_s: float) -> None:
        self._send = send
        self.max_age_s = max_age_s
        self._buf: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def add(self, sample: dict[str, Any]) -> None:
        with self._lock:
            self._buf.append(sample)
            if time.monotonic() - self._last >= self.max_age_s:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._last = time.monotonic()
        if self._buf:
            buf, self._buf = self._buf, []
            self._send(("samples", buf))


# A batch of samples goes at least this often (seconds): before the measured block (a live
# chart of the build and warm-up), and inside it for steps longer than this.
_SETUP_FLUSH_S = 0.1
# After settle_s, how much longer the timed steps may wait for the machine to quiet down (a
# browser still drawing the memory pass); past it they start, and their timing says so.
_QUIET_WAIT_MAX_S = 3.0
_MEASURE_FLUSH_S = 1.0


def _execute(
    exp: Experiment,
    send: Callable[[tuple[Any, ...]], None],
    cancel: Any,
    gate: Callable[[], None] = lambda: None,
    *,
    settle_s: float = 0.0,
    scratch_dir: str | None = None,
    drilldown: str = "off",
) -> RunResult:
    """Build the workload, warm up, then measure ``exp.steps`` steps in one tracked block (the
    memory), then time ``exp.steps`` more steps untracked (the speed); ``gate()`` returns when
    the measured part may begin. ``settle_s``: a pause between the two passes, in which a live
    view draws the memory pass, so that its drawing is over before the steps are timed.
    ``drilldown`` (:data:`DRILLDOWN_MODES`): what the peak report names besides bytes,
    category, phase and module (``ops``, ``lines``); it slows the tracked steps only.

    Why two passes: the tracker's hooks and allocator wrapper cost 3-18% of a small model's
    step (``benchmarks/overhead.py``), and a step time measured under it is not the step a user
    would run. The timed steps run the same code right after, in the same process, with nothing
    of memlab in them but the clocks read between steps (``memlab/timing.py``), which also say
    whether other processes took the CPU meanwhile (``RunResult.timing``).
    """
    import torch

    import memlab
    from memlab import timing
    from memlab.tracking.sources import default_source

    t_job = time.monotonic_ns()
    source = default_source()
    live0 = source.live()
    state: dict[str, Any] = {"phase": "setup", "step": 0, "offset": 0.0}
    stream = _SampleStream(send, _SETUP_FLUSH_S)

    def setup_sample(t: float, row: dict[str, int | None]) -> None:
        stream.add(
            {
                "t": t,
                "tensor_bytes": source.live() - live0,
                "phase": state["phase"],
                "step": 0,
                "measuring": False,
                **row,
            }
        )

    # Samples stream from the moment the job arrives: the build and warm-up are visible too.
    inference = exp.mode == "inference"
    first_s: float | None = None
    pre = procmem.ProcessSampler(0.01, t0_ns=t_job, on_sample=setup_sample).start()
    try:
        torch.manual_seed(exp.seed)
        device = exp.resolved_device()
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        workload = _build(exp, device, scratch_dir)
        if exp.profile != "none":
            gc.collect()
            # What the build freed (a model built in fp32, then quantized or compressed) goes
            # back to the system, so the RSS the profile's cap watches from here on is what the
            # converted model holds: a device loads the converted model, it never builds the
            # fp32 one. glibc keeps freed memory otherwise (ARCHITECTURE: glibc keeps it).
            procmem.trim_heap()
            # The model's bytes go with it: a run the cap kills still says what it built.
            built = {k: v for k, v in workload.metrics.items() if k.startswith("model_bytes")}
            # The event source says whether the cap can hold: the profiler fallback's event
            # buffers grow in this process while it records, and the cap would charge them to
            # the model (measured: +15-20 MiB on the MLP's three requests).
            exact = device != "cpu" or source.name == "cpu-allocator"
            send(("built", procmem.read_process_memory()["rss"], built, exact))
        request = _request_fn(workload)
        # Without a warm-up (warmup=0: lab 05 measures the first epoch from its first batch) no
        # batch may be taken before the tracked pass: its first request is then the first
        # request (timed in the tracked pass, so under the tracker).
        first_alone = inference and exp.warmup > 0
        batches = workload.make_batches(exp.warmup + 2 * exp.steps + int(first_alone))
        if first_alone:
            # The very first request of this fresh process, before any warm-up: lazy
            # allocations, cold caches, a lazy buffer cache being filled. Timed alone.
            state["phase"] = "warmup"  # not measured: what the live charts call warm-up
            x, y = next(batches)
            sync()
            t0 = time.perf_counter()
            request(x, y)
            sync()
            first_s = time.perf_counter() - t0
            del x, y
        state["phase"] = "warmup"
        for _ in range(exp.warmup):
            if cancel.is_set():
                raise _Cancelled
            x, y = next(batches)
            request(x, y)
            # Nothing of the warm-up may live into the measured block: a tensor the block did
            # not count at entry would free bytes the account never held (and loosen a budget).
            del x, y
        gc.collect()
        sync()
    finally:
        pre.stop()
        stream.flush()
    gate()

    offset = (time.monotonic_ns() - t_job) / 1e9
    stream.max_age_s = _MEASURE_FLUSH_S

    def live_sample(t: float, s: dict[str, Any]) -> None:
        stream.add({**s, "t": t + offset, "step": state["step"], "measuring": True})

    def now_s() -> float:
        return (time.monotonic_ns() - t_job) / 1e9

    tracked_times: list[float] = []
    # Allocator calls inside each request (inference runs), from the source the tracker reads.
    counter = _alloc_counter(device) if inference else None
    allocs: list[int] = []
    status, error = "ok", None
    rec = memlab.track(
        workload.model,
        optimizer=workload.optimizer,
        on_sample=live_sample,
        budget_bytes=exp.effective_budget_bytes,
        ops=drilldown in ("ops", "lines"),
        source_lines=drilldown == "lines",
    )
    # -- pass 1: memory (tracked) ------------------------------------------------------------
    try:
        with rec:
            for i in range(exp.steps):
                if cancel.is_set():
                    raise _Cancelled
                state["step"] = i + 1
                t0 = time.perf_counter()
                with rec.phase("data"):
                    x, y = next(batches)
                p0 = counter[0]() if counter is not None else 0
                request(x, y)
                sync()
                if counter is not None:
                    allocs.append(counter[1](p0, counter[0]()))
                dt = time.perf_counter() - t0
                tracked_times.append(dt)
                rec.step(f"step {i + 1}")
                del x, y
                stream.flush()
                send(
                    (
                        "step",
                        {
                            "pass": "memory",
                            "step": i + 1,
                            "of": exp.steps,
                            "time_s": dt,
                            "samples": workload.samples_per_step,
                            "t": now_s(),
                        },
                    )
                )
    except _Cancelled:
        status, error = "cancelled", "cancelled by the user"
    except torch.OutOfMemoryError as e:
        status, error = "oom", str(e).splitlines()[0]
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is a result
        status, error = "error", _explain(e, exp)
    stream.flush()
    result = rec.result
    if result is None:  # the tracker's own exit failed: say with what, not a bare assert
        raise RuntimeError(f"the memory tracker produced no result: {error}")

    # -- pass 2: speed (untracked, timed) ----------------------------------------------------
    readings: list[timing.StepReading] = []
    timing_result = None
    if status == "ok" and settle_s > 0:
        timing.wait_until_quiet(settle_s, settle_s + _QUIET_WAIT_MAX_S, cancel.is_set)
        if cancel.is_set():
            status, error = "cancelled", "cancelled by the user (before timing the steps)"
    if status == "ok":
        clock = timing.StepClock(timing.children_cpu_s if exp.num_workers else None)
        threads = torch.get_num_threads()
        before = timing.process_snapshot()
        t_before = time.perf_counter()
        try:

            def on_timed(i: int, r: timing.StepReading, share: float | None) -> None:
                send(
                    (
                        "step",
                        {
                            "pass": "timing",
                            "step": i + 1,
                            "of": exp.steps,
                            "time_s": r.wall_s,
                            "samples": workload.samples_per_step,
                            "t": now_s(),
                            **timing.step_payload(r, share),
                        },
                    )
                )

            timed_steps(
                workload,
                batches,
                exp.steps,
                clock,
                sync,
                cancel.is_set,
                on_timed,
                readings,
                step=request,
                data_timed=not inference,
            )
        except _Cancelled:
            status, error = "cancelled", "cancelled by the user (while timing the steps)"
        except Exception as e:  # noqa: BLE001
            status, error = "error", f"{_explain(e, exp)} (while timing the steps)"
        span = time.perf_counter() - t_before
        after = timing.process_snapshot()
        me = os.getpid()
        kids = _children_pids()
        busiest = timing.busiest_others(
            before,
            after,
            span,
            exclude=[me, *kids],
            labels={parent_pid(): "the process that started this run"},
        )
        timing_result = timing.assess(
            [q.wall_s for q in readings],
            [q.cpu_s for q in readings],
            [q.busy_s for q in readings],
            cpus=clock.cpus,
            threads=threads,
            busiest=busiest,
        )
    metrics = dict(getattr(workload, "metrics", {}) or {})
    latency = None
    if inference:
        compile_s = metrics.get("compile_s")
        if first_s is None and tracked_times:
            first_s = tracked_times[0]  # warmup=0: the first tracked request was the first
        latency = Latency(
            first_s=first_s,
            request_times_s=tuple(q.wall_s for q in readings),
            samples_per_request=workload.samples_per_step,
            # Counted over every tracked request, or not at all (a partial count would read
            # as a figure for the whole pass).
            allocs_by_request=tuple(allocs)
            if counter is not None and len(allocs) == exp.steps
            else None,
            compile_s=None if compile_s is None else float(compile_s),
        )
    return dataclasses.replace(
        result,
        step_times_s=tuple(q.wall_s for q in readings),
        tracked_step_times_s=tuple(tracked_times),
        samples_per_step=workload.samples_per_step,
        status=status,
        error=error,
        experiment=exp.to_dict(),
        metrics=metrics,
        notes=tuple(result.notes)
        + tuple(getattr(workload, "notes", ()))
        + (
            (
                f"the tracked steps recorded the peak's {drilldown} ({DRILLDOWN_ENV}): a "
                "dispatch mode on every op slowed them; the timed steps did not carry it",
            )
            if drilldown != "off"
            else ()
        ),
        timing=timing_result,
        latency=latency,
    )


def _request_fn(workload: Any) -> Callable[[Any, Any], Any]:
    """What one step of the run is: a training step, or in inference mode one request (the
    forward of one batch, no loss: ``Workload.infer``)."""
    if getattr(workload, "mode", "train") == "inference" and hasattr(workload, "infer"):
        return lambda x, y: workload.infer(x)
    return workload.step  # type: ignore[no-any-return]


def _alloc_counter(device: str) -> tuple[Callable[[], int], Callable[[int, int], int]] | None:
    """``(position, count(start, end))`` over the allocator events of the source the tracker
    reads on ``device`` (``Tracker.__enter__`` picks it the same way): allocations are the
    events with a positive delta. ``None`` where the source cannot count per request: the
    profiler fallback reads its events only when the block ends (reading them mid-block stops
    and restarts the profiler), so there no count is given rather than a guess."""
    from memlab.tracking.sources import cuda_source, default_source

    source = (
        default_source() if device == "cpu" else cuda_source(device if ":" in device else "cuda:0")
    )
    if source.name not in ("cpu-allocator", "cuda-allocator"):
        return None

    def count(start: int, end: int) -> int:
        return int((source.events(start, end)[:, 2] > 0).sum())

    return source.position, count


_INPLACE_AUTOGRAD = "modified by an inplace operation"


def _explain(e: BaseException, exp: Experiment) -> str:
    """The error as a run reports it; the autograd error an in-place op causes in training gets
    an explanation in words (the raw message names tensor versions, not the knob)."""
    msg = f"{type(e).__name__}: {e}"
    if _INPLACE_AUTOGRAD in str(e):
        knob = " (inplace=True)" if getattr(exp, "inplace", False) else ""
        msg = (
            f"in-place operations{knob} overwrote a tensor that autograd saved for the "
            "backward pass: an activation such as ReLU keeps its output to compute its "
            "gradient, and an in-place add (or a second in-place activation) on that output "
            "destroys it, so backward cannot run. In-place ops save memory in inference; in "
            "training use inplace=False (or mode 'inference'). Original error: " + msg
        )
    return msg


def timed_steps(
    workload: Any,
    batches: Any,
    n: int,
    clock: Any,
    sync: Callable[[], None] = lambda: None,
    cancelled: Callable[[], bool] = lambda: False,
    on_step: Callable[[int, Any, float | None], None] | None = None,
    readings: list[Any] | None = None,
    *,
    step: Callable[[Any, Any], Any] | None = None,
    data_timed: bool = True,
) -> list[Any]:
    """The timed pass: ``n`` steps of ``workload``, nothing of memlab around them but
    ``clock`` (a :class:`memlab.timing.StepClock`, read outside each step's wall time).
    Appends each :class:`~memlab.timing.StepReading` to ``readings`` (returned) and calls
    ``on_step(i, reading, others_share)``; raises ``_Cancelled`` when ``cancelled()``.
    ``step(x, y)`` is one step (default ``workload.step``; an inference run passes its
    request); ``data_timed=False`` takes the batch before the clock starts (a request's
    latency is its forward, not the loading of its batch).
    ``benchmarks/overhead.py`` runs this same function beside a plain loop."""
    from memlab import timing

    out: list[Any] = [] if readings is None else readings
    for i in range(n):
        if cancelled():
            raise _Cancelled
        run = workload.step if step is None else step
        if data_timed:
            clock.begin()
            x, y = next(batches)
        else:
            x, y = next(batches)
            clock.begin()
        run(x, y)
        sync()
        r = clock.end()
        del x, y
        out.append(r)
        if on_step is not None:
            share = timing.others_shares(
                [q.wall_s for q in out],
                [q.cpu_s for q in out],
                [q.busy_s for q in out],
                clock.cpus,
                trailing=True,
            )[-1]
            on_step(i, r, share)
    return out


def _children_pids() -> list[int]:
    """The run worker's descendants (DataLoader workers are the run's own, not "others")."""
    import psutil

    try:
        return [c.pid for c in psutil.Process().children(recursive=True)]
    except psutil.Error:
        return []


def _build(exp: Experiment, device: str, scratch_dir: str | None = None) -> Any:
    from memlab.knobs import build_experiment

    workload = build_experiment(exp, device)
    if scratch_dir is not None:
        from memlab.knobs.offload import use_folder

        # Offloaded activations are written in the run's folder, which the parent removes
        # whatever the run's end (RunHandle._finish), a killed worker's included.
        use_folder(workload, scratch_dir)
    return workload


# ============================================================================================
# Parent side
# ============================================================================================
_warm_lock = threading.Lock()
_warm: _Worker | None = None


def warm_up() -> None:
    """Start a worker now (torch imported, recorder built) so the next run starts at once."""
    global _warm
    with _warm_lock:
        if _warm is None or not _warm.process.is_alive():
            _warm = _spawn(_worker_main, "memlab-worker")


def shutdown_warm_worker() -> None:
    """Stop the idle warm worker, if any."""
    global _warm
    with _warm_lock:
        w, _warm = _warm, None
    if w is not None:
        _kill(w)


def _take_worker(warm: bool, fresh: bool = False) -> _Worker:
    """A worker for a run: the warm one if asked and ready, else a new one. ``fresh``: a spawned
    interpreter, never a fork of the forkserver (procs.py). A device profile caps the worker's
    RSS at its reading before the build plus the budget, and that reading must hold the runtime:
    a spawned worker has touched its share of torch's libraries by then, a forked one has not
    (Linux copies no page-table entries of a read-only file mapping at fork; they fill as the
    worker touches the pages), so torch's code pages faulted in by the first steps were charged
    to the model's budget (lab 07's smoke run: every configuration over its budget)."""
    global _warm
    if fresh:
        return _spawn(_worker_main, "memlab-worker", fresh=True)
    if warm:
        with _warm_lock:
            w, _warm = _warm, None
        if w is not None and w.process.is_alive():
            return w
    return _spawn(_worker_main, "memlab-worker")


def _default_rss_cap() -> int:
    import psutil

    return int(psutil.virtual_memory().total * 0.75)


class RunHandle:
    """A run in progress. ``samples`` and ``steps`` grow while it runs; ``result`` is set at
    the end. Callbacks run on the handle's reader thread: keep them short."""

    def __init__(
        self,
        experiment: Experiment,
        *,
        on_sample: SampleFn | None = None,
        on_step: StepFn | None = None,
        on_done: Callable[[RunResult], None] | None = None,
        rss_cap_bytes: int | None = None,
        timeout_s: float | None = None,
        use_warm: bool = True,
        keep_warm: bool = False,
        on_samples: SamplesFn | None = None,
        settle_s: float = 0.0,
        save: bool = True,
        source: str = "run",
    ) -> None:
        if not isinstance(experiment, Experiment):
            raise TypeError(
                f"experiment must be a memlab.Experiment, got {type(experiment).__name__}"
            )
        self.experiment = experiment
        self.samples: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.result: RunResult | None = None
        #: The run's id in the run store once saved (``memlab.load(handle.run_id)``); None
        #: while it runs, when saving is off, for a cancelled run, or if saving failed.
        self.run_id: str | None = None
        from memlab.store import SOURCES

        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self._save, self._source = bool(save), source
        self.on_sample, self.on_step, self.on_done = on_sample, on_step, on_done
        self.on_samples = on_samples
        if not isinstance(settle_s, (int, float)) or not 0 <= settle_s <= 10:
            raise ValueError(f"settle_s must be seconds between 0 and 10, got {settle_s!r}")
        self.settle_s = float(settle_s)
        self.rss_cap_bytes = _default_rss_cap() if rss_cap_bytes is None else rss_cap_bytes
        # Under a device profile (and no explicit cap) the cap becomes the worker's baseline RSS
        # plus the profile's budget once the worker reports its baseline ("baseline" message).
        self._profile_budget = (
            experiment.effective_budget_bytes
            if rss_cap_bytes is None and experiment.profile != "none"
            else None
        )
        self.rss_baseline_bytes: int | None = None
        self.rss_built_bytes: int | None = None
        self._built_metrics: dict[str, Any] = {}
        self._cap_note: str | None = None
        self._default_cap = self.rss_cap_bytes
        self.timeout_s = timeout_s
        self.started_at = time.monotonic()
        self._done = threading.Event()
        self._cancel_at: float | None = None
        self._payload = _dump_experiment(experiment)
        self._drilldown = drilldown_mode()
        self._worker = _take_worker(use_warm, fresh=experiment.profile != "none")
        self._warm_next = keep_warm
        self._gate_asked = False  # the worker waits for "go" before its measured block
        # The run's temporary folder (offloaded activations): made here and removed in
        # _finish, so that it goes whatever the end, a worker killed mid-step included (and at
        # the latest when the handle is collected or the interpreter exits).
        self.scratch_dir = tempfile.mkdtemp(prefix="memlab-run-")
        self._remove_scratch = weakref.finalize(self, shutil.rmtree, self.scratch_dir, True)
        _sched.run_started(self)
        self._thread = threading.Thread(target=self._read, name="memlab-run-reader", daemon=True)
        self._thread.start()

    # -- public -------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return "running" if self.result is None else self.result.status

    @property
    def pid(self) -> int | None:
        return self._worker.process.pid  # type: ignore[no-any-return]

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop after the current step; it is killed if it has not within
        half a second. The result's status is ``cancelled``."""
        if not self._done.is_set() and self._cancel_at is None:
            self._cancel_at = time.monotonic()
            self._worker.cancel.set()

    def wait(self, timeout: float | None = None) -> RunResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"run still going after {timeout} s (cancel() stops it)")
        assert self.result is not None
        return self.result

    def __repr__(self) -> str:
        return (
            f"RunHandle({self.experiment.workload_name}, status={self.status!r}, "
            f"samples={len(self.samples)}, steps={len(self.steps)})"
        )

    # -- reader thread ---------------------------------------------------------------------------
    def _finish(self, result: RunResult) -> None:
        if self.result is not None:
            return
        if result.experiment is None:
            result = dataclasses.replace(result, experiment=self.experiment.to_dict())
        extra = self._limits_metrics()
        if extra:
            result = dataclasses.replace(result, metrics={**extra, **dict(result.metrics)})
        if self._cap_note is not None:
            result = dataclasses.replace(result, notes=(*result.notes, self._cap_note))
        self.result = result
        _kill(self._worker)
        self._remove_scratch()
        _sched.run_ended(self)  # before on_done: a callback may queue a job (and wait for it)
        # Saved after the worker is gone (nothing of the run is left to slow down) and before
        # the run counts as done, so memlab.runs() lists it as soon as run() returns.
        self.result = self._store(result)
        self._done.set()
        if self.on_done is not None:
            self.on_done(self.result)
        if self._warm_next:  # the next run's worker starts once this one no longer measures
            warm_up()

    def _store(self, result: RunResult) -> RunResult:
        """Save the finished run in the run store (``memlab.store``); return the result, with
        a note if saving failed: a store that cannot be written never breaks a run.

        Saved: ``ok``, ``oom`` and ``error`` runs, each an answer about the experiment (a
        sweep's cache must know that a setting does not fit, or does not run). Not saved:
        ``cancelled`` runs, which say nothing about the experiment (the panel cancels the run
        in progress at every change of a setting). Off with ``save=False`` or
        ``MEMLAB_STORE=off``."""
        if not self._save or result.status == "cancelled":
            return result
        import warnings

        from memlab import store

        if not store.store_enabled():
            return result
        try:
            self.run_id = store.default_store().save(result, source=self._source)
        except Exception as e:  # noqa: BLE001 - the run's result matters more than its copy
            why = f"the run was not saved in the run store: {type(e).__name__}: {e}"
            warnings.warn(why, store.StoreWarning, stacklevel=2)
            return dataclasses.replace(result, notes=(*result.notes, why))
        return result

    def _built(self, rss: int | None, capped: bool = True) -> None:
        """The workload is built and converted: from now on a profile's cap holds (the
        runtime's RSS before the build plus the budget). The build itself ran under the
        default cap: a device receives the converted model, it does not build it. Not where
        the worker measures through the profiler fallback (``capped`` False): its own event
        buffers would count against the model; the tracked budget still holds, and the result
        says the cap was off."""
        self.rss_built_bytes = rss
        base = self.rss_baseline_bytes
        if self._profile_budget is None or base is None:
            return
        if capped:
            self.rss_cap_bytes = min(self._default_cap, base + self._profile_budget)
        else:
            self._cap_note = (
                "the device profile's RSS cap is off: this run measures through the profiler "
                "fallback (no C++ compiler), whose event buffers grow in the worker and would "
                "count as the model's memory; the tracked budget holds"
            )

    def _limits_metrics(self) -> dict[str, Any]:
        """The RSS limits a result reports: the cap, and under a profile the baseline and the
        profile whose budget set it."""
        out: dict[str, Any] = dict(self._built_metrics)
        if self.rss_baseline_bytes is not None:
            out["rss_baseline_bytes"] = self.rss_baseline_bytes
        if self.rss_built_bytes is not None:
            out["rss_built_bytes"] = self.rss_built_bytes
        if self.experiment.profile != "none":
            out["profile"] = self.experiment.profile
            out["rss_cap_bytes"] = self.rss_cap_bytes
        return out

    def _failed(self, status: str, message: str, metrics: dict[str, Any] | None = None) -> None:
        self._finish(
            RunResult(
                peak_bytes=0,
                peak_by_category={},
                status=status,
                error=message,
                experiment=self.experiment.to_dict(),
                metrics=metrics or {},
            )
        )

    @property
    def at_gate(self) -> bool:
        """Whether the worker is built and warmed up and waits for its measured block to be
        let through (``scheduler.gates_held`` keeps it waiting)."""
        return self._gate_asked

    def _read(self) -> None:
        w = self._worker
        sent = False
        try:
            while self.result is None:
                if self._check_limits():
                    return
                if self._gate_asked and _sched.begin_measuring(self):
                    self._gate_asked = False
                    w.conn.send(("go",))
                try:
                    ready = w.conn.poll(_POLL_S)
                except (OSError, EOFError):
                    ready = True
                if not ready:
                    if not w.process.is_alive():
                        self._died()
                        return
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    self._died()
                    return
                kind = msg[0]
                if kind == "ready" and not sent:
                    w.conn.send(
                        ("run", self._payload, self.settle_s, self.scratch_dir, self._drilldown)
                    )
                    sent = True
                elif kind == "samples":
                    batch = msg[1]
                    self.samples.extend(batch)
                    if self.on_samples is not None:
                        self.on_samples(batch)
                    if self.on_sample is not None:
                        for sample in batch:
                            self.on_sample(sample)
                elif kind == "step":
                    self.steps.append(msg[1])
                    if self.on_step is not None:
                        self.on_step(msg[1])
                elif kind == "baseline":
                    self.rss_baseline_bytes = msg[1]
                elif kind == "built":
                    self._built_metrics = dict(msg[2]) if len(msg) > 2 else {}
                    self._built(msg[1], bool(msg[3]) if len(msg) > 3 else True)
                elif kind == "gate":
                    self._gate_asked = True  # answered above, once no service job runs
                elif kind == "result":
                    self._finish(msg[1])
                elif kind == "fatal":
                    self._failed("error", msg[1])
        except BaseException as e:  # noqa: BLE001 - the reader must always end the run
            self._failed("error", f"memlab runner failed: {type(e).__name__}: {e}")

    def _check_limits(self) -> bool:
        """Kill the worker for a cancel past its grace, the RSS cap, or the timeout."""
        now = time.monotonic()
        if self._cancel_at is not None and now - self._cancel_at > _CANCEL_GRACE_S:
            self._failed("cancelled", "cancelled by the user (worker stopped mid-step)")
            return True
        if self.timeout_s is not None and now - self.started_at > self.timeout_s:
            self._failed("error", f"timed out after {self.timeout_s} s")
            return True
        pid = self._worker.process.pid
        if pid is not None and self._worker.process.is_alive():
            try:
                rss = procmem.read_process_memory(pid)["rss"]
            except Exception:  # noqa: BLE001 - the process may be gone between the two calls
                rss = None
            if rss is not None and rss > self.rss_cap_bytes:
                why = ""
                if self._profile_budget is not None and self.rss_baseline_bytes is not None:
                    why = (
                        f" (device profile {self.experiment.profile}: the runtime's own "
                        f"{self.rss_baseline_bytes} bytes plus the budget of "
                        f"{self._profile_budget} bytes)"
                    )
                self._failed(
                    "oom",
                    f"worker killed: its RSS {rss} bytes passed the hard cap of "
                    f"{self.rss_cap_bytes} bytes{why}",
                    {"rss_cap_bytes": self.rss_cap_bytes, "rss_at_kill_bytes": rss},
                )
                return True
        return False

    def _died(self) -> None:
        w = self._worker
        w.process.join(timeout=1)
        code = w.process.exitcode
        tail = _stderr_tail(w.stderr_path)
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if self._cancel_at is not None:
            self._failed("cancelled", "cancelled by the user")
            return
        msg = f"worker died ({how})"
        if tail:
            msg += f"; its last stderr lines:\n{tail}"
        self._failed("error", msg)


def start(
    experiment: Experiment,
    *,
    on_sample: SampleFn | None = None,
    on_step: StepFn | None = None,
    on_done: Callable[[RunResult], None] | None = None,
    rss_cap_bytes: int | None = None,
    timeout_s: float | None = None,
    warm: bool = False,
    on_samples: SamplesFn | None = None,
    settle_s: float = 0.0,
    save: bool = True,
    source: str = "run",
) -> RunHandle:
    """Start ``experiment`` in a worker process and return at once.

    ``on_sample(sample)`` is called for every streamed sample (about 100 a second, sent in
    batches: at each step's end while measuring), ``on_samples(batch)`` once per batch (a view
    that redraws per batch does one piece of work instead of one per sample), ``on_step(step)``
    after each step of both passes (``step["pass"]``: ``"memory"``, the tracked steps, then
    ``"timing"``, the untracked timed ones, which carry ``cpu_s``, ``others_share`` and
    ``disturbed``), ``on_done(result)`` at the end, all on the handle's reader thread.
    ``settle_s``: a pause between the tracked and the timed steps (a live view draws the
    memory pass meanwhile, and keeps still while the steps are timed; not part of any timing).
    ``rss_cap_bytes`` (default: 75% of RAM) is the hard cap past which
    the worker is killed. A worker started by :func:`warm_up` is used if one is ready; with
    ``warm`` a new one is started once this run has ended, for the next run. The measured
    block waits for a service job in progress (:func:`submit`) to end; jobs queued meanwhile
    wait for the run (``timeout_s`` counts from the start, the wait included).
    With ``save`` (the default, unless ``MEMLAB_STORE=off``) the finished run is saved in the
    run store (``memlab.runs()``), as coming from ``source``; ``handle.run_id`` is its id.
    """
    return RunHandle(
        experiment,
        on_sample=on_sample,
        on_step=on_step,
        on_done=on_done,
        rss_cap_bytes=rss_cap_bytes,
        timeout_s=timeout_s,
        use_warm=True,
        keep_warm=warm,
        on_samples=on_samples,
        settle_s=settle_s,
        save=save,
        source=source,
    )


def run(
    experiment: Experiment,
    on_sample: SampleFn | None = None,
    *,
    rss_cap_bytes: int | None = None,
    timeout_s: float | None = None,
    save: bool = True,
) -> RunResult:
    """Run ``experiment`` in a fresh worker process and return its result (never raises for a
    failed run: the result's ``status`` and ``error`` say what happened). With ``save`` (the
    default, unless ``MEMLAB_STORE=off``) the run is saved in the run store (``memlab.runs()``
    lists it; a cancelled run is not saved)."""
    handle = RunHandle(
        experiment,
        on_sample=on_sample,
        rss_cap_bytes=rss_cap_bytes,
        timeout_s=timeout_s,
        use_warm=True,
        keep_warm=False,
        save=save,
    )
    return handle.wait()


def latency_sweep(
    experiment: Experiment,
    batch_sizes: Sequence[int] = (1, 8, 32),
    *,
    timeout_s: float | None = None,
) -> Any:
    """One inference run per batch size (each in a fresh worker, one after another): what
    batching amortizes. Returns a pandas DataFrame, one row per batch size: ``status``,
    ``first_s``, ``p50_s``, ``p95_s``, ``p99_s``, ``requests_per_s``, ``samples_per_s``,
    ``latency_per_sample_s`` (p50 / batch), ``allocs_per_request``, ``peak_bytes`` and ``steady``
    (the run's timing verdict, ``RunResult.timing``).
    Measured figures; ``None`` where a run could not measure one (a failed run's ``error``
    is in its row). Torch-free in the caller: the runs happen in workers."""
    import pandas as pd

    if experiment.mode != "inference":
        raise ValueError(
            f"latency_sweep needs an experiment with mode 'inference', got {experiment.mode!r}"
        )
    rows = []
    for b in batch_sizes:
        exp = experiment.replace(batch_size=b, data_size=max(experiment.data_size, b))
        r = run(exp, timeout_s=timeout_s)
        lat = r.latency
        p50 = None if lat is None else lat.p50_s
        rows.append(
            {
                "batch_size": b,
                "status": r.status,
                "error": r.error,
                "first_s": None if lat is None else lat.first_s,
                "p50_s": p50,
                "p95_s": None if lat is None else lat.p95_s,
                "p99_s": None if lat is None else lat.p99_s,
                "requests_per_s": None if lat is None else lat.requests_per_s,
                "samples_per_s": None if lat is None else lat.samples_per_s,
                "latency_per_sample_s": None if p50 is None else p50 / b,
                "allocs_per_request": None if lat is None else lat.allocs_per_request,
                "peak_bytes": r.peak_bytes if r.status == "ok" else None,
                # Whether the run's timing can be trusted (RunResult.timing); None: unknown.
                "steady": None if r.timing is None else bool(r.timing.steady),
            }
        )
    return pd.DataFrame(rows)
