"""Figures of an architecture search (``memlab.nas``): pure functions, data -> ``go.Figure``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from memlab.timeline import format_bytes

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from memlab.nas import Candidate, SearchResult

__all__ = ["pareto_figure", "progress_figure"]

_MIB = 2**20


def _latency_text(c: Candidate) -> str:
    if c.latency_s is None:
        return "latency not measured"
    tail = " (disturbed: other processes used the CPU)" if c.latency_steady is False else ""
    return f"latency {c.latency_s * 1e3:.2f} ms measured here{tail}"


def pareto_figure(result: SearchResult) -> go.Figure:
    """Accuracy against predicted peak (MiB) of every trained candidate, coloured by its
    latency (ms, measured here); the Pareto front joined and starred; the candidates over the
    budget (never trained) as crosses on the x axis; the budget as a vertical line; the chosen
    model circled."""
    import plotly.graph_objects as go

    trained = sorted(result.trained, key=lambda c: c.predicted_peak_bytes)
    front = [c for c in trained if c.number in result.pareto]
    over = result.infeasible
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            name="trained (fits)",
            x=[c.predicted_peak_bytes / _MIB for c in trained],
            y=[c.accuracy for c in trained],
            mode="markers",
            text=[c.architecture for c in trained],
            customdata=[_latency_text(c) for c in trained],
            marker=dict(
                size=10,
                color=[(c.latency_s or 0.0) * 1e3 for c in trained],
                colorscale="Viridis",
                showscale=bool(trained),
                colorbar=dict(title="latency (ms)"),
            ),
            hovertemplate="%{text}<br>%{x:.2f} MiB predicted<br>accuracy %{y:.3f}"
            "<br>%{customdata}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            name="Pareto front",
            x=[c.predicted_peak_bytes / _MIB for c in front],
            y=[c.accuracy for c in front],
            mode="lines+markers",
            text=[c.architecture for c in front],
            line=dict(color="#d62728", dash="dot"),
            marker=dict(symbol="star", size=14, color="#d62728"),
        )
    )
    fig.add_trace(
        go.Scatter(
            name="over budget (not trained)",
            x=[c.predicted_peak_bytes / _MIB for c in over],
            y=[0.0 for _ in over],
            mode="markers",
            text=[c.architecture for c in over],
            marker=dict(symbol="x", size=9, color="#7f7f7f"),
        )
    )
    chosen = result.chosen
    fig.add_trace(
        go.Scatter(
            name="chosen",
            x=[] if chosen is None else [chosen.predicted_peak_bytes / _MIB],
            y=[] if chosen is None else [chosen.accuracy],
            mode="markers",
            marker=dict(symbol="circle-open", size=22, color="black", line=dict(width=2)),
        )
    )
    budget = result.budget_bytes / _MIB
    fig.add_vline(
        x=budget,
        line=dict(color="#d62728"),
        annotation_text=f"budget {format_bytes(result.budget_bytes)}",
    )
    fig.update_layout(
        title=f"{result.sampler}: {len(result.candidates)} trials, {len(trained)} trained",
        xaxis_title="predicted peak (MiB)",
        yaxis_title="accuracy on the real digits",
        yaxis_range=[-0.05, 1.05],
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def progress_figure(results: Mapping[str, SearchResult]) -> go.Figure:
    """The best accuracy found so far within the budget, trial by trial, one line per search
    (e.g. random against NSGA-II)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, r in results.items():
        best, xs, ys = 0.0, [], []
        for c in r.candidates:
            if c.trained and c.accuracy is not None:
                best = max(best, c.accuracy)
            xs.append(c.number + 1)
            ys.append(best)
        fig.add_trace(go.Scatter(name=label, x=xs, y=ys, mode="lines+markers"))
    fig.update_layout(
        title="best accuracy within the budget so far",
        xaxis_title="trial",
        yaxis_title="accuracy",
        yaxis_range=[-0.05, 1.05],
    )
    return fig
