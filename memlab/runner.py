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

import dataclasses
import gc
import logging
import multiprocessing as mp
import os
import pickle
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from memlab.config import Experiment
from memlab.timeline import RunResult
from memlab.tracking import procmem

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

_log = logging.getLogger(__name__)

SampleFn = Callable[[dict[str, Any]], None]
StepFn = Callable[[dict[str, Any]], None]

_CANCEL_GRACE_S = 0.5  # after this, a worker that has not stopped between steps is killed
_POLL_S = 0.02
# A service worker that has not imported torch and said "ready" by then is declared dead
# (an import takes seconds; minutes mean something is wrong, and a caller must never hang).
_SERVICE_START_S = 180.0


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

    def gate() -> None:
        """Wait for the parent's go before the measured block (no service job is running)."""
        send(("gate",))
        while not conn.poll(_POLL_S):
            if cancel.is_set():
                raise _Cancelled
        if conn.recv()[0] != "go":  # pragma: no cover - the parent sends nothing else
            raise RuntimeError("memlab worker: expected 'go' from the parent")

    try:
        result = _execute(exp, send, cancel, gate)
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
    import pickle

    exp = pickle.loads(payload)
    assert isinstance(exp, Experiment)
    return exp


def _dump_experiment(exp: Experiment) -> bytes:
    """Pickle the experiment; a user factory defined in a notebook goes by value (cloudpickle)."""
    import pickle

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


def _execute(
    exp: Experiment,
    send: Callable[[tuple[Any, ...]], None],
    cancel: Any,
    gate: Callable[[], None] = lambda: None,
) -> RunResult:
    """Build the workload, warm up, then measure ``exp.steps`` steps in one tracked block
    (``gate()`` returns when the block may begin)."""
    import torch

    import memlab
    from memlab.tracking.sources import default_source

    t_job = time.monotonic_ns()
    source = default_source()
    live0 = source.live()
    state: dict[str, Any] = {"phase": "setup", "step": 0, "offset": 0.0}

    def setup_sample(t: float, row: dict[str, int | None]) -> None:
        send(
            (
                "sample",
                {
                    "t": t,
                    "tensor_bytes": source.live() - live0,
                    "phase": state["phase"],
                    "step": 0,
                    **row,
                },
            )
        )

    # Samples stream from the moment the job arrives: the build and warm-up are visible too.
    pre = procmem.ProcessSampler(0.01, t0_ns=t_job, on_sample=setup_sample).start()
    try:
        torch.manual_seed(exp.seed)
        device = exp.resolved_device()
        workload = _build(exp, device)
        batches = workload.make_batches(exp.warmup + exp.steps)
        state["phase"] = "warmup"
        for _ in range(exp.warmup):
            if cancel.is_set():
                raise _Cancelled
            x, y = next(batches)
            workload.step(x, y)
            # Nothing of the warm-up may live into the measured block: a tensor the block did
            # not count at entry would free bytes the account never held (and loosen a budget).
            del x, y
        gc.collect()
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        sync()
    finally:
        pre.stop()
    gate()

    offset = (time.monotonic_ns() - t_job) / 1e9

    def live_sample(t: float, s: dict[str, Any]) -> None:
        send(("sample", {**s, "t": t + offset, "step": state["step"]}))

    step_times: list[float] = []
    status, error = "ok", None
    rec = memlab.track(
        workload.model,
        optimizer=workload.optimizer,
        on_sample=live_sample,
        budget_bytes=exp.budget_bytes,
    )
    try:
        with rec:
            for i in range(exp.steps):
                if cancel.is_set():
                    raise _Cancelled
                state["step"] = i + 1
                t0 = time.perf_counter()
                with rec.phase("data"):
                    x, y = next(batches)
                workload.step(x, y)
                sync()
                dt = time.perf_counter() - t0
                step_times.append(dt)
                rec.step(f"step {i + 1}")
                send(
                    (
                        "step",
                        {
                            "step": i + 1,
                            "time_s": dt,
                            "samples": workload.samples_per_step,
                            "t": (time.monotonic_ns() - t_job) / 1e9,
                        },
                    )
                )
    except _Cancelled:
        status, error = "cancelled", "cancelled by the user"
    except torch.OutOfMemoryError as e:
        status, error = "oom", str(e).splitlines()[0]
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is a result
        status, error = "error", f"{type(e).__name__}: {e}"
    result = rec.result
    assert result is not None
    metrics = dict(getattr(workload, "metrics", {}) or {})
    return dataclasses.replace(
        result,
        step_times_s=tuple(step_times),
        samples_per_step=workload.samples_per_step,
        status=status,
        error=error,
        experiment=exp.to_dict(),
        metrics=metrics,
        notes=tuple(result.notes) + tuple(getattr(workload, "notes", ())),
    )


def _build(exp: Experiment, device: str) -> Any:
    from memlab.knobs import build_experiment

    return build_experiment(exp, device)


# ============================================================================================
# Parent side
# ============================================================================================
@dataclasses.dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    cancel: Any
    stderr_path: str


def _spawn(target: Callable[..., None] = _worker_main, name: str = "memlab-worker") -> _Worker:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    cancel = ctx.Event()
    fd, path = tempfile.mkstemp(prefix="memlab-worker-", suffix=".stderr")
    os.close(fd)
    # Not a daemon: a daemonic process may not have children, and the DataLoader's workers
    # (num_workers > 0) are the worker's children. Workers are killed explicitly (_kill), and
    # at exit by _kill_all, which runs before multiprocessing's own exit hook joins them.
    proc = ctx.Process(target=target, args=(child, cancel, path), name=name)
    _register_atexit()
    # Under the lock, so that _kill_all at exit sees every worker started: a worker started
    # by a runner thread while the interpreter exits would find its semaphore unlinked by
    # multiprocessing's finalizers and print a traceback (seen with keep_warm).
    with _spawn_lock:
        if _exiting:
            raise RuntimeError("the interpreter is exiting: memlab starts no more workers")
        proc.start()
        w = _Worker(proc, parent, cancel, path)
        _live.add(w)
    child.close()
    return w


_live: set[_Worker] = set()
_spawn_lock = threading.Lock()
_exiting = False


def _kill_all() -> None:
    global _exiting
    with _spawn_lock:
        _exiting = True
    for w in list(_live):
        _kill(w)


_warm_lock = threading.Lock()
_warm: _Worker | None = None


def warm_up() -> None:
    """Start a worker now (torch imported, recorder built) so the next run starts at once."""
    global _warm
    with _warm_lock:
        if _warm is None or not _warm.process.is_alive():
            _warm = _spawn()


_atexit_registered = False


def _register_atexit() -> None:
    global _atexit_registered
    if _atexit_registered:
        return
    import atexit

    # atexit runs last-registered first: this runs before multiprocessing's hook (registered
    # when multiprocessing was imported), which would otherwise wait for a running worker.
    atexit.register(_kill_all)
    _atexit_registered = True


def shutdown_warm_worker() -> None:
    """Stop the idle warm worker, if any."""
    global _warm
    with _warm_lock:
        w, _warm = _warm, None
    if w is not None:
        _kill(w)


def _take_worker(warm: bool) -> _Worker:
    global _warm
    if warm:
        with _warm_lock:
            w, _warm = _warm, None
        if w is not None and w.process.is_alive():
            return w
    return _spawn()


def _kill(w: _Worker) -> None:
    _live.discard(w)
    if w.process.is_alive():
        w.process.kill()
    w.process.join(timeout=5)
    w.conn.close()
    try:
        os.unlink(w.stderr_path)
    except OSError:
        pass


def _stderr_tail(path: str, lines: int = 25) -> str:
    """The worker's last stderr lines; after a crash, from faulthandler's report onward (the
    'Fatal Python error' line and the Python stack), without its list of extension modules."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    starts = [i for i, line in enumerate(text) if line.startswith("Fatal Python error")]
    if starts:
        text = text[starts[-1] :]
    text = [line for line in text if not line.startswith("Extension modules:")]
    return "\n".join(text[-lines:] if not starts else text[:lines])


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
    ) -> None:
        if not isinstance(experiment, Experiment):
            raise TypeError(
                f"experiment must be a memlab.Experiment, got {type(experiment).__name__}"
            )
        self.experiment = experiment
        self.samples: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.result: RunResult | None = None
        self.on_sample, self.on_step, self.on_done = on_sample, on_step, on_done
        self.rss_cap_bytes = _default_rss_cap() if rss_cap_bytes is None else rss_cap_bytes
        self.timeout_s = timeout_s
        self.started_at = time.monotonic()
        self._done = threading.Event()
        self._cancel_at: float | None = None
        self._payload = _dump_experiment(experiment)
        self._worker = _take_worker(use_warm)
        self._warm_next = keep_warm
        self._gate_asked = False  # the worker waits for "go" before its measured block
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
        self.result = result
        _kill(self._worker)
        _sched.run_ended(self)  # before on_done: a callback may queue a job (and wait for it)
        self._done.set()
        if self.on_done is not None:
            self.on_done(result)
        if self._warm_next:  # the next run's worker starts once this one no longer measures
            warm_up()

    def _failed(self, status: str, message: str) -> None:
        self._finish(
            RunResult(
                peak_bytes=0,
                peak_by_category={},
                status=status,
                error=message,
                experiment=self.experiment.to_dict(),
            )
        )

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
                    w.conn.send(("run", self._payload))
                    sent = True
                elif kind == "sample":
                    self.samples.append(msg[1])
                    if self.on_sample is not None:
                        self.on_sample(msg[1])
                elif kind == "step":
                    self.steps.append(msg[1])
                    if self.on_step is not None:
                        self.on_step(msg[1])
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
                self._failed(
                    "oom",
                    f"worker killed: its RSS {rss} bytes passed the hard cap of "
                    f"{self.rss_cap_bytes} bytes",
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
) -> RunHandle:
    """Start ``experiment`` in a worker process and return at once.

    ``on_sample(sample)`` is called for every streamed sample (about 100 a second),
    ``on_step(step)`` after each measured step, ``on_done(result)`` at the end, all on the
    handle's reader thread. ``rss_cap_bytes`` (default: 75% of RAM) is the hard cap past which
    the worker is killed. A worker started by :func:`warm_up` is used if one is ready; with
    ``warm`` a new one is started once this run has ended, for the next run. The measured
    block waits for a service job in progress (:func:`submit`) to end; jobs queued meanwhile
    wait for the run (``timeout_s`` counts from the start, the wait included).
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
    )


def run(
    experiment: Experiment,
    on_sample: SampleFn | None = None,
    *,
    rss_cap_bytes: int | None = None,
    timeout_s: float | None = None,
) -> RunResult:
    """Run ``experiment`` in a fresh worker process and return its result (never raises for a
    failed run: the result's ``status`` and ``error`` say what happened)."""
    handle = RunHandle(
        experiment,
        on_sample=on_sample,
        rss_cap_bytes=rss_cap_bytes,
        timeout_s=timeout_s,
        use_warm=True,
        keep_warm=False,
    )
    return handle.wait()


# ============================================================================================
# The scheduler: service jobs and measured runs never overlap
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


_sched = _Scheduler()


# ============================================================================================
# The service worker: torch-side jobs (estimates, accuracy checks), one at a time
# ============================================================================================
class WorkerError(RuntimeError):
    """The service worker died, did not start, or could not send a job's outcome back."""


class _RemoteTraceback(Exception):
    """The worker's traceback text, chained as ``__cause__`` of the job's exception (as
    ``concurrent.futures.ProcessPoolExecutor`` does), so a traceback in the caller shows it."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


def _dumps(obj: Any) -> bytes:
    """Pickle ``obj``; what plain pickle refuses (a function defined in a notebook) goes by
    value through cloudpickle, which the worker's plain ``pickle.loads`` reads back."""
    try:
        return pickle.dumps(obj)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle

        return bytes(cloudpickle.dumps(obj))


def _service_main(conn: Connection, cancel: Any, stderr_path: str) -> None:
    """Entry point of the service worker: import torch once, then run jobs until the pipe
    closes. Every job's outcome goes back: its value, or its exception and traceback."""
    import faulthandler
    import sys

    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives with the process
    faulthandler.enable()
    try:
        import torch  # noqa: F401  (the warm part: every job after the first starts at once)
    except BaseException as e:  # noqa: BLE001 - report, never hang the parent
        conn.send(("fatal", f"service worker could not start: {type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or is gone
        if msg[0] != "job":
            return
        try:
            fn, args, kwargs = pickle.loads(msg[1])
            value = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - every failure of the job goes back
            tb = traceback.format_exc()
            exc: bytes | None = None
            try:
                exc = _dumps(e)
                pickle.loads(exc)  # an exception that pickles but cannot be rebuilt is common
            except Exception:  # noqa: BLE001
                exc = None
            conn.send(("error", exc, type(e).__qualname__, str(e), tb))
        else:
            try:
                out = _dumps(value)
            except Exception as e:  # noqa: BLE001
                conn.send(
                    (
                        "error",
                        None,
                        "PicklingError",
                        f"the job's result could not be pickled: {type(e).__name__}: {e}",
                        traceback.format_exc(),
                    )
                )
            else:
                conn.send(("ok", out))
        del msg
        gc.collect()  # the next job starts from a clean heap


JobFn = Callable[["Job"], None]


class Job:
    """A call queued for, or running in, the service worker (see :func:`submit`).

    ``status``: ``queued``, ``running``, ``done`` (a value), ``failed`` (an exception) or
    ``cancelled``. ``result()`` returns the value or raises the job's exception; ``cancel()``
    drops a queued job, or stops a running one by killing the worker (the only way to stop
    code that does not look at a flag; the next job gets a fresh worker)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout_s: float | None,
        on_done: JobFn | None,
    ) -> None:
        self.fn_name = getattr(fn, "__qualname__", None) or repr(fn)
        self.timeout_s = timeout_s
        self.on_done = on_done
        self.status = "queued"
        #: time.monotonic() when the job was sent to the worker, and when it ended.
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._payload = _dumps((fn, args, kwargs))  # here: a job that cannot go fails at once
        self._value: Any = None
        self._error: BaseException | None = None
        self._cancel = False
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended; False if it is still going after ``timeout`` s."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The job's value; its exception (the worker's traceback chained) is raised here."""
        if not self._done.wait(timeout):
            raise TimeoutError(
                f"{self.fn_name} still {self.status} after {timeout} s (cancel() stops it)"
            )
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's exception, or None if it returned a value."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.fn_name} still {self.status} after {timeout} s")
        return self._error

    def cancel(self) -> bool:
        """Stop the job; False if it had already ended. Its result raises CancelledError."""
        if _service.cancel_queued(self):
            return True
        with _sched.cv:
            if self._done.is_set():
                return False
            self._cancel = True  # the service thread kills the worker within _POLL_S
        return True

    def __repr__(self) -> str:
        return f"Job({self.fn_name}, status={self.status!r})"

    def _end(self, status: str, value: Any = None, error: BaseException | None = None) -> None:
        with _sched.cv:
            if self._done.is_set():
                return
            self.status, self._value, self._error = status, value, error
            self.ended_at = time.monotonic()
            self._done.set()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:  # noqa: BLE001 - a callback must not stop the service thread
                _log.exception("memlab.runner: a job's on_done callback failed")


class _Service:
    """The parent side of the service worker: a queue and one thread that feeds the worker
    one job at a time, when the scheduler allows, and watches it (death, timeout, cancel)."""

    def __init__(self) -> None:
        self.queue: deque[Job] = deque()
        self.worker: _Worker | None = None
        self.thread: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        with _sched.cv:
            self.queue.append(job)
            if self.thread is None or not self.thread.is_alive():
                # A daemon thread in the parent is safe: the parent never imports torch.
                self.thread = threading.Thread(
                    target=self._loop, name="memlab-service", daemon=True
                )
                self.thread.start()
            _sched.cv.notify_all()

    def cancel_queued(self, job: Job) -> bool:
        with _sched.cv:
            if job not in self.queue:
                return False
            self.queue.remove(job)
        job._end("cancelled", error=_cancelled(job))
        return True

    def is_service_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def shutdown(self) -> None:
        with _sched.cv:
            w, self.worker = self.worker, None
        if w is not None:
            _kill(w)

    # -- the service thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with _sched.cv:
                _sched.cv.wait_for(lambda: bool(self.queue) and not _sched.runs)
                job = self.queue.popleft()
                job.status = "running"
                _sched.job_running = True
            try:
                status, value, error = self._run(job)
            except BaseException as e:  # noqa: BLE001 - the thread must always end the job
                status, value, error = (
                    "failed",
                    None,
                    WorkerError(f"memlab runner failed: {type(e).__name__}: {e}"),
                )
            finally:
                with _sched.cv:
                    _sched.job_running = False
                    _sched.cv.notify_all()
            job._end(status, value, error)

    def _ready_worker(self, job: Job) -> _Worker | BaseException:
        w = self.worker
        if w is not None and w.process.is_alive():
            return w
        if w is not None:
            _kill(w)
        w = self.worker = _spawn(_service_main, "memlab-service")
        t0 = time.monotonic()
        while True:
            if job._cancel:
                self._drop(w)
                return _cancelled(job)
            try:
                ready = w.conn.poll(_POLL_S)
                msg = w.conn.recv() if ready else None
            except (EOFError, OSError):
                return self._died(w, job, "while starting")
            if msg is not None:
                if msg[0] == "ready":
                    return w
                self._drop(w)
                return WorkerError(str(msg[1]) if len(msg) > 1 else f"unexpected {msg!r}")
            if not w.process.is_alive():
                return self._died(w, job, "while starting")
            if time.monotonic() - t0 > _SERVICE_START_S:
                self._drop(w)
                return WorkerError(
                    f"the memlab service worker did not start within {_SERVICE_START_S:.0f} s"
                )

    def _run(self, job: Job) -> tuple[str, Any, BaseException | None]:
        w = self._ready_worker(job)
        if isinstance(w, BaseException):
            return ("cancelled" if isinstance(w, CancelledError) else "failed"), None, w
        if job._cancel:
            return "cancelled", None, _cancelled(job)
        job.started_at = time.monotonic()
        try:
            w.conn.send(("job", job._payload))
        except (OSError, EOFError, ValueError):
            return "failed", None, self._died(w, job, "before the job began")
        while True:
            try:
                ready = w.conn.poll(_POLL_S)
                msg = w.conn.recv() if ready else None
            except (EOFError, OSError):
                return "failed", None, self._died(w, job, "running")
            if msg is not None:
                return self._outcome(job, msg)
            if job._cancel:
                self._drop(w)
                return "cancelled", None, _cancelled(job)
            if not w.process.is_alive():
                return "failed", None, self._died(w, job, "running")
            if job.timeout_s is not None and time.monotonic() - job.started_at > job.timeout_s:
                self._drop(w)  # the only way to stop it; the next job gets a fresh worker
                return (
                    "failed",
                    None,
                    TimeoutError(
                        f"{job.fn_name} ran over its timeout of {job.timeout_s} s in the memlab "
                        "service worker (the worker was stopped)"
                    ),
                )

    @staticmethod
    def _outcome(job: Job, msg: tuple[Any, ...]) -> tuple[str, Any, BaseException | None]:
        if msg[0] == "ok":
            try:
                return "done", pickle.loads(msg[1]), None
            except Exception as e:  # noqa: BLE001 - e.g. a class the kernel cannot import
                return (
                    "failed",
                    None,
                    WorkerError(
                        f"{job.fn_name} returned a value this process cannot unpickle: "
                        f"{type(e).__name__}: {e}"
                    ),
                )
        _, exc_bytes, type_name, message, tb = msg
        error: BaseException | None = None
        if exc_bytes is not None:
            try:
                error = pickle.loads(exc_bytes)
            except Exception:  # noqa: BLE001
                error = None
        if not isinstance(error, BaseException):
            error = WorkerError(f"{type_name}: {message}")
        error.__cause__ = _RemoteTraceback(tb)
        return "failed", None, error

    def _drop(self, w: _Worker) -> None:
        with _sched.cv:
            if self.worker is w:
                self.worker = None
        _kill(w)

    def _died(self, w: _Worker, job: Job, when: str) -> WorkerError:
        w.process.join(timeout=1)
        code = w.process.exitcode
        tail = _stderr_tail(w.stderr_path)
        self._drop(w)
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        msg = f"the memlab service worker died ({how}) {when} {job.fn_name}"
        if tail:
            msg += f"; its last stderr lines:\n{tail}"
        return WorkerError(msg)


def _cancelled(job: Job) -> CancelledError:
    # concurrent.futures' CancelledError, the one Future users already catch.
    return CancelledError(f"{job.fn_name} was cancelled")


_service = _Service()


def submit(
    fn: Callable[..., Any],
    /,
    *args: Any,
    timeout_s: float | None = None,
    on_done: JobFn | None = None,
    **kwargs: Any,
) -> Job:
    """Queue ``fn(*args, **kwargs)`` for the service worker and return its :class:`Job` at once.

    The service worker is one long-lived process with torch imported (started on first use,
    replaced if it dies, killed at exit); it runs jobs one at a time, in order, and never while
    a run is in progress. ``timeout_s`` bounds the job's own time in the worker (not the time
    it waited in the queue); past it the worker is stopped and the job raises TimeoutError.
    ``on_done(job)`` is called once the job has ended, on the runner's service thread: keep it
    short. ``fn`` and its arguments are pickled (a function defined in a notebook goes by
    value); its value comes back pickled, so return plain data (not tensors: unpickling them
    would import torch here).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or timeout_s <= 0):
        raise ValueError(
            f"timeout_s must be a positive number of seconds or None, got {timeout_s!r}"
        )
    if on_done is not None and not callable(on_done):
        raise TypeError(f"on_done must be callable, got {on_done!r}")
    _register_atexit()
    job = Job(fn, args, kwargs, timeout_s, on_done)
    _service.submit(job)
    return job


def call(
    fn: Callable[..., Any], /, *args: Any, timeout_s: float | None = None, **kwargs: Any
) -> Any:
    """``fn(*args, **kwargs)`` in the service worker (torch stays out of the caller), returned;
    an exception in the job is raised here, the worker's traceback chained to it. Waits for a
    run in progress to end first. See :func:`submit` for ``timeout_s`` and what may be sent.

    The one way labs and checks run torch-side helpers (an estimate, an accuracy job).
    """
    if _service.is_service_thread():
        raise RuntimeError(
            "memlab.runner.call from a job's on_done callback would wait for "
            "itself; use submit() there"
        )
    return submit(fn, *args, timeout_s=timeout_s, **kwargs).result()


def shutdown_service() -> None:
    """Stop the idle service worker (the next job starts a new one)."""
    _service.shutdown()
