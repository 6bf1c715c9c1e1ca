"""Pure drawing of an allocator comparison: ``AllocatorComparison`` in, ``go.Figure`` out.

- ``fragmentation_figure(cmp)``: per configuration, the anonymous memory no tensor uses (above
  the baseline) after each request, over the requests of the stream; grey bars underneath are
  each request's own tensor peak, so a step in a line can be read against the request that
  caused it.
- ``summary_figure(cmp)``: per configuration, peak anonymous RSS and anonymous RSS - live
  tensor bytes at the end (MiB), and p50/p99 request latency (ms).
- ``comparison_figure(cmp)``: both in one figure.

A configuration that did not run (unavailable, failed) gets no trace; the subtitle names it and
why (never drawn as zero). Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.allocators import AllocatorComparison, AllocatorRun
from memlab.config import MIB

__all__ = [
    "ALLOCATOR_COLORS",
    "fragmentation_figure",
    "summary_figure",
    "comparison_figure",
]

#: One colour per configuration of ``memlab.allocators.CONFIGS``, the same in every figure.
ALLOCATOR_COLORS: dict[str, str] = {
    "glibc": "#E45756",
    "glibc-arena2": "#F58518",
    "glibc-mmap": "#B279A2",
    "jemalloc": "#4C78A8",
    "mimalloc": "#54A24B",
}
_OTHER_COLORS = ("#9D755D", "#EECA3B", "#72B7B2", "#333333")
_PEAK_BAR = "#D0D0D0"
MIB_FORMAT = ",.4~r"  # as memlab.plots: 4 significant digits, trailing zeros dropped

# Legends below the plot, horizontal (memlab.plots._LEGEND_BELOW: beside it they were cut off).
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "x": 0.0,
    "xanchor": "left",
    "y": -0.15,
    "yanchor": "top",
    "font": {"size": 10},
}


def _color(name: str, i: int) -> str:
    return ALLOCATOR_COLORS.get(name) or _OTHER_COLORS[i % len(_OTHER_COLORS)]


def _not_run(cmp: AllocatorComparison) -> str:
    """The subtitle's list of configurations that have no trace, and why (short)."""
    parts = []
    for r in cmp.runs:
        if not r.ok:
            why = (r.reason or "").split(";")[-1].strip() if r.status == "unavailable" else "failed"
            parts.append(f"{r.config}: {r.status} ({why})" if why else f"{r.config}: {r.status}")
    return "not measured: " + "; ".join(parts) if parts else ""


def _shape(r: AllocatorRun, i: int) -> str:
    q = r.requests[i]
    return f"batch {q.batch}" + ("" if q.seq is None else f" x {q.seq} tokens")


def _fragmentation_traces(cmp: AllocatorComparison) -> list[go.BaseTraceType]:
    ok = [r for r in cmp.runs if r.ok and r.anon]
    traces: list[go.BaseTraceType] = []
    if ok:
        ref = ok[0]  # every run has the same stream; tensor bytes do not depend on malloc
        x = list(range(1, len(ref.requests) + 1))
        traces.append(
            go.Bar(
                x=x,
                y=[(p - ref.live_base) / MIB for p in ref.live_peak],
                name="tensor peak of the request",
                marker={"color": _PEAK_BAR},
                hovertext=[_shape(ref, i) for i in range(len(x))],
                hovertemplate=(
                    "request %{x} (%{hovertext}): %{y:.1f} MiB of tensors at its peak"
                    "<extra></extra>"
                ),
            )
        )
    for i, r in enumerate(cmp.runs):
        if not (r.ok and r.anon):
            continue
        traces.append(
            go.Scatter(
                x=list(range(1, len(r.requests) + 1)),
                y=[f / MIB for f in r.fragmentation],
                name=r.config,
                mode="lines",
                line={"color": _color(r.config, i), "width": 2},
                customdata=[[t, lat * 1e3] for t, lat in zip(r.t_s, r.latency_s, strict=True)],
                hovertemplate=(
                    f"{r.config}: %{{y:.1f}} MiB kept after request %{{x}}"
                    "<br>at %{customdata[0]:.2f} s, request took %{customdata[1]:.1f} ms"
                    "<extra></extra>"
                ),
            )
        )
    return traces


def fragmentation_figure(cmp: AllocatorComparison) -> go.Figure:
    """Anonymous RSS - live tensor bytes - baseline after each request, per configuration."""
    fig = go.Figure(_fragmentation_traces(cmp))
    fig.update_layout(
        title={
            "text": f"Memory no tensor uses, after each request ({cmp.workload})",
            "subtitle": {"text": _not_run(cmp)},
        },
        xaxis={"title": {"text": "request"}, "tickformat": "d"},
        yaxis={"title": {"text": "anon RSS - live tensors - baseline (MiB)"}},
        yaxis_tickformat=MIB_FORMAT,
        barmode="overlay",
        autosize=True,
        legend=_LEGEND_BELOW,
    )
    if not any(r.ok for r in cmp.runs):
        fig.add_annotation(
            text="no configuration ran", xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False
        )
    return fig


def _summary_traces(cmp: AllocatorComparison) -> tuple[list[go.Bar], list[go.Bar]]:
    rows = [r for r in cmp.table() if r["status"] == "ok"]
    names = [r["config"] for r in rows]
    mem = [
        go.Bar(
            x=names,
            y=[r["peak_anon"] / MIB for r in rows],
            name="peak anon RSS",
            marker={"color": "#4C78A8"},
            hovertemplate="%{x}: peak anonymous RSS %{y:.1f} MiB<extra></extra>",
        ),
        go.Bar(
            x=names,
            y=[r["final_rss_minus_live"] / MIB for r in rows],
            name="anon RSS - live tensors, at the end",
            marker={"color": "#E45756"},
            hovertemplate="%{x}: %{y:.1f} MiB not tensors at the end<extra></extra>",
        ),
    ]
    lat = [
        go.Bar(
            x=names,
            y=[r[key] * 1e3 for r in rows],
            name=f"{label} latency",
            marker={"color": color},
            hovertemplate=f"%{{x}}: {label} %{{y:.1f}} ms<extra></extra>",
        )
        for key, label, color in (("p50_s", "p50", "#72B7B2"), ("p99_s", "p99", "#9D755D"))
    ]
    return mem, lat


def summary_figure(cmp: AllocatorComparison) -> go.Figure:
    """Peak anonymous RSS and what is not tensors at the end (MiB); p50/p99 latency (ms)."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("memory (MiB)", "request latency (ms)"),
        horizontal_spacing=0.12,
    )
    mem, lat = _summary_traces(cmp)
    for t in mem:
        fig.add_trace(t, row=1, col=1)
    for t in lat:
        fig.add_trace(t, row=1, col=2)
    fig.update_layout(
        title={"text": "Allocators: memory and latency", "subtitle": {"text": _not_run(cmp)}},
        barmode="group",
        autosize=True,
        legend=_LEGEND_BELOW,
    )
    fig.update_yaxes(tickformat=MIB_FORMAT, row=1, col=1)
    return fig


def comparison_figure(cmp: AllocatorComparison) -> go.Figure:
    """The fragmentation over the stream on top, the summary bars below."""
    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}]],
        row_heights=[0.6, 0.4],
        vertical_spacing=0.14,
        horizontal_spacing=0.12,
        subplot_titles=(
            "memory no tensor uses after each request (MiB, above the baseline)",
            "memory (MiB)",
            "request latency (ms)",
        ),
    )
    for t in _fragmentation_traces(cmp):
        fig.add_trace(t, row=1, col=1)
    mem, lat = _summary_traces(cmp)
    for t in mem:
        fig.add_trace(t, row=2, col=1)
    for t in lat:
        fig.add_trace(t, row=2, col=2)
    fig.update_layout(
        title={
            "text": f"CPU allocators on {len(cmp.stream)} {cmp.workload} requests",
            "subtitle": {"text": _not_run(cmp)},
        },
        barmode="group",
        autosize=True,
        height=700,
        legend=_LEGEND_BELOW,
    )
    fig.update_xaxes(title={"text": "request"}, tickformat="d", row=1, col=1)
    fig.update_yaxes(tickformat=MIB_FORMAT, row=1, col=1)
    fig.update_yaxes(tickformat=MIB_FORMAT, row=2, col=1)
    return fig
