"""memlab.pipelining: sequential vs pipelined inference on one seeded stream of raw requests,
and pinned memory (a CUDA matter). No speed is asserted: behaviour only (order, outputs, the
queue's bound and bytes, clean shutdown, errors)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from memlab import pipelining as P
from memlab.pipelining import Mode, PipelineError, PipelineResult

SEQ = Mode("seq", "sequential", threads=1)
PIPE = Mode("pipe", "pipelined", threads=1, depth=2)


def _no_stage_thread() -> bool:
    return not any(t.name == P._THREAD_NAME for t in threading.enumerate())


# -- the engine, on plain callables ---------------------------------------------------------------
def _slow(x: int) -> int:
    time.sleep(0.01)  # a model slower than preprocessing: the queue fills up
    return x * 10


@pytest.mark.parametrize("depth", [1, 3])
def test_queue_never_exceeds_depth_and_holds_depth_batches(depth: int) -> None:
    mode = Mode("pipe", "pipelined", threads=1, depth=depth)
    run = P.run_stream(list(range(12)), lambda r: r, _slow, mode, nbytes=lambda x: 1000)
    lens = [n for _, n, _ in run.queue_samples]
    assert max(lens) <= depth  # instrumented at every put and get, under the queue's lock
    # Preprocessing is instant and the model takes 10 ms: stage 1 fills the queue to depth.
    assert run.peak_queue_len == depth
    assert run.peak_queue_bytes == depth * 1000
    assert all(b == 1000 * n for _, n, b in run.queue_samples)
    assert _no_stage_thread()


def test_every_request_once_and_in_order() -> None:
    seen: list[int] = []

    def infer(x: int) -> int:
        seen.append(x)
        return x

    for mode in (SEQ, PIPE):
        seen.clear()
        run = P.run_stream(list(range(20)), lambda r: r + 100, infer, mode, keep=lambda y: y)
        assert seen == [i + 100 for i in range(20)]
        assert run.inferred_order == list(range(20))
        assert run.preprocessed_order == list(range(20))
        assert run.outputs == [i + 100 for i in range(20)]
        assert [r.index for r in run.requests] == list(range(20))
        for r in run.requests:  # each stage's times in order, per request
            assert r.arrival_s <= r.pre_start_s <= r.pre_end_s <= r.infer_start_s <= r.infer_end_s
    assert _no_stage_thread()


def test_pipelined_overlaps_and_sequential_does_not() -> None:
    def pre(r: int) -> int:
        time.sleep(0.01)
        return r

    seq = P.run_stream(list(range(6)), pre, _slow, SEQ)
    pipe = P.run_stream(list(range(6)), pre, _slow, PIPE)
    # Sequential: request i+1 starts preprocessing after request i's forward ended.
    for a, b in zip(seq.requests, seq.requests[1:], strict=False):
        assert b.pre_start_s >= a.infer_end_s
    # Pipelined: some request's preprocessing started before the previous forward ended.
    assert any(
        b.pre_start_s < a.infer_end_s
        for a, b in zip(pipe.requests, pipe.requests[1:], strict=False)
    )


def test_fixed_rate_arrivals_are_scheduled() -> None:
    run = P.run_stream(list(range(5)), lambda r: r, lambda x: x, PIPE, rate_hz=50.0)
    assert [r.arrival_s for r in run.requests] == pytest.approx([i / 50 for i in range(5)])
    assert all(r.pre_start_s >= r.arrival_s for r in run.requests)


@pytest.mark.parametrize("mode", [SEQ, PIPE], ids=["sequential", "pipelined"])
def test_preprocessing_error_is_clear_and_stops_cleanly(mode: Mode) -> None:
    inferred: list[int] = []

    def pre(r: int) -> int:
        if r == 3:
            raise ValueError("corrupt frame")
        return r

    def infer(x: int) -> int:
        inferred.append(x)
        time.sleep(0.005)
        return x

    with pytest.raises(
        PipelineError,
        match=r"preprocessing of request 3 failed: ValueError: "
        r"corrupt frame",
    ) as info:
        P.run_stream(list(range(10)), pre, infer, mode)
    assert isinstance(info.value.__cause__, ValueError)
    assert inferred == [0, 1, 2]  # what was preprocessed before is inferred, in order
    assert _no_stage_thread()


def test_inference_error_stops_stage_one() -> None:
    def infer(x: int) -> int:
        if x == 2:
            raise RuntimeError("shape mismatch")
        return x

    with pytest.raises(PipelineError, match="inference of request 2 failed: RuntimeError"):
        P.run_stream(list(range(50)), lambda r: r, infer, PIPE)
    assert _no_stage_thread()


def test_timing_verdict_is_attached() -> None:
    run = P.run_stream(list(range(4)), lambda r: r, _slow, PIPE)
    assert run.timing is not None
    assert len(run.timing.step_wall_s) == 4
    assert run.timing.threads == 2  # two stages of one thread each (on 2+ CPUs)
    assert isinstance(run.timing.note, str) and run.timing.note


# -- bad arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"requests": 0}, "requests must be a positive int"),
        ({"requests": 2.5}, "requests must be a positive int"),
        ({"raw_scale": 0}, "raw_scale must be an int from 1 to 64"),
        ({"raw_scale": 65}, "raw_scale must be an int from 1 to 64"),
        ({"depth": 0}, "depth must be a positive int"),
        ({"rate_hz": -1.0}, "rate_hz must be a positive number"),
        ({"rate_hz": float("inf")}, "rate_hz must be a positive number"),
        ({"warmup": -1}, "warmup must be an int >= 0"),
        ({"modes": []}, "at least one Mode"),
        ({"modes": [SEQ, SEQ]}, "mode names must be unique"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        P.pipeline_job("mlp", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):  # checked before anything is sent
        P.pipeline("mlp", **kwargs)  # type: ignore[arg-type]


def test_bad_workload_and_mode() -> None:
    with pytest.raises(ValueError, match=r"unknown workload 'resnet'; allowed: mlp, cnn"):
        P.pipeline_job("resnet")
    with pytest.raises(ValueError, match="Mode.kind must be one of sequential, pipelined"):
        Mode("x", "parallel", threads=1)
    with pytest.raises(ValueError, match="Mode.depth must be a positive int"):
        Mode("x", "pipelined", threads=1, depth=0)
    with pytest.raises(ValueError, match="Mode.threads must be a positive int"):
        Mode("x", "sequential", threads=0)
    with pytest.raises(ValueError, match="raw must hold at least one request"):
        P.run_stream([], lambda r: r, lambda x: x, SEQ)


# -- the torch side -------------------------------------------------------------------------------
def test_preprocessing_matches_an_independent_computation() -> None:
    raw = P._raw_requests("cnn", 1, 4, 1, seed=0)[0]
    got = P._preprocessor("cnn", 1)(raw)
    want = (raw.double().numpy() / 255.0 - P._PIX_MEAN) / P._PIX_STD
    assert got.shape == (4, 1, 16, 16)
    assert got.numpy() == pytest.approx(want, abs=1e-5)
    # The transformer's tokens are the same pixels, 2x2 patches in row-major patch order.
    tok = P._preprocessor("transformer", 1)(raw)
    assert tok.shape == (4, 64, 4)
    assert tok[0, 0].tolist() == pytest.approx(
        [
            got[0, 0, 0, 0].item(),
            got[0, 0, 0, 1].item(),
            got[0, 0, 1, 0].item(),
            got[0, 0, 1, 1].item(),
        ]
    )
    assert tok[0, 1, 0].item() == pytest.approx(got[0, 0, 0, 2].item())  # next patch: 2 right
    # The MLP's rows: log1p, standardised, windows of s*s readings averaged.
    rows = P._raw_requests("mlp", 1, 3, 2, seed=0)[0]
    feats = P._preprocessor("mlp", 2)(rows)
    z = (torch.log1p(rows.double()) - P._LOG_MEAN) / P._LOG_STD
    assert feats.shape == (3, 64)
    assert feats.double().numpy() == pytest.approx(z.reshape(3, 64, 4).mean(-1).numpy(), abs=1e-5)


@pytest.mark.parametrize("workload", ["mlp", "cnn", "transformer"])
def test_pipelined_outputs_equal_sequential(workload: str) -> None:
    old = torch.get_num_threads()
    modes = [Mode("seq2", "sequential", threads=2), SEQ, Mode("pipe", "pipelined", 1, depth=2)]
    r = P.pipeline_job(workload, requests=5, raw_scale=2, modes=modes, keep_outputs=True, warmup=1)
    assert torch.get_num_threads() == old  # restored
    assert _no_stage_thread()
    ref = torch.tensor(r["seq2"].outputs)
    assert ref.shape == (5, 32, 10)
    for name in ("seq", "pipe"):
        run = r[name]
        assert run.inferred_order == list(range(5))
        # Same inputs, same model: equal up to the reduction order of 1 vs 2 threads.
        torch.testing.assert_close(torch.tensor(run.outputs), ref, rtol=1e-4, atol=1e-5)
    # Requests 0 and 4 read the same raw batch (a pool of 4): the same output.
    torch.testing.assert_close(ref[4], ref[0])
    # Bytes of one preprocessed batch, from the model's input shape: 32 x features x 4 bytes.
    per_sample = {"mlp": 64, "cnn": 16 * 16, "transformer": 64 * 4}[workload]
    assert set(r["pipe"].batch_bytes) == {32 * per_sample * 4}
    assert r["pipe"].peak_queue_len <= 2
    assert r["pipe"].peak_queue_bytes <= 2 * 32 * per_sample * 4
    assert r["seq"].peak_queue_bytes == 0  # no queue
    raw_side = 32 if workload != "mlp" else None
    if raw_side:
        assert r["pipe"].raw_bytes == 32 * raw_side * raw_side  # uint8 frames at scale 2
    assert r["pipe"].rss_peak_bytes is None or r["pipe"].rss_peak_bytes > 0


def test_result_round_trips_through_json() -> None:
    r = P.pipeline_job("mlp", requests=3, raw_scale=1, modes=[SEQ, PIPE], warmup=0)
    d = json.loads(json.dumps(r.to_dict()))
    back = PipelineResult.from_dict(d)
    assert back.to_dict() == r.to_dict()
    assert back["pipe"].timing == r["pipe"].timing
    rows = back.table()
    assert [row["mode"] for row in rows] == ["seq", "pipe"]
    assert rows[0]["throughput_rps_vs_first"] == 1.0


def test_pipeline_runs_in_the_service_worker() -> None:
    r = P.pipeline("mlp", requests=3, raw_scale=1, modes=[SEQ, PIPE], warmup=0, timeout_s=120)
    assert isinstance(r, PipelineResult)
    assert r.names == ["seq", "pipe"]
    assert r["pipe"].inferred_order == [0, 1, 2]


# -- figures --------------------------------------------------------------------------------------
def test_figures_draw_every_request() -> None:
    from memlab.plots_pipelining import comparison_figure, gantt_figure

    def pre(r: int) -> int:
        time.sleep(0.002)
        return r

    runs = [P.run_stream(list(range(4)), pre, _slow, m) for m in (SEQ, PIPE)]
    res = PipelineResult("mlp", 32, 1, None, 0, 2, runs)
    g = gantt_figure(res)
    bars = [t for t in g.data if t.type == "bar"]
    assert len(bars) == 6  # queued, preprocess, infer per mode
    infer_bars = [t for t in bars if t.legendgroup == "infer"]
    assert list(infer_bars[1].base) == pytest.approx(
        [1e3 * q.infer_start_s for q in runs[1].requests]
    )
    c = comparison_figure(res)
    thr = c.data[0]
    assert list(thr.y) == pytest.approx([r.throughput_rps for r in runs])
    assert "seq (1 thread)" in thr.x[0]


# -- pinned memory --------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only answer")
def test_pinned_memory_not_measured_on_cpu() -> None:
    r = P.pinned_job()
    assert r.measured is False
    assert r.note.startswith("not measured")
    assert "CUDA" in r.note
    assert r.pinned_copy_s is None and r.pageable_gb_per_s is None  # no figure, not a zero
    assert P.PinnedResult.from_dict(r.to_dict()) == r


def test_pinned_memory_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_bytes must be an int of at least 1 MiB"):
        P.pinned_job(batch_bytes=10)
    with pytest.raises(ValueError, match="batches must be an int of at least 2"):
        P.pinned_job(batches=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_memory_measured_on_cuda() -> None:
    r = P.pinned_job(batch_bytes=16 * 2**20, batches=4)
    assert r.measured is True
    assert r.outputs_match is True  # the overlapped stream computed what the serial one did
    for v in (r.pageable_copy_s, r.pinned_copy_s, r.compute_s, r.serial_s, r.overlapped_s):
        assert v is not None and v > 0
    assert r.batch_bytes == 16 * 2**20
