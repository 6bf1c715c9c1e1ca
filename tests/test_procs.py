"""How workers start (memlab/runner/procs.py): forked from the forkserver, which imported torch
once, with the caller's environment as of the start; spawned where a variable that C libraries
read at process start differs from the server's, or where MEMLAB_WORKER_START=spawn."""

from __future__ import annotations

import os
import sys
from typing import Any

import psutil
import pytest

from memlab.runner import procs


def _report(conn: Any, cancel: Any, stderr_path: str) -> None:
    """A worker that says where it came from and what it sees, then exits."""
    with open("/proc/self/environ", "rb") as f:  # the environment the process was exec'd with
        at_exec = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    conn.send(
        {
            "probe": os.environ.get("MEMLAB_PROBE"),
            "ppid": os.getppid(),
            "parent_pid": procs.parent_pid(),
            "torch_at_entry": "torch" in sys.modules,
            "arena_at_exec": at_exec.get(b"MALLOC_ARENA_MAX", b"").decode() or None,
        }
    )


def _start(name: str = "memlab-probe") -> dict[str, Any]:
    w = procs._spawn(_report, name)
    try:
        assert w.conn.poll(120), "the probe worker said nothing in 120 s"
        out: dict[str, Any] = w.conn.recv()
        return out
    finally:
        procs._kill(w)


def test_a_worker_is_forked_from_the_server_with_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(procs.START_ENV, raising=False)
    monkeypatch.setenv("MEMLAB_PROBE", "first")
    first = _start()
    # a forked worker: its parent is the server, which had torch imported before the fork
    assert first["ppid"] != os.getpid() and first["torch_at_entry"] is True
    assert psutil.Process(first["ppid"]).ppid() == os.getpid()  # the server is our child
    assert first["parent_pid"] == os.getpid() and first["probe"] == "first"
    # the environment follows the caller's, changed after the server started
    monkeypatch.setenv("MEMLAB_PROBE", "second")
    second = _start()
    assert second["ppid"] == first["ppid"] and second["probe"] == "second"


def test_a_start_time_variable_that_differs_spawns_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(procs.START_ENV, raising=False)
    _start()  # the server runs, started with this environment
    monkeypatch.setenv("MALLOC_ARENA_MAX", "3")  # glibc reads it at exec: a fork cannot follow
    out = _start()
    assert out["ppid"] == os.getpid() and out["torch_at_entry"] is False  # spawned
    assert out["arena_at_exec"] == "3"


def test_spawn_by_choice_and_a_bad_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(procs.START_ENV, "spawn")
    out = _start()
    assert out["ppid"] == os.getpid() and out["parent_pid"] == os.getpid()
    monkeypatch.setenv(procs.START_ENV, "fork")
    with pytest.raises(ValueError, match="forkserver or spawn, got 'fork'"):
        procs._spawn(_report, "memlab-probe")


def test_a_device_profile_run_gets_a_spawned_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile's RSS cap is the worker's RSS before the build plus the budget: a forked
    worker has not yet touched its share of torch's code pages then (they fill in as it runs,
    and were charged to the budget), so a profile run's worker is spawned."""
    from memlab import Experiment
    from memlab.runner import runs

    monkeypatch.delenv(procs.START_ENV, raising=False)
    seen: list[bool] = []
    real = procs._spawn

    def spy(target: Any, name: str, *, fresh: bool = False) -> Any:
        seen.append(fresh)
        return real(target, name, fresh=fresh)

    monkeypatch.setattr(runs, "_spawn", spy)
    for profile in ("none", "rpi-zero-2w"):
        exp = Experiment(workload="mlp", steps=1, warmup=0, data_size=64, profile=profile)
        h = runs.start(exp, save=False)
        h.cancel()
        h.wait()
    assert seen == [False, True]
