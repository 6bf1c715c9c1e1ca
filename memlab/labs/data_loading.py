"""Lab 05, data loading: a data set in RAM against a memory-mapped one (anonymous against
file-backed RSS), what each epoch over the mapped file costs, and loader workers.

The lab's workload, ``memlab.workloads.jobs.data_only``, is imported by the notebook itself:
it is a workload factory, and importing it here would make this module import the workloads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from memlab.config import MIB
from memlab.labs.analysis import RSS_SPLIT, epoch_profile, sample_values
from memlab.labs.checks import Check, Exercise, check_choice, check_number
from memlab.labs.sweeps import Sweep, run_sweep
from memlab.labs.text import md_table, pct
from memlab.timeline import format_bytes

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "epoch_profile",
    "epoch_profiles",
    "Exercise",
    "explain",
    "why_saving",
    "why_epochs",
    "explain_workers",
    "epoch_figure",
    "exercise_saving",
    "exercise_first_epoch_part",
    "check_saving",
    "check_first_epoch_part",
]

#: What the learner calls each RSS part (the answers of ``check_first_epoch_part``).
PART_NAMES: dict[str, str] = dict(
    zip(RSS_SPLIT, ("anonymous", "file-backed", "shared"), strict=True)
)


def _profile(sweep: Sweep, label: str, steps_per_epoch: int) -> list[dict[str, Any]]:
    e = sweep.experiment(label)
    return epoch_profile(
        sweep.samples_of(label),
        steps=e.steps,
        warmup=e.warmup,
        steps_per_epoch=steps_per_epoch,
        # The tracked steps: the ones the samples were taken in (the timed steps come after,
        # over later batches, with the file's pages already mapped).
        step_times_s=sweep[label].tracked_step_times_s,
    )


def epoch_profiles(
    sweep: Sweep, *, steps_per_epoch: int, labels: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """``epoch_profile`` of each run in ``labels`` (default: all), from its live samples."""
    return {
        label: _profile(sweep, label, steps_per_epoch)
        for label in (sweep.labels if labels is None else labels)
    }


def explain(sweep: Sweep, ram: str, memmap: str) -> str:
    """What you see, before the exercises: the data set's size and where to read each RSS part.
    What memmap saved in anonymous memory is exercise 1's answer and which part grew in the
    first epoch exercise 2's: ``why_saving`` and ``why_epochs`` say them once the learner has
    tried."""
    r_ram, r_mm = sweep[ram], sweep[memmap]
    ds = float(r_ram.metrics.get("dataset_bytes", 0))
    if r_ram.rss_anon_peak_bytes is None or r_mm.rss_anon_peak_bytes is None:
        return (
            "This platform does not split RSS into anonymous and file-backed parts, so "
            "the comparison below cannot be made here (the numbers are missing, not zero)."
        )
    steps = [len(r.tracked_step_times_s) for r in (r_ram, r_mm)]
    return "\n".join(
        [
            f"The data set's inputs take **{format_bytes(ds)}**. Both runs read the same "
            f"batches ({steps[0]} and {steps[1]} measured steps); only where the data set lives "
            f"differs: a tensor in this process's memory (**{ram}**) or a file mapped into it "
            f"(**{memmap}**).",
            "",
            "- The table gives each run's peaks of anonymous (`RSS anon MiB`) and file-backed "
            "(`RSS file MiB`) memory.",
            "- The chart shows file-backed RSS while the measured steps ran, against epochs of "
            "batches read; the panel's process-memory chart shows every part of a run over "
            "time (switch it to memmap to see one).",
        ]
    )


def why_saving(sweep: Sweep, ram: str, memmap: str) -> str:
    """What memmap saved in anonymous RSS, and why (exercise 1's worked solution)."""
    r_ram, r_mm = sweep[ram], sweep[memmap]
    ds = float(r_ram.metrics.get("dataset_bytes", 0))
    a_ram, a_mm = r_ram.rss_anon_peak_bytes, r_mm.rss_anon_peak_bytes
    if a_ram is None or a_mm is None:
        return "This platform does not report anonymous RSS; nothing to compare."
    saved = a_ram - a_mm
    share = f" ({saved / ds:.0%} of the data set's size)" if ds else ""
    out = [
        f"1. Anonymous RSS peaked at {format_bytes(a_ram)} with **{ram}** and at "
        f"{format_bytes(a_mm)} with **{memmap}**: {format_bytes(a_ram)} − {format_bytes(a_mm)} = "
        f"**{saved / MIB:.1f} MiB {'less' if saved >= 0 else 'more'}**{share}.",
        f"2. Why: with {ram} the whole set is a tensor in anonymous memory (the heap); with "
        f"{memmap} its bytes stay in the file, and only the pages that batches touch are "
        "mapped in, as file-backed memory.",
    ]
    f_ram, f_mm = r_ram.rss_file_peak_bytes, r_mm.rss_file_peak_bytes
    if f_ram is not None and f_mm is not None:
        out.append(
            f"3. File-backed RSS peaked at {format_bytes(f_mm)} with memmap against "
            f"{format_bytes(f_ram)} with RAM ({'+' if f_mm >= f_ram else ''}"
            f"{format_bytes(f_mm - f_ram)}): the kernel may drop those pages again under "
            "pressure (they can be re-read from the file), which it cannot do with anonymous "
            "memory."
        )
    return "\n".join(out)


def why_epochs(
    epochs: Mapping[str, Sequence[Mapping[str, Any]]], memmap: str, dataset_bytes: float
) -> str:
    """The growth of each RSS part per epoch for each run, and what the first pass over a
    mapped file does (exercise 2's worked solution)."""
    out = ["**Epochs** (growth of each part while that epoch's steps ran):\n"]
    rows = [
        (
            label,
            row["epoch"],
            format_bytes(row.get("rss_anon growth")),
            format_bytes(row.get("rss_file growth")),
            format_bytes(row.get("rss_shmem growth")),
            "n/a" if row.get("step ms") is None else f"{row['step ms']:.1f}",
        )
        for label, prof in epochs.items()
        for row in prof
    ]
    header = (
        "run",
        "epoch",
        "anon growth",
        "file-backed growth",
        "shared growth",
        "median ms/step",
    )
    out.append(md_table(header, rows))
    for label, prof in epochs.items():
        if len(prof) < 2:
            continue
        g1 = prof[0].get("rss_file growth")
        later = [
            int(r["rss_file growth"]) for r in prof[1:] if r.get("rss_file growth") is not None
        ]
        if g1 is None or not later:
            continue
        out.append(
            f"- **{label}**: file-backed RSS grew {format_bytes(g1)} in the first epoch and "
            f"{format_bytes(max(later))} at most in a later one."
        )
    prof = list(epochs.get(memmap, ()))
    if len(prof) >= 2:
        first = int(prof[0].get("rss_file growth") or 0)
        later_max = max(int(r.get("rss_file growth") or 0) for r in prof[1:])
        if first > 4 * later_max and first > 0.5 * dataset_bytes:
            out.append(
                f"\nWith **{memmap}**, file-backed memory grew while the first epoch ran "
                "and not after: the first pass over a memory-mapped file faults its pages in "
                "(from the page cache, or from disk if they are not cached), later epochs "
                "find them already mapped."
            )
    return "\n".join(out)


def explain_workers(sweep: Sweep, baseline: str, *, steps_per_epoch: int) -> str:
    """Loader workers and prefetch against ``baseline`` (no workers): first-step and median step
    time, and what this process's RSS parts did. A run that could not run says why."""
    base = sweep[baseline]
    rows = []
    notes = []
    for label, e, r in sweep.runs():
        if r.status != "ok":
            first = (r.error or "no message").strip().splitlines()[0]
            notes.append(f"- **{label}** could not be measured here ({r.status}: {first}).")
            continue
        prof = _profile(sweep, label, steps_per_epoch)
        file_growth = sum(int(p.get("rss_file growth") or 0) for p in prof)
        shm = max(sample_values(sweep.samples_of(label), "rss_shmem"), default=None)
        first_ms = r.step_times_s[0] * 1e3 if r.step_times_s else None
        med = r.step_time_median_s
        in_flight = e.num_workers * e.prefetch_factor
        rows.append(
            (
                label,
                e.num_workers,
                e.prefetch_factor if e.num_workers else "—",
                in_flight or "—",
                "n/a" if first_ms is None else f"{first_ms:.1f}",
                "n/a" if med is None else f"{med * 1e3:.1f}",
                format_bytes(file_growth),
                format_bytes(shm),
            )
        )
    out = []
    if rows:
        header = (
            "run",
            "workers",
            "prefetch",
            "batches in flight",
            "first step ms",
            "median ms/step",
            "file-backed growth (this process)",
            "shared memory peak",
        )
        out.append(md_table(header, rows))
    t0 = base.step_time_median_s
    for label, e, r in sweep.runs():
        if r is base or r.status != "ok" or not e.num_workers:
            continue
        t = r.step_time_median_s
        if t and t0:
            notes.append(
                f"- **{label}**: median step {t * 1e3:.1f} ms against {t0 * 1e3:.1f} ms without "
                f"workers ({pct(t, t0)}). Up to {e.num_workers * e.prefetch_factor} batches "
                "wait in the workers' own memory (workers x prefetch factor), which this "
                "process's RSS does not include; on a machine with few cores the workers also "
                "compete with the model for the CPU."
            )
    out.extend(["", *notes] if notes else [])
    return "\n".join(out)


def epoch_figure(sweep: Sweep, labels: Sequence[str], *, steps_per_epoch: int) -> go.Figure:
    """File-backed RSS over the measured steps (live samples) for each run in ``labels``,
    relative to its value when the measured steps began, against epochs of batches read."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label in labels:
        exp = sweep.experiment(label)
        rows = [s for s in sweep.samples_of(label) if s.get("rss_file") is not None]
        if not rows:
            continue
        start = next(
            (s["rss_file"] for s in rows if int(s.get("step") or 0) >= 1), rows[0]["rss_file"]
        )
        measured = [s for s in rows if int(s.get("step") or 0) >= 1]
        fig.add_trace(
            go.Scatter(
                x=[(exp.warmup + int(s["step"])) / steps_per_epoch for s in measured],
                y=[(s["rss_file"] - start) / MIB for s in measured],
                mode="markers",
                name=label,
                marker={"size": 5},
            )
        )
    fig.update_layout(
        title={"text": "File-backed RSS during the measured steps (vs its start)"},
        xaxis={"title": {"text": "epochs of batches read (warm-up included)"}},
        yaxis={"title": {"text": "MiB"}},
        height=380,
    )
    return fig


def check_saving(answer: Any, sweep: Sweep, ram: str, memmap: str) -> Check:
    """Right when ``answer`` (MiB) is within 20% of the anonymous-RSS peak that memmap saved."""
    a, b = sweep[ram].rss_anon_peak_bytes, sweep[memmap].rss_anon_peak_bytes
    if a is None or b is None:
        return Check(False, "This platform does not report anonymous RSS; nothing to compare.")
    return check_number(answer, (a - b) / MIB, rel_tol=0.2, unit="MiB", what="a number of MiB")


def check_first_epoch_part(answer: Any, profile: Sequence[Mapping[str, Any]]) -> Check:
    """Right when ``answer`` names the RSS part (``anonymous``, ``file-backed`` or ``shared``)
    that grew the most in the first epoch of a run's ``epoch_profile``."""
    if not profile:
        return Check(False, "The run has no epochs to look at.")
    first = profile[0]
    grew = {name: first.get(f"{p} growth") or 0 for p, name in PART_NAMES.items()}
    best = max(grew, key=lambda k: grew[k])
    return check_choice(answer, best, options=list(PART_NAMES.values()), what="a part name")


def exercise_saving(sweep: Sweep, ram: str, memmap: str, id: str = "1") -> Exercise:
    """Exercise 1: the anonymous RSS (MiB) that memmap saved against RAM."""
    hints = (
        f"Read the 'RSS anon MiB' column of the table for '{ram}' and '{memmap}'.",
        f"The saving is the anonymous peak with {ram} minus the one with {memmap}, in MiB. "
        "Compare it with the data set's size in the explanation: what did the RAM run hold "
        "that the memmap run did not?",
    )
    return Exercise(
        id,
        "What memmap saved in anonymous memory",
        lambda a: check_saving(a, sweep, ram, memmap),
        hints=hints,
        solution=lambda: why_saving(sweep, ram, memmap),
    )


def exercise_first_epoch_part(
    epochs: Mapping[str, Sequence[Mapping[str, Any]]],
    memmap: str,
    *,
    dataset_bytes: float,
    id: str = "2",
) -> Exercise:
    """Exercise 2: which RSS part grew the most in the first epoch over the mapped file."""
    hints = (
        f"Switch the panel to {memmap} and watch its process-memory chart during the first "
        "epoch, or read the chart 'File-backed RSS during the measured steps' above.",
        "A mapped file's pages are brought in the first time a batch touches them, and they "
        "stay mapped. Which part counts pages of a file, and which the heap?",
    )
    return Exercise(
        id,
        "Which part grows in the first epoch",
        lambda a: check_first_epoch_part(a, epochs.get(memmap, ())),
        hints=hints,
        solution=lambda: why_epochs(epochs, memmap, dataset_bytes),
    )
