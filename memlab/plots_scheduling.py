"""Pure drawing of scheduling and contention results: data in, ``go.Figure`` out.

- ``schedule_figure(result)``: a ``ScheduleResult`` as a Gantt chart (one row per task, a bar
  from its start to its end colored by status, its arrival and its deadline marked) above the
  combined tensor memory of every worker over time with the budget line; the two share the
  time axis (seconds from the schedule's start).
- ``policy_figure(results)``: ``{policy: ScheduleResult}`` side by side: deadline misses,
  p99 latency, exact combined peak (the budget as a line) and ``oom`` count.
- ``contention_figure(result)``: a ``ContentionResult``'s runs alone and together: per-run
  step time, and throughput alone (one after the other) vs together.

Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.config import MIB
from memlab.scheduling import ScheduleResult

if TYPE_CHECKING:
    from memlab.contending import ContentionResult

__all__ = ["STATUS_COLORS", "schedule_figure", "policy_figure", "contention_figure"]

STATUS_COLORS = {
    "done": "#54A24B",
    "missed": "#F58518",
    "oom": "#E45756",
    "error": "#B279A2",
    "cancelled": "#B0B0B0",
    "running": "#4C78A8",  # a live view's task under way (memlab/ui/schedule.py)
}
_MEMORY, _BUDGET = "#4C78A8", "#E45756"
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "yanchor": "top",
    "y": -0.12,
    "xanchor": "left",
    "x": 0,
}


def schedule_figure(result: ScheduleResult, *, title: str | None = None) -> go.Figure:
    """The Gantt chart of ``result``'s tasks above its combined memory (see module doc). Tasks
    that never started have no bar (their arrival and deadline are still marked)."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.6, 0.4],
        vertical_spacing=0.06,
    )
    names = [t.name for t in result.tasks]
    for status, color in STATUS_COLORS.items():
        ts = [t for t in result.tasks if t.status == status and t.start_s is not None]
        if not ts:
            continue
        fig.add_trace(
            go.Bar(
                name=status,
                orientation="h",
                y=[t.name for t in ts],
                base=[t.start_s for t in ts],
                x=[
                    (t.end_s if t.end_s is not None else (t.start_s or 0.0)) - (t.start_s or 0.0)
                    for t in ts
                ],
                marker_color=color,
                customdata=[[t.predicted_peak_bytes / MIB, t.priority, t.order] for t in ts],
                hovertemplate="%{y}: %{base:.2f} s + %{x:.2f} s<br>predicted %{customdata[0]:.1f}"
                " MiB, priority %{customdata[1]}, started #%{customdata[2]}<extra>"
                + status
                + "</extra>",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            name="arrival",
            mode="markers",
            x=[t.arrival_s for t in result.tasks],
            y=names,
            marker={"symbol": "triangle-right", "size": 9, "color": "#333333"},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            name="deadline",
            mode="markers",
            x=[t.due_s for t in result.tasks],
            y=names,
            marker={"symbol": "line-ns-open", "size": 16, "line": {"width": 3}, "color": "#000"},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            name="combined memory (exact)",
            x=list(result.timeline_s),
            y=[b / MIB for b in result.timeline_bytes],
            mode="lines",
            line={"shape": "hv", "color": _MEMORY},
            fill="tozeroy",
        ),
        row=2,
        col=1,
    )
    end = max([result.makespan_s or 0.0, *result.timeline_s[-1:], *(t.due_s for t in result.tasks)])
    fig.add_trace(
        go.Scatter(
            name="budget",
            x=[0.0, end],
            y=[result.budget_bytes / MIB] * 2,
            mode="lines",
            line={"dash": "dash", "color": _BUDGET},
        ),
        row=2,
        col=1,
    )
    fig.update_layout(
        barmode="overlay",
        title=title
        or (
            f"{result.policy}: {result.deadline_misses}/{len(result.tasks)} deadline misses, "
            f"{result.oom_count} oom, peak {result.peak_bytes / MIB:.1f} of "
            f"{result.budget_bytes / MIB:.0f} MiB ({result.enforcement})"
        ),
        legend=_LEGEND_BELOW,
        margin={"l": 60, "r": 20, "t": 50, "b": 60},
    )
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=names, row=1)
    fig.update_yaxes(title_text="MiB", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="seconds from the start", row=2, col=1)
    return fig


def policy_figure(results: Mapping[str, ScheduleResult]) -> go.Figure:
    """Each policy's deadline misses, p99 latency (s), exact combined peak (MiB, with the
    budget) and ``oom`` count, side by side (see module doc)."""
    pols = list(results)
    rs = list(results.values())
    fig = make_subplots(
        rows=1,
        cols=4,
        subplot_titles=("deadline misses", "p99 latency (s)", "combined peak (MiB)", "oom"),
    )
    series = [
        [r.deadline_misses for r in rs],
        [r.p99_latency_s for r in rs],
        [r.peak_bytes / MIB for r in rs],
        [r.oom_count for r in rs],
    ]
    for k, ys in enumerate(series):
        fig.add_trace(
            go.Bar(x=pols, y=ys, marker_color=_MEMORY, showlegend=False, name=""), row=1, col=k + 1
        )
    if rs:
        fig.add_trace(
            go.Scatter(
                x=pols,
                y=[rs[0].budget_bytes / MIB] * len(pols),
                mode="lines",
                name="budget",
                line={"dash": "dash", "color": _BUDGET},
            ),
            row=1,
            col=3,
        )
    fig.update_layout(
        title="policies on the same tasks and budget", legend=_LEGEND_BELOW, bargap=0.3
    )
    return fig


def contention_figure(result: ContentionResult) -> go.Figure:
    """Per run, its median step (or request) time alone and together (ms); beside it the
    throughput of both runs one after the other vs at once (samples/s)."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("step time (ms)", "throughput of both (samples/s)")
    )
    labels = [r.label for r in result.runs]
    fig.add_trace(
        go.Bar(
            name="alone",
            x=labels,
            y=[None if r.alone_step_s is None else r.alone_step_s * 1e3 for r in result.runs],
            marker_color="#4C78A8",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            name="together",
            x=labels,
            y=[None if r.together_step_s is None else r.together_step_s * 1e3 for r in result.runs],
            marker_color="#F58518",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=["one after the other", "at once"],
            y=[result.throughput_alone, result.throughput_together],
            marker_color=["#4C78A8", "#F58518"],
            showlegend=False,
            name="throughput",
        ),
        row=1,
        col=2,
    )
    ratio = result.throughput_ratio
    fig.update_layout(
        barmode="group",
        title="two runs at once vs one after the other"
        + ("" if ratio is None else f": throughput x{ratio:.2f}"),
        legend=_LEGEND_BELOW,
    )
    return fig
