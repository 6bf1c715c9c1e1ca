"""memlab.partitioning: a built-in model cut into stage processes, checked against one process.

Independent truths: the one-process anchor's outputs (to the bit), the parameters' bytes from
the models' shapes (built here), the bytes of the micro-batches from their shapes, the
processes' existence (psutil), and the shared-memory segments in /dev/shm."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from memlab.config import Experiment
from memlab.partitioning import (
    BLOCKS,
    PartitionResult,
    partition,
    predicted_bubble,
    split_blocks,
)

M, MB = 4, 32  # micro-batches, samples per micro-batch


def _shm_names() -> set[str]:
    d = Path("/dev/shm")
    # psm_: multiprocessing.shared_memory's names (others' semaphores come and go beside them)
    return {p.name for p in d.iterdir() if p.name.startswith("psm_")} if d.is_dir() else set()


def _param_bytes(model: Any, modules: list[str]) -> int:
    total = 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if any(name == m or name.startswith(m + ".") for m in modules):
            total += t.numel() * t.element_size()
    return total


@pytest.fixture(scope="module")
def mlp2() -> PartitionResult:
    return partition("mlp", stages=2, micro_batches=M)


def test_outputs_equal_one_process(mlp2: PartitionResult) -> None:
    assert mlp2.status == "ok", mlp2.error
    assert mlp2.outputs_equal is True
    assert mlp2.max_abs_diff == 0.0


def test_stage_parameters_are_their_blocks_bytes(mlp2: PartitionResult) -> None:
    from memlab.workloads.models import MLP

    model = MLP()
    assert [(s.lo, s.hi) for s in mlp2.stage_results] == [(0, 2), (2, 4)]
    assert mlp2.stage_results[0].modules == ["stem", "blocks.0", "blocks.1"]
    assert mlp2.stage_results[1].modules == ["blocks.2", "blocks.3", "norm", "head"]
    for s in mlp2.stage_results:
        truth = _param_bytes(model, s.modules)
        assert s.param_bytes == truth
        assert s.peak_by_category["parameters"] == truth  # the tracker, per stage process
    assert mlp2.anchor is not None
    assert sum(s.param_bytes for s in mlp2.stage_results) == mlp2.anchor.param_bytes
    assert mlp2.anchor.param_bytes == _param_bytes(model, [n for n, _ in model.named_children()])


def test_peaks_add_up(mlp2: PartitionResult) -> None:
    # The parameters split exactly and stage 0 holds the same inputs as the anchor, while each
    # stage's rise over its entry is at least that of its own blocks: so the summed peaks are at
    # least the one process's peak, and no stage peaks above it.
    a = mlp2.anchor
    assert a is not None and mlp2.summed_peak_bytes is not None
    assert mlp2.summed_peak_bytes >= a.peak_bytes
    assert all(s.peak_bytes <= a.peak_bytes for s in mlp2.stage_results)
    s0, s1 = mlp2.stage_results
    assert s0.peak_by_category["inputs"] == M * MB * 64 * 4  # the micro-batches, float32
    assert s1.peak_by_category["inputs"] == 0


def test_handover_bytes(mlp2: PartitionResult) -> None:
    s0, s1 = mlp2.stage_results
    act = MB * 512 * 4  # the MLP's hidden activation, float32
    assert s0.output_bytes == s1.input_bytes == act
    assert s0.copied_bytes == M * act  # one copy per hop per micro-batch
    assert s1.copied_bytes == 0
    assert mlp2.bytes_copied == M * act
    assert s0.shm_bytes == s1.shm_bytes == mlp2.slots * act


def test_times_and_bubble(mlp2: PartitionResult) -> None:
    assert mlp2.makespan_s is not None and mlp2.makespan_s > 0
    assert mlp2.bubble is not None and 0.0 <= mlp2.bubble <= 1.0
    assert all(0.0 <= f <= 1.0 for f in mlp2.idle_fractions())
    for s in mlp2.stage_results:
        assert [t.index for t in s.times] == list(range(M))
        for t in s.times:
            assert t.wait_s <= t.input_s <= t.compute_end_s <= t.slot_s <= t.sent_s
    # One clock across processes: stage 1 has micro-batch m only after stage 0 began to copy
    # it (stage 0 reads its clock after the send, which may be after stage 1 received it).
    s0, s1 = mlp2.stage_results
    for a, b in zip(s0.times, s1.times, strict=True):
        assert b.input_s >= a.slot_s
    assert mlp2.predicted_bubble == pytest.approx(1 / (M + 1))
    assert mlp2.throughput_per_s is not None and mlp2.anchor_throughput_per_s is not None


def test_round_trip_and_nothing_left(mlp2: PartitionResult) -> None:
    again = PartitionResult.from_dict(mlp2.to_dict())
    assert again.to_dict() == mlp2.to_dict()
    assert again.summary() == mlp2.summary()
    assert len(mlp2.pids) == 3  # the anchor and two stages
    assert not any(psutil.pid_exists(p) for p in mlp2.pids)


def test_killed_stage_ends_the_run_within_2s() -> None:
    shm_before = _shm_names()
    killed: dict[str, Any] = {}

    def on_start(pids: list[int]) -> None:
        def kill() -> None:
            time.sleep(0.3)
            killed["t"] = time.monotonic()
            os.kill(pids[1], 9)

        threading.Thread(target=kill, daemon=True).start()

    r = partition("mlp", stages=2, micro_batches=200, anchor=False, on_start=on_start)
    done = time.monotonic()
    assert "t" in killed, "the pipeline ended before the kill"
    assert r.status == "error"
    assert r.failed_stage == 1
    assert r.error is not None and "stage 1 died (killed by signal 9)" in r.error
    assert done - killed["t"] < 2.0
    assert not any(psutil.pid_exists(p) for p in r.pids)
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert not children & set(r.pids)
    assert _shm_names() <= shm_before  # the rings are unlinked


def test_raising_stage_is_a_clear_error() -> None:
    r = partition(
        "cnn", stages=2, micro_batches=3, anchor=False, fault={"stage": 1, "at": 1, "kind": "raise"}
    )
    assert r.status == "error"
    assert r.failed_stage == 1
    assert r.error is not None
    assert r.error.startswith(
        "stage 1 raised RuntimeError: injected fault in stage 1 at micro-batch 1"
    )
    assert not any(psutil.pid_exists(p) for p in r.pids)
    assert r.stage_results == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stages": 0}, "stages must be a positive int"),
        ({"stages": 5}, "stages must be from 1 to 4 for mlp"),
        ({"stages": True}, "stages must be a positive int"),
        ({"micro_batches": 0}, "micro_batches must be a positive int"),
        ({"threads": 0}, "threads must be a positive int"),
        ({"slots": 0}, "slots must be a positive int"),
        ({"warmup": -1}, "warmup must be an int >= 0"),
        ({"timeout_s": 0}, "timeout_s must be a positive number"),
        (
            {"fault": {"stage": 2, "at": 0, "kind": "raise"}},
            "fault stage must be an int from 0 to 1",
        ),
        (
            {"fault": {"stage": 0, "at": 0, "kind": "explode"}},
            "fault kind must be one of raise, kill",
        ),
        ({"fault": {"stage": 0, "at": 99, "kind": "kill"}}, "fault at must be a micro-batch"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition("mlp", **kwargs)


def test_bad_experiments() -> None:
    with pytest.raises(ValueError, match="unknown workload 'resnet'; partition cuts"):
        partition("resnet")
    with pytest.raises(ValueError, match="knobs must be at their defaults: precision='bf16'"):
        partition(Experiment(workload="mlp", mode="inference", precision="bf16"))
    with pytest.raises(TypeError, match="experiment must be a memlab.Experiment"):
        partition(3)  # type: ignore[arg-type]


def test_split_and_prediction() -> None:
    assert split_blocks(4, 1) == [(0, 4)]
    assert split_blocks(4, 3) == [(0, 2), (2, 3), (3, 4)]
    assert split_blocks(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="stages must be from 1 to 4"):
        split_blocks(4, 5)
    assert predicted_bubble(1, 8) == 0.0
    assert predicted_bubble(2, 8) == pytest.approx(1 / 9)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_stages_compose_to_the_model(name: str) -> None:
    """In process: the stage modules, chained, compute the model's forward to the bit."""
    import torch

    from memlab.partitioning import _stage_module
    from memlab.workloads.builtin import SPECS

    torch.manual_seed(0)
    model = SPECS[name].make_model().eval()
    assert len(model.blocks) == BLOCKS[name]
    x = torch.randn(8, *SPECS[name].input_shape)
    with torch.inference_mode():
        want = model(x)
        for k in (1, 2, 3):
            h = x
            ranges = split_blocks(BLOCKS[name], k)
            for i, (lo, hi) in enumerate(ranges):
                h = _stage_module(model, name, lo, hi, i == 0, i == len(ranges) - 1)(h)
            assert torch.equal(h, want), (name, k)


def test_figures(mlp2: PartitionResult) -> None:
    from memlab.plots_partition import gantt_figure, memory_figure

    g = gantt_figure(mlp2)
    compute = [t for t in g.data if t.name == "compute"]
    assert sum(len(t.x) for t in compute) == 2 * M  # every stage x micro-batch
    s0 = mlp2.stage_results[0]
    assert compute[0].base[0] == pytest.approx(1e3 * s0.times[0].input_s)
    assert "bubble" in g.layout.title.text
    m = memory_figure(mlp2)
    params = next(t for t in m.data if t.name == "parameters")
    assert list(params.x) == ["one process", "stage 0 (blocks 0-1)", "stage 1 (blocks 2-3)"]
    assert params.y[1] * 2**20 == pytest.approx(s0.param_bytes)
