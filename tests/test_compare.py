"""memlab.compare: every delta against the two results' own figures computed here by hand,
runs named by id through the store, failed runs, and the overlaid figure's data."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from memlab.comparing import SECTIONS, Comparison, compare
from memlab.config import MIB, Experiment
from memlab.plots_compare import compare_figure, step_axis
from memlab.store import Store
from memlab.timeline import CATEGORIES, PHASES

from .runs_data import make_result


@pytest.fixture(scope="module")
def pair() -> Comparison:
    a = make_result(10, modules={"fc1": 4000, "fc2": 1000}, step_times=(0.2, 0.1, 0.3))
    b = make_result(
        11,
        experiment=Experiment(batch_size=40, checkpointing="every-block", seed=11),
        modules={"fc1": 1500, "attn": 700},
        step_times=(0.05, 0.07, 0.06, 0.08),
    )
    return compare(a, b)


def test_every_delta_is_b_minus_a_of_their_own_figures(pair: Comparison) -> None:
    a, b = pair.a, pair.b
    p = pair.get("total", "peak tensors")
    assert (p.a, p.b, p.delta) == (a.peak_bytes, b.peak_bytes, b.peak_bytes - a.peak_bytes)
    assert p.ratio == pytest.approx(b.peak_bytes / a.peak_bytes)
    rss = pair.get("total", "RSS peak")
    assert rss.delta == b.rss_peak_bytes - a.rss_peak_bytes  # type: ignore[operator]
    for c in CATEGORIES:
        at = pair.get("at peak", c)
        assert (at.a, at.b) == (a.peak_by_category[c], b.peak_by_category[c])
        # a category's own highest value, read from the timelines' rows (pandas, not numpy)
        own = pair.get("category peak", c)
        assert own.a == a.timeline.to_dataframe()[c].max()
        assert own.b == b.timeline.to_dataframe()[c].max()
        assert own.delta == own.b - own.a  # type: ignore[operator]
    # at the peak, the categories sum to the peak (both runs)
    assert sum(pair.section("at peak")[c].a for c in CATEGORIES) == a.peak_bytes  # type: ignore[misc]
    for ph in PHASES:
        d = pair.get("phase peak", ph)
        rows_a = a.timeline.to_dataframe().query("phase == @ph")
        assert d.a == (rows_a[list(CATEGORIES)].sum(axis=1).max())
    mods = pair.section("module activations")
    assert list(mods) == ["fc1", "fc2", "attn"]  # largest first
    assert (mods["fc1"].a, mods["fc1"].b, mods["fc1"].delta) == (4000, 1500, -2500)
    assert (mods["fc2"].a, mods["fc2"].b) == (1000, 0)  # b has no fc2: it saved nothing there
    assert (mods["attn"].a, mods["attn"].b) == (0, 700)
    med = pair.get("speed", "step time (median)")
    assert med.a == pytest.approx(0.2) and med.b == pytest.approx(
        statistics.median([5, 7, 6, 8]) / 100
    )
    thr = pair.get("speed", "throughput")
    assert thr.a == pytest.approx(a.samples_per_step / 0.2)
    assert thr.b == pytest.approx(40 / 0.065)
    assert thr.delta == pytest.approx(40 / 0.065 - a.samples_per_step / 0.2)


def test_table_and_dict(pair: Comparison) -> None:
    df = pair.table()
    assert list(df.columns) == ["section", "name", "unit", "a", "b", "delta", "ratio"]
    assert len(df) == len(pair.deltas) and set(df["section"]) <= set(SECTIONS)
    known = df.dropna(subset=["a", "b"])
    assert np.allclose(known["delta"], known["b"] - known["a"])
    d = pair.to_dict()
    assert d["changed"] == {
        "batch_size": (18, 40),
        "checkpointing": ("off", "every-block"),
        "seed": (10, 11),
    }
    assert "Comparison(a -> b: peak" in repr(pair) and "<table>" in pair._repr_html_()


def test_a_failed_run_has_no_figures_to_compare() -> None:
    a = make_result(1)
    b = type(a)(peak_bytes=0, peak_by_category={}, status="error", error="boom")
    c = compare(a, b)
    for section, name in (("total", "peak tensors"), ("at peak", "activations")):
        d = c.get(section, name)
        assert d.a is not None and d.b is None and d.delta is None and d.ratio is None
    assert c.get("speed", "step time (median)").b is None
    assert c.get("category peak", "parameters").b is None  # no timeline
    fig = compare_figure(c)
    assert "no timeline for b (status error)" in fig.layout.title.subtitle.text


def test_runs_named_by_id_through_the_store(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.sqlite") as s:
        ia, ib = s.save(make_result(3)), s.save(make_result(4))
        c = compare(ia[:5], ib, store=s)
    assert (c.a_id, c.b_id) == (ia, ib) and c.labels == (ia, ib)
    assert c.get("total", "peak tensors").b == make_result(4).peak_bytes
    with pytest.raises(TypeError, match="run ids or memlab.RunResults"):
        compare(3, ib, store=s)  # type: ignore[arg-type]


def test_figure_overlays_both_timelines(pair: Comparison) -> None:
    fig = compare_figure(pair, x="time", max_points=10_000)
    by_name = {t.name: t for t in fig.data}
    for r, label in ((pair.a, "a"), (pair.b, "b")):
        tot = by_name[f"{label} total"]
        assert np.allclose(np.asarray(tot.y) * MIB, r.timeline.total)
        assert np.array_equal(np.asarray(tot.x), r.timeline.t)
        for c in CATEGORIES:
            tr = by_name[f"{c} ({label})"]
            assert np.allclose(np.asarray(tr.y) * MIB, r.timeline.by_category[c])
        mark = by_name[f"{label} peak"]
        assert mark.y[0] * MIB == pytest.approx(r.timeline.total.max())
    assert {t.line.dash for t in fig.data if t.mode == "lines"} == {"solid", "dash"}
    # thinned, each line still reaches its exact peak
    small = compare_figure(pair, max_points=50)
    tot = next(t for t in small.data if t.name == "b total")
    assert len(tot.y) <= 50 and max(tot.y) * MIB == pytest.approx(pair.b.timeline.total.max())
    assert small.layout.xaxis2.title.text.startswith("step")
    with pytest.raises(ValueError, match="x must be one of"):
        compare_figure(pair, x="pixels")


def test_step_axis_puts_each_step_mark_on_its_number(pair: Comparison) -> None:
    tl = pair.a.timeline
    x = step_axis(tl)
    assert x is not None
    steps = [(t, int(lab.split()[1])) for t, lab in tl.marks if lab.startswith("step ")]
    for t, k in steps:
        i = int(np.searchsorted(tl.t, t))
        assert x[i] == pytest.approx(k)
    assert x[0] >= 0 and np.all(np.diff(x) >= 0)
    assert step_axis(type(tl)(t=tl.t, phase=tl.phase, by_category=tl.by_category)) is None
