"""Lab 07, edge deployment: will the model fit *that* device, and how fast will it be there?

Three questions, each answered from measurements made in worker processes (this module only
reads their results, so the notebook kernel never imports torch; the prose never states a
number that was not measured or estimated in the same session):

- **bytes**: what each precision (fp32, dynamic/static int8, weight-only int8/int4) and each
  compression (low rank, a shared codebook), with or without sparsity, leaves of the weights,
  and what the process really holds (RSS: packed weights live outside the tensor account);
- **fit**: every configuration run under a device profile's budget (``Experiment.profile``:
  the tracked budget plus an RSS cap of the runtime plus that budget), with its accuracy on the
  real digits: which fits, and which fits with the best accuracy;
- **speed**: the roofline of one request (bytes moved and FLOPs per op against this machine's
  measured bandwidth and compute) and, from the bytes moved, an *estimate* of the request on
  the device (``memlab.devices``), shown beside the time measured here: never a measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memlab import devices
from memlab.config import MIB, Experiment
from memlab.labs.checks import Check, Exercise, check_choice, check_number
from memlab.labs.sweeps import Sweep, accuracies, run_sweep, timing_note
from memlab.labs.text import md_table, note, times
from memlab.timeline import RunResult, format_bytes

if TYPE_CHECKING:
    from memlab.locality import ConvLayoutResult, StrideResult
    from memlab.pipelining import PipelineResult
    from memlab.rooflines import RooflineResult

__all__ = [
    "MIB",
    "VARIANTS",
    "FitSearch",
    "variant_experiments",
    "profiles_table",
    "run_fit_search",
    "fit_rows",
    "fit_table",
    "best_fit",
    "explain_fit",
    "weight_bytes",
    "rss_over_runtime",
    "exercise_best_fit",
    "exercise_weight_ratio",
    "roofline_summary",
    "device_table",
    "explain_roofline",
    "exercise_device_estimate",
    "explain_locality",
    "explain_pipeline",
    "footprint_table",
    "program_table",
    "explain_packed",
]

#: The configurations the fit search tries: label -> the Experiment fields it changes from the
#: base (an fp32 inference experiment). Each composes knobs of labs 03, 04 and 07.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "int8 dynamic": {"precision": "int8"},
    "int8 static": {"precision": "int8-static"},
    "int8 weight-only": {"precision": "int8-weight"},
    "int4 weight-only": {"precision": "int4-weight"},
    "svd rank 32": {"compression": "svd", "rank": 32},
    "svd rank 4": {"compression": "svd", "rank": 4},
    "shared 4-bit": {"compression": "shared", "codebook_bits": 4},
    "shared 2-bit": {"compression": "shared", "codebook_bits": 2},
    "pruned 90% CSR": {"sparsity": 0.9, "sparse_storage": "sparse"},
    "pruned 90% CSR + int8": {"sparsity": 0.9, "sparse_storage": "sparse", "precision": "int8"},
}


def variant_experiments(
    base: Experiment, labels: Sequence[str] = tuple(VARIANTS), **changes: Any
) -> dict[str, Experiment]:
    """``base`` (an inference experiment) with each variant's fields, and ``changes`` (the
    profile and budget, say) applied to all of them."""
    if base.mode != "inference":
        raise ValueError(
            f"lab 07 deploys for inference: base.mode must be 'inference', got {base.mode!r}"
        )
    unknown = [lab for lab in labels if lab not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose among {list(VARIANTS)}")
    return {lab: base.replace(**VARIANTS[lab], **changes) for lab in labels}


def profiles_table(selected: str | None = None) -> str:
    """The device profiles (``memlab.devices``) as a Markdown table; ``selected`` in bold."""
    rows = []
    for name, p in devices.PROFILES.items():
        label = f"**{name}**" if name == selected else name
        rows.append(
            (
                label,
                format_bytes(p.ram_bytes),
                format_bytes(p.budget_bytes),
                f"{p.bandwidth_gb_per_s:.1f}",
                p.source,
            )
        )
    return md_table(
        ("profile", "RAM", "budget (memlab's assumption)", "peak DRAM GB/s", "source"), rows
    )


@dataclass(frozen=True)
class FitSearch:
    """The fit search's runs (each under the profile and budget) and accuracies, by label."""

    sweep: Sweep
    accuracy: Mapping[str, float | None]
    profile: str
    budget_bytes: int

    @property
    def labels(self) -> tuple[str, ...]:
        return self.sweep.labels

    def fits(self, label: str) -> bool:
        """Whether the variant ran to the end under the budget and the RSS cap."""
        return self.sweep[label].status == "ok"


def run_fit_search(
    base: Experiment,
    labels: Sequence[str] = tuple(VARIANTS),
    *,
    profile: str,
    budget_bytes: int | str | None = None,
    train_steps: int = 200,
    progress: Callable[[str], None] | None = None,
) -> FitSearch:
    """Run every variant of ``base`` under ``profile`` (with ``budget_bytes``, the model's
    share of the device, instead of the profile's whole budget when given), each in a fresh
    worker, and compute each one's accuracy on the real digits after ``train_steps`` steps of
    fp32 training (one worker job). A variant over the budget ends ``oom``: that is a result
    here (it does not fit), not a failure."""
    devices.get(profile)  # a clear KeyError naming the profiles
    exps = variant_experiments(base, labels, profile=profile, budget_bytes=budget_bytes)
    sweep = run_sweep(exps, progress=progress, allow=("ok", "oom"))
    acc = accuracies(exps, train_steps=train_steps)
    budget = next(iter(exps.values())).effective_budget_bytes
    assert budget is not None  # a profile always gives one
    return FitSearch(sweep, acc, profile, budget)


def weight_bytes(r: RunResult) -> int | None:
    """The model's bytes as built (parameters and buffers of every dtype, quantized ones
    included: ``Workload.metrics``'s ``model_bytes``); None where the run never built it."""
    v = r.metrics.get("model_bytes")
    return None if v is None else int(v)


def rss_over_runtime(r: RunResult) -> int | None:
    """The most the worker's RSS rose over its runtime (Python and torch, before the build): the
    run's RSS peak, or where the cap killed it the RSS it was killed at. What the device would
    have to hold besides its runtime: tensors, packed weights, the data the run reads."""
    base = r.metrics.get("rss_baseline_bytes")
    top = r.metrics.get("rss_at_kill_bytes") or r.rss_peak_bytes
    if base is None or top is None:
        return None
    return int(top) - int(base)


def _mib(v: float | None) -> str:
    return "–" if v is None else f"{v / MIB:.2f}"


def fit_rows(search: FitSearch) -> list[dict[str, Any]]:
    """One row per variant: fits, weight bytes, tracked peak, RSS over the runtime, request
    latency p50 (measured here), accuracy."""
    rows = []
    for label, _exp, r in search.sweep.runs():
        lat = r.latency.p50_s if r.latency is not None and r.status == "ok" else None
        rows.append(
            {
                "variant": label,
                "fits": r.status == "ok",
                "status": r.status,
                "weight_bytes": weight_bytes(r),
                "peak_bytes": r.peak_bytes if r.status == "ok" else None,
                "rss_over_runtime_bytes": rss_over_runtime(r),
                "p50_s": lat,
                "accuracy": search.accuracy.get(label),
            }
        )
    return rows


def fit_table(search: FitSearch) -> str:
    """The fit search as a Markdown table (MiB; latency in ms, measured on this machine)."""
    out = []
    for row in fit_rows(search):
        acc = row["accuracy"]
        out.append(
            (
                row["variant"],
                "yes" if row["fits"] else f"no ({row['status']})",
                _mib(row["weight_bytes"]),
                _mib(row["peak_bytes"]),
                _mib(row["rss_over_runtime_bytes"]),
                "–" if row["p50_s"] is None else f"{row['p50_s'] * 1e3:.2f}",
                "–" if acc is None else f"{100 * acc:.1f}%",
            )
        )
    return md_table(
        (
            "variant",
            f"fits {format_bytes(search.budget_bytes)}",
            "weights MiB",
            "tensor peak MiB",
            "RSS over runtime MiB",
            "request p50 ms (here)",
            "accuracy",
        ),
        out,
    )


def best_fit(search: FitSearch) -> str | None:
    """The variant that fits with the best accuracy (ties: the smaller weights); None if none
    fits or none has an accuracy."""
    rows = [r for r in fit_rows(search) if r["fits"] and r["accuracy"] is not None]
    if not rows:
        return None
    best = max(rows, key=lambda r: (round(r["accuracy"], 4), -(r["weight_bytes"] or 0)))
    return str(best["variant"])


def explain_fit(search: FitSearch) -> str:
    """What the fit search shows, computed from its runs (without naming the best fit: that is
    exercise 2's answer)."""
    rows = {r["variant"]: r for r in fit_rows(search)}
    fits = [k for k, r in rows.items() if r["fits"]]
    over = [k for k, r in rows.items() if not r["fits"]]
    parts = [
        f"Under **{search.profile}** with a budget of {format_bytes(search.budget_bytes)}, "
        f"{len(fits)} of {len(rows)} configurations ran to the end"
        + (f"; {', '.join(over)} did not ({_why_over(search, over)})." if over else ".")
    ]
    base = rows.get("fp32")
    if base is not None and base["weight_bytes"]:
        smaller = sorted(
            ((r["weight_bytes"], k) for k, r in rows.items() if r["weight_bytes"] and k != "fp32"),
        )
        if smaller:
            wb, k = smaller[0]
            fp = base["weight_bytes"]
            parts.append(
                f"The smallest weights are {k}'s: {_mib(wb)} MiB, {times(fp, wb)} smaller than "
                f"fp32's {_mib(fp)}."
            )
    hidden = [
        k
        for k, r in rows.items()
        if r["fits"]
        and r["rss_over_runtime_bytes"] is not None
        and r["peak_bytes"] is not None
        and r["rss_over_runtime_bytes"] > 2 * max(r["peak_bytes"], 1)
    ]
    if hidden:
        parts.append(
            "For "
            + ", ".join(hidden)
            + " the process held more than twice the tensor peak: packed weights (fbgemm's, "
            "oneDNN's) and the data the run reads live outside the tensor account, and only "
            "RSS sees them. A budget check from tensors alone would pass them too easily."
        )
    capless = [k for k in rows if any("RSS cap is off" in n for n in search.sweep[k].notes)]
    if capless:
        parts.append(
            "Here memlab measured through its profiler fallback (no C++ compiler), so the RSS "
            f"cap was off for {', '.join(capless)}: only the tensor budget decided what fits."
        )
    return " ".join(parts) + "\n" + "\n".join(note(timing_note(search.sweep)))


def _why_over(search: FitSearch, labels: Sequence[str]) -> str:
    reasons = set()
    for k in labels:
        err = search.sweep[k].error or ""
        reasons.add(
            "RSS cap" if "hard cap" in err else "tensor budget" if "budget" in err else "error"
        )
    return ", ".join(sorted(reasons))


# -- exercises ---------------------------------------------------------------------------------


def exercise_best_fit(search: FitSearch, id: str = "2") -> Exercise:
    """Which configuration fits the budget with the best accuracy?"""
    truth = best_fit(search)
    if truth is None:
        raise ValueError(
            "no configuration fits with a measured accuracy: raise the budget or add variants"
        )
    rows = {r["variant"]: r for r in fit_rows(search)}

    def grade(answer: Any) -> Check:
        return check_choice(
            answer,
            truth,
            options=list(search.labels),
            what="a variant's name",
            explain=f"{truth}: {100 * rows[truth]['accuracy']:.1f}% with "
            f"{_mib(rows[truth]['weight_bytes'])} MiB of weights, within "
            f"{format_bytes(search.budget_bytes)}.",
        )

    return Exercise(
        id,
        "The configuration that fits with the best accuracy",
        grade,
        hints=[
            "Keep only the rows that fit (status ok), then take the best accuracy.",
            lambda a: (
                f"{a!r} does not fit the budget."
                if a in rows and not rows[a]["fits"]
                else "Among those that fit, compare the accuracy column: the highest wins "
                "(ties: the smaller weights)."
            ),
        ],
        solution=lambda: f"**{truth}**.\n\n" + fit_table(search),
    )


def exercise_weight_ratio(
    search: FitSearch, a: str = "fp32", b: str = "int8 static", id: str = "1"
) -> Exercise:
    """By what factor are ``b``'s weights smaller than ``a``'s (within 5%)?"""
    wa, wb = weight_bytes(search.sweep[a]), weight_bytes(search.sweep[b])
    if not wa or not wb:
        raise ValueError(f"no weight bytes for {a!r} or {b!r}: did both runs build the model?")
    ratio = wa / wb

    return Exercise(
        id,
        f"How many times smaller are the weights in {b} than in {a}?",
        lambda ans: check_number(ans, ratio, rel_tol=0.05, what="a ratio such as 3.5"),
        hints=[
            "The weights column, in MiB: divide the one by the other.",
            "int8 stores one byte per weight instead of four; what does not shrink (biases, "
            "scales, layers that stay fp32) keeps the ratio under 4.",
        ],
        solution=lambda: f"{_mib(wa)} / {_mib(wb)} MiB = **{ratio:.2f}**.",
    )


# -- speed: the roofline, and the device estimate beside the time measured here ----------------


def roofline_summary(rl: RooflineResult) -> dict[str, Any]:
    """The roofline's totals: ops, memory-bound ops and their share of the op time, bytes moved,
    FLOPs, the ridge point, and the request time measured here."""
    by = rl.time_by_bound()
    total = sum(by.values())
    mem_ops = sum(1 for o in rl.ops if rl.bound(o) == "memory")
    return {
        "ops": len(rl.ops),
        "memory_bound_ops": mem_ops,
        "memory_bound_time_share": by.get("memory", 0.0) / total if total > 0 else None,
        "bytes_moved": rl.total_bytes,
        "flops": rl.total_flops,
        "ridge_flop_per_byte": rl.ridge_flop_per_byte,
        "request_s": rl.request_s,
        "dram_gb_per_s": rl.dram_gb_per_s,
        "peak_gflop_per_s": rl.peak_gflop_per_s,
    }


def device_table(rl: RooflineResult, selected: str | None = None) -> str:
    """Per profile: the request's bytes moved at its peak bandwidth (an ESTIMATE, a lower bound
    from memory traffic alone) beside the request time MEASURED on this machine."""
    est = rl.device_estimates()
    here = rl.request_s
    rows = []
    for name, s in est.items():
        label = f"**{name}**" if name == selected else name
        p = devices.PROFILES[name]
        rows.append(
            (
                label,
                f"{p.bandwidth_gb_per_s:.1f}",
                f"{s * 1e3:.3f} (estimate)",
                f"{here * 1e3:.3f} (measured)",
            )
        )
    rows.append(
        (
            "this machine's DRAM roof",
            f"{rl.dram_gb_per_s:.1f} (measured)",
            f"{rl.total_bytes / (rl.dram_gb_per_s * 1e9) * 1e3:.3f} (same model)",
            f"{here * 1e3:.3f} (measured)",
        )
    )
    return md_table(("device", "DRAM GB/s", "request ms from bytes moved", "request ms here"), rows)


def explain_roofline(rl: RooflineResult, profile: str) -> str:
    """What the roofline shows, computed from it (without exercise 3's answer)."""
    s = roofline_summary(rl)
    share = s["memory_bound_time_share"]
    here_model = rl.total_bytes / (rl.dram_gb_per_s * 1e9)
    parts = [
        f"One request runs {s['ops']} ATen ops, which move about "
        f"{format_bytes(s['bytes_moved'])} (a lower-bound model: each operand crossing DRAM "
        f"once) and do {s['flops'] / 1e6:.1f} MFLOP. This machine's roofs, measured in the same "
        f"worker: {s['dram_gb_per_s']:.1f} GB/s from DRAM and {s['peak_gflop_per_s']:.1f} GFLOP/s "
        f"of fp32 matmul, so the ridge is at {s['ridge_flop_per_byte']:.1f} FLOP per byte.",
        f"{s['memory_bound_ops']} of the {s['ops']} ops sit left of the ridge (memory-bound)"
        + (f", {100 * share:.0f}% of the measured op time." if share is not None else "."),
        f"Moving those bytes at this machine's DRAM roof would take {here_model * 1e3:.3f} ms; "
        f"the request took {rl.request_s * 1e3:.3f} ms, "
        f"{times(rl.request_s, here_model)} that. The device column divides the same bytes by "
        f"each profile's peak bandwidth: a floor for {profile}, not a prediction (no compute, no "
        "caches, no gap between peak and sustained bandwidth).",
    ]
    return " ".join(parts) + "".join(f"\n\n_{n}_" for n in rl.notes)


def exercise_device_estimate(rl: RooflineResult, profile: str, id: str = "3") -> Exercise:
    """The estimated latency of one request on ``profile``, in ms, from the bytes moved."""
    p = devices.get(profile)
    truth = devices.estimate_latency_s(rl.total_bytes, p) * 1e3

    return Exercise(
        id,
        f"Estimated request latency on {profile} (ms), from bytes moved",
        lambda a: check_number(a, truth, rel_tol=0.05, unit="ms", what="milliseconds"),
        hints=[
            "Bytes moved per request is in the roofline's summary; the profile's bandwidth in "
            "the devices table.",
            f"bytes / ({p.bandwidth_gb_per_s:.1f} x 10^9 bytes/s), then x 1000 for ms.",
        ],
        solution=lambda: (
            f"{format_bytes(rl.total_bytes)} = {rl.total_bytes} bytes / "
            f"{p.bandwidth_gb_per_s:.1f} GB/s = **{truth:.3f} ms**, an estimate and a floor: "
            f"here the request took {rl.request_s * 1e3:.3f} ms against "
            f"{rl.total_bytes / (rl.dram_gb_per_s * 1e9) * 1e3:.3f} ms from the same model at "
            "this machine's measured roof."
        ),
    )


# -- locality -----------------------------------------------------------------------------------


def _ordinal(n: int) -> str:
    """``2nd``, ``3rd``, ``11th``, ``32nd``."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def explain_locality(strides: StrideResult, convs: ConvLayoutResult | None = None) -> str:
    """What the strided reads and the conv layouts show, computed from them."""
    parts = []
    worst = max(strides.points, key=lambda p: p.stride)
    if worst.stride != 1:
        parts.append(
            f"Reading every {_ordinal(worst.stride)} float64 touches "
            f"{worst.bytes_per_useful_byte:.1f} bytes per useful byte "
            f"({strides.line_bytes}-byte cache lines), and took "
            f"{strides.slowdown(worst.stride):.1f}x as long per element as a contiguous read "
            "of the same count."
        )
    if convs is not None and convs.points:
        bits = [
            f"{p.name}: channels_last {p.speedup:.2f}x NCHW's speed"
            + (
                f", and an NCHW input into channels_last weights allocated "
                f"{format_bytes(p.mixed_alloc_bytes)} against {format_bytes(p.nchw_alloc_bytes)}"
                if p.mixed_alloc_bytes != p.nchw_alloc_bytes
                else ""
            )
            for p in convs.points
        ]
        parts.append("Convolutions (" + str(convs.threads) + " threads): " + "; ".join(bits) + ".")
    return " ".join(parts)


# -- pipelining ---------------------------------------------------------------------------------


def explain_pipeline(pr: PipelineResult) -> str:
    """Sequential against pipelined requests, computed from the result."""
    rows = pr.table()
    if len(rows) < 2:
        return "Only one mode ran: nothing to compare."
    first = rows[0]
    out = []
    for row in rows[1:]:
        out.append(
            f"**{row['mode']}** ({row['threads']} torch thread(s)"
            + (f", queue depth {row['depth']}" if row["depth"] else "")
            + f"): {row['throughput_rps']:.1f} requests/s ({row['throughput_rps_vs_first']:.2f}x "
            f"{first['mode']}'s), p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms; "
            f"{format_bytes(row['peak_queue_bytes'])} of preprocessed requests in flight at most."
        )
    unsteady = [r["mode"] for r in rows if r["steady"] is False]
    text = (
        f"Preprocessing took {first['preprocess_ms']:.1f} ms and the forward "
        f"{first['infer_ms']:.1f} ms per request in {first['mode']}. " + " ".join(out)
    )
    if unsteady:
        text += (
            f"\n\n_Disturbed: other processes took the CPU during {', '.join(unsteady)}; read "
            "their times as noise._"
        )
    return text


# -- what the process and the device really hold ---------------------------------------------


def _tensor_bytes(fp: Mapping[str, Any]) -> int:
    return int(sum(fp["model_bytes"].values()))


def footprint_table(fps: Sequence[Mapping[str, Any]]) -> str:
    """Per precision (each built in a fresh process, ``jobs.footprints``): the model's bytes
    the tensor account sees, and what RSS rose by to build it and to serve its first request."""
    rows = []
    for f in fps:
        by = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(f["model_bytes"].items()))
        rows.append(
            (
                f["precision"],
                format_bytes(_tensor_bytes(f)),
                by,
                format_bytes(f["rss_build"]),
                format_bytes(f["rss_first_request"]),
                format_bytes(f["rss_peak"]),
            )
        )
    return md_table(
        (
            "precision",
            "model bytes (tensor account)",
            "by dtype",
            "RSS: build",
            "RSS: first request",
            "RSS: peak",
        ),
        rows,
    )


def program_table(progs: Sequence[Mapping[str, Any]]) -> str:
    """The ExecuTorch programs (``jobs.edge_programs``): what the device would load and
    allocate, and the runtime's latency measured *here*."""
    rows = []
    for p in progs:
        lat = p.get("latency_s")
        rows.append(
            (
                "int8 (XNNPACK quantizer)" if p["quantized"] else "fp32",
                format_bytes(p["pte_bytes"]),
                format_bytes(p["arena_bytes"]),
                p["delegated"],
                "–" if lat is None else f"{lat * 1e3:.2f}",
                "–" if p.get("max_abs_diff") is None else f"{p['max_abs_diff']:.3g}",
            )
        )
    return md_table(
        (
            "program",
            ".pte (weights included)",
            "planned arena",
            "delegated to XNNPACK",
            "ExecuTorch runtime ms (here)",
            "max |difference| from eager",
        ),
        rows,
    )


def explain_packed(fps: Sequence[Mapping[str, Any]], progs: Sequence[Mapping[str, Any]]) -> str:
    """What the footprints and the programs show, computed from them."""
    parts = []
    by = {f["precision"]: f for f in fps}
    for name, f in by.items():
        seen, held = _tensor_bytes(f), f["rss_build"] + f["rss_first_request"]
        parts.append(
            f"{name}: the tensor account sees {format_bytes(seen)} of model; the process grew "
            f"by {format_bytes(held)} to build it and serve one request"
            + (f" ({times(held, seen)} that)" if seen else "")
            + "."
        )
    parts.append(
        "The difference is what only RSS sees: packed weights (fbgemm's and oneDNN's, kept "
        "outside PyTorch's allocator), the first request's lazy buffers and scratch, the "
        "batches, and what building the model left behind (an exporter's graphs, the fp32 "
        "weights a conversion started from, where they are still referenced)."
    )
    quant = [p for p in progs if p["quantized"]]
    plain = [p for p in progs if not p["quantized"]]
    if quant and plain:
        fb, qb = plain[0]["pte_bytes"], quant[0]["pte_bytes"]
        parts.append(
            f"The ExecuTorch programs: {format_bytes(fb)} in fp32, {format_bytes(qb)} in int8 "
            f"({times(fb, qb)} smaller); the planned arena, what the device allocates for the "
            f"tensors between ops, is {format_bytes(quant[0]['arena_bytes'])} (XNNPACK's own "
            "workspace inside the delegate is not in the plan)."
        )
    elif progs:
        p = progs[0]
        parts.append(
            f"The ExecuTorch program: {format_bytes(p['pte_bytes'])} to load, and an arena of "
            f"{format_bytes(p['arena_bytes'])} planned for the tensors between ops (XNNPACK's "
            "own workspace inside the delegate is not in the plan)."
        )
    return " ".join(parts)
