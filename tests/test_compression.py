"""The compression knob (memlab/knobs/compression.py): svd and shared weights, against truths
computed independently of the knob: bytes from the layers' shapes, numpy's packbits for the
bit layout, the Eckart-Young error of a truncated SVD, the Lloyd-Max error of a Gaussian, and
the real digits' accuracy of the uncompressed model."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from memlab import Experiment  # noqa: E402
from memlab.config import ConfigError  # noqa: E402
from memlab.knobs import apply_compression, apply_sparsity, build_experiment  # noqa: E402
from memlab.knobs.compression import (  # noqa: E402
    LowRank,
    SharedConv2d,
    SharedLinear,
    SharedSparseLinear,
    kmeans_1d,
    pack_indices,
    unpack_indices,
)
from memlab.knobs.sparsity import SparseLinear  # noqa: E402
from memlab.workloads import build_workload  # noqa: E402
from memlab.workloads.base import param_bytes_by_dtype  # noqa: E402


def _workload(name: str, mode: str = "inference", **kw: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_workload(Experiment(workload=name, mode=mode, batch_size=8, data_size=8, **kw))


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


# -- packing ----------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_then_unpack_gives_the_indices_back(bits: int, data: st.DataObject) -> None:
    idx = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=80))
    t = torch.tensor(idx, dtype=torch.int64)
    packed = pack_indices(t, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(len(idx) * bits / 8)  # densely: b bits per index
    # The layout is numpy's little-endian bit stream (an independent packer).
    stream = ((np.array(idx, dtype=np.int64)[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    assert packed.numpy().tobytes() == np.packbits(stream.ravel(), bitorder="little").tobytes()
    assert unpack_indices(packed, bits, len(idx)).tolist() == idx


def test_pack_rejects_out_of_range_indices_and_bits() -> None:
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\) for 3 bits"):
        pack_indices(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="codebook_bits must be an integer from 1 to 8, got 9"):
        pack_indices(torch.tensor([1]), 9)


# -- 1-D k-means ------------------------------------------------------------------------------
def test_kmeans_reaches_the_lloyd_max_error_of_a_gaussian() -> None:
    """The optimal 2- and 4-level quantizers of N(0, 1) have mean squared errors 0.3634 and
    0.1175 (Max, "Quantizing for minimum distortion", 1960, table I); Lloyd's iterations
    from a linear start reach them, and the error falls with every extra bit."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    errors = []
    for bits in range(1, 7):
        c, idx = kmeans_1d(x, 2**bits)
        assert torch.all(c[1:] >= c[:-1])  # sorted centroids
        errors.append(float(((c[idx] - x) ** 2).mean()))
    assert errors[0] == pytest.approx(0.3634, rel=0.02)
    assert errors[1] == pytest.approx(0.1175, rel=0.02)
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


# -- bytes from shapes ------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "rank"), [("mlp", 16), ("cnn", 2), ("cnn", 16)])
def test_svd_bytes_are_rank_times_in_plus_out(name: str, rank: int) -> None:
    w = _workload(name)
    total = sum(param_bytes_by_dtype(w.model).values())
    expected = total
    factored = dense = 0
    for _, m in _layers(w.model):
        out_f, in_f = m.weight.shape[0], m.weight[0].numel()
        r = min(rank, out_f, in_f)
        if r * (out_f + in_f) < out_f * in_f:
            expected += 4 * (r * (out_f + in_f) - out_f * in_f)
            factored += 1
        else:
            dense += 1
    apply_compression(w, "svd", rank=rank)
    assert sum(param_bytes_by_dtype(w.model).values()) == expected
    assert sum(isinstance(m, LowRank) for m in w.model.modules()) == factored
    assert w.measures["compression_left_dense"] == dense
    assert f"{dense} layers left dense" in w.notes[-1] or dense == 0
    assert w.applied == {"compression": "svd", "rank": rank}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_shared_bytes_are_packed_indices_plus_a_codebook(name: str, bits: int) -> None:
    w = _workload(name)
    before = param_bytes_by_dtype(w.model)
    packed = codebooks = weights = 0
    for _, m in _layers(w.model):
        n = m.weight.numel()
        if math.ceil(n * bits / 8) + 4 * 2**bits < 4 * n:
            packed += math.ceil(n * bits / 8)
            codebooks += 4 * 2**bits
            weights += 4 * n
    apply_compression(w, "shared", codebook_bits=bits)
    after = param_bytes_by_dtype(w.model)
    assert after["uint8"] == packed
    assert after["float32"] == before["float32"] - weights + codebooks
    assert "uint8" in str(after) and w.measures["compression_weight_bytes_after"] == (
        packed + codebooks
    )
    assert "temporaries" in w.notes[-1]


# -- reconstruction ---------------------------------------------------------------------------
def test_svd_error_is_the_discarded_singular_values_and_falls_with_rank() -> None:
    """Eckart-Young: the rank-r error's squared Frobenius norm is the sum of the discarded
    squared singular values (computed here by torch.linalg.svdvals, not by the knob)."""
    torch.manual_seed(0)
    lin = nn.Linear(96, 64)
    sv = torch.linalg.svdvals(lin.weight.detach())
    errs = []
    for rank in (1, 4, 16, 32):
        w = _workload("mlp")
        w.model = nn.Sequential(nn.Linear(96, 64))
        w.model[0].load_state_dict(lin.state_dict())
        apply_compression(w, "svd", rank=rank)
        lr = w.model[0]
        assert isinstance(lr, LowRank) and lr.rank == rank
        approx = lr[1].weight @ lr[0].weight
        err = float(torch.linalg.matrix_norm(approx - lin.weight).square().detach())
        assert err == pytest.approx(float(sv[rank:].square().sum()), rel=1e-3)
        x = torch.randn(5, 96)
        assert torch.allclose(lr(x), x @ approx.T + lin.bias, atol=1e-5)
        errs.append(err)
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs


def test_shared_error_falls_with_bits_and_the_forward_uses_the_codebook() -> None:
    w0 = _workload("cnn")
    errs = []
    for bits in (1, 2, 4, 8):
        w = _workload("cnn")
        apply_compression(w, "shared", codebook_bits=bits)
        conv = w.model.blocks[0].conv
        assert isinstance(conv, SharedConv2d)
        ref = w0.model.blocks[0].conv.weight.detach()
        got = conv.weight()
        assert got.shape == ref.shape and got.unique().numel() <= 2**bits
        errs.append(float((got - ref).square().mean()))
        x = torch.randn(2, 64, 16, 16)
        assert torch.allclose(conv(x), nn.functional.conv2d(x, got, None, 1, 1), atol=1e-5)
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs


# -- accuracy on the real digits --------------------------------------------------------------
PRETRAIN = 80  # steps of 32 on the real digits: ~0.9 accuracy, seconds on an idle 2-core CPU


@pytest.fixture(scope="module")
def trained_mlp() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    w = build_workload(Experiment(workload="mlp", batch_size=32, data_size=32))
    w.fit(PRETRAIN, seed=0)
    return {k: v.detach().clone() for k, v in w.model.state_dict().items()}


def _compressed(state: dict[str, torch.Tensor], **kw: object):  # type: ignore[no-untyped-def]
    exp = Experiment(workload="mlp", mode="inference", batch_size=32, data_size=32, **kw)
    w = build_workload(exp)
    w.model.load_state_dict(state)
    return apply_compression(w, exp.compression, exp.rank, exp.codebook_bits)


def _accuracy(state: dict[str, torch.Tensor], **kw: object) -> float:
    acc = _compressed(state, **kw).evaluate()
    assert acc is not None
    return acc


def test_accuracy_and_logits_against_the_uncompressed_model(
    trained_mlp: dict[str, torch.Tensor],
) -> None:
    """Stated tolerances, on the digits' test split: rank 128 within 3 points and 8 bits within
    2 points of the uncompressed model's accuracy; rank 1 at least 30 points below it (measured:
    0.16 against 0.95). One bit is not asserted lower: measured, the MLP kept 0.94 of 0.95 with
    two shared values per layer (a sign and one scale), so what is asserted is what every lost
    bit and rank does cost: the logits move further from the uncompressed model's."""
    plain = _compressed(trained_mlp)
    base = plain.evaluate()
    assert base is not None and base > 0.75, base
    splits = plain._splits()
    assert splits is not None
    x = splits[1][0][:256]
    with torch.inference_mode():
        ref = plain.model(x)
    acc: dict[tuple[str, int], float] = {}
    moved: dict[tuple[str, int], float] = {}
    for kind, values in (("svd", (1, 16, 128)), ("shared", (1, 2, 4, 8))):
        for v in values:
            kw = {"rank": v} if kind == "svd" else {"codebook_bits": v}
            w = _compressed(trained_mlp, compression=kind, **kw)
            acc[kind, v] = w.evaluate() or 0.0
            with torch.inference_mode():
                moved[kind, v] = float((w.model(x) - ref).norm() / ref.norm())
    assert acc["svd", 128] >= base - 0.03, (base, acc)
    assert acc["shared", 8] >= base - 0.02, (base, acc)
    assert acc["svd", 1] <= base - 0.30, (base, acc)
    for kind in ("svd", "shared"):
        m = [moved[k] for k in sorted(moved) if k[0] == kind]
        assert all(a > b for a, b in zip(m, m[1:], strict=False)), moved
    assert moved["shared", 8] < 0.02, moved  # 256 shared values: nearly the fp32 model


# -- composition ------------------------------------------------------------------------------
def test_shared_after_mask_pruning_keeps_the_zeros_exact() -> None:
    w = _workload("mlp")
    apply_sparsity(w, 0.7, "mask")
    masks = {n: m.weight_mask.clone() for n, m in _layers(w.model)}
    w.applied["sparsity"] = 0.7
    apply_compression(w, "shared", codebook_bits=2)
    for name, mask in masks.items():
        layer = w.model.get_submodule(name)
        assert isinstance(layer, SharedLinear), name
        got = layer.weight()
        assert torch.equal(got == 0, mask == 0), name  # pruned stays 0.0, survivors nonzero
        assert layer.codebook[0] == 0 and got.unique().numel() <= 4
    assert "pruned zeros kept exact" in w.notes[-1] and "masks folded first" in w.notes[-1]
    assert not any(hasattr(m, "weight_mask") for m in w.model.modules())


def test_shared_codes_the_csr_values_of_sparse_storage() -> None:
    w = _workload("mlp")
    apply_sparsity(w, 0.9, "sparse")
    sl = w.model.blocks[0].fc1
    assert isinstance(sl, SparseLinear)
    vals = sl.values.detach().clone()
    x = torch.randn(4, sl.in_features)
    apply_compression(w, "shared", codebook_bits=4)
    layer = w.model.blocks[0].fc1
    assert isinstance(layer, SharedSparseLinear)
    coded = layer.weight()
    assert coded.shape == vals.shape and coded.unique().numel() <= 16
    dense = torch.sparse_csr_tensor(
        layer.crow_indices, layer.col_indices, coded, (sl.out_features, sl.in_features)
    ).to_dense()
    with torch.inference_mode():
        assert torch.allclose(layer(x), x @ dense.T + layer.bias, atol=1e-4)
    by = param_bytes_by_dtype(w.model)
    nnz = sum(m.numel for m in w.model.modules() if isinstance(m, SharedSparseLinear))
    n_layers = sum(isinstance(m, SharedSparseLinear) for m in w.model.modules())
    assert by["uint8"] == sum(
        math.ceil(m.numel * 4 / 8) for m in w.model.modules() if isinstance(m, SharedSparseLinear)
    )
    assert n_layers == 10 and nnz > 0
    assert "CSR layers have their values coded" in w.notes[-1]


def test_svd_and_sparse_storage_is_a_clear_error() -> None:
    w = _workload("mlp")
    apply_sparsity(w, 0.9, "sparse")
    with pytest.raises(ConfigError, match="svd and sparse storage cannot be combined: "):
        apply_compression(w, "svd", rank=8)


def test_int8_quantizes_the_svd_factors_and_leaves_shared_layers_alone() -> None:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    w = build_experiment(
        Experiment(
            workload="mlp",
            mode="inference",
            compression="svd",
            rank=8,
            precision="int8",
            batch_size=8,
            data_size=8,
        )
    )
    lowrank = [m for m in w.model.modules() if isinstance(m, LowRank)]
    assert lowrank and all(isinstance(q, QLinear) for m in lowrank for q in m)
    w = build_experiment(
        Experiment(
            workload="mlp",
            mode="inference",
            compression="shared",
            precision="int8",
            batch_size=8,
            data_size=8,
        )
    )
    assert not any(isinstance(m, QLinear) for m in w.model.modules())
    assert sum(isinstance(m, SharedLinear) for m in w.model.modules()) == 10


def test_bad_settings_are_clear_errors() -> None:
    w = _workload("mlp", mode="train")
    with pytest.raises(ValueError, match=r"compression must be one of \['none', 'svd', 'shared'\]"):
        apply_compression(w, "prune")
    with pytest.raises(ValueError, match="rank must be an integer >= 1, got 0"):
        apply_compression(w, "svd", rank=0)
    with pytest.raises(ValueError, match="codebook_bits must be an integer from 1 to 8, got 0"):
        apply_compression(w, "shared", codebook_bits=0)
    with pytest.raises(ConfigError, match="compression 'shared' .* mode 'inference' only"):
        apply_compression(w, "shared")
    with pytest.raises(ConfigError, match="compression 'shared' .* mode 'inference' only"):
        Experiment(workload="mlp", mode="train", compression="shared")


# -- in a run ---------------------------------------------------------------------------------
def test_a_shared_run_ends_ok_with_the_packed_parameters() -> None:
    """The run's parameters category is the packed model's bytes (from the shapes), far below
    the dense fp32 weights, and its temporaries hold the unpacked weights."""
    import memlab

    exp = Experiment(
        workload="mlp",
        mode="inference",
        compression="shared",
        codebook_bits=4,
        batch_size=8,
        steps=2,
    )
    r = memlab.run(exp, timeout_s=300)
    assert r.status == "ok", r.error
    dense = _workload("mlp")
    dense_bytes = sum(param_bytes_by_dtype(dense.model).values())
    packed = dense_bytes
    for _, m in _layers(dense.model):
        n = m.weight.numel()
        packed += math.ceil(n * 4 / 8) + 4 * 16 - 4 * n
    assert r.peak_by_category["parameters"] == packed < dense_bytes / 7
    biggest = max(m.weight.numel() for _, m in _layers(dense.model))
    assert r.peak_by_category["temporaries"] >= 4 * biggest  # one unpacked fp32 weight at least


def test_svd_trains_in_a_run() -> None:
    import memlab

    exp = Experiment(workload="mlp", mode="train", compression="svd", rank=8, batch_size=8, steps=2)
    r = memlab.run(exp, timeout_s=300)
    assert r.status == "ok", r.error
    w = _workload("mlp", mode="train")
    apply_compression(w, "svd", rank=8)
    n = sum(param_bytes_by_dtype(w.model).values())
    assert r.peak_by_category["parameters"] == n
    assert r.peak_by_category["gradients"] == n  # every factor learns
    assert r.peak_by_category["optimizer_state"] >= 2 * n  # Adam's two moments of each


def test_shared_runs_under_a_planned_arena_with_the_same_output() -> None:
    """allocation 'preallocated' traces the unpacking into its ATen graph: the arena holds
    the unpacked weights, and the request computes what the eager model computes."""
    exp = Experiment(
        workload="cnn",
        mode="inference",
        compression="shared",
        codebook_bits=3,
        batch_size=8,
        data_size=8,
    )
    torch.manual_seed(0)
    eager = build_experiment(exp)
    torch.manual_seed(0)
    planned = build_experiment(exp.replace(allocation="preallocated"))
    x, _ = next(eager.make_batches(1))
    assert torch.allclose(eager.infer(x), planned.infer(x), atol=1e-5)
