"""Lab 08, beyond RAM: offloading activations, streaming weights, partitioning a model across
processes, and copies that are not made.

Everything here reads results made in worker processes (``memlab.runner`` runs, and
``memlab.partition`` / ``memlab.zero_copy``, which run their own processes), so the notebook
kernel never imports torch; every number in the prose is computed from the objects passed in.

- **activation offload** (``offload_activations``, training): the tensors autograd saves for
  backward kept in memory (``off``), moved to CPU memory (``cpu``: nothing moves on a CPU run,
  and the runs show it), written to disk (``disk``) or compressed on the way (``disk-compressed``);
- **weight streaming** (``weights="streamed"``, inference): weights saved once to a safetensors
  file and brought in layer by layer, the next one prefetched, against all resident, under a
  budget smaller than the weights;
- **partitioning**: the model cut into stages, each its own process, micro-batches handed over
  through shared memory;
- **zero-copy**: which ways of making a tensor from existing memory allocate nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from memlab.config import MIB, OFFLOADS, Experiment
from memlab.labs.checks import Check, Exercise, check_choice, check_number
from memlab.labs.sweeps import Sweep, run_sweep, timing_note
from memlab.labs.text import md_table, note, times
from memlab.timeline import RunResult, format_bytes

if TYPE_CHECKING:
    from memlab.partitioning import PartitionResult
    from memlab.zerocopy import ZeroCopyResult

__all__ = [
    "MIB",
    "OFFLOADS",
    "Sweep",
    "run_offload",
    "offload_rows",
    "offload_table",
    "explain_offload",
    "fitting_budget",
    "fitting_settings",
    "streaming_budget",
    "run_streaming",
    "streaming_table",
    "explain_streaming",
    "partition_table",
    "explain_partition",
    "zero_copy_table",
    "explain_zero_copy",
    "exercise_offload_saving",
    "exercise_will_it_fit",
    "exercise_stage_peak",
]


def _median_step(r: RunResult) -> float | None:
    return statistics.median(r.step_times_s) if r.step_times_s else None


def _mib(v: float | None) -> str:
    return "–" if v is None else f"{v / MIB:.2f}"


# -- activation offload --------------------------------------------------------------------------


def run_offload(
    base: Experiment,
    settings: Sequence[str] = OFFLOADS,
    *,
    progress: Callable[[str], None] | None = None,
    repeat: int = 1,
) -> Sweep:
    """One training run of ``base`` per offload setting, each in a fresh worker."""
    if base.mode != "train":
        raise ValueError(
            f"activation offload is for training: base.mode must be 'train', got {base.mode!r}"
        )
    bad = [s for s in settings if s not in OFFLOADS]
    if bad:
        raise ValueError(f"unknown offload settings {bad}; choose among {list(OFFLOADS)}")
    exps = {s: base.replace(offload_activations=s) for s in settings}
    return run_sweep(exps, progress=progress, repeat=repeat)


def offload_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """Per setting: activations at the peak, the peak, the median step, and what went to disk
    and came back per step (``offload_*`` metrics of ``memlab/knobs/offload.py``)."""
    rows = []
    for label, _exp, r in sweep.runs():
        m = r.metrics
        rows.append(
            {
                "setting": label,
                "activations_bytes": r.peak_by_category.get("activations", 0),
                "peak_bytes": r.peak_bytes,
                "step_s": _median_step(r),
                "written_bytes": m.get("offload_bytes_written"),
                "read_bytes": m.get("offload_bytes_read"),
                "ratio": m.get("offload_compression_ratio"),
            }
        )
    return rows


def offload_table(sweep: Sweep) -> str:
    out = []
    for row in offload_rows(sweep):
        ratio = row["ratio"]
        out.append(
            (
                row["setting"],
                _mib(row["activations_bytes"]),
                _mib(row["peak_bytes"]),
                "–" if row["step_s"] is None else f"{row['step_s'] * 1e3:.1f}",
                _mib(row["written_bytes"]),
                _mib(row["read_bytes"]),
                "–" if not ratio else f"{ratio:.2f}",
            )
        )
    return md_table(
        (
            "offload",
            "activations at peak MiB",
            "peak MiB",
            "step ms",
            "written/step MiB",
            "read/step MiB",
            "compression",
        ),
        out,
    )


def explain_offload(sweep: Sweep, baseline: str = "off") -> str:
    """What the offload runs show, against ``baseline`` (without exercise 1's answer)."""
    rows = {r["setting"]: r for r in offload_rows(sweep)}
    base = rows.get(baseline)
    if base is None:
        return "No baseline run to compare with."
    parts = []
    for k, r in rows.items():
        if k == baseline:
            continue
        extra = ""
        if r["step_s"] and base["step_s"]:
            extra = f", a step {times(r['step_s'], base['step_s'])} the baseline's"
        if k == "cpu" and r["activations_bytes"] == base["activations_bytes"]:
            parts.append(
                "**cpu** left the activations exactly where they were "
                f"({_mib(r['activations_bytes'])} MiB): `save_on_cpu` moves saved tensors to "
                "the CPU, and on a CPU run they are there already" + extra + "."
            )
            continue
        saved = base["peak_bytes"] - r["peak_bytes"]
        parts.append(
            f"**{k}**: peak {_mib(r['peak_bytes'])} MiB "
            f"({'down' if saved >= 0 else 'up'} {format_bytes(abs(saved))})"
            + (f", {_mib(r['written_bytes'])} MiB written per step" if r["written_bytes"] else "")
            + (
                f" (compressed {r['ratio']:.2f}x)"
                if r["ratio"] and r["ratio"] > 1.0 and k.endswith("compressed")
                else ""
            )
            + extra
            + "."
        )
    return " ".join(parts) + "\n" + "\n".join(note(timing_note(sweep)))


def fitting_budget(sweep: Sweep, baseline: str = "off") -> int:
    """A budget the baseline does not fit and the smallest offloaded run does: halfway between
    the two peaks (rounded down to a MiB), so that offloading is needed to pass."""
    rows = {r["setting"]: r for r in offload_rows(sweep)}
    low = min(r["peak_bytes"] for r in rows.values())
    high = rows[baseline]["peak_bytes"]
    if low >= high:
        raise ValueError("no setting peaked lower than the baseline: nothing needs offloading")
    return max(MIB, (low + high) // 2 // MIB * MIB)


def fitting_settings(sweep: Sweep, budget_bytes: int) -> list[str]:
    """The settings whose measured peak is within ``budget_bytes`` (what a run under that
    budget would pass: the tracker's budget is the tensor peak)."""
    return [r["setting"] for r in offload_rows(sweep) if r["peak_bytes"] <= budget_bytes]


# -- weight streaming -------------------------------------------------------------------------


def streaming_budget(resident: RunResult) -> int:
    """A budget smaller than the model's weights: half of them (a resident run cannot fit it;
    a streamed one, holding about two layers at a time, can)."""
    w = resident.metrics.get("model_bytes")
    if not w:
        raise ValueError("the resident run has no model_bytes metric: did it build the model?")
    return int(w) // 2


def run_streaming(
    base: Experiment,
    budget_bytes: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> Sweep:
    """The inference experiment ``base`` with all weights resident and streamed, both under
    ``budget_bytes``: an ``oom`` is a result here (it does not fit)."""
    if base.mode != "inference":
        raise ValueError(f"weight streaming is for inference: got mode {base.mode!r}")
    exps = {w: base.replace(weights=w, budget_bytes=budget_bytes) for w in ("resident", "streamed")}
    return run_sweep(exps, progress=progress, allow=("ok", "oom"))


def streaming_table(sweep: Sweep) -> str:
    out = []
    for label, _exp, r in sweep.runs():
        m = r.metrics
        lat = r.latency.p50_s if r.latency is not None and r.status == "ok" else None
        out.append(
            (
                label,
                r.status,
                _mib(r.peak_bytes if r.status == "ok" else None),
                _mib(r.rss_anon_peak_bytes),
                _mib(r.rss_file_peak_bytes),
                "–" if lat is None else f"{lat * 1e3:.1f}",
                _mib(m.get("stream_bytes_read_per_request")),
                "–"
                if m.get("stream_hits_per_request") is None
                else f"{m['stream_hits_per_request']:.1f} / {m['stream_waits_per_request']:.1f}",
            )
        )
    return md_table(
        (
            "weights",
            "status",
            "tensor peak MiB",
            "RSS anon MiB",
            "RSS file-backed MiB",
            "request p50 ms",
            "read/request MiB",
            "prefetch hits / waits per request",
        ),
        out,
    )


def explain_streaming(sweep: Sweep, budget_bytes: int) -> str:
    res, st = sweep["resident"], sweep["streamed"]
    w = res.metrics.get("model_bytes") or st.metrics.get("streamed_weight_bytes")
    parts = [
        f"The budget is {format_bytes(budget_bytes)}"
        + (f", against {format_bytes(w)} of weights" if w else "")
        + f". Resident: **{res.status}**"
        + (
            " (the weights alone pass the budget before the first request)"
            if res.status == "oom"
            else ""
        )
        + f". Streamed: **{st.status}**"
    ]
    if st.status == "ok":
        largest = st.metrics.get("stream_largest_layer_bytes")
        parts[-1] += (
            f", peak {format_bytes(st.peak_bytes)}"
            + (
                f" (the largest layer is {format_bytes(largest)}, and the next one is "
                "prefetched while it runs)"
                if largest
                else ""
            )
            + "."
        )
        rl, sl = res.latency, st.latency
        if rl is not None and sl is not None and rl.p50_s and sl.p50_s:
            parts.append(
                f"The price is time: a request took {sl.p50_s * 1e3:.1f} ms streamed against "
                f"{rl.p50_s * 1e3:.1f} ms resident ({times(sl.p50_s, rl.p50_s)})."
            )
    else:
        parts[-1] += "."
    parts.append(
        "The file's pages count as file-backed RSS (the kernel can drop them and read them "
        "again), the copies a layer computes with as anonymous memory and tensor bytes."
    )
    return " ".join(parts) + "\n" + "\n".join(note(timing_note(sweep)))


# -- partitioning ------------------------------------------------------------------------------


def partition_table(pr: PartitionResult) -> str:
    rows = []
    if pr.anchor is not None:
        a = pr.anchor
        rows.append(
            (
                "one process",
                ", ".join(a.modules),
                _mib(a.param_bytes),
                _mib(a.peak_bytes),
                _mib(a.rss_hwm_bytes),
                "–",
            )
        )
    span = pr.makespan_s or 0.0
    for s in pr.stage_results:
        rows.append(
            (
                f"stage {s.index}",
                ", ".join(s.modules),
                _mib(s.param_bytes),
                _mib(s.peak_bytes),
                _mib(s.rss_hwm_bytes),
                f"{100 * s.idle_fraction(span):.0f}%" if span else "–",
            )
        )
    return md_table(
        ("process", "runs", "parameters MiB", "tensor peak MiB", "RSS peak MiB", "idle"), rows
    )


def explain_partition(pr: PartitionResult) -> str:
    if pr.status != "ok":
        return f"The pipeline ended **{pr.status}**: {pr.error}"
    parts = []
    peaks = [s.peak_bytes for s in pr.stage_results]
    if pr.anchor is not None and peaks:
        parts.append(
            f"Cut into {pr.stages} processes, the largest stage peaked at "
            f"{format_bytes(max(peaks))} against {format_bytes(pr.anchor.peak_bytes)} for one "
            f"process; together they held {format_bytes(sum(peaks))} of tensors."
        )
    if pr.bubble is not None:
        parts.append(
            f"Over {pr.micro_batches} micro-batches the stages sat idle {100 * pr.bubble:.0f}% "
            f"of the time on average (the pipeline bubble; (K-1)/(M+K-1) = "
            f"{100 * (pr.stages - 1) / (pr.micro_batches + pr.stages - 1):.0f}% if every stage "
            "took the same time)."
        )
    if pr.speedup is not None:
        parts.append(
            f"Throughput: {pr.speedup:.2f}x one process's, {format_bytes(pr.bytes_copied)} "
            "copied between stages through shared memory."
        )
    if pr.outputs_equal is not None:
        parts.append(
            "Outputs equal one process's."
            if pr.outputs_equal
            else f"Outputs differ from one process's by up to {pr.max_abs_diff}."
        )
    return " ".join(parts) + "".join(f"\n\n_{n}_" for n in pr.notes)


# -- zero-copy -----------------------------------------------------------------------------------


def zero_copy_table(zc: ZeroCopyResult) -> str:
    rows = [
        (
            f"`{r.call}`",
            format_bytes(r.allocator_bytes),
            _mib(r.rss_anon_delta_bytes),
            _mib(r.rss_file_delta_bytes),
            {True: "yes", False: "no", None: "–"}[r.shares_memory],
        )
        for r in zc.rows
    ]
    return md_table(
        ("call", "allocator bytes", "RSS anon MiB", "RSS file-backed MiB", "shares memory"), rows
    )


def explain_zero_copy(zc: ZeroCopyResult) -> str:
    free = [r.path for r in zc.rows if r.allocator_bytes < 4096 and r.shares_memory]
    copies = [r.path for r in zc.rows if r.allocator_bytes >= zc.size_bytes]
    return (
        f"For a {format_bytes(zc.size_bytes)} tensor: {', '.join(free)} allocated (almost) "
        f"nothing and share the source's memory; {', '.join(copies)} made a full copy. The "
        "mapped paths show their pages as file-backed RSS once read: the kernel can drop and "
        "re-read them, which anonymous memory cannot."
    )


# -- exercises -----------------------------------------------------------------------------------


def exercise_offload_saving(sweep: Sweep, setting: str = "disk", id: str = "1") -> Exercise:
    """What fraction of the baseline's activations at the peak does ``setting`` keep?"""
    rows = {r["setting"]: r for r in offload_rows(sweep)}
    base = rows["off"]["activations_bytes"]
    if not base:
        raise ValueError("the baseline has no activations at its peak")
    frac = rows[setting]["activations_bytes"] / base
    return Exercise(
        id,
        f"The fraction of the activations {setting} keeps in memory",
        lambda a: check_number(a, frac, abs_tol=0.03, fraction=True, what="a fraction 0..1"),
        hints=[
            "The activations column: divide the offloaded run's by the baseline's.",
            "What stays: saved tensors below the size threshold, the parameters' views, and "
            "what a block's checkpoint holds itself.",
        ],
        solution=lambda: (
            f"{_mib(rows[setting]['activations_bytes'])} / {_mib(base)} MiB = **{frac:.2f}**."
        ),
    )


def exercise_will_it_fit(sweep: Sweep, budget_bytes: int, id: str = "2") -> Exercise:
    """Which offload settings run under ``budget_bytes``? (a set of names)"""
    truth = fitting_settings(sweep, budget_bytes)
    rows = {r["setting"]: r for r in offload_rows(sweep)}

    def grade(answer: Any) -> Check:
        return check_choice(
            answer,
            set(truth),
            options=list(sweep.labels),
            what="a list of settings, e.g. ['off', 'cpu']",
            explain=f"peaks within {format_bytes(budget_bytes)}: {', '.join(truth)}.",
        )

    return Exercise(
        id,
        f"Which settings fit {format_bytes(budget_bytes)}?",
        grade,
        hints=[
            "A run fits when its tensor peak is at most the budget: compare the peak column.",
            "Every setting whose peak is within the budget, not only the smallest.",
        ],
        solution=lambda: (
            "**"
            + ", ".join(truth)
            + "**: "
            + "; ".join(f"{k} {_mib(r['peak_bytes'])} MiB" for k, r in rows.items())
        ),
    )


def exercise_stage_peak(pr: PartitionResult, id: str = "3") -> Exercise:
    """How many times smaller is the largest stage's peak than one process's?"""
    if pr.anchor is None or not pr.stage_results:
        raise ValueError("the partition has no one-process anchor or no stages")
    largest = max(s.peak_bytes for s in pr.stage_results)
    ratio = pr.anchor.peak_bytes / largest
    return Exercise(
        id,
        "One process's peak over the largest stage's",
        lambda a: check_number(a, ratio, rel_tol=0.05, what="a ratio such as 1.5"),
        hints=[
            "The tensor peak column: one process's row over the largest stage row.",
            "Each stage holds only its blocks' parameters, but its activations and temporaries "
            "are those of its blocks at the full micro-batch.",
        ],
        solution=lambda: (
            f"{_mib(pr.anchor.peak_bytes if pr.anchor else None)} / "
            f"{_mib(largest)} MiB = **{ratio:.2f}**."
        ),
    )
