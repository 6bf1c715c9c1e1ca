"""Timeline and RunResult are pure data: JSON round trip, dataframe, summaries, validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from memlab.timeline import CATEGORIES, PHASES, ProcessSeries, RunResult, Timeline, format_bytes


def sample() -> RunResult:
    tl = Timeline(
        t=[0.0, 0.1, 0.2],
        phase=[PHASES.index("forward"), PHASES.index("backward"), PHASES.index("optimizer")],
        by_category={"parameters": [100, 100, 100], "activations": [0, 50, 0]},
        marks=((0.0, "forward"), (0.1, "backward")),
    )
    proc = ProcessSeries(
        t=[0.0, 0.05], parts={"rss": [10, 20], "rss_anon": [5, 15], "rss_file": None}
    )
    return RunResult(
        peak_bytes=150,
        peak_by_category={"parameters": 100, "activations": 50},
        timeline=tl,
        process=proc,
        step_times_s=(0.1, 0.2, 0.3),
        samples_per_step=32,
        rss_peak_bytes=20,
        experiment={"workload": "mlp"},
    )


def test_json_round_trip_is_exact() -> None:
    r = sample()
    back = RunResult.from_json(r.to_json())
    assert back.to_dict() == r.to_dict()
    assert back.timeline.by_category["activations"].tolist() == [0, 50, 0]
    assert back.process.parts["rss_file"] is None
    assert back.timeline.marks == ((0.0, "forward"), (0.1, "backward"))


def test_derived_figures() -> None:
    r = sample()
    assert r.peak_by_category == {
        c: {"parameters": 100, "activations": 50}.get(c, 0) for c in CATEGORIES
    }
    assert r.timeline.total.tolist() == [100, 150, 100]
    assert r.step_time_median_s == pytest.approx(0.2)
    assert r.step_time_p95_s == pytest.approx(0.29)
    assert r.throughput_samples_per_s == pytest.approx(160.0)
    d = r.to_dict(timeline=False)
    assert "timeline" not in d and d["step_time_s"]["median"] == pytest.approx(0.2)
    assert r.process.peak("rss") == 20 and r.process.peak("rss_file") is None


def test_dataframe_and_summaries() -> None:
    r = sample()
    df = r.timeline.to_dataframe()
    assert list(df.columns) == ["t", "phase", *CATEGORIES, "total"]
    assert df["total"].tolist() == [100, 150, 100]
    assert df["phase"].tolist() == ["forward", "backward", "optimizer"]
    assert "peak=150 B" in repr(r) and "activations=50 B" in repr(r)
    html = r._repr_html_()
    assert "<table>" in html and "n/a" in html  # file-backed RSS: not measured, shown so


def test_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown categories"):
        RunResult(peak_bytes=1, peak_by_category={"weights": 1})
    with pytest.raises(ValueError, match="status must be one of"):
        RunResult(peak_bytes=1, peak_by_category={}, status="fine")
    with pytest.raises(ValueError, match="has 1 points, t has 2"):
        Timeline(t=[0, 1], phase=[0, 0], by_category={"parameters": [1]})


def test_format_bytes() -> None:
    assert format_bytes(None) == "n/a"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(-2048) == "-2.0 KiB"


def test_timeline_module_imports_neither_torch_nor_plotly() -> None:
    code = (
        "import sys, memlab.timeline, memlab\n"
        "print('torch' in sys.modules, 'plotly' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
    assert np.__name__ == "numpy"
