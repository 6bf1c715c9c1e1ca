"""Lab 09's module (memlab.labs.tasks) and its scheduling panel (memlab.ui.schedule) on
hand-made results: tables and exercises take their truths from the results passed in, deadlines
scale with the measured service times, the live state folds events into a drawable result; one
real panel run end to end."""

from __future__ import annotations

import dataclasses

import psutil
import pytest

from memlab import Experiment
from memlab.labs import tasks as lab
from memlab.scheduling import ADMISSION_MARGIN, ScheduleResult, Task, TaskOutcome
from memlab.ui.schedule import SchedulePanel, ScheduleState, summary_line

MIB = 2**20


def _task(i: int, workload: str = "mlp", batch: int = 8, **kw: object) -> Task:
    exp = Experiment(workload=workload, mode="inference", batch_size=batch, data_size=batch)
    return Task(name=f"{i}-{workload}", experiment=exp, **kw)  # type: ignore[arg-type]


def _outcome(t: Task, i: int, status: str, start: float, end: float) -> TaskOutcome:
    return TaskOutcome(
        index=i,
        name=t.name,
        workload=t.workload,
        batch_size=t.batch_size,
        requests=t.requests,
        priority=t.priority,
        arrival_s=t.arrival_s,
        deadline_s=t.deadline_s,
        predicted_peak_bytes=10 * MIB,
        status=status,
        order=i,
        slot=i % 2,
        start_s=start,
        end_s=end,
    )


def _result(policy: str, statuses: list[str], peak: int = 50 * MIB) -> ScheduleResult:
    tasks = [_task(i, deadline_s=1.0) for i in range(len(statuses))]
    outs = [
        _outcome(t, i, s, 0.1 * i, 0.1 * i + 0.5)
        for i, (t, s) in enumerate(zip(tasks, statuses, strict=True))
    ]
    return ScheduleResult(
        policy=policy,
        budget_bytes=64 * MIB,
        slots=2,
        enforcement="shared-pool",
        source="native",
        tasks=tuple(outs),
        peak_bytes=peak,
        makespan_s=1.0,
    )


def test_deadlines_scale_with_the_measured_service_times() -> None:
    tasks = [_task(i) for i in range(3)]
    service = [0.2, 1.0, 3.0]
    out = lab.with_deadlines(tasks, service, slack=(2.0, 2.0))
    assert [t.deadline_s for t in out] == [0.4, 2.0, 6.0]
    # Seeded: the same slack draws each time; only the deadline changes.
    a = lab.with_deadlines(tasks, service, seed=3)
    b = lab.with_deadlines(tasks, service, seed=3)
    assert a == b
    pairs = zip(a, service, strict=True)
    assert all(1.5 * s - 1e-3 <= t.deadline_s <= 4.0 * s + 1e-3 for t, s in pairs)
    assert [dataclasses.replace(t, deadline_s=1.0) for t in a] == [
        dataclasses.replace(t, deadline_s=1.0) for t in tasks
    ]


def test_service_times_refuse_a_task_that_did_not_complete() -> None:
    r = _result("fifo", ["done", "oom"])
    with pytest.raises(ValueError, match="did not complete"):
        lab.service_times(r)
    assert lab.service_times(_result("fifo", ["done", "missed"])) == pytest.approx([0.5, 0.5])


def test_policy_exercise_takes_its_truth_from_the_results() -> None:
    results = {
        "fifo": _result("fifo", ["done", "oom", "missed"]),
        "edf": _result("edf", ["done", "done", "oom"]),
        "memory-aware": _result("memory-aware", ["done", "missed", "missed"]),
        "priority": _result("priority", ["done", "done", "missed"]),
    }
    ex = lab.exercise_policy(results)
    assert ex.check("priority").ok  # no oom, 1 miss (memory-aware: 2; the others oom)
    assert not ex.check("edf").ok  # fewer misses counted wrongly would pick it: it had an oom
    assert not ex.check("memory-aware").ok
    table = lab.policies_table(results)
    assert "| priority | 1/3 | 0 |" in table and "| fifo | 2/3 | 1 |" in table


def test_admission_floor_is_the_largest_charge() -> None:
    predicted = [10 * MIB, 40 * MIB, 20 * MIB]
    floor = lab.admission_floor(predicted)
    assert floor == int(-(-40 * MIB * (1 + ADMISSION_MARGIN) // 1))
    ex = lab.exercise_admission_floor(predicted)
    assert ex.check(floor / MIB).ok
    assert not ex.check(40.0 * 0.95).ok


def test_explain_policies_names_the_tasks_that_ran_out_of_memory() -> None:
    results = {
        "fifo": _result("fifo", ["done", "oom"]),
        "memory-aware": _result("memory-aware", ["done", "missed"], peak=60 * MIB),
    }
    text = lab.explain_policies(results)
    assert "fifo (1-mlp)" in text
    assert "0 oom, peak 60.00 MiB of 64.00" in text


def test_live_state_folds_events_into_a_drawable_result() -> None:
    from memlab.plots_scheduling import schedule_figure

    tasks = [_task(0, arrival_s=0.0), _task(1, arrival_s=0.2), _task(2, arrival_s=0.4)]
    st = ScheduleState(tasks, [5 * MIB, 6 * MIB, 7 * MIB], "fifo", 64 * MIB)
    for ev in [
        {"kind": "arrived", "index": 0, "t": 0.0},
        {"kind": "started", "index": 0, "slot": 0, "t": 0.01},
        {"kind": "memory", "t": 0.1, "bytes": 3 * MIB},
        {"kind": "started", "index": 1, "slot": 1, "t": 0.2},
        {"kind": "ended", "index": 0, "status": "done", "t": 0.5},
        {"kind": "memory", "t": 0.6, "bytes": 5 * MIB},
    ]:
        st.add(ev)
    assert st.counts == {"waiting": 1, "running": 1, "done": 1}
    r = st.result(now_s=0.9)
    by = {t.name: t for t in r.tasks}
    assert (by["0-mlp"].status, by["0-mlp"].start_s, by["0-mlp"].end_s) == ("done", 0.01, 0.5)
    assert (by["1-mlp"].status, by["1-mlp"].end_s) == ("running", 0.9)  # its bar runs to now
    assert by["2-mlp"].start_s is None and by["2-mlp"].status == "waiting"
    assert r.peak_bytes == 5 * MIB and r.timeline_bytes == (3 * MIB, 5 * MIB)
    fig = schedule_figure(r)
    bars = {t.name: list(t.y) for t in fig.data if t.type == "bar"}
    assert bars == {"done": ["0-mlp"], "running": ["1-mlp"]}
    with pytest.raises(ValueError, match="one peak per task"):
        ScheduleState(tasks, [1], "fifo", MIB)


def test_panel_refuses_bad_settings_clearly() -> None:
    tasks = [_task(0)]
    with pytest.raises(ValueError, match="policy must be one of"):
        SchedulePanel(tasks, [MIB], policy="lifo")
    with pytest.raises(ValueError, match="one peak per task"):
        SchedulePanel(tasks, [MIB, MIB])


def test_panel_runs_a_schedule_and_draws_its_result() -> None:
    """One real schedule through the widgets: two small tasks, the budget from the slider."""
    tasks = [_task(0, batch=8, requests=1), _task(1, "cnn", batch=8, requests=1, arrival_s=0.05)]
    from memlab.scheduling import predict_peaks

    predicted = predict_peaks(tasks)
    panel = SchedulePanel(tasks, predicted, policy="memory-aware", budget_bytes=64 * MIB)
    assert panel.budget.value == 64
    panel.run()
    r = panel.wait(timeout=300)
    assert r is not None and r.status == "ok" and r.policy == "memory-aware"
    assert r.budget_bytes == 64 * MIB and r.oom_count == 0
    assert [t.status in ("done", "missed") for t in r.tasks] == [True, True]
    assert panel.results["memory-aware"] is r
    assert "memory-aware" in panel.status.value and "0 oom" in panel.status.value
    assert panel.status.value == summary_line(r)
    bars = [t for t in panel.figure.data if t.type == "bar"]
    assert sorted(n for b in bars for n in b.y) == sorted(t.name for t in tasks)
    assert not panel.running and not panel.run_button.disabled
    alive = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not alive & set(r.pids), "a slot worker outlived the schedule"
    panel.close()


def _lru_scan_hits(sizes: list[int], capacity: int, rounds: int = 3) -> int:
    """cachetools' LRU on a cyclic scan, items larger than the cache served uncached (as
    memlab.caching does): the independent truth for ``scan_capacity``."""
    from cachetools import LRUCache

    cache: LRUCache[int, int] = LRUCache(maxsize=capacity, getsizeof=lambda v: v)
    hits = 0
    for _ in range(rounds):
        for i, size in enumerate(sizes):
            if i in cache:
                hits += 1
                continue
            try:
                cache[i] = size
            except ValueError:  # larger than the whole cache
                pass
    return hits


@pytest.mark.parametrize("sizes", [[3, 3, 3, 3], [1, 1, 10], [5, 1, 2, 40, 7], [8]])
def test_scan_capacity_is_where_lru_starts_to_hit(sizes: list[int]) -> None:
    from memlab.caching import CacheResult

    scan = CacheResult(
        items="embeddings",
        name="scan",
        trace=tuple(range(len(sizes))) * 3,
        inputs=(0,) * (3 * len(sizes)),
        item_bytes=tuple(sizes),
        capacity_bytes=1,
        memoize=False,
        seed=0,
        cpus=2,
        threads=1,
        runs=(),
    )
    c = lab.scan_capacity(scan)
    assert _lru_scan_hits(sizes, c) > 0
    assert _lru_scan_hits(sizes, c - 1) == 0
    ex = lab.exercise_scan_capacity({"scan": scan})
    assert ex.check(c / MIB).ok and not ex.check(0.9 * c / MIB).ok


def test_leak_exercise_and_table_from_a_measured_leak() -> None:
    from memlab.leaks import run_example

    leaky = run_example("forward_hook", steps=4, fixed=False)
    fixed = run_example("forward_hook", steps=4, fixed=True)
    leaks = {"forward_hook": {"leaky": leaky, "fixed": fixed}}
    params = leaky.alive.entry_by_category["parameters"]
    growth = leaky.growth_per_step_bytes
    assert growth and growth > 0 and fixed.growth_per_step_bytes == 0
    ex = lab.exercise_leak_growth(leaks)
    assert ex.check(params / growth + 0.5).ok and not ex.check(params / growth + 2).ok
    table = lab.leaks_table(leaks)
    assert f"| forward_hook | {params:,} B | {growth:,.0f} B | 0 B |" in table
    with pytest.raises(ValueError, match="did not grow"):
        lab.exercise_leak_growth({"forward_hook": {"leaky": fixed}})


def test_cli_schedule_runs_the_mix_and_refuses_bad_input_in_one_line() -> None:
    import json
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "memlab", "schedule", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    p = cli("--tasks", "2", "--requests", "1,1", "--policy", "memory-aware", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    r = out["memory-aware"]
    assert list(out) == ["memory-aware"] and r["tasks"] == 2 and r["oom"] == 0
    assert 0 < r["peak_bytes"] <= r["budget_bytes"] == 64 * MIB
    for args, says in [
        (["--policy", "lifo"], "--policy must be one of"),
        (["--requests", "3"], "--requests must be two numbers"),
        (["--budget", "lots"], "lots"),
        (["--tasks", "0"], "n must be an int >= 1"),
    ]:
        p = cli(*args)
        assert p.returncode == 2 and says in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
