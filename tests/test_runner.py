"""The runner: a worker process per run, live samples, and every way a run can end.

The workloads here are user factories (``factory(experiment, device)``), so these tests also
show that the runner works for code memlab has never seen.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import memlab  # noqa: E402
from memlab.config import ConfigError, Experiment  # noqa: E402
from memlab.runner import RunHandle, run, shutdown_warm_worker, start, warm_up  # noqa: E402
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


def no_zombies() -> None:
    time.sleep(0.05)
    alive = [p for p in mp.active_children() if p.name == "memlab-worker"]
    assert alive == [], alive


def test_run_ok_streams_samples_and_steps() -> None:
    exp = Experiment(workload=paced, batch_size=128, steps=6, warmup=1)
    h = start(exp)
    r = h.wait(120)
    assert r.status == "ok", r.error
    assert len(r.step_times_s) == 6 and len(h.steps) == 6
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
