"""The service worker: torch-side jobs (estimates, accuracy checks), one at a time.

See ``memlab.runner`` for the picture.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from multiprocessing.connection import Connection
from typing import Any

from memlab.runner.procs import _POLL_S, _kill, _register_atexit, _spawn, _stderr_tail, _Worker
from memlab.runner.scheduler import _sched

_log = logging.getLogger(__name__)

# A service worker that has not imported torch and said "ready" by then is declared dead
# (an import takes seconds; minutes mean something is wrong, and a caller must never hang).
_SERVICE_START_S = 180.0


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


def freeze_heap() -> None:
    """Collect, then move every object alive to the garbage collector's permanent generation
    (``gc.freeze``), once the first job has loaded what jobs use: torch, FakeTensorMode's and
    the estimator's machinery, 300k objects. A full collection walks every tracked object
    (190 ms at that size, measured), and Python runs one whenever the objects surviving since
    the last one reach a quarter of the long-lived ones: during a search, a few times per
    estimate of an encoder-decoder. Frozen objects are never scanned (nor collected: what
    was alive after the first job is what every job keeps alive). The service worker does it
    after its first job; ``benchmarks/estimate.py`` does it after its first warm-up, to time
    estimates as the worker runs them."""
    gc.collect()
    gc.freeze()


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
    frozen = False
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
        if frozen:
            gc.collect()  # the next job starts from a clean heap
        else:
            freeze_heap()  # collects too
            frozen = True


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
