"""Worker processes: starting, killing, and what a dead one left on stderr.

Every kind of worker (a run's, the service's, a partition's stages) is started here, and every
one is killed at exit. Never as a fork of the caller (a forked copy of a kernel that has touched
torch's thread pools is unsafe), but from multiprocessing's *forkserver*: one clean process,
started on first use, that imported torch (and ``torch._dynamo``, which the first optimizer
imports) and nothing else, and forks a worker per request. Why: a spawned worker imported torch
and dynamo itself, 3-5 s of CPU on an idle 2-core machine and 15 s under load, in front of every
run a learner starts with a slider and every one of the test suite's few hundred runs; a fork
of the server starts in a tenth of a second. Each worker still gets a fresh process and heap
(the server never runs a step, so no lazy allocation, thread pool or freed block is
inherited), and it sees the caller's environment as of its start (``_child``).

Not every setting can follow a fork: C libraries read some variables when the process starts
(glibc's ``MALLOC_*`` and ``LD_PRELOAD`` at exec, OpenMP's and BLAS's thread counts when torch is
imported). Those the server started with are its *start key*; a worker asked for while the
caller's environment has other values for them is spawned as before. ``MEMLAB_WORKER_START=spawn``
spawns every worker.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

_POLL_S = 0.02  # how often a parent-side thread looks at its worker


@dataclasses.dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    cancel: Any
    stderr_path: str


START_ENV = "MEMLAB_WORKER_START"
#: What the forkserver imports before forking: all a worker imports before its first step.
_PRELOAD = [
    "torch",
    "torch._dynamo",
    "memlab.runner.runs",
    "memlab.tracking.tracker",
    "memlab.knobs.build",
    "memlab.workloads.builtin",
]
#: Environment variables read when a process starts (by glibc, the dynamic loader, Python, or
#: torch's import: OpenMP, MKL, OpenBLAS, c10's logging and CPU capability), not when a worker
#: later looks at ``os.environ``. Not torch's Python-level settings, which are read when used
#: (``TORCHINDUCTOR_CACHE_DIR``, which inductor sets in the caller's environment on first
#: use, had every later worker of the test suite spawned when it was in this list).
_START_PREFIXES = (
    "LD_",
    "MALLOC_",
    "GLIBC_",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "PYTHON",
    "ATEN_",
    "TORCH_CPP_",
    "TORCH_SHOW_CPP",
    "CUDA_",
    "NVIDIA_",
    "HIP_",
    "ROCM",
    "LC_",
    "LANG",
)
_server_key: tuple[tuple[str, str], ...] | None = None


def _start_key() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_START_PREFIXES)))


def _context(fresh: bool = False) -> Any:
    """The multiprocessing context a worker starts from now (see the module docstring)."""
    global _server_key
    how = os.environ.get(START_ENV, "forkserver").strip().lower() or "forkserver"
    if how not in ("forkserver", "spawn"):
        raise ValueError(f"{START_ENV} must be forkserver or spawn, got {how!r}")
    if fresh or how == "spawn" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    key = _start_key()
    ctx = mp.get_context("forkserver")
    if _server_key is None:  # the server starts with this first worker, in this environment
        ctx.set_forkserver_preload(_PRELOAD)
        _server_key = key
    if key == _server_key:
        return ctx
    if _log.isEnabledFor(logging.DEBUG):
        differ = sorted(dict(set(key) ^ set(_server_key)))
        _log.debug("memlab worker spawned, not forked: %s differ from the forkserver's", differ)
    return mp.get_context("spawn")


_parent_pid: int | None = None


def parent_pid() -> int:
    """The process that started this worker (a forkserver's worker is the server's child)."""
    return _parent_pid if _parent_pid is not None else os.getppid()


def _child(target: Callable[..., None], env: dict[str, str], parent: int, *args: Any) -> None:
    """A worker's first step: the caller's environment as of the start (a forked worker has the
    server's, from whenever the server started), then the worker's own entry point."""
    global _parent_pid
    _parent_pid = parent
    os.environ.clear()
    os.environ.update(env)
    target(*args)


def _spawn(target: Callable[..., None], name: str, *, fresh: bool = False) -> _Worker:
    """Start ``target(conn, cancel, stderr_path)`` in a worker; ``fresh``: a spawned interpreter
    whatever the setting (see ``runs._take_worker`` for who needs one)."""
    ctx = _context(fresh)
    parent, child = ctx.Pipe(duplex=True)
    cancel = ctx.Event()
    fd, path = tempfile.mkstemp(prefix="memlab-worker-", suffix=".stderr")
    os.close(fd)
    # Not a daemon: a daemonic process may not have children, and the DataLoader's workers
    # (num_workers > 0) are the worker's children. Workers are killed explicitly (_kill), and
    # at exit by _kill_all, which runs before multiprocessing's own exit hook joins them.
    proc = ctx.Process(
        target=_child,
        args=(target, dict(os.environ), os.getpid(), child, cancel, path),
        name=name,
    )
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
