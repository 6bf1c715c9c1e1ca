"""Lab 02, gradient checkpointing: activation bytes against checkpoint frequency, the
recompute time it costs, where the activations live per module, and whether it doubles the
batch under a budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memlab.config import CHECKPOINTING, MIB, Experiment
from memlab.labs import exercises
from memlab.labs.analysis import phase_seconds
from memlab.labs.checks import Check, Exercise, check_number
from memlab.labs.exercises import check_largest_batch
from memlab.labs.sweeps import Sweep, run_sweep, timing_note
from memlab.labs.text import md_table, note, pct
from memlab.timeline import RunResult, format_bytes

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "Exercise",
    "explain",
    "why_saving",
    "activations_figure",
    "activation_saving",
    "exercise_saving",
    "exercise_largest_batch",
    "check_saving",
    "check_largest_batch",
]

#: The setting without checkpointing (the baseline of every comparison here).
OFF = CHECKPOINTING[0]

#: The categories sized by the model, not by the batch.
_MODEL_SIZED = ("parameters", "gradients", "optimizer_state")


def _activations(r: RunResult) -> int:
    return int(r.peak_by_category.get("activations", 0))


def _backward_ms_per_step(r: RunResult) -> float:
    # The phases come from the tracked steps' timeline: divide by how many of those ran.
    steps = len(r.tracked_step_times_s) or len(r.step_times_s)
    return phase_seconds(r).get("backward", 0.0) / max(1, steps) * 1e3


def _best(sweep: Sweep) -> tuple[str, RunResult]:
    best = min(sweep.results, key=_activations)
    return sweep.labels[sweep.results.index(best)], best


def explain(sweep: Sweep, baseline: str = OFF) -> str:
    """What you see, before the exercises: activation bytes, peak and step time of each
    setting, and what the recompute cost in time. The fraction of activations saved is
    exercise 1's answer: ``why_saving`` says it, shown once the learner has tried."""
    base = sweep[baseline]
    t0 = base.step_time_median_s
    rows = []
    for label, _exp, r in sweep.runs():
        t = r.step_time_median_s
        rows.append(
            (
                label,
                format_bytes(_activations(r)),
                format_bytes(r.peak_bytes),
                "n/a" if t is None else f"{t * 1e3:.1f}",
                "—" if r is base or t is None or t0 is None else pct(t, t0),
                f"{_backward_ms_per_step(r):.1f}",
            )
        )
    best_label, best = _best(sweep)
    t1 = best.step_time_median_s
    header = ("setting", "activations", "peak", "ms/step", "time vs baseline", "backward ms/step")
    out = [md_table(header, rows), ""]
    if t0 and t1:
        extra = t1 - t0
        cost = (
            f"{extra * 1e3:.1f} ms more per step ({pct(t1, t0)})"
            if extra > 0
            else f"no measurable extra time per step ({pct(t1, t0)}: noise of this machine "
            "is larger than the recompute)"
        )
        out.append(
            f"- The price of **{best_label}** is recompute: {cost}; time spent in backward went "
            f"from {_backward_ms_per_step(base):.1f} to {_backward_ms_per_step(best):.1f} ms "
            "per step, where the recomputed forward runs."
        )
    return "\n".join(out + note(timing_note(sweep)))


def why_saving(sweep: Sweep, baseline: str = OFF) -> str:
    """What checkpointing saved in activations and why, the exchange rate against time, and
    what temporaries did (exercise 1's worked solution)."""
    base = sweep[baseline]
    a0 = _activations(base)
    best_label, best = _best(sweep)
    a1 = _activations(best)
    out = [
        f"- **{best_label}** kept the fewest activation bytes: {format_bytes(a1)} instead of "
        f"{format_bytes(a0)} ({pct(a1, a0)}). A checkpointed block saves only its input for "
        "backward and drops everything it computed inside; backward runs the block's forward "
        "again to get them back."
    ]
    t0, t1 = base.step_time_median_s, best.step_time_median_s
    if t0 and t1 and t1 > t0 and a0 > a1:
        out.append(
            f"- Exchange rate here: {format_bytes((a0 - a1) / ((t1 - t0) * 1e3))} of "
            "activations saved per extra millisecond per step."
        )
    tmp0 = base.peak_by_category.get("temporaries", 0)
    tmp1 = best.peak_by_category.get("temporaries", 0)
    if tmp1 > tmp0:
        out.append(
            f"- Temporaries rose ({format_bytes(tmp0)} → {format_bytes(tmp1)}): the recomputed "
            "block's intermediate tensors are alive during backward, so the peak falls by less "
            f"than the activations did ({format_bytes(base.peak_bytes)} → "
            f"{format_bytes(best.peak_bytes)})."
        )
    return "\n".join(out)


def activations_figure(sweep: Sweep, label: str, *, top: int = 12) -> go.Figure:
    """Activation bytes saved for backward by each module's forward in run ``label``, titled
    with its setting."""
    from memlab import plots

    fig = plots.module_activations_figure(sweep[label], top=top)
    fig.update_layout(title={"text": f"Activation bytes by module, checkpointing {label}"})
    return fig


def activation_saving(sweep: Sweep, baseline: str = OFF, label: str = "every-block") -> float:
    """The fraction (0..1) of ``baseline``'s activation bytes that run ``label`` did not keep."""
    a0 = _activations(sweep[baseline])
    return (a0 - _activations(sweep[label])) / a0 if a0 else 0.0


def check_saving(
    answer: Any, sweep: Sweep, baseline: str = OFF, label: str = "every-block"
) -> Check:
    """Right when ``answer`` is within 0.05 of the fraction of activation bytes that ``label``
    saved against ``baseline``."""
    return check_number(
        answer,
        activation_saving(sweep, baseline, label),
        abs_tol=0.05,
        what="a fraction between 0 and 1",
        fraction=True,
    )


def exercise_saving(
    sweep: Sweep, baseline: str = OFF, label: str = "every-block", id: str = "1"
) -> Exercise:
    """Exercise 1: the fraction of ``baseline``'s activation bytes that ``label`` saved."""
    hints = (
        f"Read the activations of '{baseline}' and '{label}' in the table of the explanation "
        "(or the 'activations MiB' column of the sweep's table).",
        f"The fraction saved is ({baseline} − {label}) / {baseline}, both in the same unit: "
        f"what disappeared, not what is left.",
    )

    def solution() -> str:
        a0, a1 = _activations(sweep[baseline]), _activations(sweep[label])
        f = activation_saving(sweep, baseline, label)
        return "\n".join(
            [
                f"({format_bytes(a0)} − {format_bytes(a1)}) / {format_bytes(a0)} = **{f:.3f}** "
                "of the activation bytes saved.",
                "",
                why_saving(sweep, baseline),
            ]
        )

    return Exercise(
        id,
        "The fraction of activations checkpointing saved",
        lambda a: check_saving(a, sweep, baseline, label),
        hints=hints,
        solution=solution,
    )


def exercise_largest_batch(
    sweep: Sweep,
    base: Experiment,
    budget_bytes: int,
    *,
    label: str = "every-block",
    multiple: int = 16,
    id: str = "2",
    run: Callable[[Experiment], RunResult] | None = None,
) -> Exercise:
    """Exercise 2: the largest batch of ``base`` (checkpointed) under ``budget_bytes``, checked
    by real runs. The hints and the worked solution start from run ``label`` of the sweep: its
    model-sized bytes are fixed, the rest is taken to grow in proportion to the batch."""
    r = sweep[label]
    b0 = sweep.experiment(label).batch_size
    fixed = sum(r.peak_by_category.get(c, 0) for c in _MODEL_SIZED)
    per_sample = (r.peak_bytes - fixed) / b0
    budget = format_bytes(budget_bytes)
    hints = (
        f"Set checkpointing to {label} in the panel and move the batch size: the peak must stay "
        f"under {budget}.",
        f"At batch {b0}, {label} peaked at {format_bytes(r.peak_bytes)}, of which "
        f"{format_bytes(fixed)} is sized by the model (parameters, gradients, optimizer state). "
        f"If the rest grows in proportion to the batch, ({budget} − {format_bytes(fixed)}) / "
        f"({format_bytes(r.peak_bytes - fixed)} / {b0}) is a first guess: round it down to a "
        f"multiple of {multiple} and measure.",
    )
    return exercises.largest_batch(
        id,
        base,
        budget_bytes,
        multiple=multiple,
        line=(per_sample, float(fixed)),
        hints=hints,
        run=run,
    )
