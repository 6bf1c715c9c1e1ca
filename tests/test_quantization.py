"""Real int8 and int4 (memlab/knobs/quantization.py): bytes by dtype against the layers' own
element counts, accuracy on the real digits against fp32, runs that end ok, RSS in a fresh
process, and the ExecuTorch program's size and arena."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("torchao")
import torch
from torch import nn

import memlab
from memlab.config import Experiment
from memlab.knobs import KnobUnsupported, apply_precision, apply_sparsity, build_experiment
from memlab.knobs import quantization as Q
from memlab.workloads import build_workload
from memlab.workloads.base import param_bytes_by_dtype


def _exp(workload: str, precision: str = "fp32", **kw: object) -> Experiment:
    return Experiment(
        workload=workload,
        mode="inference",
        precision=precision,
        batch_size=32,
        data_size=64,
        **kw,  # type: ignore[arg-type]
    )


def _weight_numel(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> int:
    return sum(int(m.weight.numel()) for m in model.modules() if isinstance(m, kinds))


def test_static_int8_cnn_weights_are_a_quarter() -> None:
    # Independent truth: the fp32 model's own conv and linear weights, one byte each in int8.
    fp32 = build_workload(_exp("cnn"), "cpu")
    weights = _weight_numel(fp32.model, (nn.Conv2d, nn.Linear))
    before = sum(param_bytes_by_dtype(fp32.model).values())
    w = build_experiment(_exp("cnn", "int8-static"))
    after = param_bytes_by_dtype(w.model)
    assert after["int8"] == weights  # every conv and linear weight stored in int8, none twice
    # What is left: 5 folded conv biases + the head's bias (fp32), a per-channel fp32 scale and
    # int64 zero point per output channel: 6 * 64 + 10 channels, ~5 KiB of 150 KiB.
    channels = 5 * 64 + 10
    assert after.get("float32", 0) == 4 * channels + 4 * channels  # biases + scales
    assert after.get("int64", 0) == 8 * channels
    ratio = before / sum(after.values())
    assert 3.7 < ratio < 4.0, ratio  # 4x on the weights, less the bias/scale overhead
    note = w.notes[-1]
    assert note.startswith("int8-static") and "real digits" in note
    assert w.applied["precision"] == "int8-static"
    # Runs at any batch (the export's batch dimension is dynamic).
    out = w.infer(torch.zeros(3, 1, 16, 16))
    assert out.shape == (3, 10)


def test_static_int8_accuracy_close_to_fp32() -> None:
    # A short pretrain (80 steps of 32; 40 left the CNN at 0.13) on the real digits, then the
    # same weights in fp32 and static int8. Measured here: 0.88 fp32 vs 0.88 int8 after 150
    # steps; stated margin 3 points.
    exp = _exp("cnn")
    w = build_workload(exp, "cpu")
    w.fit(80, seed=0)
    acc_fp32 = w.evaluate()
    assert acc_fp32 is not None and acc_fp32 > 0.4  # chance is 0.1
    q = copy.copy(w)
    q.model, q.notes, q.applied, q.measures = copy.deepcopy(w.model), [], {}, {}
    apply_precision(q, "int8-static")
    acc_int8 = q.evaluate()
    assert acc_int8 is not None
    assert abs(acc_int8 - acc_fp32) <= 0.03, (acc_fp32, acc_int8)


def test_weight_only_bytes() -> None:
    # MLP: 10 Linear layers, 8.4M weights. int8: one byte per weight plus one fp32 scale and
    # one int8 zero point per row (torchao's Int8Tensor holds both). int4: one int8 byte per
    # weight (unpacked) plus a scale (fp32) and zero point (int8) per group of 32.
    fp32 = build_workload(_exp("mlp"), "cpu")
    lin = [m for m in fp32.model.modules() if isinstance(m, nn.Linear)]
    numel = sum(m.weight.numel() for m in lin)
    rows = sum(m.out_features for m in lin)
    other = param_bytes_by_dtype(fp32.model)["float32"] - 4 * numel
    w8 = build_experiment(_exp("mlp", "int8-weight"))
    b8 = param_bytes_by_dtype(w8.model)
    assert b8["int8"] == numel + rows
    assert b8["float32"] == other + 4 * rows
    w4 = build_experiment(_exp("mlp", "int4-weight"))
    b4 = param_bytes_by_dtype(w4.model)
    groups = numel // Q.INT4_GROUP_SIZE
    assert b4["int8"] == numel + groups
    assert b4["float32"] == other + 4 * groups
    assert "one per int8 byte" in w4.notes[-1]
    x = torch.randn(4, 64)
    ref = fp32.infer(x)
    # Weight-only int8 is close to fp32; int4 further away, still the same order of magnitude.
    assert float((w8.infer(x) - ref).abs().max()) < 0.1 * float(ref.abs().max())
    assert float((w4.infer(x) - ref).abs().max()) < 0.5 * float(ref.abs().max())


def test_composes_with_mask_pruning() -> None:
    w = build_workload(_exp("mlp"), "cpu")
    apply_sparsity(w, 0.5, "mask")
    apply_precision(w, "int8-weight")
    fc = w.model.blocks[0].fc1
    assert not hasattr(fc, "weight_orig")  # the mask was folded first
    qdata = fc.weight.qdata
    assert float((qdata == 0).float().mean()) >= 0.5  # the pruned zeros survived quantization


def test_clear_errors() -> None:
    train = build_workload(Experiment(workload="cnn", batch_size=8, data_size=8), "cpu")
    with pytest.raises(KnobUnsupported, match="inference"):
        apply_precision(train, "int8-static")
    sparse = build_workload(_exp("mlp"), "cpu")
    apply_sparsity(sparse, 0.9, "sparse")
    with pytest.raises(KnobUnsupported, match="SparseLinear"):
        apply_precision(sparse, "int8-static")
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        Q.quantize_weight_only(sparse, 2)


@pytest.mark.parametrize("precision", ["int8-static", "int8-weight", "int4-weight"])
def test_run_ends_ok(precision: str) -> None:
    exp = Experiment(workload="cnn", mode="inference", precision=precision, batch_size=8, steps=2)
    r = memlab.run(exp)
    assert r.status == "ok", r.error
    assert r.peak_bytes > 0
    assert r.metrics.get("model_bytes_int8", 0) > 0


def test_footprint_in_fresh_processes() -> None:
    exp = _exp("cnn")
    fp32, static = Q.footprint(exp, ("fp32", "int8-static"))
    assert fp32["precision"] == "fp32" and static["precision"] == "int8-static"
    assert static["model_bytes"]["int8"] > 0 and "int8" not in fp32["model_bytes"]
    for f in (fp32, static):
        # Sane: building a model and running a request adds memory, less than 2 GiB, and the
        # peak is at least what stays.
        assert 0 < f["rss_after"] < 2 << 30
        assert f["rss_peak"] >= f["rss_after"] - (1 << 20)  # 1 MiB: pages counted in kB
    with pytest.raises(ValueError, match="precision"):
        Q.footprint(exp, ("int3",))


def test_executorch_program_size_and_arena() -> None:
    pytest.importorskip("executorch")
    exp = _exp("cnn")
    prog = Q.executorch_program(exp, quantize=True, runs=2, calibrate=False)
    w = build_workload(exp, "cpu")
    weights = _weight_numel(w.model, (nn.Conv2d, nn.Linear))
    # The program holds the int8 weights (one byte each) and some framing; far under fp32's.
    assert weights <= prog["pte_bytes"] < 2 * weights
    # The arena holds at least the input batch (32 x 1 x 16 x 16 fp32) and the output.
    assert prog["arena_bytes"] >= 32 * 256 * 4 + 32 * 10 * 4
    assert prog["delegated"] >= 1
