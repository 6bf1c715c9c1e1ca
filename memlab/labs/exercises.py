"""Exercises that several labs use, backed by real runs (in worker processes): the largest
batch under a budget, a challenge met in the panel, and a number predicted before a run.

Each comes twice: a bare check (``check_largest_batch``, ``check_panel_result``,
``check_prediction``: one verdict, no state) and an exercise factory (``largest_batch``,
``panel_challenge``, ``predict_run``) that returns a ``checks.Exercise`` with graded hints and
a worked solution computed from the runs. The runs an exercise makes are kept, so an answer
given again, and the solution, cost no new run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from memlab.config import MEMORY_FIELDS, MIB, Experiment
from memlab.labs.checks import Check, Exercise, as_number, check_number, todo
from memlab.labs.text import md_table
from memlab.timeline import RunResult, format_bytes

__all__ = [
    "check_largest_batch",
    "check_panel_result",
    "check_prediction",
    "largest_batch",
    "panel_challenge",
    "predict_run",
]

Runner = Callable[[Experiment], RunResult]


def _runner(run: Runner | None) -> Runner:
    if run is not None:
        return run
    from memlab.runner import run as run_fn

    return run_fn


class _BatchProbe:
    """Peaks of ``base`` at batch sizes, each measured once by a real run (no budget set, so a
    run reports its full peak; two measured steps after a warm-up step: every step then peaks
    alike)."""

    def __init__(self, base: Experiment, multiple: int, run: Runner | None) -> None:
        self.base = base
        self.multiple = multiple
        self._run = run
        self.runs: dict[int, RunResult] = {}

    def __call__(self, b: int) -> RunResult:
        if b not in self.runs:
            exp = self.base.replace(
                batch_size=b,
                budget_bytes=None,
                data_size=max(self.base.data_size, b + self.multiple),
                steps=min(self.base.steps, 2),
                warmup=max(self.base.warmup, 1),
            )
            self.runs[b] = _runner(self._run)(exp)
        return self.runs[b]

    def fits(self, b: int, budget: int) -> bool:
        r = self(b)
        return r.status == "ok" and r.peak_bytes <= budget

    def search(self, budget: int, start: int, *, max_runs: int = 12) -> int | None:
        """The largest multiple that fits, walking from ``start`` (a multiple); ``None`` when
        ``max_runs`` new runs did not settle it (or not even one multiple fits)."""
        m = self.multiple
        b = max(m, start - start % m)
        # Start from what the learner's attempts measured already: the largest batch that fit
        # below the smallest that did not (each run costs seconds).
        over = [k for k in self.runs if not self.fits(k, budget)]
        fit = [k for k in self.runs if self.fits(k, budget) and k < min(over, default=k + 1)]
        if fit:
            b = max(fit)
        elif over:
            b = min(b, min(over) - m) if min(over) > m else m
        before = len(self.runs)
        while len(self.runs) - before <= max_runs:
            if self.fits(b, budget):
                if not self.fits(b + m, budget):
                    return b
                b += m
            elif b <= m:
                return None
            else:
                b -= m
        return None


def _grade_largest(answer: Any, probe: _BatchProbe, budget_bytes: int) -> Check:
    m = probe.multiple
    if answer is None:
        return todo(f"a batch size (a multiple of {m})")
    if isinstance(answer, float) and answer.is_integer():
        return Check(False, f"Answer with an int ({int(answer)}), not {answer!r}.", form_error=True)
    if isinstance(answer, bool) or not isinstance(answer, int) or answer <= 0:
        x = as_number(answer, "a batch size")
        msg = (
            x.message if isinstance(x, Check) else f"The answer must be a positive int, not {x:g}."
        )
        return Check(False, msg, form_error=True)
    if answer % m:
        return Check(False, f"Answer with a multiple of {m} ({answer} is not).", form_error=True)
    budget = format_bytes(budget_bytes)
    r = probe(answer)
    if r.status != "ok":
        return Check(False, f"The run at batch {answer} did not finish: {r.status}: {r.error}")
    if r.peak_bytes > budget_bytes:
        return Check(
            False,
            f"Batch {answer} peaks at {format_bytes(r.peak_bytes)}, over the {budget} budget. "
            "Go lower.",
        )
    nxt = probe(answer + m)
    if nxt.status == "ok" and nxt.peak_bytes <= budget_bytes:
        return Check(
            False,
            f"Batch {answer} fits ({format_bytes(r.peak_bytes)}), but so does {answer + m} "
            f"({format_bytes(nxt.peak_bytes)}). Go higher.",
        )
    return Check(
        True,
        f"Batch {answer} peaks at {format_bytes(r.peak_bytes)} and {answer + m} at "
        f"{format_bytes(nxt.peak_bytes)}: {answer} is the largest multiple of {m} under {budget} "
        "(measured by two runs).",
    )


def check_largest_batch(
    answer: Any,
    base: Experiment,
    budget_bytes: int,
    *,
    multiple: int = 8,
    run: Runner | None = None,
) -> Check:
    """Right when ``answer`` (a multiple of ``multiple``) fits ``budget_bytes`` of tensor memory
    and ``answer + multiple`` does not, both checked by real runs of ``base`` at those batch
    sizes (no budget set, so each run reports its full peak; at most two measured steps)."""
    return _grade_largest(answer, _BatchProbe(base, multiple, run), budget_bytes)


def largest_batch(
    id: str,
    base: Experiment,
    budget_bytes: int,
    *,
    multiple: int,
    line: tuple[float, float],
    hints: Sequence[str | Callable[[Any], str]],
    run: Runner | None = None,
) -> Exercise:
    """The largest batch (a multiple of ``multiple``) of ``base`` under ``budget_bytes``, checked
    by real runs. ``line`` is ``(bytes per sample, fixed bytes)`` from the lab's runs: the
    worked solution starts from it and walks batch sizes with real runs to the answer."""
    probe = _BatchProbe(base, multiple, run)
    slope, fixed = line
    budget = format_bytes(budget_bytes)

    def solution() -> str:
        guess = (budget_bytes - fixed) / slope if slope > 0 else float(multiple)
        start = max(multiple, int(math.floor(guess / multiple)) * multiple)
        best = probe.search(budget_bytes, start)
        rows = [
            (
                b,
                r.status if r.status != "ok" else format_bytes(r.peak_bytes),
                "yes" if r.status == "ok" and r.peak_bytes <= budget_bytes else "no",
            )
            for b, r in sorted(probe.runs.items())
        ]
        out = [
            f"1. The line through the measured peaks: {format_bytes(fixed)} fixed plus "
            f"{format_bytes(slope)} per sample. Solve fixed + per-sample × batch = {budget}: "
            f"({budget} − {format_bytes(fixed)}) / {format_bytes(slope)} = **{guess:.1f}** "
            f"samples, so start at the multiple of {multiple} below it, {start}.",
            "2. A line is a prediction: measure around it (each row is a run of the model at "
            "that batch, no budget set):",
            "",
            md_table(("batch", "peak", f"under {budget}?"), rows),
            "",
        ]
        if best is None:
            out.append(
                "3. The runs above did not settle it (a batch that fits next to one that "
                "does not): look at the table and run the panel around the boundary."
            )
        else:
            out.append(
                f"3. So the answer is **{best}**: it fits and {best + multiple} does not. "
                "The line is close but not exact: temporaries and the allocator's rounding do "
                "not grow exactly in proportion to the batch."
            )
        return "\n".join(out)

    return Exercise(
        id,
        f"The largest batch (a multiple of {multiple}) under {budget}",
        lambda a: _grade_largest(a, probe, budget_bytes),
        hints=hints,
        solution=solution,
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
        return Check(
            False, f"Expected a panel or a RunResult, got {type(r).__name__}.", form_error=True
        )
    exp = dict(r.experiment or {})
    b = int(exp.get("batch_size") or 0)
    if r.status != "ok":
        return Check(False, f"The latest run ended {r.status} ({r.error}). Change a knob.")
    if workload is not None and exp.get("workload") != workload:
        return Check(
            False,
            f"Use the {workload} workload (the latest run used {exp.get('workload')}).",
            form_error=True,
        )
    if b < min_batch:
        return Check(
            False,
            f"The latest run used batch {b}; the challenge needs at least {min_batch}.",
            form_error=True,
        )
    if r.peak_bytes > max_peak_bytes:
        return Check(
            False,
            f"Batch {b} peaked at {format_bytes(r.peak_bytes)}, over "
            f"{format_bytes(max_peak_bytes)}.",
        )
    return Check(
        True,
        f"Batch {b} peaked at {format_bytes(r.peak_bytes)} (under "
        f"{format_bytes(max_peak_bytes)}) with {changed_knobs(exp) or 'the default knobs'}.",
    )


def changed_knobs(exp: dict[str, Any]) -> dict[str, Any]:
    """The memory knobs of an experiment (as a dict) that differ from the defaults (workload and
    batch left out: a challenge names them already)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Experiment)}
    return {
        k: exp[k]
        for k in MEMORY_FIELDS
        if k not in ("workload", "batch_size") and k in exp and exp[k] != defaults.get(k)
    }


def _panel_key(answer: Any) -> str:
    r = getattr(answer, "result", answer)
    exp = getattr(r, "experiment", None) or {}
    return repr(sorted((k, repr(v)) for k, v in dict(exp).items()))


def panel_challenge(
    id: str,
    *,
    max_peak_bytes: int,
    min_batch: int,
    workload: str | None,
    hints: Sequence[str | Callable[[Any], str]],
    solution: Callable[[], str],
) -> Exercise:
    """A challenge met in the panel: its latest run must reach ``min_batch`` under
    ``max_peak_bytes``. Each different run the learner checks is one attempt."""

    return Exercise(
        id,
        f"Batch ≥ {min_batch} under {format_bytes(max_peak_bytes)} in the panel",
        lambda a: check_panel_result(
            a, max_peak_bytes=max_peak_bytes, min_batch=min_batch, workload=workload
        ),
        hints=hints,
        solution=solution,
        key=_panel_key,
    )


def check_prediction(answer_mib: Any, experiment: Experiment, *, rel_tol: float = 0.10) -> Check:
    """Exercise "predict, then check": the learner's guess of ``experiment``'s peak tensor
    memory (MiB) against a real run, with memlab's own estimate beside it.

    Right within ``rel_tol`` of the measured peak. The message gives the estimator's prediction
    and its error too, so the learner sees how close a prediction without running can get. Both
    the estimate and the run happen in worker processes."""
    if answer_mib is None:
        return todo("your predicted peak in MiB, e.g. 120")
    x = as_number(answer_mib, "a number of MiB")
    if isinstance(x, Check):
        return x
    from memlab import runner
    from memlab.estimator import estimate

    est = runner.call(estimate, experiment)
    real = runner.run(experiment)
    if real.status != "ok":
        return Check(False, f"The check run did not finish ({real.status}: {real.error}).")
    measured = real.peak_bytes / MIB
    predicted = est.peak_bytes / MIB
    c = check_number(x, measured, rel_tol=rel_tol, unit="MiB", what="a number of MiB")
    tail = (
        f"memlab.estimate predicted {predicted:.1f} MiB without running "
        f"({100.0 * (predicted / measured - 1.0):+.1f}%, {est.elapsed_s * 1e3:.0f} ms)."
    )
    return dataclasses.replace(c, message=f"{c.message} {tail}") if c.ok else c


def predict_run(
    id: str,
    question: str,
    experiment: Experiment,
    measure: Callable[[RunResult], float],
    *,
    rel_tol: float,
    hints: Sequence[str | Callable[[Any], str]],
    solution: Callable[[float, RunResult], str],
    unit: str = "MiB",
    run: Runner | None = None,
) -> Exercise:
    """A number predicted before it is measured: ``measure`` (e.g. a category's MiB) of a real
    run of ``experiment``, made once at the first answer (in a worker process) and kept.
    Right within ``rel_tol``; ``solution(truth, result)`` writes the worked solution."""
    got: list[RunResult] = []

    def result() -> RunResult:
        if not got:
            got.append(_runner(run)(experiment))
        return got[0]

    def grade(answer: Any) -> Check:
        if answer is None:
            return todo(f"a number of {unit}")
        x = as_number(answer, f"a number of {unit}")
        if isinstance(x, Check):
            return x
        r = result()
        if r.status != "ok":
            return Check(None, f"The check run did not finish ({r.status}: {r.error}).")
        return check_number(x, measure(r), rel_tol=rel_tol, unit=unit, what=f"a number of {unit}")

    def worked() -> str:
        r = result()
        return solution(measure(r), r)

    return Exercise(id, question, grade, hints=hints, solution=worked)
