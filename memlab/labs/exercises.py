"""Exercise checks that several labs use, backed by real runs (in worker processes): the
largest batch under a budget, a challenge met in the panel, and a prediction of a peak."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from memlab.config import MEMORY_FIELDS, MIB, Experiment
from memlab.labs.checks import Check, todo
from memlab.timeline import RunResult, format_bytes

__all__ = ["check_largest_batch", "check_panel_result", "check_prediction"]


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
        return todo(f"a batch size (a multiple of {multiple})")
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
    # The memory knobs the learner changed: the memory fields that differ from the defaults
    # (workload and batch are named already).
    defaults = {f.name: f.default for f in dataclasses.fields(Experiment)}
    changed = {
        k: exp[k]
        for k in MEMORY_FIELDS
        if k not in ("workload", "batch_size") and k in exp and exp[k] != defaults.get(k)
    }
    return Check(
        True,
        f"Batch {b} peaked at {format_bytes(r.peak_bytes)} (under "
        f"{format_bytes(max_peak_bytes)}) with {changed or 'the default knobs'}.",
    )


def check_prediction(answer_mib: Any, experiment: Experiment, *, rel_tol: float = 0.10) -> Check:
    """Exercise "predict, then check": the learner's guess of ``experiment``'s peak tensor
    memory (MiB) against a real run, with memlab's own estimate beside it.

    Right within ``rel_tol`` of the measured peak. The message gives the estimator's prediction
    and its error too, so the learner sees how close a prediction without running can get. Both
    the estimate and the run happen in worker processes."""
    if answer_mib is None:
        return todo("your predicted peak in MiB, e.g. 120")
    if isinstance(answer_mib, bool) or not isinstance(answer_mib, (int, float)):
        return Check(False, f"The answer must be a number of MiB, got {answer_mib!r}.")
    from memlab import runner
    from memlab.estimator import estimate

    est = runner.call(estimate, experiment)
    real = runner.run(experiment)
    if real.status != "ok":
        return Check(False, f"The check run did not finish ({real.status}: {real.error}).")
    measured = real.peak_bytes / MIB
    predicted = est.peak_bytes / MIB
    est_err = 100.0 * (predicted / measured - 1.0)
    mine = 100.0 * (answer_mib / measured - 1.0)
    tail = (
        f"memlab.estimate predicted {predicted:.1f} MiB without running "
        f"({est_err:+.1f}%, {est.elapsed_s * 1e3:.0f} ms)."
    )
    if abs(answer_mib - measured) <= rel_tol * measured:
        return Check(
            True,
            f"Your {answer_mib:g} MiB is {mine:+.1f}% from the measured {measured:.1f} MiB. {tail}",
        )
    direction = "too high" if answer_mib > measured else "too low"
    return Check(
        False,
        f"Your {answer_mib:g} MiB is {direction} (more than {100 * rel_tol:.0f}% off the "
        "measured peak). Look at the prediction chart in the panel, or at the sweep's line, "
        "and try again.",
    )
