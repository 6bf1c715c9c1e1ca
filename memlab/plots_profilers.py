"""Pure drawing of a profiler comparison: ``ProfilerComparison`` in, ``go.Figure`` out.

- ``timeline_figure(cmp)``: each tool's memory timeline on one time axis (seconds since the
  first step under that tool began), against the truth (the c10 allocator's count). Two rows:
  the tensor tools (memlab, torch.profiler) with the truth, and the RSS tool (memory_profiler)
  with the truth again, so the gap between process and tensors is visible on its own scale.
- ``cost_figure(cmp)``: per tool, the error of its peak against the truth (%) and its step
  time over the anchor's (no tool).

A tool without a timeline or a peak gets no trace. Nothing here measures, imports torch or
prints.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.config import MIB
from memlab.profilers import ProfilerComparison

__all__ = ["TOOL_COLORS", "TRUTH_NAME", "timeline_figure", "cost_figure"]

#: One colour per tool, the same in every figure.
TOOL_COLORS: dict[str, str] = {
    "memory_profiler": "#E45756",
    "mprun": "#F58518",
    "torch.profiler": "#4C78A8",
    "memlab": "#54A24B",
    "none": "#9D755D",
}
TRUTH_NAME = "truth (c10 allocator)"
_TRUTH_COLOR = "#333333"
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "x": 0.0,
    "xanchor": "left",
    "y": -0.18,
    "yanchor": "top",
    "font": {"size": 10},
}


def _mib(values: tuple[int, ...]) -> list[float]:
    return [v / MIB for v in values]


def timeline_figure(cmp: ProfilerComparison) -> go.Figure:
    """Tensor tools and the RSS tool against the truth, MiB over seconds."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=False,
        vertical_spacing=0.14,
        subplot_titles=(
            "tensor tools vs the allocator's truth",
            "memory_profiler (process RSS) vs the allocator's truth",
        ),
    )
    for row in (1, 2):
        fig.add_trace(
            go.Scatter(
                x=list(cmp.truth_t_s),
                y=_mib(cmp.truth_memory_bytes),
                name=TRUTH_NAME,
                mode="lines",
                line={"color": _TRUTH_COLOR, "width": 3, "shape": "hv"},
                legendgroup="truth",
                showlegend=row == 1,
            ),
            row=row,
            col=1,
        )
    for tool, row in (("memlab", 1), ("torch.profiler", 1), ("memory_profiler", 2)):
        r = next((t for t in cmp.tools if t.tool == tool), None)
        if r is None or not r.t_s:
            continue
        fig.add_trace(
            go.Scatter(
                x=list(r.t_s),
                y=_mib(r.memory_bytes),
                name=tool,
                mode="lines",
                line={"color": TOOL_COLORS[tool], "width": 1.5, "shape": "hv", "dash": "dot"}
                if tool == "torch.profiler"
                else {"color": TOOL_COLORS[tool], "width": 1.5, "shape": "hv"},
            ),
            row=row,
            col=1,
        )
    for row in (1, 2):
        fig.update_xaxes(title_text="s since the tool's first step", row=row, col=1)
        fig.update_yaxes(title_text="MiB", row=row, col=1)
    fig.update_layout(
        title=f"{cmp.workload}, batch {cmp.batch_size}: what each tool saw over {cmp.steps} steps",
        height=620,
        legend=_LEGEND_BELOW,
        margin={"b": 90},
    )
    return fig


def cost_figure(cmp: ProfilerComparison) -> go.Figure:
    """Per tool: the peak's error vs the truth (%) and the step time over the anchor's."""
    tools = [t.tool for t in cmp.tools if t.tool != "none"]
    err = [(t, cmp.error_pct(t)) for t in tools]
    err = [(t, e) for t, e in err if e is not None]
    ov = [(t, cmp.overhead(t)) for t in tools]
    ov = [(t, o) for t, o in ov if o is not None]
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.16,
        subplot_titles=("peak error vs the truth (%)", "step time / no tool's (x)"),
    )
    fig.add_trace(
        go.Bar(
            x=[t for t, _ in err],
            y=[e for _, e in err],
            marker_color=[TOOL_COLORS.get(t, "#999999") for t, _ in err],
            text=[f"{e:+.1f}%" for _, e in err],
            textposition="outside",
            name="error %",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=[t for t, _ in ov],
            y=[o for _, o in ov],
            marker_color=[TOOL_COLORS.get(t, "#999999") for t, _ in ov],
            text=[f"{o:.2f}x" for _, o in ov],
            textposition="outside",
            name="overhead",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    fig.add_hline(y=1.0, line_dash="dash", line_color="#777777", row=1, col=2)  # type: ignore[arg-type]
    anchor = cmp.anchor_step_s
    steady = "" if cmp.timing_steady is not False else " (machine busy: timings not steady)"
    fig.update_yaxes(title_text="%", row=1, col=1)
    fig.update_yaxes(title_text="x the step alone", row=1, col=2)
    fig.update_layout(
        title="error and cost of each tool"
        + ("" if anchor is None else f"; a step alone: {anchor * 1e3:.1f} ms{steady}"),
        height=420,
    )
    return fig
