"""Pure drawing of a sweep (``memlab.sweep``): ``SweepResult`` in, ``go.Figure`` out.

- ``sweep_figure(result, x, y)``: ``y`` (peak, step time, throughput or RSS peak) against the
  grid field ``x``, one line per combination of the other grid fields, one point per run.
  Runs loaded from the run store (``cached``) are drawn hollow, measured ones filled; a run
  that ran out of its budget (``oom``) is an ``x`` (its peak is where it stopped); a run that
  failed (``error``) measured nothing and is left out (the title counts it).

Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

if TYPE_CHECKING:
    from memlab.sweeping import SweepResult

__all__ = ["Y_AXES", "sweep_figure"]

MIB = 2**20

#: What a sweep figure can draw on its y axis: the row's field, the axis title, the scale.
Y_AXES: dict[str, tuple[str, float]] = {
    "peak_bytes": ("peak tensor memory (MiB)", 1 / MIB),
    "rss_peak_bytes": ("RSS peak (MiB)", 1 / MIB),
    "step_time_s": ("median step time (ms)", 1e3),
    "throughput": ("throughput (samples/s)", 1.0),
}

_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#9D755D")


def sweep_figure(result: SweepResult, x: str | None = None, y: str = "peak_bytes") -> go.Figure:
    """``y`` against the grid field ``x`` (default: the grid's first field). Raises
    ``ValueError`` naming the allowed values for an ``x`` that is not a grid field or a
    ``y`` not in :data:`Y_AXES`."""
    fields = result.fields
    if not fields:
        raise ValueError("the sweep has no grid field to draw along (its grid was empty)")
    x = fields[0] if x is None else x
    if x not in fields:
        raise ValueError(f"x must be one of the grid's fields {fields}, got {x!r}")
    if y not in Y_AXES:
        raise ValueError(f"y must be one of {tuple(Y_AXES)}, got {y!r}")
    title, scale = Y_AXES[y]
    others = [f for f in fields if f != x]
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in result.rows:
        groups.setdefault(tuple(row.config[f] for f in others), []).append(row)
    fig = go.Figure()
    failed = 0
    for n, (key, rows) in enumerate(groups.items()):
        color = _COLORS[n % len(_COLORS)]
        name = ", ".join(f"{f}={v}" for f, v in zip(others, key, strict=True)) or y
        pts = []
        for row in rows:
            v = getattr(row, y)
            if row.status == "error" or v is None:
                failed += row.status == "error"
                continue
            shape = "x" if row.status == "oom" else "circle"
            pts.append((row.config[x], v * scale, shape + ("-open" if row.cached else ""), row))
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[str(p[0]) for p in pts],
                y=[p[1] for p in pts],
                mode="lines+markers",
                name=name,
                line={"color": color},
                marker={"symbol": [p[2] for p in pts], "size": 10, "color": color},
                customdata=[
                    [p[3].run_id or "", p[3].status, "cached" if p[3].cached else "measured"]
                    for p in pts
                ],
                hovertemplate=f"{x}=%{{x}}<br>{title}: %{{y:.3g}}<br>run %{{customdata[0]}}"
                " (%{customdata[1]}, %{customdata[2]})<extra>%{fullData.name}</extra>",
            )
        )
    # Legend entries for the marker meanings (no data).
    for symbol, label in (("circle", "measured now"), ("circle-open", "cached (from the store)")):
        if any((row.cached == symbol.endswith("open")) for row in result.rows):
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=label,
                    marker={"symbol": symbol, "size": 10, "color": "#555"},
                    hoverinfo="skip",
                )
            )
    text = f"{title} by {x}"
    if result.n_cached:
        text += f" ({result.n_cached} of {len(result)} runs cached)"
    if failed:
        text += f"; {failed} failed run(s) not drawn"
    fig.update_layout(
        title={"text": text},
        xaxis={"title": {"text": x}, "type": "category"},
        yaxis={"title": {"text": title}, "rangemode": "tozero"},
        legend={"orientation": "h", "x": 0.0, "y": -0.2, "yanchor": "top"},
        template="plotly_white",
    )
    return fig
