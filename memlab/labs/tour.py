"""Lab 00, a tour of every knob: one knob changed per run against a baseline, which category
each change moved, and the panel challenge."""

from __future__ import annotations

from typing import Any

from memlab.config import MIB
from memlab.labs.analysis import biggest_change
from memlab.labs.checks import Check, check_choice
from memlab.labs.exercises import check_panel_result
from memlab.labs.sweeps import Sweep, run_sweep, timing_note
from memlab.labs.text import note, pct
from memlab.timeline import format_bytes

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "explain",
    "check_panel_result",
    "check_biggest_saving",
]


def explain(sweep: Sweep) -> str:
    """For each run after the first (the baseline): how the peak moved and which category moved
    it most, and its throughput against the baseline's."""
    base = sweep.results[0]
    lines = [
        f"The baseline (**{sweep.labels[0]}**) peaked at **{format_bytes(base.peak_bytes)}** of "
        f"tensors, in the {base.peak_phase} phase."
    ]
    for label, _exp, r in list(sweep.runs())[1:]:
        c, d = biggest_change(base, r)
        verb = "raised" if r.peak_bytes > base.peak_bytes else "lowered"
        if d == 0:
            why = "no category changed"
        else:
            why = (
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
            f"({pct(r.peak_bytes, base.peak_bytes)}), {why}{speed}."
        )
    best = min(range(1, len(sweep)), key=lambda i: sweep.results[i].peak_bytes, default=None)
    if best is not None and sweep.results[best].peak_bytes < base.peak_bytes:
        lines.append(
            f"\nOf these single changes, **{sweep.labels[best]}** saved the most memory "
            "here. Which one wins depends on where the bytes are: a parameter-heavy "
            "model and an activation-heavy one reward different knobs."
        )
    return "\n".join(lines + note(timing_note(sweep)))


def check_biggest_saving(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` is the label of the run (after the baseline) with the lowest peak."""
    labels = list(sweep.labels[1:])
    best = min(labels, key=lambda lab: sweep[lab].peak_bytes)
    return check_choice(
        answer,
        best,
        options=labels,
        what=f"one of {labels}",
        explain=f"Its peak was {format_bytes(sweep[best].peak_bytes)} against "
        f"{format_bytes(sweep.results[0].peak_bytes)} for the baseline.",
    )
