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
from pathlib import Path
from typing import Any

__all__ = [
    "BandwidthPoint",
    "BandwidthResult",
    "CacheLevel",
    "bandwidth",
    "read_cache_levels",
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


def _best_rate(
    kernel: Callable[[], object], bytes_moved: int, min_time_s: float, repeats: int
) -> float:
    """GB/s of ``kernel``: calls per timing grown until one timing takes ``min_time_s``, then
    the best of ``repeats`` timings (the least disturbed: others' load only slows it down)."""
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
    return bytes_moved * calls / max(best, 1e-12) / 1e9


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
