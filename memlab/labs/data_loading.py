"""Lab 05, data loading: a data set in RAM against a memory-mapped one (anonymous against
file-backed RSS), what each epoch over the mapped file costs, and loader workers.

The lab's workload, ``memlab.workloads.jobs.data_only``, is imported by the notebook itself:
it is a workload factory, and importing it here would make this module import the workloads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from memlab.config import MIB
from memlab.labs.analysis import RSS_SPLIT, epoch_profile, sample_values
from memlab.labs.checks import Check, check_choice, check_number
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
    "explain",
    "explain_workers",
    "epoch_figure",
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
        step_times_s=sweep[label].step_times_s,
    )


def epoch_profiles(
    sweep: Sweep, *, steps_per_epoch: int, labels: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """``epoch_profile`` of each run in ``labels`` (default: all), from its live samples."""
    return {
        label: _profile(sweep, label, steps_per_epoch)
        for label in (sweep.labels if labels is None else labels)
    }


def explain(
    sweep: Sweep,
    ram: str,
    memmap: str,
    epochs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> str:
    """RAM against memmap: anonymous and file-backed RSS peaks, the data set's size, and (if
    given) the growth of each RSS part per epoch for several runs."""
    r_ram, r_mm = sweep[ram], sweep[memmap]
    ds = float(r_ram.metrics.get("dataset_bytes", 0))
    a_ram, a_mm = r_ram.rss_anon_peak_bytes, r_mm.rss_anon_peak_bytes
    f_ram, f_mm = r_ram.rss_file_peak_bytes, r_mm.rss_file_peak_bytes
    out = []
    if a_ram is None or a_mm is None:
        out.append(
            "This platform does not split RSS into anonymous and file-backed parts, so "
            "the comparison below cannot be made here (the numbers are missing, not zero)."
        )
    else:
        saved = a_ram - a_mm
        share = f" ({saved / ds:.0%} of the data set's size)" if ds else ""
        out.append(
            f"The data set's inputs take {format_bytes(ds)}. With **{ram}** the whole set is a "
            f"tensor in anonymous memory: the anonymous RSS peak was {format_bytes(a_ram)}. With "
            f"**{memmap}** it was {format_bytes(a_mm)}, **{format_bytes(saved)} "
            f"{'less' if saved >= 0 else 'more'}**{share}."
        )
        if f_ram is not None and f_mm is not None:
            out.append(
                f"\nFile-backed RSS peaked at {format_bytes(f_mm)} with memmap against "
                f"{format_bytes(f_ram)} with RAM ({'+' if f_mm >= f_ram else ''}"
                f"{format_bytes(f_mm - f_ram)}): the pages of the file that batches touched are "
                "mapped into the process, and the kernel may drop them again under pressure "
                "(they can be re-read from the file), which it cannot do with anonymous memory."
            )
    if epochs:
        out.append("\n**Epochs** (growth of each part while that epoch's steps ran):\n")
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
            if first > 4 * later_max and first > 0.5 * ds:
                out.append(
                    f"\nWith **{memmap}**, file-backed memory grew while the first epoch ran "
                    "and not after: the first pass over a memory-mapped file faults its pages in "
                    "(from the page cache, or from disk if they are not cached), later epochs "
                    "find them already mapped."
                )
    return "\n".join(s for s in out if s)


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
    return check_choice(
        answer,
        best,
        options=list(PART_NAMES.values()),
        what="a part name",
        explain=f"It grew {format_bytes(grew[best])} in the first epoch.",
    )
