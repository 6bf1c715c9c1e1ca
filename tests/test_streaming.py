"""Weight streaming (``weights="streamed"``, memlab/knobs/streaming.py), issue 13 item 2.

The truths the tests hold it to: the built model's own layer shapes (bytes of each weight),
the resident model's outputs (bit for bit), the thread that ran each load, the file system,
and the process's file-backed RSS from /proc (Linux)."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
import torch
from torch import nn

import memlab
from memlab.config import Experiment
from memlab.estimator import EstimateError, estimate
from memlab.knobs import KnobUnsupported, apply_weights, build_experiment, close_weights
from memlab.knobs.streaming import STREAMED_LAYERS, WeightStreamer
from memlab.tracking import procmem
from memlab.ui.messages import oom_message


def _layer_bytes(model: nn.Module) -> list[int]:
    """Bytes of each streamed layer's weight and bias, from the resident model's tensors."""
    return [
        sum(p.nbytes for p in m.parameters(recurse=False))
        for m in model.modules()
        if isinstance(m, STREAMED_LAYERS)
    ]


def _batch(w: memlab.workloads.Workload) -> torch.Tensor:
    x, _ = next(w.make_batches(1))
    return x


def _folder(result: memlab.RunResult) -> str:
    """The temporary folder the run's streamer wrote its file in (named in its note)."""
    for note in result.notes:
        m = re.search(r"\((\S*memlab-weights-\S+)/weights\.safetensors\)", note)
        if m:
            return m.group(1)
    raise AssertionError(f"no streamed-weights note in {result.notes}")


# -- the acceptance pair: streamed ok, resident oom, under one budget ----------------------------
@pytest.fixture(scope="module")
def mlp_sizes() -> dict[str, int]:
    exp = Experiment(workload="mlp", mode="inference")
    w = build_experiment(exp)
    layers = _layer_bytes(w.model)
    total = sum(p.nbytes for p in w.model.parameters())
    hidden = max(m.out_features for m in w.model.modules() if isinstance(m, nn.Linear))
    # A generous bound on the activations alive at once in a request: a few hidden-wide
    # tensors of the batch (fc1's output, its GELU, the residual stream), fp32.
    activations = 8 * exp.batch_size * hidden * 4
    return {
        "layers": len(layers),
        "largest": max(layers),
        "streamed": sum(layers),
        "resident": total - sum(layers),  # norms: not streamed
        "total": total,
        "activations": activations,
        "batch": exp.batch_size,
    }


def test_streamed_runs_ok_under_a_budget_where_resident_is_oom(mlp_sizes: dict[str, int]) -> None:
    s = mlp_sizes
    need = 2 * s["largest"] + s["resident"] + s["activations"]  # a layer, the prefetched one
    budget = (need + s["total"]) // 2
    assert need < budget < s["total"], s  # the budget sits between the two, from the shapes
    base = Experiment(workload="mlp", mode="inference", budget_bytes=budget, steps=3)

    streamed = memlab.run(base.replace(weights="streamed"))
    assert streamed.status == "ok", streamed.error
    # Weights really were loaded under the tracker: the peak holds at least the largest layer's
    # copy, and at most the bound above.
    assert s["largest"] <= streamed.peak_bytes <= need
    assert streamed.peak_by_category["parameters"] == s["resident"]
    m = streamed.metrics
    assert m["streamed_weight_bytes"] == s["streamed"]
    assert m["stream_bytes_read_per_request"] == s["streamed"]  # every layer, every request
    assert m["stream_layers_per_request"] == s["layers"]
    assert (
        m["stream_prefetch_hits"] + m["stream_prefetch_waits"] == s["layers"] * m["stream_requests"]
    )
    assert not os.path.exists(_folder(streamed))  # the file is gone

    resident = memlab.run(base)
    assert resident.status == "oom"
    assert resident.entry_by_category["parameters"] == s["total"]
    text = oom_message(resident)
    assert "parameters alone need" in text and "no batch size fits" in text
    assert "weights 'streamed'" in text


def test_streamed_oom_removes_the_file_and_says_why(mlp_sizes: dict[str, int]) -> None:
    # Below one layer plus the prefetched one: even streaming cannot fit.
    budget = mlp_sizes["largest"] + mlp_sizes["resident"] + 4096
    r = memlab.run(
        Experiment(
            workload="mlp", mode="inference", weights="streamed", budget_bytes=budget, steps=2
        )
    )
    assert r.status == "oom", r.error
    assert not os.path.exists(_folder(r))
    text = oom_message(r)
    assert "Streamed weights still hold the layer being run" in text
    assert "no batch size fits" not in text  # the resident part alone fits


# -- same outputs, fewer resident bytes --------------------------------------------------------
@pytest.mark.parametrize(
    "workload,precision,fuse",
    [
        ("mlp", "fp32", "none"),
        ("cnn", "fp32", "none"),
        ("transformer", "fp32", "none"),
        ("mlp", "bf16", "none"),
        ("cnn", "fp32", "fold"),
    ],
)
def test_streamed_gives_the_resident_outputs_exactly(
    workload: str, precision: str, fuse: str
) -> None:
    exp = Experiment(workload=workload, mode="inference", precision=precision, fuse=fuse)
    torch.manual_seed(0)
    w = build_experiment(exp)
    x = _batch(w)
    ref = w.infer(x).clone()
    layers = _layer_bytes(w.model)
    before = w.metrics["model_bytes"]
    apply_weights(w, "streamed")
    try:
        for _ in range(2):  # twice: the second request reads through the learned order
            assert torch.equal(w.infer(x), ref)
        assert w.metrics["model_bytes"] == before - sum(layers)  # only the rest is resident
        assert w.measures["stream_layers"] == len(layers)
        assert w.measures["stream_largest_layer_bytes"] == max(layers)
        assert w.measures["stream_requests"] == 2
        # Between requests no layer is held: every streamed weight is the empty placeholder.
        for m in w.model.modules():
            if isinstance(m, STREAMED_LAYERS):
                assert m.weight.numel() == 0
    finally:
        close_weights(w)


# -- the prefetch overlaps the forward ------------------------------------------------------
class _SlowStreamer(WeightStreamer):
    """A load that takes ``load_s`` (an instrumented slow disk), recording which thread ran it."""

    load_s = 0.01
    threads: list[str]

    def load(self, i: int) -> dict[str, torch.Tensor]:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.load_s)
        return super().load(i)


def _slow_layers(model: nn.Module, seconds: float) -> None:
    """Make each streamed layer's forward take ``seconds`` longer than the load (a slow layer)."""
    for m in model.modules():
        if isinstance(m, STREAMED_LAYERS):
            m.register_forward_hook(lambda *a: time.sleep(seconds))


@pytest.mark.parametrize("prefetch", [True, False])
def test_prefetch_loads_the_next_layer_during_this_one(prefetch: bool) -> None:
    w = build_experiment(Experiment(workload="mlp", mode="inference"))
    _slow_layers(w.model, 4 * _SlowStreamer.load_s)
    st = _SlowStreamer(w.model, prefetch=prefetch)
    st.threads = []
    st.bind(w)
    try:
        n = len(st.layers)
        w.infer(_batch(w))
        assert st.requests == 1 and st.layers_loaded == n
        if prefetch:
            # The first layer of a request is always a wait (nothing crosses requests); each
            # later one was loaded on the background thread while the one before ran.
            assert st.hits == n - 1 and st.waits == 1
            assert st.threads.count(st.threads[0]) == 1 and st.threads[0] == "MainThread"
            assert all(t.startswith("memlab-prefetch") for t in st.threads[1:])
        else:
            assert st.hits == 0 and st.waits == n
            assert set(st.threads) == {"MainThread"}
        assert w.measures["stream_hits_per_request"] == st.hits
    finally:
        st.close()


def test_the_layer_order_is_learned_from_the_forward() -> None:
    """A model that calls its layers in another order than it registered them: the first
    request guesses wrong (waits), the second follows the order it saw (hits)."""

    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(self.b(self.c(x)))

    model = Reversed()
    x = torch.randn(4, 8)
    ref = model(x).detach()
    _slow_layers(model, 4 * _SlowStreamer.load_s)
    st = _SlowStreamer(model)
    st.threads = []
    try:
        with torch.inference_mode():
            assert torch.equal(model(x), ref)
            first = st.hits
            assert torch.equal(model(x), ref)
        assert first == 0  # registration order a, b, c; forward runs c, b, a
        assert st.hits - first == 2
    finally:
        st.close()


# -- RSS: the mapping is file-backed ------------------------------------------------------------
@pytest.mark.skipif(
    procmem.read_process_memory().get("rss_file") is None,
    reason="file-backed RSS is read from /proc/self/status (Linux only)",
)
def test_mapped_weights_show_as_file_backed_rss() -> None:
    w = build_experiment(Experiment(workload="mlp", mode="inference"))
    x = _batch(w)
    w.infer(x)  # code pages the first forward maps are not the weights' (resident run first)
    apply_weights(w, "streamed")
    try:
        before = procmem.read_process_memory()["rss_file"]
        w.infer(x)
        after = procmem.read_process_memory()["rss_file"]
        assert before is not None and after is not None
        # Every layer's pages were touched through the mapping: the rise is at least 90% of the
        # streamed bytes (the kernel counts whole 4 KiB pages; the header is on top).
        assert after - before >= 0.9 * w.measures["streamed_weight_bytes"]
    finally:
        close_weights(w)


def test_close_removes_the_folder_and_is_idempotent() -> None:
    w = build_experiment(Experiment(workload="cnn", mode="inference"))
    apply_weights(w, "streamed")
    st = w.model._memlab_weight_streamer
    assert not os.path.exists(st.path)  # unlinked as soon as it was mapped (POSIX)
    close_weights(w)
    close_weights(w)
    assert not os.path.exists(st.folder)


# -- clear errors -----------------------------------------------------------------------------
def test_bad_value_names_the_choices() -> None:
    w = build_experiment(Experiment(workload="mlp", mode="inference"))
    with pytest.raises(ValueError, match=r"weights must be one of \['resident', 'streamed'\]"):
        apply_weights(w, "disk")


def test_resident_changes_nothing() -> None:
    w = build_experiment(Experiment(workload="mlp", mode="inference"))
    params = [p.data_ptr() for p in w.model.parameters()]
    apply_weights(w, "resident")
    assert [p.data_ptr() for p in w.model.parameters()] == params
    assert w.applied["weights"] == "resident"


@pytest.mark.parametrize(
    "fields,words",
    [
        ({"precision": "int8"}, "precision 'int8'"),
        ({"precision": "amp-bf16"}, "precision 'amp-bf16'"),
        ({"sparsity": 0.5}, "sparsity > 0"),
        ({"compression": "svd"}, "compression 'svd'"),
        ({"allocation": "preallocated"}, "allocation 'preallocated'"),
    ],
)
def test_settings_it_cannot_stream_say_so(fields: dict[str, object], words: str) -> None:
    exp = Experiment(workload="mlp", mode="inference", weights="streamed", **fields)  # type: ignore[arg-type]
    with pytest.raises(KnobUnsupported, match=re.escape(words)):
        build_experiment(exp)


def test_training_workload_is_refused() -> None:
    w = build_experiment(Experiment(workload="mlp", mode="train"))
    with pytest.raises(KnobUnsupported, match="mode 'inference' only"):
        apply_weights(w, "streamed")


def test_estimate_says_it_cannot() -> None:
    with pytest.raises(EstimateError, match="weights 'streamed' cannot be estimated"):
        estimate(Experiment(workload="mlp", mode="inference", weights="streamed"))


def test_a_request_that_fails_half_way_leaves_nothing_behind() -> None:
    w = build_experiment(Experiment(workload="mlp", mode="inference"))
    x = _batch(w)
    ref = w.infer(x).clone()
    apply_weights(w, "streamed")
    fc1 = w.model.blocks[1].fc1
    calls = []

    def fail_once(*args: object) -> None:
        if not calls:
            calls.append(1)
            raise RuntimeError("a layer failed")

    fc1.register_forward_pre_hook(fail_once)  # after the streamer's: the weights are loaded
    try:
        with pytest.raises(RuntimeError, match="a layer failed"):
            w.infer(x)
        assert fc1.weight.numel() > 0  # the failed request left fc1's weights loaded...
        assert torch.equal(w.infer(x), ref)  # ...the next request drops them and runs right
        assert all(m.weight.numel() == 0 for m in w.model.modules() if isinstance(m, nn.Linear))
    finally:
        close_weights(w)
