"""A run (or a comparison of two) written in other tools' formats, each read back by that tool.

    memlab.exports.to_html(result_or_comparison, "run.html")   # standalone page, offline
    memlab.exports.to_memory_viz(result, "run.pickle")         # torch.cuda._memory_viz input
    memlab.exports.to_chrome_trace(result, "run.json")         # chrome://tracing, Perfetto
    memlab.exports.to_tensorboard(result, "runs/a")            # TensorBoard scalars
    memlab.exports.to_dataframe(result) / to_parquet(result, "run.parquet")

What every format holds is the result's own data: the timeline's bytes by category after each
allocator event (exact), its phases and step marks, the process memory samples. The memory
snapshot for PyTorch's viewer is the one place where something is *synthesized*: a
``RunResult`` keeps category totals over time, not individual blocks (see
:func:`to_memory_viz`). Nothing here imports torch at import time; only
:func:`to_tensorboard` needs it, and runs it in memlab's service worker by default.
"""

from __future__ import annotations

import html
import json
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memlab.timeline import CATEGORIES, PHASES, PROCESS_PARTS, RunResult, Timeline

if TYPE_CHECKING:
    from memlab.comparing import Comparison

__all__ = [
    "FORMATS",
    "MEMORY_VIZ_CATEGORIES",
    "chrome_trace",
    "export",
    "external_references",
    "memory_snapshot",
    "report_html",
    "step_index",
    "tensorboard_points",
    "to_chrome_trace",
    "to_dataframe",
    "to_html",
    "to_memory_viz",
    "to_parquet",
    "to_tensorboard",
]

#: The formats ``memlab export RUN --format ...`` writes.
FORMATS: tuple[str, ...] = ("html", "memory_viz", "chrome", "tensorboard", "parquet")

#: memlab's categories under the names PyTorch's memory profiler gives them
#: (``torch.profiler._memory_profiler.Category``, lower-cased, as ``_memory_viz`` writes them;
#: ``unknown`` is its name for what no rule claimed).
MEMORY_VIZ_CATEGORIES: dict[str, str] = {
    "parameters": "parameter",
    "gradients": "gradient",
    "optimizer_state": "optimizer_state",
    "activations": "activation",
    "inputs": "input",
    "temporaries": "temporary",
    "other": "unknown",
}

_INSTALL = "pip install 'memlab[export]'"


def _missing(what: str, e: ImportError) -> ImportError:
    return ImportError(f"{what} needs {e.name or 'a library'}: {_INSTALL}")


def _check_result(result: Any, fn: str) -> RunResult:
    if not isinstance(result, RunResult):
        raise TypeError(f"{fn}: result must be a memlab.RunResult, got {type(result).__name__}")
    return result


def _path(path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def step_index(tl: Timeline) -> np.ndarray:
    """Each event's step, 1-based: 1 + the number of ``step k`` marks strictly before it (an
    event at a step's mark belongs to that step). 1 throughout for a block with no step marks."""
    marks = np.asarray(sorted(t for t, label in tl.marks if _is_step(label)), dtype=np.float64)
    return (1 + np.searchsorted(marks, tl.t, side="left")).astype(np.int64)


def _is_step(label: str) -> bool:
    parts = label.split()
    return len(parts) == 2 and parts[0] == "step" and parts[1].isdigit()


# -- DataFrame / Parquet ----------------------------------------------------------------------
def to_dataframe(result: RunResult) -> Any:
    """The timeline as a pandas DataFrame, one row per allocator event: ``t`` (s since the
    block began), ``phase`` (categorical over :data:`memlab.timeline.PHASES`), ``step``
    (:func:`step_index`), one int64 column per category (bytes live after the event) and
    ``total``. ``df.attrs["memlab_run"]`` is the result's other figures as JSON (no arrays)."""
    result = _check_result(result, "to_dataframe")
    df = result.timeline.to_dataframe()
    df.insert(2, "step", step_index(result.timeline))
    df.attrs["memlab_run"] = json.dumps(result.to_dict(timeline=False), default=_json_default)
    return df


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):  # numpy scalars and arrays in metrics
        return v.tolist()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def to_parquet(result: RunResult, path: str | Path) -> Path:
    """:func:`to_dataframe` written as Parquet (pyarrow); ``pandas.read_parquet`` reads back the
    same frame, attrs included. Returns the path."""
    result = _check_result(result, "to_parquet")
    try:
        import pyarrow  # noqa: F401  (pandas' Parquet engine)
    except ImportError as e:
        raise _missing("to_parquet", e) from e
    p = _path(path)
    to_dataframe(result).to_parquet(p, engine="pyarrow", index=False)
    return p


# -- Chrome / Perfetto trace ------------------------------------------------------------------
_PID = 1
_TID_MEMORY, _TID_PHASES, _TID_STEPS = 0, 1, 2


def _us(t: float) -> float:
    return round(float(t) * 1e6, 3)


def _phase_runs(tl: Timeline) -> list[tuple[float, float, str]]:
    """Maximal runs of one phase: ``(start_s, end_s, phase)``; a run ends where the next
    begins (the last at the last event)."""
    if len(tl) == 0:
        return []
    ph = tl.phase
    starts = np.concatenate([[0], np.flatnonzero(ph[1:] != ph[:-1]) + 1])
    ends = np.concatenate([starts[1:], [len(ph) - 1]])
    return [
        (float(tl.t[s]), float(tl.t[e]), PHASES[int(ph[s])])
        for s, e in zip(starts, ends, strict=True)
    ]


def _step_spans(tl: Timeline) -> list[tuple[float, float, str]]:
    """Each ``step k`` mark closes a step that began at the previous step mark (the first at
    the block's start, t = 0)."""
    spans, start = [], 0.0
    for t, label in sorted(tl.marks):
        if _is_step(label):
            spans.append((start, float(t), label))
            start = float(t)
    return spans


def chrome_trace(result: RunResult) -> dict[str, Any]:
    """The trace as a dict in the Trace Event Format's JSON object form (``traceEvents``).

    - ``C`` counter ``tensor bytes``: one event per timeline event, ``args`` = bytes per
      category (Chrome stacks them; Perfetto shows one track per category); their sum is the
      timeline's total there, exactly.
    - ``C`` counter ``process memory``: the sampled RSS parts this platform measured.
    - ``X`` complete events: each run of one phase (thread "phases") and each step between
      step marks (thread "steps").
    Times are microseconds since the tracked block began (the spec's unit for ``ts``/``dur``).
    """
    result = _check_result(result, "chrome_trace")
    tl = result.timeline
    meta = [
        ("process_name", _TID_MEMORY, "memlab run"),
        ("thread_name", _TID_MEMORY, "memory"),
        ("thread_name", _TID_PHASES, "phases"),
        ("thread_name", _TID_STEPS, "steps"),
    ]
    events: list[dict[str, Any]] = [
        {"name": n, "ph": "M", "pid": _PID, "tid": tid, "args": {"name": v}} for n, tid, v in meta
    ]
    cols = [tl.by_category[c].tolist() for c in CATEGORIES]
    for i, t in enumerate(tl.t.tolist()):
        events.append(
            {
                "name": "tensor bytes",
                "cat": "memory",
                "ph": "C",
                "ts": _us(t),
                "pid": _PID,
                "tid": _TID_MEMORY,
                "args": {c: cols[k][i] for k, c in enumerate(CATEGORIES)},
            }
        )
    proc = result.process
    parts = [p for p in PROCESS_PARTS if proc.parts.get(p) is not None]
    for i, t in enumerate(proc.t.tolist()):
        events.append(
            {
                "name": "process memory",
                "cat": "memory",
                "ph": "C",
                "ts": _us(t),
                "pid": _PID,
                "tid": _TID_MEMORY,
                "args": {p: int(proc.parts[p][i]) for p in parts},  # type: ignore[index]
            }
        )
    for tid, cat, spans in (
        (_TID_PHASES, "phase", _phase_runs(tl)),
        (_TID_STEPS, "step", _step_spans(tl)),
    ):
        for start, end, name in spans:
            events.append(
                {
                    "name": name,
                    "cat": cat,
                    "ph": "X",
                    "ts": _us(start),
                    "dur": max(0.0, round(_us(end) - _us(start), 3)),
                    "pid": _PID,
                    "tid": tid,
                }
            )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "memlab": "tensor bytes by category after each allocator event",
            "device": result.device,
            "status": result.status,
            "peak_bytes": result.peak_bytes,
            "source": tl.source,
        },
    }


def to_chrome_trace(result: RunResult, path: str | Path) -> Path:
    """:func:`chrome_trace` written as JSON: open it in ``chrome://tracing`` or
    https://ui.perfetto.dev (both read the JSON Trace Event Format). Returns the path."""
    p = _path(path)
    p.write_text(json.dumps(chrome_trace(result), separators=(",", ":")))
    return p


# -- PyTorch memory snapshot (torch.cuda._memory_viz) ----------------------------------------
_BASE_ADDR = 0x7F0000000000  # where the synthetic address space starts (any nonzero value)
_ALIGN = 512  # the CUDA caching allocator's block rounding; keeps the regions apart


def memory_snapshot(result: RunResult) -> dict[str, Any]:
    """The result in the format of ``torch.cuda.memory._snapshot()``, for CPU runs too.

    **What is exact and what is synthesized.** A ``RunResult`` keeps the bytes of each category
    after every allocator event, not the individual blocks (their addresses are paired and
    dropped in ``memlab/tracking/attribution.py``). So each category gets a synthetic address
    region (one "segment", as large as that category's own highest value), and each change of a
    category becomes blocks in it: a rise of ``d`` bytes is one ``alloc`` of ``d`` bytes at the
    top of the region; a fall frees the topmost blocks (``free_requested`` then
    ``free_completed``) and re-allocates what was freed beyond the fall, so the region stays
    filled from its start to the category's current bytes. Within one event the frees come
    first. Hence, exactly: every category's bytes after every event, the total, the peak
    (the running sum of allocs minus completed frees, plus the bytes live at entry), and the
    blocks alive at the end. Synthesized: block boundaries, addresses and the number of
    allocations (one per change, not one per tensor); ``frames`` are empty (no stacks were
    recorded). Bytes live at entry are blocks that predate the trace (the format's
    "allocated before recording" blocks: a free without an alloc, or a segment block never
    allocated in the trace). ``time_us`` is microseconds since the block began.

    Events carry PyTorch's category names (:data:`MEMORY_VIZ_CATEGORIES`) only when ``other``
    (PyTorch's ``unknown``) occurs among them: MemoryViz.js adds ``unknown`` to its list itself
    through a misspelt name (``snapshot.categores``) and would fail otherwise; without them
    the viewer colours each block on its own.
    """
    result = _check_result(result, "to_memory_viz")
    tl = result.timeline
    n = len(tl)
    entry = {c: int(result.entry_by_category.get(c, 0)) for c in CATEGORIES}
    if n == 0:
        entry = {c: 0 for c in CATEGORIES}
    values = {c: tl.by_category[c] for c in CATEGORIES}
    region = {
        c: max([entry[c], int(values[c].max()) if n else 0]) for c in CATEGORIES
    }  # each category's highest bytes: its segment's size
    base: dict[str, int] = {}
    addr = _BASE_ADDR
    for c in CATEGORIES:
        base[c] = addr
        addr += -(-max(region[c], 1) // _ALIGN) * _ALIGN + _ALIGN
    stacks: dict[str, list[tuple[int, int, str]]] = {c: [] for c in CATEGORIES}
    for c in CATEGORIES:
        if entry[c]:
            stacks[c].append((base[c], entry[c], c))  # predates the trace

    trace: list[dict[str, Any]] = []
    t_us = [int(round(v * 1e6)) for v in tl.t.tolist()]

    def ev(action: str, a: int, size: int, c: str, time_us: int) -> dict[str, Any]:
        return {
            "action": action,
            "addr": a,
            "size": size,
            "stream": 0,
            "time_us": time_us,
            "frames": [],
            "category": MEMORY_VIZ_CATEGORIES[c],
        }

    cols = {c: values[c].tolist() for c in CATEGORIES}
    cur = dict(entry)
    for i in range(n):
        now = t_us[i]
        rises: list[tuple[str, int]] = []
        for c in CATEGORIES:
            d = cols[c][i] - cur[c]
            if d > 0:
                rises.append((c, d))
            elif d < 0:
                fall, stack = -d, stacks[c]
                while fall > 0:
                    a, size, _ = stack.pop()
                    trace.append(ev("free_requested", a, size, c, now))
                    trace.append(ev("free_completed", a, size, c, now))
                    if size > fall:  # freed beyond the fall: the rest is allocated again
                        stack.append((a, size - fall, c))
                        trace.append(ev("alloc", a, size - fall, c, now))
                    fall -= min(size, fall)
            cur[c] = cols[c][i]
        for c, d in rises:
            stack = stacks[c]
            a = base[c] + (stack[-1][0] - base[c] + stack[-1][1] if stack else 0)
            stack.append((a, d, c))
            trace.append(ev("alloc", a, d, c, now))

    if not any(e["category"] == "unknown" for e in trace if e["action"] == "alloc"):
        for e in trace:
            del e["category"]

    segments = []
    for c in CATEGORIES:
        if region[c] == 0:
            continue
        blocks: list[dict[str, Any]] = [
            {
                "address": a,
                "size": size,
                "requested_size": size,
                "state": "active_allocated",
                "frames": [],
            }
            for a, size, _ in stacks[c]
        ]
        used = sum(size for _, size, _ in stacks[c])
        if used < region[c]:
            blocks.append(
                {
                    "address": base[c] + used,
                    "size": region[c] - used,
                    "requested_size": 0,
                    "state": "inactive",
                    "frames": [],
                }
            )
        segments.append(
            {
                "device": 0,
                "address": base[c],
                "total_size": region[c],
                "allocated_size": used,
                "active_size": used,
                "requested_size": used,
                "stream": 0,
                "segment_type": "large",
                "segment_pool_id": (0, 0),
                "is_expandable": False,
                "frames": [],
                "blocks": blocks,
            }
        )
    return {"segments": segments, "device_traces": [trace]}


def to_memory_viz(result: RunResult, path: str | Path) -> Path:
    """:func:`memory_snapshot` pickled, as ``torch.cuda.memory._dump_snapshot`` writes it: drag
    it onto https://pytorch.org/memory_viz, or render it with
    ``torch.cuda._memory_viz.trace_plot(pickle.load(f))`` / ``segment_plot``. (Their pages load
    the viewer's JavaScript from a CDN; :func:`to_html` is memlab's offline page.) Returns the
    path."""
    p = _path(path)
    with open(p, "wb") as f:
        pickle.dump(memory_snapshot(result), f)
    return p


# -- TensorBoard ------------------------------------------------------------------------------
def tensorboard_points(result: RunResult, max_points: int | None = 10_000) -> np.ndarray:
    """The timeline events :func:`to_tensorboard` writes: all of them up to ``max_points``,
    else ``memlab.plots.downsample_indices`` on the total (min/max per time bucket, the peak
    kept exactly)."""
    tl = result.timeline
    if max_points is None or len(tl) <= max_points:
        return np.arange(len(tl), dtype=np.int64)
    from memlab.plots import downsample_indices

    return downsample_indices(tl.t, tl.total, max_points)


def _write_tensorboard(result: RunResult, logdir: str, max_points: int | None) -> str:
    """The torch side of :func:`to_tensorboard` (in the service worker by default)."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard writes through it)
    except ImportError as e:
        raise _missing("to_tensorboard", e) from e
    from torch.utils.tensorboard import SummaryWriter

    tl = result.timeline
    idx = tensorboard_points(result, max_points)
    w = SummaryWriter(log_dir=logdir)
    try:
        series = {f"memory/{c}": tl.by_category[c] for c in CATEGORIES}
        series["memory/total"] = tl.total
        for i in idx.tolist():
            wall = float(tl.t[i])
            for tag, v in series.items():
                # new_style + double precision: bytes stay exact up to 2**53 (the classic
                # scalar is a float32, exact only to 2**24).
                w.add_scalar(
                    tag, int(v[i]), i, walltime=wall, new_style=True, double_precision=True
                )
        for name, times in (
            ("step/wall_s", result.step_times_s),
            ("step/tracked_wall_s", result.tracked_step_times_s),
        ):
            for k, s in enumerate(times, start=1):
                w.add_scalar(name, float(s), k, new_style=True, double_precision=True)
        w.flush()
    finally:
        w.close()
    return logdir


def to_tensorboard(
    result: RunResult,
    logdir: str | Path,
    *,
    max_points: int | None = 10_000,
    in_worker: bool = True,
) -> Path:
    """TensorBoard scalars through ``torch.utils.tensorboard.SummaryWriter`` in ``logdir``.

    Tags ``memory/<category>`` and ``memory/total``: bytes live after each timeline event
    (global step = the event's index; wall time = seconds since the block began, so read them
    on TensorBoard's "relative" or "step" axis), at most ``max_points`` events
    (:func:`tensorboard_points`; ``None``: all). ``step/wall_s`` and ``step/tracked_wall_s``:
    each timed and each tracked step's wall time (global step = the step, from 1). Values are
    written as double-precision (new-style) scalars so bytes stay exact.

    torch is imported in memlab's service worker (``memlab.runner.call``), so the caller (a
    notebook kernel) never imports it, unless ``in_worker=False``. Returns ``logdir``.
    """
    result = _check_result(result, "to_tensorboard")
    if max_points is not None and (
        isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2
    ):
        raise ValueError(f"max_points must be an int >= 2 or None, got {max_points!r}")
    p = _path(logdir)
    p.mkdir(exist_ok=True)
    if in_worker:
        from memlab.runner import call

        call(_write_tensorboard, result, str(p), max_points)
    else:
        _write_tensorboard(result, str(p), max_points)
    return p


# -- standalone HTML --------------------------------------------------------------------------
_EXTERNAL = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//",
    re.IGNORECASE,
)


def external_references(page: str) -> list[str]:
    """The ``script``/``link``/``img``/``iframe`` tags of ``page`` that would fetch from
    another host (``http://``, ``https://`` or ``//``); an offline page has none."""
    return [m.group(0) for m in _EXTERNAL.finditer(page)]


def _figures(x: RunResult | Comparison) -> tuple[str, str, list[Any]]:
    from memlab import plots
    from memlab.comparing import Comparison

    if isinstance(x, Comparison):
        a, b = x.labels
        figs = [
            x.figure(),
            plots.peak_bars_figure([x.a, x.b], labels=[a, b]),
            plots.timeline_figure(x.a, title=f"Tensor memory by category: {a}"),
            plots.timeline_figure(x.b, title=f"Tensor memory by category: {b}"),
        ]
        return f"memlab comparison: {b} against {a}", x._repr_html_(), figs
    figs = [plots.timeline_figure(x), plots.process_memory_figure(x)]
    if x.activations_by_module:
        figs.append(plots.module_activations_figure(x))
    summary = x._repr_html_()
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in x.notes)
    if notes:
        summary += f"<ul class='notes'>{notes}</ul>"
    return f"memlab run ({x.status}, {x.device})", summary, figs


def report_html(x: RunResult | Comparison, *, title: str | None = None) -> str:
    """The page :func:`to_html` writes, as a string."""
    from memlab.comparing import Comparison

    if not isinstance(x, (RunResult, Comparison)):
        raise TypeError(
            f"to_html takes a memlab.RunResult or a memlab Comparison, got {type(x).__name__}"
        )
    head, summary, figs = _figures(x)
    title = title or head
    parts = []
    for k, fig in enumerate(figs):
        # The first figure carries plotly.js inline (about 4.6 MB); the others use it.
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(k == 0), include_mathjax=False))
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{summary}"
        + "".join(f"<div class='figure'>{p}</div>" for p in parts)
        + "<p><small>Written by memlab: measured figures; nothing on this page is fetched "
        "from the network.</small></p></body></html>\n"
    )
    bad = external_references(page)
    if bad:  # plotly changed how it embeds itself: fail loudly rather than write a page
        raise RuntimeError(f"the report would fetch from the network: {bad[:3]}")
    return page


def to_html(x: RunResult | Comparison, path: str | Path, *, title: str | None = None) -> Path:
    """A standalone HTML report of a run (summary table, timeline, process memory, module
    activations) or of a comparison (its table, the overlaid timelines, the peak bars, each
    timeline): plotly.js embedded inline, so the page renders offline; it is checked to
    reference no other host. Returns the path."""
    page = report_html(x, title=title)
    p = _path(path)
    p.write_text(page, encoding="utf-8")
    return p


def export(result: RunResult, fmt: str, path: str | Path, **kwargs: Any) -> Path:
    """``result`` written in format ``fmt`` (one of :data:`FORMATS`) to ``path``."""
    writers: dict[str, Any] = {
        "html": to_html,
        "memory_viz": to_memory_viz,
        "chrome": to_chrome_trace,
        "tensorboard": to_tensorboard,
        "parquet": to_parquet,
    }
    if fmt not in writers:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return Path(writers[fmt](result, path, **kwargs))
