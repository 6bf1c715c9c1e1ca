"""Lab 11, the capstone: a memory-aware architecture search under a device's budget
(``memlab.nas``). The text and checks here are computed from a ``SearchResult``; no torch."""

from __future__ import annotations

from typing import Any

from memlab.labs.checks import Check, check_choice
from memlab.nas import (
    Architecture,
    Candidate,
    SearchResult,
    SearchSpace,
    search_architectures,
)
from memlab.timeline import format_bytes

__all__ = [
    "Architecture",
    "Candidate",
    "Check",
    "SearchResult",
    "SearchSpace",
    "search_architectures",
    "explain",
    "claims",
    "live_pareto",
    "check_half_memory",
]


def claims(result: SearchResult) -> dict[str, bool]:
    """What the lab asserts: every trained candidate's predicted peak is within the budget,
    none over it was trained, and the chosen model's measured peak is within 3% of its
    prediction."""
    v = result.verification
    return {
        "trained within budget": all(
            c.predicted_peak_bytes <= result.budget_bytes for c in result.trained
        ),
        "over budget never trained": not any(c.trained for c in result.infeasible),
        "chosen within 3%": v is not None and v.within_tolerance,
    }


def explain(result: SearchResult) -> str:
    """Markdown: what the search found, every number from ``result``."""
    n, t, x = len(result.candidates), len(result.trained), len(result.infeasible)
    lines = [
        f"The {result.sampler} search proposed {n} candidates for a budget of "
        f"{format_bytes(result.budget_bytes)}: {x} were predicted over it and never trained; "
        f"{t} were trained for {result.train_steps} steps. {len(result.pareto)} lie on the "
        "Pareto front (accuracy, predicted peak, latency measured here)."
    ]
    c, v = result.chosen, result.verification
    if c is not None and c.accuracy is not None:
        lines.append(
            f"The chosen model, `{c.architecture}`, reached accuracy {c.accuracy:.3f} with a "
            f"predicted peak of {format_bytes(c.predicted_peak_bytes)}."
        )
    if v is not None and v.measured_peak_bytes is not None and v.relative_error is not None:
        lines.append(
            f"Its real run peaked at {format_bytes(v.measured_peak_bytes)} "
            f"({v.relative_error:+.1%} against the prediction)."
        )
    return "\n\n".join(lines)


def live_pareto(result: SearchResult | None = None) -> tuple[Any, Any]:
    """A ``FigureWidget`` of the Pareto figure and the ``on_trial`` callback that redraws it
    (on the caller's thread: the search blocks the cell, so the kernel's thread is the one
    that edits the widget)."""
    from memlab.plots_search import pareto_figure
    from memlab.ui.charts import FigureWidget, sync_figure

    def empty() -> SearchResult:
        return SearchResult("-", 0, "-", 1, 0, {})

    fw = FigureWidget(pareto_figure(result or empty()))

    def on_trial(r: SearchResult) -> None:
        sync_figure(fw, pareto_figure(r))

    return fw, on_trial


def check_half_memory(answer: Any, baseline: Candidate, result: SearchResult) -> Check:
    """Exercise: name a trained architecture (``answer``, e.g. ``"cnn_d2_w16_k5"``) that beats
    ``baseline``'s accuracy in at most half its predicted peak."""
    good = [
        c.architecture
        for c in result.trained
        if c.accuracy is not None
        and baseline.accuracy is not None
        and c.accuracy >= baseline.accuracy
        and 2 * c.predicted_peak_bytes <= baseline.predicted_peak_bytes
    ]
    options = sorted({c.architecture for c in result.trained})
    truth = answer if answer in good else (good[0] if good else "none")
    return check_choice(answer, truth, options=[*options, "none"], what="a trained architecture")
