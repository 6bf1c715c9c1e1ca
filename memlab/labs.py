"""Helpers for the notebooks in ``labs/``: sweeps of runs, the numbers they explain, and checks.

A lab is narration plus a few calls (DESIGN.md, "Labs"); the calls live here, so they can be
tested without a notebook:

    sweep = run_sweep({"batch 16": base.replace(batch_size=16), "batch 64": ...})
    sweep.table()                       # one row per run: peak by category, speed, RSS parts
    Markdown(explain_batch_size(sweep, "batch_size"))   # "what happened and why", from the runs
    check_largest_batch(answer, base, budget_bytes)     # an exercise, checked by real runs

Nothing in here states a result it did not compute: every sentence that names a number or a
direction (grew, fell, faster) is built from the runs passed in. This module imports neither
ipywidgets nor plotly at import time (figures are built on demand) and no torch at all, except
in the spawned process that measures accuracy.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from memlab.config import Experiment
from memlab.timeline import CATEGORIES, PHASES, RunResult, format_bytes

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "timing_note",
    "category_trends",
    "linear_fit",
    "phase_seconds",
    "epoch_profile",
    "accuracies",
    "data_only",
    # explanations
    "explain_tour",
    "explain_batch_size",
    "explain_checkpointing",
    "explain_precision",
    "explain_sparsity",
    "explain_data_loading",
    "explain_workers",
    # figures
    "sparsity_bytes_figure",
    "epoch_figure",
    # checks
    "check_number",
    "check_choice",
    "check_largest_batch",
    "check_panel_result",
    "check_biggest_saving",
    "check_growing_categories",
    "check_activation_saving",
    "check_bf16_parameters",
    "check_smallest_training_peak",
    "check_crossover",
    "check_sparsity_accuracy",
    "check_memmap_saving",
    "check_first_epoch_part",
]

MIB = 2**20
_MODEL_STATE = ("parameters", "gradients", "optimizer_state")


def _mib(n: float | None) -> str:
    return format_bytes(n)


def _pct(new: float, old: float) -> str:
    """``+12%`` / ``-40%`` of ``new`` against ``old`` (``n/a`` without a baseline)."""
    if not old:
        return "n/a"
    return f"{100.0 * (new - old) / old:+.0f}%"


def _times(new: float, old: float) -> str:
    if not old:
        return "n/a"
    return f"{new / old:.2f}x"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


# ================================================================================================
# Checks: what an exercise cell shows
# ================================================================================================
@dataclass(frozen=True)
class Check:
    """The verdict on an exercise answer: ``ok`` is ``True``/``False``, or ``None`` while the
    exercise is not answered yet. Renders as a coloured box in a notebook."""

    ok: bool | None
    message: str

    def __bool__(self) -> bool:
        return bool(self.ok)

    @property
    def verdict(self) -> str:
        return {True: "right", False: "not yet right", None: "not answered yet"}[self.ok]

    def __repr__(self) -> str:
        mark = {True: "RIGHT", False: "WRONG", None: "TODO"}[self.ok]
        return f"[{mark}] {self.message}"

    def _repr_html_(self) -> str:
        color, bg, mark = {
            True: ("#1b5e20", "#e8f5e9", "&#10004; right"),
            False: ("#b71c1c", "#ffebee", "&#10008; not yet"),
            None: ("#5d4037", "#fff8e1", "&#9998; your turn"),
        }[self.ok]
        body = html.escape(self.message).replace("\n", "<br>")
        return (
            f'<div style="border-left:4px solid {color};background:{bg};padding:6px 10px;'
            f'color:{color}"><b>{mark}</b>: {body}</div>'
        )


def _todo(what: str) -> Check:
    return Check(None, f"Set the answer to {what} and run this cell again.")


def check_number(
    answer: Any,
    truth: float,
    *,
    rel_tol: float | None = None,
    abs_tol: float | None = None,
    unit: str = "",
    what: str = "a number",
    explain: str = "",
) -> Check:
    """Right when ``answer`` is within ``rel_tol`` (fraction of ``truth``) or ``abs_tol`` of it.

    The message says the measured value only once the answer is right, or by how far it is off
    (higher/lower), so that a learner can try again."""
    if answer is None:
        return _todo(what)
    if (
        isinstance(answer, bool)
        or not isinstance(answer, (int, float))
        or not math.isfinite(answer)
    ):
        return Check(False, f"The answer must be {what}, got {answer!r}.")
    tol = 0.0
    if rel_tol is not None:
        tol = max(tol, abs(truth) * rel_tol)
    if abs_tol is not None:
        tol = max(tol, abs_tol)
    u = f" {unit}" if unit else ""
    if abs(answer - truth) <= tol:
        msg = f"{answer:g}{u} is within {tol:.3g}{u} of the measured {truth:.4g}{u}."
        return Check(True, f"{msg} {explain}".strip())
    direction = "too high" if answer > truth else "too low"
    return Check(False, f"{answer:g}{u} is {direction} (more than {tol:.3g}{u} off). Try again.")


def _norm(s: Any) -> str:
    return str(s).strip().lower().replace(" ", "_").replace("-", "_")


def check_choice(
    answer: Any,
    truth: Any,
    *,
    options: Sequence[Any] | None = None,
    what: str = "an option",
    explain: str = "",
) -> Check:
    """Right when ``answer`` names ``truth`` (case, spaces, dashes and underscores ignored). A set
    (or list) of names is compared as a set."""
    if answer is None:
        return _todo(what)
    if isinstance(truth, (set, frozenset, list, tuple)):
        if isinstance(answer, str) or not isinstance(answer, Iterable):
            return Check(
                False, f"The answer must be a set of names, e.g. {{'a', 'b'}}, got {answer!r}."
            )
        got = {_norm(a) for a in answer}
        want = {_norm(t) for t in truth}
        if got == want:
            return Check(True, f"Yes: {sorted(want)}. {explain}".strip())
        missing, extra = sorted(want - got), sorted(got - want)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing")
        if extra:
            parts.append(f"{len(extra)} that should not be there ({', '.join(extra)})")
        return Check(False, "Not quite: " + " and ".join(parts) + ". Look at the table again.")
    if options is not None and _norm(answer) not in {_norm(o) for o in options}:
        return Check(False, f"The answer must be one of {list(options)}, got {answer!r}.")
    if _norm(answer) == _norm(truth):
        return Check(True, f"Yes: {truth}. {explain}".strip())
    return Check(False, f"{answer!r} is not it. Look at the measured numbers again.")


# ================================================================================================
# Sweeps: several runs, one after the other
# ================================================================================================
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
        try:
            return self.results[self.labels.index(label)]
        except ValueError:
            raise KeyError(f"no run labelled {label!r}; labels: {list(self.labels)}") from None

    def experiment(self, label: str) -> Experiment:
        return self.experiments[self.labels.index(label)]

    def samples_of(self, label: str) -> tuple[Mapping[str, Any], ...]:
        i = self.labels.index(label)
        return self.samples[i] if i < len(self.samples) else ()

    def table(self) -> pd.DataFrame:
        """One row per run: status, peak and its categories (MiB), step time, throughput and the
        process-memory peaks (MiB; empty where this platform cannot measure them)."""
        import pandas as pd

        rows = []
        for label, r in zip(self.labels, self.results, strict=True):
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
        df = pd.DataFrame(rows).set_index("run")
        return df.round(2)

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
        parts = ", ".join(
            f"{lab}: {format_bytes(r.peak_bytes)}"
            for lab, r in zip(self.labels, self.results, strict=True)
        )
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
    if spreads and max(spreads) > 0.5:
        parts.append(
            f"Within one run the slowest step took up to {max(spreads):.0%} longer than the "
            "median: something else used the CPU at times, so treat small time differences as "
            "noise (memory numbers do not depend on it)."
        )
    return " ".join(parts)


# ================================================================================================
# Analysis: pure functions of results
# ================================================================================================
def category_trends(
    results: Sequence[RunResult], *, rel: float = 0.05, min_bytes: int = 1024
) -> dict[str, str]:
    """How each category's peak bytes move from the first run to the last: ``grows``,
    ``shrinks``, ``constant`` (within ``rel`` of the first, or less than ``min_bytes`` apart),
    or ``absent`` (zero in every run). The runs should be ordered by the knob swept."""
    if len(results) < 2:
        raise ValueError("a trend needs at least two runs")
    out: dict[str, str] = {}
    for c in CATEGORIES:
        vals = [int(r.peak_by_category.get(c, 0)) for r in results]
        first, last = vals[0], vals[-1]
        if not any(vals):
            out[c] = "absent"
        elif abs(last - first) <= max(rel * first, min_bytes):
            out[c] = "constant"
        else:
            out[c] = "grows" if last > first else "shrinks"
    return out


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept``; returns ``(slope, intercept)``."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise ValueError("a linear fit needs at least two different x values")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def phase_seconds(result: RunResult) -> dict[str, float]:
    """Seconds the measured block spent in each phase, from the event timeline (the time from
    one allocation event to the next is given to the phase of the first)."""
    tl = result.timeline
    if len(tl) < 2:
        return {}
    dt = np.diff(tl.t)
    ph = tl.phase[:-1]
    return {p: float(dt[ph == i].sum()) for i, p in enumerate(PHASES) if np.any(ph == i)}


def _samples_value(samples: Sequence[Mapping[str, Any]], key: str) -> list[int]:
    return [int(s[key]) for s in samples if s.get(key) is not None]


def epoch_profile(
    samples: Sequence[Mapping[str, Any]],
    *,
    steps: int,
    warmup: int,
    steps_per_epoch: int,
    step_times_s: Sequence[float] = (),
) -> list[dict[str, Any]]:
    """Per epoch of a run: how much each RSS part grew while its measured steps ran.

    ``samples`` are the run's live samples (each says its ``step``: 0 during setup and warm-up,
    then the measured step it was taken in). The warm-up batches come first in epoch 1. Growth of
    a part in epoch ``e`` is the highest value it reached by the end of ``e`` minus the highest
    it reached before ``e`` began, starting from its value when the measured steps began (pages
    mapped by a step stay mapped unless the system runs short of memory, so the running maximum
    is the honest reading). Epochs without a sample are left out."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")

    def epoch_of(step: int) -> int:
        return (warmup + step - 1) // steps_per_epoch + 1

    before = [s for s in samples if int(s.get("step") or 0) == 0]
    parts = ("rss_anon", "rss_file", "rss_shmem")
    # The level when the measured steps began: the last reading before step 1 (not the highest
    # during setup, which may have written the memmap file through a mapping of its own).
    running: dict[str, int | None] = {}
    for p in parts:
        vals = _samples_value(before, p)
        running[p] = vals[-1] if vals else None
    out = []
    last_epoch = epoch_of(steps)
    for e in range(1, last_epoch + 1):
        in_e = [
            s for s in samples if int(s.get("step") or 0) >= 1 and epoch_of(int(s["step"])) == e
        ]
        ks = [k for k in range(1, steps + 1) if epoch_of(k) == e]
        if not in_e or not ks:
            continue
        row: dict[str, Any] = {"epoch": e, "measured steps": len(ks)}
        for p in parts:
            vals = _samples_value(in_e, p)
            prev = running[p]
            if not vals or prev is None:
                row[f"{p} growth"] = None
                continue
            top = max(prev, max(vals))
            row[f"{p} growth"] = top - prev
            running[p] = top
        times = [step_times_s[k - 1] for k in ks if k - 1 < len(step_times_s)]
        row["step ms"] = float(np.median(times)) * 1e3 if times else None
        out.append(row)
    return out


# ================================================================================================
# A workload for the data-loading lab
# ================================================================================================
def data_only(exp: Experiment, device: str) -> Any:
    """A workload factory: the ``mlp`` workload's data (``ram`` or ``memmap``, any size, any
    loader settings) feeding one ``Linear(64, 10)``, so that a step costs little more than
    reading its batch. The data-loading lab uses it to look at the data path alone: with the
    8.4M-parameter MLP, three epochs over 64 MiB of samples would take minutes on a laptop."""
    from torch import nn

    from memlab.workloads import build_workload

    w = build_workload(exp.replace(workload="mlp"), device)
    w.name = "data_only"
    w.model = nn.Linear(64, 10).to(device)
    w.model.train(exp.mode == "train")
    w.blocks = []
    w.optimizer = None
    w.rebuild_optimizer()
    return w


# ================================================================================================
# Accuracy on the real digits, in a spawned process (the kernel never imports torch)
# ================================================================================================
def _accuracy_job(
    variants: list[tuple[str, Experiment]], train_steps: int
) -> dict[str, tuple[float | None, str | None]]:
    """Train each distinct (workload, seed, batch size) once in fp32 on CPU, then for every
    variant load those weights, apply its knobs and evaluate (what
    ``memlab.workloads.accuracy`` does, without training again for every variant)."""
    import torch

    from memlab.knobs import KnobUnsupported, apply_knobs
    from memlab.workloads import build_workload

    trained: dict[tuple[str, int, int], dict[str, Any]] = {}
    out: dict[str, tuple[float | None, str | None]] = {}
    for label, exp in variants:
        small = exp.replace(data="ram", data_size=exp.batch_size, num_workers=0, device="cpu")
        key = (small.workload_name, small.seed, small.batch_size)
        if key not in trained:
            plain = small.replace(precision="fp32").replace(
                mode="train", sparsity=0.0, checkpointing="off"
            )
            torch.manual_seed(plain.seed)
            w = build_workload(plain, "cpu")
            w.fit(train_steps, seed=plain.seed)
            trained[key] = {k: v.detach().clone() for k, v in w.model.state_dict().items()}
        torch.manual_seed(small.seed)
        w = build_workload(small, "cpu")
        w.model.load_state_dict(trained[key])
        try:
            apply_knobs(w, small)
        except KnobUnsupported as e:
            out[label] = (None, str(e))
            continue
        out[label] = (w.evaluate(), None)
    return out


def accuracies(
    variants: Mapping[str, Experiment], *, train_steps: int = 200
) -> dict[str, float | None]:
    """Accuracy (0..1) on the real digits test split for each variant, after ``train_steps``
    steps of fp32 training and then the variant's knobs (pruning, precision...), computed on
    CPU in one spawned process. ``None`` where the variant's knob cannot run here."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    items = list(variants.items())
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        got = pool.submit(_accuracy_job, items, int(train_steps)).result()
    return {label: acc for label, (acc, _why) in got.items()}


# ================================================================================================
# Explanations ("what happened and why"), one per lab; Markdown built from the numbers
# ================================================================================================
def _biggest_change(base: RunResult, other: RunResult) -> tuple[str, int]:
    deltas = {
        c: other.peak_by_category.get(c, 0) - base.peak_by_category.get(c, 0) for c in CATEGORIES
    }
    c = max(deltas, key=lambda k: abs(deltas[k]))
    return c, deltas[c]


def explain_tour(sweep: Sweep) -> str:
    """For each run after the first (the baseline): how the peak moved and which category moved
    it most."""
    base = sweep.results[0]
    lines = [
        f"The baseline (**{sweep.labels[0]}**) peaked at **{_mib(base.peak_bytes)}** of "
        f"tensors, in the {base.peak_phase} phase."
    ]
    for label, r in zip(sweep.labels[1:], sweep.results[1:], strict=True):
        c, d = _biggest_change(base, r)
        verb = "raised" if r.peak_bytes > base.peak_bytes else "lowered"
        if d == 0:
            why = "no category changed"
        else:
            why = (
                f"mostly through **{c}** ({'+' if d > 0 else ''}{_mib(d)}: "
                f"{_mib(base.peak_by_category.get(c, 0))} → {_mib(r.peak_by_category.get(c, 0))})"
            )
        tp_old, tp_new = base.throughput_samples_per_s, r.throughput_samples_per_s
        speed = ""
        if tp_old and tp_new:
            speed = f"; throughput {tp_old:.0f} → {tp_new:.0f} samples/s ({_pct(tp_new, tp_old)})"
        lines.append(
            f"- **{label}** {verb} the peak to {_mib(r.peak_bytes)} "
            f"({_pct(r.peak_bytes, base.peak_bytes)}), {why}{speed}."
        )
    best = min(range(1, len(sweep)), key=lambda i: sweep.results[i].peak_bytes, default=None)
    if best is not None and sweep.results[best].peak_bytes < base.peak_bytes:
        lines.append(
            f"\nOf these single changes, **{sweep.labels[best]}** saved the most memory "
            "here. Which one wins depends on where the bytes are: a parameter-heavy "
            "model and an activation-heavy one reward different knobs."
        )
    note = timing_note(sweep)
    if note:
        lines.append(f"\n_{note}_")
    return "\n".join(lines)


def explain_batch_size(sweep: Sweep, field: str = "batch_size") -> str:
    """Which categories grew with the batch, the bytes per sample and the fixed bytes (a line
    fitted to the measured peaks), and what happened to throughput."""
    xs = [getattr(e, field) for e in sweep.experiments]
    trends = category_trends(sweep.results)
    slope, intercept = linear_fit(xs, [r.peak_bytes for r in sweep.results])
    first, last = sweep.results[0], sweep.results[-1]
    grew = [c for c, t in trends.items() if t == "grows"]
    const = [c for c, t in trends.items() if t == "constant"]
    rows = []
    for c in CATEGORIES:
        if trends[c] == "absent":
            continue
        a, b = first.peak_by_category.get(c, 0), last.peak_by_category.get(c, 0)
        rows.append((c, _mib(a), _mib(b), _times(b, a) if a else "n/a", trends[c]))
    out = [
        f"The batch went from {xs[0]} to {xs[-1]} ({_times(xs[-1], xs[0])}); the peak went from "
        f"{_mib(first.peak_bytes)} to {_mib(last.peak_bytes)} "
        f"({_times(last.peak_bytes, first.peak_bytes)}).",
        "",
        _md_table(("category", f"at {xs[0]}", f"at {xs[-1]}", "ratio", "trend"), rows),
        "",
        f"- **Grew with the batch:** {', '.join(grew) or 'none'}. These hold one row per sample: "
        "the saved activations for backward, the input batch, and the scratch space of each op.",
        f"- **Stayed constant:** {', '.join(const) or 'none'}. The weights, their gradients and "
        "the optimizer state are sized by the model, not by the batch.",
        f"- A straight line through the measured peaks gives **{_mib(slope)} per sample** on top "
        f"of **{_mib(max(intercept, 0.0))} fixed**: that line is how you predict the largest "
        "batch for a budget.",
    ]
    tps = [r.throughput_samples_per_s for r in sweep.results]
    if all(t is not None for t in tps):
        t0, t1 = float(tps[0] or 0), float(tps[-1] or 0)
        trend = "rose" if t1 > t0 * 1.05 else "fell" if t1 < t0 * 0.95 else "stayed about level"
        best = int(np.argmax(np.asarray(tps, dtype=np.float64)))
        out.append(
            f"- Throughput {trend}: {t0:.0f} → {t1:.0f} samples/s ({_pct(t1, t0)}); the best "
            f"here was at {field} {xs[best]} ({float(tps[best] or 0):.0f} samples/s). Larger "
            "batches amortise per-step overhead until the cores are saturated; after that a "
            "bigger batch costs memory without buying speed."
        )
    note = timing_note(sweep)
    if note:
        out.append(f"\n_{note}_")
    return "\n".join(out)


def explain_checkpointing(sweep: Sweep, baseline: str) -> str:
    """Activation bytes and step time of each checkpointing setting against ``baseline``."""
    base = sweep[baseline]
    a0 = base.peak_by_category.get("activations", 0)
    t0 = base.step_time_median_s
    b0 = phase_seconds(base).get("backward", 0.0)
    rows = []
    for label, r in zip(sweep.labels, sweep.results, strict=True):
        a = r.peak_by_category.get("activations", 0)
        t = r.step_time_median_s
        b = phase_seconds(r).get("backward", 0.0)
        steps = max(1, len(r.step_times_s))
        rows.append(
            (
                label,
                _mib(a),
                _pct(a, a0) if r is not base else "—",
                _mib(r.peak_bytes),
                "n/a" if t is None else f"{t * 1e3:.1f}",
                "—" if r is base or t is None or t0 is None else _pct(t, t0),
                f"{b / steps * 1e3:.1f}",
            )
        )
    best = min(sweep.results, key=lambda r: r.peak_by_category.get("activations", 0))
    best_label = sweep.labels[sweep.results.index(best)]
    a1 = best.peak_by_category.get("activations", 0)
    t1 = best.step_time_median_s
    b1 = phase_seconds(best).get("backward", 0.0)
    out = [
        _md_table(
            (
                "setting",
                "activations",
                "vs baseline",
                "peak",
                "ms/step",
                "time vs baseline",
                "backward ms/step",
            ),
            rows,
        ),
        "",
        f"- **{best_label}** kept the fewest activation bytes: {_mib(a1)} instead of {_mib(a0)} "
        f"({_pct(a1, a0)}). A checkpointed block saves only its input for backward and drops "
        "everything it computed inside; backward runs the block's forward again to get them back.",
    ]
    if t0 and t1:
        extra = t1 - t0
        saved = a0 - a1
        cost = (
            f"{extra * 1e3:.1f} ms more per step ({_pct(t1, t0)})"
            if extra > 0
            else f"no measurable extra time per step ({_pct(t1, t0)}: noise of this machine "
            "is larger than the recompute)"
        )
        out.append(
            f"- The price is recompute: {cost}; time spent in backward went from "
            f"{b0 / max(1, len(base.step_times_s)) * 1e3:.1f} to "
            f"{b1 / max(1, len(best.step_times_s)) * 1e3:.1f} ms per step, where the "
            "recomputed forward runs."
        )
        if extra > 0 and saved > 0:
            out.append(
                f"- Exchange rate here: {_mib(saved / (extra * 1e3))} of activations saved "
                "per extra millisecond per step."
            )
    tmp0 = base.peak_by_category.get("temporaries", 0)
    tmp1 = best.peak_by_category.get("temporaries", 0)
    if tmp1 > tmp0:
        out.append(
            f"- Temporaries rose ({_mib(tmp0)} → {_mib(tmp1)}): the recomputed block's "
            "intermediate tensors are alive during backward, so the peak falls by less "
            f"than the activations did ({_mib(base.peak_bytes)} → {_mib(best.peak_bytes)})."
        )
    note = timing_note(sweep)
    if note:
        out.append(f"\n_{note}_")
    return "\n".join(out)


def explain_precision(
    sweep: Sweep,
    baseline: str,
    accuracy: Mapping[str, float | None] | None = None,
    inference_baseline: str | None = None,
) -> str:
    """Where the bytes went for each precision (model bytes by dtype from the model itself,
    tensor categories from the tracker), the speed, and the accuracy if given."""
    rows = []
    for label, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True):
        model = {
            k.removeprefix("model_bytes_"): v
            for k, v in r.metrics.items()
            if k.startswith("model_bytes_")
        }
        dtypes = ", ".join(f"{k} {_mib(v)}" for k, v in sorted(model.items()))
        tp = r.throughput_samples_per_s
        acc = None if accuracy is None else accuracy.get(label)
        rows.append(
            (
                label,
                e.mode,
                dtypes or "n/a",
                _mib(r.peak_by_category.get("parameters", 0)),
                _mib(r.peak_by_category.get("gradients", 0)),
                _mib(r.peak_by_category.get("optimizer_state", 0)),
                _mib(r.peak_bytes),
                "n/a" if tp is None else f"{tp:.0f}",
                "n/a" if acc is None else f"{acc:.3f}",
            )
        )
    out = [
        _md_table(
            (
                "run",
                "mode",
                "model bytes by dtype",
                "parameters",
                "gradients",
                "optimizer state",
                "peak",
                "samples/s",
                "accuracy",
            ),
            rows,
        ),
        "",
    ]
    base = sweep[baseline]
    p0 = base.peak_by_category.get("parameters", 0)
    tp0 = base.throughput_samples_per_s
    for label, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True):
        if r is base or e.mode != "train":
            continue
        p = r.peak_by_category.get("parameters", 0)
        tp = r.throughput_samples_per_s
        speed = f"; {tp:.0f} vs {tp0:.0f} samples/s ({_pct(tp, tp0)})" if tp and tp0 else ""
        if e.precision.startswith("amp"):
            why = (
                "autocast keeps the fp32 weights (the master copy the optimizer updates) and "
                "casts them per op, so parameter bytes "
                + ("did not drop" if p >= p0 * 0.99 else "changed")
                + f" ({_mib(p0)} → {_mib(p)}); the casts are short-lived temporaries "
                f"({_mib(base.peak_by_category.get('temporaries', 0))} → "
                f"{_mib(r.peak_by_category.get('temporaries', 0))})"
            )
        else:
            why = (
                f"weights stored in {e.precision}: parameters {_mib(p0)} → {_mib(p)} "
                f"({_times(p, p0)}), and the gradients and optimizer state follow them "
                f"({_mib(base.peak_by_category.get('optimizer_state', 0))} → "
                f"{_mib(r.peak_by_category.get('optimizer_state', 0))} of optimizer state)"
            )
        out.append(f"- **{label}**: {why}{speed}.")
    if inference_baseline is not None:
        ib = sweep[inference_baseline]
        mb0 = float(ib.metrics.get("model_bytes", 0))
        for label, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True):
            if e.precision != "int8":
                continue
            mb = float(r.metrics.get("model_bytes", 0))
            tp, tpi = r.throughput_samples_per_s, ib.throughput_samples_per_s
            speed = f"; {tp:.0f} vs {tpi:.0f} samples/s ({_pct(tp, tpi)})" if tp and tpi else ""
            out.append(
                f"- **{label}**: the model holds {_mib(mb)} instead of {_mib(mb0)} "
                f"({_times(mb, mb0)}): Linear weights are stored as one byte each, "
                f"other layers stay fp32{speed}."
            )
            if r.peak_bytes < mb * 0.5:
                out.append(
                    f"  The tensor peak of this run ({_mib(r.peak_bytes)}) is smaller than "
                    "the model: the packed int8 weights live in the quantized kernels' own "
                    "buffers, outside PyTorch's tensor storage that the tracker counts, so "
                    "memlab reads them from the model instead."
                )
    if accuracy:
        acc0 = accuracy.get(baseline)
        worst = [(lab, a) for lab, a in accuracy.items() if a is not None]
        if acc0 is not None and worst:
            lab, a = min(worst, key=lambda t: t[1])
            out.append(
                f"- Accuracy on the real digits (after fp32 training, then the precision "
                f"applied): {acc0:.3f} in {baseline}; the lowest was {a:.3f} ({lab}, "
                f"{(a - acc0) * 100:+.1f} points)."
            )
    note = timing_note(sweep)
    if note:
        out.append(f"\n_{note}_")
    return "\n".join(out)


def explain_sparsity(
    sweep: Sweep, dense: str, accuracy: Mapping[float, float | None] | None = None
) -> str:
    """Mask against sparse storage at each sparsity: parameter bytes, the CSR arithmetic and
    the crossover, and accuracy against sparsity if given (keys: sparsity levels)."""
    base = sweep[dense]
    p0 = base.peak_by_category.get("parameters", 0)
    rows = []
    cross: float | None = None
    for label, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True):
        m = r.metrics
        csr = m.get("sparse_csr_bytes")
        dense_eq = m.get("sparse_dense_equivalent_bytes")
        if m.get("sparse_density_crossover") is not None:
            cross = float(m["sparse_density_crossover"])
        rows.append(
            (
                label,
                f"{e.sparsity:g}",
                e.sparse_storage if e.sparsity else "—",
                _mib(r.peak_by_category.get("parameters", 0)),
                _pct(r.peak_by_category.get("parameters", 0), p0) if r is not base else "—",
                "—" if csr is None else f"{_mib(csr)} vs {_mib(dense_eq)} dense",
                _mib(r.peak_bytes),
            )
        )
    out = [
        _md_table(
            (
                "run",
                "sparsity",
                "storage",
                "parameters",
                "vs dense",
                "Linear weights (CSR)",
                "peak",
            ),
            rows,
        ),
        "",
    ]
    masks = [
        (lab, r)
        for lab, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True)
        if e.sparsity and e.sparse_storage == "mask"
    ]
    for lab, r in masks:
        p = r.peak_by_category.get("parameters", 0)
        out.append(
            f"- **{lab}** (mask): parameters {_mib(p0)} → {_mib(p)} ({_pct(p, p0)}). The "
            "pruned weights are still stored densely (zeros take 4 bytes like any fp32), "
            "plus a dense mask and the recomputed masked weight: masking "
            + ("saves nothing." if p >= p0 else "saved a little here.")
        )
    sparse = [
        (lab, r, e)
        for lab, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True)
        if e.sparsity and e.sparse_storage == "sparse"
    ]
    for lab, r, _e in sparse:
        csr = r.metrics.get("sparse_csr_bytes")
        dense_eq = r.metrics.get("sparse_dense_equivalent_bytes")
        p = r.peak_by_category.get("parameters", 0)
        if csr is None or dense_eq is None:
            continue
        verdict = "smaller" if csr < dense_eq else "larger"
        out.append(
            f"- **{lab}** (CSR): the Linear weights take {_mib(csr)} instead of "
            f"{_mib(dense_eq)}, {verdict} than dense; parameters {_mib(p0)} → {_mib(p)} "
            f"({_pct(p, p0)})."
        )
    if cross is not None:
        out.append(
            f"- CSR stores a value (4 bytes) *and* a column index (8 bytes) per kept "
            f"weight, so it only wins below a density of **{cross:.3f}**, i.e. above "
            f"**{1 - cross:.3f} sparsity** for these layers."
        )
    if accuracy:
        pts = sorted((s, a) for s, a in accuracy.items() if a is not None)
        if pts:
            a0 = dict(pts).get(0.0, pts[0][1])
            desc = ", ".join(f"{s:g}: {a:.3f}" for s, a in pts)
            out.append(
                f"- Accuracy on the real digits by sparsity (magnitude pruning after "
                f"training, no fine-tuning): {desc}."
            )
            ok = [s for s, a in pts if a >= a0 - 0.05]
            if ok:
                out.append(
                    f"  The highest sparsity within 5 points of dense here: **{max(ok):g}**."
                )
    return "\n".join(out)


def explain_data_loading(
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
            f"The data set's inputs take {_mib(ds)}. With **{ram}** the whole set is a tensor in "
            f"anonymous memory: the anonymous RSS peak was {_mib(a_ram)}. With **{memmap}** it "
            f"was {_mib(a_mm)}, **{_mib(saved)} {'less' if saved >= 0 else 'more'}**{share}."
        )
        if f_ram is not None and f_mm is not None:
            out.append(
                f"\nFile-backed RSS peaked at {_mib(f_mm)} with memmap against {_mib(f_ram)} with "
                f"RAM ({'+' if f_mm >= f_ram else ''}{_mib(f_mm - f_ram)}): the pages of the file "
                "that batches touched are mapped into the process, and the kernel may drop them "
                "again under pressure (they can be re-read from the file), which it cannot do with "
                "anonymous memory."
            )
    if epochs:
        out.append("\n**Epochs** (growth of each part while that epoch's steps ran):\n")
        rows = []
        for label, prof in epochs.items():
            for row in prof:
                rows.append(
                    (
                        label,
                        row["epoch"],
                        _mib(row.get("rss_anon growth")),
                        _mib(row.get("rss_file growth")),
                        _mib(row.get("rss_shmem growth")),
                        "n/a" if row.get("step ms") is None else f"{row['step ms']:.1f}",
                    )
                )
        out.append(
            _md_table(
                (
                    "run",
                    "epoch",
                    "anon growth",
                    "file-backed growth",
                    "shared growth",
                    "median ms/step",
                ),
                rows,
            )
        )
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
                f"- **{label}**: file-backed RSS grew {_mib(g1)} in the first epoch and "
                f"{_mib(max(later))} at most in a later one."
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
    for label, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True):
        if r.status != "ok":
            first = (r.error or "no message").strip().splitlines()[0]
            notes.append(f"- **{label}** could not be measured here ({r.status}: {first}).")
            continue
        prof = epoch_profile(
            sweep.samples_of(label),
            steps=e.steps,
            warmup=e.warmup,
            steps_per_epoch=steps_per_epoch,
            step_times_s=r.step_times_s,
        )
        file_growth = sum(int(p.get("rss_file growth") or 0) for p in prof)
        shm = max(_samples_value(sweep.samples_of(label), "rss_shmem"), default=None)
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
                _mib(file_growth),
                _mib(shm),
            )
        )
    out = []
    if rows:
        out.append(
            _md_table(
                (
                    "run",
                    "workers",
                    "prefetch",
                    "batches in flight",
                    "first step ms",
                    "median ms/step",
                    "file-backed growth (this process)",
                    "shared memory peak",
                ),
                rows,
            )
        )
    t0 = base.step_time_median_s
    for label, r, e in zip(sweep.labels, sweep.results, sweep.experiments, strict=True):
        if r is base or r.status != "ok" or not e.num_workers:
            continue
        t = r.step_time_median_s
        if t and t0:
            notes.append(
                f"- **{label}**: median step {t * 1e3:.1f} ms against {t0 * 1e3:.1f} ms without "
                f"workers ({_pct(t, t0)}). Up to {e.num_workers * e.prefetch_factor} batches "
                "wait in the workers' own memory (workers x prefetch factor), which this "
                "process's RSS does not include; on a machine with few cores the workers also "
                "compete with the model for the CPU."
            )
    out.extend(["", *notes] if notes else [])
    return "\n".join(out)


# ================================================================================================
# Figures for the labs (pure: data in, figure out)
# ================================================================================================
def sparsity_bytes_figure(sweep: Sweep, dense: str) -> go.Figure:
    """Measured parameter bytes against sparsity, one line per storage, the dense baseline as a
    horizontal line and the CSR crossover as a vertical one."""
    import plotly.graph_objects as go

    base = sweep[dense]
    fig = go.Figure()
    for storage, color in (("mask", "#E45756"), ("sparse", "#4C78A8")):
        pts = sorted(
            (e.sparsity, r.peak_by_category.get("parameters", 0) / MIB)
            for e, r in zip(sweep.experiments, sweep.results, strict=True)
            if e.sparsity and e.sparse_storage == storage
        )
        if pts:
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=f"{storage} storage",
                    line={"color": color},
                )
            )
    fig.add_hline(
        y=base.peak_by_category.get("parameters", 0) / MIB,
        line_dash="dot",
        annotation_text="dense",
        line_color="#333333",
    )
    cross = next(
        (
            float(r.metrics["sparse_density_crossover"])
            for r in sweep.results
            if r.metrics.get("sparse_density_crossover") is not None
        ),
        None,
    )
    if cross is not None:
        fig.add_vline(
            x=1 - cross,
            line_dash="dash",
            line_color="#72B7B2",
            annotation_text=f"CSR crossover {1 - cross:.2f}",
        )
    fig.update_layout(
        title={"text": "Parameter bytes at the peak vs sparsity (measured)"},
        xaxis={"title": {"text": "sparsity"}},
        yaxis={"title": {"text": "MiB"}, "rangemode": "tozero"},
        height=380,
    )
    return fig


def epoch_figure(sweep: Sweep, labels: Sequence[str], *, steps_per_epoch: int) -> go.Figure:
    """File-backed RSS over the run (live samples, setup included) for each run in ``labels``,
    relative to its value when the measured steps began, with the epoch boundaries marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label in labels:
        samples = sweep.samples_of(label)
        exp = sweep.experiment(label)
        rows = [s for s in samples if s.get("rss_file") is not None]
        if not rows:
            continue
        start = next(
            (s["rss_file"] for s in rows if int(s.get("step") or 0) >= 1), rows[0]["rss_file"]
        )
        x = [
            (exp.warmup + int(s.get("step") or 0)) / steps_per_epoch
            if int(s.get("step") or 0) >= 1
            else None
            for s in rows
        ]
        keep = [
            (xi, (s["rss_file"] - start) / MIB)
            for xi, s in zip(x, rows, strict=True)
            if xi is not None
        ]
        fig.add_trace(
            go.Scatter(
                x=[k[0] for k in keep],
                y=[k[1] for k in keep],
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


# ================================================================================================
# Exercise checks
# ================================================================================================
def check_largest_batch(
    answer: Any,
    base: Experiment,
    budget_bytes: int,
    *,
    multiple: int = 8,
    run: Callable[[Experiment], RunResult] | None = None,
) -> Check:
    """Right when ``answer`` (a multiple of ``multiple``) fits ``budget_bytes`` of tensor memory
    and ``answer + multiple`` does not, both checked by real runs of ``base`` at those batch
    sizes (no budget set, so each run reports its full peak; at most two measured steps)."""
    if answer is None:
        return _todo(f"a batch size (a multiple of {multiple})")
    if isinstance(answer, bool) or not isinstance(answer, int) or answer <= 0:
        return Check(False, f"The answer must be a positive int, got {answer!r}.")
    if answer % multiple:
        return Check(False, f"Answer with a multiple of {multiple} ({answer} is not).")
    run_fn: Callable[[Experiment], RunResult]
    if run is None:
        from memlab.runner import run as run_fn
    else:
        run_fn = run

    def peak(b: int) -> RunResult:
        # After a warm-up step every step peaks alike, so two measured steps are enough.
        exp = base.replace(
            batch_size=b,
            budget_bytes=None,
            data_size=max(base.data_size, b + multiple),
            steps=min(base.steps, 2),
            warmup=max(base.warmup, 1),
        )
        return run_fn(exp)

    budget = format_bytes(budget_bytes)
    r = peak(answer)
    if r.status != "ok":
        return Check(False, f"The run at batch {answer} did not finish: {r.status}: {r.error}")
    if r.peak_bytes > budget_bytes:
        return Check(
            False,
            f"Batch {answer} peaks at {format_bytes(r.peak_bytes)}, over the "
            f"{budget} budget. Go lower.",
        )
    nxt = peak(answer + multiple)
    if nxt.status == "ok" and nxt.peak_bytes <= budget_bytes:
        return Check(
            False,
            f"Batch {answer} fits ({format_bytes(r.peak_bytes)}), but so does "
            f"{answer + multiple} ({format_bytes(nxt.peak_bytes)}). Go higher.",
        )
    return Check(
        True,
        f"Batch {answer} peaks at {format_bytes(r.peak_bytes)} and "
        f"{answer + multiple} at {format_bytes(nxt.peak_bytes)}: {answer} is the "
        f"largest multiple of {multiple} under {budget} (measured by two runs).",
    )


def check_panel_result(
    panel_or_result: Any, *, max_peak_bytes: int, min_batch: int, workload: str | None = None
) -> Check:
    """Right when the panel's latest run (or the given RunResult) ended ok with a batch of at
    least ``min_batch`` (and the given workload) and a tensor peak under ``max_peak_bytes``."""
    r = getattr(panel_or_result, "result", panel_or_result)
    if r is None:
        return Check(None, "Run the panel first (move a knob or press Run), then run this cell.")
    if not isinstance(r, RunResult):
        return Check(False, f"Expected a panel or a RunResult, got {type(r).__name__}.")
    exp = dict(r.experiment or {})
    b = int(exp.get("batch_size") or 0)
    if r.status != "ok":
        return Check(False, f"The latest run ended {r.status} ({r.error}). Change a knob.")
    if workload is not None and exp.get("workload") != workload:
        return Check(
            False, f"Use the {workload} workload (the latest run used {exp.get('workload')})."
        )
    if b < min_batch:
        return Check(
            False, f"The latest run used batch {b}; the challenge needs at least {min_batch}."
        )
    if r.peak_bytes > max_peak_bytes:
        return Check(
            False,
            f"Batch {b} peaked at {format_bytes(r.peak_bytes)}, over "
            f"{format_bytes(max_peak_bytes)}. Which knob cuts the biggest "
            "category in the chart?",
        )
    changed = {
        k: v
        for k, v in exp.items()
        if k in ("precision", "checkpointing", "sparsity", "sparse_storage", "mode")
    }
    return Check(
        True,
        f"Batch {b} peaked at {format_bytes(r.peak_bytes)} (under "
        f"{format_bytes(max_peak_bytes)}) with {changed}.",
    )


def check_biggest_saving(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` is the label of the run (after the baseline) with the lowest peak."""
    labels = list(sweep.labels[1:])
    best = min(labels, key=lambda lab: sweep[lab].peak_bytes)
    return check_choice(
        answer,
        best,
        options=labels,
        what=f"one of {labels}",
        explain=f"Its peak was {format_bytes(sweep[best].peak_bytes)} against "
        f"{format_bytes(sweep.results[0].peak_bytes)} for the baseline.",
    )


def check_growing_categories(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` is the set of categories that grew across the sweep."""
    trends = category_trends(sweep.results)
    grew = {c for c, t in trends.items() if t == "grows"}
    return check_choice(
        answer,
        grew,
        what="a set of category names, e.g. {'parameters'}",
        explain="They scale with the number of samples in flight.",
    )


def _activation_saving(sweep: Sweep, baseline: str, label: str) -> float:
    a0 = sweep[baseline].peak_by_category.get("activations", 0)
    a1 = sweep[label].peak_by_category.get("activations", 0)
    return (a0 - a1) / a0 if a0 else 0.0


def check_activation_saving(answer: Any, sweep: Sweep, baseline: str, label: str) -> Check:
    """Right when ``answer`` is within 0.05 of the fraction of activation bytes that ``label``
    saved against ``baseline``."""
    return check_number(
        answer,
        _activation_saving(sweep, baseline, label),
        abs_tol=0.05,
        what="a fraction between 0 and 1",
    )


def check_bf16_parameters(answer: Any, sweep: Sweep, label: str) -> Check:
    """Right when ``answer`` (MiB) is within 5% of the parameter bytes of run ``label``."""
    truth = sweep[label].peak_by_category.get("parameters", 0) / MIB
    return check_number(
        answer,
        truth,
        rel_tol=0.05,
        unit="MiB",
        what="a number of MiB",
        explain="Two bytes per weight instead of four.",
    )


def check_smallest_training_peak(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` names the precision of the training run with the lowest peak."""
    train = [
        (e.precision, r.peak_bytes)
        for e, r in zip(sweep.experiments, sweep.results, strict=True)
        if e.mode == "train"
    ]
    best = min(train, key=lambda t: t[1])[0]
    return check_choice(answer, best, options=[p for p, _ in train], what="a precision name")


def check_crossover(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` is within 0.03 of the sparsity above which CSR storage is smaller
    than dense for these layers (from the runs' own arithmetic)."""
    cross = next(
        (
            float(r.metrics["sparse_density_crossover"])
            for r in sweep.results
            if r.metrics.get("sparse_density_crossover") is not None
        ),
        None,
    )
    if cross is None:
        return Check(False, "No run in this sweep used sparse storage; run one first.")
    return check_number(
        answer,
        1 - cross,
        abs_tol=0.03,
        what="a sparsity between 0 and 1",
        explain="12 bytes per kept fp32 weight in CSR against 4 per weight dense.",
    )


def check_sparsity_accuracy(
    answer: Any, accuracy: Mapping[float, float | None], *, points: float = 5.0
) -> Check:
    """Right when ``answer`` is the highest tested sparsity whose accuracy stays within
    ``points`` percentage points of the dense (sparsity 0) accuracy."""
    pts = {float(s): a for s, a in accuracy.items() if a is not None}
    if 0.0 not in pts:
        return Check(False, "The accuracy curve has no dense (sparsity 0) point.")
    ok = [s for s, a in pts.items() if a >= pts[0.0] - points / 100]
    return check_choice(
        None if answer is None else f"{float(answer):g}",
        f"{max(ok):g}",
        options=[f"{s:g}" for s in sorted(pts)],
        what="a tested sparsity level",
    )


def check_memmap_saving(answer: Any, sweep: Sweep, ram: str, memmap: str) -> Check:
    """Right when ``answer`` (MiB) is within 20% of the anonymous-RSS peak that memmap saved."""
    a, b = sweep[ram].rss_anon_peak_bytes, sweep[memmap].rss_anon_peak_bytes
    if a is None or b is None:
        return Check(False, "This platform does not report anonymous RSS; nothing to compare.")
    return check_number(answer, (a - b) / MIB, rel_tol=0.2, unit="MiB", what="a number of MiB")


def check_first_epoch_part(answer: Any, profile: Sequence[Mapping[str, Any]]) -> Check:
    """Right when ``answer`` names the RSS part (``anonymous``, ``file-backed`` or ``shared``)
    that grew the most in the first epoch of a run's ``epoch_profile``."""
    names = {"rss_anon": "anonymous", "rss_file": "file-backed", "rss_shmem": "shared"}
    if not profile:
        return Check(False, "The run has no epochs to look at.")
    first = profile[0]
    grew = {names[p]: first.get(f"{p} growth") or 0 for p in names}
    best = max(grew, key=lambda k: grew[k])
    return check_choice(
        answer,
        best,
        options=list(names.values()),
        what="a part name",
        explain=f"It grew {format_bytes(grew[best])} in the first epoch.",
    )


def check_prediction(answer_mib: Any, experiment: Experiment, *, rel_tol: float = 0.10) -> Check:
    """Exercise "predict, then check": the learner's guess of ``experiment``'s peak tensor
    memory (MiB) against a real run, with memlab's own estimate beside it.

    Right within ``rel_tol`` of the measured peak. The message gives the estimator's prediction
    and its error too, so the learner sees how close a prediction without running can get."""
    if answer_mib is None:
        return _todo("your predicted peak in MiB, e.g. 120")
    if isinstance(answer_mib, bool) or not isinstance(answer_mib, (int, float)):
        return Check(False, f"The answer must be a number of MiB, got {answer_mib!r}.")
    from memlab.estimator import estimate
    from memlab.runner import run

    est = estimate(experiment)
    real = run(experiment)
    if real.status != "ok":
        return Check(False, f"The check run did not finish ({real.status}: {real.error}).")
    measured = real.peak_bytes / MIB
    predicted = est.peak_bytes / MIB
    est_err = 100.0 * (predicted / measured - 1.0)
    mine = 100.0 * (answer_mib / measured - 1.0)
    ok = abs(answer_mib - measured) <= rel_tol * measured
    tail = (f"memlab.estimate predicted {predicted:.1f} MiB without running "
            f"({est_err:+.1f}%, {est.elapsed_s * 1e3:.0f} ms).")
    if ok:
        return Check(True, f"Your {answer_mib:g} MiB is {mine:+.1f}% from the measured "
                           f"{measured:.1f} MiB. {tail}")
    direction = "too high" if answer_mib > measured else "too low"
    return Check(False, f"Your {answer_mib:g} MiB is {direction} (more than "
                        f"{100 * rel_tol:.0f}% off the measured peak). Look at the prediction "
                        "chart in the panel, or at the sweep's line, and try again.")
