"""Lab 08's module (memlab.labs.beyond_ram) on hand-made runs: the offload table and its
budget come from the runs passed in, an oom is "does not fit", and no explanation shown before
an exercise states that exercise's answer."""

from __future__ import annotations

import pytest

from memlab import Experiment
from memlab.labs import beyond_ram as lab
from memlab.labs.sweeps import Sweep
from memlab.timeline import Latency, RunResult

MIB = 2**20
TRAIN = Experiment(workload="transformer", mode="train", batch_size=16, steps=2)


def _run(
    exp: Experiment,
    *,
    peak: int,
    acts: int,
    step: float = 0.1,
    status: str = "ok",
    metrics: dict[str, float] | None = None,
    latency: float | None = None,
) -> RunResult:
    return RunResult(
        peak_bytes=peak,
        peak_by_category={"activations": acts, "parameters": peak - acts} if peak else {},
        status=status,
        step_times_s=(step, step) if status == "ok" else (),
        samples_per_step=16,
        experiment=exp.to_dict(),
        metrics=metrics or {},
        latency=None
        if latency is None
        else Latency(request_times_s=(latency, latency), samples_per_request=16),
    )


def _offload() -> Sweep:
    runs = {
        "off": _run(TRAIN, peak=32 * MIB, acts=24 * MIB, step=0.10),
        "cpu": _run(TRAIN.replace(offload_activations="cpu"), peak=32 * MIB, acts=24 * MIB),
        "disk": _run(
            TRAIN.replace(offload_activations="disk"),
            peak=12 * MIB,
            acts=3 * MIB,
            step=0.15,
            metrics={
                "offload_bytes_written": 26 * MIB,
                "offload_bytes_read": 26 * MIB,
                "offload_compression_ratio": 1.0,
            },
        ),
        "disk-compressed": _run(
            TRAIN.replace(offload_activations="disk-compressed"),
            peak=12 * MIB,
            acts=3 * MIB,
            step=0.30,
            metrics={
                "offload_bytes_written": 13 * MIB,
                "offload_bytes_read": 13 * MIB,
                "offload_compression_ratio": 2.0,
            },
        ),
    }
    exps = [TRAIN.replace(offload_activations=k) for k in runs]
    return Sweep(tuple(runs), tuple(exps), tuple(runs.values()))


def test_offload_rows_table_and_explanation_come_from_the_runs() -> None:
    s = _offload()
    rows = {r["setting"]: r for r in lab.offload_rows(s)}
    assert rows["disk"]["activations_bytes"] == 3 * MIB
    assert rows["disk-compressed"]["ratio"] == 2.0
    t = lab.offload_table(s)
    assert "| disk | 3.00 | 12.00 | 150.0 | 26.00 | 26.00 | 1.00 |" in t
    text = lab.explain_offload(s)
    assert "**cpu** left the activations exactly where they were (24.00 MiB)" in text
    assert "**disk**: peak 12.00 MiB (down 20.0 MiB)" in text and "1.50x" in text
    assert "(compressed 2.00x)" in text and "0.12" not in text  # ex1's answer: 3/24


def test_the_budget_needs_offloading_and_the_fitting_settings_follow_the_peaks() -> None:
    s = _offload()
    b = lab.fitting_budget(s)
    assert 12 * MIB < b < 32 * MIB and b % MIB == 0
    assert lab.fitting_settings(s, b) == ["disk", "disk-compressed"]
    ex = lab.exercise_will_it_fit(s, b)
    assert ex.check(["disk", "disk-compressed"]).ok
    assert not ex.check(["disk"]).ok
    assert ex.check(["tape"]).form_error
    ex1 = lab.exercise_offload_saving(s, "disk")
    assert ex1.check(0.125).ok and not ex1.check(0.5).ok


def test_nothing_to_offload_is_said() -> None:
    s = _offload()
    flat = Sweep(s.labels[:2], s.experiments[:2], s.results[:2])
    with pytest.raises(ValueError, match="nothing needs offloading"):
        lab.fitting_budget(flat)
    with pytest.raises(ValueError, match="train"):
        lab.run_offload(TRAIN.replace(mode="inference"))


def test_streaming_budget_is_half_the_weights_and_the_explanation_reads_the_runs() -> None:
    infer = Experiment(workload="mlp", mode="inference", batch_size=32)
    resident = _run(infer, peak=0, acts=0, status="oom", metrics={"model_bytes": 32 * MIB})
    assert lab.streaming_budget(resident) == 16 * MIB
    streamed = _run(
        infer.replace(weights="streamed"),
        peak=8 * MIB,
        acts=MIB,
        latency=0.04,
        metrics={
            "stream_largest_layer_bytes": 4 * MIB,
            "stream_bytes_read_per_request": 32 * MIB,
            "stream_hits_per_request": 7.0,
            "stream_waits_per_request": 3.0,
        },
    )
    s = Sweep(
        ("resident", "streamed"), (infer, infer.replace(weights="streamed")), (resident, streamed)
    )
    t = lab.streaming_table(s)
    assert "| resident | oom | – |" in t and "| streamed | ok | 8.00 |" in t and "7.0 / 3.0" in t
    text = lab.explain_streaming(s, 16 * MIB)
    assert "Resident: **oom**" in text and "Streamed: **ok**, peak 8.0 MiB" in text
    assert "largest layer is 4.0 MiB" in text
