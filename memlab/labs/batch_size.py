"""Lab 01, batch size: which categories grow with the batch, bytes per sample and fixed bytes
from a line through the peaks, throughput, the largest batch under a budget, and the estimator
against the sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from memlab.config import MIB
from memlab.labs.analysis import category_trends, linear_fit
from memlab.labs.checks import Check, check_choice
from memlab.labs.exercises import check_largest_batch, check_prediction
from memlab.labs.sweeps import Sweep, run_sweep, timing_note
from memlab.labs.text import md_table, note, pct, times
from memlab.timeline import CATEGORIES, format_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "category_trends",
    "explain",
    "estimates_table",
    "check_largest_batch",
    "check_growing",
    "check_prediction",
]


def explain(sweep: Sweep, field: str = "batch_size") -> str:
    """Which categories grew with the batch, the bytes per sample and the fixed bytes (a line
    fitted to the measured peaks), and what happened to throughput. ``field`` is the
    Experiment field the sweep varied."""
    xs = [getattr(e, field) for e in sweep.experiments]
    trends = category_trends(sweep.results)
    slope, intercept = linear_fit(xs, [r.peak_bytes for r in sweep.results])
    first, last = sweep.results[0], sweep.results[-1]
    grew = [c for c, t in trends.items() if t == "grows"]
    const = [c for c, t in trends.items() if t == "constant"]
    rows = []
    for c in CATEGORIES:
        if trends[c] == "absent":
            continue
        a, b = first.peak_by_category.get(c, 0), last.peak_by_category.get(c, 0)
        rows.append((c, format_bytes(a), format_bytes(b), times(b, a), trends[c]))
    out = [
        f"The batch went from {xs[0]} to {xs[-1]} ({times(xs[-1], xs[0])}); the peak went from "
        f"{format_bytes(first.peak_bytes)} to {format_bytes(last.peak_bytes)} "
        f"({times(last.peak_bytes, first.peak_bytes)}).",
        "",
        md_table(("category", f"at {xs[0]}", f"at {xs[-1]}", "ratio", "trend"), rows),
        "",
        f"- **Grew with the batch:** {', '.join(grew) or 'none'}. These hold one row per sample: "
        "the saved activations for backward, the input batch, and the scratch space of each op.",
        f"- **Stayed constant:** {', '.join(const) or 'none'}. The weights, their gradients and "
        "the optimizer state are sized by the model, not by the batch.",
        f"- A straight line through the measured peaks gives **{format_bytes(slope)} per "
        f"sample** on top of **{format_bytes(max(intercept, 0.0))} fixed**: that line is how "
        "you predict the largest batch for a budget.",
    ]
    tps = [r.throughput_samples_per_s for r in sweep.results]
    if all(t is not None for t in tps):
        t0, t1 = float(tps[0] or 0), float(tps[-1] or 0)
        trend = "rose" if t1 > t0 * 1.05 else "fell" if t1 < t0 * 0.95 else "stayed about level"
        best = int(np.argmax(np.asarray(tps, dtype=np.float64)))
        out.append(
            f"- Throughput {trend}: {t0:.0f} → {t1:.0f} samples/s ({pct(t1, t0)}); the best "
            f"here was at {field} {xs[best]} ({float(tps[best] or 0):.0f} samples/s). Larger "
            "batches amortise per-step overhead until the cores are saturated; after that a "
            "bigger batch costs memory without buying speed."
        )
    return "\n".join(out + note(timing_note(sweep)))


def estimates_table(sweep: Sweep) -> pd.DataFrame:
    """``memlab.estimate`` for every run of the sweep (one job in a worker process, so the
    kernel never imports torch) beside the measured peak: one row per run with the predicted
    and measured peaks (MiB) and the estimate's error in percent of the measurement."""
    import pandas as pd

    from memlab import jobs, runner

    ests = runner.call(jobs.estimate_each, list(sweep.experiments))
    rows = [
        (
            label,
            est.peak_bytes / MIB,
            r.peak_bytes / MIB,
            100.0 * (est.peak_bytes / r.peak_bytes - 1.0) if r.peak_bytes else float("nan"),
        )
        for (label, _exp, r), est in zip(sweep.runs(), ests, strict=True)
    ]
    df = pd.DataFrame(rows, columns=["run", "predicted MiB", "measured MiB", "error %"])
    return df.set_index("run")


def check_growing(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` is the set of categories that grew across the sweep."""
    trends = category_trends(sweep.results)
    grew = {c for c, t in trends.items() if t == "grows"}
    return check_choice(
        answer,
        grew,
        what="a set of category names, e.g. {'parameters'}",
        explain="They scale with the number of samples in flight.",
    )
