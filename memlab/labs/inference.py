"""Lab 06, inference memory: a planned arena against what eager PyTorch allocated, allocation
strategies per request (dynamic, preallocated, lazy), in-place ops and fusion, what batching
amortizes, and the C allocator under it all.

Everything here is computed from runs and plans made in worker processes (``memlab.plan``,
``memlab.runner.run``/``latency_sweep``, ``memlab.allocators.compare``); this module only reads
their results, so the notebook kernel never imports torch. The prose never states a number
that was not measured in the same session: every figure below comes from the objects passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from memlab.config import MIB, Experiment
from memlab.labs.checks import Check, Exercise, check_number
from memlab.labs.sweeps import Sweep, run_sweep, timing_note
from memlab.labs.text import md_table, note, pct, times
from memlab.timeline import RunResult, format_bytes

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlab.planning import MemoryPlan

__all__ = [
    "MIB",
    "Sweep",
    "STRATEGIES",
    "strategy_experiments",
    "run_strategies",
    "plan_table",
    "explain_plan",
    "strategies_table",
    "explain_strategies",
    "batching_table",
    "batching_figure",
    "explain_batching",
    "arena_and_timeline",
    "allocs_per_request",
    "exercise_reuse",
    "exercise_allocs_saved",
    "exercise_batch_growth",
    "why_allocs",
    "batch_growth",
    "summary",
]

#: The runs of the strategy sweep: label -> the Experiment fields it changes from the base.
STRATEGIES: dict[str, dict[str, Any]] = {
    "dynamic": {},
    "preallocated": {"allocation": "preallocated"},
    "lazy": {"allocation": "lazy"},
    "inplace": {"inplace": True},
    "fold": {"fuse": "fold"},
}


def strategy_experiments(
    base: Experiment, labels: Sequence[str] = tuple(STRATEGIES)
) -> dict[str, Experiment]:
    """The strategy sweep's experiments: ``base`` (an inference experiment) with each change."""
    if base.mode != "inference":
        raise ValueError(
            f"lab 06 compares inference runs: base.mode must be 'inference', got {base.mode!r}"
        )
    unknown = [lab for lab in labels if lab not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose among {list(STRATEGIES)}")
    return {lab: base.replace(**STRATEGIES[lab]) for lab in labels}


def run_strategies(
    base: Experiment,
    labels: Sequence[str] = tuple(STRATEGIES),
    *,
    repeat: int = 1,
    progress: Any = None,
) -> Sweep:
    """One measured run per strategy (fresh worker each), interleaved ``repeat`` times."""
    return run_sweep(strategy_experiments(base, labels), repeat=repeat, progress=progress)


# -- the plan ---------------------------------------------------------------------------------
def plan_table(plan: MemoryPlan) -> str:
    """Eager's peak and its scratch part, the lower bound and every planner's arena (Markdown)."""
    kind = "predicted" if plan.predicted else "measured"
    rows = [
        (f"eager PyTorch's peak ({kind}), inputs included", format_bytes(plan.eager_peak_bytes)),
        ("… of which op-internal scratch at that moment", format_bytes(plan.scratch_bytes)),
        ("largest scratch alive at once", format_bytes(plan.scratch_max_bytes)),
        (
            "lower bound: most graph-tensor bytes alive at once",
            format_bytes(plan.lower_bound_bytes),
        ),
    ]
    for name, b in sorted(plan.planner_bytes.items(), key=lambda kv: kv[1]):
        mark = " (best)" if name == plan.best_planner else ""
        rows.append((f"planner `{name}`{mark}", format_bytes(b)))
    return md_table(("", "bytes"), rows)


def explain_plan(plan: MemoryPlan) -> str:
    """What the plan shows, in words, from its own figures."""
    best, lb, eager = plan.best_bytes, plan.lower_bound_bytes, plan.eager_peak_bytes
    graph = [t for t in plan.tensors if t.kind == "graph"]
    out = [
        f"- The pass ran {len(plan.ops)} ops and made {len(graph)} graph tensors (op inputs and "
        f"outputs). Giving each its own buffer (`naive`) takes {format_bytes(plan.naive_bytes)}; "
        f"the best planner, `{plan.best_planner}`, fits them in {format_bytes(best)}: tensors "
        "that are never alive at the same time share bytes, one after another.",
        f"- No plan can go below {format_bytes(lb)}: that many graph-tensor bytes are alive at "
        f"the same moment. The best plan is {pct(best, lb)} above that floor"
        + (" (gaps between tensors of different sizes)." if best > lb else "."),
    ]
    if eager:
        committed = best + plan.scratch_max_bytes
        verdict = (
            f"more than eager's peak ({pct(committed, eager)}): eager's allocator reuses each "
            "freed block at once, so its peak is already close to the most bytes alive at the "
            "same moment. A plan does not beat that on size"
            if committed > eager
            else f"{pct(committed, eager)} against eager's peak"
        )
        out.append(
            f"- Eager PyTorch's allocator peaked at {format_bytes(eager)} in the same pass "
            f"(inputs included); at that moment {format_bytes(plan.scratch_bytes)} of it was "
            "op-internal scratch (oneDNN's reorders and workspaces, allocated and freed inside "
            "one op). An ahead-of-time runtime plans only the graph tensors into its arena and "
            "gives kernels a separate temporary allocator, which must hold the largest scratch "
            f"of any op ({format_bytes(plan.scratch_max_bytes)}): {format_bytes(committed)} "
            f"committed for the whole run, {verdict}. What planning buys is a size known "
            "before the first request, and no allocator call on the request path."
        )
    out.extend(f"- {n}" for n in plan.notes)
    return "\n".join(out)


def arena_and_timeline(plan: MemoryPlan, result: RunResult | None = None) -> go.Figure:
    """The planned arena (left) beside the measured memory timeline of a real run (right)."""
    from plotly.subplots import make_subplots

    from memlab import plots

    arena = plots.arena_figure(plan)
    if result is None:
        return arena
    tl = plots.timeline_figure(result)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Planned arena (offset by op)",
            "Measured: eager tensor bytes over time (parameters included)",
        ),
        horizontal_spacing=0.08,
    )
    for tr in arena.data:
        fig.add_trace(tr, row=1, col=1)
    for tr in tl.data:
        tr.showlegend = False
        fig.add_trace(tr, row=1, col=2)
    for shape in arena.layout.shapes or ():
        fig.add_shape(shape, row=1, col=1)
    fig.update_xaxes(title_text="op index", row=1, col=1)
    fig.update_yaxes(title_text="offset (MiB)", row=1, col=1)
    fig.update_xaxes(title_text="time (s)", row=1, col=2)
    fig.update_yaxes(title_text="MiB", row=1, col=2)
    fig.update_layout(barmode="overlay", height=430, margin={"t": 60, "l": 50, "r": 20, "b": 40})
    return fig


# -- the strategies ---------------------------------------------------------------------------
def allocs_per_request(r: RunResult) -> float | None:
    """Allocator calls per request of an inference run (the recorder's count), or ``None``."""
    lat = r.latency
    return None if lat is None else lat.allocs_per_request


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.2f}"


def _allocs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def strategies_table(sweep: Sweep) -> str:
    """Per strategy: peak, allocator calls per request, first request, p50/p99, requests/s."""
    rows = []
    for label, _exp, r in sweep.runs():
        lat = r.latency
        rows.append(
            (
                label,
                format_bytes(r.peak_bytes),
                _allocs(allocs_per_request(r)),
                _ms(None if lat is None else lat.first_s),
                _ms(None if lat is None else lat.p50_s),
                _ms(None if lat is None else lat.p99_s),
                "n/a" if lat is None or lat.requests_per_s is None else f"{lat.requests_per_s:.0f}",
            )
        )
    header = ("strategy", "peak", "allocs/request", "first ms", "p50 ms", "p99 ms", "requests/s")
    return md_table(header, rows)


def explain_strategies(
    sweep: Sweep, baseline: str = "dynamic", plan: MemoryPlan | None = None
) -> str:
    """What the strategies did against ``baseline``, from the runs (the allocator-call saving is
    exercise 2's answer and is left to ``why_allocs``)."""
    base = sweep[baseline]
    lat0 = base.latency
    out = [strategies_table(sweep), ""]
    for label, _exp, r in sweep.runs():
        if label == baseline:
            continue
        lat = r.latency
        p50 = None if lat is None else lat.p50_s
        p50_0 = None if lat0 is None else lat0.p50_s
        speed = (
            f"p50 {_ms(p50)} ms against {_ms(p50_0)} ms ({pct(p50, p50_0)})"
            if p50 and p50_0
            else "no latency measured"
        )
        out.append(
            f"- **{label}**: peak {format_bytes(r.peak_bytes)} against "
            f"{format_bytes(base.peak_bytes)} ({pct(r.peak_bytes, base.peak_bytes)}); {speed}."
        )
        out.extend(f"  - {n}" for n in r.notes[:2])
    pre = (
        sweep.results[sweep.labels.index("preallocated")]
        if "preallocated" in sweep.labels
        else None
    )
    arena = None if pre is None else pre.metrics.get("plan_arena_bytes")
    if plan is not None and arena and arena > plan.best_bytes:
        out.append(
            f"- **preallocated** committed an arena of {format_bytes(int(arena))}, more than the "
            f"plan above ({format_bytes(plan.best_bytes)}): PyTorch has no convolution kernel "
            "that writes into a given buffer without allocating inside (its `out=` variant "
            "still allocates oneDNN's reorders), so memlab runs each convolution as im2col and "
            "one matrix multiply into the arena, and the im2col columns are planned tensors "
            "too. Edge runtimes ship kernels written for their planner (XNNPACK in ExecuTorch)."
        )
    if lat0 is not None and lat0.first_s and lat0.p50_s:
        slower = lat0.first_s > 1.2 * lat0.p50_s
        out.append(
            f"- The very first request of the dynamic run took {_ms(lat0.first_s)} ms, "
            f"{times(lat0.first_s, lat0.p50_s)} a steady one"
            + (
                ": lazy initialisation (oneDNN's kernels chosen and generated, the allocator's "
                "first pages touched, cold caches)."
                if slower
                else ": no slower here (within this machine's noise), so the one-off work "
                "(oneDNN's kernel generation, first pages) was small against a request."
            )
        )
    return "\n".join(out + note(timing_note(sweep)))


def why_allocs(sweep: Sweep, baseline: str = "dynamic", label: str = "preallocated") -> str:
    a0, a1 = allocs_per_request(sweep[baseline]), allocs_per_request(sweep[label])
    if a0 is None or a1 is None:
        return "- The allocator calls were not counted on this platform (no native recorder)."
    return "\n".join(
        [
            f"- **{baseline}** asked the allocator {a0:.0f} times per request: every op's output, "
            "and the scratch buffers inside ops, are fresh allocations, freed again when their "
            "last reference goes.",
            f"- **{label}** asked it {a1:.0f} times: the whole plan is one arena allocated once, "
            "and each op writes into its view of it (its `out=` variant); ops that cannot run "
            "that way fall back to eager and are named in the run's notes.",
            "- Fewer allocator calls mean no `malloc` / `free` on the request path and the same "
            "addresses every request (warm caches, no page faults); the arena is held between "
            "requests, which is the memory a runtime commits to ahead of time.",
        ]
    )


# -- batching ---------------------------------------------------------------------------------
def batching_table(df: pd.DataFrame) -> str:
    """The latency sweep (``memlab.runner.latency_sweep``) as Markdown."""
    rows = []
    for _, r in df.iterrows():
        rows.append(
            (
                int(r["batch_size"]),
                r["status"],
                _ms(r["p50_s"]),
                _ms(r["latency_per_sample_s"]),
                "n/a" if r["samples_per_s"] is None else f"{r['samples_per_s']:.0f}",
                "n/a" if r["peak_bytes"] is None else format_bytes(int(r["peak_bytes"])),
            )
        )
    header = ("batch", "status", "p50 ms / request", "ms / sample", "samples/s", "peak")
    return md_table(header, rows)


def batching_figure(df: pd.DataFrame) -> go.Figure:
    """Latency per request, throughput and peak against the batch size (measured)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ok = df[df["status"] == "ok"]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("p50 latency per request (ms)", "samples/s", "peak tensor memory (MiB)"),
    )
    b = ok["batch_size"].astype(int).tolist()
    fig.add_trace(
        go.Scatter(x=b, y=[v * 1e3 for v in ok["p50_s"]], mode="lines+markers", name="p50 ms"),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=b, y=list(ok["samples_per_s"]), mode="lines+markers", name="samples/s"),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=b, y=[v / MIB for v in ok["peak_bytes"]], mode="lines+markers", name="peak MiB"
        ),
        row=1,
        col=3,
    )
    fig.update_xaxes(type="log", title_text="batch size", tickvals=b, ticktext=[str(v) for v in b])
    fig.update_layout(showlegend=False, height=330, margin={"t": 50, "l": 40, "r": 20, "b": 40})
    return fig


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"].sort_values("batch_size")


def batch_growth(df: pd.DataFrame) -> float:
    """Peak at the largest batch of the sweep over the peak at the smallest (measured)."""
    ok = _ok_rows(df)
    if len(ok) < 2:
        raise ValueError("the batching sweep needs two batch sizes that ran ok")
    return float(ok["peak_bytes"].iloc[-1]) / float(ok["peak_bytes"].iloc[0])


def explain_batching(df: pd.DataFrame) -> str:
    ok = _ok_rows(df)
    if len(ok) < 2:
        return "- Fewer than two batch sizes ran: nothing to compare."
    lo, hi = ok.iloc[0], ok.iloc[-1]
    b0, b1 = int(lo["batch_size"]), int(hi["batch_size"])
    out = [batching_table(df), ""]
    steady = ok["steady"] if "steady" in ok else None
    shaky = (
        []
        if steady is None
        else [str(int(b)) for b, st in zip(ok["batch_size"], steady, strict=True) if st in (False,)]
    )
    if shaky:
        out.append(
            f"- _Timing disturbed at batch {', '.join(shaky)}: other processes took the CPU "
            "while those requests were timed; read their times as noise._"
        )
    if lo["p50_s"] and hi["p50_s"] and hi["p50_s"] < lo["p50_s"]:
        out.append(
            f"- A request of {b1} samples took less time than one of {b0} ({_ms(hi['p50_s'])} "
            f"against {_ms(lo['p50_s'])} ms), though it does {b1 // b0}x the work: these times "
            "were disturbed (another process on the same cores). Run the sweep again with "
            "nothing else running."
        )
    elif lo["p50_s"] and hi["p50_s"]:
        out.append(
            f"- A request of {b1} samples took {times(hi['p50_s'], lo['p50_s'])} as long as one "
            f"of {b0} ({_ms(hi['p50_s'])} against {_ms(lo['p50_s'])} ms), for {b1 // b0}x the "
            f"samples: throughput went from {lo['samples_per_s']:.0f} to "
            f"{hi['samples_per_s']:.0f} samples/s."
            + (
                " Batching amortizes what a request costs whatever its size (Python and "
                "dispatch overhead per op, launching the kernels, reading the weights from "
                "memory once for all samples); a client of the batched server waits for the "
                "whole batch."
                if hi["samples_per_s"] > lo["samples_per_s"]
                else " Batching did not pay here: the larger request took longer per sample. "
                "Look at whether these runs were disturbed (other processes on the same "
                "cores make a multi-threaded request wait for its slowest thread) and run the "
                "sweep again on a quiet machine."
            )
        )
    return "\n".join(out)


# -- exercises --------------------------------------------------------------------------------
def exercise_reuse(plan: MemoryPlan, id: str = "1") -> Exercise:
    """Exercise 1: the best plan's reuse factor (naive bytes / best plan's bytes)."""
    hints = (
        "Look at the plan's table: the `naive` planner gives every tensor its own buffer; the "
        "best planner shares bytes between tensors that are never alive together.",
        "The reuse factor is naive bytes / best plan's bytes, both in the same unit.",
    )

    def solution() -> str:
        return (
            f"{format_bytes(plan.naive_bytes)} / {format_bytes(plan.best_bytes)} = "
            f"**{plan.reuse_factor:.2f}**: each byte of the arena holds that many tensors over "
            "the pass, one after another. The planner reads every tensor's first and last op "
            "from the graph, so it knows which tensors may share bytes before anything runs; "
            "eager's allocator finds the same reuse at run time, one `malloc` per tensor."
        )

    return Exercise(
        id,
        "How many times over does the best plan reuse its bytes?",
        lambda a: check_number(a, plan.reuse_factor, rel_tol=0.05, what="a ratio, e.g. 3.5"),
        hints=hints,
        solution=solution,
    )


def allocs_saved(
    sweep: Sweep, baseline: str = "dynamic", label: str = "preallocated"
) -> float | None:
    """Allocator calls per request that ``label`` saved against ``baseline``; ``None`` where
    they were not counted (no native recorder: the profiler fallback cannot count per request)."""
    a0, a1 = allocs_per_request(sweep[baseline]), allocs_per_request(sweep[label])
    if a0 is None or a1 is None:
        return None
    return a0 - a1


_NOT_COUNTED = (
    "Allocator calls were not counted on this machine: memlab's C++ recorder could not be built "
    "(no compiler), and the profiler fallback does not count them per request. Install a C++ "
    "compiler (g++, or Xcode's command line tools) and run the lab again."
)


def check_allocs_saved(
    answer: Any, sweep: Sweep, baseline: str = "dynamic", label: str = "preallocated"
) -> Check:
    truth = allocs_saved(sweep, baseline, label)
    if truth is None:
        return Check(None, _NOT_COUNTED)
    return check_number(answer, truth, abs_tol=0.5, what="a number of calls")


def exercise_allocs_saved(
    sweep: Sweep, baseline: str = "dynamic", label: str = "preallocated", id: str = "2"
) -> Exercise:
    """Exercise 2: allocator calls per request that ``label`` saved against ``baseline``."""
    hints = (
        "The strategies' table has a column 'allocs/request': the allocator calls the recorder "
        "counted inside one request.",
        f"Subtract: {baseline}'s calls per request minus {label}'s.",
    )
    return Exercise(
        id,
        "Allocator calls per request saved by preallocating",
        lambda a: check_allocs_saved(a, sweep, baseline, label),
        hints=hints,
        solution=lambda: (
            _NOT_COUNTED
            if allocs_saved(sweep, baseline, label) is None
            else f"**{allocs_saved(sweep, baseline, label):.0f}** calls per request "
            f"saved.\n\n{why_allocs(sweep, baseline, label)}"
        ),
    )


def exercise_batch_growth(df: pd.DataFrame, id: str = "3") -> Exercise:
    """Exercise 3: by what factor the peak grew from the smallest to the largest batch."""
    ok = _ok_rows(df)
    b0, b1 = int(ok["batch_size"].iloc[0]), int(ok["batch_size"].iloc[-1])
    hints = (
        f"Read the peak at batch {b0} and at batch {b1} in the batching table.",
        f"The factor is peak(batch {b1}) / peak(batch {b0}). It is less than {b1 // b0}: what "
        "part of an inference pass's memory does not grow with the batch?",
    )

    def solution() -> str:
        g = batch_growth(df)
        return (
            f"**{g:.2f}x** for {b1 // b0}x the samples. The activations and inputs grow with the "
            "batch; what does not (scratch buffers sized by the weights, packed weights, "
            "buffers of fixed size) keeps the growth below proportional.\n\n" + explain_batching(df)
        )

    return Exercise(
        id,
        f"Peak growth from batch {b0} to batch {b1}",
        lambda a: check_number(a, batch_growth(df), rel_tol=0.05, what="a factor, e.g. 2.5"),
        hints=hints,
        solution=solution,
    )


def summary(plan: MemoryPlan, sweep: Sweep, batching: pd.DataFrame) -> Mapping[str, Any]:
    """The lab's headline figures as data (for the notebook's own assertions)."""
    return {
        "eager_peak_bytes": plan.eager_peak_bytes,
        "best_bytes": plan.best_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "naive_bytes": plan.naive_bytes,
        "allocs_per_request": {lab: allocs_per_request(r) for lab, _e, r in sweep.runs()},
        "peak_growth": batch_growth(batching),
    }
