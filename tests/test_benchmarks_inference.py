"""benchmarks/inference.py's pure parts on hand-made results: the figures taken from a run, the
per-round ratios to dynamic and their medians, the table's flags, and the bad-option exit.
Nothing here runs a model or times anything."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memlab.timeline import Latency, RunResult, Timing

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "benchmarks/inference.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _result(
    times: tuple[float, ...],
    *,
    peak: int = 1000,
    allocs: tuple[int, ...] | None = (10, 10),
    steady: bool = True,
    others: float = 0.05,
    status: str = "ok",
    compile_s: float | None = None,
) -> RunResult:
    return RunResult(
        peak_bytes=peak,
        peak_by_category={},
        status=status,
        error=None if status == "ok" else "RuntimeError: boom\n  traceback line",
        latency=Latency(
            first_s=0.5,
            request_times_s=times,
            samples_per_request=8,
            allocs_by_request=allocs,
            compile_s=compile_s,
        ),
        timing=Timing(
            steady=steady,
            cpu_share=0.9,
            disturbed_steps=0 if steady else 5,
            note="n",
            others_share=others,
        ),
        metrics={"plan_arena_bytes": 4096},
    )


def _row(workload: str, config: str, rnd: int, r: RunResult) -> dict[str, Any]:
    return {"workload": workload, "config": config, "round": rnd, **bench.figures(r)}


def test_figures_come_from_the_result() -> None:
    f = bench.figures(_result((0.01, 0.02, 0.03, 0.04), allocs=(3, 5)))
    assert f["peak_bytes"] == 1000
    assert f["allocs_per_request"] == pytest.approx(4.0)
    assert f["first_s"] == 0.5
    assert f["p50_s"] == pytest.approx(0.025)  # numpy's linear percentile of 4 values
    assert f["requests_per_s"] == pytest.approx(4 / 0.10)
    assert f["steady"] is True and f["others_share"] == 0.05
    assert f["plan_arena_bytes"] == 4096
    bad = bench.figures(_result((), status="error"))
    assert bad["peak_bytes"] is None and bad["error"] == "RuntimeError: boom"


def test_ratios_are_to_dynamic_of_the_same_round() -> None:
    # Round 0: everything twice as slow as round 1 (a drift); the per-round ratio cancels it.
    runs = [
        _row("cnn", "dynamic", 0, _result((0.02,) * 5, peak=1000)),
        _row("cnn", "lazy", 0, _result((0.03,) * 5, peak=3000, allocs=(0, 0))),
        _row("cnn", "dynamic", 1, _result((0.01,) * 5, peak=1000)),
        _row("cnn", "lazy", 1, _result((0.012,) * 5, peak=3000, allocs=(0, 0))),
        _row("cnn", "dynamic", 2, _result((0.01,) * 5, peak=1000)),
        _row("cnn", "lazy", 2, _result((0.013,) * 5, peak=3000, allocs=(0, 0))),
    ]
    s = bench.summarize(runs)[("cnn", "lazy")]
    assert s["p50_s_ratio"] == pytest.approx(1.3)  # median of 1.5, 1.2, 1.3
    assert s["p50_s_ratio_range"] == pytest.approx((1.2, 1.5))
    assert s["p50_s"] == pytest.approx(0.013)  # median of the absolute figures
    assert s["peak_bytes_ratio"] == pytest.approx(3.0)
    assert s["allocs_per_request_ratio"] == 0.0
    assert s["steady"] == 3 and not s["p50_s_ratio_disturbed"]
    d = bench.summarize(runs)[("cnn", "dynamic")]
    assert d["p50_s_ratio"] == 1.0 and d["allocs_per_request_ratio"] == 1.0


def test_a_disturbed_round_is_flagged_and_a_failed_run_left_out() -> None:
    runs = [
        _row("mlp", "dynamic", 0, _result((0.01,) * 4, steady=False, others=0.6)),
        _row("mlp", "preallocated", 0, _result((0.02,) * 4, allocs=(0, 0))),
        _row("mlp", "dynamic", 1, _result((0.01,) * 4)),
        _row("mlp", "preallocated", 1, _result((), status="error")),
        _row("mlp", "compile", 0, _result((0.005,) * 4, compile_s=30.0)),
        _row("mlp", "compile", 1, _result((0.005,) * 4, compile_s=40.0)),
    ]
    summary = bench.summarize(runs)
    pre = summary[("mlp", "preallocated")]
    assert pre["ok"] == 1 and pre["rounds"] == 2
    assert pre["p50_s_ratio"] == pytest.approx(2.0)
    assert pre["p50_s_ratio_disturbed"]  # its anchor in round 0 was disturbed
    # 0 allocations against dynamic's 10: a ratio of 0; dynamic's own 10/10: 1
    assert pre["allocs_per_request_ratio"] == 0.0
    lines = bench.format_table("mlp", 64, summary, ["dynamic", "preallocated", "compile"])
    text = "\n".join(lines)
    dyn = next(line for line in lines if line.strip().startswith("dynamic"))
    assert "DISTURBED 1/2 steady" in dyn
    ratio = next(line for line in lines if line.split()[:2] == ["preallocated", "peak"])
    assert "p50 2.00!" in ratio and "peak 1.00 " in ratio  # memory figures carry no timing flag
    assert "[steady" not in ratio  # no round where both runs were steady
    comp = next(line for line in lines if line.split()[:2] == ["compile", "peak"])
    assert "p50 0.50! [steady 0.50 n=1]" in comp  # round 1 alone was steady on both sides
    assert "1 failed: error: RuntimeError: boom" in text
    assert "compile: inductor took 35.0 s (30.0-40.0)" in text


def test_zero_over_zero_is_one_and_x_over_zero_no_ratio() -> None:
    assert bench._ratio(0.0, 0.0) == 1.0
    assert bench._ratio(3.0, 0.0) is None
    assert bench._ratio(None, 2.0) is None


def test_rotation_moves_every_configuration() -> None:
    names = ["a", "b", "c"]
    assert [bench.rotated(names, k)[0] for k in range(4)] == ["a", "b", "c", "a"]
    assert sorted(bench.rotated(names, 2)) == names


def test_plan_line_names_both_graphs() -> None:
    line = bench.plan_line(
        "cnn",
        {
            "plan_arena_bytes": 22 * 2**20,
            "plan_naive_bytes": 110 * 2**20,
            "plan_lower_bound_bytes": 22 * 2**20,
        },
        {
            "best_bytes": 6 * 2**20,
            "best_planner": "greedy_by_size",
            "lower_bound_bytes": 6 * 2**20,
            "eager_peak_bytes": 7 * 2**20,
            "scratch_bytes": 4 * 2**20,
            "ops": ["aten.convolution.default"],
        },
    )
    assert "preallocated arena 22.00 MiB" in line and "im2col" in line
    assert "memlab.plan best 6.00 MiB (greedy_by_size)" in line
    assert "im2col" not in bench.plan_line("mlp", None, {"error": "x", "ops": ["aten.addmm"]})


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--workloads", "resnet"], "'resnet' is not allowed"),
        (["--configs", "preallocated"], "must include 'dynamic'"),
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--batch", "cnn=x"], "expected WORKLOAD=N"),
        (["--nope"], "unrecognized arguments"),
    ],
)
def test_bad_options_one_line_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_the_script_exits_2_before_starting_anything() -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/inference.py"), "--steps", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stdout == "" and p.stderr.strip().count("\n") == 0 and "--steps" in p.stderr


def test_defaults() -> None:
    a = bench.parse_args([])
    assert a.rounds == 3 and a.workloads == ["mlp", "cnn", "transformer"]
    assert a.configs[0] == "dynamic" and "compile" in a.configs
    assert a.json == ROOT / "test-artifacts" / "inference.json"
    assert bench.parse_args(["--batch", "cnn=8"]).batch["cnn"] == 8


def test_a_bare_assert_says_where() -> None:
    err = (
        'AssertionError: \nTraceback (most recent call last):\n  File "a.py", line 3, in f\n    x\n'
    )
    assert bench._error_line(err) == 'AssertionError: at File "a.py", line 3, in f'
    assert bench._error_line("ValueError: bad\nmore") == "ValueError: bad"
    assert bench._error_line(None) is None
