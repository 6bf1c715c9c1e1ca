"""What the panel says in words: run labels and hover text, the status line at the end of a
run (budget and oom explained, timing disturbed or not), and how long a run will take.

Pure functions of the results (no widgets), so each sentence is tested on hand-made
:class:`~memlab.timeline.RunResult` objects. Every number in a sentence comes from the data.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memlab.config import Experiment
from memlab.plots import run_baselines, steps_done, timing_summary
from memlab.timeline import RunResult, format_bytes

__all__ = [
    "DurationGuess",
    "final_message",
    "humanize_bytes",
    "model_state_bytes",
    "oom_message",
    "predict_duration",
    "run_hover",
    "run_labels",
]

# A label names at most this many settings that differ from its baseline (then "…"); the
# hover text has them all.
_MAX_LABEL_FIELDS = 2
_HOVER_FIELDS_PER_LINE = 4
# Fields that do not change what a step does, only how long or how often: ignored when
# looking for the earlier run most like a new one.
_DURATION_ONLY = ("steps", "warmup", "seed", "data_size", "name", "label")


@functools.cache
def _label_fields() -> tuple[str, ...]:
    """The fields a history label may name: the Experiment's own, in its order (config.py)."""
    return tuple(f.name for f in dataclasses.fields(Experiment) if not f.name.startswith("_"))


def short_value(field: str, value: Any) -> str:
    """A setting's value as a label shows it (a budget in MiB/GiB, a workload by its name)."""
    if field == "budget_bytes":
        return "none" if value is None else format_bytes(value).replace(" ", "")
    if field == "workload" and isinstance(value, str):
        return value.rpartition(":")[2]
    return str(value)


def _diff(exp: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    return [
        f"{f}={short_value(f, exp[f])}"
        for f in _label_fields()
        if f in exp and exp[f] != base.get(f)
    ]


def run_labels(results: Sequence[RunResult]) -> list[str]:
    """``#k`` plus the settings in which run k differs from its baseline, at most two (the
    full settings are in :func:`run_hover`).

    The baseline is the run its deltas are taken against (:func:`memlab.plots.run_baselines`:
    the first finished run of its mode); a run that did not finish is labelled against the
    first finished run of its mode, or the first run. A run of another mode than the first
    baseline always names its mode, so runs that are not compared never look alike.
    """
    if not results:
        return []
    bases = run_baselines(results)
    first_ok = next((b for b in bases if b is not None), 0)
    ref_mode = (results[first_ok].experiment or {}).get("mode")
    labels = []
    for i, r in enumerate(results):
        exp = r.experiment or {}
        b = bases[i]
        if b is None:
            same_mode = [
                j
                for j in range(len(results))
                if bases[j] == j and (results[j].experiment or {}).get("mode") == exp.get("mode")
            ]
            b = same_mode[0] if same_mode else first_ok
        diff = _diff(exp, results[b].experiment or {})
        mode = exp.get("mode")
        if mode is not None and mode != ref_mode and not any(d.startswith("mode=") for d in diff):
            diff.insert(0, f"mode={mode}")
        if len(diff) > _MAX_LABEL_FIELDS:
            diff = [*diff[:_MAX_LABEL_FIELDS], "…"]
        labels.append(" ".join([f"#{i + 1}", ", ".join(diff)]).strip())
    return labels


def run_hover(results: Sequence[RunResult]) -> list[str]:
    """Each run's full settings (and how it ended, if it did not finish), for hover text."""
    out = []
    for r in results:
        exp = r.experiment or {}
        items = [f"{f}={short_value(f, exp[f])}" for f in _label_fields() if f in exp]
        lines = [
            ", ".join(items[k : k + _HOVER_FIELDS_PER_LINE])
            for k in range(0, len(items), _HOVER_FIELDS_PER_LINE)
        ]
        if r.status != "ok":
            first = ((r.error or "").splitlines() or ["no message"])[0]
            lines.insert(0, f"{r.status}: {humanize_bytes(first)}")
        out.append("<br>".join(lines))
    return out


_BYTES = re.compile(r"\b(\d+) bytes\b")


def humanize_bytes(text: str) -> str:
    """``"... 12582912 bytes ..."`` -> ``"... 12.0 MiB ..."`` (the runner's and tracker's
    messages give exact bytes; the learner reads MiB/GiB)."""
    return _BYTES.sub(lambda m: format_bytes(int(m.group(1))), text)


def _planned_steps(r: RunResult, steps: int | None) -> int | None:
    if steps is not None:
        return steps
    v = (r.experiment or {}).get("steps")
    return int(v) if isinstance(v, int) else None


def model_state_bytes(result: RunResult, estimate: Any = None) -> tuple[int, str] | None:
    """What the model holds whatever the batch size: parameters, plus gradients and optimizer
    state when training, and the words for it; the larger of the measurement (bytes at entry
    or at the peak, whichever is more: a run that stopped early may not have made its
    gradients yet) and the prediction (an :class:`~memlab.estimator.Estimate`). None if
    neither says."""
    train = (result.experiment or {}).get("mode", "train") == "train"
    cats = ("parameters", "gradients", "optimizer_state") if train else ("parameters",)
    words = "parameters, gradients and optimizer state" if train else "parameters"
    found = []
    if result.entry_by_category or result.peak_by_category:
        found.append(
            sum(
                max(
                    int(result.entry_by_category.get(c, 0)),
                    int(result.peak_by_category.get(c, 0)),
                )
                for c in cats
            )
        )
    pred = getattr(estimate, "peak_by_category", None)
    if pred:
        found.append(sum(int(pred.get(c, 0)) for c in cats))
    best = max(found, default=0)
    return (best, words) if best > 0 else None


def oom_message(result: RunResult, *, steps: int | None = None, estimate: Any = None) -> str:
    """Why a run ran out of memory, in MiB/GiB, naming the budget the learner entered.

    Three cases: the model alone (whatever the batch size) needs more than the budget; the
    limit hit was memlab's hard cap on the worker's RSS (not the budget); the step's tensors
    passed the budget.
    """
    exp = result.experiment or {}
    budget = exp.get("budget_bytes")
    profile = exp.get("profile") or "none"
    if budget is None and profile != "none":
        from memlab.devices import PROFILES

        if profile in PROFILES:
            budget = PROFILES[profile].budget_bytes
    planned = _planned_steps(result, steps)
    done = steps_done(result)
    when = f"after {done} of {planned} steps" if planned else f"after {done} steps"
    error = humanize_bytes((result.error or "").splitlines()[0] if result.error else "")
    your_budget = (
        f"the {format_bytes(budget)} budget of device profile {profile}"
        if budget and profile != "none" and not exp.get("budget_bytes")
        else f"the {format_bytes(budget)} budget you set"
        if budget
        else "no budget was set"
    )
    model = model_state_bytes(result, estimate)
    if budget and model is not None and model[0] > budget:
        need, words = model
        # In inference the weights need not all be resident (memlab/knobs/streaming.py).
        ways = ["raise the budget", "make the model smaller (a lower precision, sparse weights)"]
        if exp.get("mode") == "inference" and exp.get("weights", "resident") == "resident":
            ways.append("stream its weights from a file layer by layer (weights 'streamed')")
        return (
            f"out of memory {when}: the model's {words} alone need {format_bytes(need)}, more "
            f"than the {format_bytes(budget)} budget: no batch size fits. "
            f"{', '.join(ways[:-1]).capitalize()}, or {ways[-1]}."
        )
    if "hard cap" in (result.error or ""):
        rss, cap = result.metrics.get("rss_at_kill_bytes"), result.metrics.get("rss_cap_bytes")
        if rss is None or cap is None:  # a result from before the runner gave them as numbers
            nums = [int(m) for m in _BYTES.findall(result.error or "")]
            rss, cap = (nums + [None, None])[:2]
        base = result.metrics.get("rss_baseline_bytes")
        if profile != "none" and base is not None and budget:
            return (
                f"out of memory {when}: the worker's process memory (RSS) reached "
                f"{format_bytes(rss)}, past the cap of device profile {profile}: "
                f"{format_bytes(cap)}, the runtime's own {format_bytes(base)} (Python and torch, "
                f"before the model was built; not charged to the device) plus {your_budget}. "
                "What passed it is the model's memory outside the tensor account too (packed "
                "weights, the allocator's cache). Lower the batch size, or compress the model."
            )
        return (
            f"out of memory {when}: the worker's process memory (RSS) reached "
            f"{format_bytes(rss)}, past memlab's hard cap of {format_bytes(cap)} (75% of this "
            f"machine's RAM), so the worker was killed. That cap is not the budget "
            f"({your_budget}): the process holds more than tensors (torch itself, memory the "
            "allocator keeps). Lower the batch size."
        )
    if budget:
        peak = (
            f" (tensors reached {format_bytes(result.peak_bytes)} in {result.peak_phase} "
            "before it stopped)"
            if result.peak_bytes
            else ""
        )
        largest = result.metrics.get("stream_largest_layer_bytes")
        streamed = (
            f" Streamed weights still hold the layer being run and the next one prefetched "
            f"(the largest is {format_bytes(int(largest))}) beside the activations."
            if exp.get("weights") == "streamed" and largest
            else ""
        )
        return (
            f"out of memory {when}: this step needs more tensor memory than {your_budget}"
            f"{peak}.{streamed} Lower the batch size or raise the budget. Kept in the history, "
            "hatched: what it reached, not compared."
        )
    return f"out of memory {when}: {error or 'no message'}"


def final_message(
    result: RunResult,
    *,
    runs_shown: int,
    steps: int | None = None,
    estimate: Any = None,
) -> str:
    """The status line once a run has ended. ``runs_shown``: runs in the history chart."""
    r = result
    planned = _planned_steps(r, steps)
    done = steps_done(r)
    if r.status == "ok":
        text = f"done: peak {format_bytes(r.peak_bytes)} of tensors in {r.peak_phase}"
        tp, med = r.throughput_samples_per_s, r.step_time_median_s
        if tp is not None and med is not None:
            text += f", {tp:.0f} samples/s ({med * 1e3:.1f} ms/step)"
        lat = r.latency
        if lat is not None and lat.p50_s is not None and lat.p99_s is not None:
            # Inference: a step is one request; the tail and the allocator calls are the lesson.
            text += f", request p50 {lat.p50_s * 1e3:.1f} / p99 {lat.p99_s * 1e3:.1f} ms"
            if lat.allocs_per_request is not None:
                text += f", {lat.allocs_per_request:.0f} allocator calls/request"
        if r.rss_peak_bytes is not None:
            text += f", process RSS peak {format_bytes(r.rss_peak_bytes)}"
        text += f" · run {runs_shown} in the history"
        summary = timing_summary(r.timing)
        if summary and r.timing is not None:
            # On its own line: the first line keeps the figures, this one says how far to
            # trust the speed half of them.
            text += f"\n{summary} — {r.timing.note}"
        return text
    if r.status == "oom":
        return oom_message(r, steps=steps, estimate=estimate)
    of = f" of {planned}" if planned else ""
    if r.status == "cancelled":
        return (
            f"cancelled after {done}{of} steps ({r.error or 'stopped by the user'}): "
            "partial, shown hatched in the history and not compared"
        )
    return f"error: the run failed: {humanize_bytes(r.error or 'no message')}"


@dataclass(frozen=True)
class DurationGuess:
    """A run's predicted wall time, from an earlier run's measured speed."""

    seconds: float
    #: The earlier run it is from (1-based, as the history labels it).
    run: int


def predict_duration(
    exp: Experiment, runs: Sequence[RunResult], setup_s: Sequence[float | None] = ()
) -> DurationGuess | None:
    """Predict how long ``exp`` will run, from the finished run most like it: that run's
    measured time per sample x ``exp``'s samples per step x (warm-up steps + steps), plus the
    tracked steps at their own measured speed where the runner measured memory in a pass of
    its own, plus that run's setup time (``setup_s[k]``: building the workload, before its
    warm-up; 0 where unknown). None without a finished, timed run of the same workload and
    mode.

    "Most like": the fewest differing settings (steps, warm-up, seed and data size aside),
    then the nearest batch size, then the latest.
    """
    target = exp.to_dict()
    best: tuple[tuple[int, float, int], int] | None = None
    for k, r in enumerate(runs):
        e = r.experiment or {}
        med = r.step_time_median_s
        if r.status != "ok" or med is None or not r.samples_per_step or not e:
            continue
        if e.get("workload") != target.get("workload") or e.get("mode") != target.get("mode"):
            continue
        differ = sum(
            1
            for f, v in target.items()
            if f not in _DURATION_ONLY and f != "batch_size" and e.get(f) != v
        )
        b0 = e.get("batch_size") or 1
        nearness = abs(math.log(max(exp.batch_size, 1) / max(int(b0), 1)))
        key = (differ, nearness, -k)
        if best is None or key < best[0]:
            best = (key, k)
    if best is None:
        return None
    k = best[1]
    r = runs[k]
    e = r.experiment or {}
    med = r.step_time_median_s
    assert med is not None and r.samples_per_step
    per_sample = med / r.samples_per_step
    # samples per step scale with the batch size (a workload's step is one batch)
    samples = r.samples_per_step * exp.batch_size / max(int(e.get("batch_size") or 1), 1)
    setup = setup_s[k] if k < len(setup_s) and setup_s[k] is not None else 0.0
    seconds = per_sample * samples * (exp.steps + exp.warmup) + float(setup or 0.0)
    if r.tracked_step_times_s:  # the memory pass: as many steps again, under the tracker
        tracked = sorted(r.tracked_step_times_s)[len(r.tracked_step_times_s) // 2]
        seconds += tracked / r.samples_per_step * samples * exp.steps
    return DurationGuess(seconds=seconds, run=k + 1)
