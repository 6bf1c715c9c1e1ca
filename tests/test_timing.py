"""Whether a run's step times can be trusted (memlab/timing.py, issue 10 point 2).

The verdict is pure, so it is tested on hand-made numbers with exact expectations; the run
worker's readings are tested with a real competing process (a CPU hog in a subprocess, never a
mock): beside it a run must say ``steady: false`` and name it, alone ``steady: true``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from memlab import timing
from memlab.timeline import RunResult, Timing

# -- the pure verdict --------------------------------------------------------------------------


def test_others_share_per_step_when_steps_are_long() -> None:
    # 2 CPUs, 1 s steps: step 1 quiet (busy = own), step 2 another process took 0.8 CPU-s.
    shares = timing.others_shares([1.0, 1.0], [1.5, 1.5], [1.5, 2.3], cpus=2)
    assert shares == pytest.approx([0.0, 0.4])


def test_short_steps_are_judged_over_a_window_of_min_window_s() -> None:
    # 0.1 s steps: a single step is below /proc/stat's resolution, so each share is over at
    # least 0.5 s of neighbours; the last 5 steps had a hog (0.1 CPU-s per step on 2 CPUs).
    wall = [0.1] * 10
    own = [0.1] * 10
    busy = [0.1] * 5 + [0.2] * 5
    shares = timing.others_shares(wall, own, busy, cpus=2)
    assert shares[0] == pytest.approx(0.0)  # steps 0-4: quiet
    assert shares[-1] == pytest.approx(0.5)  # steps 5-9: half the machine taken
    # A trailing window (the live reading) sees only the past.
    live = timing.others_shares(wall, own, busy, cpus=2, trailing=True)
    assert live[4] == pytest.approx(0.0) and live[9] == pytest.approx(0.5)
    assert live[6] == pytest.approx((0.1 * 2) / (0.5 * 2))  # steps 2-6: two hog steps of five


def test_shares_are_clipped_and_unknown_is_none() -> None:
    # Tick rounding can make busy < own: never a negative share.
    assert timing.others_shares([1.0], [1.0], [0.9], cpus=2) == [0.0]
    assert timing.others_shares([1.0], [1.0], [None], cpus=2) == [None]
    with pytest.raises(ValueError, match="differ in length"):
        timing.others_shares([1.0], [1.0, 2.0], [1.0], cpus=2)


def test_assess_steady_and_disturbed() -> None:
    quiet = timing.assess([1.0] * 4, [1.8] * 4, [1.84] * 4, cpus=2, threads=2)
    assert quiet.steady and quiet.disturbed_steps == 0
    assert quiet.cpu_share == pytest.approx(0.9)  # 1.8 CPU-s over 1 s x 2 threads
    assert quiet.others_share == pytest.approx(0.02)
    assert "2% of the machine's 2 CPUs" in quiet.note

    busy = timing.assess(
        [1.0] * 4,
        [1.0] * 4,
        [1.2, 1.2, 2.0, 2.0],
        cpus=2,
        threads=2,
        busiest=["hog (pid 42): 100% of a core"],
    )
    assert not busy.steady and busy.disturbed_steps == 2
    assert busy.step_disturbed == (False, False, True, True)
    assert "hog (pid 42)" in busy.note and "2 of 4" in busy.note

    # One disturbed step in four: the median is still a quiet step's; said, but steady.
    one = timing.assess([1.0] * 4, [1.0] * 4, [1.0, 1.0, 1.0, 2.0], cpus=2, threads=2)
    assert one.steady and one.disturbed_steps == 1 and "1 of 4" in one.note

    unknown = timing.assess([1.0], [1.0], [None], cpus=2, threads=2)
    assert not unknown.steady and "could not be read" in unknown.note
    none = timing.assess([], [], [], cpus=2, threads=2)
    assert not none.steady and none.cpu_share is None and "not measured" in none.note


def test_busiest_others_names_processes_by_their_share_of_a_core() -> None:
    before = {1: ("hog", 10.0), 2: ("idle", 5.0), 3: ("me", 0.0), 4: ("kernel", 1.0)}
    after = {
        1: ("hog", 11.9),
        2: ("idle", 5.01),
        3: ("me", 2.0),
        4: ("kernel", 1.4),
        5: ("new", 9.0),
    }
    got = timing.busiest_others(before, after, 2.0, exclude=[3], labels={4: "the notebook"})
    assert got == ["hog (pid 1): 95% of a core", "kernel (pid 4, the notebook): 20% of a core"]


def test_timing_round_trips_through_the_result_json() -> None:
    t = timing.assess([0.5, 0.5], [0.4, 0.4], [0.45, 0.9], cpus=2, threads=1)
    r = RunResult(peak_bytes=1, peak_by_category={"other": 1}, timing=t)
    back = RunResult.from_json(r.to_json())
    assert isinstance(back.timing, Timing) and back.timing == t


# -- real runs, a real competing process ------------------------------------------------------
HOG_NAME = "memlab-cpu-hog"


@pytest.fixture
def cpu_hog() -> Iterator[subprocess.Popen[bytes]]:
    """Processes spinning on every CPU this test may use, named ``memlab-cpu-hog`` (prctl)."""
    code = textwrap.dedent(
        f"""
        import ctypes, sys
        try:  # the name ps and psutil show (comm), so the run's note can name it
            ctypes.CDLL(None).prctl(15, b"{HOG_NAME}", 0, 0, 0)
        except Exception:
            pass
        sys.stdout.write("spinning\\n"); sys.stdout.flush()
        while True:
            pass
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        for _ in range(len(os.sched_getaffinity(0)))
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"spinning\n"
        yield procs[0]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def _timed_run() -> RunResult:
    from memlab import Experiment, run

    # ~0.1 s steps: several windows of MIN_WINDOW_S, a few seconds in all.
    r = run(Experiment(workload="mlp", batch_size=64, steps=8, warmup=1), timeout_s=300)
    assert r.status == "ok", r.error
    return r


@pytest.mark.slow
def test_a_run_beside_a_cpu_hog_is_not_steady(cpu_hog: subprocess.Popen[bytes]) -> None:
    pytest.importorskip("torch")
    time.sleep(0.5)  # the hogs are spinning
    r = _timed_run()
    t = r.timing
    assert t is not None
    assert not t.steady, t.note
    assert t.disturbed_steps > len(r.step_times_s) // 2, t
    assert t.others_share is not None and t.others_share > 0.3, t
    if sys.platform.startswith("linux"):
        assert HOG_NAME in t.note, t.note  # the cause, named


@pytest.mark.slow
def test_a_run_on_a_quiet_machine_is_steady() -> None:
    """Nothing else runs in this test; a machine may still have a neighbour's burst, so up to
    three runs, and at least one must say steady (the failure shows every note)."""
    pytest.importorskip("torch")
    notes = []
    for _ in range(3):
        r = _timed_run()
        assert r.timing is not None
        if r.timing.steady:
            assert r.timing.disturbed_steps <= len(r.step_times_s) // 4
            assert r.timing.cpu_share is not None and r.timing.cpu_share > 0.2
            return
        notes.append(r.timing.note)
    pytest.fail("no quiet run in three:\n" + "\n".join(notes))


def test_wait_until_quiet_waits_for_a_busy_machine(cpu_hog: subprocess.Popen[bytes]) -> None:
    """Beside a hog the wait runs to its limit and says the machine never went quiet."""
    t = time.monotonic()
    assert timing.wait_until_quiet(0.2, 1.5) is False
    assert 1.5 <= time.monotonic() - t < 5.0


def test_wait_until_quiet_returns_soon_on_a_quiet_machine() -> None:
    """Alone, it returns after the minimum and two quiet windows (a neighbour's burst may cost
    a window or two: the limit, 5 s, is far)."""
    t = time.monotonic()
    assert timing.wait_until_quiet(0.3, 5.0) is True
    assert 0.3 <= time.monotonic() - t < 4.0
    cancelled = timing.wait_until_quiet(10.0, 20.0, lambda: True)
    assert cancelled is False
