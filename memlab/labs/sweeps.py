"""Running a lab's experiments: sweeps of measured runs, one worker process each, and the
accuracy of variants on the real digits (a job in a worker, so the kernel never imports torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memlab.config import MIB, Experiment
from memlab.timeline import CATEGORIES, RunResult, format_bytes

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = ["Sweep", "run_sweep", "timing_note", "accuracies"]


@dataclass(frozen=True, eq=False)
class Sweep:
    """The runs of a sweep, in order, by label. ``samples[i]`` are run ``i``'s live samples (the
    setup and warm-up too, which the result's own process series does not cover)."""

    labels: tuple[str, ...]
    experiments: tuple[Experiment, ...]
    results: tuple[RunResult, ...]
    samples: tuple[tuple[Mapping[str, Any], ...], ...] = field(default=(), repr=False)
    #: Runs per experiment; with more than one, each result is the one with the fastest median
    #: step (the memory numbers of the repeats are the same; the times are not).
    repeats: int = 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, label: str) -> RunResult:
        return self.results[self._index(label)]

    def _index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(f"no run labelled {label!r}; labels: {list(self.labels)}") from None

    def runs(self) -> Iterator[tuple[str, Experiment, RunResult]]:
        """``(label, experiment, result)`` for each run, in order."""
        return zip(self.labels, self.experiments, self.results, strict=True)

    def experiment(self, label: str) -> Experiment:
        return self.experiments[self._index(label)]

    def samples_of(self, label: str) -> tuple[Mapping[str, Any], ...]:
        i = self._index(label)
        return self.samples[i] if i < len(self.samples) else ()

    def table(self) -> pd.DataFrame:
        """One row per run: status, peak and its categories (MiB), step time, throughput and the
        process-memory peaks (MiB; empty where this platform cannot measure them)."""
        import pandas as pd

        rows = []
        for label, _exp, r in self.runs():
            row: dict[str, Any] = {"run": label, "status": r.status, "peak MiB": r.peak_bytes / MIB}
            for c in CATEGORIES:
                row[f"{c} MiB"] = r.peak_by_category.get(c, 0) / MIB
            med = r.step_time_median_s
            row["step ms"] = None if med is None else med * 1e3
            row["samples/s"] = r.throughput_samples_per_s
            for name, v in (
                ("RSS anon MiB", r.rss_anon_peak_bytes),
                ("RSS file MiB", r.rss_file_peak_bytes),
            ):
                row[name] = None if v is None else v / MIB
            rows.append(row)
        return pd.DataFrame(rows).set_index("run").round(2)

    def figure(self, title: str | None = None) -> go.Figure:
        """Peak memory by category, one bar per run, deltas against the first."""
        from memlab import plots

        fig = plots.peak_bars_figure(list(self.results), labels=list(self.labels), baseline=0)
        if title:
            fig.update_layout(title={"text": title})
        return fig

    def _repr_html_(self) -> str:
        return str(self.table()._repr_html_())

    def __repr__(self) -> str:
        parts = ", ".join(f"{lab}: {format_bytes(r.peak_bytes)}" for lab, _e, r in self.runs())
        return f"Sweep({parts})"


def run_sweep(
    experiments: Mapping[str, Experiment],
    *,
    progress: Callable[[str], None] | None = None,
    allow: Sequence[str] = ("ok",),
    timeout_s: float | None = None,
    repeat: int = 1,
) -> Sweep:
    """Run each experiment in its own worker process, one after the other, and keep the results
    and live samples. A run whose status is not in ``allow`` raises ``RuntimeError`` with the
    run's own message: a lab must not explain numbers that were not measured.

    With ``repeat`` > 1 the whole sweep runs that many times, interleaved (A B C A B C), and each
    experiment keeps its run with the fastest median step: a burst of other work on the machine
    then rarely lands on one setting only. ``progress(line)`` is called before and after each
    run (pass ``print`` in a notebook)."""
    from memlab.runner import start

    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    items = list(experiments.items())
    for label, exp in items:
        if not isinstance(exp, Experiment):
            raise TypeError(f"{label!r}: expected a memlab.Experiment, got {type(exp).__name__}")
    best: dict[int, tuple[RunResult, tuple[Mapping[str, Any], ...]]] = {}
    n = len(items) * repeat
    i = 0
    for _ in range(repeat):
        for k, (label, exp) in enumerate(items):
            i += 1
            if progress is not None:
                progress(f"run {i}/{n}: {label} …")
            handle = start(exp, timeout_s=timeout_s)
            r = handle.wait()
            if r.status not in allow:
                raise RuntimeError(f"run {label!r} ended {r.status}: {r.error}")
            med = r.step_time_median_s
            if progress is not None:
                speed = "" if med is None else f", {med * 1e3:.1f} ms/step"
                progress(f"run {i}/{n}: {label}: peak {format_bytes(r.peak_bytes)}{speed}")
            old = best.get(k)
            old_med = None if old is None else old[0].step_time_median_s
            if old is None or (med is not None and (old_med is None or med < old_med)):
                best[k] = (r, tuple(handle.samples))
    return Sweep(
        tuple(str(label) for label, _ in items),
        tuple(exp for _, exp in items),
        tuple(best[k][0] for k in range(len(items))),
        tuple(best[k][1] for k in range(len(items))),
        repeats=repeat,
    )


def timing_note(sweep: Sweep) -> str:
    """A caveat on the step times of a sweep, computed from them: how much the steps of one run
    varied (slowest against median), and how the times were chosen. Empty when steady."""
    spreads = [
        (max(r.step_times_s) - med) / med
        for r in sweep.results
        if r.step_times_s and (med := r.step_time_median_s)
    ]
    parts = []
    if sweep.repeats > 1:
        parts.append(f"Times are the fastest of {sweep.repeats} runs of each setting.")
    unsteady = [
        (label, r.timing)
        for label, r in zip(sweep.labels, sweep.results, strict=True)
        if r.timing is not None and not r.timing.steady
    ]
    if unsteady:
        label, t = unsteady[0]
        parts.append(
            f"Timing disturbed in {len(unsteady)} of {len(sweep.results)} runs "
            f"({', '.join(lab for lab, _ in unsteady)}): other processes took the CPU while "
            f"their steps were timed, so their times are slower than on a quiet machine. "
            f"{label}: {t.note}."
        )
    if spreads and max(spreads) > 0.5:
        parts.append(
            f"Within one run the slowest step took up to {max(spreads):.0%} longer than the "
            "median: something else used the CPU at times, so treat small time differences as "
            "noise (memory numbers do not depend on it)."
        )
    return " ".join(parts)


def accuracies(
    variants: Mapping[str, Experiment], *, train_steps: int = 200
) -> dict[str, float | None]:
    """Accuracy (0..1) on the real digits test split for each variant, after ``train_steps``
    steps of fp32 training and then the variant's knobs (pruning, precision...), computed on
    CPU in one worker job (``memlab.jobs.evaluate_variants``). ``None`` where the
    variant's knob cannot run here."""
    from memlab import jobs, runner

    got = runner.call(jobs.evaluate_variants, list(variants.items()), int(train_steps))
    return {label: acc for label, (acc, _why) in got.items()}
