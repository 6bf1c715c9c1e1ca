"""Memory bandwidth and locality of this machine, measured: copy and triad over working sets.

``memlab.bandwidth()`` measures, for working sets from 4 KiB to 1 GiB, how many bytes per
second a copy (``a = b``) and a triad (``a = b + s*c``) move, reads the cache sizes from
``/sys/devices/system/cpu/cpu0/cache`` (Linux), and reports the bandwidth inside each cache
level, the DRAM plateau beyond the last one, and a plain ``numpy.copyto`` of a 256 MiB array
measured in the same run as the anchor. Nothing is measured at import; the measurement runs in a
fresh spawned process by default, so a notebook kernel stays responsive and its own arrays do
not share the caches with the kernels being timed.

Conventions (STREAM's, https://www.cs.virginia.edu/stream/ref.html, "Counting Bytes and FLOPS"):

- *working set* = the bytes of every array the kernel touches: a copy of ``n`` bytes has a
  working set of ``2n`` (source and destination), a triad over ``n``-byte arrays ``3n``. That is
  what must fit in a cache level for the kernel to run from it.
- *bytes moved* = each array read or written once: a copy moves ``2n`` (n read, n written), a
  triad ``3n``. The write-allocate read of the destination (the cache line fetched before it is
  written) is not counted, as in STREAM, so on a write-allocate cache the true traffic can be
  higher than the figure.
- GB/s are 10**9 bytes per second; each size is repeated until one timing takes at least
  ``min_time_s`` (20 ms) and the best of ``repeats`` timings is kept (the least disturbed one).

Torch-free: the result (``BandwidthResult``) is plain data the kernel can hold and draw.

The module is ``memlab.locality``, not ``memlab.bandwidth``: a submodule of that name would
replace the public function ``memlab.bandwidth`` on the package as soon as anything imported
it (the import system sets the parent's attribute), and ``memlab.bandwidth()`` would then be
a module, not a call.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

__all__ = [
    "BandwidthPoint",
    "BandwidthResult",
    "CacheLevel",
    "ConvLayoutPoint",
    "ConvLayoutResult",
    "StridePoint",
    "StrideResult",
    "bandwidth",
    "conv_layouts",
    "lines_touched",
    "read_cache_levels",
    "strided_access",
    "working_sets",
]

KIB = 2**10
MIB = 2**20
GIB = 2**30
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
MIN_BYTES = 4 * KIB
DEFAULT_MAX_BYTES = GIB
SMOKE_MAX_BYTES = 8 * MIB
ANCHOR_BYTES = 256 * MIB
ITEM = 8  # float64
# A working set at least this many times the last cache level counts as "in DRAM": at 1-2x
# the hardware prefetchers and a victim/shared L3 still hide part of the traffic.
DRAM_FACTOR = 4
# Where /sys gives no cache sizes: working sets from here up count as the plateau (larger than
# any L3 of a laptop or single-socket server this is likely to run on).
DRAM_FALLBACK_BYTES = 256 * MIB
# The triad's block: its temporary ``s*c`` must stay in L1/L2 (see ``_triad``).
TRIAD_BLOCK = 8192  # elements = 64 KiB

# The clock, a module attribute so a test can replace it with a fake one.
_clock: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class CacheLevel:
    """A data cache of cpu0: ``name`` ("L1d", "L2", "L3"), its size, and the copy and triad
    bandwidth measured at a working set of half that size (None when not measured)."""

    name: str
    size_bytes: int
    gb_per_s: float | None = None
    triad_gb_per_s: float | None = None


@dataclass(frozen=True)
class BandwidthPoint:
    """One working set: copy and triad bandwidth in GB/s (STREAM's byte counting)."""

    size_bytes: int
    copy_gb_per_s: float
    triad_gb_per_s: float


@dataclass(frozen=True)
class BandwidthResult:
    """What ``bandwidth()`` measured. ``levels`` is None where the cache sizes are unknown;
    ``dram_gb_per_s`` is None where no working set was well above the last cache level."""

    points: tuple[BandwidthPoint, ...]
    levels: tuple[CacheLevel, ...] | None
    dram_gb_per_s: float | None
    anchor_gb_per_s: float
    anchor_bytes: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def anchor_ratio(self) -> float | None:
        """The DRAM plateau over the same run's plain ``numpy.copyto`` (issue 12: within 30%)."""
        if self.dram_gb_per_s is None:
            return None
        return self.dram_gb_per_s / self.anchor_gb_per_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``levels`` as ``[{"name", "size_bytes", "gb_per_s", ...}]``."""
        return {
            "levels": None if self.levels is None else [asdict(lv) for lv in self.levels],
            "dram_gb_per_s": self.dram_gb_per_s,
            "anchor_gb_per_s": self.anchor_gb_per_s,
            "anchor_bytes": self.anchor_bytes,
            "points": [asdict(p) for p in self.points],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandwidthResult:
        levels = d.get("levels")
        return cls(
            points=tuple(BandwidthPoint(**p) for p in d["points"]),
            levels=None if levels is None else tuple(CacheLevel(**lv) for lv in levels),
            dram_gb_per_s=d["dram_gb_per_s"],
            anchor_gb_per_s=d["anchor_gb_per_s"],
            anchor_bytes=d["anchor_bytes"],
            notes=tuple(d.get("notes", ())),
        )


# -- the cache sizes ------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.I)


def _parse_size(text: str) -> int | None:
    """sysfs cache size ("32K", "512K", "32768K", "8M") in bytes; None if unreadable."""
    m = _SIZE_RE.match(text)
    if m is None:
        return None
    return int(m.group(1)) * {"": 1, "K": KIB, "M": MIB, "G": GIB}[m.group(2).upper()]


def read_cache_levels(root: Path = CACHE_DIR) -> tuple[CacheLevel, ...] | None:
    """cpu0's data and unified caches from sysfs (``index*/level``, ``type``, ``size``; see the
    kernel's Documentation/ABI/testing/sysfs-devices-system-cpu), smallest level first. The
    instruction cache is left out (a copy never runs from it). None where the directory is
    missing (macOS, Windows, some containers) or names no data cache."""
    if not root.is_dir():
        return None
    found: dict[int, tuple[str, int]] = {}
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text().strip())
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind not in ("Data", "Unified") or size is None:
            continue
        name = f"L{level}d" if kind == "Data" else f"L{level}"
        found[level] = (name, size)
    if not found:
        return None
    return tuple(CacheLevel(name=n, size_bytes=s) for _, (n, s) in sorted(found.items()))


# -- the sizes to measure -------------------------------------------------------------------


def working_sets(
    max_bytes: int, levels: Sequence[CacheLevel] | None = None, *, per_octave: int = 2
) -> list[int]:
    """Working sets from 4 KiB to ``max_bytes``: ``per_octave`` sizes per doubling (4 KiB, 5.7
    KiB, 8 KiB, ...), plus half of each cache level's size (the point its bandwidth is read at).
    The arrays hold whole float64 elements, so a kernel's working set can be up to 16 (copy) or
    24 (triad) bytes under the nominal size; its bytes moved count the elements it has."""
    if max_bytes < MIN_BYTES:
        raise ValueError(f"max_bytes must be at least 4 KiB ({MIN_BYTES}), got {max_bytes}")
    if per_octave < 1:
        raise ValueError(f"per_octave must be >= 1, got {per_octave}")
    sizes: set[int] = set()
    octave = MIN_BYTES
    while octave <= max_bytes:
        for i in range(per_octave):
            s = int(octave * 2 ** (i / per_octave))
            if MIN_BYTES <= s <= max_bytes:
                sizes.add(s)
        octave *= 2
    for lv in levels or ():
        half = lv.size_bytes // 2
        if MIN_BYTES <= half <= max_bytes:
            sizes.add(half)
    return sorted(sizes)


# -- the kernels ----------------------------------------------------------------------------


def _best_time(kernel: Callable[[], object], min_time_s: float, repeats: int) -> float:
    """Seconds per call of ``kernel``: calls per timing grown until one timing takes
    ``min_time_s``, then the best of ``repeats`` timings (the least disturbed: others' load only
    slows it down), divided by the calls."""
    kernel()  # first touch: page faults and cold caches are not bandwidth
    calls = 1
    while True:
        t0 = _clock()
        for _ in range(calls):
            kernel()
        dt = _clock() - t0
        if dt >= min_time_s or calls >= 1 << 20:
            break
        calls = max(calls * 2, math.ceil(calls * min_time_s / max(dt, 1e-9)))
    best = dt
    for _ in range(repeats - 1):
        t0 = _clock()
        for _ in range(calls):
            kernel()
        best = min(best, _clock() - t0)
    return max(best, 1e-12) / calls


def _best_rate(
    kernel: Callable[[], object], bytes_moved: int, min_time_s: float, repeats: int
) -> float:
    """GB/s of ``kernel`` moving ``bytes_moved`` per call (``_best_time``)."""
    return bytes_moved / _best_time(kernel, min_time_s, repeats) / 1e9


def _arrays(n: int, k: int) -> list[Any]:
    """``k`` float64 arrays of ``n`` elements in one 64-byte aligned buffer, the i-th starting
    ``i`` KiB past a page boundary relative to the first.

    Why not ``k`` separate ``np.zeros(n)``: malloc places small arrays back to back, so the
    destination starts a few bytes past the source modulo 4 KiB, and on this machine's AMD Zen 3
    a copy at such a distance (glibc's memmove, ``rep movsb`` with FSRM) ran at 3-5 GB/s
    instead of 25-60 (measured: 16 KiB to 128 KiB copies, distance 8 vs 64-2048 bytes mod
    4 KiB). glibc avoids ``rep movsb`` for short distances only on some CPUs
    (sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S, "avoid_short_distance_rep_movsb").
    Spacing the arrays keeps that aliasing out of the figures."""
    import numpy as np

    stride = -(-n * ITEM // 4096) * 4096 // ITEM + KIB // ITEM  # whole pages + 1 KiB
    buf = np.zeros(k * stride + 64 // ITEM)
    start = (-buf.ctypes.data % 64) // ITEM
    out = [buf[start + i * stride : start + i * stride + n] for i in range(k)]
    for i, a in enumerate(out):
        a[:] = float(i)
    return out


def _copy_rate(size_bytes: int, min_time_s: float, repeats: int) -> float:
    import numpy as np

    n = size_bytes // (2 * ITEM)
    src, dst = _arrays(n, 2)
    return _best_rate(lambda: np.copyto(dst, src), 2 * n * ITEM, min_time_s, repeats)


def triad(a: Any, b: Any, c: Any, s: float, tmp: Any) -> None:
    """``a = b + s*c`` in blocks of ``TRIAD_BLOCK`` elements (``tmp`` holds one block).

    Written by hand because numpy has no fused triad: ``np.add(b, s * c, out=a)`` makes a
    temporary the size of the arrays and moves 5n bytes, not 3n. Blocked, the temporary stays
    in L1/L2, so memory sees what STREAM's triad moves (read b and c, write a)."""
    import numpy as np

    n = a.shape[0]
    for i in range(0, n, TRIAD_BLOCK):
        j = min(i + TRIAD_BLOCK, n)
        t = tmp[: j - i]
        np.multiply(c[i:j], s, out=t)
        np.add(b[i:j], t, out=a[i:j])


def _triad_rate(size_bytes: int, min_time_s: float, repeats: int) -> float:
    import numpy as np

    n = size_bytes // (3 * ITEM)
    a, b, c = _arrays(n, 3)
    tmp = np.empty(min(n, TRIAD_BLOCK))
    return _best_rate(lambda: triad(a, b, c, 3.0, tmp), 3 * n * ITEM, min_time_s, repeats)


def _anchor_rate(nbytes: int, min_time_s: float, repeats: int) -> float:
    """The anchor: a plain ``numpy.copyto`` between two separately allocated arrays, nothing
    arranged (the figure a user gets from numpy), counted as 2x ``nbytes`` moved."""
    import numpy as np

    n = nbytes // ITEM
    src, dst = np.ones(n), np.zeros(n)
    return _best_rate(lambda: np.copyto(dst, src), 2 * n * ITEM, min_time_s, repeats)


# -- the measurement ------------------------------------------------------------------------


def glibc_non_temporal_threshold() -> int | None:
    """glibc's ``x86_non_temporal_threshold`` in bytes (``ld.so --list-tunables``), or None
    where it cannot be read (not glibc, not x86-64, an old glibc without the option).

    Why it matters: glibc's ``memmove`` (which ``numpy.copyto`` calls) switches to
    non-temporal stores for copies of at least this size
    (sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S, ``L(large_memcpy_2x)``). Below it
    the destination is written through the caches, and each of its lines is first read for
    ownership: DRAM moves 3 bytes for every 2 that STREAM counts, and the copy reads about
    2/3 of the bandwidth. Measured on this project's 2-core EPYC VM (threshold 192 MiB):
    about 22 GB/s for 32-190 MiB copies, 32-34 GB/s from 256 MiB up, where the anchor is."""
    import glob
    import subprocess

    loaders = sorted(
        set(glob.glob("/lib64/ld-linux-x86-64.so.*") + glob.glob("/lib/*/ld-linux-x86-64.so.*"))
    )
    for ld in loaders:
        try:
            out = subprocess.run(
                [ld, "--list-tunables"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"glibc\.cpu\.x86_non_temporal_threshold:\s*(0x[0-9a-fA-F]+|\d+)", out)
        if m:
            return int(m.group(1), 0)
    return None


def dram_plateau(
    points: Sequence[BandwidthPoint],
    levels: Sequence[CacheLevel] | None,
    non_temporal_bytes: int | None = None,
) -> float | None:
    """Median copy bandwidth of the working sets well above the last cache level (at least
    ``DRAM_FACTOR`` times its size; from ``DRAM_FALLBACK_BYTES`` when the sizes are unknown);
    None when no point is that large.

    With ``non_temporal_bytes`` (glibc's threshold, ``glibc_non_temporal_threshold``), only the
    copies at least that large count where there are any (a copy's working set is twice its
    size): below it the copy pays a read for ownership that STREAM's counting does not see, so
    its figure is not the memory's bandwidth but 2/3 of it (see that function)."""
    floor = DRAM_FACTOR * levels[-1].size_bytes if levels else DRAM_FALLBACK_BYTES
    big = [p for p in points if p.size_bytes >= floor]
    if non_temporal_bytes is not None:
        streamed = [p for p in big if p.size_bytes >= 2 * non_temporal_bytes]
        big = streamed or big
    return statistics.median(p.copy_gb_per_s for p in big) if big else None


def measure(
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    anchor_bytes: int = ANCHOR_BYTES,
    min_time_s: float = 0.02,
    repeats: int = 3,
    per_octave: int = 2,
    cache_dir: Path = CACHE_DIR,
) -> BandwidthResult:
    """The measurement itself, in this process (``bandwidth()`` runs it in a fresh one)."""
    if anchor_bytes < ITEM:
        raise ValueError(f"anchor_bytes must be at least {ITEM}, got {anchor_bytes}")
    if repeats < 1 or min_time_s <= 0:
        raise ValueError(f"repeats must be >= 1 and min_time_s > 0, got {repeats}, {min_time_s}")
    levels = read_cache_levels(cache_dir)
    points = tuple(
        BandwidthPoint(
            size_bytes=s,
            copy_gb_per_s=_copy_rate(s, min_time_s, repeats),
            triad_gb_per_s=_triad_rate(s, min_time_s, repeats),
        )
        for s in working_sets(max_bytes, levels, per_octave=per_octave)
    )
    anchor = _anchor_rate(anchor_bytes, min_time_s, repeats)
    notes: list[str] = [
        "each kernel is one or more numpy calls from Python (about a microsecond each): at the "
        "smallest working sets that overhead, not the L1 cache, bounds the figure"
    ]
    if levels is None:
        notes.append(f"cache sizes unknown: {cache_dir} is missing or names no data cache")
    else:
        by_size = {p.size_bytes: p for p in points}
        measured = []
        for lv in levels:
            p = by_size.get(lv.size_bytes // 2)
            measured.append(
                CacheLevel(
                    lv.name,
                    lv.size_bytes,
                    None if p is None else p.copy_gb_per_s,
                    None if p is None else p.triad_gb_per_s,
                )
            )
        levels = tuple(measured)
    nt = glibc_non_temporal_threshold()
    dram = dram_plateau(points, levels, nt)
    if nt is not None:
        floor = DRAM_FACTOR * levels[-1].size_bytes if levels else DRAM_FALLBACK_BYTES
        if any(p.size_bytes >= max(floor, 2 * nt) for p in points):
            notes.append(
                f"DRAM plateau from copies of at least {nt} bytes, glibc's non-temporal "
                "threshold: smaller copies also read each destination line for ownership, "
                "traffic STREAM's counting does not see, and show about 2/3 of the bandwidth"
            )
        elif dram is not None:
            notes.append(
                f"the DRAM plateau's copies are below glibc's non-temporal threshold ({nt} "
                "bytes): they pay a read for ownership of the destination, so the plateau "
                "reads low (about 2/3) against a copy above it"
            )
        if anchor_bytes < nt:
            notes.append(
                f"the anchor's copy ({anchor_bytes} bytes) is below glibc's non-temporal "
                f"threshold ({nt} bytes): it is written through the caches"
            )
    if dram is None:
        floor = DRAM_FACTOR * levels[-1].size_bytes if levels else DRAM_FALLBACK_BYTES
        notes.append(
            f"no DRAM plateau: the largest working set ({points[-1].size_bytes} bytes) is below "
            f"{floor} bytes ({DRAM_FACTOR}x the last cache level)"
        )
    return BandwidthResult(points, levels, dram, anchor, anchor_bytes, tuple(notes))


def bandwidth(
    max_bytes: int | str | None = None,
    *,
    smoke: bool | None = None,
    anchor_bytes: int | str | None = None,
    repeats: int = 3,
    worker: bool = True,
) -> BandwidthResult:
    """Copy and triad bandwidth of this machine over working sets from 4 KiB to ``max_bytes``
    (default 1 GiB; 8 MiB in smoke mode, ``MEMLAB_SMOKE=1``), the cache levels and the DRAM
    plateau, with a plain 256 MiB ``numpy.copyto`` as the anchor (16 MiB in smoke mode).

    Sizes accept ``"64MiB"``-style strings. ``worker=True`` (default) measures in a fresh
    spawned process, which takes a few seconds to tens of seconds at the full size; the
    calling process only waits. Figures taken beside other busy processes are disturbed:
    every point is a best-of-``repeats``, not a guarantee.
    """
    from memlab.config import parse_bytes

    if smoke is None:
        # The rule of memlab.ui.controls.smoke_mode, read here so this module needs no ui.
        smoke = os.environ.get("MEMLAB_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")
    top = parse_bytes(
        max_bytes if max_bytes is not None else (SMOKE_MAX_BYTES if smoke else DEFAULT_MAX_BYTES),
        name="max_bytes",
    )
    anchor = parse_bytes(
        anchor_bytes if anchor_bytes is not None else (16 * MIB if smoke else ANCHOR_BYTES),
        name="anchor_bytes",
    )
    if top < MIN_BYTES:
        raise ValueError(f"max_bytes must be at least 4 KiB, got {top} bytes")
    kwargs: dict[str, Any] = {
        "anchor_bytes": anchor,
        "repeats": repeats,
        "per_octave": 1 if smoke else 2,
    }
    if not worker:
        return measure(top, **kwargs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child of a kernel would inherit its threads' locks and heap.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, top, **kwargs).result()


# ============================================================================================
# Locality examples: strided vs contiguous access, channels_last vs NCHW convolutions.
# ============================================================================================

DEFAULT_STRIDES = (1, 2, 4, 8, 16, 32)
STRIDE_COUNT = 2 * MIB  # elements read per call: 16 MiB of float64 that the sum needs
SMOKE_STRIDE_COUNT = 128 * KIB
LINE_FALLBACK = 64  # bytes; x86-64 and most Arm cores


def cache_line_bytes(root: Path = CACHE_DIR) -> int:
    """cpu0's L1 data cache line (``index0/coherency_line_size`` in sysfs), 64 if unknown."""
    try:
        return int((root / "index0" / "coherency_line_size").read_text().strip())
    except (OSError, ValueError):
        return LINE_FALLBACK


def lines_touched(count: int, stride: int, itemsize: int, line_bytes: int) -> int:
    """Cache lines a read of ``count`` elements, ``stride`` elements apart, touches, for an
    array starting on a line boundary: every line of the span while a step is shorter than a
    line, one line per element once it is a line or longer."""
    if count <= 0:
        return 0
    if stride < 1 or itemsize < 1 or line_bytes < 1:
        raise ValueError(
            f"stride, itemsize, line_bytes must be >= 1: {stride, itemsize, line_bytes}"
        )
    step = stride * itemsize
    if step >= line_bytes:
        return count
    return ((count - 1) * step + itemsize - 1) // line_bytes + 1


@dataclass(frozen=True)
class StridePoint:
    """Reading ``count`` float64 elements ``stride`` apart (stride 1: contiguous). Rates are
    *useful* bytes (the elements the sum needs) per second; ``touched_bytes`` is what the
    memory system must bring in: whole cache lines (``lines_touched`` x line size)."""

    stride: int
    count: int
    itemsize: int
    touched_bytes: int
    sum_gb_per_s: float
    copy_gb_per_s: float

    @property
    def useful_bytes(self) -> int:
        return self.count * self.itemsize

    @property
    def bytes_per_useful_byte(self) -> float:
        return self.touched_bytes / self.useful_bytes


@dataclass(frozen=True)
class StrideResult:
    """``strided_access()``'s points, stride 1 first; the cache line it counted with."""

    points: tuple[StridePoint, ...]
    line_bytes: int
    buffer_bytes: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def slowdown(self, stride: int, kernel: str = "sum") -> float:
        """How many times longer a read at ``stride`` takes than a contiguous one of the same
        count (``kernel`` "sum" or "copy")."""
        if kernel not in ("sum", "copy"):
            raise ValueError(f"kernel must be 'sum' or 'copy', got {kernel!r}")
        by = {p.stride: p for p in self.points}
        if 1 not in by or stride not in by:
            raise KeyError(f"stride {stride} or 1 not measured; measured: {sorted(by)}")
        attr = f"{kernel}_gb_per_s"
        return float(getattr(by[1], attr) / getattr(by[stride], attr))

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [asdict(p) for p in self.points],
            "line_bytes": self.line_bytes,
            "buffer_bytes": self.buffer_bytes,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StrideResult:
        return cls(
            points=tuple(StridePoint(**p) for p in d["points"]),
            line_bytes=d["line_bytes"],
            buffer_bytes=d["buffer_bytes"],
            notes=tuple(d.get("notes", ())),
        )


def measure_strides(
    count: int = STRIDE_COUNT,
    strides: Sequence[int] = DEFAULT_STRIDES,
    *,
    min_time_s: float = 0.02,
    repeats: int = 3,
    cache_dir: Path = CACHE_DIR,
) -> StrideResult:
    """The measurement itself, in this process (``strided_access()`` runs it in a fresh one).

    One 64-byte aligned buffer of ``count x max(strides)`` float64 elements; a read at stride
    ``k`` spans ``count x k`` elements, and each call starts at the next span of the buffer
    (round robin), so a contiguous read of a span that fits a cache does not find it there
    from the call before: every stride reads from as far as the buffer's size makes it."""
    import numpy as np

    strides = sorted(set(strides) | {1})
    if count < 1 or strides[0] < 1:
        raise ValueError(f"count and strides must be >= 1, got {count}, {strides}")
    line = cache_line_bytes(cache_dir)
    n = count * strides[-1]
    raw = np.ones(n + 64 // ITEM)
    start = (-raw.ctypes.data % 64) // ITEM
    buf = raw[start : start + n]
    dst = np.empty(count)
    points = []
    for k in strides:
        span = count * k
        views = [buf[o : o + span : k] for o in range(0, n - span + 1, span)]
        turn = iter(range(1 << 62))

        def view(views: list[Any] = views, turn: Any = turn) -> Any:
            return views[next(turn) % len(views)]

        points.append(
            StridePoint(
                stride=k,
                count=count,
                itemsize=ITEM,
                touched_bytes=lines_touched(count, k, ITEM, line) * line,
                sum_gb_per_s=count
                * ITEM
                / _best_time(lambda: view().sum(), min_time_s, repeats)
                / 1e9,
                copy_gb_per_s=count
                * ITEM
                / _best_time(lambda: np.copyto(dst, view()), min_time_s, repeats)
                / 1e9,
            )
        )
    notes = (
        "touched bytes are whole cache lines; the hardware prefetchers may bring in more "
        "(adjacent-line prefetch), so a long stride can cost more than its line count says",
        "copy gathers into a contiguous array of the same count: its rate counts the useful "
        "bytes read once (the write is the same for every stride)",
    )
    return StrideResult(tuple(points), line, n * ITEM, notes)


def strided_access(
    count: int | None = None,
    strides: Sequence[int] = DEFAULT_STRIDES,
    *,
    smoke: bool | None = None,
    repeats: int = 3,
    worker: bool = True,
) -> StrideResult:
    """Strided vs contiguous reads, measured: summing (and gathering) ``count`` float64
    elements taken every ``k``-th from a large array, for each ``k`` in ``strides``, against a
    contiguous read of the same count. Default count 2 Mi elements (16 MiB useful; the buffer
    is that times the largest stride), 128 Ki in smoke mode. In a fresh spawned process by
    default, like ``bandwidth()``."""
    if smoke is None:
        smoke = os.environ.get("MEMLAB_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")
    if count is None:
        count = SMOKE_STRIDE_COUNT if smoke else STRIDE_COUNT
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    bad = [k for k in strides if not isinstance(k, int) or k < 1]
    if bad or not strides:
        raise ValueError(f"strides must be positive ints, got {list(strides)!r}")
    kwargs: dict[str, Any] = {"repeats": repeats}
    if not worker:
        return measure_strides(count, tuple(strides), **kwargs)
    return _in_spawned(measure_strides, count, tuple(strides), **kwargs)


def _in_spawned(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh spawned process (spawn, not fork: a forked child of a
    kernel would inherit its threads' locks and heap)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


# -- channels_last vs NCHW ------------------------------------------------------------------

FORMATS = ("nchw", "channels_last")


@dataclass(frozen=True)
class ConvLayoutPoint:
    """One convolution (3x3, padding 1, no bias, as the CNN's) on ``input_shape`` (N, C, H,
    W): time per forward in each memory format (measured, best of the repeats), and the
    tensor bytes memlab's tracker saw allocated inside one forward in each case; ``mixed`` is
    an NCHW input into channels_last weights (a model converted, its input not)."""

    name: str
    input_shape: tuple[int, int, int, int]
    out_channels: int
    nchw_s: float
    channels_last_s: float
    output_bytes: int
    nchw_alloc_bytes: int
    channels_last_alloc_bytes: int
    mixed_alloc_bytes: int
    mixed_output_format: str

    @property
    def speedup(self) -> float:
        """NCHW time over channels_last time (above 1: channels_last is faster here)."""
        return self.nchw_s / self.channels_last_s

    @property
    def flops(self) -> int:
        n, c, h, w = self.input_shape
        return 2 * n * self.out_channels * h * w * c * 9


@dataclass(frozen=True)
class ConvLayoutResult:
    points: tuple[ConvLayoutPoint, ...]
    threads: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [asdict(p) for p in self.points],
            "threads": self.threads,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvLayoutResult:
        pts = []
        for p in d["points"]:
            p = dict(p)
            p["input_shape"] = tuple(p["input_shape"])
            pts.append(ConvLayoutPoint(**p))
        return cls(tuple(pts), d["threads"], tuple(d.get("notes", ())))


def conv_shapes(
    batch_size: int = 32, channels: int = 64, large_image: int = 64
) -> list[tuple[str, tuple[int, int, int, int], int]]:
    """The CNN's convolutions (``memlab.workloads.models.CNN`` on 16x16 digits: a 1->C stem
    and C->C blocks) and a block's convolution on a larger ``large_image`` square image."""
    return [
        ("stem 16x16", (batch_size, 1, 16, 16), channels),
        ("block 16x16", (batch_size, channels, 16, 16), channels),
        (
            f"block {large_image}x{large_image}",
            (batch_size, channels, large_image, large_image),
            channels,
        ),
    ]


def _allocated_bytes(conv: Any, x: Any) -> int:
    """Tensor bytes allocated inside one ``conv(x)`` as memlab's tracker records them (the
    sum of every allocation's size, the output's included)."""
    import numpy as np

    from memlab.tracking import track

    with track(conv, inputs=x, sample_interval_s=None) as t:
        conv(x)
    total = t.result.timeline.total  # type: ignore[union-attr]
    if len(total) == 0:
        return 0
    steps = np.diff(np.concatenate([[0], total]))
    return int(steps[steps > 0].sum())


def measure_conv_layouts(
    shapes: Sequence[tuple[str, tuple[int, int, int, int], int]],
    *,
    min_time_s: float = 0.05,
    repeats: int = 3,
) -> ConvLayoutResult:
    """The measurement itself, in this process (imports torch; ``conv_layouts()`` runs it in a
    fresh one). Inputs and weights are converted before the clock starts."""
    import torch

    points = []
    with torch.inference_mode():
        for name, shape, cout in shapes:
            torch.manual_seed(0)
            conv = torch.nn.Conv2d(shape[1], cout, 3, padding=1, bias=False).eval()
            conv_cl = torch.nn.Conv2d(shape[1], cout, 3, padding=1, bias=False).eval()
            conv_cl.load_state_dict(conv.state_dict())
            # Module.to(memory_format=) is documented (nn.Module.to) but missing from its stubs.
            conv_cl = conv_cl.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            x = torch.randn(shape)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            t_nchw = _best_time(partial(conv, x), min_time_s, repeats)
            t_cl = _best_time(partial(conv_cl, x_cl), min_time_s, repeats)
            mixed = conv_cl(x)
            fmt = (
                "channels_last"
                if mixed.is_contiguous(memory_format=torch.channels_last)
                and not mixed.is_contiguous()
                else "nchw"
            )
            out = conv(x)
            points.append(
                ConvLayoutPoint(
                    name=name,
                    input_shape=shape,
                    out_channels=cout,
                    nchw_s=t_nchw,
                    channels_last_s=t_cl,
                    output_bytes=out.numel() * out.element_size(),
                    nchw_alloc_bytes=_allocated_bytes(conv, x),
                    channels_last_alloc_bytes=_allocated_bytes(conv_cl, x_cl),
                    mixed_alloc_bytes=_allocated_bytes(conv_cl, x),
                    mixed_output_format=fmt,
                )
            )
    notes = (
        "times are best of the repeats per forward, inputs and weights converted beforehand",
        "alloc bytes: every tensor allocation inside one forward as memlab's tracker saw it "
        "(the output included); above the output is the convolution's scratch and any layout "
        "copy of its input",
    )
    return ConvLayoutResult(tuple(points), torch.get_num_threads(), notes)


def conv_layouts(
    batch_size: int = 32,
    *,
    large_image: int | None = None,
    smoke: bool | None = None,
    repeats: int = 3,
    worker: bool = True,
) -> ConvLayoutResult:
    """channels_last vs NCHW for the CNN's convolutions, measured: time per forward at the
    CNN's shapes (``batch_size`` digits of 16x16) and at a larger image (64x64; 32x32 in smoke
    mode), and the tensor bytes allocated inside a forward in each format and in the mixed
    case. In a fresh spawned process by default (torch is imported there, not here)."""
    if smoke is None:
        smoke = os.environ.get("MEMLAB_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")
    if large_image is None:
        large_image = 32 if smoke else 64
    for label, v in (("batch_size", batch_size), ("large_image", large_image)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be a positive int, got {v!r}")
    shapes = conv_shapes(batch_size, 64, large_image)
    kwargs: dict[str, Any] = {"repeats": repeats, "min_time_s": 0.02 if smoke else 0.05}
    if not worker:
        return measure_conv_layouts(shapes, **kwargs)
    return _in_spawned(measure_conv_layouts, shapes, **kwargs)  # type: ignore[no-any-return]
