"""Lab 10, profiling tools side by side: memory-profiler (``%memit``, ``%mprun``, its RSS
sampling), ``torch.profiler`` (``profile_memory``, its memory timeline, a TensorBoard trace)
and memlab on the same training step, against the allocator's truth.

The comparison is made in the service worker (``memlab.profilers.compare_profilers``); this
module only reads its ``ProfilerComparison``, so the kernel never imports torch. Every number
in the prose is computed from it; the answers to the exercises are in their solutions only.
"""

from __future__ import annotations

from typing import Any

from memlab.config import MIB, Experiment
from memlab.labs.checks import Check, Exercise, check_choice, check_number
from memlab.labs.text import md_table, times
from memlab.profilers import TOOLS, ProfilerComparison, ToolReading, compare_profilers

__all__ = [
    "MIB",
    "TOOLS",
    "TORCH_PROFILER_TOL_PCT",
    "MEMLAB_TOL_PCT",
    "Experiment",
    "ProfilerComparison",
    "ToolReading",
    "compare_profilers",
    "comparison_table",
    "line_profile_table",
    "explain",
    "explain_rss",
    "within_truth",
    "exercise_closest",
    "exercise_overhead",
    "exercise_rss",
    "RSS_REASONS",
]

#: memlab counts every allocator call: its peak must equal the truth (1% leaves room for a
#: storage counted by another route, e.g. a tensor shared by two names at entry).
MEMLAB_TOL_PCT = 1.0
#: torch.profiler's memory timeline is rebuilt from tensors and their versions, not from the
#: allocator's count: a buffer it cannot tie to a tensor, or a version it misplaces, moves it.
#: Within 5% of the truth is what its design allows us to expect on a CPU training step.
TORCH_PROFILER_TOL_PCT = 5.0

_TENSOR_TOOLS = ("torch.profiler", "memlab")
_RSS_TOOLS = ("memory_profiler", "mprun")


def _fmt(v: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def comparison_table(c: ProfilerComparison) -> str:
    """Markdown: per tool, its peak, error vs the truth, rise during the steps and median step
    time (the cost as a ratio is exercise 2's answer: ``cost_figure`` shows it after)."""
    rows = []
    for r in c.table():
        rows.append(
            (
                r["tool"],
                _fmt(r["peak_mib"], ".2f"),
                _fmt(r["error_mib"], "+.2f"),
                _fmt(r["error_pct"], "+.1f", "%"),
                _fmt(r["rise_mib"], ".2f"),
                _fmt(r["step_ms"], ".1f"),
            )
        )
    return md_table(
        (
            "tool",
            "peak MiB",
            "error MiB",
            "error",
            "rise during steps MiB",
            "step ms (median)",
        ),
        rows,
    )


def line_profile_table(c: ProfilerComparison) -> str:
    """memory_profiler's line profile of ``Workload.step`` (what ``%mprun`` prints), as a table."""
    if not c.line_profile:
        return "No line profile in this result."
    return md_table(
        ("line", "RSS after MiB", "increment MiB", "runs", "code"),
        (
            (n, f"{m:.1f}", f"{inc:.1f}", occ, f"`{code}`")
            for n, m, inc, occ, code in c.line_profile
        ),
    )


def within_truth(c: ProfilerComparison, tool: str, tol_pct: float) -> bool:
    """Whether ``tool``'s peak is within ``tol_pct`` percent of the truth."""
    e = c.error_pct(tool)
    return e is not None and abs(e) <= tol_pct


def explain(c: ProfilerComparison, hide_cost: tuple[str, ...] = ("mprun",)) -> str:
    """What the comparison shows, every number from ``c`` (without the exercises' answers:
    the cost of the tools in ``hide_cost`` is left out)."""
    ml, tp, mp = c.reading("memlab"), c.reading("torch.profiler"), c.reading("memory_profiler")
    parts = [
        f"**The truth.** {c.truth_entry_bytes / MIB:.2f} MiB of tensors were live when a step "
        f"began (parameters, optimizer state, the batch), and the allocator's count rose by "
        f"{c.truth_rise_bytes / MIB:.2f} MiB more during the step: a peak of "
        f"{c.truth_bytes / MIB:.2f} MiB.",
    ]
    if ml.attribution:
        top = ", ".join(f"{k} {v / MIB:.2f} MiB" for k, v in ml.attribution[:3])
        parts.append(f"**memlab** names the bytes at its peak by category: {top}.")
    cats = [(k, v) for k, v in tp.attribution if not k.startswith("op ")]
    ops = [(k[3:], v) for k, v in tp.attribution if k.startswith("op ")]
    if cats:
        parts.append(
            "**torch.profiler**'s memory timeline, at its peak: "
            + ", ".join(f"{k} {v / MIB:.2f} MiB" for k, v in cats[:4])
            + (
                f"; the op that allocated most over the steps was `{ops[0][0]}` "
                f"({ops[0][1] / MIB:.1f} MiB in all)."
                if ops
                else "."
            )
        )
    if mp.peak_bytes is not None and mp.rise_bytes is not None:
        parts.append(
            f"**memory_profiler** read the process: RSS up to {mp.peak_bytes / MIB:.1f} MiB, "
            f"{mp.peak_bytes / c.truth_bytes:.1f}x the tensors' peak, because RSS holds "
            f"Python, torch's libraries and the memory glibc keeps. While the steps ran, RSS "
            f"rose by {mp.rise_bytes / MIB:.2f} MiB; the allocator's count rose by "
            f"{c.truth_rise_bytes / MIB:.2f} MiB during a step, and fell back after it."
        )
    a = c.anchor_step_s
    if a:
        costs = []
        for t in ("memory_profiler", "mprun", "torch.profiler", "memlab"):
            if t in hide_cost:
                continue
            s = c.reading(t).step_s
            if s:
                costs.append(f"{t} {times(s, a)}")
        parts.append(
            f"**Cost.** A step alone took {a * 1e3:.1f} ms (median); under each tool: "
            + ", ".join(costs)
            + " the step alone."
        )
    if c.timing_steady is False:
        parts.append(f"*Timing:* {c.timing_note}")
    parts.append(
        "*How it was measured:* " + "; ".join(c.notes) + f" (memlab's event source: {c.source})."
    )
    return "\n\n".join(parts)


# -- exercises -------------------------------------------------------------------------------

#: Exercise 3's options: why memory_profiler's RSS stays up after the steps.
RSS_REASONS: dict[str, str] = {
    "leak": "the step leaks tensors: they stay allocated after it",
    "glibc": "glibc keeps freed memory in its free lists for reuse instead of returning it",
    "sampler": "memory_profiler's sampling process holds memory in the measured process",
    "caching": "PyTorch's CPU allocator caches freed blocks like the CUDA one does",
}


def explain_rss(c: ProfilerComparison) -> str:
    """Exercise 3's solution: what the allocator's count and RSS did after the steps."""
    if c.rss_start_bytes is None or c.rss_end_bytes is None or c.truth_end_bytes is None:
        return "This result has no RSS reading around the steps."
    return (
        f"After the steps the allocator's count is back at {c.truth_end_bytes / MIB:.2f} MiB "
        f"(the {c.truth_entry_bytes / MIB:.2f} MiB live before them): every tensor the step "
        f"made was freed. RSS went from {c.rss_start_bytes / MIB:.1f} MiB before the steps to "
        f"{c.rss_end_bytes / MIB:.1f} MiB after them: glibc keeps what was freed in its free "
        f"lists (and small blocks in its heap) to hand out again, so RSS shows the most the "
        f"process ever needed, not what is live. `MALLOC_MMAP_THRESHOLD_` or `malloc_trim` make "
        f"it give memory back; a fresh process per measurement avoids the question."
    )


def _rss_truth(c: ProfilerComparison) -> str:
    if c.truth_end_bytes is not None and c.truth_rise_bytes:
        kept = c.truth_end_bytes - c.truth_entry_bytes
        if kept > 0.05 * c.truth_rise_bytes:
            return "leak"
    return "glibc"


def exercise_closest(c: ProfilerComparison, tol_pct: float = 1.0, id: str = "1") -> Exercise:
    """Which tools report a peak within ``tol_pct`` percent of the truth? (a set of names)"""
    tools = [t for t in c.labels if t != "none"]
    truth = {t for t in tools if within_truth(c, t, tol_pct)}

    def grade(answer: Any) -> Check:
        return check_choice(
            answer,
            truth,
            options=tools,
            what="a list of tools, e.g. ['mprun']",
            explain=f"within {tol_pct:g}% of the truth: {', '.join(sorted(truth)) or 'none'}.",
        )

    return Exercise(
        id,
        f"Which tools report a peak within {tol_pct:g}% of the allocator's truth?",
        grade,
        hints=[
            "The error column of the table: the peak each tool reports minus the truth.",
            "RSS includes everything the process holds, tensors or not.",
        ],
        solution=lambda: "\n\n".join(
            f"- **{t}**: error {_fmt(c.error_pct(t), '+.2f', '%')}" for t in tools
        ),
    )


def exercise_overhead(c: ProfilerComparison, tool: str = "mprun", id: str = "2") -> Exercise:
    """How many times the step alone does a step take under ``tool``? (within 10%)"""
    ratio = c.overhead(tool)
    if ratio is None:
        raise ValueError(f"no step times for {tool!r} or the anchor in this result")
    r, a = c.reading(tool).step_s, c.anchor_step_s
    assert r is not None and a is not None
    return Exercise(
        id,
        f"How many times longer is a step under {tool} than the step alone?",
        lambda ans: check_number(ans, ratio, rel_tol=0.10, unit="x", what="a ratio, e.g. 1.5"),
        hints=[
            "The step ms column: the tool's row over the row `none`.",
            f"{tool} reads the process's memory around every line: the more lines run, the "
            "more it costs.",
        ],
        solution=lambda: f"{r * 1e3:.1f} ms / {a * 1e3:.1f} ms = **{ratio:.2f}x**.",
    )


def exercise_rss(c: ProfilerComparison, id: str = "3") -> Exercise:
    """Why does memory_profiler's RSS not come down after the steps? (a key of RSS_REASONS)"""
    truth = _rss_truth(c)
    return Exercise(
        id,
        "Why does the RSS that memory_profiler reads stay up after the steps? Answer one of "
        + ", ".join(f"`{k}` ({v})" for k, v in RSS_REASONS.items()),
        lambda ans: check_choice(ans, truth, options=list(RSS_REASONS), what="a reason's key"),
        hints=[
            "Compare the allocator's count after the steps with the count before them.",
            "If every tensor was freed, the memory went back to the C allocator under PyTorch.",
        ],
        solution=lambda: explain_rss(c),
    )
