"""Lab 10's module on a hand-made ProfilerComparison: tables, explanations and exercises take
their truths from the data (change the data, the answers change)."""

from __future__ import annotations

import dataclasses

import pytest

from memlab.config import MIB
from memlab.labs import profiling as lab
from memlab.profilers import ProfilerComparison, ToolReading

ENTRY = 96 * MIB
RISE = 40 * MIB


def make(
    *,
    tp_peak: int = ENTRY + RISE + 2 * MIB,
    mprun_s: tuple[float, ...] = (0.30, 0.34, 0.32),
    truth_end: int = ENTRY,
) -> ProfilerComparison:
    truth = ENTRY + RISE
    return ProfilerComparison(
        workload="mlp",
        batch_size=16,
        steps=3,
        source="native",
        truth_bytes=truth,
        truth_entry_bytes=ENTRY,
        truth_rise_bytes=RISE,
        truth_t_s=(0.0, 0.01, 0.02),
        truth_memory_bytes=(ENTRY, truth, ENTRY),
        tools=(
            ToolReading("none", "nothing", (0.10, 0.12, 0.11, 0.10)),
            ToolReading(
                "memory_profiler",
                "RSS",
                (0.11, 0.11, 0.12),
                460 * MIB,
                2 * MIB,
                (0.0,),
                (460 * MIB,),
            ),
            ToolReading(
                "mprun",
                "RSS per line",
                mprun_s,
                462 * MIB,
                48 * MIB,
                attribution=(("line 182: loss.backward()", 36 * MIB),),
            ),
            ToolReading(
                "torch.profiler",
                "tensors",
                (0.15, 0.16, 0.14),
                tp_peak,
                RISE,
                attribution=(("optimizer_state", 64 * MIB), ("op aten::mm", 65 * MIB)),
            ),
            ToolReading(
                "memlab",
                "tensors",
                (0.13, 0.12, 0.14),
                truth,
                RISE,
                attribution=(("optimizer_state", 64 * MIB), ("parameters", 32 * MIB)),
            ),
        ),
        line_profile=((182, 454.2, 36.1, 3, "loss.backward()"),),
        rss_start_bytes=438 * MIB,
        rss_end_bytes=470 * MIB,
        truth_end_bytes=truth_end,
        timing_steady=True,
        notes=("a note",),
    )


def test_table_and_explanation_are_computed_from_the_data() -> None:
    c = make()
    table = lab.comparison_table(c)
    assert "| memory_profiler | 460.00 | +324.00 | +238.2% | 2.00 | 110.0 |" in table
    assert "| torch.profiler | 138.00 | +2.00 | +1.5% | 40.00 | 150.0 |" in table
    text = lab.explain(c)
    assert "96.00 MiB" in text and "136.00 MiB" in text and "`aten::mm` (65.0 MiB" in text
    assert "memory_profiler 1.05x" in text  # 0.11 / 0.105
    assert "mprun" not in text.split("**Cost.**")[1]  # exercise 2's answer is not given away
    assert "| 182 | 454.2 | 36.1 | 3 | `loss.backward()` |" in lab.line_profile_table(c)


def test_within_truth_and_the_closest_tools_follow_the_errors() -> None:
    c = make()
    assert lab.within_truth(c, "memlab", 1.0) and not lab.within_truth(c, "torch.profiler", 1.0)
    assert lab.within_truth(c, "torch.profiler", lab.TORCH_PROFILER_TOL_PCT)
    ex = lab.exercise_closest(c, 1.0)
    assert ex.check(["memlab"]).ok is True
    assert lab.exercise_closest(c, 1.0).check(["memlab", "torch.profiler"]).ok is False
    # torch.profiler exact: both tools are the answer now.
    exact = make(tp_peak=ENTRY + RISE)
    assert lab.exercise_closest(exact, 1.0).check(["memlab", "torch.profiler"]).ok is True
    assert lab.exercise_closest(c, 1.0).check(["gdb"]).form_error


def test_overhead_exercise_uses_the_measured_ratio_within_10_percent() -> None:
    c = make()
    ratio = 0.32 / 0.105
    assert c.overhead("mprun") == pytest.approx(ratio)
    assert lab.exercise_overhead(c).check(ratio * 1.08).ok is True
    assert lab.exercise_overhead(c).check(ratio * 1.2).ok is False
    slower = make(mprun_s=(0.6, 0.6, 0.6))
    assert lab.exercise_overhead(slower).check(0.6 / 0.105).ok is True
    no_anchor = dataclasses.replace(
        c, tools=(dataclasses.replace(c.tools[0], step_times_s=()),) + c.tools[1:]
    )
    with pytest.raises(ValueError, match="mprun"):
        lab.exercise_overhead(no_anchor)


def test_rss_exercise_reads_the_allocator_count_after_the_steps() -> None:
    c = make()
    ex = lab.exercise_rss(c)
    assert ex.check("glibc").ok is True
    assert "470.0 MiB" in ex.solution() and "96.00 MiB" in ex.solution()
    leaking = make(truth_end=ENTRY + RISE // 2)
    assert lab.exercise_rss(leaking).check("leak").ok is True
    assert lab.exercise_rss(c).check("swap").form_error
