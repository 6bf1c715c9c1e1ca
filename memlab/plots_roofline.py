"""Pure drawing of a roofline and of the locality examples: data in, ``go.Figure`` out.

- ``roofline_figure(result)``: log-log, arithmetic intensity (FLOP/byte) against attained
  GFLOP/s; the two roofs (DRAM bandwidth x intensity, the peak compute rate) meeting at the
  ridge point; each op a point sized by its measured time, coloured by memory- or
  compute-bound, hover with its name, module, bytes and FLOPs. Ops with no counted FLOPs have
  no place on a log axis: the subtitle counts them and their share of the time (never drawn as
  zero).
- ``stride_figure(result)``: useful GB/s of a strided sum and gather against the stride, with
  the cache lines touched per useful byte on a second axis.
- ``conv_layout_figure(result)``: time per convolution, NCHW vs channels_last, per shape.

Nothing here measures, imports torch or prints.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memlab.locality import ConvLayoutResult, StrideResult
from memlab.plots import _fit
from memlab.rooflines import RooflineResult
from memlab.timeline import format_bytes

__all__ = ["roofline_figure", "stride_figure", "conv_layout_figure", "BOUND_COLORS"]

BOUND_COLORS = {"memory": "#1f77b4", "compute": "#d62728"}


def _sizes(times: list[float], largest_px: float = 40.0, smallest_px: float = 6.0) -> list[float]:
    """Marker diameters with area proportional to time; the slowest op gets ``largest_px``."""
    top = max(times, default=0.0)
    if top <= 0:
        return [smallest_px for _ in times]
    return [max(smallest_px, largest_px * (t / top) ** 0.5) for t in times]


def roofline_figure(result: RooflineResult) -> go.Figure:
    """The roofline of one request (see the module docstring)."""
    r = result
    drawn = [o for o in r.ops if o.flops > 0 and o.bytes_moved > 0 and o.time_s > 0]
    left_out = [o for o in r.ops if o not in drawn and o.bytes_moved > 0]
    ridge = r.ridge_flop_per_byte
    intensities = [o.flops / o.bytes_moved for o in drawn]
    lo = min([*intensities, ridge / 10]) / 2
    hi = max([*intensities, ridge * 10]) * 2
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[lo, ridge, hi],
            y=[r.dram_gb_per_s * lo, r.peak_gflop_per_s, r.peak_gflop_per_s],
            mode="lines",
            name="roofline (measured here)",
            line={"color": "#333333"},
            hovertext=[
                f"memory roof: {r.dram_gb_per_s:.1f} GB/s x intensity",
                f"ridge point: {ridge:.2f} FLOP/byte",
                f"compute roof: {r.peak_gflop_per_s:.1f} GFLOP/s ({r.matmul_n}^2 fp32 matmul)",
            ],
            hovertemplate="%{hovertext}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[ridge],
            y=[r.peak_gflop_per_s],
            mode="markers",
            name=f"ridge {ridge:.2f} FLOP/B",
            marker={"symbol": "diamond", "size": 10, "color": "#333333"},
            hoverinfo="skip",
        )
    )
    for bound, color in BOUND_COLORS.items():
        ops = [o for o in drawn if r.bound(o) == bound]
        if not ops:
            continue
        fig.add_trace(
            go.Scatter(
                x=[o.flops / o.bytes_moved for o in ops],
                y=[o.flops / o.time_s / 1e9 for o in ops],
                mode="markers",
                name=f"{bound}-bound ops",
                marker={
                    "size": _sizes([o.time_s for o in ops]) if ops else [],
                    "color": color,
                    "opacity": 0.7,
                    "line": {"width": 1, "color": "#ffffff"},
                },
                hovertext=[
                    f"#{o.index} {o.op} in {o.module or '(model)'}<br>"
                    f"{o.flops / 1e6:.2f} MFLOP, {format_bytes(o.bytes_moved)} moved, "
                    f"{o.flops / o.bytes_moved:.2f} FLOP/B<br>"
                    f"{o.time_s * 1e3:.3f} ms, {o.flops / o.time_s / 1e9:.2f} GFLOP/s"
                    for o in ops
                ],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    share = sum(o.time_s for o in left_out) / r.op_time_s if r.op_time_s > 0 else 0.0
    sub = (
        f"{len(left_out)} ops with no counted FLOPs not drawn ({share:.0%} of the op time)"
        if left_out
        else "every op that moves bytes is drawn"
    )
    fig.update_layout(
        title={
            "text": f"Roofline of one {r.experiment.get('workload', '')} request "
            f"(measured here)<br><sup>{sub}; point area = measured time</sup>"
        },
        xaxis={"title": {"text": "arithmetic intensity (FLOP / byte moved)"}, "type": "log"},
        yaxis={"title": {"text": "attained GFLOP/s"}, "type": "log"},
    )
    return _fit(fig)


def stride_figure(result: StrideResult) -> go.Figure:
    """Useful GB/s against the stride (log x), and bytes touched per useful byte (right)."""
    strides = [p.stride for p in result.points]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, attr, dash in (("sum", "sum_gb_per_s", "solid"), ("gather", "copy_gb_per_s", "dot")):
        values = [getattr(p, attr) for p in result.points]
        fig.add_trace(
            go.Scatter(
                x=strides,
                y=values,
                name=f"{name}: useful GB/s",
                mode="lines+markers",
                line={"dash": dash},
                hovertext=[
                    f"stride {k}: {v:.2f} GB/s useful" for k, v in zip(strides, values, strict=True)
                ],
                hovertemplate="%{hovertext}<extra></extra>",
            ),
            secondary_y=False,
        )
    fig.add_trace(
        go.Bar(
            x=strides,
            y=[p.bytes_per_useful_byte for p in result.points],
            name=f"bytes touched per useful byte ({result.line_bytes} B lines)",
            opacity=0.3,
            marker={"color": "#888888"},
        ),
        secondary_y=True,
    )
    fig.update_layout(
        title={"text": "Strided vs contiguous reads (measured here, same element count)"},
        xaxis={"title": {"text": "stride (elements of 8 bytes)"}, "type": "log"},
    )
    fig.update_yaxes(title_text="useful GB/s", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="bytes touched / useful byte", rangemode="tozero", secondary_y=True)
    return _fit(fig)


def conv_layout_figure(result: ConvLayoutResult) -> go.Figure:
    """Time per convolution forward in each memory format, per shape (measured here)."""
    names = [p.name for p in result.points]
    fig = go.Figure()
    for fmt, attr in (("NCHW", "nchw_s"), ("channels_last", "channels_last_s")):
        ms = [getattr(p, attr) * 1e3 for p in result.points]
        hover: list[Any] = [
            f"{p.name} {p.input_shape} -> {p.out_channels} ch, {fmt}: {v:.3f} ms"
            for p, v in zip(result.points, ms, strict=True)
        ]
        fig.add_trace(
            go.Bar(
                x=names,
                y=ms,
                name=fmt,
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title={"text": f"Convolution forward, NCHW vs channels_last ({result.threads} threads)"},
        yaxis={"title": {"text": "ms per forward (best of repeats)"}, "rangemode": "tozero"},
    )
    return _fit(fig)
