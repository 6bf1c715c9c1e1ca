"""Pure drawing of a cache comparison: ``CacheResult`` in, ``go.Figure`` out.

- ``policy_figure(result)``: per policy, the hit rate (left) and the latency p50/p99 with the
  mean miss cost (right, ms). A policy whose timing was disturbed by other processes is marked
  so in its label.
- ``bytes_figure(result)``: the bytes each policy's cache held after each request (a line per
  policy), with the capacity as a dashed line.

Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.caching import CacheResult, PolicyRun

__all__ = ["POLICY_COLORS", "policy_label", "policy_figure", "bytes_figure"]

MIB = 2**20

#: One colour per policy, the same in every figure.
POLICY_COLORS: dict[str, str] = {
    "none": "#9D9D9D",
    "lru": "#4C78A8",
    "lfu": "#F58518",
    "unbounded": "#54A24B",
}

# Legends below the plot, horizontal (as memlab.plots: beside it they were cut off).
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "x": 0.0,
    "xanchor": "left",
    "y": -0.15,
    "yanchor": "top",
    "font": {"size": 10},
}


def policy_label(run: PolicyRun) -> str:
    """The policy's name, with ``, disturbed`` when its timing was not steady."""
    label = run.policy
    if run.timing is not None and not run.timing.steady:
        label += ", disturbed"
    return label


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def policy_figure(result: CacheResult) -> go.Figure:
    """Hit rate and latency (p50, p99, mean miss cost) per policy, bars."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("hit rate of the item cache", "latency per request (ms)"),
        horizontal_spacing=0.12,
    )
    labels = [policy_label(r) for r in result.runs]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=[_nan_to_none(r.hit_rate) for r in result.runs],
            name="hit rate",
            marker={"color": [POLICY_COLORS.get(r.policy, "#B279A2") for r in result.runs]},
            customdata=[[r.hits, r.misses] for r in result.runs],
            hovertemplate=(
                "%{x}: %{y:.1%} (%{customdata[0]} hits, %{customdata[1]} misses)<extra></extra>"
            ),
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    if result.memoize:
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[_nan_to_none(r.memo_hit_rate) for r in result.runs],
                name="memo hit rate (of all requests)",
                marker={"color": "#B279A2"},
                hovertemplate="%{x}: memo %{y:.1%}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    series: list[tuple[str, str, list[float]]] = [
        ("p50", "#72B7B2", [r.p50_ms for r in result.runs]),
        ("p99", "#9D755D", [r.p99_ms for r in result.runs]),
        ("mean miss cost (load)", "#E45756", [r.mean_miss_cost_ms for r in result.runs]),
    ]
    for name, color, values in series:
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[_nan_to_none(v) for v in values],
                name=name,
                marker={"color": color},
                hovertemplate=f"%{{x}}: {name} %{{y:.3f}} ms<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title={"text": "ms"}, row=1, col=2)
    disturbed = [r.policy for r in result.runs if r.timing is not None and not r.timing.steady]
    sub = f"{len(result.trace)} requests, capacity {result.capacity_bytes / MIB:.2f} MiB; " + (
        "disturbed by other processes: " + ", ".join(disturbed)
        if disturbed
        else "every policy's timing was steady"
    )
    fig.update_layout(
        title={
            "text": f"Cache policies on {result.name} ({result.items})",
            "subtitle": {"text": sub},
        },
        barmode="group",
        autosize=True,
        legend=_LEGEND_BELOW,
    )
    return fig


def bytes_figure(result: CacheResult) -> go.Figure:
    """Bytes held by each policy's cache after each request (MiB), and the capacity."""
    fig = go.Figure()
    for r in result.runs:
        fig.add_trace(
            go.Scatter(
                x=list(range(r.requests)),
                y=[b / MIB for b in r.bytes_held],
                mode="lines",
                name=r.policy,
                line={"color": POLICY_COLORS.get(r.policy, "#B279A2"), "shape": "hv"},
                customdata=[[o] for o in r.outcome],
                hovertemplate=(
                    f"{r.policy}, request %{{x}} (%{{customdata[0]}}): %{{y:.2f}} MiB"
                    "<extra></extra>"
                ),
            )
        )
    n = len(result.trace)
    fig.add_trace(
        go.Scatter(
            x=[0, max(n - 1, 1)],
            y=[result.capacity_bytes / MIB] * 2,
            mode="lines",
            name="capacity (lru, lfu)",
            line={"color": "#000000", "dash": "dash", "width": 1},
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title={
            "text": f"Bytes held by the cache ({result.name}, {result.items})",
            "subtitle": {
                "text": "tensor bytes of the cached items after each request; "
                f"all {len(set(result.trace))} items: {result.distinct_bytes / MIB:.2f} MiB"
            },
        },
        xaxis={"title": {"text": "request"}},
        yaxis={"title": {"text": "MiB held"}, "rangemode": "tozero"},
        autosize=True,
        legend=_LEGEND_BELOW,
    )
    return fig
