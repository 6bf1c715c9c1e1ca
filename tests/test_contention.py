"""memlab.contention: two measured runs alone, then together. Tensor memory is per process, so
each run's tracked peak is the same together as alone; both runs carry their timing verdict.
No speed is asserted (tests never assert speed)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from memlab.config import Experiment  # noqa: E402
from memlab.contending import ContentionResult, contention  # noqa: E402

TOLERANCE = 0.01  # exact tracked bytes: the same model, batch and requests in a fresh process


@pytest.fixture(scope="module")
def result() -> ContentionResult:
    exp = Experiment(
        workload="cnn", mode="inference", batch_size=16, data_size=64, steps=5, warmup=1
    )
    return contention(exp, exp.replace(workload="transformer"), timeout_s=240)


def test_peaks_together_are_the_alone_peaks(result: ContentionResult) -> None:
    for r in result.runs:
        assert r.alone_status == r.together_status == "ok"
        assert r.alone_peak_bytes and r.together_peak_bytes
        assert abs(r.together_peak_bytes - r.alone_peak_bytes) <= TOLERANCE * r.alone_peak_bytes
    a, t = result.summed_peak_alone_bytes, result.summed_peak_together_bytes
    assert a is not None and t is not None and abs(t - a) <= TOLERANCE * a
    # Process memory adds up: both workers' RSS together is more than either's high-water mark.
    rss = [r.together_rss_hwm_bytes for r in result.runs]
    assert result.combined_rss_peak_bytes is not None
    assert all(x is not None and result.combined_rss_peak_bytes > x for x in rss)


def test_both_runs_carry_their_timing_verdicts(result: ContentionResult) -> None:
    for r in result.runs:
        assert isinstance(r.alone_steady, bool) and isinstance(r.together_steady, bool)
        assert r.alone_timing_note and r.together_timing_note
        assert r.alone_step_s and r.together_step_s and r.inflation is not None
    assert result.throughput_alone and result.throughput_together
    assert result.throughput_ratio is not None
    assert result.overlap is not None and 0.0 <= result.overlap <= 1.0


def test_round_trip_and_figure(result: ContentionResult) -> None:
    from memlab.plots_scheduling import contention_figure

    assert ContentionResult.from_dict(result.to_dict()) == result
    fig = contention_figure(result)
    alone = next(tr for tr in fig.data if tr.name == "alone")
    assert list(alone.y) == pytest.approx([r.alone_step_s * 1e3 for r in result.runs])  # type: ignore[operator]


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="exp_a"):
        contention("cnn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        contention(Experiment(workload="cnn"), timeout_s=0)
