"""Each knob's direction AND size, on real measurements (memlab.track, exact on CPU).

Every measurement: build, one warm-up step (optimizer state and lazy buffers get allocated),
then one tracked step. Figures in comments were measured on the default workloads (batch 32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import memlab
from memlab.config import Experiment
from memlab.knobs import (
    KnobUnsupported,
    SparseLinear,
    apply_checkpointing,
    apply_precision,
    apply_sparsity,
    build_experiment,
    checkpointed_blocks,
    csr_bytes,
    dense_bytes,
    density_crossover,
    param_bytes_by_dtype,
)
from memlab.timeline import RunResult
from memlab.workloads import Workload, build_workload

ROOT = Path(__file__).resolve().parents[1]


def measure(**kw: Any) -> tuple[RunResult, Workload]:
    exp = Experiment(device="cpu", data_size=2 * kw.get("batch_size", 32), **kw)
    w = build_experiment(exp)
    batches = w.make_batches(2)
    x, y = next(batches)
    w.step(x, y)  # warm-up
    x, y = next(batches)
    with memlab.track(w.model, optimizer=w.optimizer, inputs=(x, y)) as rec:
        w.step(x, y)
    assert rec.result is not None
    return rec.result, w


def activation_peak(r: RunResult) -> int:
    return int(r.timeline.by_category["activations"].max())


def params(r: RunResult) -> int:
    """Parameter (and buffer) bytes the tracker found live at the step's start."""
    return r.entry_by_category["parameters"]


# -- checkpointing ---------------------------------------------------------------------------
def test_checkpointing_cuts_transformer_activations() -> None:
    base, _ = measure(workload="transformer")
    every, w = measure(workload="transformer", checkpointing="every-block")
    other, _ = measure(workload="transformer", checkpointing="every-other-block")
    a0, a1, a2 = activation_peak(base), activation_peak(every), activation_peak(other)
    # measured: 51.4 MB -> 10.3 MB (-80 %) every block, 27.7 MB (-46 %) every other block
    assert a1 <= 0.60 * a0, (a0, a1)
    assert a1 < a2 < 0.80 * a0, (a0, a1, a2)
    assert params(every) == params(base)
    assert checkpointed_blocks(w) == [0, 1, 2, 3]
    assert any("recomputed" in n for n in w.notes)


def test_checkpointing_gives_the_same_gradients() -> None:
    exp = Experiment(workload="transformer", batch_size=4, data_size=4, device="cpu")
    a, b = build_workload(exp), build_workload(exp)
    apply_checkpointing(b, "every-block")
    x, y = next(a.make_batches(1))
    for w in (a, b):
        w.loss_fn(w.model(x), y).backward()
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_checkpointing_policies_and_undo() -> None:
    w = build_workload(Experiment(workload="cnn", batch_size=4, data_size=4, device="cpu"))
    assert checkpointed_blocks(apply_checkpointing(w, "every-other-block")) == [0, 2]
    assert checkpointed_blocks(apply_checkpointing(w, 3)) == [0, 3]
    assert checkpointed_blocks(apply_checkpointing(w, "off")) == []
    with pytest.raises(ValueError, match="checkpointing must be one of"):
        apply_checkpointing(w, "sometimes")
    with pytest.raises(ValueError, match="n >= 1"):
        apply_checkpointing(w, 0)


# -- batch size --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["transformer", "cnn"])
def test_doubling_batch_doubles_activations_not_parameters(name: str) -> None:
    small, _ = measure(workload=name, batch_size=16)
    big, _ = measure(workload=name, batch_size=32)
    ratio = activation_peak(big) / activation_peak(small)
    # measured: 2.00 (transformer), 2.00 (cnn)
    assert 1.8 <= ratio <= 2.2, ratio
    assert params(big) == params(small)
    assert big.entry_by_category["inputs"] == 2 * small.entry_by_category["inputs"]


# -- precision ---------------------------------------------------------------------------------
def test_bf16_halves_parameter_bytes() -> None:
    base, w0 = measure(workload="mlp")
    half, w1 = measure(workload="mlp", precision="bf16")
    # measured: 33,769,512 -> 16,884,756 bytes, exactly half (every tensor is floating)
    assert params(half) == pytest.approx(params(base) / 2, rel=0.01)
    assert half.peak_by_category["optimizer_state"] == pytest.approx(
        base.peak_by_category["optimizer_state"] / 2, rel=0.01
    )
    assert set(param_bytes_by_dtype(w1.model)) == {"bfloat16"}
    assert (
        param_bytes_by_dtype(w1.model)["bfloat16"] * 2 == param_bytes_by_dtype(w0.model)["float32"]
    )


def test_amp_keeps_fp32_weights_and_shrinks_saved_activations() -> None:
    base, _ = measure(workload="transformer")
    amp, w = measure(workload="transformer", precision="amp-bf16")
    assert params(amp) == params(base)  # fp32 master weights stay
    assert set(param_bytes_by_dtype(w.model)) == {"float32"}
    # measured: 51.4 MB -> 30.3 MB saved activations (matmul outputs kept in bf16)
    assert activation_peak(amp) <= 0.75 * activation_peak(base)


def test_amp_fp16_trains_with_a_grad_scaler_or_says_unsupported() -> None:
    try:
        _, w = measure(workload="mlp", batch_size=8, precision="amp-fp16")
    except KnobUnsupported as e:  # pragma: no cover - depends on the CPU / torch build
        assert "amp-fp16" in str(e) and "not supported" in str(e)
        return
    assert w.grad_scaler is not None


def test_unsupported_autocast_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import memlab.knobs.precision as P

    monkeypatch.setattr(P, "autocast_unsupported_reason", lambda dev, dt: "no fp16 kernels")
    w = build_workload(Experiment(batch_size=4, data_size=4, device="cpu"))
    with pytest.raises(KnobUnsupported, match=r"'amp-fp16' is not supported on cpu here: no fp16"):
        apply_precision(w, "amp-fp16")


def test_int8_quantizes_linear_weights_for_inference() -> None:
    base = build_workload(Experiment(mode="inference", batch_size=4, data_size=4, device="cpu"))
    before = sum(param_bytes_by_dtype(base.model).values())
    r, w = measure(workload="mlp", mode="inference", precision="int8", batch_size=8)
    by = param_bytes_by_dtype(w.model)
    # measured: 33.8 MB fp32 -> 8.4 MB qint8 + 64 kB fp32 (biases, norms)
    assert by["qint8"] == pytest.approx(before / 4, rel=0.01)
    assert sum(by.values()) <= 0.27 * before
    assert r.status == "ok"
    train = build_workload(Experiment(batch_size=4, data_size=4, device="cpu"))
    with pytest.raises(KnobUnsupported, match="mode 'inference' only"):
        apply_precision(train, "int8")


# -- sparsity ----------------------------------------------------------------------------------
def test_sparse_storage_saves_and_mask_does_not() -> None:
    base, _ = measure(workload="mlp")
    sparse, ws = measure(workload="mlp", sparsity=0.9, sparse_storage="sparse")
    mask, wm = measure(workload="mlp", sparsity=0.9, sparse_storage="mask")
    cut = 1 - params(sparse) / params(base)
    # measured: 33.8 MB -> 10.3 MB (-69.6 %): 10 % of the values at 12 bytes each (fp32 + int64)
    assert cut >= 0.60, cut
    # mask: dense weight_orig + a dense mask buffer (measured 67.5 MB, twice the baseline)
    assert params(mask) >= params(base)
    # ... and gradients and optimizer state stay dense too, while sparse ones shrink with values
    assert mask.peak_by_category["optimizer_state"] == base.peak_by_category["optimizer_state"]
    assert (
        sparse.peak_by_category["optimizer_state"] <= 0.3 * base.peak_by_category["optimizer_state"]
    )
    # the tracker's figure is the CSR arithmetic exactly
    layers = [m for m in ws.model.modules() if isinstance(m, SparseLinear)]
    assert len(layers) == 10
    predicted = sum(csr_bytes(m.out_features, m.in_features, m.nnz) for m in layers) + sum(
        p.numel() * 4 for n, p in ws.model.named_parameters() if not n.endswith("values")
    )
    assert params(sparse) == predicted
    m = ws.metrics
    assert m["model_bytes"] == predicted and m["model_bytes_int64"] > 0
    assert m["sparse_csr_bytes"] < 0.31 * m["sparse_dense_equivalent_bytes"]
    # the narrowest layer (stem, 512 x 64) pays its row pointers on fewer entries: 0.323
    assert m["sparse_density_crossover"] == pytest.approx(1 / 3, abs=0.02)


def test_mask_and_sparse_compute_the_same_function() -> None:
    exp = Experiment(workload="mlp", batch_size=8, data_size=8, device="cpu")
    a, b = build_workload(exp), build_workload(exp)
    apply_sparsity(a, 0.8, "mask")
    apply_sparsity(b, 0.8, "sparse")
    x, _ = next(a.make_batches(1))
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x), rtol=1e-4, atol=1e-5)


def test_sparse_linear_gradients_match_dense_masked() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(40, 30)
    sl = SparseLinear.from_dense(dense, 0.7)
    w = sl.to_dense_weight().detach().clone().requires_grad_(True)
    x = torch.randn(5, 2, 40, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    (sl(x) ** 2).sum().backward()
    ((nn.functional.linear(x2, w, dense.bias) ** 2).sum()).backward()
    assert x.grad is not None and x2.grad is not None and w.grad is not None
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    assert sl.values.grad is not None
    torch.testing.assert_close(sl.values.grad, w.grad[w.detach() != 0], rtol=1e-4, atol=1e-5)
    assert sl.nnz == round(0.3 * 1200)


def test_density_crossover_is_computed() -> None:
    # fp32 values + int64 indices: CSR costs 12 bytes per kept value, so ~1/3 density
    assert density_crossover(1024, 1024) == pytest.approx(1 / 3, abs=1e-3)
    assert density_crossover(1024, 1024, value_bytes=2) == pytest.approx(1 / 5, abs=1e-3)
    assert density_crossover(1024, 1024, index_bytes=4) == pytest.approx(1 / 2, abs=1e-3)
    r, c = 64, 48
    d = density_crossover(r, c)
    nnz = int(d * r * c)
    assert csr_bytes(r, c, nnz) <= dense_bytes(r, c) < csr_bytes(r, c, nnz + 1)
    # measured, not only computed: at sparsity 0.5 (density above 1/3) CSR is bigger than dense
    lin = nn.Linear(256, 256, bias=False)
    half = SparseLinear.from_dense(lin, 0.5)
    assert sum(param_bytes_by_dtype(half).values()) > sum(param_bytes_by_dtype(lin).values())
    tenth = SparseLinear.from_dense(lin, 0.9)
    assert sum(param_bytes_by_dtype(tenth).values()) < sum(param_bytes_by_dtype(lin).values())


def test_sparsity_zero_changes_nothing() -> None:
    w = build_workload(Experiment(batch_size=4, data_size=4, device="cpu"))
    before = param_bytes_by_dtype(w.model)
    apply_sparsity(w, 0.0, "sparse")
    assert param_bytes_by_dtype(w.model) == before
    with pytest.raises(ValueError, match="sparsity must be"):
        apply_sparsity(w, 1.0, "sparse")


# -- composition ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        dict(
            workload="transformer",
            sparsity=0.9,
            sparse_storage="sparse",
            precision="bf16",
            checkpointing="every-block",
        ),
        dict(
            workload="cnn",
            sparsity=0.5,
            sparse_storage="mask",
            precision="amp-bf16",
            checkpointing="every-other-block",
        ),
        dict(
            workload="mlp", mode="inference", sparsity=0.7, sparse_storage="mask", precision="int8"
        ),
        dict(
            workload="transformer",
            mode="inference",
            sparsity=0.9,
            sparse_storage="sparse",
            precision="int8",
            checkpointing="every-block",
        ),
    ],
)
def test_knobs_compose(kw: dict[str, Any]) -> None:
    exp = Experiment(device="cpu", batch_size=8, data_size=16, **kw)
    w = build_experiment(exp)
    for x, y in w.make_batches(3):
        loss = w.step(x, y)
        assert torch.isfinite(loss), kw
    assert all(torch.isfinite(p).all() for p in w.model.parameters())
    assert w.applied["precision"] == kw["precision"] and w.notes


def test_pruned_then_int8_keeps_the_zeros() -> None:
    exp = Experiment(
        workload="mlp",
        mode="inference",
        sparsity=0.7,
        sparse_storage="mask",
        precision="int8",
        batch_size=4,
        data_size=4,
        device="cpu",
    )
    w = build_experiment(exp)
    q = w.model.blocks[0].fc1  # type: ignore[index]
    zeros = float((q.weight().int_repr() == 0).float().mean())
    assert zeros >= 0.69, zeros


# -- data: RAM vs memmap, process memory ---------------------------------------------------------
_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch  # before the first reading: torch's own import is not the data's memory
    from memlab.config import Experiment
    from memlab.tracking.procmem import read_process_memory
    from memlab.workloads import build_workload
    exp = Experiment(workload="cnn", mode="inference", data=sys.argv[1], data_size=65536,
                     batch_size=1024, device="cpu")
    before = read_process_memory()
    w = build_workload(exp, data_dir=sys.argv[2])
    n = sum(1 for _ in w.make_batches())
    after = read_process_memory()
    print(json.dumps({"before": before, "after": after, "batches": n,
                      "dataset_bytes": w.dataset_bytes}))
    """
)


def _rss_run(data: str, data_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, data, str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS parts need Linux /proc")
def test_memmap_keeps_anonymous_memory_small(tmp_path: Path) -> None:
    from memlab.workloads.builtin import SPECS
    from memlab.workloads.data import memmap_path, prepare_memmap

    # Prepare the file here, so the measured process only maps and reads it.
    prepare_memmap(
        memmap_path("cnn", 65536, SPECS["cnn"].input_shape, data_dir=tmp_path),
        65536,
        SPECS["cnn"].input_shape,
    )
    ram = _rss_run("ram", tmp_path)
    mm = _rss_run("memmap", tmp_path)
    size = ram["dataset_bytes"]
    assert size == mm["dataset_bytes"] == 65536 * 256 * 4  # 64 MiB
    assert ram["batches"] == mm["batches"] == 64  # one full pass over every sample

    def grew(r: dict[str, Any], part: str) -> int:
        return int(r["after"][part] - r["before"][part])

    # measured (67.1 MB set): ram +76.8 MB anonymous; memmap +4.4 MB anonymous, +73.3 MB file
    assert grew(ram, "rss_anon") >= 0.9 * size, ram
    assert grew(mm, "rss_anon") <= 0.15 * size, mm
    assert grew(mm, "rss_file") >= 0.5 * size, mm  # the touched pages are the file's


def test_knobs_take_their_vocabulary_from_config() -> None:
    """One vocabulary: the knobs accept exactly config's names and ranges, no copies of them."""
    import memlab.knobs.checkpointing as C
    import memlab.knobs.precision as P
    import memlab.knobs.sparsity as S
    from memlab import config

    assert set(C.POLICIES) == set(config.CHECKPOINTING)
    assert P.PRECISIONS is config.PRECISIONS
    assert not hasattr(S, "STORAGES")
    w = build_workload(Experiment(batch_size=4, data_size=4, device="cpu"))
    with pytest.raises(ValueError, match=f"<= {config.MAX_SPARSITY}"):
        apply_sparsity(w, config.MAX_SPARSITY + 0.005)
    with pytest.raises(ValueError, match="'mask', 'sparse'"):
        apply_sparsity(w, 0.5, "csr")
    with pytest.raises(ValueError, match="'off', 'every-block', 'every-other-block'"):
        apply_checkpointing(w, "sometimes")
    with pytest.raises(ValueError, match="'fp32', 'amp-bf16'"):
        apply_precision(w, "fp64")
