"""Lab 06's module (memlab.labs.inference) on hand-made plans, runs and batching tables: every
figure in its prose and exercises comes from the objects passed in, and no explanation shown
before an exercise states that exercise's answer."""

from __future__ import annotations

import pandas as pd
import pytest

from memlab import Experiment
from memlab.labs import inference as lab
from memlab.labs.sweeps import Sweep
from memlab.planning import MemoryPlan, TensorLife, lower_bound, plan_all
from memlab.timeline import Latency, RunResult

KIB = 1024


def _plan() -> MemoryPlan:
    # a -> b -> c, with a and c never alive together: naive 3 x 64 KiB, best 2 x 64 KiB.
    lives = [
        TensorLife(0, 64 * KIB, 0, 1, "conv1"),
        TensorLife(1, 64 * KIB, 1, 2, "conv2"),
        TensorLife(2, 64 * KIB, 2, 3, "fc"),
        TensorLife(3, 32 * KIB, 1, 1, "conv2", "scratch"),
    ]
    graph = [t for t in lives if t.kind == "graph"]
    plans = plan_all(graph)
    best = min(plans.values(), key=lambda p: p.arena_bytes)
    return MemoryPlan(
        eager_peak_bytes=160 * KIB,
        scratch_bytes=32 * KIB,
        scratch_max_bytes=32 * KIB,
        inputs_bytes=0,
        lower_bound_bytes=lower_bound(graph),
        planner_bytes={k: p.arena_bytes for k, p in plans.items()},
        best_planner=best.planner,
        offsets=dict(best.offsets),
        tensors=tuple(lives),
        ops=("conv1", "conv2", "relu", "fc"),
    )


def _run(allocs: int, p50: float, peak: int, metrics: dict[str, object] | None = None) -> RunResult:
    exp = Experiment(workload="cnn", mode="inference", batch_size=8)
    return RunResult(
        peak_bytes=peak,
        peak_by_category={"activations": peak},
        status="ok",
        step_times_s=(p50, p50),
        samples_per_step=8,
        experiment=exp.to_dict(),
        metrics=metrics or {},
        latency=Latency(
            first_s=3 * p50,
            request_times_s=(p50, p50, p50),
            samples_per_request=8,
            allocs_by_request=(allocs, allocs),
        ),
    )


def _sweep() -> Sweep:
    base = Experiment(workload="cnn", mode="inference", batch_size=8)
    exps = lab.strategy_experiments(base, ["dynamic", "preallocated"])
    runs = (
        _run(47, 0.010, 2 * 1024 * KIB),
        _run(0, 0.012, 6 * 1024 * KIB, {"plan_arena_bytes": 6 * 1024 * KIB}),
    )
    return Sweep(labels=tuple(exps), experiments=tuple(exps.values()), results=runs)


def _batching() -> pd.DataFrame:
    rows = []
    for b, p50, peak in ((1, 0.002, 1_000_000), (8, 0.008, 2_500_000)):
        rows.append(
            {
                "batch_size": b,
                "status": "ok",
                "error": None,
                "first_s": p50 * 2,
                "p50_s": p50,
                "p95_s": p50,
                "p99_s": p50,
                "requests_per_s": 1 / p50,
                "samples_per_s": b / p50,
                "latency_per_sample_s": p50 / b,
                "allocs_per_request": 40.0,
                "peak_bytes": peak,
            }
        )
    return pd.DataFrame(rows)


def test_strategy_experiments_need_inference_and_known_labels() -> None:
    with pytest.raises(ValueError, match="mode must be 'inference'"):
        lab.strategy_experiments(Experiment(workload="cnn"))
    with pytest.raises(ValueError, match="unknown strategies"):
        lab.strategy_experiments(Experiment(workload="cnn", mode="inference"), ["pooled"])
    exps = lab.strategy_experiments(Experiment(workload="cnn", mode="inference"))
    assert exps["preallocated"].allocation == "preallocated"
    assert exps["inplace"].inplace is True and exps["fold"].fuse == "fold"


def test_plan_prose_is_built_from_the_plan_and_keeps_the_reuse_answer() -> None:
    plan = _plan()
    assert plan.naive_bytes == 192 * KIB and plan.best_bytes == 128 * KIB
    table, text = lab.plan_table(plan), lab.explain_plan(plan)
    assert "192.0 KiB" in table and "128.0 KiB" in table
    # arena 128 KiB + largest scratch 32 KiB = 160 KiB: the same as eager's peak (+0%).
    assert "160.0 KiB committed" in text and "+0% against eager's peak" in text
    ex = lab.exercise_reuse(plan)
    truth = f"{plan.reuse_factor:.2f}"
    assert truth == "1.50"
    assert truth not in table + text and "1.5x" not in table + text
    assert ex.check(2.0).ok is False
    assert ex.check(1.5).ok is True and "**1.50**" in ex.solution()


def test_strategies_prose_and_the_allocs_exercise() -> None:
    sweep, plan = _sweep(), _plan()
    text = lab.explain_strategies(sweep, plan=plan)
    assert "| dynamic | 2.0 MiB | 47 |" in text and "| preallocated | 6.0 MiB | 0 |" in text
    assert "+200%" in text  # preallocated's peak against dynamic's
    assert "more than the plan above (128.0 KiB)" in text  # the im2col arena, explained
    assert "3.00x a steady one: lazy initialisation" in text
    assert lab.allocs_per_request(sweep["dynamic"]) == 47
    ex = lab.exercise_allocs_saved(sweep)
    assert ex.check(40).ok is False
    assert ex.check(47).ok is True and "**47** calls per request" in ex.solution()


def test_batching_prose_figure_and_growth_exercise() -> None:
    df = _batching()
    text = lab.explain_batching(df)
    assert "4.00x as long" in text and "from 500 to 1000 samples/s" in text
    assert "Batching amortizes" in text
    assert lab.batch_growth(df) == pytest.approx(2.5)
    assert "2.5" not in text  # the exercise's answer is not in the explanation
    fig = lab.batching_figure(df)
    assert list(fig.data[0].y) == pytest.approx([2.0, 8.0])
    ex = lab.exercise_batch_growth(df)
    assert ex.check(8).ok is False and ex.check(2.5).ok is True


def test_batching_that_did_not_pay_is_said_so() -> None:
    df = _batching()
    df.loc[1, "p50_s"], df.loc[1, "samples_per_s"] = 0.04, 200.0
    assert "Batching did not pay here" in lab.explain_batching(df)


def test_batching_disturbed_runs_are_named_and_an_impossible_speedup_is_not_explained() -> None:
    df = _batching()
    df["steady"] = [True, False]
    assert "Timing disturbed at batch 8" in lab.explain_batching(df)
    df.loc[1, "p50_s"] = 0.001  # 8 samples faster than 1: not physics, a disturbed run
    text = lab.explain_batching(df)
    assert "took less time than one of 1" in text and "Batching amortizes" not in text


def test_the_status_line_of_an_inference_run_gives_the_request_latency() -> None:
    from memlab.ui.messages import final_message

    text = final_message(_run(47, 0.010, 2 * 1024 * KIB), runs_shown=1)
    assert "request p50 10.0 / p99 10.0 ms, 47 allocator calls/request" in text


def test_without_allocator_counts_the_exercise_says_why_instead_of_failing() -> None:
    exp = Experiment(workload="cnn", mode="inference", batch_size=8)
    runs = (_run(47, 0.01, KIB), _run(0, 0.01, KIB))
    for r in runs:
        object.__setattr__(r.latency, "allocs_by_request", None)  # the profiler fallback
    sweep = Sweep(("dynamic", "preallocated"), (exp, exp), runs)
    assert lab.allocs_saved(sweep) is None
    ex = lab.exercise_allocs_saved(sweep)
    c = ex.check(None)
    assert c.ok is None and "C++ recorder" in c.message
    assert ex.check(47).ok is None
