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
from memlab.timeline import CATEGORIES, PHASES, RunResult, Timeline, Timing, format_bytes

__all__ = [
    "CATEGORY_COLORS",
    "arena_figure",
    "bandwidth_figure",
    "DISTURBED_TRACE",
    "PHASE_COLORS",
    "downsample_indices",
    "memory_throughput_figure",
    "module_activations_figure",
    "peak_bars_figure",
    "phase_bands",
    "prediction_figure",
    "process_memory_figure",
    "run_baselines",
    "steps_done",
    "throughput_figure",
    "throughput_title",
    "timeline_figure",
    "timing_summary",
    "update_process",
    "update_throughput",
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


# Tick and hover formats: a MiB axis never shows ``136.836468`` (4 significant digits, trailing
# zeros dropped), seconds to the millisecond, steps as integers (d3-format, as plotly uses).
MIB_FORMAT = ",.4~r"
SECONDS_FORMAT = ",.3~r"
RATE_FORMAT = ",.4~r"

# Legends go below the plot, horizontal: beside it they took a third of a half-width cell and
# were cut off. Placed in paper coordinates under the x axis title; plotly's margin
# auto-expansion (layout.margin.autoexpand, on by default) makes room for as many rows as the
# legend wraps to at the figure's width.
_LEGEND_BELOW: dict[str, Any] = {
    "orientation": "h",
    "x": 0.0,
    "xanchor": "left",
    "y": -0.22,
    "yanchor": "top",
    "font": {"size": 10},
}


def _fit(fig: go.Figure) -> go.Figure:
    """Size the figure to its container (no fixed width: a fixed 700 px overflowed a 527 px
    grid cell) with its legend below the plot."""
    fig.update_layout(autosize=True, width=None, legend=_LEGEND_BELOW)
    return fig


def _step_ticks(n: int) -> dict[str, Any]:
    """An integer step axis: every step up to 12, then about 10 ticks (whole steps only)."""
    return {"tickformat": "d", "tick0": 1, "dtick": max(1, -(-n // 10)) if n > 12 else 1}


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


# Phase labels sit in one row above the plot, so they must not overlap. The figure's width is
# unknown here (it fits its cell), so a label is sized against a plot area assumed no wider than
# _LABEL_PLOT_PX (a half-width grid cell on a 1280 px screen with the sidebar open leaves about
# 430 px of plot): at 10 px font a character is about _LABEL_CHAR_PX wide.
_LABEL_PLOT_PX = 400.0
_LABEL_CHAR_PX = 6.0
_LABEL_PAD_PX = 6.0
_SHORT_PHASE = {"data": "data", "forward": "fwd", "backward": "bwd", "optimizer": "opt",
                "inference": "inf"}  # fmt: skip


def _phase_labels(
    bands: Sequence[tuple[float, float, str]], span: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """One label per phase, on its widest band, where the text fits the band and overlaps no
    other label (the phase's short name if only that fits). Returns the annotations and the
    phases left unlabelled (named in the subtitle instead)."""
    if span <= 0:
        return [], sorted({b[2] for b in bands}, key=PHASES.index)
    widest: dict[str, tuple[float, float]] = {}
    for x0, x1, name in bands:
        if name not in widest or x1 - x0 > widest[name][1] - widest[name][0]:
            widest[name] = (x0, x1)
    placed: list[tuple[float, float]] = []
    annotations: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in sorted(widest, key=lambda n: widest[n][0]):
        x0, x1 = widest[name]
        mid = (x0 + x1) / 2
        for text in dict.fromkeys((name, _SHORT_PHASE.get(name, name))):
            half = (len(text) * _LABEL_CHAR_PX + _LABEL_PAD_PX) / _LABEL_PLOT_PX * span / 2
            fits = x1 - x0 >= 2 * half
            free = all(mid + half <= a or mid - half >= b for a, b in placed)
            if fits and free:
                placed.append((mid - half, mid + half))
                annotations.append(
                    {
                        "text": text,
                        "hovertext": f"phase: {name}",
                        "x": mid,
                        "xref": "x",
                        "y": 1.0,
                        "yref": "paper",
                        "yanchor": "bottom",
                        "showarrow": False,
                        "name": f"phase:{name}",
                        "font": {"size": 10, "color": "#555555"},
                    }
                )
                break
        else:
            missing.append(name)
    return annotations, missing


def _phase_key(phases: Sequence[str]) -> str:
    """Coloured squares naming the phases whose bands carry no label (too narrow)."""
    keys = [f'<span style="color:{PHASE_COLORS[p]}">&#9632;</span> {p}' for p in phases]
    return "phase bands: " + " ".join(keys) if keys else ""


def _timeline_decorations(
    t: np.ndarray, phase: np.ndarray | None, marks: Sequence[tuple[float, str]], total: np.ndarray
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Shapes (phase bands, step lines), annotations (phase labels, peak, notes) and a key of
    the phases too narrow to label (for the subtitle)."""
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    key = ""
    if len(t) == 0:
        annotations.append(_note("no memory events recorded yet"))
        return shapes, annotations, key
    if phase is not None:
        bands = [b for b in phase_bands(t, phase) if b[2] in PHASE_COLORS]
        if len(bands) > _MAX_BANDS:
            annotations.append(_note(f"{len(bands)} phase bands not drawn (too many)", y=1.08))
        else:
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
            labels, unlabelled = _phase_labels(bands, float(t[-1] - t[0]))
            annotations.extend(labels)
            key = _phase_key(unlabelled)
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
    return shapes, annotations, key


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
    shapes, annotations, key = _timeline_decorations(t, tl.phase, tl.marks, total)
    if title is None:
        title = "Tensor memory by category"
        if isinstance(result, RunResult) and len(t):
            title += f": peak {format_bytes(result.peak_bytes)} in {result.peak_phase}"
    fig.update_layout(
        title={"text": title, "subtitle": {"text": _timeline_subtitle(len(t), len(idx), key)}},
        xaxis={"title": {"text": "time (s)"}, "tickformat": SECONDS_FORMAT},
        yaxis={"title": {"text": "tensor memory (MiB)"}, "tickformat": MIB_FORMAT},
        hovermode="x unified",
        shapes=shapes,
        annotations=annotations,
    )
    _fit(fig)
    fig.update_layout(legend={"traceorder": "normal"})
    return fig


def _timeline_subtitle(events: int, drawn: int, key: str) -> str:
    parts = (
        [f"{events} events drawn as {drawn} (peak and dips kept exactly)"] if drawn < events else []
    )
    return " · ".join([*parts, key] if key else parts)


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
    are set to zero. When ``phase`` is given, the phase bands, step lines, the peak label and the
    subtitle (thinning, the key of unlabelled phases) are redrawn too.
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
            shapes, annotations, key = _timeline_decorations(t, ph, marks, total)
            fig.layout.shapes = shapes
            fig.layout.annotations = annotations
            fig.layout.title.subtitle.text = _timeline_subtitle(len(t), len(idx), key)


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
        s if r.status == "ok" else f"{s} ({_STATUS_WORD[r.status]})"
        for s, r in zip(out, results, strict=True)
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


#: How a run that did not finish is named on a chart.
_STATUS_WORD = {"ok": "ok", "oom": "oom", "cancelled": "cancelled", "error": "failed"}
# A run that did not finish is drawn faded and hatched: what it reached, never a saving.
_UNFINISHED_OPACITY = 0.45
_UNFINISHED_PATTERN = "x"


def _mode(r: RunResult) -> str | None:
    return (r.experiment or {}).get("mode")


def run_baselines(results: Sequence[RunResult], baseline: int = 0) -> list[int | None]:
    """For each run, the index of the run its deltas are taken against, or None (not compared).

    Only finished runs (status ``ok``) are compared, and only with a run of the same ``mode``:
    an inference step holds no gradients or optimizer state, so a train run against an
    inference run would show those as a saving. ``baseline`` is the baseline of its own mode
    (if it finished); another mode's runs are compared with that mode's first finished run.
    """
    n = len(results)
    if not results:
        return []
    if not -n <= baseline < n:
        raise IndexError(f"baseline {baseline} out of range for {n} runs")
    baseline %= n
    base_of: dict[str | None, int] = {}
    if results[baseline].status == "ok":
        base_of[_mode(results[baseline])] = baseline
    for i, r in enumerate(results):
        if r.status == "ok":
            base_of.setdefault(_mode(r), i)
    return [base_of.get(_mode(r)) if r.status == "ok" else None for r in results]


def _bar_note(r: RunResult, name: str, base: RunResult | None, is_base: bool, mode: str) -> str:
    if r.status != "ok":
        word = _STATUS_WORD[r.status]
        # Two short lines: a bar is as wide as a fifth of a 420 px cell, and longer notes of
        # neighbouring bars ran into each other (seen at 1280 px with the sidebar open). "Not
        # compared" is said once, in the subtitle, and in each bar's hover.
        if not r.peak_bytes:
            return f"{word}:<br>nothing measured"
        return f"{word}<br>{format_bytes(r.peak_bytes)} reached"
    if is_base:
        return f"{format_bytes(r.peak_bytes)}<br>(baseline{mode})"
    if base is None:
        return format_bytes(r.peak_bytes)
    d = int(r.peak_bytes) - int(base.peak_bytes)
    pct = f" ({100.0 * d / base.peak_bytes:+.0f}%)" if base.peak_bytes else ""
    return f"{format_bytes(r.peak_bytes)}<br>{_signed_bytes(d)}{pct}"


def peak_bars_figure(
    results: Sequence[RunResult],
    *,
    labels: Sequence[str] | None = None,
    baseline: int = 0,
    hover: Sequence[str] | None = None,
) -> go.Figure:
    """Peak tensor bytes of each run, stacked by category, with deltas against a baseline.

    One bar trace per category (x: run labels, y: MiB). Each bar segment's ``customdata`` is
    its exact delta in bytes against its baseline's same category (hover shows it), ``None``
    where the run is not compared; the annotation over each bar is the delta of the whole peak.
    Baselines come from :func:`run_baselines`: a run that did not finish (``oom``,
    ``cancelled``, ``error``) is drawn faded and hatched with its status in its label and is
    never compared (its peak is what it reached before it stopped, not a saving), and runs of
    different modes are compared only within their mode (said in the subtitle). ``hover``: a
    line per run for the hover text (the panel gives each run's full settings).
    """
    fig = go.Figure()
    fig.update_layout(
        barmode="stack",
        yaxis={"title": {"text": "peak tensor memory (MiB)"}, "tickformat": MIB_FORMAT},
        title="Peak memory by category",
    )
    _fit(fig)
    if not results:
        fig.update_layout(annotations=[_note("no runs yet")])
        return fig
    n = len(results)
    if hover is not None and len(hover) != n:
        raise ValueError(f"{len(hover)} hover texts for {n} runs")
    bases = run_baselines(results, baseline)
    names = _run_labels(results, labels)
    modes = {_mode(r) for r in results if r.status == "ok"}
    mixed = len(modes) > 1
    finished = [r.status == "ok" for r in results]
    opacity = [1.0 if ok else _UNFINISHED_OPACITY for ok in finished]
    pattern = ["" if ok else _UNFINISHED_PATTERN for ok in finished]
    extra = [f"<br>{h}" for h in hover] if hover is not None else [""] * n
    for c in CATEGORIES:
        peaks = [int(r.peak_by_category.get(c, 0)) for r in results]
        deltas: list[int | None] = []
        texts = []
        for i, r in enumerate(results):
            b = bases[i]
            if b is None:
                deltas.append(None)
                why = _STATUS_WORD[r.status] if r.status != "ok" else "no baseline"
                texts.append(f"not compared ({why}){extra[i]}")
            elif b == i:
                deltas.append(0)
                texts.append(f"baseline{extra[i]}")
            else:
                d = peaks[i] - int(results[b].peak_by_category.get(c, 0))
                deltas.append(d)
                texts.append(f"{_signed_bytes(d)} vs {names[b]}{extra[i]}")
        fig.add_trace(
            go.Bar(
                x=names,
                y=_mib(peaks),
                name=c,
                marker={
                    "color": CATEGORY_COLORS[c],
                    "opacity": opacity,
                    "pattern": {"shape": pattern},
                },
                customdata=deltas,
                hovertext=texts,
                hovertemplate=f"%{{x}}<br>{c}: %{{y:.2f}} MiB<br>%{{hovertext}}<extra></extra>",
            )
        )
    annotations = []
    for i, (r, name) in enumerate(zip(results, names, strict=True)):
        b = bases[i]
        mode = f", {_mode(r)}" if mixed and _mode(r) else ""
        text = _bar_note(r, name, None if b is None else results[b], b == i, mode)
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
                "font": {"size": 10},
            }
        )
    subtitle = []
    if mixed:
        subtitle.append(
            "train and inference runs are compared only within their mode "
            "(inference keeps no gradients or optimizer state)"
        )
    unfinished = [names[i] for i in range(n) if not finished[i]]
    if unfinished:
        subtitle.append(f"hatched: did not finish, not compared ({', '.join(unfinished)})")
    fig.update_layout(annotations=annotations, title={"subtitle": {"text": "<br>".join(subtitle)}})
    return fig


def memory_throughput_figure(
    results: Sequence[RunResult], labels: Sequence[str] | None = None
) -> go.Figure:
    """Peak tensor memory (MiB, y) against throughput (samples/s, x), one point per run.

    Only runs that finished (status ``ok``) with a throughput are drawn; the others are named
    in a note under the title. ``customdata`` holds each point's index into ``results``. A run
    whose timing was disturbed (:attr:`RunResult.timing`) is an open marker, said in its hover;
    inference runs are diamonds, and a subtitle says when the modes are mixed.
    """
    names = _run_labels(results, labels) if results else []
    keep = [
        i
        for i, r in enumerate(results)
        if r.status == "ok" and r.throughput_samples_per_s is not None
    ]
    skipped = [
        f"{names[i]}{'' if r.status == 'ok' else ' (did not finish)'}"
        for i, r in enumerate(results)
        if i not in keep
    ]
    symbols, hover = [], []
    for i in keep:
        r = results[i]
        shape = "diamond" if _mode(r) == "inference" else "circle"
        disturbed = r.timing is not None and not r.timing.steady
        symbols.append(f"{shape}-open" if disturbed else shape)
        hover.append(timing_summary(r.timing) if disturbed and r.timing else "timing steady")
    fig = go.Figure(
        go.Scatter(
            x=np.asarray([results[i].throughput_samples_per_s for i in keep], dtype=np.float64),
            y=_mib([results[i].peak_bytes for i in keep]),
            text=[names[i] for i in keep],
            customdata=np.asarray(keep, dtype=np.int64),
            hovertext=hover,
            mode="markers+text",
            textposition="top center",
            name="runs",
            marker={"size": 10, "color": "#4C78A8", "symbol": symbols, "line": {"width": 2}},
            hovertemplate=(
                "%{text}<br>%{x:.1f} samples/s<br>peak %{y:.2f} MiB<br>%{hovertext}<extra></extra>"
            ),
        )
    )
    notes = [f"skipped (no throughput measured): {', '.join(skipped)}"] if skipped else []
    if len({_mode(results[i]) for i in keep}) > 1:
        notes.append("diamonds: inference runs (no backward; not comparable to train steps)")
    if any(s.endswith("-open") for s in symbols):
        notes.append("open markers: timing disturbed by other processes")
    fig.update_layout(
        title={"text": "Memory vs throughput", "subtitle": {"text": "<br>".join(notes)}},
        xaxis={"title": {"text": "throughput (samples/s)"}, "tickformat": RATE_FORMAT},
        yaxis={"title": {"text": "peak tensor memory (MiB)"}, "tickformat": MIB_FORMAT},
        showlegend=False,
    )
    _fit(fig)
    if not keep:
        fig.update_layout(annotations=[_note("no run with a measured throughput yet")])
    return fig


# -- throughput and timing ------------------------------------------------------------------

#: The legend name of the markers on disturbed steps.
DISTURBED_TRACE = "disturbed (other processes busy)"


def timing_summary(timing: Timing | None) -> str:
    """One line on whether the step times can be trusted: '' when steady or not measured,
    else e.g. 'timing disturbed: 5 of 8 steps, other processes used 40% of the CPU'."""
    if timing is None or timing.steady:
        return ""
    n = len(timing.step_disturbed) or len(timing.step_wall_s)
    of = f" of {n}" if n else ""
    text = f"timing disturbed: {timing.disturbed_steps}{of} steps"
    if timing.others_share is not None:
        text += f", other processes used {100.0 * timing.others_share:.0f}% of the CPU"
    return text


def steps_done(result: RunResult) -> int:
    """How many of a run's steps completed: its tracked (memory) steps where it has them
    (the runner times as many untracked steps only after all of them), else its timed ones."""
    return len(result.tracked_step_times_s) or len(result.step_times_s)


def throughput_title(result: RunResult) -> str:
    """The throughput chart's title for a finished run: the median rate and step time, and
    whether the timing was disturbed (with the timing's note); why there is none otherwise."""
    tp, med = result.throughput_samples_per_s, result.step_time_median_s
    if result.status != "ok":
        done = steps_done(result)
        word = _STATUS_WORD[result.status]
        if not done:
            return f"Throughput: run {word}, no step measured"
        return f"Throughput: run {word} after {done} steps (partial)"
    if tp is None or med is None:
        return "Throughput: no step timed"
    title = f"Throughput: median {tp:.0f} samples/s, {med * 1e3:.1f} ms/step"
    summary = timing_summary(result.timing)
    return f"{title}<br><sub>{summary} (see the status line)</sub>" if summary else title


def _throughput_arrays(
    step_times_s: Sequence[float], samples: Sequence[int | None] | int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dt = np.asarray(step_times_s, dtype=np.float64).reshape(-1)
    if samples is None or isinstance(samples, int):
        n = np.full(len(dt), np.nan if samples is None else float(samples))
    else:
        n = np.asarray([np.nan if v is None else v for v in samples], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(dt > 0, n / dt, np.nan)
    return np.arange(1, len(dt) + 1), rate, dt * 1e3


def throughput_figure(
    step_times_s: Sequence[float] = (),
    samples: Sequence[int | None] | int | None = None,
    *,
    disturbed: Sequence[bool] | None = None,
    others_share: Sequence[float | None] | None = None,
) -> go.Figure:
    """Samples/s (left axis) and step time in ms (right axis) per measured step.

    Steps whose timing other processes disturbed get a red ``x`` on their step time (trace
    :data:`DISTURBED_TRACE`, in the legend only when there is one), the others' share of the
    CPU in its hover.
    """
    fig = go.Figure(
        [
            go.Scatter(
                x=[],
                y=[],
                name="samples/s",
                mode="lines+markers",
                line={"color": "#4C78A8"},
                hovertemplate="step %{x}: %{y:.1f} samples/s<extra></extra>",
            ),
            go.Scatter(
                x=[],
                y=[],
                name="step time (ms)",
                mode="lines+markers",
                yaxis="y2",
                line={"color": "#E45756", "dash": "dot"},
                hovertemplate="step %{x}: %{y:.2f} ms<extra></extra>",
            ),
            go.Scatter(
                x=[],
                y=[],
                name=DISTURBED_TRACE,
                mode="markers",
                yaxis="y2",
                marker={"symbol": "x", "size": 11, "color": "#B71C1C"},
                hovertemplate="step %{x}: %{y:.2f} ms<br>%{hovertext}<extra></extra>",
                showlegend=False,
            ),
        ]
    )
    fig.update_layout(
        title={"text": "Throughput per step"},
        xaxis={"title": {"text": "measured step"}, "rangemode": "tozero", **_step_ticks(0)},
        yaxis={
            "title": {"text": "samples/s"},
            "rangemode": "tozero",
            "tickformat": RATE_FORMAT,
        },
        yaxis2={
            "title": {"text": "step time (ms)"},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "tickformat": RATE_FORMAT,
            # An overlaying axis defaults to tickmode "sync" (its ticks at the left axis's
            # grid lines), which labels them 27.3, 54.6, 81.9...: round ticks of its own.
            "tickmode": "auto",
            "showgrid": False,
        },
    )
    _fit(fig)
    update_throughput(fig, step_times_s, samples, disturbed=disturbed, others_share=others_share)
    return fig


def update_throughput(
    fig: Any,
    step_times_s: Sequence[float],
    samples: Sequence[int | None] | int | None,
    *,
    disturbed: Sequence[bool | None] | None = None,
    others_share: Sequence[float | None] | None = None,
) -> None:
    """Set a :func:`throughput_figure`'s traces in place (one redraw), matched by name."""
    x, rate, ms = _throughput_arrays(step_times_s, samples)
    flags = [bool(v) for v in (disturbed or ())][: len(x)]
    shares = list(others_share or ())[: len(x)]
    hit = [i for i, f in enumerate(flags) if f]
    hover = []
    for i in hit:
        share = shares[i] if i < len(shares) else None
        hover.append(
            "other processes busy"
            if share is None
            else f"other processes used {100.0 * share:.0f}% of the CPU"
        )
    with _batch(fig):
        for trace in fig.data:
            if trace.name == "samples/s":
                trace.x, trace.y = x, rate
            elif trace.name == "step time (ms)":
                trace.x, trace.y = x, ms
            elif trace.name == DISTURBED_TRACE:
                trace.x, trace.y = x[hit], ms[hit]
                trace.hovertext = hover
                trace.showlegend = bool(hit)
        fig.layout.xaxis.update(_step_ticks(len(x)))


# -- one run in detail ----------------------------------------------------------------------


def module_activations_figure(result: RunResult, top: int = 20) -> go.Figure:
    """Activation bytes saved per module, largest on top, as horizontal bars (MiB).

    Past ``top`` modules the rest are summed into one "(N other modules)" bar, so the bars
    still add up to everything recorded. What a bar counts (``tracking/attribution.py``): the
    activations allocated while the module was the *innermost* module running (its own
    operations, its children's excluded; tensors made outside any module are
    "(outside modules)"), in one forward pass (the largest over the steps). So a parent's bar
    does not include its children's, the bars do not overlap, and their sum is what one
    forward saved. The subtitle says this with the sum, and the activations at the peak
    (which can be less: backward frees activations as it goes).
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
            hovertemplate="%{y}: %{x:.2f} MiB (its own operations)<extra></extra>",
        )
    )
    fig.update_layout(
        title={
            "text": "Activation memory by module",
            "subtitle": {"text": _activations_subtitle(result) if shown else ""},
        },
        xaxis={"title": {"text": "activations (MiB)"}, "tickformat": MIB_FORMAT},
        yaxis={"autorange": "reversed", "type": "category"},
        showlegend=False,
        height=max(300, 26 * len(shown) + 140),
    )
    _fit(fig)
    if not shown:
        fig.update_layout(annotations=[_note("no activations recorded")])
    return fig


def _activations_subtitle(result: RunResult) -> str:
    total = sum(result.activations_by_module.values())
    at_peak = int(result.peak_by_category.get("activations", 0))
    text = (
        "each module's own operations, children excluded: bars do not overlap and sum to "
        f"{format_bytes(total)}, what one forward pass saved"
    )
    if result.peak_by_category:
        text += f"<br>activations at the peak ({result.peak_phase}): {format_bytes(at_peak)}"
        if total and at_peak < total:
            text += " (backward had freed some by then)"
    return text


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
        xaxis={"title": {"text": "time (s)"}, "tickformat": SECONDS_FORMAT},
        yaxis={"title": {"text": "resident memory (MiB)"}, "tickformat": MIB_FORMAT},
        hovermode="x unified",
    )
    _fit(fig)
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
    measured of the whole peak; per-category errors are in the hover text. A run that did not
    finish (status other than ``ok``) measured only part of a step: its bars are drawn as
    "measured (<status>: partial)" and no error is computed.
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
        finished = result.status == "ok"
        errs = [_pct_error(int(p), int(m)) for p, m in zip(pred, meas, strict=True)]
        word = _STATUS_WORD[result.status]
        fig.add_trace(
            go.Bar(
                x=cats,
                y=_mib(meas),
                name="measured" if finished else f"measured ({word}: partial)",
                marker_color="#4C78A8",
                opacity=1.0 if finished else _UNFINISHED_OPACITY,
                customdata=meas,
                hovertext=[
                    "error n/a" if e is None or not finished else f"error {e:+.1f}%" for e in errs
                ],
                hovertemplate="%{x}: %{y:.2f} MiB measured<br>%{hovertext}<extra></extra>",
            )
        )
        if finished:
            err = _pct_error(pred_total, int(result.peak_bytes))
            err_text = "n/a (nothing measured)" if err is None else f"{err:+.1f}%"
            title = (
                f"Predicted {format_bytes(pred_total)} vs measured "
                f"{format_bytes(result.peak_bytes)}: error {err_text}"
            )
        else:
            title = (
                f"Predicted {format_bytes(pred_total)}; the run {word} at "
                f"{format_bytes(result.peak_bytes)}: no error computed (it did not finish)"
            )
    fig.update_layout(
        barmode="group",
        title={"text": title},
        yaxis={"title": {"text": "peak tensor memory (MiB)"}, "tickformat": MIB_FORMAT},
    )
    _fit(fig)
    return fig


# -- memory planning: the arena ------------------------------------------------------------------


def arena_figure(plan: Any) -> go.Figure:
    """A planned arena (a ``memlab.planning.MemoryPlan``): x = op index, y = offset (MiB), one
    rectangle per graph tensor from its first to its last op, coloured by module, with the lower
    bound and the plan's size as lines. Drawn as bars with a ``base`` (offset) and a ``width``
    (lifetime), one trace per module, so each rectangle has its own hover."""
    import plotly.colors

    palette = plotly.colors.qualitative.Plotly
    graph = [t for t in plan.tensors if t.kind == "graph" and t.size > 0]
    by_module: dict[str, list[Any]] = {}
    for t in graph:
        by_module.setdefault(t.module or "(model)", []).append(t)
    fig = go.Figure()
    for i, (module, ts) in enumerate(by_module.items()):
        fig.add_trace(
            go.Bar(
                name=module,
                x=[(t.start + t.end) / 2 for t in ts],
                width=[t.end - t.start + 1 for t in ts],
                base=_mib([plan.offsets[t.id] for t in ts]),
                y=_mib([t.size for t in ts]),
                marker={"color": palette[i % len(palette)], "line": {"width": 0.5}},
                hovertext=[
                    f"tensor {t.id} ({plan.ops[t.start]}) in {module}<br>"
                    f"{format_bytes(t.size)} at offset {format_bytes(plan.offsets[t.id])}<br>"
                    f"alive ops {t.start}-{t.end}"
                    for t in ts
                ],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    for y, label, dash in (
        (plan.lower_bound_bytes, "lower bound", "dot"),
        (plan.best_bytes, f"plan ({plan.best_planner})", "solid"),
    ):
        fig.add_hline(
            y=y / MIB,
            line={"dash": dash, "color": "#333333", "width": 1},
            annotation_text=f"{label}: {format_bytes(y)}",
            annotation_position="top left",
        )
    fig.update_layout(
        barmode="overlay",
        bargap=0,
        title={
            "text": f"Planned arena {format_bytes(plan.best_bytes)} "
            f"(eager peak {format_bytes(plan.eager_peak_bytes)}, "
            f"reuse x{plan.reuse_factor:.2f})"
        },
        xaxis={"title": {"text": "op index"}},
        yaxis={"title": {"text": "offset (MiB)"}, "tickformat": MIB_FORMAT},
    )
    _fit(fig)
    return fig


def bandwidth_figure(result: Any) -> go.Figure:
    """Copy and triad bandwidth against the working set (log x) from a
    ``memlab.locality.BandwidthResult``, each cache level's size as a vertical line, the DRAM
    plateau and the same run's ``numpy.copyto`` anchor as horizontal ones."""
    sizes = [p.size_bytes for p in result.points]
    fig = go.Figure()
    for name, values, dash in (
        ("copy", [p.copy_gb_per_s for p in result.points], "solid"),
        ("triad", [p.triad_gb_per_s for p in result.points], "dot"),
    ):
        fig.add_trace(
            go.Scatter(
                x=sizes,
                y=values,
                name=name,
                mode="lines+markers",
                line={"dash": dash},
                hovertext=[
                    f"{name} {format_bytes(s)}: {v:.1f} GB/s"
                    for s, v in zip(sizes, values, strict=True)
                ],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    for lv in result.levels or ():
        fig.add_vline(
            x=lv.size_bytes,
            line={"dash": "dash", "color": "#888888", "width": 1},
            annotation_text=f"{lv.name} {format_bytes(lv.size_bytes)}",
            annotation_position="top",
        )
    if result.dram_gb_per_s is not None:
        fig.add_hline(
            y=result.dram_gb_per_s,
            line={"dash": "dot", "color": "#333333", "width": 1},
            annotation_text=f"DRAM plateau {result.dram_gb_per_s:.1f} GB/s",
            annotation_position="bottom right",
        )
    fig.add_hline(
        y=result.anchor_gb_per_s,
        line={"dash": "dashdot", "color": "#aa3333", "width": 1},
        annotation_text=f"numpy.copyto {format_bytes(result.anchor_bytes)}: "
        f"{result.anchor_gb_per_s:.1f} GB/s",
        annotation_position="top right",
    )
    caches = "" if result.levels is not None else " (cache sizes unknown here)"
    fig.update_layout(
        title={"text": f"Measured bandwidth by working set{caches}"},
        xaxis={"title": {"text": "working set (bytes)"}, "type": "log"},
        yaxis={"title": {"text": "GB/s (STREAM byte counting)"}, "rangemode": "tozero"},
    )
    _fit(fig)
    return fig
