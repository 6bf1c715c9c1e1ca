"""The panel's charts: one :class:`FigureWidget` each (plotly's, its front end loaded once per
page), updated in place.

The figures come from :mod:`memlab.plots` (pure functions); this module only keeps them alive
and feeds them: live samples while a run goes (accumulated, drawn at most ``max_fps`` times a
second inside ``batch_update``), then the exact result when it ends. Every method here edits
widgets, so it is called on the thread that owns them (the kernel's event loop: the panel's
:class:`memlab.ui.dispatch.Dispatcher` hands the runner's callbacks over).
ARCHITECTURE.md, "Process model".
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import plotly.graph_objects as go
import traitlets

from memlab import plots
from memlab.config import MIB
from memlab.timeline import PROCESS_PARTS, RunResult, format_bytes

__all__ = ["CHARTS", "FigureWidget", "LiveCharts", "sync_figure", "sync_state"]

#: Chart names, in display order.
CHARTS: tuple[str, ...] = (
    "memory",
    "prediction",
    "throughput",
    "process",
    "history",
    "tradeoff",
)
LIVE_TRACE = "tensor bytes (live)"
_MAX_LIVE_POINTS = 2000
_LIVE_TITLE = "Tensor memory (live total; by category at the end)"
_HEIGHT = 340
_MARGIN = {"l": 60, "r": 30, "t": 70, "b": 45}


class FigureWidget(go.FigureWidget):
    """plotly's ``go.FigureWidget`` with a front end that a page loads once for all figures.

    anywidget gives each widget's front end 2 s to load and drops every later message to one
    that took longer (anywidget/src/runtime.ts, ``AbortSignal.timeout(2000)``); compiling
    plotly's 4.6 MB bundle once per figure took 0.8 s each on 2 cores, so the third to fifth
    chart of a panel never updated. Here each figure's ``_esm`` is the small loader
    ``figure_widget.js``, and the bundle comes once as the synced ``_plotly_bundle`` string,
    compiled once per page (the file says how that was found).
    """

    # plotly's bundle as a synced string, read by figure_widget.js (below).
    _plotly_bundle = traitlets.Unicode().tag(sync=True)

    @traitlets.default("_plotly_bundle")
    def _default_plotly_bundle(self) -> str:
        return _plotly_bundle()[0]

    @property
    def _esm(self) -> str:  # read by anywidget's __init__ for each figure: the small loader
        return _front_end()


@functools.cache
def _plotly_bundle() -> tuple[str, str]:
    """plotly's widget bundle (this plotly's) and a key for it: plotly's version and a hash."""
    import plotly
    from plotly.basewidget import BaseFigureWidget

    bundle = str(BaseFigureWidget._esm)  # anywidget's FileContents: the bundle's text
    digest = hashlib.sha256(bundle.encode("utf-8")).hexdigest()[:16]
    return bundle, f"plotly-{plotly.__version__}-{digest}"


@functools.cache
def _front_end() -> str:
    """``figure_widget.js`` with the bundle's key filled in (a JSON string is a JS literal)."""
    from importlib import resources

    loader = resources.files("memlab.ui").joinpath("figure_widget.js").read_text("utf-8")
    return loader.replace("__MEMLAB_PLOTLY_KEY__", json.dumps(_plotly_bundle()[1]))


def sync_state(fw: go.FigureWidget) -> None:
    """Make the widget's synced state the figure as it is now.

    A FigureWidget sends later edits as messages; a page that attaches after them (a Voila
    page loading, a second view) would start from the state at construction and miss them.
    This is what ``FigureWidget._repr_mimebundle_`` does before display.
    """
    fw._widget_layout = deepcopy(fw._layout_obj._props)
    fw._widget_data = deepcopy(fw._data)


def _with_removals(
    old: Mapping[str, Any], new: Mapping[str, Any], keep: Sequence[str] = ()
) -> dict[str, Any]:
    """``new`` plus ``None`` for each key only ``old`` has: ``update(overwrite=True)`` leaves a
    key that ``new`` lacks as it was (a note annotation of an empty chart would stay)."""
    return {**{k: None for k in old if k not in new and k not in keep}, **new}


def sync_figure(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Make ``fw`` show ``fig``: traces updated in place when they match by name and type
    (one redraw), else replaced; the layout becomes ``fig``'s (the widget's own height,
    margin and template are kept)."""
    keep = ("height", "margin", "template")
    new_layout = {k: v for k, v in fig.layout.to_plotly_json().items() if k not in keep}
    layout = _with_removals(fw.layout.to_plotly_json(), new_layout, keep)
    same = [(t.type, t.name) for t in fw.data] == [(t.type, t.name) for t in fig.data]
    if same:
        with fw.batch_update():
            for old, new in zip(fw.data, fig.data, strict=True):
                old.update(
                    _with_removals(old.to_plotly_json(), new.to_plotly_json(), ("uid", "type")),
                    overwrite=True,
                )
            fw.layout.update(layout, overwrite=True)
    else:
        fw.data = ()
        fw.add_traces(list(fig.data))
        fw.layout.update(layout, overwrite=True)
    sync_state(fw)


def _throughput_figure() -> go.Figure:
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
        ]
    )
    fig.update_layout(
        title={"text": "Throughput per step"},
        xaxis={"title": {"text": "measured step"}, "rangemode": "tozero"},
        yaxis={"title": {"text": "samples/s"}, "rangemode": "tozero"},
        yaxis2={
            "title": {"text": "step time (ms)"},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
        },
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _widget(fig: go.Figure) -> go.FigureWidget:
    fw = FigureWidget(fig)
    fw.update_layout(height=_HEIGHT, margin=_MARGIN)
    return fw


class LiveCharts:
    """The FigureWidgets of one panel and the buffers that feed them during a run.

    ``add_sample``/``add_step`` buffer, and redraw only when ``1 / max_fps`` seconds have
    passed since the last redraw, so a burst of samples costs one redraw; with ``draw=False``
    they only buffer (the panel redraws once per batch, :meth:`redraw_if_due`).
    :meth:`next_draw_in` says when a buffered change is due. ``finish`` draws what is left and
    then the exact result. Call on the thread that owns the widgets.
    """

    def __init__(self, charts: Sequence[str] = CHARTS, *, max_fps: float = 20.0) -> None:
        unknown = [c for c in charts if c not in CHARTS]
        if unknown:
            raise ValueError(f"charts must be among {', '.join(CHARTS)}, got {unknown}")
        if not isinstance(max_fps, (int, float)) or max_fps <= 0:
            raise ValueError(f"max_fps must be a positive number, got {max_fps!r}")
        self.min_interval_s = 1.0 / max_fps
        self.figures: dict[str, go.FigureWidget] = {}
        for name in CHARTS:
            if name in charts:
                self.figures[name] = _widget(self._initial(name))
        self.redraws = 0  # live redraws of the current run (for tests and the curious)
        self._last_draw = 0.0
        self._dirty = False
        self._samples: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []

    @staticmethod
    def _initial(name: str) -> go.Figure:
        if name == "memory":
            fig = plots.timeline_figure(None)
            fig.add_trace(
                go.Scatter(
                    x=[],
                    y=[],
                    name=LIVE_TRACE,
                    mode="lines",
                    line={"color": "#333333", "width": 1.5},
                    hovertemplate="tensors: %{y:.2f} MiB<extra></extra>",
                )
            )
            return fig
        if name == "process":
            return plots.process_memory_figure(RunResult(peak_bytes=0, peak_by_category={}))
        if name == "throughput":
            return _throughput_figure()
        if name == "history":
            return plots.peak_bars_figure([])
        if name == "prediction":
            fig = plots.prediction_figure({})
            fig.update_layout(title={"text": "Prediction: appears when the settings are valid"})
            return fig
        return plots.memory_throughput_figure([])

    # -- a run starts -----------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the live charts for a new run (history and trade-off charts stay)."""
        self._samples, self._steps = [], []
        self._dirty = False
        self.redraws = 0
        self._last_draw = 0.0
        for name in ("memory", "process", "throughput"):
            fw = self.figures.get(name)
            if fw is None:
                continue
            with fw.batch_update():
                for trace in fw.data:
                    trace.x, trace.y = [], []
                if name == "memory":
                    fw.layout.shapes = []
                    fw.layout.annotations = []
                    fw.layout.title.text = _LIVE_TITLE
                    fw.layout.title.subtitle.text = ""
            sync_state(fw)

    # -- live ---------------------------------------------------------------------------------
    def add_sample(self, sample: Mapping[str, Any], *, draw: bool = True) -> bool:
        """Buffer one runner sample; redraw if due (and ``draw``). Returns whether it redrew."""
        self._samples.append(dict(sample))
        self._dirty = True
        return draw and self.redraw_if_due()

    def add_step(self, step: Mapping[str, Any], *, draw: bool = True) -> bool:
        """Buffer one measured step; redraw if due (and ``draw``). Returns whether it redrew."""
        self._steps.append(dict(step))
        self._dirty = True
        return draw and self.redraw_if_due()

    def redraw_if_due(self) -> bool:
        """Draw what is buffered if it is not drawn yet and the last redraw is old enough."""
        if self.next_draw_in() != 0.0:
            return False
        self._draw()
        return True

    def next_draw_in(self) -> float | None:
        """Seconds until the buffered change is due to be drawn (0: now); None if none is."""
        if not self._dirty:
            return None
        return max(0.0, self._last_draw + self.min_interval_s - time.monotonic())

    def flush(self) -> None:
        """Draw whatever is buffered and not drawn yet."""
        if self._dirty:
            self._draw()

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self._dirty = False
        self.redraws += 1
        samples, steps = self._samples, self._steps
        if samples:
            t = np.fromiter((s["t"] for s in samples), dtype=np.float64, count=len(samples))
            tensors = np.fromiter(
                (s.get("tensor_bytes") or 0 for s in samples), dtype=np.int64, count=len(samples)
            )
            idx = plots.downsample_indices(t, tensors, _MAX_LIVE_POINTS)
            fw = self.figures.get("memory")
            if fw is not None:
                with fw.batch_update():
                    for trace in fw.data:
                        if trace.name == LIVE_TRACE:
                            trace.x = t[idx]
                            trace.y = tensors[idx] / MIB
            fw = self.figures.get("process")
            if fw is not None:
                rss = np.fromiter(
                    (s.get("rss") or 0 for s in samples), dtype=np.int64, count=len(samples)
                )
                # Thinned around the RSS peaks too, not only the tensor peaks.
                idx = np.union1d(idx, plots.downsample_indices(t, rss, _MAX_LIVE_POINTS))
                parts: dict[str, np.ndarray | None] = {}
                for p in PROCESS_PARTS:
                    vals = [samples[i].get(p) for i in idx]
                    parts[p] = (
                        None if any(v is None for v in vals) else np.asarray(vals, dtype=np.int64)
                    )
                plots.update_process(fw, t[idx], parts)
        fw = self.figures.get("throughput")
        if fw is not None and steps:
            self._draw_steps(fw, [s["time_s"] for s in steps], [s.get("samples") for s in steps])

    @staticmethod
    def _draw_steps(
        fw: go.FigureWidget, times: Sequence[float], samples: Sequence[int | None]
    ) -> None:
        dt = np.asarray(times, dtype=np.float64)
        n = np.asarray([np.nan if s is None else s for s in samples], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(dt > 0, n / dt, np.nan)
        x = np.arange(1, len(dt) + 1)
        with fw.batch_update():
            fw.data[0].x, fw.data[0].y = x, rate
            fw.data[1].x, fw.data[1].y = x, dt * 1e3

    # -- a run ends ---------------------------------------------------------------------------
    def finish(self, result: RunResult) -> None:
        """Final flush, then the exact result: categories replace the live total."""
        self.flush()
        fw = self.figures.get("memory")
        if fw is not None and len(result.timeline):
            tl = result.timeline
            plots.update_timeline(fw, tl.t, tl.by_category, phase=tl.phase, marks=tl.marks)
            with fw.batch_update():
                for trace in fw.data:
                    if trace.name == LIVE_TRACE:
                        trace.x, trace.y = [], []
                title = f"Tensor memory by category: peak {format_bytes(result.peak_bytes)}"
                fw.layout.title.text = f"{title} in {result.peak_phase}"
            sync_state(fw)
        fw = self.figures.get("process")
        if fw is not None and len(result.process):
            # The pure figure names the parts this platform did not measure; show its note.
            subtitle = plots.process_memory_figure(result).layout.title.subtitle.text
            plots.update_process(fw, result.process.t, result.process.parts)
            fw.layout.title.subtitle.text = subtitle or ""
            sync_state(fw)
        fw = self.figures.get("throughput")
        if fw is not None and result.step_times_s:
            spp = result.samples_per_step
            tp = result.throughput_samples_per_s
            med = result.step_time_median_s
            self._draw_steps(fw, result.step_times_s, [spp] * len(result.step_times_s))
            fw.layout.title.text = (
                "Throughput per step"
                if tp is None or med is None
                else f"Throughput: median {tp:.0f} samples/s, {med * 1e3:.1f} ms/step"
            )
            sync_state(fw)

    def show_prediction(
        self, predicted: Mapping[str, int] | None, result: RunResult | None, note: str
    ) -> None:
        """Predicted bytes by category (labelled predicted), the measurement of the same
        settings beside them once there is one, or why there is no prediction."""
        fw = self.figures.get("prediction")
        if fw is None:
            return
        if predicted is None:
            fig = plots.prediction_figure({})
            fig.update_layout(title={"text": note})
        else:
            fig = plots.prediction_figure(predicted, result)
            fig.update_layout(title={"subtitle": {"text": note}})
        sync_figure(fw, fig)

    def show_history(self, results: Sequence[RunResult], labels: Sequence[str]) -> None:
        """Redraw the comparison charts from the panel's history."""
        fw = self.figures.get("history")
        if fw is not None:
            fig = plots.peak_bars_figure(results, labels=labels, baseline=0)
            if results:
                fig.layout.title.text = f"Peak memory by category (deltas vs {labels[0]})"
            sync_figure(fw, fig)
        fw = self.figures.get("tradeoff")
        if fw is not None:
            sync_figure(fw, plots.memory_throughput_figure(results, labels=labels))
