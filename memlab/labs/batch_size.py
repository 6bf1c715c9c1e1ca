"""Lab 01, batch size: which categories grow with the batch, bytes per sample and fixed bytes
from a line through the peaks, throughput, the largest batch under a budget, and the estimator
against the sweep."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from memlab.config import MIB, Experiment
from memlab.labs import exercises
from memlab.labs.analysis import category_trends, linear_fit
from memlab.labs.checks import Check, Exercise, check_choice
from memlab.labs.exercises import check_largest_batch, check_prediction
from memlab.labs.sweeps import Sweep, run_sweep, timing_note
from memlab.labs.text import md_table, note, pct, times
from memlab.timeline import CATEGORIES, RunResult, format_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "Exercise",
    "category_trends",
    "peak_line",
    "explain",
    "why_growing",
    "estimates_table",
    "exercise_largest_batch",
    "exercise_growing",
    "exercise_prediction",
    "check_largest_batch",
    "check_growing",
    "check_prediction",
]


def _xs(sweep: Sweep, field: str) -> list[int]:
    return [int(getattr(e, field)) for e in sweep.experiments]


def peak_line(sweep: Sweep, field: str = "batch_size") -> tuple[float, float]:
    """``(bytes per sample, fixed bytes)``: the least-squares line through the measured peaks."""
    return linear_fit(_xs(sweep, field), [r.peak_bytes for r in sweep.results])


def explain(sweep: Sweep, field: str = "batch_size") -> str:
    """What you see, before the exercises: how the peak moved with the batch, the line through
    the peaks (bytes per sample, fixed bytes) and throughput. Which categories grew is exercise
    2's answer: ``why_growing`` says it, shown once the learner has tried. ``field`` is the
    Experiment field the sweep varied."""
    xs = _xs(sweep, field)
    slope, intercept = peak_line(sweep, field)
    first, last = sweep.results[0], sweep.results[-1]
    out = [
        f"The batch went from {xs[0]} to {xs[-1]} ({times(xs[-1], xs[0])}); the peak went from "
        f"{format_bytes(first.peak_bytes)} to {format_bytes(last.peak_bytes)} "
        f"({times(last.peak_bytes, first.peak_bytes)}).",
        "",
        f"- A straight line through the measured peaks gives **{format_bytes(slope)} per "
        f"sample** on top of **{format_bytes(max(intercept, 0.0))} fixed**: that line is how "
        "you predict the largest batch for a budget. Which categories make up each part? "
        "Compare the bars of the first and the last batch.",
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


def why_growing(sweep: Sweep, field: str = "batch_size") -> str:
    """Which categories grew with the batch and which stayed, and why (exercise 2's worked
    solution): each category at the first and the last batch, their ratio and trend."""
    xs = _xs(sweep, field)
    trends = category_trends(sweep.results)
    first, last = sweep.results[0], sweep.results[-1]
    grew = [c for c, t in trends.items() if t == "grows"]
    const = [c for c, t in trends.items() if t == "constant"]
    rows = []
    for c in CATEGORIES:
        if trends[c] == "absent":
            continue
        a, b = first.peak_by_category.get(c, 0), last.peak_by_category.get(c, 0)
        rows.append((c, format_bytes(a), format_bytes(b), times(b, a), trends[c]))
    return "\n".join(
        [
            f"Each category at the peak, at the first and the last {field} of the sweep "
            "(a category within 5% of where it started counts as constant):",
            "",
            md_table(("category", f"at {xs[0]}", f"at {xs[-1]}", "ratio", "trend"), rows),
            "",
            f"- **Grew with the batch:** {', '.join(grew) or 'none'}. These hold one row per "
            "sample: the saved activations for backward, the input batch, and the scratch "
            "space of each op.",
            f"- **Stayed constant:** {', '.join(const) or 'none'}. The weights, their gradients "
            "and the optimizer state are sized by the model, not by the batch.",
        ]
    )


def exercise_largest_batch(
    sweep: Sweep,
    base: Experiment,
    budget_bytes: int,
    *,
    multiple: int = 8,
    id: str = "1",
    run: Callable[[Experiment], RunResult] | None = None,
) -> Exercise:
    """Exercise 1: the largest batch (a multiple of ``multiple``) under ``budget_bytes``,
    checked by real runs of ``base``; the worked solution starts from the sweep's line."""
    slope, fixed = peak_line(sweep)
    budget = format_bytes(budget_bytes)
    hints = (
        f"Use the line in the explanation: fixed bytes plus bytes per sample × batch must stay "
        f"under {budget}. Or move the panel's batch slider (its budget is {budget}) and watch "
        "for a run that stops with oom.",
        f"Solve {format_bytes(fixed)} + {format_bytes(slope)} × batch = {budget} for the batch, "
        f"round down to a multiple of {multiple}, then try it and the next multiple in the "
        "panel: the line is a fit, not a measurement.",
    )
    return exercises.largest_batch(
        id,
        base,
        budget_bytes,
        multiple=multiple,
        line=(slope, fixed),
        hints=hints,
        run=run,
    )


def exercise_growing(sweep: Sweep, id: str = "2") -> Exercise:
    """Exercise 2: the set of categories that grew across the sweep."""
    grew = {c for c, t in category_trends(sweep.results).items() if t == "grows"}
    hints = (
        "Compare the first and the last bar of the chart 'Peak tensor memory by category vs "
        "batch size' (or the '… MiB' columns of the table), one category at a time.",
        f"{len(grew)} categories grew. A category grows with the batch when it holds something "
        "for every sample; one sized by the model stays where it was.",
    )
    return Exercise(
        id,
        "What grows with the batch",
        lambda a: check_growing(a, sweep),
        hints=hints,
        solution=lambda: why_growing(sweep),
    )


def exercise_prediction(
    sweep: Sweep,
    experiment: Experiment,
    *,
    id: str = "3",
    run: Callable[[Experiment], RunResult] | None = None,
    estimate: Callable[[Experiment], float] | None = None,
) -> Exercise:
    """Exercise 3: predict ``experiment``'s peak (MiB) before it runs; checked by one real run
    (within 10%). ``estimate`` gives memlab.estimate's peak in bytes (default: in a worker)."""
    slope, fixed = peak_line(sweep)
    b = experiment.batch_size
    xs = _xs(sweep, "batch_size")
    near = sorted(range(len(xs)), key=lambda i: abs(xs[i] - b))[:2]
    i, j = sorted(near)
    pi, pj = sweep.results[i].peak_bytes, sweep.results[j].peak_bytes
    hints = (
        f"Use the sweep's line (fixed bytes plus bytes per sample, in the explanation) at batch "
        f"{b}, or set the panel's batch to {b} and read the prediction chart before you run.",
        f"The sweep measured {format_bytes(pi)} at batch {xs[i]} and {format_bytes(pj)} at "
        f"batch {xs[j]}: the peak grows by ({format_bytes(pj)} − {format_bytes(pi)}) / "
        f"{xs[j] - xs[i]} per sample between them. Carry that on to batch {b}.",
    )

    def solution(measured_mib: float, r: RunResult) -> str:
        line = fixed + slope * b
        if estimate is None:
            from memlab import runner
            from memlab.estimator import estimate as memlab_estimate

            est = float(runner.call(memlab_estimate, experiment).peak_bytes)
        else:
            est = float(estimate(experiment))
        return "\n".join(
            [
                f"1. The line: {format_bytes(fixed)} + {format_bytes(slope)} × {b} = "
                f"**{line / MIB:.1f} MiB**.",
                f"2. The run measured **{measured_mib:.1f} MiB** ({pct(line, r.peak_bytes)} for "
                "the line).",
                f"3. `memlab.estimate` predicted {est / MIB:.1f} MiB without running "
                f"({pct(est, r.peak_bytes)}): it traces one step on fake tensors, so it sees "
                "the temporaries that a straight line only averages.",
            ]
        )

    return exercises.predict_run(
        id,
        f"The peak at batch {b}, predicted",
        experiment,
        lambda r: r.peak_bytes / MIB,
        rel_tol=0.10,
        hints=hints,
        solution=solution,
        run=run,
    )


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
        options=CATEGORIES,
        what="a set of category names, e.g. {'parameters'}",
        explain="They scale with the number of samples in flight.",
    )
