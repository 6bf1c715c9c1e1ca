"""The panel's charts: one :class:`FigureWidget` each (plotly's, its front end loaded once per
page), updated in place.

The figures come from :mod:`memlab.plots` (pure functions); this module only keeps them alive
and feeds them: live samples while a run goes (accumulated, drawn inside ``batch_update`` at
most ``max_fps`` times a second while the run builds and warms up, and at most once every
``quiet_redraw_s`` seconds while its measured block runs), then the exact result when it ends.

Why quiet: on a 2-core laptop the browser shares the cores with the measured worker. Live
redraws at up to 20 a second (the kernel serializing figure edits, the browser re-rendering
plotly) made the panel's step time 6-8x the CLI's; capped at one a second it was 0.89x
(issue 10). A redraw during the measured block is a disturbance of what it measures.

Every method here edits widgets, so it is called on the thread that owns them (the kernel's
event loop: the panel's :class:`memlab.ui.dispatch.Dispatcher` hands the runner's callbacks
over).
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

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import traitlets

from memlab import plots
from memlab.config import MIB
from memlab.timeline import PROCESS_PARTS, RunResult, format_bytes

__all__ = [
    "CHARTS",
    "DEFAULT_MAX_FPS",
    "DEFAULT_QUIET_REDRAW_S",
    "FigureWidget",
    "LiveCharts",
    "is_measuring",
    "sync_figure",
    "sync_state",
]

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
_HEIGHT = 380
# The bottom margin is a floor: plotly grows it for the legend below the plot (margin.autoexpand).
_MARGIN = {"l": 60, "r": 60, "t": 80, "b": 40}
# plotly.js option: resize with the window (memlab's figure_widget.js also resizes a figure
# when its cell changes width, which a window resize event does not cover).
_CONFIG = {"responsive": True, "displaylogo": False}

#: Live redraws a second while a run builds and warms up (not measured).
DEFAULT_MAX_FPS = 4.0
#: Seconds between live redraws while the measured block runs.
DEFAULT_QUIET_REDRAW_S = 2.0
_UNMEASURED_PHASES = ("setup", "warmup")


def is_measuring(sample: Mapping[str, Any]) -> bool:
    """Whether a runner sample comes from the measured block: its ``measuring`` flag, or (a
    runner that sends none) a phase other than the build's ``setup`` and the ``warmup``."""
    flag = sample.get("measuring")
    if flag is not None:
        return bool(flag)
    return sample.get("phase", "setup") not in _UNMEASURED_PHASES


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


def _widget(fig: go.Figure) -> go.FigureWidget:
    fw = FigureWidget(fig)
    # No width: the figure takes its cell's (a fixed 700 px overflowed a 527 px cell).
    fw.update_layout(height=_HEIGHT, margin=_MARGIN, autosize=True, width=None)
    fw._config = dict(_CONFIG)
    return fw


def _cell(fw: go.FigureWidget) -> widgets.Box:
    """The grid cell around a figure: as wide as the grid's column and never wider
    (``min_width=0`` lets a grid item shrink below its content's width)."""
    return widgets.Box([fw], layout=widgets.Layout(width="100%", min_width="0", overflow="hidden"))


class LiveCharts:
    """The FigureWidgets of one panel and the buffers that feed them during a run.

    ``add_samples``/``add_step`` only buffer (a list extend: the least work per batch the
    kernel can do); :meth:`redraw_if_due` draws what is buffered when the last redraw is old
    enough: ``1 / max_fps`` seconds before the measured block (build, warm-up) and after the
    run, ``quiet_redraw_s`` seconds while the block runs (the latest sample says which,
    :func:`is_measuring`). :meth:`next_draw_in` says when a buffered change is due. ``finish``
    draws the exact result, and every title says how the run ended. Call on the thread that
    owns the widgets.
    """

    def __init__(
        self,
        charts: Sequence[str] = CHARTS,
        *,
        max_fps: float = DEFAULT_MAX_FPS,
        quiet_redraw_s: float = DEFAULT_QUIET_REDRAW_S,
    ) -> None:
        unknown = [c for c in charts if c not in CHARTS]
        if unknown:
            raise ValueError(f"charts must be among {', '.join(CHARTS)}, got {unknown}")
        if not isinstance(max_fps, (int, float)) or max_fps <= 0:
            raise ValueError(f"max_fps must be a positive number, got {max_fps!r}")
        if not isinstance(quiet_redraw_s, (int, float)) or quiet_redraw_s < 0:
            raise ValueError(f"quiet_redraw_s must be seconds >= 0, got {quiet_redraw_s!r}")
        self.min_interval_s = 1.0 / max_fps
        self.quiet_redraw_s = float(quiet_redraw_s)
        self.figures: dict[str, go.FigureWidget] = {}
        for name in CHARTS:
            if name in charts:
                self.figures[name] = _widget(self._initial(name))
        #: chart name -> the grid cell holding its figure (what a panel lays out).
        self.cells: dict[str, widgets.Box] = {n: _cell(fw) for n, fw in self.figures.items()}
        self.redraws = 0  # live redraws of the current run (for tests and the curious)
        #: (time.monotonic(), measuring) of each live redraw of the current run.
        self.redraw_log: list[tuple[float, bool]] = []
        #: Whether the latest sample came from the measured block.
        self.measuring = False
        self._last_draw = 0.0
        self._dirty = False
        self._samples: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []
        self._memory_steps: list[dict[str, Any]] = []

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
            return plots.throughput_figure()
        if name == "history":
            return plots.peak_bars_figure([])
        if name == "prediction":
            fig = plots.prediction_figure({})
            fig.update_layout(title={"text": "Prediction: appears when the settings are valid"})
            return fig
        return plots.memory_throughput_figure([])

    # -- what is buffered (read on the owner thread) -----------------------------------------
    @property
    def samples(self) -> list[dict[str, Any]]:
        """The current run's samples so far."""
        return self._samples

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The current run's timed steps so far (the throughput chart's)."""
        return self._steps

    @property
    def memory_steps(self) -> list[dict[str, Any]]:
        """The current run's tracked steps so far (the memory pass: ``step["pass"] ==
        "memory"``; their times include the tracker's cost, so they are not the throughput)."""
        return self._memory_steps

    # -- a run starts -----------------------------------------------------------------------
    def reset(self, run: int | None = None) -> None:
        """Empty the live charts for a new run (history and trade-off charts stay); their
        titles name the new run, so nothing of the previous run looks like this one's."""
        self._samples, self._steps, self._memory_steps = [], [], []
        self._dirty = False
        self.measuring = False
        self.redraws = 0
        self.redraw_log = []
        self._last_draw = 0.0
        which = "the run" if run is None else f"run {run}"
        titles = {
            "memory": f"{_LIVE_TITLE}: {which} starting",
            "process": f"Process memory (RSS): {which} starting",
            "throughput": f"Throughput per step: {which} starting",
        }
        for name, title in titles.items():
            fw = self.figures.get(name)
            if fw is None:
                continue
            with fw.batch_update():
                for trace in fw.data:
                    trace.x, trace.y = [], []
                fw.layout.title.text = title
                fw.layout.title.subtitle.text = ""
                if name == "memory":
                    fw.layout.shapes = []
                    fw.layout.annotations = []
                if name == "throughput":
                    plots.update_throughput(fw, [], None)
            sync_state(fw)

    # -- live ---------------------------------------------------------------------------------
    def add_samples(self, samples: Sequence[Mapping[str, Any]]) -> None:
        """Buffer a batch of runner samples (drawn by :meth:`redraw_if_due`)."""
        if not samples:
            return
        self._samples.extend(dict(s) for s in samples)
        self.measuring = is_measuring(samples[-1])
        self._dirty = True

    def add_sample(self, sample: Mapping[str, Any], *, draw: bool = True) -> bool:
        """Buffer one runner sample; redraw if due (and ``draw``). Returns whether it redrew."""
        self.add_samples([sample])
        return draw and self.redraw_if_due()

    def add_step(self, step: Mapping[str, Any], *, draw: bool = True) -> bool:
        """Buffer one step; redraw if due (and ``draw``). Returns whether it redrew.

        The runner measures memory in tracked steps (``pass: "memory"``), then speed in as
        many untracked ones (``pass: "timing"``): only those are the throughput (a step
        without a pass is taken as timed)."""
        self.measuring = True  # a step ends inside the measured part of the run
        if step.get("pass") == "memory":
            self._memory_steps.append(dict(step))
            return False
        self._steps.append(dict(step))
        self._dirty = True
        return draw and self.redraw_if_due()

    @property
    def interval_s(self) -> float:
        """The shortest time between live redraws now (longer while measuring)."""
        return max(self.min_interval_s, self.quiet_redraw_s if self.measuring else 0.0)

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
        return max(0.0, self._last_draw + self.interval_s - time.monotonic())

    def flush(self) -> None:
        """Draw whatever is buffered and not drawn yet."""
        if self._dirty:
            self._draw()

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self.redraw_log.append((self._last_draw, self.measuring))
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
            plots.update_throughput(
                fw,
                [s["time_s"] for s in steps],
                [s.get("samples") for s in steps],
                disturbed=[bool(s.get("disturbed")) for s in steps],
                others_share=[s.get("others_share") for s in steps],
            )

    # -- a run ends ---------------------------------------------------------------------------
    def finish(self, result: RunResult, run: int | None = None, steps: int | None = None) -> None:
        """Final flush, then the exact result: categories replace the live total. A run that
        did not finish says so in every title (``run``: its number; ``steps``: how many were
        planned), so nothing of it reads as a complete run."""
        self.measuring = False  # the run has ended: this flush is not a live redraw
        self.flush()
        status = result.status
        which = "the run" if run is None else f"run {run}"
        done = plots.steps_done(result)
        of = f" of {steps}" if steps else ""
        ended = {
            "ok": "",
            "oom": f"{which} out of memory after {done}{of} steps: partial",
            "cancelled": f"{which} cancelled after {done}{of} steps: partial",
            "error": f"{which} failed",
        }[status]
        fw = self.figures.get("memory")
        if fw is not None:
            with fw.batch_update():
                if len(result.timeline):
                    tl = result.timeline
                    plots.update_timeline(fw, tl.t, tl.by_category, phase=tl.phase, marks=tl.marks)
                    for trace in fw.data:
                        if trace.name == LIVE_TRACE:
                            trace.x, trace.y = [], []
                    title = (
                        f"Tensor memory by category: peak {format_bytes(result.peak_bytes)}"
                        f" in {result.peak_phase}"
                    )
                    fw.layout.title.text = title if status == "ok" else f"{title} ({ended})"
                elif status != "ok":
                    live = any(
                        t.x is not None and len(t.x) for t in fw.data if t.name == LIVE_TRACE
                    )
                    fw.layout.title.text = f"Tensor memory: {ended}: " + (
                        "nothing measured (the line is its build)" if live else "nothing measured"
                    )
            sync_state(fw)
        fw = self.figures.get("process")
        if fw is not None:
            with fw.batch_update():
                if len(result.process):
                    # The pure figure names the parts this platform did not measure.
                    subtitle = plots.process_memory_figure(result).layout.title.subtitle.text
                    plots.update_process(fw, result.process.t, result.process.parts)
                    fw.layout.title.subtitle.text = subtitle or ""
                title = "Process memory (RSS)"
                fw.layout.title.text = title if status == "ok" else f"{title}: {ended}"
            sync_state(fw)
        fw = self.figures.get("throughput")
        if fw is not None:
            with fw.batch_update():
                if result.step_times_s:
                    timing = result.timing
                    n = len(result.step_times_s)
                    plots.update_throughput(
                        fw,
                        result.step_times_s,
                        result.samples_per_step,
                        disturbed=timing.step_disturbed[:n] if timing else self._flags(),
                        others_share=timing.step_others_share[:n] if timing else self._shares(),
                    )
                fw.layout.title.text = plots.throughput_title(result)
            sync_state(fw)

    def _flags(self) -> list[bool]:
        return [bool(s.get("disturbed")) for s in self._steps]

    def _shares(self) -> list[float | None]:
        return [s.get("others_share") for s in self._steps]

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
            fig.update_layout(title={"text": "No prediction", "subtitle": {"text": note}})
        else:
            fig = plots.prediction_figure(predicted, result)
            fig.update_layout(title={"subtitle": {"text": note}})
        sync_figure(fw, fig)

    def show_history(
        self,
        results: Sequence[RunResult],
        labels: Sequence[str],
        hover: Sequence[str] | None = None,
    ) -> None:
        """Redraw the comparison charts from the panel's runs (those that did not finish are
        marked and never compared: :func:`memlab.plots.peak_bars_figure`)."""
        fw = self.figures.get("history")
        if fw is not None:
            fig = plots.peak_bars_figure(results, labels=labels, baseline=0, hover=hover)
            bases = [b for b in plots.run_baselines(results) if b is not None]
            if bases:
                fig.layout.title.text = f"Peak memory by category (deltas vs {labels[min(bases)]})"
            sync_figure(fw, fig)
        fw = self.figures.get("tradeoff")
        if fw is not None:
            sync_figure(fw, plots.memory_throughput_figure(results, labels=labels))
