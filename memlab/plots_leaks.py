"""Pure drawing of the per-step "still alive" report and the leak examples: data in, figure out.

- ``alive_figure(report)``: the tensor bytes still alive at each step's end, stacked by
  category (any ``memlab.track`` block with ``rec.step()`` calls has this report).
- ``leak_pair_figure(leaky, fixed)``: the same for a leak and its fix, side by side on one
  y axis, each titled with its growth per step.
- ``growth_figure(results)``: growth per step (bytes/step) of every example, leaky and fixed.

Bytes are drawn in KiB or MiB, whichever keeps the numbers readable (the axis says which). A
report with no steps draws an empty figure with a note, never zeros. Nothing here measures,
imports torch or prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.leaks import LeakResult
from memlab.plots import CATEGORY_COLORS, _fit, _note, _step_ticks
from memlab.timeline import CATEGORIES, AliveReport, format_bytes

__all__ = ["alive_figure", "leak_pair_figure", "growth_figure", "VARIANT_COLORS"]

#: Leaky vs fixed, the same in every figure.
VARIANT_COLORS: dict[str, str] = {"leaky": "#E45756", "fixed": "#54A24B"}


def _unit(max_bytes: float) -> tuple[str, float]:
    return ("MiB", 1024.0**2) if max_bytes >= 1024**2 else ("KiB", 1024.0)


def _report(r: AliveReport | LeakResult) -> AliveReport:
    return r.alive if isinstance(r, LeakResult) else r


def _growth_text(report: AliveReport) -> str:
    g = report.growth_per_step_bytes
    return "growth n/a (fewer than 2 steps)" if g is None else f"growth {format_bytes(g)}/step"


def _category_bars(
    fig: go.Figure, report: AliveReport, scale: float, unit: str, **where: Any
) -> None:
    x = list(range(1, len(report) + 1))
    labels = [s.label for s in report.steps]
    for c in CATEGORIES:
        y = report.by_category(c)
        if not y.any():
            continue
        fig.add_trace(
            go.Bar(
                x=x,
                y=y / scale,
                name=c,
                legendgroup=c,
                showlegend=not any(t.legendgroup == c for t in fig.data),  # once per category
                marker_color=CATEGORY_COLORS[c],
                customdata=labels,
                hovertemplate=f"%{{customdata}}<br>{c}: %{{y:,.1f}} {unit}<extra></extra>",
            ),
            **where,
        )


def alive_figure(report: AliveReport | LeakResult, *, title: str | None = None) -> go.Figure:
    """Tensor bytes alive at each step's end, stacked by category, titled with the growth."""
    rep = _report(report)
    fig = go.Figure()
    head = title or (report.label if isinstance(report, LeakResult) else "Alive at each step")
    if not len(rep):
        fig.update_layout(title=head, annotations=[_note("no step was marked (rec.step())")])
        return _fit(fig)
    unit, scale = _unit(float(rep.totals.max()))
    _category_bars(fig, rep, scale, unit)
    fig.update_layout(
        barmode="stack",
        title=f"{head}: {_growth_text(rep)}",
        xaxis={"title": "step (end of)", **_step_ticks(len(rep))},
        yaxis={"title": f"alive tensor bytes ({unit})"},
    )
    return _fit(fig)


def leak_pair_figure(
    leaky: AliveReport | LeakResult, fixed: AliveReport | LeakResult, *, title: str | None = None
) -> go.Figure:
    """A leak and its fix side by side, on one y axis so their heights compare."""
    reps = [_report(leaky), _report(fixed)]
    heads = [
        f"{name}: {_growth_text(r)}" if len(r) else f"{name}: no steps"
        for name, r in zip(("leaky", "fixed"), reps, strict=True)
    ]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=heads)
    top = max((float(r.totals.max()) for r in reps if len(r)), default=0.0)
    unit, scale = _unit(top)
    for col, r in enumerate(reps, start=1):
        _category_bars(fig, r, scale, unit, row=1, col=col)
        fig.update_xaxes(title_text="step (end of)", row=1, col=col, **_step_ticks(len(r)))
    fig.update_yaxes(title_text=f"alive tensor bytes ({unit})", row=1, col=1)
    if title is None and isinstance(leaky, LeakResult):
        title = f"{leaky.example}: alive at each step's end"
    fig.update_layout(barmode="stack", title=title)
    return _fit(fig)


def growth_figure(results: Sequence[LeakResult], *, title: str | None = None) -> go.Figure:
    """Growth per step (least squares after the first step) of each example, leaky vs fixed."""
    fig = go.Figure()
    if not results:
        fig.update_layout(title=title, annotations=[_note("no results")])
        return _fit(fig)
    vals = [abs(r.growth_per_step_bytes or 0.0) for r in results]
    unit, scale = _unit(max(vals))
    for variant in ("leaky", "fixed"):
        rs = [r for r in results if r.fixed == (variant == "fixed")]
        if not rs:
            continue
        ys = [r.growth_per_step_bytes for r in rs]
        fig.add_trace(
            go.Bar(
                x=[r.example for r in rs],
                y=[None if g is None else g / scale for g in ys],
                name=variant,
                marker_color=VARIANT_COLORS[variant],
                text=["n/a" if g is None else format_bytes(g) for g in ys],
                textposition="outside",
                hovertemplate=f"%{{x}} ({variant}): %{{y:,.2f}} {unit}/step<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title=title or "Growth of the alive bytes per step",
        xaxis={"title": "example"},
        yaxis={"title": f"growth ({unit}/step)", "rangemode": "tozero"},
    )
    return _fit(fig)
