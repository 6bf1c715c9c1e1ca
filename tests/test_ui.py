"""memlab.ui driven headlessly: set ``.value``, press buttons, check runs, status and figures.

The workloads are user factories (module-level, so the worker process can import them), so
these tests need neither the built-in workloads nor the knobs.
"""

from __future__ import annotations

import asyncio
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
    # measuring (+ the final flush)
    assert 1 <= p._charts.redraws <= elapsed * 4 + 2
    measured = [t for t, m in p._charts.redraw_log if m]
    assert all(b - a >= 2.0 - 1e-3 for a, b in zip(measured, measured[1:], strict=False))

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
    panel = make_panel(knobs=["mode", "precision"], warm=False)
    panel.set(mode="inference", precision="int8")
    panel.wait_prediction(120)
    assert panel.prediction is None
    assert "no prediction" in panel.figures["prediction"].layout.title.text
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
        p = make_panel(paced, auto_run=True, debounce_s=0.2, predict=False)
        p.set(steps=8)
        senders = record_senders(p)
        p.controls["batch_size"].value = 16  # an auto run, 0.2 s after the last change
        deadline = time.monotonic() + 120
        live = 0
        while p.result is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if p.handle is not None and p.handle.steps and p.result is None:
                live = max(live, len(trace(p.figures["throughput"], "step time (ms)").y))
        return p, senders, live

    p, senders, live = asyncio.run(cell())
    assert p.runs_started == 1 and p.result is not None and p.result.status == "ok"
    assert live >= 1  # the throughput chart grew before the run ended
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
