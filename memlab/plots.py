"""Pure drawing: results (memlab.timeline data) in, ``plotly.graph_objects.Figure`` out.

Nothing here measures, runs or prints; nothing here imports torch or ipywidgets. The live panels
in ``memlab.ui`` build a figure here once and then call the ``update_*`` functions, which set the
arrays of the existing traces in place inside ``fig.batch_update()`` (one redraw per update).

Units: bytes are drawn in MiB (2**20 bytes), the unit :func:`memlab.timeline.format_bytes` uses.
A number that was not measured is left out and said to be missing, never drawn as zero.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from memlab.config import MIB
from memlab.timeline import CATEGORIES, PHASES, RunResult, Timeline, format_bytes

__all__ = [
    "CATEGORY_COLORS",
    "PHASE_COLORS",
    "downsample_indices",
    "memory_throughput_figure",
    "module_activations_figure",
    "peak_bars_figure",
    "phase_bands",
    "prediction_figure",
    "process_memory_figure",
    "timeline_figure",
    "update_process",
    "update_timeline",
]

#: One colour per category, the same in every figure (and in the labs' prose, if it names them).
CATEGORY_COLORS: dict[str, str] = {
    "parameters": "#4C78A8",
    "gradients": "#F58518",
    "optimizer_state": "#B279A2",
    "activations": "#54A24B",
    "inputs": "#EECA3B",
    "temporaries": "#9D755D",
    "other": "#BAB0AC",
}

#: Background colours of the phase bands; ``other`` (time no phase claims) gets no band.
PHASE_COLORS: dict[str, str] = {
    "data": "#EECA3B",
    "forward": "#54A24B",
    "backward": "#E45756",
    "optimizer": "#B279A2",
    "inference": "#72B7B2",
}

_PHASE_OPACITY = 0.12
# Hundreds of shapes are cheap; thousands make every redraw slow. Past these counts the bands
# or step lines are left out and a note says so (rather than thinning them silently).
_MAX_BANDS = 600
_MAX_STEP_LINES = 600
_EMPTY = np.zeros(0)

# Process-memory parts drawn by process_memory_figure: (part, legend name, stacked?, dash).
# anon + file + shmem is the RSS on Linux (proc(5): VmRSS = RssAnon + RssFile + RssShmem), so
# the three parts stack and the total is a line over them.
_PROCESS_TRACES: tuple[tuple[str, str, bool, str], ...] = (
    ("rss_anon", "anonymous", True, "solid"),
    ("rss_file", "file-backed", True, "solid"),
    ("rss_shmem", "shared memory", True, "solid"),
    ("rss", "total RSS", False, "solid"),
    ("rss_hwm", "RSS high-water mark", False, "dot"),
)
_PROCESS_COLORS = {
    "rss_anon": "#4C78A8",
    "rss_file": "#72B7B2",
    "rss_shmem": "#EECA3B",
    "rss": "#333333",
    "rss_hwm": "#E45756",
}


def _mib(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) / MIB


def _signed_bytes(n: int) -> str:
    return ("+" if n > 0 else "") + format_bytes(n)


@contextlib.contextmanager
def _batch(fig: Any) -> Iterator[None]:
    """``fig.batch_update()`` where the figure has it (go.Figure and FigureWidget do)."""
    batch = getattr(fig, "batch_update", None)
    with batch() if callable(batch) else contextlib.nullcontext():
        yield


def _note(text: str, *, y: float = 0.5) -> dict[str, Any]:
    return {
        "text": text,
        "xref": "paper",
        "yref": "paper",
        "x": 0.5,
        "y": y,
        "showarrow": False,
        "name": "note",
        "font": {"color": "#666666"},
    }


# -- downsampling ---------------------------------------------------------------------------


def downsample_indices(t: Any, values: Any, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` events that keep the shape and the exact peak.

    The time span is cut into equal buckets (about one per pixel column); each non-empty bucket
    keeps the event where ``values`` is highest and the one where it is lowest (min/max
    decimation, so the peak and the dips between steps both survive), plus the first and the
    last event. The global maximum is the maximum of its bucket, so it is always kept, exactly.
    ``t`` must be non-decreasing (a timeline's is). Returns sorted int64 indices.
    """
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    v = np.asarray(values).reshape(-1)
    n = len(v)
    if len(t) != n:
        raise ValueError(f"t has {len(t)} points, values has {n}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    peak = int(np.argmax(v))
    if max_points < 4:
        # Too few for buckets: the peak first, then the ends while there is room.
        keep = [peak] + [i for i in (n - 1, 0) if i != peak]
        return np.sort(np.asarray(keep[:max_points], dtype=np.int64))
    n_buckets = (max_points - 2) // 2
    span = t[-1] - t[0]
    if span > 0:
        bucket = np.minimum(((t - t[0]) / span * n_buckets).astype(np.int64), n_buckets - 1)
    else:  # all events at one instant: buckets by position instead
        bucket = np.arange(n, dtype=np.int64) * n_buckets // n
    # lexsort is stable: within a bucket, ties keep the earliest event.
    by_max = np.lexsort((-v, bucket))
    by_min = np.lexsort((v, bucket))
    _, first_max = np.unique(bucket[by_max], return_index=True)
    _, first_min = np.unique(bucket[by_min], return_index=True)
    keep_idx = np.concatenate(([0, n - 1, peak], by_max[first_max], by_min[first_min]))
    return np.unique(keep_idx.astype(np.int64))


# -- timeline -------------------------------------------------------------------------------


def phase_bands(t: Any, phase: Any) -> list[tuple[float, float, str]]:
    """Contiguous runs of one phase as ``(t_start, t_end, phase_name)``.

    A band starts at its first event and ends where the next phase's first event is (the last
    band ends at the last event), so bands tile the timeline without gaps. Computed from the
    full-resolution phase array, never from a downsampled one.
    """
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    ph = np.asarray(phase).reshape(-1)
    if len(ph) == 0:
        return []
    change = np.flatnonzero(ph[1:] != ph[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(ph) - 1]))
    return [
        (float(t[s]), float(t[e]), PHASES[int(ph[s])]) for s, e in zip(starts, ends, strict=True)
    ]


def _timeline_decorations(
    t: np.ndarray, phase: np.ndarray | None, marks: Sequence[tuple[float, str]], total: np.ndarray
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shapes (phase bands, step lines) and annotations (phase labels, peak, notes)."""
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    if len(t) == 0:
        annotations.append(_note("no memory events recorded yet"))
        return shapes, annotations
    if phase is not None:
        bands = [b for b in phase_bands(t, phase) if b[2] in PHASE_COLORS]
        if len(bands) > _MAX_BANDS:
            annotations.append(_note(f"{len(bands)} phase bands not drawn (too many)", y=1.08))
        else:
            labelled: set[str] = set()
            for x0, x1, name in bands:
                shapes.append(
                    {
                        "type": "rect",
                        "xref": "x",
                        "yref": "paper",
                        "x0": x0,
                        "x1": x1,
                        "y0": 0,
                        "y1": 1,
                        "fillcolor": PHASE_COLORS[name],
                        "opacity": _PHASE_OPACITY,
                        "layer": "below",
                        "line": {"width": 0},
                        "name": f"phase:{name}",
                    }
                )
                if name not in labelled:  # label the first band of each phase only
                    labelled.add(name)
                    annotations.append(
                        {
                            "text": name,
                            "x": (x0 + x1) / 2,
                            "xref": "x",
                            "y": 1.0,
                            "yref": "paper",
                            "yanchor": "bottom",
                            "showarrow": False,
                            "name": f"phase:{name}",
                            "font": {"size": 10, "color": "#555555"},
                        }
                    )
    # Phase switches are marks too (labelled with the phase name); the bands already show them.
    steps = [m for m in marks if m[1] not in PHASES]
    if len(steps) > _MAX_STEP_LINES:
        annotations.append(_note(f"{len(steps)} step marks not drawn (too many)", y=1.14))
    else:
        for ts, label in steps:
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "paper",
                    "x0": ts,
                    "x1": ts,
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": "#888888", "width": 1, "dash": "dot"},
                    "name": f"step:{label}",
                }
            )
    peak_at = int(np.argmax(total))
    where = f" in {PHASES[int(phase[peak_at])]}" if phase is not None else ""
    annotations.append(
        {
            "text": f"peak {format_bytes(int(total[peak_at]))}{where}",
            "x": float(t[peak_at]),
            "y": float(total[peak_at]) / MIB,
            "xref": "x",
            "yref": "y",
            "showarrow": True,
            "arrowhead": 2,
            "ax": 0,
            "ay": -30,
            "name": "peak",
        }
    )
    return shapes, annotations


def _timeline_arrays(
    t: Any, by_category: Mapping[str, Any], max_points: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(t, bytes by category, total, kept indices) with the categories checked."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    unknown = set(by_category) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; allowed: {CATEGORIES}")
    cats = {
        c: np.asarray(by_category.get(c, np.zeros(len(t))), dtype=np.int64).reshape(-1)
        for c in CATEGORIES
    }
    for c, v in cats.items():
        if len(v) != len(t):
            raise ValueError(f"category {c!r} has {len(v)} points, t has {len(t)}")
    total = np.sum(np.stack([cats[c] for c in CATEGORIES]), axis=0) if len(t) else _EMPTY
    idx = downsample_indices(t, total, max_points)
    return t, cats, total, idx


def timeline_figure(
    result: RunResult | Timeline | None, *, max_points: int = 4000, title: str | None = None
) -> go.Figure:
    """Tensor bytes by category over time: stacked areas, phase bands, step lines, the peak.

    One trace per category in :data:`CATEGORIES` order (always all of them, so live updates can
    set them by name), coloured by :data:`CATEGORY_COLORS`. Above ``max_points`` events the
    timeline is thinned by :func:`downsample_indices`, which keeps the peak exactly.
    ``None`` gives the empty chart a live panel starts from.
    """
    tl = result.timeline if isinstance(result, RunResult) else result
    tl = tl if tl is not None else Timeline.empty()
    t, cats, total, idx = _timeline_arrays(tl.t, tl.by_category, max_points)
    fig = go.Figure()
    for c in CATEGORIES:
        fig.add_trace(
            go.Scatter(
                x=t[idx],
                y=_mib(cats[c][idx]),
                name=c,
                mode="lines",
                stackgroup="tensors",
                line={"width": 0.5, "color": CATEGORY_COLORS[c]},
                fillcolor=CATEGORY_COLORS[c],
                hovertemplate=f"{c}: %{{y:.2f}} MiB<extra></extra>",
            )
        )
    shapes, annotations = _timeline_decorations(t, tl.phase, tl.marks, total)
    if title is None:
        title = "Tensor memory by category"
        if isinstance(result, RunResult) and len(t):
            title += f": peak {format_bytes(result.peak_bytes)} in {result.peak_phase}"
    subtitle = ""
    if len(idx) < len(t):
        subtitle = f"{len(t)} events drawn as {len(idx)} (peak and dips kept exactly)"
    fig.update_layout(
        title={"text": title, "subtitle": {"text": subtitle}},
        xaxis_title="time (s)",
        yaxis_title="tensor memory (MiB)",
        hovermode="x unified",
        shapes=shapes,
        annotations=annotations,
        legend={"traceorder": "normal"},
    )
    return fig


def update_timeline(
    fig: Any,
    t: Any,
    by_category: Mapping[str, Any],
    *,
    phase: Any | None = None,
    marks: Sequence[tuple[float, str]] = (),
    max_points: int = 4000,
) -> None:
    """Set the category traces of a :func:`timeline_figure` in place (one redraw).

    ``fig`` is a ``go.FigureWidget`` (or anything with ``.data`` and, ideally,
    ``.batch_update()``). Traces are matched by name; categories missing from ``by_category``
    are set to zero. When ``phase`` is given, the phase bands, step lines and the peak label
    are redrawn too.
    """
    t, cats, total, idx = _timeline_arrays(t, by_category, max_points)
    x = t[idx]
    with _batch(fig):
        for trace in fig.data:
            if trace.name in cats:
                trace.x = x
                trace.y = _mib(cats[trace.name][idx])
        if phase is not None:
            ph = np.asarray(phase).reshape(-1)
            if len(ph) != len(t):
                raise ValueError(f"phase has {len(ph)} points, t has {len(t)}")
            shapes, annotations = _timeline_decorations(t, ph, marks, total)
            fig.layout.shapes = shapes
            fig.layout.annotations = annotations


# -- comparing runs -------------------------------------------------------------------------


def _run_labels(results: Sequence[RunResult], labels: Sequence[str] | None) -> list[str]:
    """One distinct label per run (a categorical axis would merge equal labels into one bar)."""
    if labels is not None:
        if len(labels) != len(results):
            raise ValueError(f"{len(labels)} labels for {len(results)} runs")
        out = [str(s) for s in labels]
    else:
        out = []
        for i, r in enumerate(results):
            name = (r.experiment or {}).get("name") or (r.experiment or {}).get("label")
            out.append(str(name) if name else f"run {i + 1}")
    out = [
        s if r.status == "ok" else f"{s} ({r.status})" for s, r in zip(out, results, strict=True)
    ]
    counts = Counter(out)
    used: set[str] = set()
    for i, s in enumerate(out):
        k, cand = 1, s
        while cand in used or (cand == s and counts[s] > 1):
            cand = f"{s} #{k}"
            k += 1
        used.add(cand)
        out[i] = cand
    return out


def peak_bars_figure(
    results: Sequence[RunResult], *, labels: Sequence[str] | None = None, baseline: int = 0
) -> go.Figure:
    """Peak tensor bytes of each run, stacked by category, with deltas against ``baseline``.

    One bar trace per category (x: run labels, y: MiB). Each bar segment's ``customdata`` is
    its exact delta in bytes against the baseline run's same category (hover shows it); the
    annotation over each bar is the delta of the whole peak. A run that did not end ``ok``
    says so in its label (its peak is what it reached before it stopped).
    """
    fig = go.Figure()
    fig.update_layout(
        barmode="stack", yaxis_title="peak tensor memory (MiB)", title="Peak memory by category"
    )
    if not results:
        fig.update_layout(annotations=[_note("no runs yet")])
        return fig
    n = len(results)
    if not -n <= baseline < n:
        raise IndexError(f"baseline {baseline} out of range for {n} runs")
    baseline %= n
    names = _run_labels(results, labels)
    base = results[baseline]
    for c in CATEGORIES:
        peaks = np.asarray([r.peak_by_category.get(c, 0) for r in results], dtype=np.int64)
        deltas = peaks - int(base.peak_by_category.get(c, 0))
        hover = [
            "baseline" if i == baseline else f"{_signed_bytes(int(d))} vs {names[baseline]}"
            for i, d in enumerate(deltas)
        ]
        fig.add_trace(
            go.Bar(
                x=names,
                y=_mib(peaks),
                name=c,
                marker_color=CATEGORY_COLORS[c],
                customdata=deltas,
                hovertext=hover,
                hovertemplate=f"%{{x}}<br>{c}: %{{y:.2f}} MiB<br>%{{hovertext}}<extra></extra>",
            )
        )
    annotations = []
    for i, (r, name) in enumerate(zip(results, names, strict=True)):
        d = int(r.peak_bytes) - int(base.peak_bytes)
        if i == baseline:
            text = f"{format_bytes(r.peak_bytes)} (baseline)"
        else:
            pct = f" ({100.0 * d / base.peak_bytes:+.0f}%)" if base.peak_bytes else ""
            text = f"{format_bytes(r.peak_bytes)}<br>{_signed_bytes(d)}{pct}"
        annotations.append(
            {
                "x": name,
                "y": r.peak_bytes / MIB,
                "text": text,
                "showarrow": False,
                "yanchor": "bottom",
                "xref": "x",
                "yref": "y",
                "name": "delta",
            }
        )
    fig.update_layout(annotations=annotations)
    return fig


def memory_throughput_figure(
    results: Sequence[RunResult], labels: Sequence[str] | None = None
) -> go.Figure:
    """Peak tensor memory (MiB, y) against throughput (samples/s, x), one point per run.

    Runs without a throughput (no timed steps, or no samples per step) are left out and named
    in a note under the title. ``customdata`` holds each point's index into ``results``.
    """
    names = _run_labels(results, labels) if results else []
    keep = [i for i, r in enumerate(results) if r.throughput_samples_per_s is not None]
    skipped = [names[i] for i in range(len(results)) if i not in keep]
    fig = go.Figure(
        go.Scatter(
            x=np.asarray([results[i].throughput_samples_per_s for i in keep], dtype=np.float64),
            y=_mib([results[i].peak_bytes for i in keep]),
            text=[names[i] for i in keep],
            customdata=np.asarray(keep, dtype=np.int64),
            mode="markers+text",
            textposition="top center",
            name="runs",
            marker={"size": 10, "color": "#4C78A8"},
            hovertemplate="%{text}<br>%{x:.1f} samples/s<br>peak %{y:.2f} MiB<extra></extra>",
        )
    )
    subtitle = f"skipped (no throughput measured): {', '.join(skipped)}" if skipped else ""
    fig.update_layout(
        title={"text": "Memory vs throughput", "subtitle": {"text": subtitle}},
        xaxis_title="throughput (samples/s)",
        yaxis_title="peak tensor memory (MiB)",
        showlegend=False,
    )
    if not keep:
        fig.update_layout(annotations=[_note("no run with a measured throughput yet")])
    return fig


# -- one run in detail ----------------------------------------------------------------------


def module_activations_figure(result: RunResult, top: int = 20) -> go.Figure:
    """Activation bytes saved per module, largest on top, as horizontal bars (MiB).

    Past ``top`` modules the rest are summed into one "(N other modules)" bar, so the bars
    still add up to everything recorded.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    items = sorted(result.activations_by_module.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = items[:top]
    rest = items[top:]
    if rest:
        shown.append((f"({len(rest)} other modules)", sum(v for _, v in rest)))
    fig = go.Figure(
        go.Bar(
            x=_mib([v for _, v in shown]),
            y=[k for k, _ in shown],
            orientation="h",
            name="activations",
            marker_color=CATEGORY_COLORS["activations"],
            text=[format_bytes(v) for _, v in shown],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2f} MiB<extra></extra>",
        )
    )
    fig.update_layout(
        title="Activation memory by module",
        xaxis_title="activations (MiB)",
        yaxis={"autorange": "reversed", "type": "category"},
        showlegend=False,
        height=max(300, 26 * len(shown) + 120),
    )
    if not shown:
        fig.update_layout(annotations=[_note("no activations recorded")])
    return fig


def _process_traces(
    t: np.ndarray, parts: Mapping[str, np.ndarray | None]
) -> tuple[list[go.Scatter], list[str]]:
    traces = []
    missing = []
    for part, name, stacked, dash in _PROCESS_TRACES:
        v = parts.get(part)
        if v is None:
            missing.append(name)
            continue
        traces.append(
            go.Scatter(
                x=t,
                y=_mib(v),
                name=name,
                mode="lines",
                stackgroup="rss parts" if stacked else None,
                line={"color": _PROCESS_COLORS[part], "dash": dash, "width": 1 if stacked else 2},
                hovertemplate=f"{name}: %{{y:.1f}} MiB<extra></extra>",
            )
        )
    return traces, missing


def process_memory_figure(result: RunResult) -> go.Figure:
    """Process memory over time: anonymous, file-backed and shared RSS stacked, total RSS and
    its high-water mark as lines.

    A part this platform cannot measure (``None``) gets no trace and is named in the subtitle
    as "not measured on this platform" (never drawn as zero). A memmap's pages show up as
    file-backed RSS, which the OS may drop; freed heap memory often stays in anonymous RSS.
    """
    proc = result.process
    traces, missing = _process_traces(proc.t, proc.parts)
    fig = go.Figure(traces)
    subtitle = f"not measured on this platform: {', '.join(missing)}" if missing else ""
    fig.update_layout(
        title={"text": "Process memory (RSS)", "subtitle": {"text": subtitle}},
        xaxis_title="time (s)",
        yaxis_title="resident memory (MiB)",
        hovermode="x unified",
    )
    if len(proc) == 0:
        fig.update_layout(annotations=[_note("no process samples recorded yet")])
    return fig


def update_process(fig: Any, t: Any, parts: Mapping[str, Any | None]) -> None:
    """Set the traces of a :func:`process_memory_figure` in place, matched by legend name."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    by_name = {name: parts.get(part) for part, name, _, _ in _PROCESS_TRACES}
    with _batch(fig):
        for trace in fig.data:
            v = by_name.get(trace.name)
            if v is not None:
                trace.x = t
                trace.y = _mib(v)
        if len(t):
            fig.layout.annotations = [a for a in fig.layout.annotations if a.name != "note"]


# -- predictions ----------------------------------------------------------------------------


def _pct_error(predicted: int, measured: int) -> float | None:
    return 100.0 * (predicted - measured) / measured if measured else None


def prediction_figure(
    predicted_by_category: Mapping[str, int], result: RunResult | None = None
) -> go.Figure:
    """Predicted peak bytes by category beside the measured ones, the error in % in the title.

    The first trace is named "predicted" (an estimate, never a measurement); the second,
    "measured", is there only when a ``result`` is given. Error = (predicted - measured) /
    measured of the whole peak; per-category errors are in the hover text.
    """
    unknown = set(predicted_by_category) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; allowed: {CATEGORIES}")
    pred = np.asarray([int(predicted_by_category.get(c, 0)) for c in CATEGORIES], dtype=np.int64)
    cats = list(CATEGORIES)
    fig = go.Figure(
        go.Bar(
            x=cats,
            y=_mib(pred),
            name="predicted",
            marker={"color": "#BAB0AC", "pattern_shape": "/"},
            customdata=pred,
            hovertemplate="%{x}: %{y:.2f} MiB predicted<extra></extra>",
        )
    )
    pred_total = int(pred.sum())
    if result is None:
        title = f"Predicted peak {format_bytes(pred_total)} (not measured yet)"
    else:
        meas = np.asarray(
            [int(result.peak_by_category.get(c, 0)) for c in CATEGORIES], dtype=np.int64
        )
        errs = [_pct_error(int(p), int(m)) for p, m in zip(pred, meas, strict=True)]
        fig.add_trace(
            go.Bar(
                x=cats,
                y=_mib(meas),
                name="measured",
                marker_color="#4C78A8",
                customdata=meas,
                hovertext=["error n/a" if e is None else f"error {e:+.1f}%" for e in errs],
                hovertemplate="%{x}: %{y:.2f} MiB measured<br>%{hovertext}<extra></extra>",
            )
        )
        err = _pct_error(pred_total, int(result.peak_bytes))
        err_text = "n/a (nothing measured)" if err is None else f"{err:+.1f}%"
        title = (
            f"Predicted {format_bytes(pred_total)} vs measured {format_bytes(result.peak_bytes)}:"
            f" error {err_text}"
        )
    fig.update_layout(barmode="group", title=title, yaxis_title="peak tensor memory (MiB)")
    return fig
