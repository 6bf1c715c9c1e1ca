"""The runner: a worker process per run, live samples, and every way a run can end.

The workloads here are user factories (``factory(experiment, device)``), so these tests also
show that the runner works for code memlab has never seen.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import CancelledError
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import memlab  # noqa: E402
from memlab.config import ConfigError, Experiment  # noqa: E402
from memlab.runner import (  # noqa: E402
    RunHandle,
    WorkerError,
    call,
    run,
    shutdown_service,
    shutdown_warm_worker,
    start,
    submit,
    warm_up,
)
from memlab.workloads import Workload  # noqa: E402

from .factories import paced, slow, tiny  # noqa: E402


def crash(exp: Any, device: str) -> Workload:
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable")


def hog(exp: Any, device: str) -> Workload:
    import numpy as np

    blocks = []
    for _ in range(400):  # 4 GB over ~10 s: the parent's cap must stop it long before
        blocks.append(np.ones(10_000_000))
        time.sleep(0.02)
    raise AssertionError("the RSS cap did not stop the worker")


def step_hog(exp: Any, device: str) -> Workload:
    """``tiny``, whose every step also keeps 80 MB outside the tensor account (numpy), the
    way packed weights or a leak would: RSS grows, the tracker sees nothing."""
    import numpy as np

    w = tiny(exp, device)
    step = w.step
    kept: list[Any] = []

    def hogging_step(x: Any, y: Any) -> Any:
        kept.append(np.ones(10_000_000))
        time.sleep(0.05)
        return step(x, y)

    w.step = hogging_step  # type: ignore[method-assign]
    return w


def stamped(exp: Any, device: str) -> Workload:
    """``paced``, recording the wall-clock time (the same clock in every process) at which its
    first step began and its last step ended, as metrics of the run."""
    w = paced(exp, device)
    step = w.step

    def timed_step(x: Any, y: Any) -> Any:
        w.measures.setdefault("first_step_start", time.time())
        out = step(x, y)
        w.measures["last_step_end"] = time.time()
        return out

    w.step = timed_step  # type: ignore[method-assign]
    return w


def sleep_stamped(seconds: float) -> tuple[float, float]:
    """A service job: the wall-clock times at which it began and ended."""
    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time()


def raise_custom() -> None:
    raise KeyError("the job failed on purpose")


def no_zombies() -> None:
    time.sleep(0.05)
    alive = [p for p in mp.active_children() if p.name == "memlab-worker"]
    assert alive == [], alive


@pytest.fixture
def fresh_service() -> Any:
    shutdown_service()
    yield
    shutdown_service()
    time.sleep(0.05)
    assert [p for p in mp.active_children() if p.name == "memlab-service"] == []


def test_run_ok_streams_samples_and_steps() -> None:
    exp = Experiment(workload=paced, batch_size=128, steps=6, warmup=1)
    h = start(exp)
    r = h.wait(120)
    assert r.status == "ok", r.error
    # 6 tracked steps (memory), then 6 untracked timed ones (speed), each streamed as it ends
    assert len(r.step_times_s) == 6 and len(r.tracked_step_times_s) == 6
    assert [(s["pass"], s["step"]) for s in h.steps] == [
        *(("memory", i) for i in range(1, 7)),
        *(("timing", i) for i in range(1, 7)),
    ]
    assert all({"cpu_s", "others_share", "disturbed"} <= set(s) for s in h.steps[6:])
    assert r.timing is not None and len(r.timing.step_wall_s) == 6
    assert r.samples_per_step == 128 and r.throughput_samples_per_s is not None
    assert r.experiment is not None and r.experiment["batch_size"] == 128
    assert sum(r.peak_by_category.values()) == r.peak_bytes > 0
    assert r.rss_anon_peak_bytes is not None and r.rss_file_peak_bytes is not None
    # live: samples arrived before the result, at >= 50 per second while steps ran
    measured = [s for s in h.samples if s["step"] >= 1]
    span = measured[-1]["t"] - measured[0]["t"]
    assert span >= 0.25 and len(measured) / span >= 50, (len(measured), span)
    assert all("tensor_bytes" in s and "rss_anon" in s for s in h.samples)
    assert max(s["tensor_bytes"] for s in measured) <= r.peak_bytes
    no_zombies()


def test_budget_gives_oom_promptly() -> None:
    ok = run(Experiment(workload=tiny, batch_size=128, steps=2))
    assert ok.status == "ok"
    t = time.monotonic()
    r = run(
        Experiment(workload=tiny, batch_size=128, steps=2, budget_bytes=int(ok.peak_bytes * 0.8))
    )
    assert r.status == "oom" and "budget" in (r.error or "")
    assert r.peak_bytes <= int(ok.peak_bytes * 0.8)
    assert time.monotonic() - t < 60
    no_zombies()


def test_killed_worker_is_an_error_within_2s() -> None:
    h = start(Experiment(workload=slow, batch_size=8, steps=50, warmup=0))
    while not h.samples:
        time.sleep(0.01)
    assert h.pid is not None
    os.kill(h.pid, signal.SIGKILL)
    t = time.monotonic()
    r = h.wait(10)
    assert time.monotonic() - t < 2
    assert r.status == "error" and "signal 9" in (r.error or "")
    no_zombies()


def test_segfault_reports_the_workers_last_stderr_lines() -> None:
    r = run(Experiment(workload=crash), timeout_s=120)
    assert r.status == "error"
    assert "signal 11" in (r.error or "")
    assert "Segmentation fault" in (r.error or "")  # faulthandler's report, from the worker
    assert "in crash" in (r.error or "")  # ... with the Python stack that crashed
    no_zombies()


def test_cancel_within_1s() -> None:
    h = start(Experiment(workload=slow, batch_size=8, steps=50, warmup=0))
    while len(h.steps) < 1:
        time.sleep(0.01)
    t = time.monotonic()
    h.cancel()
    r = h.wait(10)
    assert time.monotonic() - t < 1.0
    assert r.status == "cancelled"
    no_zombies()


def test_rss_cap_kills_the_worker_as_oom() -> None:
    r = run(Experiment(workload=hog), rss_cap_bytes=1_000_000_000, timeout_s=120)
    assert r.status == "oom" and "hard cap" in (r.error or "")
    # the same figures as numbers, for a message that words them (memlab/ui/messages.py)
    assert r.metrics["rss_cap_bytes"] == 1_000_000_000
    assert r.metrics["rss_at_kill_bytes"] > 1_000_000_000
    no_zombies()


def test_error_in_user_code_is_a_result() -> None:
    exp = Experiment(workload=tiny, batch_size=4, precision="bf16", mode="train")
    # the user workload does not cast its inputs: whatever happens, the run ends with a status
    r = run(exp)
    assert r.status in ("ok", "error")
    no_zombies()


def test_warm_worker_first_sample_within_half_a_second() -> None:
    warm_up()
    time.sleep(8)  # let it import torch and build the recorder
    got: list[float] = []
    t = time.monotonic()
    h = start(Experiment(workload=tiny, steps=2), on_sample=lambda s: got.append(time.monotonic()))
    r = h.wait(60)
    assert r.status == "ok"
    assert got and got[0] - t < 0.5, got[0] - t
    shutdown_warm_worker()
    no_zombies()


def test_bad_experiments_are_refused_before_any_process() -> None:
    with pytest.raises(ConfigError, match="batch_size must be a positive int, got -3"):
        Experiment(batch_size=-3)
    with pytest.raises(TypeError, match="experiment must be a memlab.Experiment"):
        RunHandle({"workload": "mlp"})  # type: ignore[arg-type]
    assert memlab.Experiment is Experiment


def test_dataloader_workers_run_inside_the_worker() -> None:
    """The worker may have children: DataLoader workers (num_workers > 0) start and end."""
    r = run(Experiment(workload="mlp", batch_size=32, data_size=256, num_workers=2, steps=2))
    assert r.status == "ok", r.error
    assert len(r.step_times_s) == 2
    no_zombies()


# -- the service worker: call / submit ------------------------------------------------------------
def test_call_returns_in_one_warm_worker_and_raises_with_its_traceback(fresh_service: Any) -> None:
    pid = call(os.getpid)
    assert pid != os.getpid()
    assert call(pow, 2, 10) == 1024
    assert call(os.getpid) == pid  # one long-lived worker, not a process per call
    with pytest.raises(KeyError, match="on purpose") as info:
        call(raise_custom)
    cause = str(info.value.__cause__)
    assert "Traceback" in cause and "in raise_custom" in cause  # the worker's traceback
    assert call(os.getpid) == pid  # a failed job does not cost the worker
    with pytest.raises(TypeError, match="fn must be callable"):
        submit(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        submit(pow, 2, 3, timeout_s=0)


def test_the_service_worker_freezes_its_heap_after_its_first_job(fresh_service: Any) -> None:
    """What the first job left alive goes to the collector's permanent generation once
    (``service.freeze_heap``): later full collections do not walk torch's 300k objects."""
    import gc

    assert call(gc.get_freeze_count) == 0  # the first job runs before the freeze
    frozen = call(gc.get_freeze_count)
    assert frozen > 10_000  # torch and memlab's modules, at least
    assert call(gc.get_freeze_count) == frozen  # once: nothing later is frozen


def test_call_timeout_stops_the_worker_and_the_next_job_gets_a_new_one(
    fresh_service: Any,
) -> None:
    pid = call(os.getpid)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="timeout of 0.5 s"):
        call(time.sleep, 60, timeout_s=0.5)
    assert time.monotonic() - t < 30  # stopped, not waited for
    new = call(os.getpid)
    assert new != pid


def test_a_dead_service_worker_is_a_clear_error_never_a_hang(fresh_service: Any) -> None:
    with pytest.raises(WorkerError, match="exit code 3"):
        call(os._exit, 3)
    pid = call(os.getpid)  # replaced
    job = submit(time.sleep, 60)
    deadline = time.monotonic() + 60
    while job.started_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    t = time.monotonic()
    with pytest.raises(WorkerError, match="signal 9"):
        job.result(30)
    assert time.monotonic() - t < 5
    assert call(pow, 3, 2) == 9


def test_submit_calls_back_and_cancels_queued_and_running_jobs(fresh_service: Any) -> None:
    call(os.getpid)  # warm
    ended: list[str] = []
    running = submit(time.sleep, 60)
    queued = submit(pow, 2, 3, on_done=lambda j: ended.append(j.status))
    assert queued.status == "queued" and not queued.done()
    assert queued.cancel() and queued.status == "cancelled" and ended == ["cancelled"]
    with pytest.raises(CancelledError):
        queued.result(0)
    deadline = time.monotonic() + 60
    while running.started_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.status == "running"
    assert running.cancel()
    assert running.wait(10) and running.status == "cancelled"
    assert isinstance(running.exception(0), CancelledError)
    assert not running.cancel()  # already ended
    last = submit(pow, 2, 5, on_done=lambda j: ended.append(j.status))
    assert last.result(60) == 32 and ended == ["cancelled", "done"]


def test_service_jobs_and_measured_blocks_never_overlap(fresh_service: Any) -> None:
    """A job running when a run starts ends before the run's measured block begins; a job
    submitted while a run is in progress starts after the run has ended (wall-clock stamps
    taken in the two worker processes; order, never speed)."""
    call(os.getpid)  # warm
    job = submit(sleep_stamped, 1.5)
    deadline = time.monotonic() + 60
    while job.started_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    h = start(Experiment(workload=stamped, batch_size=8, steps=3, warmup=0))
    _, job_end = job.result(60)
    r = h.wait(120)
    assert r.status == "ok", r.error
    assert r.metrics["first_step_start"] > job_end

    h = start(Experiment(workload=stamped, batch_size=8, steps=6, warmup=0))
    deadline = time.monotonic() + 60
    while not h.steps and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.steps and not h.done()
    job = submit(sleep_stamped, 0.0)
    r = h.wait(120)
    job_start, _ = job.result(60)
    assert r.status == "ok", r.error
    assert job_start > r.metrics["last_step_end"]
    no_zombies()


def test_a_device_profile_caps_rss_at_the_runtime_plus_its_budget() -> None:
    """Under a profile, the hard cap is the worker's RSS before the build (the runtime) plus the
    profile's budget, from the end of the build on (a device loads the converted model)."""
    from memlab.devices import PROFILES

    budget = PROFILES["rpi-zero-2w"].budget_bytes
    r = run(Experiment(workload=step_hog, profile="rpi-zero-2w", steps=20), timeout_s=120)
    assert r.status == "oom" and "hard cap" in (r.error or ""), r.error
    assert "device profile rpi-zero-2w" in (r.error or "")
    base = r.metrics["rss_baseline_bytes"]
    assert 0 < base < 2**31
    assert r.metrics["rss_cap_bytes"] == base + budget
    assert base + budget < r.metrics["rss_at_kill_bytes"] < base + budget + 400 * 2**20
    assert r.metrics["profile"] == "rpi-zero-2w"
    assert base <= r.metrics["rss_built_bytes"] < base + budget
    assert r.metrics["model_bytes"] > 0  # what it built, though the cap killed it
    from memlab.ui.messages import oom_message

    msg = oom_message(r)
    assert "device profile rpi-zero-2w" in msg and "256.0 MiB budget" in msg, msg
    no_zombies()


def test_a_profile_budget_holds_the_tracked_tensors_unless_a_budget_is_given() -> None:
    ok = run(Experiment(workload=tiny, batch_size=128, steps=2, profile="rpi-zero-2w"))
    assert ok.status == "ok", ok.error
    assert ok.metrics["profile"] == "rpi-zero-2w" and ok.metrics["rss_baseline_bytes"] > 0
    # an explicit budget wins over the profile's
    small = int(ok.peak_bytes * 0.8)
    r = run(
        Experiment(
            workload=tiny, batch_size=128, steps=2, profile="rpi-zero-2w", budget_bytes=small
        )
    )
    assert r.status == "oom" and "budget" in (r.error or "")
    assert r.peak_bytes <= small
    no_zombies()


def test_under_the_profiler_fallback_the_profile_cap_is_off_and_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The profiler fallback's event buffers grow in the worker while it records: a profile's
    RSS cap would charge them to the model, so it is off there, and the result says so."""
    monkeypatch.setenv("MEMLAB_EVENT_SOURCE", "profiler")
    shutdown_warm_worker()  # a warm worker chose its event source before the variable was set
    r = run(Experiment(workload=step_hog, profile="rpi-zero-2w", steps=4), timeout_s=180)
    assert r.status == "ok", r.error
    assert any("RSS cap is off" in n for n in r.notes), r.notes
    assert "rss_cap_bytes" in r.metrics and r.metrics["rss_cap_bytes"] > 2**31
    no_zombies()
