"""Pure drawing of partitioning and zero-copy results: data in, ``go.Figure`` out.

- ``gantt_figure(result)``: a ``PartitionResult``'s stages (y) over the pipeline's time (x, ms):
  per micro-batch a bar for the compute (labelled with the micro-batch's index) and a thin one
  for the copy into the next stage's ring; the gaps are the bubble.
- ``memory_figure(result)``: per process (the one-process anchor, then each stage), the tracked
  tensor peak split by category, and beside it the ring bytes it maps (shared memory, outside
  the allocator); the RSS high-water mark as a marker, the runtime's RSS (Python and torch) as
  another.
- ``zero_copy_figure(result)``: a ``ZeroCopyResult``'s paths (y) by allocator bytes, RSS
  anonymous and RSS file-backed deltas (MiB), shared-memory paths marked.

Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from memlab.config import MIB
from memlab.partitioning import PartitionResult, StageResult
from memlab.timeline import CATEGORIES
from memlab.zerocopy import ZeroCopyResult

__all__ = ["gantt_figure", "memory_figure", "zero_copy_figure"]

_COMPUTE, _COPY, _SHM = "#4C78A8", "#F58518", "#B0B0B0"
_CAT_COLORS = {
    "parameters": "#4C78A8",
    "gradients": "#F58518",
    "optimizer_state": "#E45756",
    "activations": "#72B7B2",
    "inputs": "#54A24B",
    "temporaries": "#EECA3B",
    "other": "#B279A2",
}
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "x": 0.0,
    "xanchor": "left",
    "y": -0.15,
    "yanchor": "top",
    "font": {"size": 10},
}


def _stage_label(s: StageResult) -> str:
    return f"stage {s.index} (blocks {s.lo}-{s.hi - 1})"


def gantt_figure(result: PartitionResult) -> go.Figure:
    """Stages x micro-batches over time; the bubble is the white space."""
    fig = go.Figure()
    labels = [_stage_label(s) for s in result.stage_results]
    for s, label in zip(result.stage_results, labels, strict=True):
        fig.add_trace(
            go.Bar(
                y=[label] * len(s.times),
                x=[1e3 * (t.compute_end_s - t.input_s) for t in s.times],
                base=[1e3 * t.input_s for t in s.times],
                orientation="h",
                text=[str(t.index) for t in s.times],
                textposition="inside",
                marker={"color": _COMPUTE},
                name="compute",
                legendgroup="compute",
                showlegend=s.index == 0,
                hovertemplate="micro-batch %{text}: %{x:.1f} ms from %{base:.1f} ms<extra></extra>",
            )
        )
        copies = [t for t in s.times if t.sent_s > t.slot_s]
        if copies:
            fig.add_trace(
                go.Bar(
                    y=[label] * len(copies),
                    x=[1e3 * (t.sent_s - t.slot_s) for t in copies],
                    base=[1e3 * t.slot_s for t in copies],
                    orientation="h",
                    width=0.25,
                    marker={"color": _COPY},
                    name="copy into the next ring",
                    legendgroup="copy",
                    showlegend=not any(
                        q.sent_s > q.slot_s
                        for p in result.stage_results[: s.index]
                        for q in p.times
                    ),
                    hovertemplate="copy: %{x:.2f} ms<extra></extra>",
                )
            )
    bubble = result.bubble
    title = f"{result.workload}: {result.stages} stages x {result.micro_batches} micro-batches"
    if bubble is not None:
        title += (
            f"; bubble {100 * bubble:.0f}% measured, "
            f"{100 * result.predicted_bubble:.0f}% predicted (equal stages)"
        )
    if result.status != "ok":
        title += f" ({result.status})"
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        barmode="overlay",
        xaxis_title="time since go (ms)",
        yaxis={"autorange": "reversed", "categoryorder": "array", "categoryarray": labels},
        legend=_LEGEND_BELOW,
        margin={"l": 10, "r": 10, "t": 50, "b": 80},
        height=max(260, 90 + 60 * len(labels)),
    )
    return fig


def memory_figure(result: PartitionResult) -> go.Figure:
    """Per process: tracked peak by category (stacked), ring bytes, RSS high-water mark."""
    procs: list[tuple[str, StageResult]] = []
    if result.anchor is not None:
        procs.append(("one process", result.anchor))
    procs += [(_stage_label(s), s) for s in result.stage_results]
    names = [n for n, _ in procs]
    fig = go.Figure()
    for cat in CATEGORIES:
        vals = [s.peak_by_category.get(cat, 0) / MIB for _, s in procs]
        if any(vals):
            fig.add_trace(go.Bar(x=names, y=vals, name=cat, marker={"color": _CAT_COLORS[cat]}))
    fig.add_trace(
        go.Bar(
            x=names,
            y=[s.shm_bytes / MIB for _, s in procs],
            name="ring slots (shared memory, not tracked)",
            marker={"color": _SHM, "pattern": {"shape": "/"}},
        )
    )
    for key, label, symbol in (
        ("rss_hwm_bytes", "RSS high-water mark", "diamond"),
        ("rss_runtime_bytes", "RSS of the runtime (Python + torch)", "line-ew-open"),
    ):
        ys = [getattr(s, key) for _, s in procs]
        if any(v is not None for v in ys):
            fig.add_trace(
                go.Scatter(
                    x=names,
                    y=[None if v is None else v / MIB for v in ys],
                    mode="markers",
                    name=label,
                    yaxis="y2",
                    marker={"symbol": symbol, "size": 12, "color": "#333333"},
                )
            )
    summed = result.summed_peak_bytes
    title = "tracked tensor peak per process (MiB)"
    if summed is not None and result.anchor is not None:
        title += (
            f": stages sum to {summed / MIB:.1f} MiB vs {result.anchor.peak_bytes / MIB:.1f} MiB "
            "in one process"
        )
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        barmode="stack",
        yaxis_title="tensor MiB",
        yaxis2={"title": "RSS MiB", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        legend=_LEGEND_BELOW,
        margin={"l": 10, "r": 10, "t": 50, "b": 110},
        height=420,
    )
    return fig


def zero_copy_figure(result: ZeroCopyResult) -> go.Figure:
    """Allocator bytes and RSS deltas per path, in MiB; shared paths marked in their label."""

    def mark(shares: bool | None) -> str:
        return "" if shares is None else " (shares)" if shares else " (copy)"

    labels = [r.path + mark(r.shares_memory) for r in result.rows]
    fig = go.Figure()
    for key, name, color in (
        ("allocator_bytes", "PyTorch allocator", "#4C78A8"),
        ("rss_anon_delta_bytes", "RSS anonymous", "#E45756"),
        ("rss_file_delta_bytes", "RSS file-backed", "#54A24B"),
    ):
        vals = [getattr(r, key) for r in result.rows]
        fig.add_trace(
            go.Bar(
                y=labels,
                x=[None if v is None else v / MIB for v in vals],
                name=name,
                orientation="h",
                marker={"color": color},
            )
        )
    fig.update_layout(
        title={
            "text": f"what each path allocates, for a {result.size_bytes / MIB:g} MiB tensor",
            "font": {"size": 13},
        },
        barmode="group",
        xaxis_title="MiB (RSS: before the call to after every page was read)",
        yaxis={"autorange": "reversed"},
        legend=_LEGEND_BELOW,
        margin={"l": 10, "r": 10, "t": 50, "b": 90},
        height=120 + 45 * len(labels),
    )
    return fig
