"""Hand-made RunResults for the store and comparison tests (no torch; importable by the
subprocesses those tests start as "another kernel")."""

from __future__ import annotations

from typing import Any

import numpy as np

from memlab.config import Experiment
from memlab.timeline import (
    CATEGORIES,
    PHASES,
    PROCESS_PARTS,
    Latency,
    ProcessSeries,
    RunResult,
    Timeline,
    Timing,
)


def make_result(
    seed: int = 0,
    *,
    events: int = 500,
    status: str = "ok",
    experiment: Experiment | None = None,
    modules: dict[str, int] | None = None,
    step_times: tuple[float, ...] = (0.1, 0.12, 0.11),
) -> RunResult:
    """A result whose every field is filled from ``seed``: a timeline of ``events`` events with
    step marks, a process series (one part not measured), timing, latency, metrics and notes.
    Its peak figures are computed from its own timeline (as the tracker does)."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.uniform(1e-4, 2e-3, events))
    phase = rng.integers(0, len(PHASES), events).astype(np.int8)
    cats = {c: rng.integers(0, 2**30, events).astype(np.int64) for c in CATEGORIES}
    tl = Timeline(
        t=t,
        phase=phase,
        by_category=cats,
        marks=tuple((float(t[i]), f"step {k + 1}") for k, i in enumerate((events // 3, events - 1)))
        + ((float(t[1]), "forward"),),
        source="cpu-allocator",
    )
    total = tl.total
    at = int(np.argmax(total))
    n = 40
    parts: dict[str, Any] = {p: rng.integers(0, 2**32, n) for p in PROCESS_PARTS}
    parts["rss_shmem"] = None  # a part this platform did not measure
    exp = experiment or Experiment(batch_size=8 + seed % 50, seed=seed)
    return RunResult(
        peak_bytes=int(total[at]),
        peak_by_category={c: int(cats[c][at]) for c in CATEGORIES},
        timeline=tl,
        process=ProcessSeries(t=np.linspace(0, float(t[-1]), n), parts=parts),
        entry_by_category={c: int(cats[c][0]) for c in CATEGORIES},
        end_by_category={c: int(cats[c][-1]) for c in CATEGORIES},
        peak_by_phase={
            PHASES[p]: int(total[phase == p].max())
            for p in range(len(PHASES))
            if (phase == p).any()
        },
        activations_by_module=dict(modules if modules is not None else {"fc1": 1000 + seed}),
        peak_time_s=float(t[at]),
        peak_phase=PHASES[int(phase[at])],
        duration_s=float(t[-1]),
        rss_peak_bytes=int(parts["rss"].max()),
        rss_anon_peak_bytes=int(parts["rss_anon"].max()),
        rss_file_peak_bytes=int(parts["rss_file"].max()),
        step_times_s=step_times,
        samples_per_step=exp.batch_size,
        status=status,
        error=None if status == "ok" else f"{status}: seed {seed}",
        experiment=exp.to_dict(),
        metrics={"accuracy": 0.5 + seed / 1000, "model_bytes": 1234 + seed},
        notes=(f"note {seed}",),
        tracked_step_times_s=(0.2, 0.21, 0.19),
        timing=Timing(
            steady=True,
            cpu_share=0.9,
            disturbed_steps=0,
            note="quiet",
            step_wall_s=step_times,
            step_disturbed=(False,) * len(step_times),
        ),
        latency=Latency(first_s=0.5, request_times_s=(0.01, 0.02), samples_per_request=8),
    )
