"""Lab 11, the capstone: a memory-aware architecture search under a device's budget
(``memlab.nas``). The text, claims and exercise here are computed from ``SearchResult``s;
no torch.

No answer on screen before the learner tries: ``explain`` says what the search found (the
chosen model is the most accurate one, not the exercise's answer); which trained models beat
the baseline in half its memory is only in ``why_half_memory``, the exercise's solution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memlab.labs.checks import Check, Exercise, check_choice, todo
from memlab.nas import (
    VERIFY_TOLERANCE,
    Architecture,
    Candidate,
    SearchResult,
    SearchSpace,
    Verification,
    search_architectures,
)
from memlab.timeline import format_bytes

__all__ = [
    "Architecture",
    "Candidate",
    "Check",
    "Exercise",
    "SearchResult",
    "SearchSpace",
    "Verification",
    "search_architectures",
    "explain",
    "explain_samplers",
    "claims",
    "live_pareto",
    "baseline_of",
    "half_memory_winners",
    "check_half_memory",
    "why_half_memory",
    "exercise_half_memory",
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
        f"chosen within {VERIFY_TOLERANCE:.0%}": v is not None and v.within_tolerance,
    }


def explain(result: SearchResult) -> str:
    """Markdown: what the search found, every number from ``result``."""
    n, t, x = len(result.candidates), len(result.trained), len(result.infeasible)
    distinct = len({c.architecture for c in result.candidates})
    lines = [
        f"The {result.sampler} search proposed {n} candidates ({distinct} distinct "
        f"architectures) for a budget of {format_bytes(result.budget_bytes)}: {x} were "
        f"predicted over it and never trained; {t} were trained for {result.train_steps} "
        f"steps. {len(result.pareto)} {'lies' if len(result.pareto) == 1 else 'lie'} on the "
        "Pareto front (accuracy up, predicted peak "
        "down, latency measured here down)."
    ]
    disturbed = [c for c in result.trained if c.latency_steady is False]
    if disturbed:
        lines.append(
            f"{len(disturbed)} of {t} latencies were measured while other processes used the "
            f"CPU, so they are slower than on a quiet machine (e.g. `{disturbed[0].architecture}`: "
            f"{disturbed[0].latency_note}); the hover text marks them."
        )
    c, v = result.chosen, result.verification
    if c is not None and c.accuracy is not None:
        lines.append(
            f"The chosen model (the most accurate trained one), `{c.architecture}`, reached "
            f"accuracy {c.accuracy:.3f} with a predicted peak of "
            f"{format_bytes(c.predicted_peak_bytes)} "
            f"({c.predicted_peak_bytes / result.budget_bytes:.0%} of the budget)."
        )
    elif c is None:
        lines.append("No candidate fitted the budget: nothing was trained or chosen.")
    if v is not None:
        if v.measured_peak_bytes is not None and v.relative_error is not None:
            verdict = (
                f"within the {VERIFY_TOLERANCE:.0%} tolerance"
                if v.within_tolerance
                else f"outside the {VERIFY_TOLERANCE:.0%} tolerance"
            )
            lines.append(
                f"Its real run, tensors held to the budget, peaked at "
                f"{format_bytes(v.measured_peak_bytes)} ({v.relative_error:+.1%} against the "
                f"prediction: {verdict})."
            )
        else:
            lines.append(f"Its real run ended `{v.status}`: no measured peak to compare.")
    return "\n\n".join(lines)


def _best_so_far(result: SearchResult) -> tuple[float | None, int | None]:
    """The best accuracy of ``result``'s trained candidates and the trial (1-based) that
    first reached it."""
    best: float | None = None
    at: int | None = None
    for c in result.candidates:
        if c.trained and c.accuracy is not None and (best is None or c.accuracy > best):
            best, at = c.accuracy, c.number + 1
    return best, at


def explain_samplers(results: Mapping[str, SearchResult]) -> str:
    """Markdown: the searches side by side (e.g. random against NSGA-II with the same trials):
    the best accuracy each found within the budget and at which trial, how many proposals
    were over the budget, how many distinct architectures each tried. Every number from
    ``results``; the verdict says which found the more accurate model, or a tie."""
    if not results:
        raise ValueError("results must name at least one search, got none")
    rows = [
        "| search | trials | distinct | over budget | trained | best accuracy | first at trial |",
        "|---|---|---|---|---|---|---|",
    ]
    bests: dict[str, float] = {}
    for label, r in results.items():
        best, at = _best_so_far(r)
        if best is not None:
            bests[label] = best
        rows.append(
            f"| {label} | {len(r.candidates)} | {len({c.architecture for c in r.candidates})} "
            f"| {len(r.infeasible)} | {len(r.trained)} "
            f"| {'-' if best is None else f'{best:.3f}'} | {'-' if at is None else at} |"
        )
    text = "\n".join(rows)
    if len(bests) >= 2:
        top = max(bests.values())
        winners = [k for k, b in bests.items() if b == top]
        if len(winners) == len(bests):
            text += f"\n\nAll found the same best accuracy, {top:.3f}."
        elif len(winners) == 1:
            rest = max(b for k, b in bests.items() if k != winners[0])
            text += (
                f"\n\n{winners[0]} found the more accurate model ({top:.3f} against "
                f"{rest:.3f}). With this few trials and a short training, one seed's "
                "difference is noise as much as strategy: run other seeds before concluding."
            )
        else:
            text += f"\n\n{' and '.join(winners)} tie at {top:.3f}."
    return text


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


# -- the exercise: beat the baseline's accuracy in half its memory ----------------------------


def baseline_of(result: SearchResult) -> Candidate:
    """The exercise's baseline: the trained candidate with the largest predicted peak (the
    earliest trial on a tie)."""
    trained = [c for c in result.trained if c.accuracy is not None]
    if not trained:
        raise ValueError("this search trained no candidate: there is no baseline")
    return max(trained, key=lambda c: (c.predicted_peak_bytes, -c.number))


def half_memory_winners(result: SearchResult, baseline: Candidate) -> list[str]:
    """The trained architectures at least as accurate as ``baseline`` with at most half its
    predicted peak (sorted)."""
    if baseline.accuracy is None:
        raise ValueError(f"the baseline {baseline.architecture!r} was not trained")
    return sorted(
        {
            c.architecture
            for c in result.trained
            if c.accuracy is not None
            and c.accuracy >= baseline.accuracy
            and 2 * c.predicted_peak_bytes <= baseline.predicted_peak_bytes
        }
    )


def check_half_memory(answer: Any, baseline: Candidate, result: SearchResult) -> Check:
    """Right when ``answer`` (e.g. ``"cnn_d2_w16_k5"``) is a trained architecture at least as
    accurate as ``baseline`` in at most half its predicted peak, or ``"none"`` when no trained
    one is. An architecture that was not trained is a mistake of form (the options listed)."""
    what = "a trained architecture's name, or 'none'"
    if answer is None:
        return todo(what)
    good = half_memory_winners(result, baseline)
    options = [*sorted({c.architecture for c in result.trained}), "none"]
    for g in good or ["none"]:
        c = check_choice(answer, g, options=options, what=what)
        if c.ok or c.form_error:
            return c
    return check_choice(answer, (good or ["none"])[0], options=options, what=what)


def why_half_memory(result: SearchResult, baseline: Candidate) -> str:
    """The exercise's solution (Markdown): every trained architecture's accuracy and predicted
    peak against the baseline's, and which ones qualify."""
    assert baseline.accuracy is not None
    good = half_memory_winners(result, baseline)
    seen: dict[str, Candidate] = {}
    for c in result.trained:
        seen.setdefault(c.architecture, c)
    rows = [
        f"The baseline `{baseline.architecture}` reached {baseline.accuracy:.3f} with a "
        f"predicted peak of {format_bytes(baseline.predicted_peak_bytes)}: an answer needs "
        f"accuracy ≥ {baseline.accuracy:.3f} and a peak ≤ "
        f"{format_bytes(baseline.predicted_peak_bytes // 2)}.",
        "",
        "| architecture | accuracy | predicted peak | of the baseline's | qualifies |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(seen.values(), key=lambda c: c.predicted_peak_bytes):
        assert c.accuracy is not None
        rows.append(
            f"| `{c.architecture}` | {c.accuracy:.3f} | {format_bytes(c.predicted_peak_bytes)} "
            f"| {c.predicted_peak_bytes / baseline.predicted_peak_bytes:.0%} "
            f"| {'yes' if c.architecture in good else 'no'} |"
        )
    if good:
        rows += ["", f"Right answers: {', '.join(f'`{g}`' for g in good)}."]
    else:
        rows += [
            "",
            "None qualifies: every model in half the memory was less accurate here, so the "
            "answer is `none`. Memory bought accuracy in this search (with more training "
            "steps, the smaller models may catch up).",
        ]
    return "\n".join(rows)


def exercise_half_memory(
    result: SearchResult, baseline: Candidate | None = None, id: str = "1"
) -> Exercise:
    """Name a trained architecture at least as accurate as ``baseline`` (default:
    ``baseline_of(result)``) in at most half its predicted peak, or ``'none'``."""
    base = baseline_of(result) if baseline is None else baseline
    return Exercise(
        id,
        f"Name a trained architecture at least as accurate as `{base.architecture}` in at most "
        "half its predicted peak, or 'none'.",
        lambda ans: check_half_memory(ans, base, result),
        hints=[
            "Hover over the points of the Pareto chart: left of half the baseline's peak, "
            "at or above its accuracy.",
            "A point on the Pareto front is the most accurate for its memory: look at the "
            "front's stars first.",
        ],
        solution=lambda: why_half_memory(result, base),
    )
