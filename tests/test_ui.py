"""memlab.ui driven headlessly: set ``.value``, press buttons, check runs, status and figures.

The workloads are user factories (module-level, so the worker process can import them), so
these tests need neither the built-in workloads nor the knobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ipywidgets")

from memlab.config import MIB, ConfigError, Experiment  # noqa: E402
from memlab.runner import shutdown_service, shutdown_warm_worker  # noqa: E402
from memlab.timeline import CATEGORIES, RunResult, Timing, format_bytes  # noqa: E402
from memlab.ui import Panel, run_labels, smoke_experiment  # noqa: E402
from memlab.ui.charts import LIVE_TRACE, LiveCharts  # noqa: E402
from memlab.workloads import Workload  # noqa: E402

from .factories import paced, slow, tiny  # noqa: E402


def broken(exp: Any, device: str) -> Workload:
    raise RuntimeError("this factory is broken on purpose")


@pytest.fixture(scope="module", autouse=True)
def _no_worker_left() -> Iterator[None]:
    yield
    shutdown_warm_worker()
    shutdown_service()


def make_panel(workload: Any = tiny, **kw: Any) -> Panel:
    exp = Experiment(workload=workload, batch_size=32, steps=3, warmup=1, device="cpu")
    kw.setdefault("smoke", False)
    return Panel(experiment=exp, **kw)


def trace(fig: Any, name: str) -> Any:
    (t,) = [t for t in fig.data if t.name == name]
    return t


def until(panel: Panel, cond: Callable[[], bool], timeout: float = 60) -> bool:
    """Poll ``cond`` while applying the panel's updates (what the kernel's loop does)."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        panel.drain()
        time.sleep(0.02)
    return cond()


def record_senders(panel: Panel) -> list[str]:
    """The thread of every message the panel's widgets send to the page."""
    threads: list[str] = []
    for w in [*panel.figures.values(), panel.status_line, *panel.controls.values()]:
        send = w._send

        def recorded(msg: Any, buffers: Any = None, send: Any = send) -> None:
            threads.append(threading.current_thread().name)
            send(msg, buffers)

        w._send = recorded
    return threads


def test_memlab_import_does_not_import_ipywidgets() -> None:
    code = (
        "import sys, memlab, memlab.config, memlab.runner, memlab.timeline; "
        "memlab.Experiment; assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_knobs_limit_the_panel_and_others_keep_the_experiments_values() -> None:
    exp = Experiment(workload=tiny, batch_size=16, precision="amp-bf16", checkpointing="off")
    p = Panel(knobs=["batch_size"], experiment=exp, smoke=False, warm=False)
    assert set(p.controls) == {"batch_size", "run", "stop", "baseline"}
    knob_box = p.widget.children[0]
    assert list(knob_box.children) == [p.controls["batch_size"]]
    p.controls["batch_size"].value = 48
    assert p.experiment == exp.replace(batch_size=48)  # every other field as given
    assert p.experiment.precision == "amp-bf16"
    loading = Panel(knobs=["data_loading", "budget"], experiment=exp, smoke=False, warm=False)
    assert set(loading.controls) == {
        "data",
        "num_workers",
        "pin_memory",
        "prefetch_factor",
        "budget",
        "run",
        "stop",
        "baseline",
    }
    loading.controls["budget"].value = 300  # MiB, the charts' unit
    assert loading.experiment.budget_bytes == 300 * MIB
    loading.controls["budget"].value = 0
    assert loading.experiment.budget_bytes is None
    with pytest.raises(ConfigError, match="knob must be one of"):
        Panel(knobs=["batchsize"], experiment=exp, warm=False)
    all_knobs = Panel(experiment=exp, smoke=False, warm=False)
    assert all_knobs.experiment == exp
    all_knobs.experiment = exp.replace(batch_size=2000, mode="inference", precision="int8")
    assert all_knobs.controls["batch_size"].value == 2000  # the slider widened to show it
    assert all_knobs.controls["precision"].value == "int8"
    assert all_knobs.status.startswith("ready")
    bundle = all_knobs._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_smoke_mode_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = Experiment(workload=tiny, batch_size=32, steps=20, warmup=3, data_size=4096)
    p = Panel(experiment=exp, smoke=True, warm=False)
    assert (p.experiment.steps, p.experiment.warmup, p.experiment.data_size) == (2, 1, 256)
    p.controls["batch_size"].value = 1000  # a batch larger than the smoke data set still fits
    assert p.experiment.data_size == 1000
    monkeypatch.setenv("MEMLAB_SMOKE", "1")
    assert Panel(experiment=exp, warm=False).experiment.steps == 2
    monkeypatch.setenv("MEMLAB_SMOKE", "0")
    assert Panel(experiment=exp, warm=False).experiment.steps == 20
    assert smoke_experiment(exp, batch_size=8).batch_size == 8


def test_invalid_setting_is_shown_and_starts_no_run() -> None:
    p = make_panel(knobs=["mode", "precision", "batch_size"], warm=False)
    p.controls["precision"].value = "int8"  # int8 is for inference only
    assert "int8" in p.status and "inference" in p.status
    assert "int8" in p.status_line.value
    with pytest.raises(ConfigError):
        p.experiment  # noqa: B018 - the property is what is tested
    p.controls["run"].click()  # must not raise
    assert p.run() is None
    assert p.handle is None and p.runs_started == 0
    p.controls["mode"].value = "inference"
    assert p.status.startswith("ready") and p.experiment.precision == "int8"
    # set(): an invalid combination changes nothing and says why
    p.set(mode="train")
    assert "int8" in p.status and p.controls["mode"].value == "inference"
    p.set(batch_size=8, steps=2)
    assert p.controls["batch_size"].value == 8 and p.experiment.steps == 2


def test_run_updates_figures_in_place_and_history_compares_runs() -> None:
    p = make_panel()
    figs = {name: id(fw) for name, fw in p.figures.items()}
    p.controls["batch_size"].value = 64
    assert p.experiment.batch_size == 64
    t0 = time.monotonic()
    p.controls["run"].click()
    r = p.wait(120)
    elapsed = time.monotonic() - t0
    assert r is not None and r.status == "ok", r and r.error
    assert p.runs_started == 1 and p.history == [r]
    assert p.status.startswith("done") and "samples/s" in p.status
    assert {name: id(fw) for name, fw in p.figures.items()} == figs  # the same widgets

    # memory: the exact category timeline replaced the live total
    mem = p.figures["memory"]
    tl = r.timeline
    assert 0 < len(tl) <= 4000  # drawn without thinning, so every event is on screen
    for c in CATEGORIES:
        np.testing.assert_allclose(trace(mem, c).x, tl.t)
        np.testing.assert_allclose(trace(mem, c).y, tl.by_category[c] / MIB)
    assert len(trace(mem, LIVE_TRACE).x) == 0
    assert any(s.name and s.name.startswith("phase:") for s in mem.layout.shapes)
    # ...and the synced widget state is the latest, so a page that attaches later sees it
    (synced,) = [d for d in mem._widget_data if d.get("name") == "parameters"]
    np.testing.assert_allclose(synced["y"], tl.by_category["parameters"] / MIB)
    # throughput: one point per measured step
    thr = p.figures["throughput"]
    steps = np.asarray(r.step_times_s)
    np.testing.assert_allclose(trace(thr, "step time (ms)").y, steps * 1e3)
    np.testing.assert_allclose(trace(thr, "samples/s").y, 64 / steps)
    # process memory: the RSS parts of the run
    proc = p.figures["process"]
    anon = r.process.parts["rss_anon"]
    assert anon is not None
    np.testing.assert_allclose(trace(proc, "anonymous").y, anon / MIB)
    # live redraws were throttled: 4 a second at most before measuring, one per 2 s while
    # measuring, then one when the memory pass ended (drawn in the runner's pause before the
    # timed steps; nothing after it until the final flush)
    assert 1 <= p._charts.redraws <= elapsed * 4 + 3
    measured = [t for t, m in p._charts.redraw_log if m]
    assert measured, "the memory pass was not drawn when it ended"
    in_pass = measured[:-1]
    assert all(b - a >= 2.0 - 1e-3 for a, b in zip(in_pass, in_pass[1:], strict=False))

    p.controls["batch_size"].value = 256
    p.controls["run"].click()
    r2 = p.wait(120)
    assert r2 is not None and r2.status == "ok"
    assert p.history == [r, r2] and p.runs_started == 2
    labels = run_labels(p.history)
    assert labels == ["#1", "#2 batch_size=256"]
    bars = p.figures["history"]
    for c in CATEGORIES:
        bar = trace(bars, c)
        assert list(bar.x) == labels
        np.testing.assert_allclose(
            bar.y, [r.peak_by_category[c] / MIB, r2.peak_by_category[c] / MIB]
        )
        delta = r2.peak_by_category[c] - r.peak_by_category[c]
        assert list(bar.customdata) == [0, delta]
    assert trace(bars, "inputs").customdata[1] > 0  # a 4x batch has 4x the inputs
    notes = [a.text for a in bars.layout.annotations if a.name == "delta"]
    assert len(notes) == 2 and "baseline" in notes[0] and "+" in notes[1]
    tradeoff = p.figures["tradeoff"]
    assert len(tradeoff.data[0].x) == 2


def test_stop_cancels_a_slow_run() -> None:
    p = make_panel(slow)
    p.set(steps=50)
    h = p.run()
    assert h is not None
    deadline = time.monotonic() + 60
    while not h.steps and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.steps, "no step arrived"
    p.controls["stop"].click()
    r = p.wait(30)
    assert r is not None and r.status == "cancelled"
    assert p.status.startswith("cancelled"), p.status
    assert p.history == []  # a cancelled run is not compared against...
    assert p.runs == [r]  # ...but shown, marked
    assert list(trace(p.figures["history"], "parameters").x) == ["#1 (cancelled)"]
    assert "cancelled" in p.figures["memory"].layout.title.text
    assert "cancelled" in p.figures["throughput"].layout.title.text
    assert p.controls["stop"].disabled


def test_oom_and_error_are_said_in_the_status_line() -> None:
    p = make_panel()
    p.set(budget_bytes=4096)  # far below the tiny model's parameters
    p.run()
    r = p.wait(120)
    assert r is not None and r.status == "oom"
    assert p.status.startswith("out of memory"), p.status
    # the tiny model's weights alone are far above a 4 KiB budget: no batch size fits
    budget = format_bytes(r.experiment["budget_bytes"])  # the knob's value (0.004 MiB)
    assert "alone need" in p.status and f"{budget} budget" in p.status, p.status
    assert "no batch size fits" in p.status and "lower the batch size" not in p.status
    assert len(p.history) == 1  # kept, with the peak it reached
    q = make_panel(broken)
    q.run()
    r = q.wait(120)
    assert r is not None and r.status == "error"
    assert q.status.startswith("error") and "broken on purpose" in q.status
    assert q.history == [] and q.runs == [r]
    for name in ("memory", "process", "throughput"):
        assert "failed" in q.figures[name].layout.title.text, name


def test_rapid_changes_with_auto_run_start_exactly_one_run() -> None:
    p = make_panel(auto_run=True, debounce_s=0.3)
    for bs in (16, 24, 48):
        p.controls["batch_size"].value = bs
    assert p.runs_started == 0  # still waiting for the knobs to be still
    r = p.wait(120)
    assert p.runs_started == 1
    assert r is not None and r.status == "ok"
    assert p.handle is not None and p.handle.experiment.batch_size == 48


def test_auto_run_change_cancels_the_run_in_progress() -> None:
    p = make_panel(slow, auto_run=True, debounce_s=0.2)
    p.set(steps=50)  # an auto run, once the debounce timer fires (in drain())
    until(p, lambda: p.handle is not None and bool(p.handle.steps))
    first = p.handle
    assert first is not None and first.steps
    p.controls["batch_size"].value = 8
    assert first.wait(10).status == "cancelled"
    assert until(p, lambda: p.runs_started >= 2)  # the debounce timer, run by drain()
    assert p.runs_started == 2 and p.handle is not first
    assert p.handle is not None and p.handle.experiment.batch_size == 8
    p.stop()
    r = p.wait(30)
    assert r is not None and r.status == "cancelled" and p.history == []


def test_prediction_is_drawn_before_the_run_and_compared_after() -> None:
    from memlab.estimator import estimate

    panel = make_panel(knobs=["batch_size"], warm=False)
    panel.controls["batch_size"].value = 64
    est = panel.wait_prediction(120)
    assert est is not None and est.peak_bytes > 0
    # the chart shows the prediction of the settings on screen, before any run
    truth = estimate(panel.experiment)
    assert est.peak_by_category == truth.peak_by_category
    fig = panel.figures["prediction"]
    pred = trace(fig, "predicted")
    assert np.allclose(pred.y, [truth.peak_by_category[c] / MIB for c in CATEGORIES])
    assert [t.name for t in fig.data] == ["predicted"]
    assert panel.prediction_error_pct() is None
    # after the run: the measurement of the same settings beside it, the error in the title
    panel.run()
    r = panel.wait(120)
    assert r is not None and r.status == "ok"
    panel.wait_prediction(60)
    meas = trace(fig, "measured")
    assert np.allclose(meas.y, [r.peak_by_category[c] / MIB for c in CATEGORIES])
    err = panel.prediction_error_pct()
    assert err is not None and abs(err) <= 3.0
    assert f"{err:+.1f}%" in fig.layout.title.text
    panel.close()


def test_no_prediction_is_said_not_raised() -> None:
    panel = make_panel(knobs=["mode", "weights"], warm=False)
    # streamed weights: hooks copy each layer in from a mapped file, which fake tensors cannot
    # stand in for (every precision is estimated since issue 16).
    panel.set(mode="inference", weights="streamed")
    panel.wait_prediction(120)
    assert panel.prediction is None
    fig = panel.figures["prediction"]
    assert fig.layout.title.text == "No prediction"
    note = fig.layout.title.subtitle.text  # the estimator's reason, in words
    assert note.startswith("no prediction: weights 'streamed' cannot be estimated"), note
    assert "Error" not in note
    panel.close()


def test_figure_front_end_is_plotlys_bundle_behind_a_small_loader() -> None:
    """Each figure's ``_esm`` is memlab's small loader (plotly's 4.6 MB bundle, compiled once per
    page, comes as ``_plotly_bundle``): anywidget drops every message to a model whose ``_esm``
    took over 2 s to load, and compiling the bundle once per figure took 0.8 s each (see
    memlab/ui/figure_widget.js). The browser tests check that every chart keeps updating."""
    import plotly
    from plotly.basewidget import BaseFigureWidget

    charts = LiveCharts()
    bundle = str(BaseFigureWidget._esm)
    for fw in charts.figures.values():
        state = fw.get_state()
        assert state["_plotly_bundle"] == bundle
        esm = state["_esm"]
        assert len(esm) < 10_000 < len(bundle)
        assert "__MEMLAB" not in esm  # the key was filled in
        assert f'"plotly-{plotly.__version__}-' in esm
        assert 'model.get("_plotly_bundle")' in esm and "export default" in esm


def test_history_charts_drop_what_the_new_figure_no_longer_has() -> None:
    """sync_figure replaces the layout: the empty scatter's "no run ... yet" note and the
    subtitle naming a skipped run go once the runs have throughput (``update(overwrite=True)``
    alone keeps keys the new figure lacks)."""
    from memlab.timeline import RunResult

    def run(mib: int, **kw: Any) -> RunResult:
        return RunResult(peak_bytes=mib * MIB, peak_by_category={"activations": mib * MIB}, **kw)

    charts = LiveCharts(("tradeoff", "history"))
    fw = charts.figures["tradeoff"]
    assert [a.text for a in fw.layout.annotations] == ["no run with a measured throughput yet"]
    untimed = run(3)
    charts.show_history([untimed], ["#1"])
    assert fw.layout.title.subtitle.text == "skipped (no throughput measured): #1"
    timed = [
        run(2, step_times_s=(0.5, 0.25), samples_per_step=8),
        run(5, step_times_s=(0.1,), samples_per_step=16),
    ]
    charts.show_history(timed, ["#1", "#2"])
    assert list(fw.layout.annotations) == []
    assert not fw.layout.title.subtitle.text
    np.testing.assert_allclose(fw.data[0].x, [8 / 0.375, 160.0])  # samples / median step
    # ...and the page that attaches later gets the same layout
    assert not fw._widget_layout.get("annotations")
    bars = charts.figures["history"]
    assert [a.text for a in bars.layout.annotations if a.name == "delta"][0].endswith("(baseline)")


def test_widgets_are_edited_only_on_the_thread_that_owns_the_panel() -> None:
    """The runner's reader thread hands samples over; every message to the page comes from
    the thread that built the panel (here: in wait(), which applies them while it blocks)."""
    p = make_panel(paced, predict=False)
    p.set(steps=6)
    senders = record_senders(p)
    p.run()
    r = p.wait(120)
    assert r is not None and r.status == "ok", r and r.error
    assert senders and set(senders) == {threading.current_thread().name}
    assert p._charts.redraws >= 1  # live redraws happened, applied here
    np.testing.assert_allclose(
        trace(p.figures["throughput"], "step time (ms)").y, np.asarray(r.step_times_s) * 1e3
    )


def test_on_an_event_loop_the_loop_edits_the_charts_while_the_run_goes() -> None:
    """As in the kernel: the panel is built on a running asyncio loop, which applies the
    runner's updates and runs the debounce timer of an auto run, while the cell's code only
    awaits (nothing calls wait())."""

    async def cell() -> tuple[Panel, list[str], int]:
        # quiet_redraw_s: a redraw while measuring, at most every 0.1 s (a run of 8 paced
        # steps is over before the default 2 s)
        p = make_panel(paced, auto_run=True, debounce_s=0.2, predict=False, quiet_redraw_s=0.1)
        p.set(steps=8)
        senders = record_senders(p)
        p.controls["batch_size"].value = 16  # an auto run, 0.2 s after the last change
        deadline = time.monotonic() + 120
        live = 0
        while p.result is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if p.handle is not None and p.handle.steps and p.result is None:
                live = max(live, len(trace(p.figures["memory"], LIVE_TRACE).y))
        return p, senders, live

    p, senders, live = asyncio.run(cell())
    assert p.runs_started == 1 and p.result is not None and p.result.status == "ok"
    # the memory chart grew while the steps ran (the throughput waits for the end: the timed
    # steps are not disturbed by redraws)
    assert live >= 1
    assert set(senders) == {threading.current_thread().name}
    assert p.status.startswith("done")
    np.testing.assert_allclose(
        trace(p.figures["throughput"], "samples/s").y, 16 / np.asarray(p.result.step_times_s)
    )


def test_predictions_coalesce_and_are_cached_by_memory_fields() -> None:
    from memlab.estimator import estimate
    from memlab.ui.dispatch import Dispatcher
    from memlab.ui.predict import Predictor

    drawn: list[tuple[Any, str]] = []
    pred = Predictor(lambda by_cat, result, note: drawn.append((by_cat, note)), Dispatcher())
    base = Experiment(workload=tiny, batch_size=8, steps=1, warmup=0, device="cpu")
    for bs in (8, 16, 24, 32):
        pred.request(base.replace(batch_size=bs))
    assert pred.wait(120)
    # the first went at once, the newest waited: the two in between were never estimated
    assert pred.jobs_submitted == 2
    assert len(drawn) == 1 and pred.latest is not None
    assert pred.latest.peak_by_category == estimate(base.replace(batch_size=32)).peak_by_category
    pred.request(base.replace(batch_size=8, steps=5, seed=3))  # same memory fields: cached
    assert pred.wait(5) and pred.jobs_submitted == 2 and len(drawn) == 2


_PANEL_WITHOUT_TORCH = """
import sys
from memlab.config import Experiment
from memlab.ui import Panel

panel = Panel(experiment=Experiment(workload="mlp", batch_size=16, steps=2, warmup=1),
              smoke=True)
panel.set(batch_size=32)
est = panel.wait_prediction(300)
assert est is not None and est.peak_bytes > 0, panel.predictor.error
panel.run()
r = panel.wait(300)
assert r is not None and r.status == "ok", r and r.error
panel.wait_prediction(300)
err = panel.prediction_error_pct()
assert err is not None, panel.figures["prediction"].layout.title.text
assert "torch" not in sys.modules, "torch was imported into the panel's process"
print("ok", round(err, 2))
"""


def test_a_panel_with_predictions_never_imports_torch() -> None:
    """Estimates run in the runner's service worker and runs in their own: the process that
    drives the panel (the kernel) never imports torch."""
    proc = subprocess.run(
        [sys.executable, "-c", _PANEL_WITHOUT_TORCH], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.startswith("ok"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]  # nothing failed on the way out


def test_every_knob_derives_from_its_field_declaration() -> None:
    """Which fields are knobs, their labels, options, ranges and tooltips come from
    config.FIELDS: nothing about a field is restated in the controls."""
    import ipywidgets as widgets

    from memlab.config import FIELDS
    from memlab.ui import KNOB_GROUPS, KNOBS
    from memlab.ui.controls import build_controls, knob_field

    declared = [s for s in FIELDS.values() if s.knob]
    assert list(KNOBS) == [s.option for s in declared]
    assert set(KNOB_GROUPS["data_loading"]) == {s.option for s in declared if s.group == "data"}
    exp = Experiment()
    built = build_controls(exp, KNOBS)
    for name, w in built.items():
        spec = FIELDS[knob_field(name)]
        assert spec.label in w.description and w.tooltip == spec.help, name
        if spec.kind in ("choice", "workload"):
            assert [o if isinstance(o, str) else o[1] for o in w.options] == list(spec.choices)
            assert w.value == getattr(exp, spec.name)
        elif spec.kind in ("int", "float"):
            assert w.min == (spec.minimum or 0)
            assert w.max == (spec.maximum if spec.maximum is not None else spec.typical_max)
        elif spec.kind == "bool":
            assert isinstance(w, widgets.Checkbox)


def test_status_goes_forward_through_a_run() -> None:
    """Building, then warming up, then measured steps, then done: once warm, the status never
    says the workload is being built again (the measured block's first step says step 1)."""
    exp = Experiment(workload=slow, batch_size=8, data_size=64, steps=3, warmup=1)
    p = Panel(knobs=["batch_size"], experiment=exp, smoke=False, warm=False, predict=False)
    seen: list[str] = []
    p.status_line.observe(lambda ch: seen.append(p.status), names="value")
    p.run()
    result = p.wait(120)
    assert result is not None and result.status == "ok"
    stages = []
    for s in seen:
        stage = (
            "build"
            if "building" in s
            else "warm"
            if "warming" in s
            else "step"
            if s.startswith("running: step")
            else "done"
            if s.startswith("done")
            else None
        )
        if stage and (not stages or stages[-1] != stage):
            stages.append(stage)
    assert stages[-1] == "done", seen
    order = ["build", "warm", "step", "done"]
    assert [order.index(s) for s in stages] == sorted(order.index(s) for s in stages), seen
    p.close()


# -- the panel against a fake runner (the contract of memlab.runner.start), no worker ---------


class FakeRun:
    """Stands in for a RunHandle: the test plays the runner's reader thread through the
    callbacks ``start`` was given."""

    def __init__(self, exp: Experiment, kw: dict[str, Any]) -> None:
        self.experiment, self.kw = exp, kw
        self.cancelled = False
        self._done = False
        self.steps: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.settle_s = 0.0

    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, *samples: dict[str, Any]) -> None:
        self.kw["on_samples"](list(samples))

    def step(self, i: int, time_s: float = 0.01, **kw: Any) -> None:
        self.kw["on_step"]({"step": i, "time_s": time_s, "samples": 32, "t": 1.0 + i, **kw})

    def finish(self, result: RunResult) -> None:
        self._done = True
        self.kw["on_done"](result)


@pytest.fixture
def fake_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeRun]]:
    import memlab.runner

    started: list[FakeRun] = []

    def start(
        exp: Experiment,
        *,
        on_sample: Any = None,
        on_samples: Any = None,
        on_step: Any = None,
        on_done: Any = None,
        warm: bool = False,
        timeout_s: float | None = None,
        settle_s: float = 0.0,
    ) -> FakeRun:
        run = FakeRun(exp, {"on_samples": on_samples, "on_step": on_step, "on_done": on_done})
        run.settle_s = settle_s
        started.append(run)
        return run

    monkeypatch.setattr(memlab.runner, "start", start)
    yield started


def sample(t: float, phase: str, measuring: bool, nbytes: int = 2**20) -> dict[str, Any]:
    return {"t": t, "tensor_bytes": nbytes, "phase": phase, "step": 0, "rss": 50 * 2**20,
            "rss_anon": 40 * 2**20, "rss_file": 10 * 2**20, "rss_shmem": 0,
            "rss_hwm": 50 * 2**20, "measuring": measuring}  # fmt: skip


def result(exp: Experiment, status: str = "ok", steps: int = 3, **kw: Any) -> RunResult:
    peaks = {"parameters": 2**20, "activations": 3 * 2**20}
    kw.setdefault("step_times_s", (0.01,) * steps)
    return RunResult(
        peak_bytes=sum(peaks.values()),
        peak_by_category=peaks,
        samples_per_step=exp.batch_size,
        status=status,
        experiment=exp.to_dict(),
        **kw,
    )


def fake_panel(**kw: Any) -> Panel:
    kw.setdefault("warm", False)
    kw.setdefault("predict", False)
    kw.setdefault("smoke", False)
    exp = Experiment(workload=tiny, batch_size=32, steps=8, warmup=2, device="cpu")
    return Panel(knobs=["batch_size", "mode"], experiment=exp, **kw)


def test_samples_come_in_batches_and_redraws_are_quiet_while_measuring(
    fake_start: list[FakeRun],
) -> None:
    p = fake_panel(max_fps=50, quiet_redraw_s=0.5)
    p.run()
    (run,) = fake_start
    assert run.kw["on_samples"] is not None  # the batched callback of the contract
    # the reader thread hands a batch over: one delivery, applied on the owner thread
    posted: list[str] = []
    done = threading.Event()

    def reader() -> None:
        run.send(*(sample(0.01 * i, "setup", False) for i in range(50)))
        posted.append(threading.current_thread().name)
        done.set()

    threading.Thread(target=reader, name="reader").start()
    assert done.wait(5)
    assert p.drain() == 1  # 50 samples, one callback on the owner thread
    assert len(p._charts.samples) == 50 and p._charts.redraws == 1
    assert until(p, lambda: p.status == "running: building the workload…", timeout=2)
    # in the measured block: a batch right after a redraw is not drawn until 0.5 s passed
    run.send(sample(1.0, "forward", True))
    run.send(sample(1.1, "forward", True))
    run.step(1)
    assert p._charts.measuring and p._charts.redraws == 1
    wait = p._charts.next_draw_in()
    assert wait is not None and 0.3 < wait <= 0.5
    assert until(p, lambda: p._charts.redraws == 2, timeout=5)  # the timer drew it
    run.send(sample(1.2, "forward", True))
    assert until(p, lambda: p._charts.redraws == 3, timeout=5)
    t_drawn = [t for t, _m in p._charts.redraw_log]
    assert t_drawn[-1] - t_drawn[-2] >= 0.5 - 1e-3  # measuring: 0.5 s apart at least
    # after the run: the normal rate again, and the final state drawn at once
    run.finish(result(run.experiment, steps=1))
    assert not p._charts.measuring and p.status.startswith("done")


def test_status_only_moves_forward_and_says_warm_up_only_with_warm_up_steps(
    fake_start: list[FakeRun],
) -> None:
    p = fake_panel(max_fps=1000, quiet_redraw_s=0)
    seen: list[str] = []
    p.status_line.observe(lambda _ch: seen.append(p.status), names="value")
    p.run()
    run = fake_start[-1]
    run.send(sample(0.0, "setup", False))
    run.send(sample(0.1, "warmup", False))
    run.send(sample(0.2, "forward", True))
    for i in (1, 2, 3):
        run.step(i)
        run.send(sample(0.2 + i, "backward", True))
        time.sleep(0.01)
        p.drain()
    time.sleep(1.05)  # the status changes at most once a second while measuring
    run.send(sample(9.0, "setup", False))  # a late sample of an earlier phase
    p.drain()
    assert p.status.startswith("running: step 3/8"), p.status
    assert not any("building" in s for s in seen[seen.index(p.status) :])
    stages = [s.split("…")[0] for s in seen if s.startswith("running")]
    assert stages[0] == "running: building the workload"
    assert stages[1] == "running: warming up (2 steps, not measured)"
    assert stages[2].startswith("running: step")
    # step numbers never go back, and while measuring the line changed about once a second
    nums = [int(s.split("step ")[1].split("/")[0]) for s in stages[2:]]
    assert nums == sorted(nums) and len(nums) <= 3
    run.finish(result(run.experiment, steps=8))
    assert p.status.startswith("done")
    # no warm-up steps: never says "warming up"
    q = fake_panel(max_fps=1000, quiet_redraw_s=0)
    q.set(warmup=0)
    seen.clear()
    q.status_line.observe(lambda _ch: seen.append(q.status), names="value")
    q.run()
    run = fake_start[-1]
    run.send(sample(0.0, "setup", False))
    run.send(sample(0.1, "warmup", False))
    run.send(sample(0.2, "forward", True))
    # measuring: the line changes within about a second (a timer, not at every batch)
    assert until(q, lambda: q.status.startswith("running: step 1/8"), timeout=3), q.status
    assert not any("warming" in s for s in seen), seen


def test_disturbed_timing_is_marked_on_the_chart_and_said_in_the_status(
    fake_start: list[FakeRun],
) -> None:
    p = fake_panel()
    p.run()
    run = fake_start[-1]
    flags = (True, False, True, True, True, False, True, False)
    for i, f in enumerate(flags, 1):
        run.step(i, disturbed=f, others_share=0.5 if f else 0.02)
    p.drain()
    p._charts.flush()
    live = trace(p.figures["throughput"], "disturbed (other processes busy)")
    assert list(live.x) == [i for i, f in enumerate(flags, 1) if f]
    timing = Timing(
        steady=False,
        cpu_share=0.6,
        disturbed_steps=5,
        note="other processes used 40% of the CPU (chromium 35%)",
        others_share=0.4,
        step_disturbed=flags,
        step_others_share=tuple(0.5 if f else 0.02 for f in flags),
    )
    run.finish(result(run.experiment, steps=8, timing=timing))
    thr = p.figures["throughput"]
    dist = trace(thr, "disturbed (other processes busy)")
    assert list(dist.x) == [1, 3, 4, 5, 7] and dist.showlegend
    assert "other processes used 50% of the CPU" in dist.hovertext[0]
    assert "timing disturbed: 5 of 8 steps" in thr.layout.title.text
    first, second = p.status.split("\n")
    assert first.startswith("done") and "run 1 in the history" in first
    assert second.startswith("timing disturbed: 5 of 8 steps, other processes used 40%")
    assert "chromium 35%" in second  # the timing's note
    # a steady run says nothing alarming
    p.run()
    run = fake_start[-1]
    steady = dataclasses.replace(timing, steady=True, disturbed_steps=0,
                                 step_disturbed=(False,) * 8)  # fmt: skip
    run.finish(result(run.experiment, steps=8, timing=steady))
    assert "disturbed" not in p.status and "disturbed" not in thr.layout.title.text
    assert len(trace(thr, "disturbed (other processes busy)").x) == 0


def test_no_stale_state_after_cancel_error_and_oom(fake_start: list[FakeRun]) -> None:
    p = fake_panel(max_fps=1000, quiet_redraw_s=0)
    p.run()
    fake_start[-1].finish(result(fake_start[-1].experiment))
    assert p.figures["memory"].layout.title.text.startswith("Tensor memory")
    # run 2: cancelled after 2 of 8 steps
    p.run()
    run = fake_start[-1]
    assert "run 2 starting" in p.figures["throughput"].layout.title.text
    assert len(trace(p.figures["throughput"], "samples/s").x) == 0  # run 1's steps are gone
    run.send(sample(0.0, "forward", True))
    run.step(1)
    run.step(2)
    p.drain()
    run.finish(result(run.experiment, status="cancelled", steps=2, error="cancelled by the user"))
    for name in ("memory", "process", "throughput"):
        title = p.figures[name].layout.title.text
        assert "cancelled after 2" in title, (name, title)
    assert "run 2 cancelled after 2 of 8 steps: partial" in p.figures["memory"].layout.title.text
    assert p.status.startswith("cancelled after 2 of 8 steps")
    # run 3: failed before measuring
    p.run()
    run = fake_start[-1]
    run.send(sample(0.0, "setup", False))
    p._charts.flush()  # its build is on the memory chart (this run's, and said so below)
    run.finish(
        RunResult(peak_bytes=0, peak_by_category={}, status="error",
                  error="RuntimeError: boom", experiment=run.experiment.to_dict())
    )  # fmt: skip
    assert "run 3 failed" in p.figures["memory"].layout.title.text
    assert "nothing measured (the line is its build)" in p.figures["memory"].layout.title.text
    assert "failed, no step measured" in p.figures["throughput"].layout.title.text
    # the history shows all three, the two that did not finish marked and not compared
    bars = p.figures["history"]
    assert list(trace(bars, "parameters").x) == ["#1", "#2 (cancelled)", "#3 (failed)"]
    assert list(trace(bars, "parameters").customdata) == [0, None, None]
    assert list(trace(bars, "parameters").marker.pattern.shape) == ["", "x", "x"]
    notes = [a.text for a in bars.layout.annotations if a.name == "delta"]
    assert notes[1].startswith("cancelled<br>") and notes[2] == "failed:<br>nothing measured"
    assert "not compared" in bars.layout.title.subtitle.text
    assert p.history == [p.runs[0]] and len(p.runs) == 3
    # the trade-off chart has only the finished run
    assert list(p.figures["tradeoff"].data[0].customdata) == [0]


def test_runs_of_another_mode_are_not_compared_and_labels_stay_short(
    fake_start: list[FakeRun],
) -> None:
    p = fake_panel()
    for changes in ({}, {"mode": "inference"}, {"mode": "inference", "batch_size": 64}):
        p.set(**changes)
        p.run()
        fake_start[-1].finish(result(fake_start[-1].experiment))
    labels = list(trace(p.figures["history"], "parameters").x)
    assert labels == ["#1", "#2 mode=inference", "#3 mode=inference, batch_size=64"]
    acts = trace(p.figures["history"], "activations")
    assert list(acts.customdata) == [0, 0, 0]  # #3 against #2, the inference baseline
    assert "vs #2 mode=inference" in acts.hovertext[2]
    assert "batch_size=64" in acts.hovertext[2] and "precision=fp32" in acts.hovertext[2]
    assert "within their mode" in p.figures["history"].layout.title.subtitle.text


def test_a_long_predicted_auto_run_waits_for_run(fake_start: list[FakeRun]) -> None:
    p = fake_panel(auto_run=True, debounce_s=0.0, long_run_s=15)
    # no history: nothing to predict from, the auto run starts
    p.set(batch_size=32)
    assert until(p, lambda: len(fake_start) == 1, timeout=5)
    run = fake_start[-1]
    run.step(1, time_s=0.5)  # steps end at t = 2.0 s: the block began at 1.5 s
    p.drain()
    # 0.5 s per step of 32 samples; 2 warm-up steps took ~1 s of the 1.5 s before the block
    run.finish(result(run.experiment, steps=8, step_times_s=(0.5,) * 8))
    assert p._setup_s == [pytest.approx(0.5)]
    guess = p.predict_duration(p.experiment.replace(batch_size=128))
    assert guess is not None and guess.run == 1
    assert guess.seconds == pytest.approx(0.5 / 32 * 128 * (8 + 2) + 0.5)
    p.set(batch_size=128)  # predicted ~20.5 s: held back
    time.sleep(0.05)
    p.drain()
    assert len(fake_start) == 1
    assert p.status == "this run is predicted to take ~20 s (from run #1): press Run to start it"
    assert p.held_back is not None
    p.controls["run"].click()  # pressing Run always runs
    assert len(fake_start) == 2 and fake_start[-1].experiment.batch_size == 128
    p.stop()


def test_back_to_baseline_sets_the_knobs_back(fake_start: list[FakeRun]) -> None:
    p = fake_panel()
    p.controls["batch_size"].value = 200
    p.controls["mode"].value = "inference"
    p.drain()
    assert p.experiment.batch_size == 200
    p.controls["baseline"].click()
    assert p.controls["batch_size"].value == 32 and p.controls["mode"].value == "train"
    assert p.experiment.batch_size == 32 and p.experiment.mode == "train"


def test_charts_fit_their_grid_cell() -> None:
    p = fake_panel()
    grid = p.widget.children[2]
    assert grid.layout.grid_template_columns == "repeat(2, minmax(0, 1fr))"
    for cell, fw in zip(grid.children, p.figures.values(), strict=True):
        assert cell.children == (fw,)
        assert cell.layout.width == "100%" and cell.layout.min_width == "0"
        assert fw.layout.width is None and fw.layout.autosize is True
        assert fw._config["responsive"] is True
        assert fw.layout.legend.orientation == "h"
        assert fw._widget_layout.get("width") is None  # what a page attaching later gets


def test_prediction_notes_are_words() -> None:
    from types import SimpleNamespace

    from memlab.estimator import EstimateError
    from memlab.ui.dispatch import Dispatcher
    from memlab.ui.predict import Predictor, known_off_notes, no_prediction_note, prediction_key

    int8 = EstimateError("precision 'int8' cannot be estimated: dynamic quantization packs ...")
    assert no_prediction_note(int8).startswith("no prediction: precision 'int8' cannot be")
    assert "EstimateError" not in no_prediction_note(int8)
    other = no_prediction_note(ValueError("shape mismatch\nTraceback ..."))
    assert "could not run them (ValueError (shape mismatch))" in other
    assert "Traceback" not in other
    base = Experiment(workload="mlp", batch_size=8)
    assert known_off_notes(base) == []
    est = SimpleNamespace(notes=("estimate: the sparse CSR product's buffers ...",),
                          peak_by_category={"inputs": 3 * 2**20})  # fmt: skip
    memmap = known_off_notes(base.replace(data="memmap"), est)
    assert any("data=memmap" in n and "3.0 MiB" in n for n in memmap)
    assert any("amp-fp16" in n for n in known_off_notes(base.replace(precision="amp-fp16")))
    # the note is drawn beside the prediction; a run that did not finish gets no % error
    drawn: list[tuple[Any, Any, str]] = []
    pred = Predictor(lambda p, r, n: drawn.append((p, r, n)), Dispatcher())
    exp = base.replace(data="memmap")
    fake = SimpleNamespace(peak_bytes=4 * 2**20, peak_by_category={"inputs": 2**20},
                           elapsed_s=0.1, first_step_peak_bytes=1, steady_peak_bytes=1,
                           notes=())  # fmt: skip
    pred._cache[prediction_key(exp)] = fake
    pred.request(exp)
    assert "known to be off" in drawn[-1][2] and "data=memmap" in drawn[-1][2]
    oom = RunResult(peak_bytes=2**20, peak_by_category={"inputs": 2**20}, status="oom",
                    experiment=exp.to_dict())  # fmt: skip
    pred.measured(oom)
    assert drawn[-1][1] is oom and pred.error_pct() is None
    ok = dataclasses.replace(oom, status="ok")
    pred.measured(ok)
    assert pred.error_pct() == pytest.approx(300.0)


def test_budget_messages_speak_mib_and_name_the_budget() -> None:
    from memlab.ui.messages import oom_message

    exp = Experiment(workload="mlp", batch_size=64, steps=8, budget_bytes=300 * MIB)
    params = {"parameters": 20 * MIB, "optimizer_state": 40 * MIB, "gradients": 20 * MIB}

    def oom(**kw: Any) -> RunResult:
        peaks = {**params, "activations": 250 * MIB}
        kw.setdefault("entry_by_category", {**params, "gradients": 0})
        return RunResult(peak_bytes=sum(peaks.values()), peak_by_category=peaks, status="oom",
                         experiment=exp.to_dict(), step_times_s=(0.1, 0.1), **kw)  # fmt: skip

    # the step's tensors passed the budget: lower the batch size
    error = (
        f"OutOfMemoryError: memlab budget exceeded: the block's peak of {330 * MIB} bytes "
        f"passed the budget of {300 * MIB} bytes"
    )
    text = oom_message(oom(error=error))
    assert text.startswith("out of memory after 2 of 8 steps")
    assert "the 300.0 MiB budget you set" in text and "Lower the batch size" in text
    assert "bytes" not in text.replace("tensor memory", "")
    # the model alone needs more than the budget: no batch size fits
    small = dataclasses.replace(oom(), experiment=exp.replace(budget_bytes=50 * MIB).to_dict())
    text = oom_message(small)
    assert "parameters, gradients and optimizer state alone need 80.0 MiB" in text
    assert "more than the 50.0 MiB budget: no batch size fits" in text
    assert "Lower the batch size" not in text
    # the prediction says so before anything was measured
    est = type("Est", (), {"peak_by_category": {**params, "parameters": 2 * 2**30}})()
    empty = RunResult(peak_bytes=0, peak_by_category={}, status="oom",
                      experiment=small.experiment)  # fmt: skip
    assert "alone need 2.1 GiB" in oom_message(empty, estimate=est)
    # memlab's RSS cap killed the worker: that limit is not the budget, said so
    cap = oom(error=f"worker killed: its RSS {6 * 2**30} bytes passed the hard cap of "
                    f"{int(5.5 * 2**30)} bytes")  # fmt: skip
    text = oom_message(cap)
    assert "reached 6.0 GiB, past memlab's hard cap of 5.5 GiB" in text
    assert "not the budget (the 300.0 MiB budget you set)" in text


def test_run_hover_has_the_full_settings_and_labels_the_differences() -> None:
    from memlab.ui.messages import run_hover

    exp = Experiment(workload="mlp", batch_size=32)
    runs = [
        RunResult(peak_bytes=1, peak_by_category={"other": 1}, experiment=exp.to_dict()),
        RunResult(peak_bytes=1, peak_by_category={"other": 1}, status="error", error="boom\nx",
                  experiment=exp.replace(batch_size=64, precision="bf16",
                                         checkpointing="every-block").to_dict()),
    ]  # fmt: skip
    assert run_labels(runs) == ["#1", "#2 batch_size=64, precision=bf16, …"]
    hover = run_hover(runs)
    assert hover[1].startswith("error: boom<br>")
    assert "checkpointing=every-block" in hover[1] and "workload=mlp" in hover[0]


def test_memory_pass_then_timing_pass(fake_start: list[FakeRun]) -> None:
    """The runner measures memory in tracked steps, then times as many untracked steps: the
    status goes forward through the memory pass; at its last step the charts are drawn (the
    runner pauses ``settle_s`` for the page) and then nothing reaches the page until the run
    ends: a redraw would slow the steps being timed. The throughput shows the timed steps."""
    p = fake_panel(max_fps=1000, quiet_redraw_s=0, settle_s=0.7)
    seen: list[str] = []
    p.status_line.observe(lambda _ch: seen.append(p.status), names="value")
    p.run()
    run = fake_start[-1]
    assert run.settle_s == 0.7  # the pause the runner makes between the passes
    run.send(sample(0.0, "forward", True))
    for i in (1, 2):
        run.step(i, time_s=0.02, **{"pass": "memory", "of": 8})
        time.sleep(1.01)  # past the once-a-second status limit while measuring
        p.drain()
    assert p.status.startswith("running: step 2/8, measuring memory (tracked)"), p.status
    assert len(trace(p.figures["throughput"], "samples/s").x) == 0
    for i in range(3, 9):
        run.step(i, time_s=0.02, **{"pass": "memory", "of": 8})
    p.drain()
    assert p.status.startswith("running: memory measured (8 tracked steps); timing 8"), p.status
    drawn, shown = p._charts.redraws, p.status
    assert not p._charts._dirty  # the memory pass is on the page before the timing starts
    for i in range(1, 4):
        run.step(i, time_s=0.01, **{"pass": "timing", "of": 8})
        run.send(sample(3.0 + i, "forward", True))
        time.sleep(0.05)
        p.drain()
    time.sleep(1.01)
    p.drain()
    assert p._charts.redraws == drawn and p.status == shown  # still while timing
    assert len(trace(p.figures["throughput"], "samples/s").x) == 0
    run.finish(result(run.experiment, steps=3, tracked_step_times_s=(0.02,) * 8))
    assert p.status.startswith("done"), p.status
    assert len(trace(p.figures["throughput"], "samples/s").x) == 3
    steps = [s for s in seen if s.startswith("running: step")]
    assert all("measuring memory (tracked)" in s for s in steps), steps
    p.run()
    run = fake_start[-1]
    # a run cancelled in the memory pass: its steps are the tracked ones
    run.finish(result(run.experiment, status="cancelled", steps=0,
                      tracked_step_times_s=(0.02, 0.02)))  # fmt: skip
    assert p.status.startswith("cancelled after 2 of 8 steps"), p.status
    # the duration of a two-pass run counts both passes
    ok = result(run.experiment, steps=8, tracked_step_times_s=(0.02,) * 8)
    from memlab.ui.messages import predict_duration

    guess = predict_duration(run.experiment, [ok])
    assert guess is not None
    assert guess.seconds == pytest.approx(0.01 * (8 + 2) + 0.02 * 8)
