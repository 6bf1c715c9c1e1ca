"""Contention: two measured runs one after the other, then both at once, on the same machine.

    r = memlab.contention(Experiment(workload="cnn", mode="inference", steps=20))
    r.summary()   # per run: step time alone / together and the inflation, peaks, timing verdicts;
                  # throughput of both together vs one after the other

Each run is a ``memlab.runner`` measured run (a fresh worker; a tracked memory pass, then an
untracked timed pass with memlab's timing verdict, ``RunResult.timing``). First each alone,
one after the other; then both started together. The runner lets two runs overlap (its
scheduler only keeps service jobs and runs apart), but each run's measured block would begin
whenever its own build and warm-up end: to make the two measured blocks begin together, this
module holds both at the runner's gate (``scheduler.gates_held``: the hold a service job
makes, under which a run waits before its measured block) until both have built and warmed up
(``RunHandle.at_gate``), then releases them at once. The hold is taken only when no service
job runs; one that does opens the gates itself when it ends.

Together, each run's timing verdict is expected to say *disturbed*: the other run is the
"other process" taking the CPU. That is the point, and it is reported, not hidden. Throughput
(samples per second of both runs): alone, both timed passes one after the other (total samples
over total timed wall time); together, the sum of each run's samples per median step. Their
ratio is measured in the same call. How much the two timed passes overlapped in time
(``overlap``: measured from when their steps reached this process) says how far "together"
held; below 0.8 a note says so. Tensor memory is per process: each run's tracked peak should
not change when the other runs beside it; process memory (RSS) adds up, each worker carrying
its own Python and torch runtime: ``combined_rss_peak_bytes`` samples the sum of both
workers' RSS while they run together.

(``memlab.contending``, not ``memlab.contention``: a submodule named like the public function would
replace it on the package once imported; see ``memlab.scheduling``.)
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memlab.config import Experiment
    from memlab.timeline import RunResult

__all__ = ["ContentionRun", "ContentionResult", "contention"]

_RSS_INTERVAL_S = 0.05
_MIN_OVERLAP = 0.8


@dataclass(frozen=True)
class ContentionRun:
    """One run's figures alone and together. Step times are medians of the timed (untracked)
    steps, in seconds; ``inflation`` is together / alone; ``*_steady`` and ``*_timing_note``
    are memlab's timing verdict of each run (``RunResult.timing``)."""

    label: str
    experiment: Mapping[str, Any]
    samples_per_step: int | None
    alone_status: str
    together_status: str
    alone_step_s: float | None
    together_step_s: float | None
    alone_peak_bytes: int | None
    together_peak_bytes: int | None
    alone_rss_hwm_bytes: int | None
    together_rss_hwm_bytes: int | None
    alone_steady: bool | None
    together_steady: bool | None
    alone_timing_note: str | None
    together_timing_note: str | None
    alone_others_share: float | None = None
    together_others_share: float | None = None
    alone_timed_s: float | None = None  # the timed pass's total wall time

    @property
    def inflation(self) -> float | None:
        a, b = self.alone_step_s, self.together_step_s
        return b / a if a and b else None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["experiment"] = dict(self.experiment)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContentionRun:
        return cls(**dict(d))


@dataclass(frozen=True)
class ContentionResult:
    """Two runs alone and together; see the module doc."""

    runs: tuple[ContentionRun, ...]
    throughput_alone: float | None  # samples/s, one after the other
    throughput_together: float | None  # samples/s, both at once
    combined_rss_peak_bytes: int | None
    overlap: float | None  # the timed passes' common time over the shorter one (0..1)
    notes: tuple[str, ...] = ()

    @property
    def throughput_ratio(self) -> float | None:
        a, b = self.throughput_alone, self.throughput_together
        return b / a if a and b else None

    @property
    def summed_peak_alone_bytes(self) -> int | None:
        v = [r.alone_peak_bytes for r in self.runs]
        return None if any(x is None for x in v) else sum(x or 0 for x in v)

    @property
    def summed_peak_together_bytes(self) -> int | None:
        """Sum of each run's tracked peak while together (an upper bound of their combined
        tensor peak: the two need not peak at the same moment)."""
        v = [r.together_peak_bytes for r in self.runs]
        return None if any(x is None for x in v) else sum(x or 0 for x in v)

    def summary(self) -> dict[str, Any]:
        return {
            "runs": [r.label for r in self.runs],
            "alone_step_s": [r.alone_step_s for r in self.runs],
            "together_step_s": [r.together_step_s for r in self.runs],
            "inflation": [r.inflation for r in self.runs],
            "alone_steady": [r.alone_steady for r in self.runs],
            "together_steady": [r.together_steady for r in self.runs],
            "throughput_alone": self.throughput_alone,
            "throughput_together": self.throughput_together,
            "throughput_ratio": self.throughput_ratio,
            "summed_peak_alone_bytes": self.summed_peak_alone_bytes,
            "summed_peak_together_bytes": self.summed_peak_together_bytes,
            "combined_rss_peak_bytes": self.combined_rss_peak_bytes,
            "overlap": self.overlap,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["runs"] = [r.to_dict() for r in self.runs]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContentionResult:
        d = dict(d)
        d["runs"] = tuple(ContentionRun.from_dict(r) for r in d["runs"])
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


def _label(exp: Experiment, k: int) -> str:
    return f"{'ab'[k]}: {exp.workload_name} {exp.mode} b{exp.batch_size}"


def _run_together(
    exps: list[Experiment], timeout_s: float
) -> tuple[list[RunResult], int | None, float | None]:
    """Both runs at once, their measured blocks released together; returns their results, the
    peak of their summed RSS, and the overlap of their timed passes."""
    from memlab.runner import runs
    from memlab.runner.scheduler import _sched
    from memlab.tracking import procmem

    arrivals: list[list[tuple[float, float]]] = [[], []]

    def on_step(k: int) -> Any:
        def f(step: dict[str, Any]) -> None:
            if step.get("pass") == "timing":
                arrivals[k].append((time.monotonic(), float(step["time_s"])))

        return f

    handles: list[Any] = []
    peak_rss: list[int] = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(_RSS_INTERVAL_S):
            total = 0
            for h in handles:
                pid = h.pid
                if pid is None or h.done():
                    continue
                try:
                    total += int(procmem.read_process_memory(pid)["rss"] or 0)
                except Exception:  # noqa: BLE001 - the worker may have just exited
                    pass
            peak_rss[0] = max(peak_rss[0], total)

    sampler = threading.Thread(target=sample, name="memlab-contention-rss", daemon=True)
    with _sched.gates_held() as held:
        for k, e in enumerate(exps):
            handles.append(runs.start(e, on_step=on_step(k), timeout_s=timeout_s))
        sampler.start()
        deadline = time.monotonic() + timeout_s
        # Both measured blocks wait at their gates until both workers are built and warm.
        while held and not all(h.at_gate or h.done() for h in handles):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    try:
        results = [h.wait(timeout_s) for h in handles]
    finally:
        for h in handles:
            h.cancel()
        stop.set()
        sampler.join(timeout=1)
    windows = []
    for a in arrivals:
        if a:
            windows.append((a[0][0] - a[0][1], a[-1][0]))
    overlap = None
    if len(windows) == 2:
        (a0, a1), (b0, b1) = windows
        common = max(0.0, min(a1, b1) - max(a0, b0))
        shorter = min(a1 - a0, b1 - b0)
        overlap = min(1.0, common / shorter) if shorter > 0 else None
    return results, (peak_rss[0] or None), overlap


def contention(
    exp_a: Experiment,
    exp_b: Experiment | None = None,
    *,
    timeout_s: float = 600.0,
) -> ContentionResult:
    """Run ``exp_a`` and ``exp_b`` (default: ``exp_a`` again) alone one after the other, then
    both at once; see the module doc. Inference or training experiments. Never raises for a
    failed run (its status is in the result; figures it could not measure are ``None``)."""
    from memlab.config import Experiment
    from memlab.runner import runs

    if exp_b is None:
        exp_b = exp_a
    for name, e in (("exp_a", exp_a), ("exp_b", exp_b)):
        if not isinstance(e, Experiment):
            raise TypeError(f"{name} must be a memlab.Experiment, got {type(e).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    exps = [exp_a, exp_b]
    alone = [runs.run(e, timeout_s=timeout_s) for e in exps]
    together, rss_peak, overlap = _run_together(exps, timeout_s)
    out_runs = []
    for k, (e, a, t) in enumerate(zip(exps, alone, together, strict=True)):
        ok_a, ok_t = a.status == "ok", t.status == "ok"
        out_runs.append(
            ContentionRun(
                label=_label(e, k),
                experiment=e.to_dict(),
                samples_per_step=a.samples_per_step or t.samples_per_step,
                alone_status=a.status,
                together_status=t.status,
                alone_step_s=a.step_time_median_s if ok_a else None,
                together_step_s=t.step_time_median_s if ok_t else None,
                alone_peak_bytes=a.peak_bytes if ok_a else None,
                together_peak_bytes=t.peak_bytes if ok_t else None,
                alone_rss_hwm_bytes=a.rss_hwm_bytes,
                together_rss_hwm_bytes=t.rss_hwm_bytes,
                alone_steady=None if a.timing is None else bool(a.timing.steady),
                together_steady=None if t.timing is None else bool(t.timing.steady),
                alone_timing_note=None if a.timing is None else a.timing.note,
                together_timing_note=None if t.timing is None else t.timing.note,
                alone_others_share=None if a.timing is None else a.timing.others_share,
                together_others_share=None if t.timing is None else t.timing.others_share,
                alone_timed_s=sum(a.step_times_s) if ok_a and a.step_times_s else None,
            )
        )
    notes: list[str] = []
    thr_alone = thr_together = None
    if all(r.alone_timed_s and r.samples_per_step for r in out_runs):
        samples = sum(
            (r.samples_per_step or 0) * len(a.step_times_s)
            for r, a in zip(out_runs, alone, strict=True)
        )
        thr_alone = samples / sum(r.alone_timed_s or 0.0 for r in out_runs)
    if all(r.together_step_s and r.samples_per_step for r in out_runs):
        thr_together = sum((r.samples_per_step or 0) / (r.together_step_s or 1.0) for r in out_runs)
    for r in out_runs:
        if r.alone_status != "ok" or r.together_status != "ok":
            notes.append(f"{r.label}: alone {r.alone_status}, together {r.together_status}")
    if overlap is not None and overlap < _MIN_OVERLAP:
        notes.append(
            f"the two timed passes overlapped for only {overlap:.0%} of the shorter one: "
            "'together' figures are partly alone"
        )
    notes.append(
        "together, each run's timing verdict is expected to be disturbed: the other run is the "
        "other process using the CPU"
    )
    return ContentionResult(
        runs=tuple(out_runs),
        throughput_alone=thr_alone,
        throughput_together=thr_together,
        combined_rss_peak_bytes=rss_peak,
        overlap=overlap,
        notes=tuple(notes),
    )
