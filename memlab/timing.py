"""Whether a run's step times can be trusted: per-step CPU accounting and its verdict.

A step time is only worth comparing if the measured process had the machine to itself. On a
student's 2-core laptop it often does not: the browser redrawing a live chart, the notebook
kernel, a compile in another terminal all take cores from the worker, and the step gets slower
for reasons that have nothing to do with the knob being studied (issue 10 measured a live panel
making the same step 8.6x slower). So around each timed step the run worker reads

- the wall time,
- its own CPU time (all its threads, and its children's: DataLoader workers are part of the
  experiment), from the OS's precise per-process clock,
- the machine's busy CPU time (``/proc/stat`` on Linux, ``psutil.cpu_times`` elsewhere),

and the difference, busy minus the worker's own, is what *other* processes used meanwhile. Its
share of the machine's capacity (wall x CPUs) says how disturbed the step was.

``/proc/stat`` counts in clock ticks (10 ms on Linux), too coarse for a step of a few
milliseconds, so each step's share is taken over a window of neighbouring steps at least
:data:`MIN_WINDOW_S` long (proc(5): the ``cpu`` line is in ``USER_HZ`` units). The verdict is
pure (:func:`assess`), so it is tested on hand-made numbers; :class:`StepClock` does the
reading, in the worker, outside the timed region of each step.

No torch here: the verdict runs anywhere, and the kernel can import this module.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memlab.timeline import Timing

__all__ = [
    "DISTURBED_SHARE",
    "MAX_DISTURBED_FRACTION",
    "MIN_WINDOW_S",
    "StepClock",
    "StepReading",
    "assess",
    "busiest_others",
    "machine_busy_s",
    "others_shares",
    "process_snapshot",
    "wait_until_quiet",
]

#: A step is disturbed when other processes used more than this share of the machine's CPU
#: (wall x CPUs) meanwhile. 0.10 on a 2-core laptop is a fifth of a core: enough to slow a
#: step that uses both cores by about a tenth, the size of difference the labs teach about.
DISTURBED_SHARE = 0.10
#: A run is steady when at most this fraction of its timed steps were disturbed: the median
#: (what memlab reports) is then still a quiet step's time.
MAX_DISTURBED_FRACTION = 0.25
#: Shortest span of steps over which the others' share is computed (``/proc/stat``'s 10 ms
#: ticks over two CPUs make a 0.5 s window accurate to about 2% of the machine).
MIN_WINDOW_S = 0.5


# -- reading the clocks -----------------------------------------------------------------------
def machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far, all CPUs together (None: unknown).

    Linux: ``/proc/stat``'s first line, everything but idle and iowait (steal counts: on a VM
    it is CPU a neighbour took). Elsewhere psutil's ``cpu_times`` (same fields where it has
    them)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            user, nice, system, _idle, _iowait, irq, softirq, steal = v
            return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
    try:
        import psutil

        t = psutil.cpu_times()
    except Exception:  # noqa: BLE001 - a platform psutil cannot read: unknown, never guessed
        return None
    idle = getattr(t, "idle", 0.0) + getattr(t, "iowait", 0.0)
    return float(sum(t)) - float(idle)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (a container's share)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class StepReading:
    """One timed step: wall seconds, the worker's CPU seconds, the machine's busy seconds."""

    wall_s: float
    cpu_s: float
    busy_s: float | None


class StepClock:
    """Reads the clocks around one step: ``begin()`` before it, ``end()`` after it.

    The reads sit outside the step's own wall time (busy and CPU first, then the wall clock;
    in reverse at the end), so they add nothing to the time reported. ``children`` (a callable
    returning the CPU seconds of the worker's children, e.g. DataLoader workers) is called only
    when given: listing children costs a scan of ``/proc``.
    """

    def __init__(self, children: Callable[[], float] | None = None) -> None:
        self.children = children
        self.cpus = _cpu_count()
        self._start: tuple[float | None, float, float] | None = None

    def _cpu(self) -> float:
        own = time.process_time()  # every thread of this process (CLOCK_PROCESS_CPUTIME_ID)
        return own + (self.children() if self.children is not None else 0.0)

    def begin(self) -> None:
        busy = machine_busy_s()
        cpu = self._cpu()
        self._start = (busy, cpu, time.perf_counter())

    def end(self) -> StepReading:
        t1 = time.perf_counter()
        assert self._start is not None, "StepClock.end() without begin()"
        busy0, cpu0, t0 = self._start
        cpu1 = self._cpu()
        busy1 = machine_busy_s()
        busy = None if busy0 is None or busy1 is None else busy1 - busy0
        return StepReading(wall_s=t1 - t0, cpu_s=cpu1 - cpu0, busy_s=busy)


def wait_until_quiet(
    min_s: float,
    max_s: float,
    cancelled: Callable[[], bool] = lambda: False,
    *,
    window_s: float = 0.2,
    quiet_share: float = 0.03,
    windows: int = 3,
) -> bool:
    """Wait at least ``min_s`` and until the machine is quiet, at most ``max_s``: ``windows``
    windows of ``window_s`` in a row in which other processes used less than ``quiet_share``
    of the CPU. This process idles meanwhile, so what is busy is someone else: a browser still
    drawing the previous pass's chart, then doing smaller work (its garbage collection) for a
    while after. With two 0.2 s windows under 5%, live.py still measured the panel's timed
    steps 13-15% slower than the CLI's on the transformer; with three under 3%, 0.98x (4
    noisy rounds). Whether it was quiet in the end."""
    start = time.monotonic()
    quiet_windows = 0
    cpus = _cpu_count()
    while not cancelled():
        busy0, own0, t0 = machine_busy_s(), time.process_time(), time.monotonic()
        time.sleep(window_s)
        busy1, own1, t1 = machine_busy_s(), time.process_time(), time.monotonic()
        if busy0 is None or busy1 is None:
            quiet = True  # cannot tell: the pause itself is all we can give
        else:
            others = (busy1 - busy0) - (own1 - own0)
            quiet = others < quiet_share * (t1 - t0) * cpus
        quiet_windows = quiet_windows + 1 if quiet else 0
        elapsed = t1 - start
        if elapsed >= min_s and quiet_windows >= windows:
            return True
        if elapsed >= max_s:
            return False
    return False


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's live children (DataLoader workers)."""
    import psutil

    total = 0.0
    try:
        for c in psutil.Process().children(recursive=True):
            try:
                t = c.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass  # ended between the listing and the read
    except psutil.Error:
        pass
    return total


# -- who else was busy ------------------------------------------------------------------------
Snapshot = dict[int, tuple[str, float]]


def process_snapshot() -> Snapshot:
    """pid -> (name, CPU seconds so far) of every process we may read (psutil)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return {}
    snap: Snapshot = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        try:
            t = p.info["cpu_times"]
            if t is not None:
                snap[p.pid] = (str(p.info["name"] or "?"), float(t.user + t.system))
        except (psutil.Error, AttributeError, TypeError):
            continue
    return snap


def busiest_others(
    before: Snapshot,
    after: Snapshot,
    wall_s: float,
    *,
    exclude: Sequence[int] = (),
    labels: dict[int, str] | None = None,
    top: int = 3,
    min_share: float = 0.05,
) -> list[str]:
    """The processes that used the most CPU between two snapshots, as "name (pid N): 97% of a
    core" (at least ``min_share`` of a core, ``exclude``d pids left out). ``labels`` adds a
    word about a pid (the process that started the run: the notebook kernel, a CLI)."""
    if wall_s <= 0:
        return []
    rows = []
    for pid, (name, cpu) in after.items():
        if pid in exclude or pid not in before:
            continue
        used = (cpu - before[pid][1]) / wall_s
        if used >= min_share:
            rows.append((used, pid, name))
    rows.sort(reverse=True)
    out = []
    for used, pid, name in rows[:top]:
        extra = f", {labels[pid]}" if labels and pid in labels else ""
        out.append(f"{name} (pid {pid}{extra}): {100 * used:.0f}% of a core")
    return out


# -- the verdict (pure) -------------------------------------------------------------------------
def others_shares(
    wall_s: Sequence[float],
    cpu_s: Sequence[float],
    busy_s: Sequence[float | None],
    cpus: int,
    *,
    min_window_s: float = MIN_WINDOW_S,
    trailing: bool = False,
) -> list[float | None]:
    """Per step, the share of the machine's CPU that other processes used (0..1).

    Each step's share is over the smallest window of steps around it (``trailing``: ending at
    it, for a live reading) whose wall time is at least ``min_window_s``, or all steps if the
    run is shorter: (busy - own CPU) / (wall x CPUs), clipped to [0, 1]. ``None`` where the
    machine's busy time is unknown."""
    n = len(wall_s)
    if not (len(cpu_s) == len(busy_s) == n):
        raise ValueError(
            f"wall_s, cpu_s and busy_s differ in length: {n}, {len(cpu_s)}, {len(busy_s)}"
        )
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    out: list[float | None] = []
    for i in range(n):
        lo, hi = i, i + 1  # window [lo, hi)
        span = wall_s[i]
        while span < min_window_s and (lo > 0 or (hi < n and not trailing)):
            # Grow towards the side that exists, alternating, so the window stays centred.
            if not trailing and hi < n and (hi - i <= i - lo or lo == 0):
                span += wall_s[hi]
                hi += 1
            else:
                lo -= 1
                span += wall_s[lo]
        window = range(lo, hi)
        busy_w = [busy_s[j] for j in window]
        if any(b is None for b in busy_w):
            out.append(None)
            continue
        busy = sum(b for b in busy_w if b is not None)
        own = sum(cpu_s[j] for j in window)
        wall = sum(wall_s[j] for j in window)
        out.append(min(1.0, max(0.0, (busy - own) / (wall * cpus))) if wall > 0 else None)
    return out


def assess(
    wall_s: Sequence[float],
    cpu_s: Sequence[float],
    busy_s: Sequence[float | None],
    *,
    cpus: int,
    threads: int | None,
    threshold: float = DISTURBED_SHARE,
    busiest: Sequence[str] = (),
    what: str = "timed steps",
) -> Timing:
    """The :class:`~memlab.timeline.Timing` of a run's timed steps.

    ``cpu_share`` is the worker's CPU over wall x ``threads`` (median over steps); a step is
    disturbed when others used more than ``threshold`` of the machine; the run is steady when at
    most :data:`MAX_DISTURBED_FRACTION` of its steps were. ``busiest`` (from
    :func:`busiest_others`) names the cause in the note of a run that was not steady.
    """
    n = len(wall_s)
    if n == 0:
        return Timing(
            steady=False,
            cpu_share=None,
            disturbed_steps=0,
            note="no timed step: the step time was not measured",
            threads=threads,
            threshold=threshold,
        )
    shares = others_shares(wall_s, cpu_s, busy_s, cpus)
    disturbed = [s is not None and s > threshold for s in shares]
    k = sum(disturbed)
    known = [s for s in shares if s is not None]
    others = statistics.median(known) if known else None
    t = threads if threads and threads > 0 else 1
    cpu_share = statistics.median(c / (w * t) for c, w in zip(cpu_s, wall_s, strict=True) if w > 0)
    steady = others is not None and k <= MAX_DISTURBED_FRACTION * n
    limit = f"{100 * threshold:.0f}%"
    if others is None:
        note = (
            "the machine's CPU use could not be read on this platform, so whether other "
            "processes slowed the steps is unknown"
        )
    elif steady:
        note = (
            f"other processes used {100 * others:.0f}% of the machine's {cpus} CPUs "
            f"(median over {n} {what})"
        )
        if k:
            note += f"; {k} of {n} steps passed {limit} (the median is still a quiet step's)"
    else:
        worst = max(known)
        note = (
            f"other processes used more than {limit} of the machine's {cpus} CPUs during "
            f"{k} of {n} {what} (median {100 * others:.0f}%, up to {100 * worst:.0f}%)"
        )
        if busiest:
            note += "; busiest: " + ", ".join(busiest)
        note += ". These step times are slower than on a quiet machine: close what competes "
        note += "for the CPU (a live chart in the browser counts) and run again"
    return Timing(
        steady=steady,
        cpu_share=round(float(cpu_share), 4),
        disturbed_steps=k,
        note=note,
        threads=threads,
        others_share=None if others is None else round(float(others), 4),
        threshold=threshold,
        step_wall_s=tuple(wall_s),
        step_cpu_s=tuple(cpu_s),
        step_others_share=tuple(shares),
        step_disturbed=tuple(disturbed),
    )


def step_payload(
    r: StepReading, share: float | None, threshold: float = DISTURBED_SHARE
) -> dict[str, Any]:
    """The timing keys of a streamed step message (live: a trailing window's share)."""
    return {
        "cpu_s": r.cpu_s,
        "others_share": share,
        "disturbed": share is not None and share > threshold,
    }
