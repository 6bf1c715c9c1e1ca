"""Lab 03, precision: where the bytes go with autocast, bf16 weights and int8 inference
against fp32, what each does to speed, and to accuracy on the real digits.

Exercise 1 (the parameter bytes of bf16 weights) is asked before the sweep, whose table would
show it, and checked by a run of its own; what autocast changed is exercise 2's answer, so
``explain`` leaves it out and ``why_autocast`` shows it once the learner has tried."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from memlab.config import MIB, Experiment
from memlab.labs import exercises
from memlab.labs.analysis import biggest_change
from memlab.labs.checks import Check, Exercise, check_choice, check_number
from memlab.labs.sweeps import Sweep, accuracies, run_sweep, timing_note
from memlab.labs.text import md_table, note, pct, times
from memlab.timeline import CATEGORIES, RunResult, format_bytes

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "accuracies",
    "Exercise",
    "explain",
    "why_autocast",
    "exercise_parameters",
    "exercise_autocast",
    "check_parameters",
    "check_autocast",
    "check_smallest_peak",
]

# Workload metrics that hold the model's bytes of one dtype each (memlab.workloads).
_MODEL_BYTES = "model_bytes_"


def _speed(tp: float | None, tp0: float | None) -> str:
    return f"; {tp:.0f} vs {tp0:.0f} samples/s ({pct(tp, tp0)})" if tp and tp0 else ""


def explain(
    sweep: Sweep,
    baseline: str,
    accuracy: Mapping[str, float | None] | None = None,
    inference_baseline: str | None = None,
) -> str:
    """Where the bytes went for each precision (model bytes by dtype from the model itself,
    tensor categories from the tracker), the speed, and the accuracy if given. int8 runs are
    compared with ``inference_baseline`` (quantization is for inference only). Autocast runs
    are in the table only: what they changed is exercise 2's answer (``why_autocast``)."""
    rows = []
    for label, e, r in sweep.runs():
        model = {
            k.removeprefix(_MODEL_BYTES): v
            for k, v in r.metrics.items()
            if k.startswith(_MODEL_BYTES)
        }
        dtypes = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(model.items()))
        tp = r.throughput_samples_per_s
        acc = None if accuracy is None else accuracy.get(label)
        rows.append(
            (
                label,
                e.mode,
                dtypes or "n/a",
                format_bytes(r.peak_by_category.get("parameters", 0)),
                format_bytes(r.peak_by_category.get("gradients", 0)),
                format_bytes(r.peak_by_category.get("optimizer_state", 0)),
                format_bytes(r.peak_bytes),
                "n/a" if tp is None else f"{tp:.0f}",
                "n/a" if acc is None else f"{acc:.3f}",
            )
        )
    header = (
        "run",
        "mode",
        "model bytes by dtype",
        "parameters",
        "gradients",
        "optimizer state",
        "peak",
        "samples/s",
        "accuracy",
    )
    out = [md_table(header, rows), ""]
    base = sweep[baseline]
    p0 = base.peak_by_category.get("parameters", 0)
    for label, e, r in sweep.runs():
        # What autocast changed is exercise 2's answer (``why_autocast``): not said here.
        if r is base or e.mode != "train" or e.precision.startswith("amp"):
            continue
        p = r.peak_by_category.get("parameters", 0)
        why = (
            f"weights stored in {e.precision}: parameters {format_bytes(p0)} → "
            f"{format_bytes(p)} ({times(p, p0)}), and the gradients and optimizer state "
            f"follow them ({format_bytes(base.peak_by_category.get('optimizer_state', 0))} "
            f"→ {format_bytes(r.peak_by_category.get('optimizer_state', 0))} of optimizer "
            "state)"
        )
        speed = _speed(r.throughput_samples_per_s, base.throughput_samples_per_s)
        out.append(f"- **{label}**: {why}{speed}.")
    if inference_baseline is not None:
        ib = sweep[inference_baseline]
        mb0 = float(ib.metrics.get("model_bytes", 0))
        for label, e, r in sweep.runs():
            if e.precision != "int8":
                continue
            mb = float(r.metrics.get("model_bytes", 0))
            speed = _speed(r.throughput_samples_per_s, ib.throughput_samples_per_s)
            out.append(
                f"- **{label}**: the model holds {format_bytes(mb)} instead of "
                f"{format_bytes(mb0)} ({times(mb, mb0)}): Linear weights are stored as one byte "
                f"each, other layers stay fp32{speed}."
            )
            if r.peak_bytes < mb * 0.5:
                out.append(
                    f"  The tensor peak of this run ({format_bytes(r.peak_bytes)}) is smaller "
                    "than the model: the packed int8 weights live in the quantized kernels' own "
                    "buffers, outside PyTorch's tensor storage that the tracker counts, so "
                    "memlab reads them from the model instead."
                )
    if accuracy:
        acc0 = accuracy.get(baseline)
        known = [(lab, a) for lab, a in accuracy.items() if a is not None]
        if acc0 is not None and known:
            lab, a = min(known, key=lambda t: t[1])
            out.append(
                f"- Accuracy on the real digits (after fp32 training, then the precision "
                f"applied): {acc0:.3f} in {baseline}; the lowest was {a:.3f} ({lab}, "
                f"{(a - acc0) * 100:+.1f} points)."
            )
    return "\n".join(out + note(timing_note(sweep)))


def why_autocast(sweep: Sweep, baseline: str = "fp32", label: str = "amp-bf16") -> str:
    """What autocast changed against ``baseline``, category by category, and why (exercise 2's
    worked solution)."""
    base, r = sweep[baseline], sweep[label]
    rows = [
        (
            c,
            format_bytes(base.peak_by_category.get(c, 0)),
            format_bytes(r.peak_by_category.get(c, 0)),
            ("+" if d >= 0 else "−") + format_bytes(abs(d)),
        )
        for c in CATEGORIES
        if (d := r.peak_by_category.get(c, 0) - base.peak_by_category.get(c, 0))
        or base.peak_by_category.get(c, 0)
    ]
    c, d = biggest_change(base, r)
    p0 = base.peak_by_category.get("parameters", 0)
    p = r.peak_by_category.get("parameters", 0)
    return "\n".join(
        [
            md_table(("category", baseline, label, "change"), rows),
            "",
            f"- The biggest change was **{c}** ({'+' if d >= 0 else '−'}{format_bytes(abs(d))}).",
            "- Autocast keeps the fp32 weights (the master copy the optimizer updates) and casts "
            "them per op, so parameter bytes "
            + ("did not drop" if p >= p0 * 0.99 else "changed")
            + f" ({format_bytes(p0)} → {format_bytes(p)}). What changes is what the ops make: "
            "the casts are short-lived temporaries "
            f"({format_bytes(base.peak_by_category.get('temporaries', 0))} → "
            f"{format_bytes(r.peak_by_category.get('temporaries', 0))}), and the activations "
            "saved for backward are the ops' bf16 outputs "
            f"({format_bytes(base.peak_by_category.get('activations', 0))} → "
            f"{format_bytes(r.peak_by_category.get('activations', 0))}).",
        ]
    )


def check_autocast(
    answer: Any, sweep: Sweep, baseline: str = "fp32", label: str = "amp-bf16"
) -> Check:
    """Right when ``answer`` names the category whose peak bytes moved the most from
    ``baseline`` to ``label``."""
    c, _d = biggest_change(sweep[baseline], sweep[label])
    return check_choice(answer, c, options=CATEGORIES, what="a category name")


def exercise_autocast(
    sweep: Sweep, baseline: str = "fp32", label: str = "amp-bf16", id: str = "2"
) -> Exercise:
    """Exercise 2: which category autocast changed the most against ``baseline``."""
    hints = (
        f"Compare the '{baseline}' and '{label}' rows of the sweep's table, one '… MiB' column "
        "at a time (or their bars in the chart).",
        "Autocast does not change how the weights are stored (the parameters column is the "
        "same): it changes what each op computes and keeps. Look at the categories that a "
        "forward pass makes, and take the biggest difference, up or down.",
    )
    return Exercise(
        id,
        "What autocast changes",
        lambda a: check_autocast(a, sweep, baseline, label),
        hints=hints,
        solution=lambda: why_autocast(sweep, baseline, label),
    )


def exercise_parameters(
    fp32: RunResult | None,
    experiment: Experiment,
    *,
    id: str = "1",
    run: Callable[[Experiment], RunResult] | None = None,
) -> Exercise:
    """Exercise 1, asked before the sweep: the parameter MiB of ``experiment`` (bf16 weights),
    predicted from ``fp32`` (the panel's first run), checked by one real run (within 5%)."""
    p32 = None if fp32 is None else fp32.peak_by_category.get("parameters", 0)
    seen = (
        "the fp32 run's parameters in the panel (the history chart, or hover the memory chart)"
        if p32 is None
        else f"the fp32 run's parameters in the panel: {format_bytes(p32)}"
    )
    hints = (
        f"Start from {seen}.",
        "fp32 stores 4 bytes per weight; bf16 stores 2. The parameters category holds the "
        "weights (and biases and buffers), whatever the optimizer keeps beside them.",
    )

    def solution(truth_mib: float, r: RunResult) -> str:
        out = []
        if p32 is not None:
            out.append(
                f"1. fp32: {format_bytes(p32)} of parameters at 4 bytes each; bf16 keeps 2 bytes "
                f"each: {format_bytes(p32)} × 2 / 4 = **{p32 / 2 / MIB:.2f} MiB**."
            )
        model = {
            k.removeprefix(_MODEL_BYTES): v
            for k, v in r.metrics.items()
            if k.startswith(_MODEL_BYTES)
        }
        dtypes = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(model.items()))
        out.append(
            f"{len(out) + 1}. The run with bf16 weights measured **{truth_mib:.2f} MiB** of "
            f"parameters (the model itself holds {dtypes or 'n/a'}). Its gradients and "
            "AdamW's state follow the weights' dtype: the sweep below shows them."
        )
        return "\n".join(out)

    return exercises.predict_run(
        id,
        "The parameters with bf16 weights",
        experiment,
        lambda r: r.peak_by_category.get("parameters", 0) / MIB,
        rel_tol=0.05,
        hints=hints,
        solution=solution,
        run=run,
    )


def check_parameters(answer: Any, sweep: Sweep, label: str = "bf16") -> Check:
    """Right when ``answer`` (MiB) is within 5% of the parameter bytes of run ``label`` (the
    bf16-weights run: two bytes per weight instead of four)."""
    truth = sweep[label].peak_by_category.get("parameters", 0) / MIB
    return check_number(
        answer,
        truth,
        rel_tol=0.05,
        unit="MiB",
        what="a number of MiB",
        explain="Two bytes per weight instead of four.",
    )


def check_smallest_peak(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` names the precision of the training run with the lowest peak."""
    train = [(e.precision, r.peak_bytes) for _label, e, r in sweep.runs() if e.mode == "train"]
    best = min(train, key=lambda t: t[1])[0]
    return check_choice(answer, best, options=[p for p, _ in train], what="a precision name")
