"""Process memory: RSS split into anonymous and file-backed parts, and its high-water mark.

On Linux the kernel reports the split in ``/proc/<pid>/status`` (proc(5): ``VmRSS = RssAnon +
RssFile + RssShmem``; ``VmHWM`` is the peak RSS). A numpy memmap's touched pages are *file-backed*
and the OS may drop them; anonymous memory is what tensors and malloc hold. Elsewhere psutil gives
the total RSS only, and the parts it cannot give are ``None`` (shown as missing, never guessed).

Writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS (Linux >= 4.0,
Documentation/filesystems/proc.rst), so a block's high-water mark can be read on its own.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from memlab.timeline import PROCESS_PARTS, ProcessSeries

__all__ = ["read_process_memory", "reset_peak_rss", "ProcessSampler", "trim_heap"]

_STATUS_KEYS = {
    "VmRSS": "rss",
    "RssAnon": "rss_anon",
    "RssFile": "rss_file",
    "RssShmem": "rss_shmem",
    "VmHWM": "rss_hwm",
}


def _read_linux(pid: int | None) -> dict[str, int | None] | None:
    path = Path(f"/proc/{'self' if pid is None else pid}/status")
    try:
        text = path.read_text()
    except OSError:
        return None
    out: dict[str, int | None] = {p: None for p in PROCESS_PARTS}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        part = _STATUS_KEYS.get(key)
        if part is not None:
            out[part] = int(rest.split()[0]) * 1024  # the kernel reports kB (KiB)
    return out


def read_process_memory(pid: int | None = None) -> dict[str, int | None]:
    """Current RSS parts in bytes for ``pid`` (default: this process); missing parts are None."""
    if sys.platform.startswith("linux"):
        got = _read_linux(pid)
        if got is not None:
            return got
    try:
        import psutil
    except ImportError as e:  # pragma: no cover - psutil is a dependency
        raise ImportError("memlab needs psutil off Linux: pip install psutil") from e
    info = psutil.Process(pid).memory_info()
    out: dict[str, int | None] = {p: None for p in PROCESS_PARTS}
    out["rss"] = int(info.rss)
    peak = getattr(info, "peak_wset", None)  # Windows only
    out["rss_hwm"] = int(peak) if peak is not None else None
    return out


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark; False where the platform cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Hub:
    """One sampling thread per process, started once and then idle while nobody samples.

    Why not a thread per block: creating a thread beside a training step costs about 2 ms on
    a 2-core machine (it disturbs the OpenMP workers' spinning: measured with
    benchmarks/overhead.py), more than a small model's whole step."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._subs: list[ProcessSampler] = []
        self._thread: threading.Thread | None = None

    def add(self, s: ProcessSampler) -> None:
        with self._cv:
            self._subs.append(s)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="memlab-procmem", daemon=True
                )
                self._thread.start()
            self._cv.notify_all()

    def remove(self, s: ProcessSampler) -> None:
        with self._cv:
            if s in self._subs:
                self._subs.remove(s)

    def _loop(self) -> None:
        next_due: dict[int, float] = {}
        while True:
            with self._cv:
                while not self._subs:
                    next_due.clear()
                    self._cv.wait()
                subs = list(self._subs)
            now = time.monotonic()
            for s in subs:
                due = next_due.setdefault(id(s), now + s.interval_s)
                if now >= due:
                    s.sample()
                    next_due[id(s)] = (
                        due + s.interval_s if due + s.interval_s > now else now + s.interval_s
                    )
            live = {id(s) for s in subs}
            for k in [k for k in next_due if k not in live]:
                del next_due[k]
            wait = min((next_due[id(s)] for s in subs), default=now + 0.01) - time.monotonic()
            with self._cv:
                self._cv.wait(max(0.0, wait))


_HUB = _Hub()


class ProcessSampler:
    """Samples process memory on a period, on memlab's one sampling thread.

    Used by ``memlab.track`` for the process-memory series, and by the runner to stream live
    samples; ``on_sample(t, parts)`` is called on each beat.
    """

    def __init__(
        self,
        interval_s: float = 0.01,
        *,
        t0_ns: int | None = None,
        on_sample: Callable[[float, dict[str, int | None]], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.t0_ns = time.monotonic_ns() if t0_ns is None else t0_ns
        self.on_sample = on_sample
        self._t: list[float] = []
        self._rows: list[dict[str, int | None]] = []
        self._lock = threading.Lock()
        self._stopped = False

    def sample(self) -> None:
        row = read_process_memory()
        t = (time.monotonic_ns() - self.t0_ns) / 1e9
        with self._lock:
            if self._stopped:
                return
            self._t.append(t)
            self._rows.append(row)
        if self.on_sample is not None:
            self.on_sample(t, row)

    def start(self) -> ProcessSampler:
        self.sample()
        _HUB.add(self)
        return self

    def stop(self) -> ProcessSeries:
        """The series so far plus a last sample."""
        _HUB.remove(self)
        self.sample()
        with self._lock:
            self._stopped = True
        parts: dict[str, list[int] | None] = {}
        for p in PROCESS_PARTS:
            vals = [r[p] for r in self._rows]
            parts[p] = (
                None if any(v is None for v in vals) else [int(v) for v in vals if v is not None]
            )
        return ProcessSeries(t=self._t, parts=parts)  # type: ignore[arg-type]


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim(0)``), so that
    RSS shows what the process still holds; False where it cannot (no glibc: macOS, musl).

    glibc keeps freed blocks for reuse, so RSS does not come down after a large free
    (malloc(3), "malloc_trim"); a run under a device profile calls this once after building,
    before its cap starts to watch."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(name).malloc_trim(0)  # returns whether memory was released: not needed
        return True
    except (OSError, AttributeError):
        return False
