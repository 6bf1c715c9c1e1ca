"""memlab.scheduling: policies run for real on warm workers sharing one budget.

One module fixture runs the four policies once on a small mix where every task arrives at
once (so each policy's start order is its rule, computed here from the task list), and where
the first two tasks (an MLP, 32 MiB of weights, and a transformer at batch 64, 23 MiB) each fit
the 48 MiB budget but not together: FIFO starts them together and one must fail with oom;
memory-aware admission never does."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")

from memlab.config import MIB, Experiment  # noqa: E402
from memlab.scheduling import (  # noqa: E402
    POLICIES,
    ScheduleResult,
    Task,
    compare_policies,
    dispatch_order,
    mixed_tasks,
    policy_table,
    schedule,
    start_schedule,
)

BUDGET = 48 * MIB
TOLERANCE = 0.03  # the estimator's bar (tests/test_estimate.py)


def _task(name: str, workload: str, batch: int, prio: int, deadline: float, req: int) -> Task:
    exp = Experiment(workload=workload, mode="inference", batch_size=batch, data_size=batch)
    return Task(name, exp, arrival_s=0.0, priority=prio, deadline_s=deadline, requests=req)


TASKS = [
    _task("a-mlp", "mlp", 32, 0, 0.4, 50),
    _task("b-transformer", "transformer", 64, 3, 3.0, 4),
    _task("c-cnn", "cnn", 16, 1, 1.0, 3),
    _task("d-transformer", "transformer", 16, 2, 2.0, 3),
]


@pytest.fixture(scope="module")
def results() -> tuple[dict[str, ScheduleResult], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_event(e: dict[str, Any]) -> None:
        with lock:
            events.append(e)

    out = compare_policies(TASKS, BUDGET, on_event=on_event, timeout_s=300)
    return out, events


def test_every_policy_ran_every_task(results: Any) -> None:
    out, _ = results
    assert list(out) == list(POLICIES)
    for r in out.values():
        assert r.status == "ok", r.error
        assert len(r.start_order()) == len(TASKS)
        assert all(t.end_s is not None and t.start_s is not None for t in r.tasks)


def test_start_orders_follow_each_rule(results: Any) -> None:
    """All tasks wait at t=0, so each policy dispatches them in its rule's order."""
    out, _ = results
    fifo = [t.name for t in TASKS]  # equal arrivals: the given order
    prio = [t.name for t in sorted(TASKS, key=lambda t: -t.priority)]
    edf = [t.name for t in sorted(TASKS, key=lambda t: t.arrival_s + t.deadline_s)]
    assert out["fifo"].start_order() == fifo
    assert out["priority"].start_order() == prio
    assert out["edf"].start_order() == edf
    assert dispatch_order(TASKS, "edf") == edf  # the pure helper agrees


def test_memory_aware_admission_has_no_oom_and_stays_in_budget(results: Any) -> None:
    out, _ = results
    r = out["memory-aware"]
    assert r.enforcement in ("shared-pool", "polled")
    assert r.oom_count == 0
    assert r.peak_bytes <= BUDGET, r.notes
    if r.pool_peak_bytes is not None:
        assert r.pool_peak_bytes <= BUDGET
        # The merged per-task events and the pool's own counter see the same bytes.
        assert abs(r.pool_peak_bytes - r.peak_bytes) <= 0.01 * r.peak_bytes
    # The MLP and the big transformer never ran at the same time.
    a, b = (next(t for t in r.tasks if t.name == n) for n in ("a-mlp", "b-transformer"))
    assert a.end_s is not None and b.start_s is not None and b.start_s >= a.end_s - 0.05


def test_fifo_without_admission_hits_oom(results: Any) -> None:
    """a-mlp and b-transformer start together under FIFO; together they pass the budget."""
    out, _ = results
    r = out["fifo"]
    assert r.oom_count >= 1
    oom = [t.name for t in r.tasks if t.status == "oom"]
    assert set(oom) & {"a-mlp", "b-transformer"}, oom
    for t in r.tasks:
        if t.status == "oom":
            assert "pool" in (t.error or "") or "budget" in (t.error or ""), t.error
    if r.pool_peak_bytes is not None:  # the shared pool never lets the budget pass
        assert r.pool_peak_bytes <= BUDGET


def test_predicted_peaks_match_measured_within_3_percent(results: Any) -> None:
    out, _ = results
    checked = 0
    for r in out.values():
        for t in r.tasks:
            if t.completed:
                assert t.measured_peak_bytes is not None
                gap = abs(t.predicted_peak_bytes - t.measured_peak_bytes)
                assert gap <= TOLERANCE * t.measured_peak_bytes, (t.name, t)
                # Over its whole life (build, teardown) a task holds no more than its requests'
                # peak plus a little (the one-batch data set while building).
                assert t.task_peak_bytes is not None
                assert t.task_peak_bytes <= 1.05 * t.measured_peak_bytes
                checked += 1
    assert checked >= 12


def test_deadline_misses_counted_from_recorded_times(results: Any) -> None:
    out, _ = results
    for r in out.values():
        for t in r.tasks:
            if t.status in ("done", "missed"):
                assert t.end_s is not None
                assert (t.status == "missed") == (t.end_s > t.arrival_s + t.deadline_s)
        expected = sum(
            not (t.status == "done" and t.end_s is not None and t.end_s <= t.due_s) for t in r.tasks
        )
        assert r.deadline_misses == expected
        lat = sorted(t.end_s - t.arrival_s for t in r.tasks if t.completed and t.end_s)
        assert r.p50_latency_s is not None and lat[0] <= r.p50_latency_s <= lat[-1]


def test_events_and_no_worker_survives(results: Any) -> None:
    out, events = results
    started = [e for e in events if e["kind"] == "started"]
    ended = [e for e in events if e["kind"] == "ended"]
    assert len(started) == len(ended) == len(TASKS) * len(POLICIES)
    assert any(e["kind"] == "memory" for e in events)
    for r in out.values():
        assert r.pids and not any(psutil.pid_exists(p) for p in r.pids)


def test_result_round_trips_and_draws(results: Any) -> None:
    from memlab.plots_scheduling import policy_figure, schedule_figure

    out, _ = results
    r = out["fifo"]
    assert ScheduleResult.from_dict(r.to_dict()) == r
    tab = r.table()
    assert list(tab["task"]) == [t.name for t in TASKS]
    assert len(policy_table(out)) == len(POLICIES)
    fig = schedule_figure(r)
    bars = [tr for tr in fig.data if tr.type == "bar"]
    assert sum(len(b.y) for b in bars) == len(TASKS)
    assert {b.name for b in bars} == {t.status for t in r.tasks}
    mem = next(tr for tr in fig.data if tr.name == "combined memory (exact)")
    assert max(mem.y) == pytest.approx(r.peak_bytes / MIB)
    budget = next(tr for tr in fig.data if tr.name == "budget")
    assert set(budget.y) == {BUDGET / MIB}
    pf = policy_figure(out)
    assert list(pf.data[0].y) == [x.deadline_misses for x in out.values()]
    assert list(pf.data[3].y) == [x.oom_count for x in out.values()]


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="policy"):
        schedule(TASKS, "lifo", budget_bytes=BUDGET)
    with pytest.raises(ValueError, match="budget_bytes"):
        schedule(TASKS, "fifo", budget_bytes=0)
    with pytest.raises(ValueError, match="slots"):
        schedule(TASKS, "fifo", budget_bytes=BUDGET, slots=0)
    with pytest.raises(ValueError, match="unique"):
        schedule([TASKS[0], TASKS[0]], "fifo", budget_bytes=BUDGET)
    with pytest.raises(ValueError, match="mode"):
        Task("t", Experiment(workload="mlp"), requests=1)
    with pytest.raises(ValueError, match="deadline_s"):
        Task("t", Experiment(workload="mlp", mode="inference"), deadline_s=0)
    # A task that could never be admitted: refused up front, naming it.
    with pytest.raises(ValueError, match=r"tasks\[0\] 'a-mlp'"):
        schedule(TASKS, "memory-aware", budget_bytes=8 * MIB, predicted=[40 * MIB] * 4)


def test_mixed_tasks_is_seeded_and_exceeds_the_default_budget() -> None:
    a, b = mixed_tasks(n=8, seed=0), mixed_tasks(n=8, seed=0)
    assert a == b and a != mixed_tasks(n=8, seed=1)
    assert sum(t.workload == "mlp" for t in a) >= 2  # two MLPs never fit 64 MiB together
    assert len({(t.workload, t.batch_size) for t in a}) >= 4


def test_cancel_kills_every_worker() -> None:
    started = threading.Event()
    tasks = [_task(f"t{i}", "mlp", 64, 0, 5.0, 400) for i in range(3)]

    def on_event(e: dict[str, Any]) -> None:
        if e["kind"] == "started":
            started.set()

    h = start_schedule(
        tasks, "fifo", budget_bytes=1024 * MIB, on_event=on_event, predicted=[40 * MIB] * 3
    )
    assert started.wait(120)
    t0 = time.monotonic()
    h.cancel()
    r = h.wait(30)
    assert time.monotonic() - t0 < 5
    assert r.status == "cancelled"
    assert any(t.status == "cancelled" for t in r.tasks)
    assert not any(psutil.pid_exists(p) for p in r.pids)


def test_polled_enforcement_is_said_and_holds_admission(results: Any) -> None:
    """The fallback (no shared pool): forced here, it is named in the result and a note."""
    tasks = TASKS[:2]
    pred = [t.predicted_peak_bytes for t in results[0]["fifo"].tasks[:2]]
    r = schedule(
        tasks,
        "memory-aware",
        budget_bytes=BUDGET,
        enforcement="polled",
        predicted=pred,
        timeout_s=120,
    )
    assert r.status == "ok", r.error
    assert r.enforcement == "polled" and r.pool_peak_bytes is None
    assert any("polled" in n for n in r.notes)
    assert r.oom_count == 0 and r.peak_bytes <= BUDGET
