"""How workers start (memlab/runner/procs.py): forked from the forkserver, which imported torch
once, with the caller's environment as of the start; spawned where a variable that C libraries
read at process start differs from the server's, or where MEMLAB_WORKER_START=spawn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memlab.runner import procs

ROOT = Path(__file__).resolve().parents[1]


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


# In a fresh interpreter, so that the forkserver starts in an environment this test controls
# (in the suite's process it started with whatever the first worker's caller had).
SCRIPT = r"""
import json, logging, os, sys
from tests.test_procs import _start
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
out = {"me": os.getpid()}
os.environ["MEMLAB_PROBE"] = "first"
out["first"] = _start()
os.environ["MEMLAB_PROBE"] = "second"
os.environ["TORCHINDUCTOR_CACHE_DIR"] = "/tmp/x"  # read when used: a fork follows it
out["second"] = _start()
os.environ["MALLOC_ARENA_MAX"] = "3"  # glibc reads it at exec: a fork cannot follow
out["third"] = _start()
print(json.dumps(out))
"""


def test_a_worker_is_forked_from_the_server_with_the_callers_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (procs.START_ENV, "MALLOC_ARENA_MAX")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    me, first, second, third = out["me"], out["first"], out["second"], out["third"]
    # a forked worker: its parent is the server, which had torch imported before the fork
    assert first["ppid"] != me and first["torch_at_entry"] is True
    assert first["parent_pid"] == me and first["probe"] == "first"
    # the environment follows the caller's, changed after the server started
    assert second["ppid"] == first["ppid"] and second["probe"] == "second"
    # a variable read at process start that differs from the server's: spawned, and it has it
    assert third["ppid"] == me and third["torch_at_entry"] is False
    assert third["arena_at_exec"] == "3" and third["parent_pid"] == me
    said = [line for line in proc.stderr.splitlines() if "spawned, not forked" in line]
    assert len(said) == 1 and "'MALLOC_ARENA_MAX'" in said[0], proc.stderr[-2000:]


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
