"""Worker processes: spawning, killing, and what a dead one left on stderr.

Both kinds of worker (a run's, the service's) are spawned here (``spawn``: a forked copy of a
kernel that has touched torch's thread pools is unsafe), and every one is killed at exit.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_POLL_S = 0.02  # how often a parent-side thread looks at its worker


@dataclasses.dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    cancel: Any
    stderr_path: str


def _spawn(target: Callable[..., None], name: str) -> _Worker:
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
