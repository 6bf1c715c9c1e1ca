"""``Panel``: knob widgets bound to an Experiment, Run/Stop, a status line and live charts.

    panel = memlab.ui.Panel(knobs=["batch_size"], experiment=Experiment(workload="cnn"))
    panel                      # shows it
    panel.set(batch_size=64); panel.run(); panel.wait()
    panel.history[-1].peak_bytes

Runs go through :func:`memlab.runner.start`: the run is in its own process and the callbacks
arrive on the runner's reader thread, so the kernel stays free while the charts grow. Those
callbacks only hand their data to the panel's :class:`~memlab.ui.dispatch.Dispatcher`; every
widget edit happens on the kernel's event loop (or, without one, on the thread that built the
panel, in :meth:`Panel.wait`). Nothing the learner does with a widget raises into the kernel:
a bad combination, a failed start or a failed redraw is said in the status line.

Quiet while measuring: the view must not slow the run it measures (the browser shares a
laptop's 2 cores with the worker). Samples arrive in batches (``on_samples``) and a batch costs
the kernel one list extend; while the measured block runs the charts redraw at most once every
``quiet_redraw_s`` seconds and the status line at most about once a second (charts.py says
what was measured).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from memlab.config import ConfigError, Experiment
from memlab.timeline import PeakReport, RunResult, format_bytes
from memlab.ui.charts import (
    CHARTS,
    DEFAULT_MAX_FPS,
    DEFAULT_QUIET_REDRAW_S,
    LiveCharts,
    is_measuring,
)
from memlab.ui.controls import (
    build_controls,
    experiment_from_controls,
    knob_field,
    resolve_knobs,
    set_controls,
    set_knob,
    smoke_mode,
    to_field,
)
from memlab.ui.dispatch import Dispatcher, Timer
from memlab.ui.messages import (
    DurationGuess,
    final_message,
    predict_duration,
    run_hover,
    run_labels,
    short_value,
)
from memlab.ui.predict import Predictor

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from memlab.comparing import Comparison
    from memlab.runner import RunHandle

__all__ = ["Panel", "run_labels", "peak_table_html", "compare_table_html"]

_log = logging.getLogger(__name__)

#: Status line colours by kind of message.
_COLORS = {
    "ready": "#555555",
    "running": "#1f5fa8",
    "ok": "#2e7d32",
    "oom": "#b26a00",
    "error": "#c62828",
    "cancelled": "#6d4c41",
    "invalid": "#c62828",
}
# The status line changes at most this often while the measured block runs (a message to the
# page each time); before it and after, as often as the charts redraw.
_QUIET_STATUS_S = 1.0
# How far a run has come; the status line only moves forward through these. The runner
# measures memory in tracked steps, then times as many untracked steps (step["pass"]).
_STARTING, _BUILDING, _WARMING, _MEMORY, _TIMING = range(5)
#: The pause between a run's tracked and timed steps, in which the page draws the memory pass
#: (4 charts take the browser 0.1-0.4 s of a 2-core laptop).
DEFAULT_SETTLE_S = 0.6
_PASS_WORDS = {"memory": ", measuring memory (tracked)", "timing": ", timing (untracked)"}


class _Inbox:
    """Samples handed from the runner's reader thread to the owner thread in batches: the
    reader appends under a lock, and posts one delivery only when none is pending, so a burst
    of samples costs the kernel one callback."""

    def __init__(
        self, post: Callable[[Callable[[], None]], None], deliver: Callable[[list[Any]], None]
    ) -> None:
        self._post, self._deliver = post, deliver
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._posted = False

    def put(self, items: Sequence[Any]) -> None:
        with self._lock:
            self._items.extend(items)
            if self._posted:
                return
            self._posted = True
        self._post(self._flush)

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._posted = False
        if items:
            self._deliver(items)


class Panel:
    """A control panel for one lab: knobs, Run/Stop/Baseline, status line, live charts, history.

    ``knobs``: the knob names to show (``None``: all of :data:`memlab.ui.KNOBS`; the group
    ``"data_loading"`` stands for data, workers, pin memory and prefetch). Fields without a
    knob keep ``experiment``'s values; the Baseline button sets the knobs back to it. ``smoke``
    (default: env ``MEMLAB_SMOKE=1``) cuts runs to 2 steps, 1 warm-up step and a small data
    set. With ``auto_run`` a change of a knob starts a run once the knobs have been still for
    ``debounce_s`` seconds, cancelling a run in progress, unless the run is predicted (from
    the history) to take longer than ``long_run_s`` seconds: then the status line says so and
    Run starts it. ``charts`` picks among ``memory``, ``throughput``, ``process``,
    ``history``, ``tradeoff``. Live redraws: at most ``max_fps`` a second before the measured
    block, at most one every ``quiet_redraw_s`` seconds while it runs. While the run times its
    steps (the untracked pass after the tracked one) the view keeps still: the memory pass is
    drawn at its end, during a pause of ``settle_s`` seconds the runner makes before timing, and
    nothing is sent to the page again until the run has ended (a redraw then would slow the very
    steps whose time is reported).

    ``runs`` keeps every run that ended (the history chart shows them all: a cancelled, failed
    or oom run hatched, with its status, and never compared); ``history`` the runs that ended
    ``ok`` or ``oom`` (an oom run's peak is what it reached).

    Threads: the widgets are edited on the event loop the panel was built on (the kernel's),
    never on the runner's threads; without a running loop (a script, pytest), on the thread
    that built it, while that thread is in :meth:`wait`, :meth:`wait_prediction` or
    :meth:`drain`.
    """

    def __init__(
        self,
        knobs: Sequence[str] | None = None,
        experiment: Experiment | None = None,
        *,
        smoke: bool | None = None,
        auto_run: bool = False,
        debounce_s: float = 0.4,
        charts: Sequence[str] = CHARTS,
        max_fps: float = DEFAULT_MAX_FPS,
        quiet_redraw_s: float = DEFAULT_QUIET_REDRAW_S,
        long_run_s: float = 15.0,
        settle_s: float = DEFAULT_SETTLE_S,
        warm: bool = True,
        timeout_s: float | None = None,
        predict: bool = True,
    ) -> None:
        if experiment is None:
            experiment = Experiment()
        if not isinstance(experiment, Experiment):
            raise TypeError(
                f"experiment must be a memlab.Experiment, got {type(experiment).__name__}"
            )
        if not isinstance(settle_s, (int, float)) or not 0 <= settle_s <= 10:
            raise ValueError(f"settle_s must be seconds between 0 and 10, got {settle_s!r}")
        self.settle_s = float(settle_s)
        if not isinstance(long_run_s, (int, float)) or long_run_s <= 0:
            raise ValueError(f"long_run_s must be a number of seconds > 0, got {long_run_s!r}")
        self._base = experiment
        self._initial = experiment
        self.smoke = smoke_mode(smoke)
        self.auto_run = auto_run
        self.debounce_s = debounce_s
        self.long_run_s = float(long_run_s)
        self.warm = warm
        self.timeout_s = timeout_s
        self.knobs: tuple[str, ...] = resolve_knobs(knobs)
        if not isinstance(debounce_s, (int, float)) or debounce_s < 0:
            raise ValueError(f"debounce_s must be a number of seconds >= 0, got {debounce_s!r}")
        # Built here, in the cell: it captures the kernel's event loop, where every widget
        # edit of this panel happens.
        self._ui = Dispatcher()
        self._ui.after_drain = self._after_drain

        self._knob_widgets = build_controls(experiment, self.knobs)
        self._run_button = widgets.Button(
            description="Run",
            button_style="primary",
            icon="play",
            tooltip="Run the experiment these settings describe",
        )
        self._stop_button = widgets.Button(
            description="Stop", icon="stop", disabled=True, tooltip="Cancel the run in progress"
        )
        self._baseline_button = widgets.Button(
            description="Baseline",
            icon="undo",
            tooltip="Set the knobs back to this panel's first experiment",
        )
        # As wide as their labels, never squeezed by a long status line beside them (the
        # default width and flex cut "Baseline" to "B..." at 1280 px).
        for b in (self._run_button, self._stop_button, self._baseline_button):
            b.layout = widgets.Layout(width="auto", min_width="max-content", flex="0 0 auto")
        #: name -> widget: every knob shown, plus the "run", "stop" and "baseline" buttons.
        self.controls: dict[str, widgets.Widget] = {
            **self._knob_widgets,
            "run": self._run_button,
            "stop": self._stop_button,
            "baseline": self._baseline_button,
        }
        self.status_line = widgets.HTML(layout=widgets.Layout(margin="0 0 0 12px"))
        self._charts = LiveCharts(charts, max_fps=max_fps, quiet_redraw_s=quiet_redraw_s)
        #: chart name -> its FigureWidget (updated in place).
        self.figures: dict[str, go.FigureWidget] = self._charts.figures

        #: Every run that ended, oldest first (what the history chart shows).
        self.runs: list[RunResult] = []
        #: The runs that ended ok or oom, oldest first.
        self.history: list[RunResult] = []
        #: The handle of the latest run started, and the result of the latest run finished.
        self.handle: RunHandle | None = None
        self.result: RunResult | None = None
        #: How many runs this panel started (auto runs included).
        self.runs_started = 0
        #: Why the latest auto run did not start (a long predicted run), or None.
        self.held_back: DurationGuess | None = None

        self._setup_s: list[float | None] = []  # per run in self.runs: its build time
        self._gen = 0  # bumped per run; callbacks of an older run are ignored
        self._timer: Timer | None = None  # the debounced auto run
        self._redraw_timer: Timer | None = None  # a live redraw that was not due yet
        self._idle = True  # no run in progress
        self._suspend = 0
        self._status_text = ""
        self._status_kind = "ready"
        self._planned: Experiment | None = None  # the experiment of the run in progress
        self._stage = _STARTING  # how far the run in progress has come (forward only)
        self._shown_step = 0
        self._last_status = 0.0
        self._progress_dirty = False
        self._stopping = False
        self._still = False  # the run's steps are being timed: no edit reaches the page

        for w in self._knob_widgets.values():
            w.observe(self._on_knob_change, names="value")
        # Clicks arrive on the loop's thread; post() runs them there at once.
        self._run_button.on_click(lambda _b: self._ui.post(self._run_quietly))
        self._stop_button.on_click(lambda _b: self._ui.post(self.stop))
        self._baseline_button.on_click(lambda _b: self._ui.post(self.back_to_baseline))

        knob_box = widgets.HBox(
            list(self._knob_widgets.values()), layout=widgets.Layout(flex_flow="row wrap")
        )
        buttons = widgets.HBox(
            [self._run_button, self._stop_button, self._baseline_button, self.status_line],
            layout=widgets.Layout(align_items="center"),
        )
        grid = widgets.GridBox(
            list(self._charts.cells.values()),
            layout=widgets.Layout(grid_template_columns="repeat(2, minmax(0, 1fr))", width="100%"),
        )
        #: What was alive at the peak of the run shown: filled by a click on the timeline
        #: (``show_peak``).
        self.peak_view = widgets.HTML()
        #: The latest ok run against the ok run before it (``memlab.compare``), once there are
        #: two (``show_compare``).
        self.compare_view = widgets.HTML()
        #: The comparison ``compare_view`` shows, or None.
        self.comparison: Comparison | None = None
        fw = self.figures.get("memory")
        if fw is not None:
            # The category traces are updated in place (plots.update_timeline), so the
            # handlers stay with them. Clicks arrive on the loop's thread; post() runs there.
            for trace in fw.data:
                trace.on_click(self._on_timeline_click)
        #: The ipywidgets container to display.
        self.widget = widgets.VBox([knob_box, buttons, grid, self.peak_view, self.compare_view])

        #: Predicts each valid setting before it runs (``None`` without a prediction chart).
        self.predictor: Predictor | None = (
            Predictor(self._charts.show_prediction, self._ui)
            if predict and "prediction" in self.figures
            else None
        )
        exp = self._validate()
        if exp is not None and self.predictor is not None:
            self.predictor.request(exp)
        if warm:
            self._warm_up()

    # -- what the controls describe -----------------------------------------------------------
    @property
    def experiment(self) -> Experiment:
        """The Experiment the controls describe now (smoke sizes applied in smoke mode).

        Raises :class:`ConfigError` for an invalid combination (the status line shows it too).
        """
        return experiment_from_controls(self._base, self._knob_widgets, smoke=self.smoke)

    @experiment.setter
    def experiment(self, exp: Experiment) -> None:
        if not isinstance(exp, Experiment):
            raise TypeError(f"experiment must be a memlab.Experiment, got {type(exp).__name__}")
        self._suspend += 1
        try:
            self._base = exp
            set_controls(self._knob_widgets, exp)
        finally:
            self._suspend -= 1
        self._after_change()

    def set(self, **changes: Any) -> Panel:
        """Set Experiment fields (``batch_size=64``, ``budget_bytes="300MB"``...): shown knobs
        move, other fields change the panel's base experiment. One change event in all (one
        auto run at most). An invalid combination is shown in the status line, nothing set."""
        by_field = {knob_field(k): k for k in self._knob_widgets}
        try:
            # Validate the whole new combination before touching anything.
            current = {knob_field(k): to_field(k, w.value) for k, w in self._knob_widgets.items()}
            new_base = self._base.replace(**{**current, **changes})
        except ConfigError as e:
            self._set_status(str(e), "invalid")
            return self
        self._suspend += 1
        try:
            self._base = new_base
            for f, k in by_field.items():
                set_knob(self._knob_widgets[k], k, getattr(new_base, f))
        finally:
            self._suspend -= 1
        self._after_change()
        return self

    def back_to_baseline(self) -> None:
        """Set every knob back to the experiment the panel was built with (one change: with
        ``auto_run``, one run at most)."""
        self.experiment = self._initial

    @property
    def status(self) -> str:
        """The status line as plain text."""
        return self._status_text

    # -- running ------------------------------------------------------------------------------
    def run(self) -> RunHandle | None:
        """Start a run with the current settings (cancelling one in progress) and return its
        handle at once; ``None`` (and the reason in the status line) if it could not start."""
        try:
            exp = self.experiment
        except ConfigError as e:
            self._set_status(str(e), "invalid")
            return None
        self._cancel_timer()
        self._supersede()
        self._gen += 1
        gen = self._gen
        self._idle = False
        self._planned = exp
        self._stage, self._shown_step = _STARTING, 0
        self._progress_dirty = False
        self._stopping = False
        self._still = False
        self.held_back = None
        post = self._ui.post  # the callbacks run on the runner's reader thread: hand over only
        inbox = _Inbox(post, partial(self._on_samples, gen))
        try:
            self._charts.reset(len(self.runs) + 1)
            from memlab.runner import start

            handle = start(
                exp,
                on_samples=inbox.put,
                on_step=lambda s: post(partial(self._on_step, gen, s)),
                on_done=lambda r: post(partial(self._on_done, gen, r)),
                warm=self.warm,
                timeout_s=self.timeout_s,
                settle_s=self.settle_s,
            )
        except Exception as e:  # noqa: BLE001 - a failed start is a status, not a traceback
            _log.exception("memlab.ui: the run did not start")
            self._idle = True
            self._set_status(f"the run did not start: {type(e).__name__}: {e}", "error")
            return None
        self.handle = handle
        self.runs_started += 1
        self._stop_button.disabled = False
        self._set_status(f"starting run {len(self.runs) + 1} ({self._describe(exp)})…", "running")
        return handle

    def _run_quietly(self) -> None:
        self.run()

    def stop(self) -> None:
        """Cancel the run in progress (and an auto run waiting to start)."""
        self._cancel_timer()
        h = self.handle
        if h is not None and not h.done():
            self._stopping = True
            h.cancel()
            self._set_status("stopping…", "running")

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until no run is in progress or waiting to start; the latest result.

        On the thread that owns the panel (a cell in the kernel: the cell blocks the event
        loop) the charts keep growing meanwhile: the updates are applied here while it waits.
        """
        if not self._ui.pump(lambda: self._timer is None and self._idle, timeout):
            raise TimeoutError(f"a run is still going after {timeout} s (stop() ends it)")
        return self.result

    def drain(self) -> int:
        """Apply the updates the runner handed over and the timers that are due, now (on the
        thread that owns the panel; the event loop does this by itself). How many ran."""
        return self._ui.drain()

    def predict_duration(self, exp: Experiment | None = None) -> DurationGuess | None:
        """How long ``exp`` (default: the current settings) is predicted to run, from the
        finished run most like it (:func:`memlab.ui.messages.predict_duration`); None without
        one."""
        return predict_duration(exp or self.experiment, self.runs, self._setup_s)

    @property
    def prediction(self) -> Any:
        """The latest prediction (a :class:`memlab.Estimate`), or ``None``."""
        return None if self.predictor is None else self.predictor.latest

    def prediction_error_pct(self) -> float | None:
        """(predicted - measured) / measured of the peak in %, once the predicted settings ran
        to the end (None for a run that did not finish)."""
        return None if self.predictor is None else self.predictor.error_pct()

    def wait_prediction(self, timeout: float | None = 60.0) -> Any:
        """Block until the prediction of the current settings is drawn; return it."""
        if self.predictor is not None and not self.predictor.wait(timeout):
            raise TimeoutError(f"no prediction after {timeout} s")
        return self.prediction

    def clear_history(self) -> None:
        """Forget the earlier runs (the next run becomes the baseline)."""
        self.history.clear()
        self.runs.clear()
        self._setup_s.clear()
        self._charts.show_history([], [])
        self.peak_view.value = ""
        self.compare_view.value = ""
        self.comparison = None

    def show_peak(self, result: RunResult | None = None, *, rows: int = 10) -> None:
        """List what was alive at the peak of ``result`` (default: the run shown), the
        largest blocks first, under the charts. What a click on the timeline calls."""
        result = self.result if result is None else result
        if result is None:
            self.peak_view.value = "<i>No run yet: the peak's allocations appear after one.</i>"
            return
        self.peak_view.value = peak_table_html(result, rows=rows)

    def show_compare(self) -> Comparison | None:
        """Compare the latest ok run with the ok run before it (``memlab.compare``) in
        ``compare_view``; clears it with fewer than two ok runs. Called when a run ends."""
        ok = [(i, r) for i, r in enumerate(self.runs, 1) if r.status == "ok"]
        if len(ok) < 2:
            self.compare_view.value = ""
            self.comparison = None
            return None
        (ia, a), (ib, b) = ok[-2], ok[-1]
        from memlab.comparing import compare

        c = compare(a, b)
        self.comparison = dataclasses.replace(c, a_id=f"run {ia}", b_id=f"run {ib}")
        self.compare_view.value = compare_table_html(self.comparison)
        return self.comparison

    def _on_timeline_click(self, _trace: Any, _points: Any, _state: Any) -> None:
        self._ui.post(self.show_peak)

    def close(self) -> None:
        """Stop any run and the predictions, and close the widgets."""
        self.stop()
        if self.predictor is not None:
            self.predictor.close()  # an estimate in flight ends in the worker, unseen
        self._cancel_timer()
        self._ui.close()
        self.widget.close()
        for w in self.controls.values():
            w.close()
        for fw in self.figures.values():
            fw.close()
        for cell in self._charts.cells.values():
            cell.close()

    # -- display ------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (
            f"Panel(knobs={list(self.knobs)}, runs={self.runs_started}, "
            f"history={len(self.history)}, status={self.status!r})"
        )

    # -- internals ----------------------------------------------------------------------------
    def _warm_up(self) -> None:
        try:
            from memlab.runner import warm_up

            warm_up()
        except Exception:  # noqa: BLE001 - only an optimisation; the run will start a worker
            _log.exception("memlab.ui: warm-up failed")

    def _describe(self, exp: Experiment) -> str:
        fields = [knob_field(k) for k in self.knobs][:4] or ["workload", "batch_size"]
        values = {f: exp.workload_name if f == "workload" else getattr(exp, f) for f in fields}
        return ", ".join(f"{f}={short_value(f, v)}" for f, v in values.items())

    def _set_status(self, text: str, kind: str) -> None:
        self._status_text, self._status_kind = text, kind
        self._last_status = time.monotonic()
        lines = html.escape(text).splitlines() or [""]
        body = "<br>".join(lines[:12])
        self.status_line.value = f'<span style="color:{_COLORS.get(kind, "#333")}">{body}</span>'

    def _validate(self) -> Experiment | None:
        """Check the controls; say what is wrong, or clear an earlier complaint."""
        try:
            exp = self.experiment
        except ConfigError as e:
            self._set_status(str(e), "invalid")
            return None
        if self._status_kind in ("ready", "invalid"):
            self._set_status(
                f"ready: {self._describe(exp)} (press Run)"
                if not self.auto_run
                else f"ready: {self._describe(exp)}",
                "ready",
            )
        return exp

    def _on_knob_change(self, _change: Mapping[str, Any]) -> None:
        if self._suspend:
            return
        self._ui.post(self._after_change)  # on the owner thread (where a change arrives)

    def _after_change(self) -> None:
        try:
            if self.auto_run:
                # A change makes the run in progress stale: cancel it, and restart the
                # debounce clock; the new run starts when the knobs have been still.
                self._cancel_timer()
                self._supersede()
            exp = self._validate()
            if exp is not None and self.predictor is not None:
                self.predictor.request(exp)
            if self.auto_run and exp is not None:
                # A timer of the loop (or of wait()), so the run starts on the owner thread.
                self._timer = self._ui.call_later(self.debounce_s, self._fire)
        except Exception as e:  # noqa: BLE001 - an observer must never raise into the kernel
            _log.exception("memlab.ui: change handling failed")
            self._set_status(f"internal error: {type(e).__name__}: {e}", "error")

    def _fire(self) -> None:
        """The debounced auto run: starts unless it is predicted to be long (then it waits
        for Run, and the status line says how long and from which run)."""
        self._timer = None
        try:
            exp = self.experiment
        except ConfigError as e:
            self._set_status(str(e), "invalid")
            return
        guess = self.predict_duration(exp)
        if guess is not None and guess.seconds > self.long_run_s:
            self.held_back = guess
            self._set_status(
                f"this run is predicted to take ~{guess.seconds:.0f} s (from run #{guess.run}): "
                "press Run to start it",
                "ready",
            )
            return
        self.run()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _supersede(self) -> None:
        """Cancel the run in progress; its remaining callbacks are ignored from now on."""
        h = self.handle
        if h is not None and not h.done():
            self._gen += 1
            h.cancel()
            self._idle = True
            self._stop_button.disabled = True
            self._set_status("the run in progress was cancelled: the settings changed", "cancelled")

    # Runner callbacks, handed over by the dispatcher: on the owner thread; never raising.
    def _on_samples(self, gen: int, samples: Sequence[Mapping[str, Any]]) -> None:
        if gen == self._gen:
            self._charts.add_samples(samples)  # drawn once per batch at most: _after_drain
            self._progress_dirty = True

    def _on_step(self, gen: int, step: Mapping[str, Any]) -> None:
        if gen != self._gen:
            return
        self._charts.add_step(step, draw=False)
        self._progress_dirty = True
        of = step.get("of")
        last_tracked = (
            step.get("pass") == "memory" and of is not None and int(step.get("step") or 0) >= of
        )
        if last_tracked and not self._still:
            # The memory pass is over: draw it now (the runner pauses settle_s for the page
            # to render it), say what comes, then keep still while the steps are timed.
            try:
                self._charts.flush()
                self._show_progress()
                n = int(step.get("of") or 0)
                self._set_status(
                    f"running: memory measured ({n} tracked steps); timing {n} untracked "
                    "steps, the charts wait so as not to slow them…",
                    "running",
                )
            except Exception:  # noqa: BLE001
                _log.exception("memlab.ui: live update failed")
            self._still = True
        elif step.get("pass") == "timing":
            self._still = True

    def _status_interval(self) -> float:
        return _QUIET_STATUS_S if self._charts.measuring else self._charts.min_interval_s

    def _after_drain(self) -> None:
        """After a batch of callbacks: one redraw and one status update if due, else a timer
        for when they are."""
        try:
            if self._idle or self._still:
                return  # still: the steps are being timed; everything is drawn at the end
            self._charts.redraw_if_due()
            status_in = None
            if self._progress_dirty:
                status_in = self._last_status + self._status_interval() - time.monotonic()
                if status_in <= 0:
                    self._show_progress()
                    status_in = None
            if self._redraw_timer is None:
                waits = [w for w in (self._charts.next_draw_in(), status_in) if w is not None]
                if waits:
                    self._redraw_timer = self._ui.call_later(min(waits), self._redraw_due)
        except Exception:  # noqa: BLE001
            _log.exception("memlab.ui: live update failed")

    def _redraw_due(self) -> None:
        self._redraw_timer = None  # the drain that ran this timer redraws (_after_drain)

    def _show_progress(self) -> None:
        """The status line of the run in progress; it only moves forward: building ->
        warming up (only with warm-up steps) -> step i/N of the memory pass -> step i/N of
        the timing pass -> done."""
        self._progress_dirty = False
        h = self.handle
        if h is None or self._stopping or self._status_kind != "running" or h.done():
            return  # a "stopping…" or final message stays on screen
        exp = self._planned
        n_steps = exp.steps if exp is not None else 0
        timed, tracked = self._charts.steps, self._charts.memory_steps
        samples = self._charts.samples
        last = samples[-1] if samples else {}
        steps = timed or tracked
        if timed:
            stage = _TIMING
        elif tracked or (last and is_measuring(last)):
            stage = _MEMORY
        elif last.get("phase") == "warmup" and exp is not None and exp.warmup > 0:
            stage = _WARMING
        elif last:
            stage = _BUILDING
        else:
            return
        n = max(int(s.get("step") or 0) for s in steps) if steps else 0
        if (stage, n) < (self._stage, self._shown_step):
            return  # never back (a late sample of an earlier phase)
        if stage == _BUILDING:
            text = "running: building the workload…"
        elif stage == _WARMING:
            text = f"running: warming up ({exp.warmup if exp else 0} steps, not measured)…"
        elif steps:
            step = steps[-1]
            dt = float(step.get("time_s") or 0.0)
            rate = f" · {step.get('samples', 0) / dt:.0f} samples/s" if dt > 0 else ""
            tensors = f" · tensors {format_bytes(last.get('tensor_bytes'))}" if last else ""
            how = _PASS_WORDS.get(str(step.get("pass")), "")
            text = f"running: step {n}/{n_steps}{how}{rate}{tensors}"
        else:
            text = f"running: step 1/{n_steps} (measuring)…"
        self._stage, self._shown_step = stage, n
        if text != self._status_text:
            self._set_status(text, "running")

    def _on_done(self, gen: int, result: RunResult) -> None:
        if gen != self._gen:
            return
        try:
            self.result = result
            self._stop_button.disabled = True
            if self._redraw_timer is not None:
                self._redraw_timer.cancel()
                self._redraw_timer = None
            self.runs.append(result)
            self._setup_s.append(self._setup_time(result))
            if result.status in ("ok", "oom"):
                self.history.append(result)
            planned = self._planned.steps if self._planned is not None else None
            self._charts.finish(result, len(self.runs), planned)
            self._charts.show_history(self.runs, run_labels(self.runs), run_hover(self.runs))
            # The previous run's drill-down no longer matches the timeline shown.
            self.peak_view.value = _PEAK_HINT if result.peak_report is not None else ""
            self.show_compare()
            estimate = None
            if self.predictor is not None:
                self.predictor.measured(result)
                if result.experiment is not None:
                    estimate = self.predictor.estimate_for(result.experiment)
            # Last: a page that waits for "done" then sees every chart already redrawn.
            text = final_message(
                result, runs_shown=len(self.runs), steps=planned, estimate=estimate
            )
            self._set_status(text, result.status)
        except Exception as e:  # noqa: BLE001
            _log.exception("memlab.ui: drawing the result failed")
            self._set_status(
                f"the run ended ({result.status}) but drawing it failed: {type(e).__name__}: {e}",
                "error",
            )
        finally:
            self._idle = True

    def _setup_time(self, result: RunResult) -> float | None:
        """Seconds from the job's start to its warm-up: the measured block began at the first
        step's end time less its duration (both on the worker's clock), and the warm-up's
        steps took about the median step each."""
        steps = self._charts.memory_steps or self._charts.steps
        med = result.step_time_median_s
        if not steps or med is None:
            return None
        first = steps[0]
        try:
            began = float(first["t"]) - float(first["time_s"])
        except (KeyError, TypeError, ValueError):
            return None
        warmup = int((result.experiment or {}).get("warmup") or 0)
        return max(0.0, began - warmup * med)


_PEAK_HINT = (
    "<i style='color:#555555'>Click the tensor memory chart to list what was alive at the peak.</i>"
)
_CELL = "style='text-align:{}; padding:1px 8px'"


def _row(cells: Sequence[str], aligns: str, tag: str = "td") -> str:
    align = {"l": "left", "r": "right"}
    return (
        "<tr>"
        + "".join(
            f"<{tag} {_CELL.format(align[a])}>{html.escape(c)}</{tag}>"
            for c, a in zip(cells, aligns, strict=True)
        )
        + "</tr>"
    )


def peak_table_html(result: RunResult, *, rows: int = 10) -> str:
    """An HTML table of the largest blocks alive at ``result``'s peak (``RunResult.peak_report``):
    bytes, category, op, module (phase), source line; and how much the rest holds."""
    rep: PeakReport | None = result.peak_report
    if rep is None:
        return "<i>This run has no peak drill-down (it was measured without one).</i>"
    head = _row(["bytes", "category", "op", "module (phase)", "line"], "rllll", "th")
    body = []
    for b in rep.blocks[:rows]:
        where = "alive at entry" if b.phase == "entry" else f"{b.module or '-'} ({b.phase})"
        body.append(
            _row(
                [format_bytes(b.bytes), b.category, b.op or "-", where, b.line or "-"],
                "rllll",
            )
        )
    shown = sum(b.bytes for b in rep.blocks[:rows])
    rest = rep.total_bytes - shown
    n_rest = rep.n_blocks - min(rows, len(rep.blocks))
    if n_rest > 0:
        body.append(_row([format_bytes(rest), f"{n_rest} more blocks", "", "", ""], "rllll"))
    caption = (
        f"Alive at the peak: {format_bytes(rep.total_bytes)} in {rep.n_blocks} blocks at "
        f"{rep.t_s:.3f} s ({rep.phase}), largest first"
    )
    return (
        f"<table><caption style='text-align:left'>{html.escape(caption)}</caption>"
        f"{head}{''.join(body)}</table>"
    )


_COMPARE_SECTIONS = ("total", "at peak", "speed")


def compare_table_html(c: Comparison) -> str:
    """An HTML table of ``c``: the peaks, each category's bytes at the peak and the speed, b
    against a (``memlab.compare``'s own figures)."""
    a_label, b_label = c.labels
    head = _row(["figure", a_label, b_label, "delta", "ratio"], "lrrrr", "th")
    body = []
    for d in c.deltas:
        if d.section not in _COMPARE_SECTIONS or (d.a in (None, 0) and d.b in (None, 0)):
            continue
        ratio = "n/a" if d.ratio is None else f"x{d.ratio:.3g}"
        name = d.name if d.section != "at peak" else f"{d.name} at peak"
        body.append(
            _row([name, d.text(d.a), d.text(d.b), d.text(d.delta, signed=True), ratio], "lrrrr")
        )
    caption = f"{b_label} against {a_label} (memlab.compare)"
    return (
        f"<table><caption style='text-align:left'>{html.escape(caption)}</caption>"
        f"{head}{''.join(body)}</table>"
    )
