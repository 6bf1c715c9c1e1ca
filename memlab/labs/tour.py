"""Lab 00, a tour of every knob: one knob changed per run against a baseline, which category
each change moved, and the panel challenge.

``explain`` says what the runs show without naming the run that saved the most (exercise 1's
answer); ``why`` says it, and is shown as exercise 1's worked solution."""

from __future__ import annotations

from typing import Any

from memlab.config import MIB
from memlab.labs.analysis import biggest_change
from memlab.labs.checks import Check, Exercise, check_choice
from memlab.labs.exercises import check_panel_result, panel_challenge
from memlab.labs.sweeps import Sweep, run_sweep, timing_note
from memlab.labs.text import md_table, note, pct
from memlab.timeline import RunResult, format_bytes

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "Exercise",
    "explain",
    "why",
    "exercise_fit_batch",
    "exercise_biggest_saving",
    "check_panel_result",
    "check_biggest_saving",
]


def explain(sweep: Sweep) -> str:
    """What you see, before the exercises: the baseline's peak and where its bytes are. Which
    run saved the most, and why, is exercise 1's answer: ``exercise_biggest_saving`` shows it
    once the learner has tried."""
    base = sweep.results[0]
    split = ", ".join(
        f"{c} {format_bytes(b)}"
        for c, b in sorted(base.peak_by_category.items(), key=lambda t: -t[1])
        if b
    )
    lines = [
        f"The baseline (**{sweep.labels[0]}**) peaked at **{format_bytes(base.peak_bytes)}** of "
        f"tensors, in the {base.peak_phase} phase. At that moment its bytes were: {split}.",
        "",
        "Every other run changes one knob. A knob can only save bytes "
        "in the categories it acts on: compare each run's bars with the baseline's, category "
        "by category, before you read the peaks.",
    ]
    return "\n".join(lines + note(timing_note(sweep)))


def why(sweep: Sweep) -> str:
    """For each run after the first (the baseline): how the peak moved and which category moved
    it most, and its throughput against the baseline's (exercise 1's worked solution)."""
    base = sweep.results[0]
    lines = []
    for label, _exp, r in list(sweep.runs())[1:]:
        c, d = biggest_change(base, r)
        verb = "raised" if r.peak_bytes > base.peak_bytes else "lowered"
        if d == 0:
            cause = "no category changed"
        else:
            cause = (
                f"mostly through **{c}** ({'+' if d > 0 else ''}{format_bytes(d)}: "
                f"{format_bytes(base.peak_by_category.get(c, 0))} → "
                f"{format_bytes(r.peak_by_category.get(c, 0))})"
            )
        tp_old, tp_new = base.throughput_samples_per_s, r.throughput_samples_per_s
        speed = ""
        if tp_old and tp_new:
            speed = f"; throughput {tp_old:.0f} → {tp_new:.0f} samples/s ({pct(tp_new, tp_old)})"
        lines.append(
            f"- **{label}** {verb} the peak to {format_bytes(r.peak_bytes)} "
            f"({pct(r.peak_bytes, base.peak_bytes)}), {cause}{speed}."
        )
    best = min(range(1, len(sweep)), key=lambda i: sweep.results[i].peak_bytes, default=None)
    if best is not None and sweep.results[best].peak_bytes < base.peak_bytes:
        lines.append(
            f"\nOf these single changes, **{sweep.labels[best]}** saved the most memory "
            "here. Which one wins depends on where the bytes are: a parameter-heavy "
            "model and an activation-heavy one reward different knobs."
        )
    return "\n".join(lines)


def _biggest_category(r: RunResult) -> tuple[str, int]:
    c = max(r.peak_by_category, key=lambda k: r.peak_by_category[k], default="other")
    return c, int(r.peak_by_category.get(c, 0))


def exercise_biggest_saving(sweep: Sweep, id: str = "1") -> Exercise:
    """Exercise 1: which single change lowered the peak the most (a run label)."""
    base = sweep.results[0]
    c, b = _biggest_category(base)
    hints = (
        f"Look at the 'peak MiB' column of the table, or at the height of each bar in the chart "
        f"'Peak tensor memory: one knob changed per run', against the baseline's "
        f"({format_bytes(base.peak_bytes)}).",
        f"The baseline's biggest category was {c} ({format_bytes(b)} of "
        f"{format_bytes(base.peak_bytes)}): a knob that cuts {c} can save the most. In which run "
        f"is the {c} bar shortest, and did another category grow there?",
    )
    return Exercise(
        id,
        "The biggest saving of one knob",
        lambda a: check_biggest_saving(a, sweep),
        hints=hints,
        solution=lambda: why(sweep),
    )


def exercise_fit_batch(
    sweep: Sweep,
    *,
    max_peak_bytes: int,
    min_batch: int,
    workload: str | None = None,
    id: str = "2",
) -> Exercise:
    """Exercise 2, in the panel: a batch of at least ``min_batch`` under ``max_peak_bytes``.
    Hints name the biggest category of the learner's latest run, then what each knob of the
    tour (``sweep``) did to which category; the worked solution is the tour's numbers."""
    base = sweep.results[0]

    def pointer(answer: Any) -> str:
        r = getattr(answer, "result", answer)
        if not isinstance(r, RunResult) or not r.peak_by_category:
            return "Look at the panel's memory chart: which category is biggest at the peak?"
        c, b = _biggest_category(r)
        return (
            f"In your latest run the biggest category at the peak was {c} ({format_bytes(b)} of "
            f"{format_bytes(r.peak_bytes)}; the memory chart shows it). Which knob acts on {c}?"
        )

    moved = []
    for label, _e, r in list(sweep.runs())[1:]:
        c, d = biggest_change(base, r)
        moved.append(f"{label}: {c} {'+' if d >= 0 else '−'}{format_bytes(abs(d))}")
    stronger = (
        "In the tour, at the baseline's batch, each knob moved one category the most: "
        + "; ".join(moved)
        + ". A saving in activations grows with the batch, one in parameters does not; "
        "knobs can be combined."
    )

    def solution() -> str:
        rows = [
            (label, format_bytes(r.peak_bytes), pct(r.peak_bytes, base.peak_bytes))
            for label, _e, r in sweep.runs()
        ]
        return "\n".join(
            [
                f"The tour measured each knob alone (batch of the baseline). The target is a "
                f"batch of at least {min_batch} under {format_bytes(max_peak_bytes)}:",
                "",
                md_table(("run", "peak", "vs baseline"), rows),
                "",
                "Start from the run that grows the batch and subtract what the other knobs "
                "saved; savings in activations and inputs scale with the batch, so at a larger "
                "batch they save more than the table shows. Combine knobs until the estimate "
                "is under the target, then confirm it in the panel (a run measures, the "
                "sum is only a plan).",
                "",
                why(sweep),
            ]
        )

    return panel_challenge(
        id,
        max_peak_bytes=max_peak_bytes,
        min_batch=min_batch,
        workload=workload,
        hints=(pointer, stronger),
        solution=solution,
    )


def check_biggest_saving(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` is the label of the run (after the baseline) with the lowest peak."""
    labels = list(sweep.labels[1:])
    best = min(labels, key=lambda lab: sweep[lab].peak_bytes)
    return check_choice(
        answer,
        best,
        options=labels,
        what="one of the run labels",
        explain=f"Its peak was {format_bytes(sweep[best].peak_bytes)} against "
        f"{format_bytes(sweep.results[0].peak_bytes)} for the baseline.",
    )
