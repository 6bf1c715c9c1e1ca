"""Pure functions of measured results that several labs read: how categories move across a
sweep, a straight line through the peaks, seconds per phase, and what RSS did per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memlab.timeline import CATEGORIES, PHASES, PROCESS_PARTS, RunResult

__all__ = [
    "RSS_SPLIT",
    "category_trends",
    "biggest_change",
    "linear_fit",
    "phase_seconds",
    "sample_values",
    "epoch_profile",
]

#: The parts the resident set splits into: the process parts less the total and its
#: high-water mark (which are sums over the parts, not parts themselves).
RSS_SPLIT: tuple[str, ...] = tuple(p for p in PROCESS_PARTS if p not in ("rss", "rss_hwm"))


def category_trends(
    results: Sequence[RunResult], *, rel: float = 0.05, min_bytes: int = 1024
) -> dict[str, str]:
    """How each category's peak bytes move from the first run to the last: ``grows``,
    ``shrinks``, ``constant`` (within ``rel`` of the first, or less than ``min_bytes`` apart),
    or ``absent`` (zero in every run). The runs should be ordered by the knob swept."""
    if len(results) < 2:
        raise ValueError("a trend needs at least two runs")
    out: dict[str, str] = {}
    for c in CATEGORIES:
        vals = [int(r.peak_by_category.get(c, 0)) for r in results]
        first, last = vals[0], vals[-1]
        if not any(vals):
            out[c] = "absent"
        elif abs(last - first) <= max(rel * first, min_bytes):
            out[c] = "constant"
        else:
            out[c] = "grows" if last > first else "shrinks"
    return out


def biggest_change(base: RunResult, other: RunResult) -> tuple[str, int]:
    """The category whose peak bytes moved the most from ``base`` to ``other``, and by how much
    (signed)."""
    deltas = {
        c: other.peak_by_category.get(c, 0) - base.peak_by_category.get(c, 0) for c in CATEGORIES
    }
    c = max(deltas, key=lambda k: abs(deltas[k]))
    return c, deltas[c]


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept``; returns ``(slope, intercept)``."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise ValueError("a linear fit needs at least two different x values")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def phase_seconds(result: RunResult) -> dict[str, float]:
    """Seconds the measured block spent in each phase, from the event timeline (the time from
    one allocation event to the next is given to the phase of the first)."""
    tl = result.timeline
    if len(tl) < 2:
        return {}
    dt = np.diff(tl.t)
    ph = tl.phase[:-1]
    return {p: float(dt[ph == i].sum()) for i, p in enumerate(PHASES) if np.any(ph == i)}


def sample_values(samples: Sequence[Mapping[str, Any]], key: str) -> list[int]:
    """The values of ``key`` in live samples, in order, skipping samples that lack it (a part
    this platform cannot measure is missing, not zero)."""
    return [int(s[key]) for s in samples if s.get(key) is not None]


def epoch_profile(
    samples: Sequence[Mapping[str, Any]],
    *,
    steps: int,
    warmup: int,
    steps_per_epoch: int,
    step_times_s: Sequence[float] = (),
) -> list[dict[str, Any]]:
    """Per epoch of a run: how much each RSS part grew while its measured steps ran.

    ``samples`` are the run's live samples (each says its ``step``: 0 during setup and warm-up,
    then the measured step it was taken in). The warm-up batches come first in epoch 1. Growth of
    a part in epoch ``e`` is the highest value it reached by the end of ``e`` minus the highest
    it reached before ``e`` began, starting from its value when the measured steps began (pages
    mapped by a step stay mapped unless the system runs short of memory, so the running maximum
    is the honest reading). Epochs without a sample are left out."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")

    def epoch_of(step: int) -> int:
        return (warmup + step - 1) // steps_per_epoch + 1

    before = [s for s in samples if int(s.get("step") or 0) == 0]
    # The level when the measured steps began: the last reading before step 1 (not the highest
    # during setup, which may have written the memmap file through a mapping of its own).
    running: dict[str, int | None] = {}
    for p in RSS_SPLIT:
        vals = sample_values(before, p)
        running[p] = vals[-1] if vals else None
    out = []
    for e in range(1, epoch_of(steps) + 1):
        in_e = [
            s for s in samples if int(s.get("step") or 0) >= 1 and epoch_of(int(s["step"])) == e
        ]
        ks = [k for k in range(1, steps + 1) if epoch_of(k) == e]
        if not in_e or not ks:
            continue
        row: dict[str, Any] = {"epoch": e, "measured steps": len(ks)}
        for p in RSS_SPLIT:
            vals = sample_values(in_e, p)
            prev = running[p]
            if not vals or prev is None:
                row[f"{p} growth"] = None
                continue
            top = max(prev, max(vals))
            row[f"{p} growth"] = top - prev
            running[p] = top
        times = [step_times_s[k - 1] for k in ks if k - 1 < len(step_times_s)]
        row["step ms"] = float(np.median(times)) * 1e3 if times else None
        out.append(row)
    return out
