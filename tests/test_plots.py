"""memlab.plots: figures are asserted by their trace data, built from hand-made RunResults."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest

from memlab import plots
from memlab.config import MIB
from memlab.plots import (
    CATEGORY_COLORS,
    downsample_indices,
    memory_throughput_figure,
    module_activations_figure,
    peak_bars_figure,
    phase_bands,
    prediction_figure,
    process_memory_figure,
    timeline_figure,
    update_process,
    update_timeline,
)
from memlab.timeline import CATEGORIES, PHASES, ProcessSeries, RunResult, Timeline, Timing

P = {name: i for i, name in enumerate(PHASES)}


def _timeline() -> Timeline:
    # 8 events: data, data, forward x3, backward x2, optimizer; one step mark, phase marks.
    t = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    phase = [P[p] for p in ["data", "data", "forward", "forward", "forward", "backward",
                            "backward", "optimizer"]]  # fmt: skip
    by = {
        "parameters": np.full(8, 4 * 2**20),
        "inputs": np.array([0, 2, 2, 2, 2, 2, 2, 0]) * 2**20,
        "activations": np.array([0, 0, 3, 6, 9, 5, 1, 0]) * 2**20 + 123,
        "gradients": np.array([0, 0, 0, 0, 0, 4, 4, 4]) * 2**20,
    }
    marks = ((0.0, "data"), (0.2, "forward"), (0.5, "backward"), (0.7, "optimizer"),
             (0.7, "step"), (0.75, "step 2"))  # fmt: skip
    return Timeline(t=t, phase=phase, by_category=by, marks=marks)


def _result(peaks: dict[str, int] | None = None, **kw: Any) -> RunResult:
    peaks = peaks if peaks is not None else {"parameters": 4 * 2**20, "activations": 9 * 2**20}
    return RunResult(peak_bytes=sum(peaks.values()), peak_by_category=peaks, **kw)


def _shapes(fig: go.Figure, prefix: str) -> list[Any]:
    return [s for s in fig.layout.shapes if (s.name or "").startswith(prefix)]


# -- palette and import hygiene -------------------------------------------------------------


def test_one_colour_per_category() -> None:
    assert list(CATEGORY_COLORS) == list(CATEGORIES)
    assert len(set(CATEGORY_COLORS.values())) == len(CATEGORIES)


def test_plots_imports_neither_torch_nor_ipywidgets() -> None:
    code = (
        "import sys, memlab.plots; "
        "bad = [m for m in ('torch', 'ipywidgets') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- downsampling ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_points", [1, 2, 3, 4, 5, 10, 101, 4000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_downsample_keeps_exact_peak_and_bound(max_points: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 20_000
    t = np.cumsum(rng.exponential(1e-3, n))
    v = rng.integers(0, 10**6, n)
    spike = int(rng.integers(0, n))
    v[spike] = 10**9 + 7
    idx = downsample_indices(t, v, max_points)
    assert 1 <= len(idx) <= max_points
    assert np.all(np.diff(idx) > 0)  # sorted, unique
    assert v[idx].max() == v.max()
    assert spike in idx
    if max_points >= 4:
        assert idx[0] == 0 and idx[-1] == n - 1
        # min/max per bucket: the lowest value survives as well.
        assert v[idx].min() == v.min()


def test_downsample_small_input_is_untouched_and_same_time_events_work() -> None:
    np.testing.assert_array_equal(downsample_indices([0, 1, 2], [5, 9, 1], 3), [0, 1, 2])
    v = np.arange(1000) % 97
    idx = downsample_indices(np.zeros(1000), v, 50)  # all events at one instant
    assert len(idx) <= 50 and v[idx].max() == 96
    with pytest.raises(ValueError):
        downsample_indices([0, 1], [1], 10)
    with pytest.raises(ValueError):
        downsample_indices([0, 1], [1, 2], 0)


def test_timeline_figure_downsampled_keeps_peak_of_stack() -> None:
    n = 50_000
    t = np.linspace(0.0, 5.0, n)
    acts = (np.sin(np.arange(n) / 300.0) + 1.0) * 2**20
    acts = acts.astype(np.int64)
    acts[31_337] = 64 * 2**20
    params = np.full(n, 2**20)
    tl = Timeline(t=t, phase=np.full(n, P["forward"]),
                  by_category={"activations": acts, "parameters": params})  # fmt: skip
    fig = timeline_figure(tl, max_points=500)
    lens = {len(tr.x) for tr in fig.data}
    assert len(lens) == 1 and lens.pop() <= 500
    stack = np.sum([np.asarray(tr.y) for tr in fig.data], axis=0)
    assert stack.max() == (64 * 2**20 + 2**20) / MIB
    assert fig.data[0].x[int(np.argmax(stack))] == t[31_337]
    assert "50000 events drawn as" in fig.layout.title.subtitle.text


# -- timeline -------------------------------------------------------------------------------


def test_timeline_traces_are_categories_in_mib() -> None:
    tl = _timeline()
    fig = timeline_figure(_result(timeline=tl, peak_phase="forward"))
    assert [tr.name for tr in fig.data] == list(CATEGORIES)
    for tr in fig.data:
        assert tr.type == "scatter" and tr.stackgroup == "tensors"
        assert tr.fillcolor == CATEGORY_COLORS[tr.name]
        np.testing.assert_array_equal(tr.x, tl.t)
        np.testing.assert_array_equal(tr.y, tl.by_category[tr.name] / 2**20)
    assert fig.layout.yaxis.title.text == "tensor memory (MiB)"
    assert "peak 13.0 MiB in forward" in fig.layout.title.text


def test_timeline_phase_bands_and_step_lines() -> None:
    fig = timeline_figure(_timeline())
    bands = [(s.x0, s.x1, s.name) for s in _shapes(fig, "phase:")]
    assert bands == [
        (0.0, 0.2, "phase:data"),
        (0.2, 0.5, "phase:forward"),
        (0.5, 0.7, "phase:backward"),
        (0.7, 0.7, "phase:optimizer"),
    ]
    assert all(s.type == "rect" and s.yref == "paper" for s in _shapes(fig, "phase:"))
    labels = [a.text for a in fig.layout.annotations if (a.name or "").startswith("phase:")]
    # the optimizer's band has no width: no room for its label, so the subtitle names it
    assert labels == ["data", "forward", "backward"]
    assert "phase bands:" in fig.layout.title.subtitle.text
    assert "optimizer" in fig.layout.title.subtitle.text
    # Phase marks are shown as bands; only the step marks become vertical lines.
    steps = _shapes(fig, "step:")
    assert [(s.x0, s.x1, s.name) for s in steps] == [(0.7, 0.7, "step:step"),
                                                     (0.75, 0.75, "step:step 2")]  # fmt: skip
    assert all(s.type == "line" for s in steps)
    (peak,) = [a for a in fig.layout.annotations if a.name == "peak"]
    assert peak.x == 0.4 and peak.y == (15 * 2**20 + 123) / MIB
    assert peak.text == "peak 15.0 MiB in forward"


def test_phase_bands_skip_nothing_and_tile() -> None:
    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    ph = [P["forward"], P["other"], P["other"], P["backward"], P["backward"]]
    assert phase_bands(t, ph) == [(0.0, 1.0, "forward"), (1.0, 3.0, "other"),
                                  (3.0, 4.0, "backward")]  # fmt: skip
    fig = timeline_figure(Timeline(t=t, phase=ph, by_category={"other": [1, 2, 3, 4, 5]}))
    # "other" (time no phase claims) gets no band
    assert [s.name for s in _shapes(fig, "phase:")] == ["phase:forward", "phase:backward"]
    assert phase_bands([], []) == []


def test_empty_timeline_then_live_update_on_figure() -> None:
    fig = timeline_figure(None)
    assert [tr.name for tr in fig.data] == list(CATEGORIES)
    assert all(len(tr.x) == 0 for tr in fig.data)
    assert [a.name for a in fig.layout.annotations] == ["note"]
    tl = _timeline()
    update_timeline(fig, tl.t, {"activations": tl.by_category["activations"]},
                    phase=tl.phase, marks=tl.marks)  # fmt: skip
    by_name = {tr.name: tr for tr in fig.data}
    np.testing.assert_array_equal(by_name["activations"].x, tl.t)
    np.testing.assert_array_equal(by_name["activations"].y, tl.by_category["activations"] / MIB)
    np.testing.assert_array_equal(by_name["parameters"].y, np.zeros(8))
    assert len(_shapes(fig, "phase:")) == 4 and len(_shapes(fig, "step:")) == 2
    assert "note" not in [a.name for a in fig.layout.annotations]
    with pytest.raises(ValueError):
        update_timeline(fig, [0.0], {"bogus": [1]})


class _FakeWidget:
    """Stands in for go.FigureWidget: .data, .layout and a counted batch_update()."""

    def __init__(self, fig: go.Figure) -> None:
        self.data = fig.data
        self.layout = fig.layout
        self.batches = 0
        self.inside = False

    @contextmanager
    def batch_update(self) -> Any:
        self.batches += 1
        self.inside = True
        yield
        self.inside = False


def test_update_timeline_uses_batch_update_or_none() -> None:
    w = _FakeWidget(timeline_figure(None))
    update_timeline(w, [0.0, 1.0], {"gradients": [2**20, 3 * 2**20]})
    assert w.batches == 1 and not w.inside
    np.testing.assert_array_equal(w.data[1].y, [1.0, 3.0])
    # anything with .data works, even without batch_update
    tr = SimpleNamespace(name="inputs", x=None, y=None)
    update_timeline(SimpleNamespace(data=[tr]), [0.5], {"inputs": [2**19]})
    np.testing.assert_array_equal(tr.y, [0.5])
    np.testing.assert_array_equal(tr.x, [0.5])


def test_update_timeline_downsamples_live() -> None:
    fig = timeline_figure(None)
    n = 10_000
    v = np.arange(n) % 1000
    v[777] = 5000
    update_timeline(fig, np.arange(n, dtype=float), {"activations": v}, max_points=100)
    act = {tr.name: tr for tr in fig.data}["activations"]
    assert len(act.x) <= 100 and act.y.max() == 5000 / MIB


# -- comparing runs -------------------------------------------------------------------------


def _three_runs() -> list[RunResult]:
    return [
        _result({"parameters": 100, "activations": 1000, "gradients": 100}),
        _result({"parameters": 100, "activations": 4000, "gradients": 100}),
        _result({"parameters": 100, "activations": 250, "optimizer_state": 200}, status="oom"),
    ]


def test_peak_bars_heights_and_exact_deltas() -> None:
    runs = _three_runs()
    fig = peak_bars_figure(runs, labels=["b=8", "b=32", "b=2"], baseline=1)
    assert fig.layout.barmode == "stack"
    assert [tr.name for tr in fig.data] == list(CATEGORIES)
    for tr in fig.data:
        assert tr.type == "bar" and tr.marker.color == CATEGORY_COLORS[tr.name]
        assert list(tr.x) == ["b=8", "b=32", "b=2 (oom)"]
        heights = [r.peak_by_category[tr.name] for r in runs]
        np.testing.assert_array_equal(tr.y, np.asarray(heights) / MIB)
        deltas = [h - runs[1].peak_by_category[tr.name] for h in heights[:2]]
        assert list(tr.customdata) == [*deltas, None]  # the oom run is not compared
        assert tr.hovertext[1] == "baseline"
        assert tr.hovertext[2] == "not compared (oom)"
        # the run that did not finish is faded and hatched
        assert list(tr.marker.opacity) == [1.0, 1.0, 0.45]
        assert list(tr.marker.pattern.shape) == ["", "", "x"]
    acts = {tr.name: tr for tr in fig.data}["activations"]
    assert list(acts.customdata) == [-3000, 0, None]
    assert acts.hovertext[0] == "-2.9 KiB vs b=32"
    ann = [a.text for a in fig.layout.annotations if a.name == "delta"]
    assert ann[1] == "4.1 KiB<br>(baseline)"
    assert ann[0] == "1.2 KiB<br>-2.9 KiB (-71%)"
    # what the oom run reached is shown, never as a saving (no minus sign, no percent)
    assert ann[2] == "oom<br>550 B reached"
    assert "did not finish" in fig.layout.title.subtitle.text
    assert [a.y for a in fig.layout.annotations] == [r.peak_bytes / MIB for r in runs]


def test_peak_bars_compare_runs_only_within_their_mode() -> None:
    def run(mode: str, acts: int, status: str = "ok") -> RunResult:
        return _result(
            {"parameters": 100, "activations": acts}, experiment={"mode": mode}, status=status
        )

    runs = [
        run("train", 1000),
        run("inference", 300),
        run("inference", 200),
        run("train", 1500),
        _result({}, experiment={"mode": "train"}, status="error"),  # failed before measuring
    ]
    fig = peak_bars_figure(runs, labels=["#1", "#2", "#3", "#4", "#5"], hover=list("abcde"))
    acts = {tr.name: tr for tr in fig.data}["activations"]
    # inference runs against the first inference run, train runs against the first train run
    assert list(acts.customdata) == [0, 0, -100, 500, None]
    assert acts.hovertext[2] == "-100 B vs #2<br>c"
    assert acts.hovertext[4] == "not compared (failed)<br>e"
    ann = [a.text for a in fig.layout.annotations if a.name == "delta"]
    assert ann[0] == "1.1 KiB<br>(baseline, train)" and ann[1] == "400 B<br>(baseline, inference)"
    assert ann[4] == "failed:<br>nothing measured"
    assert list(acts.x)[4] == "#5 (failed)"
    assert "compared only within their mode" in fig.layout.title.subtitle.text
    with pytest.raises(ValueError):
        peak_bars_figure(runs, hover=["one"])


def test_peak_bars_labels_baseline_and_empty() -> None:
    runs = _three_runs()[:2]
    fig = peak_bars_figure(runs, baseline=-1)  # the last run
    assert list(fig.data[0].x) == ["run 1", "run 2"]
    assert fig.data[3].hovertext[1] == "baseline"
    dup = peak_bars_figure(runs, labels=["same", "same"])
    assert list(dup.data[0].x) == ["same #1", "same #2"]  # equal labels would merge bars
    named = peak_bars_figure([_result(experiment={"name": "ckpt"})])
    assert list(named.data[0].x) == ["ckpt"]
    with pytest.raises(IndexError):
        peak_bars_figure(runs, baseline=2)
    with pytest.raises(ValueError):
        peak_bars_figure(runs, labels=["one"])
    empty = peak_bars_figure([])
    assert len(empty.data) == 0 and empty.layout.annotations[0].text == "no runs yet"


def test_memory_throughput_scatter_skips_unmeasured() -> None:
    runs = [
        _result({"activations": 2 * 2**20}, step_times_s=(0.5, 0.25, 0.25), samples_per_step=8),
        _result({"activations": 3 * 2**20}),  # never timed: no throughput
        _result({"activations": 5 * 2**20}, step_times_s=(0.1,), samples_per_step=16),
    ]
    fig = memory_throughput_figure(runs, labels=["a", "b", "c"])
    (tr,) = fig.data
    np.testing.assert_allclose(tr.x, [32.0, 160.0])
    np.testing.assert_array_equal(tr.y, [2.0, 5.0])
    assert list(tr.text) == ["a", "c"] and list(tr.customdata) == [0, 2]
    assert fig.layout.title.subtitle.text == "skipped (no throughput measured): b"
    none = memory_throughput_figure([runs[1]])
    assert len(none.data[0].x) == 0
    assert none.layout.annotations[0].text == "no run with a measured throughput yet"


def _timing(disturbed: tuple[bool, ...], share: float | None = 0.4) -> Timing:
    return Timing(
        steady=sum(disturbed) <= len(disturbed) // 4,
        cpu_share=0.9,
        disturbed_steps=sum(disturbed),
        note="chromium used 40% of the CPU",
        others_share=share,
        step_disturbed=disturbed,
        step_others_share=tuple(0.6 if d else 0.05 for d in disturbed),
    )


def test_memory_throughput_marks_unfinished_disturbed_and_modes() -> None:
    timed = {"step_times_s": (0.1, 0.1), "samples_per_step": 10}
    runs = [
        _result(experiment={"mode": "train"}, **timed),
        _result(experiment={"mode": "train"}, status="cancelled", **timed),
        _result(experiment={"mode": "inference"}, **timed),
        _result(experiment={"mode": "train"}, timing=_timing((True, True, True, False)), **timed),
    ]
    fig = memory_throughput_figure(runs, labels=["#1", "#2", "#3", "#4"])
    (tr,) = fig.data
    assert list(tr.customdata) == [0, 2, 3]  # the cancelled run is not a point
    assert list(tr.marker.symbol) == ["circle", "diamond", "circle-open"]
    assert tr.hovertext[2].startswith("timing disturbed: 3 of 4 steps")
    sub = fig.layout.title.subtitle.text
    assert "#2 (cancelled) (did not finish)" in sub
    assert "inference" in sub and "open markers: timing disturbed" in sub


def test_throughput_figure_marks_disturbed_steps() -> None:
    fig = plots.throughput_figure([0.1, 0.2, 0.05], 10, disturbed=[False, True, False],
                                  others_share=[0.02, 0.55, None])  # fmt: skip
    by = {tr.name: tr for tr in fig.data}
    np.testing.assert_allclose(by["samples/s"].y, [100.0, 50.0, 200.0])
    np.testing.assert_allclose(by["step time (ms)"].y, [100.0, 200.0, 50.0])
    dist = by[plots.DISTURBED_TRACE]
    assert list(dist.x) == [2] and list(dist.y) == [200.0]
    assert list(dist.hovertext) == ["other processes used 55% of the CPU"]
    assert dist.showlegend is True and dist.marker.symbol == "x"
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1
    quiet = plots.throughput_figure([0.1, 0.1], [8, 8], disturbed=[False, False])
    q = {tr.name: tr for tr in quiet.data}[plots.DISTURBED_TRACE]
    assert len(q.x) == 0 and q.showlegend is False  # nothing alarming when steady
    many = plots.throughput_figure([0.1] * 40, 8)
    assert many.layout.xaxis.dtick == 4  # integer steps, about 10 ticks


def test_timing_summary_and_throughput_title() -> None:
    disturbed = _timing((True, True, True, True, True, False, False, False))
    assert plots.timing_summary(disturbed) == (
        "timing disturbed: 5 of 8 steps, other processes used 40% of the CPU"
    )
    assert plots.timing_summary(_timing((False, False))) == ""
    assert plots.timing_summary(None) == ""
    timed = {"step_times_s": (0.1, 0.1), "samples_per_step": 10}
    steady = _result(timing=_timing((False, False)), **timed)
    assert plots.throughput_title(steady) == "Throughput: median 100 samples/s, 100.0 ms/step"
    title = plots.throughput_title(_result(timing=disturbed, **timed))
    assert title.startswith("Throughput: median 100 samples/s") and "5 of 8 steps" in title
    assert plots.throughput_title(_result(status="cancelled", **timed)) == (
        "Throughput: run cancelled after 2 steps (partial)"
    )
    assert plots.throughput_title(_result(status="error")) == (
        "Throughput: run failed, no step measured"
    )


def test_every_figure_fits_its_container_with_readable_ticks() -> None:
    tl = _timeline()
    runs = _three_runs()
    figs = {
        "timeline": timeline_figure(tl),
        "bars": peak_bars_figure(runs),
        "scatter": memory_throughput_figure(runs),
        "modules": module_activations_figure(_result(activations_by_module={"a": 1})),
        "process": process_memory_figure(_result(process=_process())),
        "prediction": prediction_figure({"parameters": 1}),
        "throughput": plots.throughput_figure([0.1], 1),
    }
    for name, fig in figs.items():
        assert fig.layout.autosize is True and fig.layout.width is None, name
        assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0, name
        axis = fig.layout.xaxis if name == "modules" else fig.layout.yaxis
        assert axis.tickformat == plots.MIB_FORMAT or name == "throughput", name
    assert figs["throughput"].layout.yaxis.tickformat == plots.RATE_FORMAT
    assert figs["timeline"].layout.xaxis.tickformat == plots.SECONDS_FORMAT


def test_phase_labels_never_overlap() -> None:
    # forward takes most of the time; backward and optimizer are slivers next to each other
    t = np.array([0.0, 0.9, 0.95, 0.96, 0.97, 0.98, 1.0])
    ph = [P[p] for p in ["forward", "forward", "backward", "optimizer", "backward",
                         "optimizer", "optimizer"]]  # fmt: skip
    fig = timeline_figure(Timeline(t=t, phase=ph, by_category={"other": np.arange(7)}))
    labels = [a for a in fig.layout.annotations if (a.name or "").startswith("phase:")]
    assert [a.text for a in labels] == ["forward"]
    key = fig.layout.title.subtitle.text
    assert "backward" in key and "optimizer" in key and "forward" not in key
    # many bands of each phase: one label per phase at most, on its widest band, none closer
    # than their texts need (6 px a character on a 400 px plot, the figure's assumption)
    n = 40
    t = np.linspace(0.0, 1.0, 4 * n)
    ph = np.tile([P["data"], P["forward"], P["backward"], P["optimizer"]], n).repeat(1)
    ph[80:120] = P["forward"]  # one wide forward band
    fig = timeline_figure(Timeline(t=t, phase=ph, by_category={"other": np.zeros(4 * n)}))
    labels = sorted(
        (a for a in fig.layout.annotations if (a.name or "").startswith("phase:")),
        key=lambda a: a.x,
    )
    assert [a.text for a in labels] == ["forward"]
    for a, b in zip(labels, labels[1:], strict=False):
        assert b.x - a.x >= (len(a.text) + len(b.text)) * 6 / 2 / 400


# -- one run in detail ----------------------------------------------------------------------


def test_module_activations_top_and_rest() -> None:
    acts = {"enc.0": 3 * 2**20, "enc.1": 5 * 2**20, "head": 2**20, "drop": 2**19}
    fig = module_activations_figure(_result(activations_by_module=acts), top=2)
    (tr,) = fig.data
    assert tr.orientation == "h"
    assert list(tr.y) == ["enc.1", "enc.0", "(2 other modules)"]
    np.testing.assert_array_equal(tr.x, [5.0, 3.0, 1.5])
    assert fig.layout.yaxis.autorange == "reversed"  # largest on top
    all_fig = module_activations_figure(_result(activations_by_module=acts))
    assert list(all_fig.data[0].y) == ["enc.1", "enc.0", "head", "drop"]
    empty = module_activations_figure(_result())
    assert (
        len(empty.data[0].x) == 0 and empty.layout.annotations[0].text == "no activations recorded"
    )
    with pytest.raises(ValueError):
        module_activations_figure(_result(), top=0)


def test_module_activations_say_what_a_bar_counts() -> None:
    acts = {"enc": 3 * 2**20, "enc.0": 5 * 2**20}  # a parent and its child
    r = _result({"activations": 6 * 2**20}, activations_by_module=acts, peak_phase="backward")
    sub = module_activations_figure(r).layout.title.subtitle.text
    assert "children excluded" in sub and "do not overlap" in sub
    assert "sum to 8.0 MiB" in sub  # the bars' sum, computed from the data
    assert "activations at the peak (backward): 6.0 MiB" in sub
    assert "freed some" in sub


def _process() -> ProcessSeries:
    anon = np.array([10, 20, 30]) * 2**20
    shm = np.array([1, 1, 1]) * 2**20
    return ProcessSeries(
        t=[0.0, 0.5, 1.0],
        parts={"rss": anon + shm, "rss_anon": anon, "rss_file": None, "rss_shmem": shm,
               "rss_hwm": np.array([11, 21, 31]) * 2**20},
    )  # fmt: skip


def test_process_memory_parts_and_missing_part() -> None:
    proc = _process()
    fig = process_memory_figure(_result(process=proc))
    by_name = {tr.name: tr for tr in fig.data}
    assert list(by_name) == ["anonymous", "shared memory", "total RSS", "RSS high-water mark"]
    np.testing.assert_array_equal(by_name["anonymous"].y, [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(by_name["total RSS"].y, [11.0, 21.0, 31.0])
    np.testing.assert_array_equal(by_name["anonymous"].x, [0.0, 0.5, 1.0])
    assert by_name["anonymous"].stackgroup == by_name["shared memory"].stackgroup == "rss parts"
    assert by_name["total RSS"].stackgroup is None
    assert fig.layout.title.subtitle.text == "not measured on this platform: file-backed"
    full = process_memory_figure(
        _result(process=ProcessSeries(t=[0.0], parts={p: [2**20] for p in proc.parts}))
    )
    assert len(full.data) == 5 and full.layout.title.subtitle.text == ""


def test_update_process_in_place() -> None:
    fig = process_memory_figure(_result())  # empty series: all parts, no points yet
    assert fig.layout.annotations[0].name == "note"
    w = _FakeWidget(fig)
    update_process(w, [0.0, 1.0], {"rss_anon": [2**20, 2**21], "rss": [2**21, 2**22]})
    by_name = {tr.name: tr for tr in fig.data}
    np.testing.assert_array_equal(by_name["anonymous"].y, [1.0, 2.0])
    np.testing.assert_array_equal(by_name["total RSS"].x, [0.0, 1.0])
    assert len(by_name["file-backed"].y) == 0  # not given: left as it was
    assert w.batches == 1 and len(fig.layout.annotations) == 0


# -- predictions ----------------------------------------------------------------------------


def test_prediction_vs_measured() -> None:
    pred = {"parameters": 4 * 2**20, "activations": 8 * 2**20}
    meas = _result({"parameters": 4 * 2**20, "activations": 6 * 2**20})
    fig = prediction_figure(pred, meas)
    assert [tr.name for tr in fig.data] == ["predicted", "measured"]
    assert list(fig.data[0].x) == list(CATEGORIES)
    np.testing.assert_array_equal(fig.data[0].y, [4.0, 0, 0, 8.0, 0, 0, 0])
    np.testing.assert_array_equal(fig.data[1].y, [4.0, 0, 0, 6.0, 0, 0, 0])
    assert fig.layout.barmode == "group"
    assert fig.layout.title.text == "Predicted 12.0 MiB vs measured 10.0 MiB: error +20.0%"
    assert fig.data[1].hovertext[3] == "error +33.3%" and fig.data[1].hovertext[1] == "error n/a"


def test_prediction_of_a_run_that_did_not_finish_has_no_error() -> None:
    pred = {"parameters": 4 * 2**20, "activations": 8 * 2**20}
    oom = _result({"parameters": 4 * 2**20, "activations": 2**20}, status="oom")
    fig = prediction_figure(pred, oom)
    assert [tr.name for tr in fig.data] == ["predicted", "measured (oom: partial)"]
    assert "%" not in fig.layout.title.text and "no error computed" in fig.layout.title.text
    assert set(fig.data[1].hovertext) == {"error n/a"}


def test_prediction_alone_and_validation() -> None:
    fig = prediction_figure({"gradients": 2**20})
    assert [tr.name for tr in fig.data] == ["predicted"]
    assert fig.layout.title.text == "Predicted peak 1.0 MiB (not measured yet)"
    with pytest.raises(ValueError):
        prediction_figure({"weights": 1})


def test_public_api_is_listed() -> None:
    for name in plots.__all__:
        assert hasattr(plots, name), name
