"""Lab 02, gradient checkpointing: activation bytes against checkpoint frequency, the
recompute time it costs, where the activations live per module, and whether it doubles the
batch under a budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memlab.config import CHECKPOINTING, MIB
from memlab.labs.analysis import phase_seconds
from memlab.labs.checks import Check, check_number
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
    "explain",
    "activations_figure",
    "activation_saving",
    "check_saving",
    "check_largest_batch",
]

#: The setting without checkpointing (the baseline of every comparison here).
OFF = CHECKPOINTING[0]


def _activations(r: RunResult) -> int:
    return int(r.peak_by_category.get("activations", 0))


def _backward_ms_per_step(r: RunResult) -> float:
    return phase_seconds(r).get("backward", 0.0) / max(1, len(r.step_times_s)) * 1e3


def explain(sweep: Sweep, baseline: str = OFF) -> str:
    """Activation bytes and step time of each checkpointing setting against ``baseline``, the
    recompute's cost and the exchange rate between the two."""
    base = sweep[baseline]
    a0 = _activations(base)
    t0 = base.step_time_median_s
    rows = []
    for label, _exp, r in sweep.runs():
        t = r.step_time_median_s
        rows.append(
            (
                label,
                format_bytes(_activations(r)),
                pct(_activations(r), a0) if r is not base else "—",
                format_bytes(r.peak_bytes),
                "n/a" if t is None else f"{t * 1e3:.1f}",
                "—" if r is base or t is None or t0 is None else pct(t, t0),
                f"{_backward_ms_per_step(r):.1f}",
            )
        )
    best = min(sweep.results, key=_activations)
    best_label = sweep.labels[sweep.results.index(best)]
    a1 = _activations(best)
    t1 = best.step_time_median_s
    header = (
        "setting",
        "activations",
        "vs baseline",
        "peak",
        "ms/step",
        "time vs baseline",
        "backward ms/step",
    )
    out = [
        md_table(header, rows),
        "",
        f"- **{best_label}** kept the fewest activation bytes: {format_bytes(a1)} instead of "
        f"{format_bytes(a0)} ({pct(a1, a0)}). A checkpointed block saves only its input for "
        "backward and drops everything it computed inside; backward runs the block's forward "
        "again to get them back.",
    ]
    if t0 and t1:
        extra = t1 - t0
        saved = a0 - a1
        cost = (
            f"{extra * 1e3:.1f} ms more per step ({pct(t1, t0)})"
            if extra > 0
            else f"no measurable extra time per step ({pct(t1, t0)}: noise of this machine "
            "is larger than the recompute)"
        )
        out.append(
            f"- The price is recompute: {cost}; time spent in backward went from "
            f"{_backward_ms_per_step(base):.1f} to {_backward_ms_per_step(best):.1f} ms per "
            "step, where the recomputed forward runs."
        )
        if extra > 0 and saved > 0:
            out.append(
                f"- Exchange rate here: {format_bytes(saved / (extra * 1e3))} of activations "
                "saved per extra millisecond per step."
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
    return "\n".join(out + note(timing_note(sweep)))


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
    )
