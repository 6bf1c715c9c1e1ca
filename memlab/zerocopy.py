"""Zero-copy, measured: what each way of getting a tensor from existing memory allocates.

    result = memlab.zero_copy(64 * 2**20)    # a fresh worker process measures every path
    result.table()                            # one row per path

For a float32 tensor of ``size_bytes``, each path runs once in a fresh spawned process (the
caller never imports torch), on a source made before the measurement:

================  =========================================================================
path              call (source)
================  =========================================================================
from_numpy        ``torch.from_numpy(a)`` (a numpy array)
numpy             ``t.numpy()`` (a tensor)
frombuffer        ``torch.frombuffer(buf, dtype=torch.float32)`` (a ``bytearray``)
from_file         ``torch.from_file(path, shared=True, size=n)`` (a file: a shared mapping)
from_file_private ``torch.from_file(path, shared=False, size=n)`` (copy-on-write mapping)
load_mmap         ``torch.load(path, mmap=True)`` (a file written by ``torch.save``)
load              ``torch.load(path)`` (the same file, read into memory: a copy)
memmap            ``torch.from_numpy(np.memmap(path, mode="r+"))`` (a raw file)
tensor            ``torch.tensor(a)`` (a numpy array: always a copy)
================  =========================================================================

Each row has: the bytes PyTorch's CPU allocator handed out during the call (``memlab.track``'s
events: every allocation, summed); the RSS parts' change (``memlab/tracking/procmem.py``:
anonymous vs file-backed) from before the call to after every page of the result was read
once (a mapping costs nothing until it is touched); whether the result shares memory with its
source, *checked*: the same address as the source array or buffer, or (for a file) an address
inside this process's mapping of that file (``/proc/self/maps``; ``None`` where there is
none), and for ``from_file`` a write through the tensor seen in the file; and the call's time
(one call after a warm-up of the same path on a tiny source: an illustration, not a benchmark).

The allocator counts what ``c10::CPUAllocator`` hands out. Memory a tensor wraps without
allocating (a numpy array's, a mapping's) is outside it, which is the point: ``0`` bytes for
the zero-copy paths, the tensor's bytes for the copies. RSS sees everything, with the
allocator's and glibc's noise; at the default 64 MiB each copy is one fresh ``mmap`` (above
glibc's largest dynamic mmap threshold, 32 MiB: malloc(3), ``M_MMAP_THRESHOLD``), so its
pages are counted once written; the worker also fixes glibc's mmap threshold
(``_pin_mmap_threshold``) so that this holds at every size.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["PATHS", "ZeroCopyRow", "ZeroCopyResult", "zero_copy", "zero_copy_job"]

#: Every path measured, in order (see the module doc).
PATHS = (
    "from_numpy",
    "numpy",
    "frombuffer",
    "from_file",
    "from_file_private",
    "load_mmap",
    "load",
    "memmap",
    "tensor",
)
_CALLS = {
    "from_numpy": "torch.from_numpy(a)",
    "numpy": "t.numpy()",
    "frombuffer": "torch.frombuffer(buf, dtype=torch.float32)",
    "from_file": "torch.from_file(path, shared=True, size=n)",
    "from_file_private": "torch.from_file(path, shared=False, size=n)",
    "load_mmap": "torch.load(path, mmap=True)",
    "load": "torch.load(path)",
    "memmap": 'torch.from_numpy(np.memmap(path, mode="r+"))',
    "tensor": "torch.tensor(a)",
}
_MIN_BYTES = 4096
_MAX_BYTES = 4 * 2**30
_PAGE = 4096


# ============================================================================================
# Data (no torch)
@dataclass(frozen=True)
class ZeroCopyRow:
    """One path. ``allocator_bytes``: allocated by PyTorch's CPU allocator during the call;
    ``rss_*_delta_bytes``: from before the call to after the result was touched (``None``:
    not measurable here); ``shares_memory``: checked (``None``: no check possible here)."""

    path: str
    call: str
    source: str
    nbytes: int
    allocator_bytes: int
    rss_anon_delta_bytes: int | None
    rss_file_delta_bytes: int | None
    shares_memory: bool | None
    how_checked: str
    time_s: float
    touch_s: float


@dataclass
class ZeroCopyResult:
    size_bytes: int
    rows: list[ZeroCopyRow]
    event_source: str
    pid: int
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, path: str) -> ZeroCopyRow:
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(f"no path {path!r}; paths: {', '.join(r.path for r in self.rows)}")

    def table(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rows"] = self.table()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZeroCopyResult:
        d = dict(d)
        d["rows"] = [ZeroCopyRow(**r) for r in d["rows"]]
        return cls(**d)


def _check_size(size_bytes: object) -> int:
    if (
        isinstance(size_bytes, bool)
        or not isinstance(size_bytes, int)
        or not _MIN_BYTES <= size_bytes <= _MAX_BYTES
        or size_bytes % 4
    ):
        raise ValueError(
            f"size_bytes must be an int from {_MIN_BYTES} to {_MAX_BYTES} and a multiple of 4 "
            f"(float32 elements), got {size_bytes!r}"
        )
    return size_bytes


# ============================================================================================
# The measurement (torch, in the worker)
def _mapping_of(addr: int) -> str | None:
    """The path of this process's mapping that contains ``addr`` ("" for an anonymous one),
    from /proc/self/maps (proc(5)); None where there is no such file."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= addr < hi:
                    return parts[5].strip() if len(parts) > 5 else ""
    except OSError:
        return None
    return ""


def _in_file(addr: int, path: str) -> bool | None:
    got = _mapping_of(addr)
    return None if got is None else os.path.realpath(got) == os.path.realpath(path)


def _touch(arr: Any) -> None:
    """Read one element of every page of ``arr`` (a numpy view: no torch allocation)."""
    flat = arr.reshape(-1)
    flat[:: max(1, _PAGE // flat.itemsize)].sum()


def _measure(
    name: str, source: str, nbytes: int, call: Callable[[], Any], check: Callable[[Any], Any]
) -> ZeroCopyRow:
    import gc

    import numpy as np
    import torch

    from memlab.tracking import track
    from memlab.tracking.procmem import read_process_memory

    gc.collect()
    before = read_process_memory()
    with track(sample_interval_s=None) as rec:
        t0 = time.perf_counter()
        out = call()
        dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    _touch(out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out))
    touch_s = time.perf_counter() - t1
    after = read_process_memory()
    r = rec.result
    assert r is not None
    # Sum of every rise of the live bytes: each allocation during the call (the timeline is
    # the live total after each allocator event, memlab/timeline.py).
    total = np.concatenate([[sum(r.entry_by_category.values())], r.timeline.total])
    allocated = int(np.clip(np.diff(total), 0, None).sum())
    shares, how = check(out)

    def delta(part: str) -> int | None:
        a, b = after.get(part), before.get(part)
        return None if a is None or b is None else int(a - b)

    row = ZeroCopyRow(
        path=name,
        call=_CALLS[name],
        source=source,
        nbytes=nbytes,
        allocator_bytes=allocated,
        rss_anon_delta_bytes=delta("rss_anon"),
        rss_file_delta_bytes=delta("rss_file"),
        shares_memory=shares,
        how_checked=how,
        time_s=dt,
        touch_s=touch_s,
    )
    del out
    gc.collect()
    return row


def _pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at its default, 128 KiB: every block above it is a fresh
    ``mmap``, whose pages RSS counts once written and returns at ``free``. Without this glibc
    raises the threshold to the size of each mmapped block freed (up to 32 MiB), and the next
    copy of that size reuses heap memory already resident: RSS would not see it (malloc(3),
    ``M_MMAP_THRESHOLD``: setting it disables the dynamic adjustment). False off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD is -3
    except (OSError, AttributeError):
        return False


def zero_copy_job(size_bytes: int = 64 * 2**20, workdir: str | None = None) -> ZeroCopyResult:
    """The torch side of :func:`zero_copy`: every path of ``PATHS`` measured in this process
    (run it in a fresh one: RSS carries what ran before). Files go to a temporary folder under
    ``workdir`` (default: the system's), removed at the end."""
    _check_size(size_bytes)
    import tempfile

    import numpy as np
    import torch

    from memlab.tracking.sources import default_source

    n = size_bytes // 4
    pinned = _pin_mmap_threshold()
    with tempfile.TemporaryDirectory(prefix="memlab-zerocopy-", dir=workdir) as tmp:
        raw = os.path.join(tmp, "raw.f32")
        saved = os.path.join(tmp, "saved.pt")

        def make(count: int, suffix: str) -> tuple[Any, Any, bytearray, str, str]:
            """Sources of ``count`` floats: an array, a tensor, a buffer, a raw file and a
            torch.save file; all written, so their pages exist before any call."""
            a = np.arange(count, dtype=np.float32)
            t = torch.arange(count, dtype=torch.float32)
            buf = bytearray(a.tobytes())
            rp, sp = raw + suffix, saved + suffix
            a.tofile(rp)
            torch.save(t, sp)
            return a, t, buf, rp, sp

        def calls(
            a: Any, t: Any, buf: bytearray, rp: str, sp: str, count: int
        ) -> dict[str, tuple[str, Callable[[], Any], Callable[[Any], tuple[bool | None, str]]]]:
            buf_addr = np.frombuffer(buf, dtype=np.uint8).ctypes.data

            def same(addr: int, what: str) -> Callable[[Any], tuple[bool | None, str]]:
                def check(out: Any) -> tuple[bool | None, str]:
                    got = out.data_ptr() if isinstance(out, torch.Tensor) else out.ctypes.data
                    return got == addr, f"data pointer == {what}'s"

                return check

            def in_file(path: str) -> Callable[[Any], tuple[bool | None, str]]:
                def check(out: Any) -> tuple[bool | None, str]:
                    return _in_file(out.data_ptr(), path), "address inside a mapping of the file"

                return check

            def written_through(
                path: str, shared: bool
            ) -> Callable[[Any], tuple[bool | None, str]]:
                def check(out: Any) -> tuple[bool | None, str]:
                    mapped = _in_file(out.data_ptr(), path)
                    old = float(out[0])
                    out[0] = -1.0  # a write through the tensor: does the file see it?
                    seen = float(np.fromfile(path, dtype=np.float32, count=1)[0]) == -1.0
                    out[0] = old
                    how = "address inside a mapping of the file; a write through the tensor "
                    how += "reaches the file" if seen else "does not reach the file (private)"
                    return (None if mapped is None else bool(mapped and seen == shared)), how

                return check

            return {
                "from_numpy": (
                    "numpy array",
                    lambda: torch.from_numpy(a),
                    same(a.ctypes.data, "the array"),
                ),
                "numpy": ("tensor", lambda: t.numpy(), same(t.data_ptr(), "the tensor")),
                "frombuffer": (
                    "bytearray",
                    lambda: torch.frombuffer(buf, dtype=torch.float32),
                    same(buf_addr, "the bytearray"),
                ),
                "from_file": (
                    "raw file",
                    lambda: torch.from_file(rp, shared=True, size=count, dtype=torch.float32),
                    written_through(rp, True),
                ),
                "from_file_private": (
                    "raw file",
                    lambda: torch.from_file(rp, shared=False, size=count, dtype=torch.float32),
                    written_through(rp, False),
                ),
                "load_mmap": ("torch.save file", lambda: torch.load(sp, mmap=True), in_file(sp)),
                "load": ("torch.save file", lambda: torch.load(sp), in_file(sp)),
                "memmap": (
                    "raw file",
                    lambda: torch.from_numpy(np.memmap(rp, dtype=np.float32, mode="r+")),
                    in_file(rp),
                ),
                "tensor": (
                    "numpy array",
                    lambda: torch.tensor(a),
                    same(a.ctypes.data, "the array"),
                ),
            }

        # Warm-up: each path once on a one-page source (first-call costs: lazy imports,
        # torch.load's unpickler, the recorder's first block).
        small = make(_PAGE // 4, ".warm")
        for name, (src, call, check) in calls(*small, _PAGE // 4).items():
            _measure(name, src, _PAGE, call, check)
        del small
        big = make(n, "")
        rows = [
            _measure(name, src, size_bytes, call, check)
            for name, (src, call, check) in calls(*big, n).items()
        ]
        del big
    notes = [
        "allocator bytes: PyTorch's CPU allocator during the call only (memlab.track); RSS "
        "deltas: before the call to after every page of the result was read once",
        "RSS counts file-backed pages (rss_file) for mappings of a file: the page cache's pages, "
        "shared with every process that maps the file, and droppable by the OS",
    ]
    if pinned:
        notes.append(
            "glibc's mmap threshold fixed at 128 KiB (mallopt): each copy is a fresh mapping, "
            "so its pages show in rss_anon"
        )
    if not sys.platform.startswith("linux"):
        notes.append("not Linux: the RSS parts and the mapping checks are missing (None)")
    return ZeroCopyResult(
        size_bytes=size_bytes,
        rows=rows,
        event_source=default_source().name,
        pid=os.getpid(),
        notes=notes,
    )


# ============================================================================================
# The caller's side (no torch): one fresh process
def _zero_copy_main(
    conn: Connection, cancel: Any, stderr_path: str, *, size_bytes: int, workdir: str | None
) -> None:
    import faulthandler
    import traceback

    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives with the process
    faulthandler.enable()
    try:
        conn.send(("done", zero_copy_job(size_bytes, workdir).to_dict()))
    except BaseException as e:  # noqa: BLE001 - report, never hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def zero_copy(
    size_bytes: int = 64 * 2**20, *, workdir: str | None = None, timeout_s: float = 300.0
) -> ZeroCopyResult:
    """Every path of :data:`PATHS` measured on a float32 tensor of ``size_bytes`` in a fresh
    spawned process (see the module doc). Raises ``RuntimeError`` with the worker's message if
    it fails or dies, ``TimeoutError`` past ``timeout_s``."""
    _check_size(size_bytes)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    import functools
    from multiprocessing.connection import wait

    from memlab.runner.procs import _kill, _spawn, _stderr_tail

    w = _spawn(
        functools.partial(_zero_copy_main, size_bytes=size_bytes, workdir=workdir),
        "memlab-zerocopy",
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"zero_copy: the worker took more than {timeout_s} s")
            if not wait([w.conn, w.process.sentinel], timeout=min(left, 0.5)):
                continue
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                w.process.join(timeout=1)
                tail = _stderr_tail(w.stderr_path)
                raise RuntimeError(
                    f"zero_copy: the worker died (exit code {w.process.exitcode})"
                    + (f"; its last stderr lines:\n{tail}" if tail else "")
                ) from None
            if msg[0] == "error":
                raise RuntimeError(f"zero_copy: the worker raised {msg[1]}")
            return ZeroCopyResult.from_dict(msg[1])
    finally:
        _kill(w)
