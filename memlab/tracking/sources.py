"""Where allocation events come from: the ``EventSource`` protocol and its implementations.

- ``NativeSource`` (``cpu-allocator``): memlab's C++ recorder wrapping PyTorch's CPU allocator
  (``_alloc.cpp``). Exact, live, and the budget stops the very allocation that would not fit.
  Needs a C++ compiler the first time (torch.utils.cpp_extension builds it once per machine).
- ``ProfilerSource`` (``cpu-profiler``): the fallback where no compiler is. torch.profiler
  (``profile_memory=True``) records every CPU allocator allocation and free with address, size
  and time (c10/core/CPUAllocator.cpp, ProfiledCPUMemoryReporter), op-internal buffers
  included; they are read when a block ends, so the result is as exact as the native one. While
  the block runs, a ``TorchDispatchMode`` counts the storages ops return: the live view and the
  budget see op outputs only (they miss op-internal buffers) and are approximate.
- ``CudaSource`` (``cuda-allocator``): the CUDA caching allocator's trace and counters.
- ``FakeSource`` (``fake-dispatch``): storages of fake tensors seen at dispatch, for
  ``memlab.estimate``.

``default_source()`` is the one process-wide CPU source that ``memlab.track`` and the runner's
worker read (the runner reads its live counter through it, never through the C library). It
is chosen by ``MEMLAB_EVENT_SOURCE``:

- ``auto`` (default): the native recorder; if it cannot be built (no C++ compiler on PATH and no
  cached build, or the build fails), the profiler fallback, with a ``RuntimeWarning`` that says
  what is lost.
- ``native``: the native recorder or ``NativeBuildError``.
- ``profiler``: the profiler fallback, without trying to build.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import threading
import time
import warnings
import weakref
from typing import Any, Protocol

import numpy as np

__all__ = [
    "EventSource",
    "NativeSource",
    "ProfilerSource",
    "CudaSource",
    "FakeSource",
    "default_source",
    "cuda_source",
    "ENV_VAR",
    "FALLBACK_NOTE",
]

ENV_VAR = "MEMLAB_EVENT_SOURCE"
FALLBACK_NOTE = (
    "measured with torch.profiler's allocator events (memlab's C++ recorder is not built here): "
    "the result is exact, but while the block runs the live bytes and the budget see op "
    "outputs only (op-internal buffers are missed), and allocations in threads the profiler "
    "does not follow are not seen"
)


class EventSource(Protocol):
    """Where allocation events come from.

    ``events(start, end)`` returns int64 rows ``(t_ns, addr, delta, tag)`` -- ``t_ns`` on
    ``time.monotonic_ns``'s clock, ``delta`` +bytes at an allocation and -bytes at a free,
    ``tag`` the last ``set_tag`` value -- between two ``position()`` readings. A position is
    an event index, or with ``by_time`` a ``time.monotonic_ns()`` reading (then marks are placed
    among the events by their times). ``begin``/``end`` nest: recording runs from the first
    ``begin`` to the last ``end``. ``addr`` keys a storage the way the events do. ``live`` is
    the bytes the source counts now (``live_exact``: every allocation, else op outputs
    only); ``set_limit`` (0: none) makes an allocation that would
    take ``live`` past it raise ``torch.OutOfMemoryError``. ``notes`` say what is approximate.
    """

    name: str
    by_time: bool
    live_exact: bool
    limit: int
    notes: tuple[str, ...]

    def begin(self) -> None: ...
    def end(self) -> None: ...
    def position(self) -> int: ...
    def events(self, start: int, end: int) -> np.ndarray: ...
    def set_tag(self, tag: int) -> None: ...
    def live(self) -> int: ...
    def adopt(self, t: Any, nbytes: int) -> None: ...
    def set_limit(self, limit: int) -> None: ...
    def addr(self, t: Any) -> int: ...


_NO_EVENTS = np.zeros((0, 4), dtype=np.int64)


# ----------------------------------------------------------------------------------------------
class NativeSource:
    """The C++ recorder that wraps PyTorch's CPU allocator (``_alloc.cpp``)."""

    name = "cpu-allocator"
    by_time = False
    live_exact = True
    notes: tuple[str, ...] = ()

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.limit = 0
        self._depth = 0

    def begin(self) -> None:
        if self._depth == 0:
            self.lib.memlab_clear_events()
            self.lib.memlab_set_recording(1)
        self._depth += 1

    def end(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.lib.memlab_set_recording(0)
            self.lib.memlab_clear_events()
            self.lib.memlab_set_tag(0)

    def position(self) -> int:
        return int(self.lib.memlab_event_count())

    def set_tag(self, tag: int) -> None:
        self.lib.memlab_set_tag(tag)

    def live(self) -> int:
        return int(self.lib.memlab_live())

    def adopt(self, t: Any, nbytes: int) -> None:
        self.lib.memlab_adopt(t.untyped_storage()._cdata, nbytes)

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self.lib.memlab_set_limit(limit)

    def events(self, start: int, end: int) -> np.ndarray:
        out = np.empty((max(0, end - start), 4), dtype=np.int64)
        if len(out):
            got = self.lib.memlab_copy_events(out.ctypes.data_as(ctypes.c_void_p), start, len(out))
            out = out[:got]
        return out

    def addr(self, t: Any) -> int:
        return int(t.untyped_storage().data_ptr())

    # -- the shared pool (memlab.scheduling) ----------------------------------------------------
    def _pool_fns(self) -> tuple[Any, Any] | None:
        """The recorder's pool entry points, declared here (not in ``_native._declare``) so a
        library built before they existed still loads: then ``None``."""
        set_pool = getattr(self.lib, "memlab_set_pool", None)
        pool_add = getattr(self.lib, "memlab_pool_add", None)
        if set_pool is None or pool_add is None:
            return None
        i64 = ctypes.c_int64
        set_pool.argtypes, set_pool.restype = [i64, i64], ctypes.c_int
        pool_add.argtypes, pool_add.restype = [i64, i64, i64], None
        return set_pool, pool_add

    @property
    def supports_pool(self) -> bool:
        """Whether this recorder can charge a shared pool (``set_pool``)."""
        return self._pool_fns() is not None

    def set_pool(self, address: int, slot: int) -> None:
        """Charge this process's CPU allocations from now on to the shared pool whose int64
        block starts at ``address`` (``[live, peak, limit, per-slot bytes...]``, in shared
        memory that stays mapped while set), under per-process counter ``slot``; an allocation
        that would take the pool's live bytes past its limit raises ``torch.OutOfMemoryError``.
        ``address`` 0 detaches (what was charged is given back). See ``_alloc.cpp``."""
        fns = self._pool_fns()
        if fns is None:
            raise RuntimeError(
                "this build of memlab's recorder has no shared pool (built before it existed); "
                "remove the cached build under $TORCH_EXTENSIONS_DIR to rebuild it"
            )
        fns[0](int(address), int(slot))

    def pool_add(self, address: int, slot: int, delta: int) -> None:
        """Atomically add ``delta`` to the pool's live bytes and to ``slot``'s counter (a new
        process gives back what a dead one in that slot held)."""
        fns = self._pool_fns()
        if fns is None:
            raise RuntimeError("this build of memlab's recorder has no shared pool")
        fns[1](int(address), int(slot), int(delta))


# ----------------------------------------------------------------------------------------------
class _Ledger:
    """Storages seen from Python, each counted once until it dies.

    The weakref is on the storage's Python object, which torch keeps alive as long as the C++
    storage lives (PyObject preservation, torch/csrc/Storage.cpp), so the finalizer runs when
    the storage is freed. An RLock: a finalizer may run inside a locked section when a
    decref there frees a storage.
    """

    def __init__(self, on_free: Any = None) -> None:
        self.live = 0
        self._sizes: dict[int, int] = {}
        self._lock = threading.RLock()
        self._on_free = on_free

    def __contains__(self, key: int) -> bool:
        return key in self._sizes

    def add(self, storage: Any, key: int, nbytes: int) -> bool:
        with self._lock:
            if key in self._sizes:
                return False
            self._sizes[key] = nbytes
            self.live += nbytes
        weakref.finalize(storage, self._free, key)
        return True

    def _free(self, key: int) -> None:
        with self._lock:
            n = self._sizes.pop(key, None)
            if n is None:
                return
            self.live -= n
        if self._on_free is not None:
            self._on_free(key, n)


class FakeSource:
    """Allocation events of fake tensors, seen at the dispatch level by ``memlab.estimate``
    (whose dispatch mode calls ``saw`` for every output and ``transient`` for the op-internal
    buffers ``memlab.estimate_ops`` predicts). Addresses are the storages' ``_cdata``: fake
    storages have no data pointer."""

    name = "fake-dispatch"
    by_time = False
    live_exact = True
    notes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._events: list[tuple[int, int, int, int]] = []
        self._ledger = _Ledger(on_free=lambda key, n: self._log(key, -n))
        self._tag = 0
        self._depth = 0
        self.limit = 0
        self._next_addr = 1 << 40  # addresses for op-internal buffers, apart from _cdata

    def begin(self) -> None:
        if self._depth == 0:
            self._events = []
        self._depth += 1

    def end(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._events = []
            self._tag = 0

    def position(self) -> int:
        return len(self._events)

    def set_tag(self, tag: int) -> None:
        self._tag = tag

    def live(self) -> int:
        return self._ledger.live

    def adopt(self, t: Any, nbytes: int) -> None:
        st = t.untyped_storage()
        self._ledger.add(st, int(st._cdata), nbytes)

    def set_limit(self, limit: int) -> None:
        self.limit = limit  # predictions are never stopped

    def events(self, start: int, end: int) -> np.ndarray:
        return np.asarray(self._events[start:end], dtype=np.int64).reshape(-1, 4)

    def addr(self, t: Any) -> int:
        return int(t.untyped_storage()._cdata)

    def _log(self, key: int, delta: int) -> None:
        if self._depth > 0:
            self._events.append((time.monotonic_ns(), key, delta, self._tag))

    def saw(self, t: Any, real_nbytes: int | None = None) -> None:
        st = t.untyped_storage()
        key = int(st._cdata)
        n = int(st.nbytes()) if real_nbytes is None else real_nbytes
        if self._ledger.add(st, key, n):
            self._log(key, n)

    def transient(self, nbytes: int) -> None:
        """An op-internal buffer: allocated and freed inside one op."""
        key = self._next_addr
        self._next_addr += 64
        self._log(key, nbytes)
        self._log(key, -nbytes)


# ----------------------------------------------------------------------------------------------
def _live_mode(ledger: _Ledger, source: ProfilerSource) -> Any:
    """A dispatch mode that counts the CPU storages ops return (not those they were given:
    an in-place op returns its input) and enforces the source's limit after each op."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    def storages(obj: Any) -> list[Any]:
        out = []
        for t in tree_leaves(obj):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                try:
                    out.append(t.untyped_storage())
                except (RuntimeError, NotImplementedError):  # sparse, nested: no storage
                    continue
        return out

    class _LiveMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            given = {int(s.data_ptr()) for s in storages((args, kwargs))}
            for st in storages(out):
                key = int(st.data_ptr())
                if key and key not in given:
                    ledger.add(st, key, int(st.nbytes()))
            limit = source.limit
            if limit > 0 and ledger.live > limit:
                raise torch.OutOfMemoryError(
                    f"memlab budget exceeded: {func} left {ledger.live} bytes live, past the "
                    f"limit of {limit} bytes (checked at the dispatch level: the op ran, and "
                    "op-internal buffers are not counted)"
                )
            return out

    return _LiveMode()


class ProfilerSource:
    """CPU allocator events from torch.profiler, read when a block ends; a dispatch-level live
    count while it runs (see the module docstring)."""

    name = "cpu-profiler"
    by_time = True
    live_exact = False
    notes: tuple[str, ...] = (FALLBACK_NOTE,)

    def __init__(self) -> None:
        self.limit = 0
        self._depth = 0
        self._ledger = _Ledger(on_free=self._adopted_free)
        self._adopted: set[int] = set()
        self._rows: list[np.ndarray] = []  # harvested profiler events, monotonic ns
        self._synthetic: list[tuple[int, int, int, int]] = []  # frees of adopted storages
        self._tags: list[tuple[int, int]] = [(0, 0)]  # (monotonic ns, tag) at each change
        self._mode: Any = None
        self._running = False
        self._clock0 = (0, 0)

    # -- recording -----------------------------------------------------------------------------
    def begin(self) -> None:
        if self._depth == 0:
            self._rows, self._synthetic, self._tags = [], [], [(0, 0)]
            self._start()
            self._mode = _live_mode(self._ledger, self)
            self._mode.__enter__()
        self._depth += 1

    def end(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            try:
                self._mode.__exit__(None, None, None)
            finally:
                self._mode = None
                if self._running:
                    self._stop()
                self._rows, self._synthetic, self._tags = [], [], [(0, 0)]

    def _start(self) -> None:
        import torch
        from torch._C._profiler import (
            ProfilerActivity,
            ProfilerConfig,
            ProfilerState,
            _ExperimentalConfig,
        )
        from torch.autograd import _enable_profiler, _prepare_profiler

        if torch.autograd._profiler_enabled():
            raise RuntimeError(
                "memlab.track measures with torch.profiler here (no C++ compiler for its own "
                "recorder), and a profiler is already running: end it first"
            )
        # Kineto logs a line to stderr at every start and stop ("USDT ... profiler_start");
        # levels at or above the highest silence it (libkineto Logger.h, LoggerOutputType).
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        # The private entry points of torch.autograd.profiler.profile without its parsing of
        # every op into FunctionEvents on exit, which memlab does not need (autograd/profiler.py).
        cfg = ProfilerConfig(
            ProfilerState.KINETO, False, True, False, False, False, _ExperimentalConfig(), ""
        )
        acts = {ProfilerActivity.CPU}
        _prepare_profiler(cfg, acts)
        self._clock0 = _clock_pair()
        _enable_profiler(cfg, acts)
        self._running = True

    def _stop(self) -> None:
        import torch
        from torch.autograd import _disable_profiler

        result = _disable_profiler()
        clock1 = _clock_pair()
        self._running = False
        alloc = torch._C._profiler._EventType.Allocation
        rows: list[tuple[int, int, int]] = []
        stack = list(result.experimental_event_tree())
        while stack:
            e = stack.pop()
            stack.extend(e.children)
            if e.tag == alloc:
                f: Any = e.typed[1]  # _ExtraFields_Allocation, as the tag says
                if f.device.type == "cpu" and f.alloc_size != 0:
                    rows.append((e.start_time_ns, f.ptr, f.alloc_size))
        if not rows:
            return
        arr = np.asarray(rows, dtype=np.int64)
        # Profiler times are on the wall clock (c10::getTime, CLOCK_REALTIME); map them onto the
        # monotonic clock of memlab's marks, linearly between the readings at start and stop.
        (w0, m0), (w1, m1) = self._clock0, clock1
        scale = (m1 - m0) / (w1 - w0) if w1 > w0 else 1.0
        mono = m0 + ((arr[:, 0] - w0).astype(np.float64) * scale).astype(np.int64)
        out = np.zeros((len(arr), 4), dtype=np.int64)
        out[:, 0], out[:, 1], out[:, 2] = mono, arr[:, 1], arr[:, 2]
        self._rows.append(out[np.argsort(out[:, 0], kind="stable")])

    def _adopted_free(self, key: int, nbytes: int) -> None:
        if key in self._adopted:
            self._adopted.discard(key)
            if self._depth > 0:
                self._synthetic.append((time.monotonic_ns(), key, -nbytes, 0))

    # -- reading -------------------------------------------------------------------------------
    def position(self) -> int:
        return time.monotonic_ns()

    def events(self, start: int, end: int) -> np.ndarray:
        if self._running:  # a nested block ends inside another: read, and record on
            self._stop()
            self._start()
        ev = np.concatenate(self._rows) if self._rows else _NO_EVENTS
        ev = ev[_paired_frees(ev)]
        if self._synthetic:
            ev = np.concatenate([ev, np.asarray(self._synthetic, dtype=np.int64)])
            ev = ev[np.argsort(ev[:, 0], kind="stable")]
        ev = ev[(ev[:, 0] >= start) & (ev[:, 0] <= end)].copy()
        tag_t = np.asarray([t for t, _ in self._tags], dtype=np.int64)
        tag_v = np.asarray([v for _, v in self._tags], dtype=np.int64)
        ev[:, 3] = tag_v[np.searchsorted(tag_t, ev[:, 0], side="right") - 1]
        return ev

    def set_tag(self, tag: int) -> None:
        if self._depth > 0 and tag != self._tags[-1][1]:
            self._tags.append((time.monotonic_ns(), tag))

    def live(self) -> int:
        return self._ledger.live

    def adopt(self, t: Any, nbytes: int) -> None:
        """Storages allocated before the profiler started: it drops their frees (c10's
        ProfiledCPUMemoryReporter::Delete finds no size for them), so they are watched here."""
        st = t.untyped_storage()
        key = int(st.data_ptr())
        self._ledger.add(st, key, nbytes)  # False if an earlier block saw it made: watched
        self._adopted.add(key)

    def set_limit(self, limit: int) -> None:
        self.limit = limit

    def addr(self, t: Any) -> int:
        return int(t.untyped_storage().data_ptr())


def _clock_pair(tries: int = 7) -> tuple[int, int]:
    """A (wall, monotonic) reading of the same instant. Read back to back, the two clocks can be
    a whole time slice apart when the process is preempted between the calls (a loaded 2-core
    machine); such an offset moves every profiler event against memlab's marks, and a free a few
    microseconds before ``backward()`` began was seen after it (a CI failure: the logits counted
    as a saved activation). So bracket the wall reading between two monotonic ones and keep the
    tightest bracket of a few tries: the error is at most half of it, well under a microsecond
    unless every try was preempted."""
    best: tuple[int, int, int] | None = None
    for _ in range(tries):
        m0 = time.monotonic_ns()
        w = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, w, (m0 + m1) // 2)
    assert best is not None
    return best[1], best[2]


def _paired_frees(ev: np.ndarray) -> np.ndarray:
    """Keep allocations, and frees whose previous event at the same address is an allocation.
    A free of a block allocated before the session is dropped: an adopted storage's free comes
    from its weakref instead, and the profiler can report such frees with a stale size (its
    size table is kept between sessions, not updated while it is off)."""
    n = len(ev)
    keep = ev[:, 2] > 0
    if n > 1:
        order = np.lexsort((np.arange(n), ev[:, 1]))
        a, d = ev[order, 1], ev[order, 2]
        prev_alloc = np.zeros(n, dtype=bool)
        prev_alloc[1:] = (a[1:] == a[:-1]) & (d[:-1] > 0)
        keep[order[(d < 0) & prev_alloc]] = True
    return keep


# ----------------------------------------------------------------------------------------------
class CudaSource:
    """The CUDA caching allocator of one device: its trace (``torch.cuda.memory``) for the
    events, its counters for the live bytes, ``set_per_process_memory_fraction`` for a budget."""

    name = "cuda-allocator"
    by_time = True
    live_exact = True
    notes: tuple[str, ...] = ()

    def __init__(self, device: str) -> None:
        self.device = device
        self.limit = 0
        self._depth = 0
        self._entry = 0
        self._wall_minus_mono = 0

    def _dev(self) -> Any:
        import torch

        return torch.device(self.device)

    def begin(self) -> None:
        import torch

        dev = self._dev()
        torch.cuda.synchronize(dev)
        if self._depth == 0:
            torch.cuda.reset_peak_memory_stats(dev)
            self._entry = int(torch.cuda.memory_allocated(dev))
            self._wall_minus_mono = time.time_ns() - time.monotonic_ns()
            # context=None: the trace needs addresses, sizes and times, not stacks; capturing
            # stacks also broke custom autograd Functions under checkpointing on torch 2.11.
            torch.cuda.memory._record_memory_history(
                max_entries=1_000_000, context=None, device=dev
            )
        self._depth += 1

    def end(self) -> None:
        import torch

        self._depth -= 1
        if self._depth == 0:
            torch.cuda.memory._record_memory_history(enabled=None, device=self._dev())

    def position(self) -> int:
        return time.monotonic_ns()

    def events(self, start: int, end: int) -> np.ndarray:
        import torch

        dev = self._dev()
        torch.cuda.synchronize(dev)
        snap = torch.cuda.memory._snapshot(dev)
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        trace = snap["device_traces"][idx] if idx < len(snap["device_traces"]) else []
        rows = []
        for e in trace:
            if e["action"] == "alloc":
                rows.append((e["time_us"], e["addr"], e["size"]))
            elif e["action"] == "free_completed":
                rows.append((e["time_us"], e["addr"], -e["size"]))
        ev = np.zeros((len(rows), 4), dtype=np.int64)
        if rows:
            arr = np.asarray(rows, dtype=np.float64)
            ev[:, 0] = (arr[:, 0] * 1e3 - self._wall_minus_mono).astype(np.int64)
            ev[:, 1] = arr[:, 1].astype(np.int64)
            ev[:, 2] = arr[:, 2].astype(np.int64)
        return ev[(ev[:, 0] >= start) & (ev[:, 0] <= end)]

    def stats(self) -> dict[str, int]:
        import torch

        dev = self._dev()
        return {
            "allocated": int(torch.cuda.memory_allocated(dev)),
            "reserved": int(torch.cuda.memory_reserved(dev)),
            "peak": int(torch.cuda.max_memory_allocated(dev)),
            "allocated_at_entry": self._entry,
        }

    def set_tag(self, tag: int) -> None:
        pass  # the trace has no tags: CUDA results have no activations per module

    def live(self) -> int:
        import torch

        return int(torch.cuda.memory_allocated(self._dev()))

    def adopt(self, t: Any, nbytes: int) -> None:
        pass  # the caching allocator sees every free already

    def set_limit(self, limit: int) -> None:
        import torch

        self.limit = limit
        dev = self._dev()
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total) if limit else 1.0, dev)

    def addr(self, t: Any) -> int:
        return int(t.untyped_storage().data_ptr())


@functools.cache
def cuda_source(device: str) -> CudaSource:
    """The source of one CUDA device (``cuda:N``)."""
    return CudaSource(device)


# ----------------------------------------------------------------------------------------------
def _no_compiler_reason() -> str | None:
    """Why the native recorder cannot be built here, found without trying; None if it may be.

    torch.utils.cpp_extension compiles with ``$CXX`` (default ``c++``) and ninja, and even a
    cached build runs them on a fresh process's first load (cpp_extension._jit_compile); a
    cached library with its compiler gone may still load, so it is tried."""
    from memlab.tracking import _native

    if _native.cached_library() is not None:
        return None
    cxx = os.environ.get("CXX", "cl" if os.name == "nt" else "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx}) on PATH"
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


@functools.lru_cache(maxsize=1)
def default_source() -> EventSource:
    """The process's CPU allocation source, chosen (and the native recorder built and installed)
    on first use; see the module docstring for ``MEMLAB_EVENT_SOURCE``."""
    from memlab.tracking import _native

    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in ("auto", "native", "profiler"):
        raise ValueError(f"{ENV_VAR} must be auto, native or profiler, got {choice!r}")
    if choice == "profiler":
        return ProfilerSource()
    if choice == "native":
        return NativeSource(_native.recorder())
    reason = _no_compiler_reason()
    if reason is None:
        try:
            return NativeSource(_native.recorder())
        except _native.NativeBuildError as e:
            reason = str(e).splitlines()[0]
    warnings.warn(
        f"memlab: {reason}; {FALLBACK_NOTE} (set {ENV_VAR}=profiler to silence this)",
        RuntimeWarning,
        stacklevel=2,
    )
    return ProfilerSource()
