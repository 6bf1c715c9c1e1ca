"""Pure drawing of a ``memlab.compare`` result: data in, ``go.Figure`` out.

- ``compare_figure(comparison)``: the two runs' timelines overlaid: on top the total tensor
  bytes of each (run ``a`` solid, run ``b`` dashed, each peak marked), below each category of
  each (one colour per category, :data:`memlab.plots.CATEGORY_COLORS`; ``a`` solid, ``b``
  dashed). The x axis is the step (each run's time mapped onto its own step boundaries, so a
  slower run's steps line up with a faster one's) where both runs marked their steps, else
  seconds since the measured block began.

Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.comparing import Comparison
from memlab.config import MIB
from memlab.plots import CATEGORY_COLORS, MIB_FORMAT, downsample_indices
from memlab.timeline import CATEGORIES, Timeline

__all__ = ["compare_figure", "step_axis"]

_XS = ("auto", "time", "step")
_DASH = {0: "solid", 1: "dash"}
_RUN_COLORS = ("#333333", "#E45756")
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "x": 0.0,
    "xanchor": "left",
    "y": -0.12,
    "yanchor": "top",
    "font": {"size": 10},
}


def step_axis(tl: Timeline) -> np.ndarray | None:
    """Each event's position in steps: 0 at the block's start, ``k`` at the mark ``step k``
    (the end of step k), linear in time in between. None without step marks."""
    knots_t, knots_k = [0.0], [0.0]
    for t, label in tl.marks:
        parts = label.split()
        if len(parts) == 2 and parts[0] == "step" and parts[1].isdigit() and t > knots_t[-1]:
            knots_t.append(float(t))
            knots_k.append(float(parts[1]))
    if len(knots_t) < 2:
        return None
    return np.interp(tl.t, knots_t, knots_k)


def compare_figure(c: Comparison, *, x: str = "auto", max_points: int = 4000) -> go.Figure:
    """Run ``b`` over run ``a``: total tensor bytes (top) and bytes by category (bottom), MiB.

    ``x``: ``step`` (each run's time mapped onto its step marks), ``time`` (seconds), or
    ``auto`` (step where both runs have step marks). Each line is thinned to ``max_points``
    events by ``memlab.plots.downsample_indices``, which keeps its peak exactly. Categories
    empty in both runs are left out."""
    if x not in _XS:
        raise ValueError(f"x must be one of {_XS}, got {x!r}")
    if not isinstance(max_points, int) or max_points < 4:
        raise ValueError(f"max_points must be an int >= 4, got {max_points!r}")
    runs = (c.a, c.b)
    labels = c.labels
    steps = [step_axis(r.timeline) for r in runs]
    use_steps = x == "step" or (x == "auto" and all(s is not None for s in steps))
    xs: list[np.ndarray] = []
    for r, s in zip(runs, steps, strict=True):
        if use_steps and s is None:
            raise ValueError(
                "x='step' needs step marks in both timelines; use x='time' for a run without"
            )
        xs.append(s if use_steps and s is not None else r.timeline.t)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("total tensor memory", "by category"),
    )
    for i, (r, xv, name) in enumerate(zip(runs, xs, labels, strict=True)):
        tl = r.timeline
        total = tl.total
        if len(total) == 0:
            continue
        idx = downsample_indices(tl.t, total, max_points)
        fig.add_trace(
            go.Scatter(
                x=xv[idx],
                y=total[idx] / MIB,
                name=f"{name} total",
                mode="lines",
                legendgroup=f"total-{i}",
                line={"color": _RUN_COLORS[i], "dash": _DASH[i], "width": 2},
                hovertemplate=f"{name}: %{{y:.2f}} MiB<extra></extra>",
            ),
            row=1,
            col=1,
        )
        peak = int(np.argmax(total))
        fig.add_trace(
            go.Scatter(
                x=[xv[peak]],
                y=[total[peak] / MIB],
                name=f"{name} peak",
                mode="markers",
                legendgroup=f"total-{i}",
                showlegend=False,
                marker={"color": _RUN_COLORS[i], "size": 9, "symbol": "triangle-down"},
                hovertemplate=f"{name} peak: %{{y:.2f}} MiB<extra></extra>",
            ),
            row=1,
            col=1,
        )
    for cat in CATEGORIES:
        if not any(len(r.timeline) and r.timeline.by_category[cat].any() for r in runs):
            continue
        for i, (r, xv, name) in enumerate(zip(runs, xs, labels, strict=True)):
            tl = r.timeline
            if len(tl) == 0:
                continue
            v = tl.by_category[cat]
            idx = downsample_indices(tl.t, v, max_points)
            fig.add_trace(
                go.Scatter(
                    x=xv[idx],
                    y=v[idx] / MIB,
                    name=f"{cat} ({name})",
                    mode="lines",
                    legendgroup=cat,
                    line={"color": CATEGORY_COLORS[cat], "dash": _DASH[i], "width": 1.5},
                    hovertemplate=f"{cat} {name}: %{{y:.2f}} MiB<extra></extra>",
                ),
                row=2,
                col=1,
            )
    empty = [(n, r.status) for r, n in zip(runs, labels, strict=True) if len(r.timeline) == 0]
    p = c.get("total", "peak tensors")
    title = (
        f"{labels[1]} vs {labels[0]}: peak {p.text(p.a)} -> {p.text(p.b)} "
        f"({p.text(p.delta, signed=True)})"
    )
    sub = f"{labels[0]} solid, {labels[1]} dashed"
    if empty:
        sub += "; no timeline for " + ", ".join(f"{n} (status {st})" for n, st in empty)
    fig.update_layout(
        title={"text": title, "subtitle": {"text": sub}},
        hovermode="x unified",
        autosize=True,
        width=None,
        height=560,
        legend=_LEGEND_BELOW,
    )
    fig.update_yaxes(title_text="MiB", tickformat=MIB_FORMAT)
    fig.update_xaxes(
        title_text="step (each run's own step boundaries)" if use_steps else "time (s)",
        row=2,
        col=1,
    )
    return fig
