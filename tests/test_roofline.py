"""memlab.rooflines, the locality examples and their figures: FLOPs and bytes against hand
arithmetic, totals against FlopCounterMode alone, the roofline's algebra, plain-data round
trips, the CLI's errors. No timing assertion anywhere: times are only checked to be measured."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from memlab import devices, locality
from memlab import rooflines as roofline
from memlab.config import Experiment
from memlab.rooflines import OpPoint, RooflineResult

F32 = 4


class _Tiny:
    """What ``_count_pass`` / ``_time_pass`` need of a Workload: a model and ``infer``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)  # type: ignore[no-any-return]


def test_linear_flops_and_bytes_are_exact() -> None:
    b, n_in, n_out = 8, 32, 16
    rows = roofline._count_pass(_Tiny(nn.Linear(n_in, n_out)), torch.randn(b, n_in))
    assert len(rows) == 1 and "linear" in rows[0]["op"]
    assert rows[0]["flops"] == 2 * b * n_in * n_out  # FLOPs of the matmul (bias not counted)
    assert rows[0]["flops_counted"]
    # input + weight + bias read, output written, float32 each
    assert rows[0]["bytes_read"] == (b * n_in + n_out * n_in + n_out) * F32
    assert rows[0]["bytes_written"] == b * n_out * F32


def test_views_move_nothing_and_uncounted_ops_are_marked() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x.t()).contiguous()

    x = torch.randn(4, 6)
    rows = roofline._count_pass(_Tiny(M()), x)
    by = {r["op"].split(".")[1]: r for r in rows}
    assert by["t"]["bytes_read"] == by["t"]["bytes_written"] == 0  # a view
    assert by["relu"]["flops"] == 0 and not by["relu"]["flops_counted"]
    assert by["relu"]["bytes_read"] == by["relu"]["bytes_written"] == 24 * F32


def test_out_argument_is_written_not_read() -> None:
    a, b, out = torch.randn(3, 5), torch.randn(5, 2), torch.empty(3, 2)
    read, written = roofline.op_bytes(torch.ops.aten.mm.out, (a, b), {"out": out}, out)
    assert (read, written) == ((15 + 10) * F32, 6 * F32)
    # the same operand passed twice is read once; a broadcast (stride 0) view counts its data
    read, _ = roofline.op_bytes(torch.ops.aten.mul.Tensor, (a, a), {}, a * a)
    assert read == 15 * F32
    assert roofline.tensor_bytes((4, 3), (0, 1), F32) == 3 * F32


def test_cnn_totals_match_flop_counter_alone_and_sum_over_ops() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from memlab.knobs import build_experiment

    exp = Experiment(workload="cnn", mode="inference", batch_size=4, data_size=4)
    r = roofline.roofline(exp, bandwidth=10.0, requests=1, matmul_n=128, in_worker=False)
    w = build_experiment(exp.replace(data="ram"), "cpu")
    x = next(w.make_batches(1))[0]
    with FlopCounterMode(display=False) as fc:
        w.infer(x)
    assert r.total_flops == fc.get_total_flops() > 0  # independent: the counter alone
    assert r.total_flops == sum(o.flops for o in r.ops)
    assert r.total_bytes == sum(o.bytes_read + o.bytes_written for o in r.ops)
    # every conv: 2 * N * Cout * H * W * Cin * 9 (the stem has Cin = 1)
    convs = [o for o in r.ops if "conv" in o.op]
    assert [o.flops for o in convs] == [2 * 4 * 64 * 256 * 1 * 9] + [2 * 4 * 64 * 256 * 64 * 9] * 4
    assert all(o.time_s > 0 for o in r.ops) and r.request_s > 0  # measured, no speed asserted
    assert r.peak_gflop_per_s > 0 and r.threads >= 1


def test_transformer_attention_flops_are_counted_on_cpu() -> None:
    exp = Experiment(workload="transformer", mode="inference", batch_size=2, data_size=2)
    r = roofline.roofline(exp, bandwidth=10.0, requests=1, matmul_n=64, in_worker=False)
    sdpa = [o for o in r.ops if "scaled_dot_product_attention" in o.op]
    assert sdpa
    # two batched matmuls of (b*h, s, d): 2 * 2 * b * h * s * s * d with b=2, h=4, s=64, d=24
    assert all(o.flops == 2 * 2 * 2 * 4 * 64 * 64 * 24 and o.flops_counted for o in sdpa)


def _result(ops: list[OpPoint], bw: float = 10.0, peak: float = 50.0) -> RooflineResult:
    return RooflineResult(
        experiment={"workload": "mlp"},
        ops=tuple(ops),
        dram_gb_per_s=bw,
        bandwidth_source="given (GB/s)",
        peak_gflop_per_s=peak,
        matmul_n=512,
        threads=2,
        request_s=0.01,
        request_times_s=(0.01, 0.011),
        notes=("n",),
    )


def _op(i: int, flops: int, moved: int, t: float = 1e-3) -> OpPoint:
    return OpPoint(i, "aten.x.default", "m", flops, flops > 0, moved // 2, moved - moved // 2, t)


def test_ridge_classification_and_roof_algebra() -> None:
    r = _result([_op(0, 4_000, 1_000), _op(1, 6_000, 1_000), _op(2, 0, 0), _op(3, 0, 800)])
    assert r.ridge_flop_per_byte == pytest.approx(5.0)  # 50 GFLOP/s / 10 GB/s
    assert [r.bound(o) for o in r.ops] == ["memory", "compute", "none", "memory"]
    assert r.bound(_op(9, 5_000, 1_000)) == "compute"  # at the ridge: compute-bound
    assert r.attainable_gflop_per_s(2.0) == pytest.approx(20.0)
    assert r.attainable_gflop_per_s(100.0) == pytest.approx(50.0)
    assert r.roof_time_s(r.ops[0]) == pytest.approx(1_000 / 10e9)
    assert r.total_bytes == 2_800 and r.total_flops == 10_000
    assert r.time_by_bound() == pytest.approx({"memory": 2e-3, "compute": 1e-3, "none": 1e-3})
    with pytest.raises(ValueError, match="positive"):
        roofline.ridge(1.0, 0.0)


def test_device_estimate_uses_the_profiles_bandwidth() -> None:
    r = _result([_op(0, 10, 3_000_000)])
    p = devices.DeviceProfile("test", 2**30, 2**29, 3.0, "test")
    assert r.device_estimates([p]) == {"test": pytest.approx(3_000_000 / 3.0e9)}
    est = r.device_estimates()
    assert set(est) == set(devices.PROFILES)
    for name, s in est.items():
        assert s == pytest.approx(3_000_000 / (devices.PROFILES[name].bandwidth_gb_per_s * 1e9))


def test_round_trip_through_json() -> None:
    r = _result([_op(0, 4_000, 1_000), _op(1, 0, 0)])
    back = RooflineResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    assert "ridge 5.0" in repr(back)


def test_bad_arguments_name_what_is_allowed() -> None:
    exp = Experiment(workload="mlp", mode="inference")
    with pytest.raises(TypeError, match="memlab.Experiment"):
        roofline.roofline("mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requests must be a positive int"):
        roofline.roofline(exp, requests=0)
    with pytest.raises(ValueError, match="positive GB/s"):
        roofline._dram(-1.0)
    with pytest.raises(TypeError, match="BandwidthResult"):
        roofline._dram("fast")  # type: ignore[arg-type]


def test_a_bandwidth_result_without_plateau_says_so() -> None:
    bw = locality.BandwidthResult(
        points=(locality.BandwidthPoint(2**20, 30.0, 25.0),),
        levels=None,
        dram_gb_per_s=None,
        anchor_gb_per_s=20.0,
        anchor_bytes=2**20,
    )
    gbps, source, notes = roofline._dram(bw)
    assert gbps == 30.0 and "largest working set" in source and "overstates" in notes[0]


# -- locality examples ----------------------------------------------------------------------


def test_lines_touched_counts_whole_lines() -> None:
    assert locality.lines_touched(16, 1, 8, 64) == 2  # 128 contiguous bytes
    assert locality.lines_touched(16, 2, 8, 64) == 4  # span 248 bytes
    assert locality.lines_touched(16, 8, 8, 64) == 16  # one line per element
    assert locality.lines_touched(16, 100, 8, 64) == 16
    assert locality.lines_touched(0, 4, 8, 64) == 0


def test_strided_reads_touch_more_bytes_per_useful_byte() -> None:
    r = locality.strided_access(count=4096, strides=(2, 4, 16), repeats=1, worker=False)
    assert [p.stride for p in r.points] == [1, 2, 4, 16]  # stride 1 always measured
    assert r.buffer_bytes == 4096 * 16 * 8
    ratios = [p.bytes_per_useful_byte for p in r.points]
    line_elems = r.line_bytes // 8
    assert ratios == [pytest.approx(min(k, line_elems), rel=0.01) for k in (1, 2, 4, 16)]
    assert ratios[-1] > ratios[0]
    assert all(p.sum_gb_per_s > 0 and p.copy_gb_per_s > 0 for p in r.points)
    assert math.isfinite(r.slowdown(16)) and r.slowdown(1) == 1.0
    assert locality.StrideResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(ValueError, match="strides must be positive ints"):
        locality.strided_access(count=16, strides=(0,), worker=False)


def test_conv_layouts_shape_and_the_mixed_layout_copy() -> None:
    r = locality.conv_layouts(batch_size=2, large_image=24, repeats=1, worker=False, smoke=True)
    assert [p.name for p in r.points] == ["stem 16x16", "block 16x16", "block 24x24"]
    for p in r.points:
        assert p.nchw_s > 0 and p.channels_last_s > 0
        assert p.output_bytes == 2 * 64 * p.input_shape[2] * p.input_shape[3] * F32
        # the tracker sees at least the output allocated in every case
        assert min(p.nchw_alloc_bytes, p.channels_last_alloc_bytes) >= p.output_bytes
    block = r.points[1]
    n, c, h, w = block.input_shape
    # An NCHW input into channels_last weights is copied to channels_last first: at least the
    # input's bytes more than the all-channels_last forward.
    assert block.mixed_alloc_bytes >= block.channels_last_alloc_bytes + n * c * h * w * F32
    assert block.mixed_output_format == "channels_last"
    assert locality.ConvLayoutResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# -- figures and the CLI --------------------------------------------------------------------


def test_roofline_figure_draws_roofs_ridge_and_counted_ops() -> None:
    from memlab.plots_roofline import conv_layout_figure, roofline_figure, stride_figure

    r = _result([_op(0, 4_000, 1_000), _op(1, 6_000, 1_000, 4e-3), _op(2, 0, 800)])
    fig = roofline_figure(r)
    roof = fig.data[0]
    assert list(roof.y)[1:] == [50.0, 50.0] and roof.x[1] == pytest.approx(5.0)
    assert roof.y[0] == pytest.approx(10.0 * roof.x[0])  # memory roof: bandwidth x intensity
    points: dict[str, Any] = {t.name: t for t in fig.data[2:]}
    assert list(points["memory-bound ops"].x) == [4.0]
    assert list(points["compute-bound ops"].y) == [pytest.approx(6_000 / 4e-3 / 1e9)]
    assert "1 ops with no counted FLOPs not drawn" in fig.layout.title.text
    sr = locality.StrideResult(
        (
            locality.StridePoint(1, 8, 8, 64, 4.0, 3.0),
            locality.StridePoint(8, 8, 8, 512, 1.0, 0.5),
        ),
        64,
        512,
    )
    assert list(stride_figure(sr).data[2].y) == [1.0, 8.0]
    cr = locality.ConvLayoutResult(
        (locality.ConvLayoutPoint("a", (1, 2, 3, 3), 2, 2e-3, 1e-3, 72, 72, 72, 144, "nchw"),), 2
    )
    assert [list(t.y) for t in conv_layout_figure(cr).data] == [[2.0], [1.0]]


def test_cli_rejects_bad_bandwidth_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from memlab.cli import main

    assert main(["roofline", "--bandwidth", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bandwidth must be a positive GB/s number" in err[0]


def test_cli_json_runs_in_the_service_worker(capsys: pytest.CaptureFixture[str]) -> None:
    from memlab.cli import main

    argv = ["roofline", "--workload", "mlp", "--batch-size", "4", "--data-size", "4"]
    assert main([*argv, "--bandwidth", "10", "--requests", "1", "--json"]) == 0
    r = RooflineResult.from_dict(json.loads(capsys.readouterr().out))
    assert r.dram_gb_per_s == 10.0 and r.total_flops > 0 and r.ops
