"""memlab.profilers: one comparison of the tools on the mlp's training step, shared by the
module, checked against independent truths (the parameters' bytes from the model itself, the
c10 allocator's events, the trace file on disk). No speed thresholds: overheads are checked to
be measured (positive, anchored in the same job), never to be small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memlab.config import MIB, Experiment
from memlab.profilers import TOOLS, ProfilerComparison, compare_profilers

EXP = Experiment(workload="mlp", batch_size=8)
STEPS = 2


@pytest.fixture(scope="module")
def cmp(tmp_path_factory: pytest.TempPathFactory) -> ProfilerComparison:
    out = tmp_path_factory.mktemp("tb")
    return compare_profilers(EXP, steps=STEPS, trace_dir=str(out))


@pytest.fixture(scope="module")
def param_bytes() -> int:
    from memlab.knobs import build_experiment

    w = build_experiment(EXP, "cpu")
    return sum(p.numel() * p.element_size() for p in w.model.parameters())


def test_the_truth_is_parameters_adam_state_batch_and_the_steps_rise(
    cmp: ProfilerComparison, param_bytes: int
) -> None:
    # Adam keeps two fp32 tensors per parameter: 3x the parameters, plus the batch and Adam's
    # scalar step counters (a few KiB at most).
    assert 3 * param_bytes <= cmp.truth_entry_bytes <= 3 * param_bytes + 64 * 1024
    # The gradients (one parameter's worth) are allocated in every step, so the rise holds them.
    assert cmp.truth_rise_bytes >= param_bytes
    assert cmp.truth_bytes == cmp.truth_entry_bytes + cmp.truth_rise_bytes
    # The truth's own timeline peaks at the truth and ends where it began (nothing leaks).
    assert max(cmp.truth_memory_bytes) == cmp.truth_bytes
    assert cmp.truth_end_bytes == cmp.truth_entry_bytes


def test_tensor_tools_against_the_truth(cmp: ProfilerComparison) -> None:
    # memlab counts the allocator's calls: 1% (in practice exact).
    assert abs(cmp.error_pct("memlab") or 0.0) <= 1.0, cmp.error_bytes("memlab")
    assert cmp.reading("memlab").peak_bytes is not None
    # torch.profiler's memory timeline is rebuilt from tensors: within 5%.
    assert abs(cmp.error_pct("torch.profiler") or 0.0) <= 5.0, cmp.error_bytes("torch.profiler")
    cats = dict(cmp.reading("torch.profiler").attribution)
    assert cats.get("optimizer_state", 0) >= 0.9 * (cmp.truth_entry_bytes * 2 / 3)


def test_rss_tools_see_the_process_above_the_tensors(cmp: ProfilerComparison) -> None:
    for tool in ("memory_profiler", "mprun"):
        r = cmp.reading(tool)
        assert r.peak_bytes is not None and r.peak_bytes >= cmp.truth_bytes, tool
    mp = cmp.reading("memory_profiler")
    assert len(mp.t_s) == len(mp.memory_bytes) >= 2
    assert cmp.rss_end_bytes is not None and cmp.truth_end_bytes is not None
    assert cmp.rss_end_bytes > cmp.truth_end_bytes
    codes = [row[4] for row in cmp.line_profile]
    assert "loss.backward()" in codes and "self.optimizer.step()" in codes
    assert all(row[3] == STEPS for row in cmp.line_profile if row[4] == "loss.backward()")
    assert "Line #" in cmp.line_profile_text


def test_costs_are_measured_against_an_anchor_of_the_same_job(cmp: ProfilerComparison) -> None:
    none = cmp.reading("none")
    assert len(none.step_times_s) == 2 * STEPS  # before and after the tools
    assert cmp.anchor_step_s is not None and cmp.anchor_step_s > 0
    for tool in TOOLS[1:]:
        r = cmp.reading(tool)
        assert len(r.step_times_s) == STEPS
        ov = cmp.overhead(tool)
        assert ov is not None and ov > 0
        assert ov == pytest.approx(r.step_s / cmp.anchor_step_s)  # type: ignore[operator]


def test_the_tensorboard_trace_is_written_and_parseable(cmp: ProfilerComparison) -> None:
    assert cmp.tensorboard_trace is not None
    path = Path(cmp.tensorboard_trace)
    assert (
        path.name.endswith(".pt.trace.json") and path.stat().st_size == cmp.tensorboard_trace_bytes
    )
    events = json.loads(path.read_text())["traceEvents"]
    assert len(events) == cmp.tensorboard_events
    assert any(e.get("name") == "[memory]" for e in events)


def test_round_trip(cmp: ProfilerComparison) -> None:
    d = json.loads(json.dumps(cmp.to_dict()))
    assert ProfilerComparison.from_dict(d) == cmp
    rows = cmp.table()
    assert [r["tool"] for r in rows][1:] == list(TOOLS)
    assert rows[0]["peak_mib"] == pytest.approx(cmp.truth_bytes / MIB)


def test_figures_draw_the_data(cmp: ProfilerComparison) -> None:
    from memlab.plots_profilers import TRUTH_NAME, cost_figure, timeline_figure

    fig = timeline_figure(cmp)
    by = {}
    for t in fig.data:
        by.setdefault(t.name, t)
    assert {TRUTH_NAME, "memlab", "torch.profiler", "memory_profiler"} <= set(by)
    assert max(by[TRUTH_NAME].y) == pytest.approx(cmp.truth_bytes / MIB)
    assert max(by["memlab"].y) == pytest.approx(cmp.reading("memlab").peak_bytes / MIB)  # type: ignore[operator]
    cost = cost_figure(cmp)
    err, ov = cost.data
    assert list(err.x) == ["memory_profiler", "mprun", "torch.profiler", "memlab"]
    assert list(err.y) == pytest.approx([cmp.error_pct(t) for t in err.x])
    assert list(ov.y) == pytest.approx([cmp.overhead(t) for t in ov.x])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": "3"}, "steps"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"exp": Experiment(mode="inference")}, "exp.mode"),
        ({"exp": "mlp"}, "exp"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    exp = kwargs.pop("exp", EXP)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        compare_profilers(exp, **kwargs)


def test_unknown_tool_is_named(cmp: ProfilerComparison) -> None:
    with pytest.raises(ValueError, match="unknown tool 'perf'"):
        cmp.reading("perf")
