"""The peak drill-down (``RunResult.peak_report``): what was alive at the peak, largest first,
with its category, ATen op and the user's source line; its round trips; a run's result; the
panel's click on the timeline and its comparison of the last two runs.

The truth: a training step into which the test allocates one 8 MB tensor, at a line of this
file, in a ``data`` phase (so its category is ``inputs``, rule 3 of attribution.py), far larger
than anything the small MLP holds; its bytes are the storage's own ``nbytes``."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import memlab  # noqa: E402
from memlab.timeline import PeakBlock, PeakReport, RunResult  # noqa: E402

BIG = 2_000_000  # float32 elements: 8,000,000 bytes
BIG_LINE = 0  # set by step() to the line that allocates the big tensor


def _model() -> tuple[Any, Any, Any, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    return model, opt, x, y


def _tracked(**kw: Any) -> tuple[RunResult, int]:
    """Two steps; each allocates the big tensor and keeps it to the step's end."""
    global BIG_LINE
    model, opt, x, y = _model()
    nbytes = 0
    with memlab.track(model, optimizer=opt, inputs=(x, y), sample_interval_s=None, **kw) as rec:
        for _ in range(2):
            with rec.phase("data"):
                BIG_LINE = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
                big = torch.empty(BIG)
                big.fill_(1.0)
            loss = F.cross_entropy(model(x + big[:64]), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            nbytes = int(big.untyped_storage().nbytes())
            del big, loss
            rec.step()
    assert rec.result is not None
    return rec.result, nbytes


@pytest.fixture(scope="module")
def with_lines() -> tuple[RunResult, int]:
    return _tracked(source_lines=True, top_blocks=1000)


def test_top_block_is_the_big_tensor_with_op_and_line(with_lines: tuple[RunResult, int]) -> None:
    r, nbytes = with_lines
    assert nbytes == 8_000_000
    rep = r.peak_report
    assert rep is not None
    top = rep.blocks[0]
    assert top.bytes == nbytes
    assert top.category == "inputs"
    assert top.phase == "data"
    assert top.op == "aten::empty"
    assert top.line == f"tests/test_drilldown.py:{BIG_LINE}"
    assert top.count == 1
    # the second block is much smaller: the big one is unambiguous
    assert rep.blocks[1].bytes < nbytes // 10
    # Largest first, and every block alive at the peak is listed (top_blocks=1000): their bytes
    # sum to the peak exactly, as do the sites', and the blocks' categories to the category
    # split at the peak.
    sizes = [b.bytes for b in rep.blocks]
    assert sizes == sorted(sizes, reverse=True)
    assert len(rep.blocks) == rep.n_blocks
    assert sum(sizes) == r.peak_bytes == rep.total_bytes
    assert rep.rest_bytes == 0
    assert sum(s.bytes for s in rep.sites) == r.peak_bytes
    assert sum(s.count for s in rep.sites) == rep.n_blocks
    for c, v in r.peak_by_category.items():
        assert sum(b.bytes for b in rep.blocks if b.category == c) == v, c
    assert rep.t_s == r.peak_time_s and rep.phase == r.peak_phase
    # the parameters are there as blocks alive at entry, one per tensor
    entry = [b for b in rep.blocks if b.phase == "entry" and b.category == "parameters"]
    assert sorted(b.bytes for b in entry) == sorted(
        p.numel() * 4 for p in torch.nn.Sequential(*_model()[0]).parameters()
    )
    # the op of every allocation made inside by an ATen op is named; scalars made from Python
    # numbers (Adam's step counters: torch.tensor(0.0)) are not dispatched, so have none
    inside = [b for b in rep.blocks if b.phase != "entry"]
    assert all(b.op is not None and b.op.startswith("aten::") for b in inside if b.bytes > 8)
    assert {b.op for b in inside if b.category == "optimizer_state" and b.bytes > 8} == {
        "aten::zeros_like"
    }


def test_ops_and_lines_are_opt_in_and_do_not_change_the_bytes(
    with_lines: tuple[RunResult, int],
) -> None:
    plain, nbytes = _tracked(ops=False)
    ops, _ = _tracked(ops=True)
    for r in (plain, ops):
        assert r.peak_report is not None
        top = r.peak_report.blocks[0]
        assert (top.bytes, top.category, top.line) == (nbytes, "inputs", None)
        assert sum(b.bytes for b in r.peak_report.sites) == r.peak_bytes
    assert plain.peak_report is not None and ops.peak_report is not None
    assert plain.peak_report.blocks[0].op is None
    assert ops.peak_report.blocks[0].op == "aten::empty"
    assert len(plain.peak_report.blocks) == 20  # the default top_blocks
    # the alive report keeps its grouping by line, not split by op: Adam's two state tensors
    # per parameter (exp_avg, exp_avg_sq) are one site at the line of opt.step()
    r = with_lines[0]
    assert r.alive is not None
    sites = r.alive.steps[0].sites
    keys = [(s.phase, s.module, s.line, s.category) for s in sites]
    assert len(keys) == len(set(keys))
    opt_line = f"tests/test_drilldown.py:{BIG_LINE + 4}"  # opt.step()
    (state,) = [s for s in sites if s.category == "optimizer_state" and s.line == opt_line]
    assert state.bytes == 2 * sum(p.numel() * 4 for p in _model()[0].parameters())


def test_round_trips_and_store(with_lines: tuple[RunResult, int], tmp_path: Path) -> None:
    r = with_lines[0]
    assert RunResult.from_dict(r.to_dict()).peak_report == r.peak_report
    assert RunResult.from_json(r.to_json(timeline=False)).peak_report == r.peak_report
    from memlab.store import Store

    s = Store(tmp_path / "runs.sqlite")
    rid = s.save(r)
    assert s.load(rid).peak_report == r.peak_report
    with pytest.raises(ValueError, match="category"):
        PeakBlock(bytes=1, category="weights", phase="data")
    with pytest.raises(ValueError, match="phase"):
        PeakBlock(bytes=1, category="inputs", phase="training")
    with pytest.raises(ValueError, match="ops"):
        memlab.track(ops=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_blocks"):
        memlab.track(top_blocks=0)


def test_peak_table_and_compare_html(with_lines: tuple[RunResult, int]) -> None:
    from memlab.ui.panel import compare_table_html, peak_table_html

    r = with_lines[0]
    page = peak_table_html(r, rows=3)
    assert "aten::empty" in page and f"test_drilldown.py:{BIG_LINE}" in page
    assert memlab.format_bytes(8_000_000) in page
    assert "more blocks" in page
    assert "no peak drill-down" in peak_table_html(dataclasses.replace(r, peak_report=None))
    big = dataclasses.replace(r, peak_bytes=r.peak_bytes + 1024)
    from memlab.comparing import compare

    page = compare_table_html(compare(r, big))
    assert "+" + memlab.format_bytes(1024) in page  # the peak's delta
    assert isinstance(r.peak_report, PeakReport)


def test_a_run_has_the_drilldown(monkeypatch: pytest.MonkeyPatch) -> None:
    from memlab.config import Experiment

    exp = Experiment(workload="mlp", batch_size=16, steps=2, warmup=1, device="cpu")
    monkeypatch.setenv("MEMLAB_DRILLDOWN", "everything")
    with pytest.raises(ValueError, match="MEMLAB_DRILLDOWN"):
        memlab.run(exp, save=False)
    monkeypatch.setenv("MEMLAB_DRILLDOWN", "lines")
    r = memlab.run(exp, save=False, timeout_s=300)
    assert r.status == "ok", r.error
    rep = r.peak_report
    assert rep is not None and rep.total_bytes == r.peak_bytes
    assert len(rep.sites) < 20  # every site is listed: their bytes sum to the peak exactly
    assert sum(s.bytes for s in rep.sites) == r.peak_bytes
    assert sum(s.count for s in rep.sites) == rep.n_blocks
    # the sites of blocks made inside by ATen ops (not the scalars made from Python numbers)
    # name the op and the line of memlab's built-in workload that called it
    inside = [b for b in rep.sites if b.phase != "entry" and b.bytes > 8 * b.count]
    assert inside and all(b.op and b.op.startswith("aten::") for b in inside)
    assert all(b.line and b.line.startswith("workloads/") for b in inside)
    assert any(b.category == "gradients" and b.op == "aten::mm" for b in inside)
    assert any("MEMLAB_DRILLDOWN" in n for n in r.notes)
    assert RunResult.from_json(r.to_json(timeline=False)).peak_report == rep


def test_panel_click_lists_the_peak_and_compare_view(with_lines: tuple[RunResult, int]) -> None:
    from plotly.callbacks import InputDeviceState, Points

    from memlab.config import Experiment
    from memlab.ui.panel import Panel

    r = with_lines[0]
    exp = Experiment(workload="mlp", batch_size=16, steps=2, warmup=1, device="cpu")
    p = Panel(experiment=exp, smoke=False, warm=False, predict=False)
    try:
        p._on_done(p._gen, r)
        assert "failed" not in p.status and p.compare_view.value == ""  # one run: no compare
        assert p.comparison is None
        # a click on the timeline (what plotly's front end sends) lists the peak's blocks
        fw = p.figures["memory"]
        trace = next(t for t in fw.data if t.name == "inputs")
        pts = Points(point_inds=[0], xs=[r.peak_time_s], ys=[0.0], trace_name="inputs")
        trace._dispatch_on_click(
            pts,
            InputDeviceState(ctrl=False, alt=False, shift=False, meta=False, button=0, buttons=1),
        )
        page = p.peak_view.value
        assert "aten::empty" in page and f"test_drilldown.py:{BIG_LINE}" in page
        assert memlab.format_bytes(8_000_000) in page
        # a second ok run: the compare view shows it against the first (memlab.compare's deltas)
        bigger = dataclasses.replace(r, peak_bytes=r.peak_bytes + 4096)
        p._on_done(p._gen, bigger)
        # the drill-down of the previous run is gone; a hint says how to get this one's
        assert "aten::" not in p.peak_view.value and "Click" in p.peak_view.value
        assert p.comparison is not None
        assert p.comparison.get("total", "peak tensors").delta == 4096
        assert "run 2 against run 1" in p.compare_view.value
        assert "+" + memlab.format_bytes(4096) in p.compare_view.value
        p.show_peak()
        assert "aten::empty" in p.peak_view.value
        p.clear_history()
        assert p.compare_view.value == "" and p.peak_view.value == ""
    finally:
        p.close()
