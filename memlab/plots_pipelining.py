"""Pure drawing of a pipelining comparison: ``PipelineResult`` in, ``go.Figure`` out.

- ``gantt_figure(result)``: one panel per mode; per request (y), a bar for stage 1
  (preprocessing) and one for stage 2 (the model's forward) over the pass's time (x, ms), and a
  thin grey bar for the time the preprocessed batch waited in the queue. Sequential bars
  alternate; pipelined ones overlap, request i+1's preprocessing under request i's forward.
- ``comparison_figure(result)``: per mode, throughput (requests/s) and latency p50/p99 (ms).
  A mode whose timing was disturbed by other processes is marked so in its label.

Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.pipelining import ModeRun, PipelineResult

__all__ = ["STAGE_COLORS", "gantt_figure", "comparison_figure", "mode_label"]

#: One colour per stage, the same in every figure.
STAGE_COLORS: dict[str, str] = {
    "preprocess": "#F58518",
    "infer": "#4C78A8",
    "queued": "#D0D0D0",
}

# Legends below the plot, horizontal (as memlab.plots: beside it they were cut off).
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "x": 0.0,
    "xanchor": "left",
    "y": -0.12,
    "yanchor": "top",
    "font": {"size": 10},
}


def mode_label(run: ModeRun) -> str:
    """``name (N threads[, depth D])``, with ``, disturbed`` when the timing was not steady."""
    m = run.mode
    label = f"{m.name} ({m.threads} thread{'s' if m.threads != 1 else ''}"
    if m.kind == "pipelined":
        label += f", depth {m.depth}"
    label += ")"
    if run.timing is not None and not run.timing.steady:
        label += ", disturbed"
    return label


def _stage_bar(run: ModeRun, stage: str, show_legend: bool) -> go.Bar:
    reqs = run.requests
    if stage == "preprocess":
        base = [1e3 * r.pre_start_s for r in reqs]
        width = [1e3 * (r.pre_end_s - r.pre_start_s) for r in reqs]
        offset, thickness = -0.4, 0.38
    elif stage == "infer":
        base = [1e3 * r.infer_start_s for r in reqs]
        width = [1e3 * (r.infer_end_s - r.infer_start_s) for r in reqs]
        offset, thickness = 0.02, 0.38
    else:
        base = [1e3 * r.pre_end_s for r in reqs]
        width = [1e3 * max(0.0, r.queued_s) for r in reqs]
        offset, thickness = -0.05, 0.1
    return go.Bar(
        y=[r.index for r in reqs],
        x=width,
        base=base,
        orientation="h",
        offset=offset,
        width=thickness,
        name={"preprocess": "stage 1: preprocess", "infer": "stage 2: model forward"}.get(
            stage, "waiting in the queue"
        ),
        legendgroup=stage,
        showlegend=show_legend,
        marker={"color": STAGE_COLORS[stage]},
        customdata=[[1e3 * r.latency_s] for r in reqs],
        hovertemplate=(
            f"request %{{y}}: {stage} from %{{base:.1f}} ms for %{{x:.1f}} ms"
            "<br>latency %{customdata[0]:.1f} ms<extra></extra>"
        ),
    )


def gantt_figure(result: PipelineResult) -> go.Figure:
    """Per mode, each request's preprocessing and forward over time (a Gantt chart)."""
    n = len(result.runs)
    fig = make_subplots(
        rows=n,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=[mode_label(r) for r in result.runs],
    )
    for row, run in enumerate(result.runs, start=1):
        for stage in ("queued", "preprocess", "infer"):
            fig.add_trace(_stage_bar(run, stage, show_legend=row == 1), row=row, col=1)
        fig.update_yaxes(
            title={"text": "request"}, autorange="reversed", tickformat="d", row=row, col=1
        )
    fig.update_xaxes(title={"text": "time from the pass's start (ms)"}, row=n, col=1)
    arrivals = "back-to-back" if result.rate_hz is None else f"{result.rate_hz:g} requests/s"
    fig.update_layout(
        title={
            "text": f"Stage 1 and stage 2 per request ({result.workload}, batch "
            f"{result.batch_size}, raw scale {result.raw_scale})",
            "subtitle": {"text": f"arrivals: {arrivals}; measured on {result.cpus} CPUs"},
        },
        barmode="overlay",
        autosize=True,
        height=max(320, 260 * n),
        legend=_LEGEND_BELOW,
    )
    return fig


def comparison_figure(result: PipelineResult) -> go.Figure:
    """Throughput (requests/s) and latency p50/p99 (ms) per mode, thread settings in labels."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("throughput (requests/s)", "latency, arrival to result (ms)"),
        horizontal_spacing=0.12,
    )
    labels = [mode_label(r) for r in result.runs]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=[r.throughput_rps for r in result.runs],
            name="throughput",
            marker={"color": "#54A24B"},
            hovertemplate="%{x}: %{y:.1f} requests/s<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for q, color in ((50, "#72B7B2"), (99, "#9D755D")):
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[r.latency_ms(q) for r in result.runs],
                name=f"p{q} latency",
                marker={"color": color},
                hovertemplate=f"%{{x}}: p{q} %{{y:.1f}} ms<extra></extra>",
            ),
            row=1,
            col=2,
        )
    disturbed = [r.mode.name for r in result.runs if r.timing is not None and not r.timing.steady]
    sub = (
        "disturbed by other processes (timings slower than on a quiet machine): "
        + ", ".join(disturbed)
        if disturbed
        else "every mode's timing was steady"
    )
    fig.update_layout(
        title={"text": f"Sequential vs pipelined ({result.workload})", "subtitle": {"text": sub}},
        barmode="group",
        autosize=True,
        legend=_LEGEND_BELOW,
    )
    return fig
