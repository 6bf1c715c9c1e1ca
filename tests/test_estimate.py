"""memlab.estimate against real measurements of the same step (memlab.track, itself checked
against the profiler), on models memlab has never seen; and nothing of model size allocated."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import memlab  # noqa: E402
from memlab.estimator import EstimateError, estimate  # noqa: E402

from . import test_track  # noqa: E402  (the same small models the tracker is tested on)

TOLERANCE = 0.03  # the bar: within 3% of the measured allocator peak


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.body(x)


class Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.src = nn.Embedding(100, 64)
        self.tgt = nn.Embedding(100, 64)
        self.t = nn.Transformer(64, 4, 2, 2, 128, dropout=0.0, batch_first=True)
        self.head = nn.Linear(64, 100)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.t(self.src(x), self.tgt(x))).mean(1)


def mlp() -> nn.Module:
    return test_track.mlp()[0]


def cnn() -> nn.Module:
    return test_track.small_cnn()[0]


CASES = {
    "mlp": (mlp, lambda: (torch.randn(64, 256), torch.randint(0, 10, (64,)))),
    "cnn": (cnn, lambda: (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))),
    "lstm": (LSTMNet, lambda: (torch.randn(16, 20, 32), torch.randint(0, 10, (16,)))),
    "depthwise": (Depthwise, lambda: (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))),
    "seq2seq": (Seq2Seq, lambda: (torch.randint(0, 100, (8, 16)), torch.randint(0, 100, (8,)))),
}


def measure(model_fn, batch_fn, optimizer_fn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Real first-step and steady-state peaks of the same step, by memlab.track."""
    torch.manual_seed(0)
    model = model_fn()
    opt = optimizer_fn(list(model.parameters()))
    peaks = []
    for _ in range(2):
        x, y = batch_fn()
        with memlab.track(model, optimizer=opt, inputs=(x, y), sample_interval_s=None) as rec:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        del x, y
        assert rec.result is not None
        peaks.append(rec.result.peak_bytes)
    return peaks[0], peaks[1]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("optim", ["adam", "sgd"])
def test_within_3_percent_of_the_measured_peak(name: str, optim: str) -> None:
    model_fn, batch_fn = CASES[name]
    make = {
        "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    }[optim]
    first, steady = measure(model_fn, batch_fn, make)
    est = estimate(model_fn, batch_fn, optimizer_fn=make)
    assert abs(est.first_step_peak_bytes - first) <= TOLERANCE * first, (est, first)
    assert abs(est.steady_peak_bytes - steady) <= TOLERANCE * steady, (est, steady)
    assert est.peak_bytes == max(est.first_step_peak_bytes, est.steady_peak_bytes)
    assert sum(est.peak_by_category.values()) == est.peak_bytes


def test_the_op_memo_changes_no_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder's op memo (kept between a search's candidates) against FakeTensorMode's own
    dispatch of every op: the same events, so the same bytes, category for category, for
    models with views, ``_unsafe_view`` (attention), the LSTM workspace and Adam/SGD state, and
    for a built-in experiment (its parameters faked without ``from_tensor``)."""
    from memlab import estimator
    from memlab.config import Experiment

    adam = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    sgd = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    calls = [
        (lambda: estimate(*CASES["seq2seq"], optimizer_fn=adam)),
        (lambda: estimate(*CASES["lstm"], optimizer_fn=sgd)),
        (lambda: estimate(Experiment(workload="cnn", batch_size=8, precision="amp-bf16"))),
    ]

    def facts(e: memlab.Estimate) -> tuple[object, ...]:
        return (
            e.first_step_peak_bytes,
            e.steady_peak_bytes,
            e.peak_by_category,
            e.peak_by_phase,
            e.activations_by_module,
        )

    for call in calls:
        call()  # fills the memo: the calls below replay every op they can
    with_memo = [facts(call()) for call in calls]
    hits = len(estimator._MEMO.entries)

    def uncacheable(*a: object) -> None:
        raise estimator._Uncacheable

    monkeypatch.setattr(estimator._OpMemo, "key", staticmethod(uncacheable))
    # and every op through FakeTensorMode: no shortcut for the step counters either
    monkeypatch.setattr(estimator, "_constant_op", lambda *a: estimator._NO_SHORTCUT)
    without = [facts(call()) for call in calls]
    assert hits > 100  # the memo was in use
    assert with_memo == without


def test_the_recorder_shortcuts_match_fake_tensor_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder answers some calls without FakeTensorMode: ``view``/``_unsafe_view`` on a
    shape the memo has not seen, and ``add_``/``.item()`` on Adam's step counters (constants).
    Replayed outputs are FakeTensors made without ``FakeTensor.__new__``, fake parameters
    without ``nn.Parameter``'s detach. With
    ``_CHECK_SHORTCUTS`` each is also done the ordinary way and compared: a view's metadata,
    storage and dispatch keys, a counter's value and identity, a FakeTensor's attributes and
    dispatch keys, a parameter's metadata, flags and autograd state."""
    from memlab import estimator
    from memlab.config import Experiment

    monkeypatch.setattr(estimator, "_CHECK_SHORTCUTS", True)
    monkeypatch.setattr(estimator, "_SHORTCUTS_CHECKED", {})
    monkeypatch.setattr(estimator._MEMO, "entries", {})  # every shape new
    adam = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    adamw = lambda p: torch.optim.AdamW(p, lr=1e-3)  # noqa: E731
    estimate(*CASES["seq2seq"], optimizer_fn=adam)
    estimate(*CASES["lstm"], optimizer_fn=adamw)
    estimate(Experiment(workload="transformer", batch_size=4, mode="inference"))
    checked = estimator._SHORTCUTS_CHECKED
    for op in ("view", "_unsafe_view", "add_.Tensor", "_local_scalar_dense"):
        assert any(k.startswith(f"aten.{op}") and n > 0 for k, n in checked.items()), checked
    assert checked["FakeTensor"] > 100  # replayed outputs made without FakeTensor.__new__
    assert checked["Parameter"] > 10  # fake parameters flagged without a detach


def test_inference_estimate() -> None:
    model_fn, batch_fn = CASES["cnn"]
    model = model_fn().eval()
    x, y = batch_fn()
    with torch.no_grad():
        model(x)
        with memlab.track(model, inputs=(x,), sample_interval_s=None) as rec:
            model(x)
    est = estimate(model_fn, lambda: (x, y))
    assert rec.result is not None
    real = rec.result.peak_bytes
    assert abs(est.peak_bytes - real) <= TOLERANCE * real, (est.peak_bytes, real)
    assert est.peak_by_category["gradients"] == 0 and est.peak_by_category["optimizer_state"] == 0


def test_a_100gb_model_is_estimated_without_allocating_it() -> None:
    from memlab.tracking.procmem import read_process_memory

    class Huge(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # 10 x 50,000 x 50,000 fp32 weights: 100 GB, four times this machine's RAM
            self.layers = nn.ModuleList(nn.Linear(50_000, 50_000) for _ in range(10))

        def forward(self, x):  # type: ignore[no-untyped-def]
            for layer in self.layers:
                x = layer(x)
            return x

    estimate(mlp, CASES["mlp"][1], optimizer_fn=lambda p: torch.optim.Adam(p))  # imports
    before = read_process_memory()["rss"]
    est = estimate(
        Huge,
        lambda: (torch.randn(8, 50_000), torch.randint(0, 10, (8,))),
        optimizer_fn=lambda p: torch.optim.Adam(p),
    )
    after = read_process_memory()["rss"]
    assert before is not None and after is not None
    params = 10 * (50_000 * 50_000 + 50_000) * 4
    assert est.peak_by_category["parameters"] == params
    assert est.peak_by_category["optimizer_state"] >= 2 * params
    assert after - before < 256 * 2**20  # RSS barely moves: nothing of model size was allocated


def test_data_dependent_model_names_the_op() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):  # type: ignore[no-untyped-def]
            if self.fc(x).sum().item() > 0:  # a Python branch on a value: fake tensors have none
                return self.fc(x)
            return x

    with pytest.raises(EstimateError, match="_local_scalar_dense"):
        estimate(Gate, lambda: (torch.randn(2, 8), torch.randint(0, 8, (2,))))


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="model_fn must be a callable"):
        estimate(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batch_fn must be a callable"):
        estimate(mlp)
    with pytest.raises(TypeError, match="must return an nn.Module"):
        estimate(lambda: "model", CASES["mlp"][1])


def test_user_model_precisions_are_configs_and_the_rest_are_refused() -> None:
    from memlab.config import PRECISIONS
    from memlab.estimator import USER_MODEL_PRECISIONS

    assert set(USER_MODEL_PRECISIONS) < set(PRECISIONS)
    for p in set(PRECISIONS) - set(USER_MODEL_PRECISIONS):
        with pytest.raises(ValueError, match=f"precision must be one of fp32, .* got '{p}'"):
            estimate(mlp, CASES["mlp"][1], precision=p)


@pytest.mark.slow
def test_memmap_estimate_says_why_it_is_off_by_the_inputs() -> None:
    """A memmap batch is numpy memory torch wraps: the run does not count it, the prediction
    does. The note says so, and the difference is the inputs (measured, not assumed)."""
    from memlab import Experiment, estimate, run

    exp = Experiment(workload="mlp", batch_size=64, data="memmap", steps=2, warmup=1)
    est = estimate(exp)
    assert any("data=memmap" in n for n in est.notes), est.notes
    r = run(exp)
    assert r.status == "ok", r.error
    assert r.peak_by_category["inputs"] == 0 < est.peak_by_category["inputs"]
    gap = est.peak_bytes - r.peak_bytes
    assert gap == pytest.approx(est.peak_by_category["inputs"], rel=0.05), (gap, est)
    assert not any("memmap" in n for n in estimate(exp.replace(data="ram")).notes)


@pytest.mark.parametrize("workload", ["cnn", "transformer"])
def test_an_inference_experiment_is_estimated_as_the_run_measures_it(workload: str) -> None:
    """An inference run tracks one forward per request (Workload.infer, no loss): the estimate
    of the same Experiment predicts that peak within 3%."""
    from memlab import Experiment
    from memlab.runner import run

    exp = Experiment(workload=workload, mode="inference", batch_size=16, steps=2, warmup=1)
    r = run(exp, timeout_s=240)
    assert r.status == "ok", r.error
    est = estimate(exp)
    assert abs(est.peak_bytes - r.peak_bytes) <= TOLERANCE * r.peak_bytes, (
        est.peak_bytes,
        r.peak_bytes,
    )


@pytest.mark.parametrize(
    "knobs",
    [
        {"mode": "train", "compression": "svd", "rank": 16},
        {"mode": "inference", "compression": "shared", "codebook_bits": 3},
    ],
    ids=["svd-train", "shared-inference"],
)
def test_a_compressed_experiment_is_estimated_within_3_percent(knobs: dict[str, object]) -> None:
    """The estimator builds the real model, applies the knobs (svd's factor layers, shared's
    packed uint8 codes and codebook), then swaps every parameter and buffer for a fake: the
    factored step, and the shared forward's unpacked weights (temporaries), are predicted."""
    from memlab import Experiment
    from memlab.runner import run

    exp = Experiment(workload="mlp", batch_size=16, steps=2, warmup=1, **knobs)  # type: ignore[arg-type]
    r = run(exp, timeout_s=240)
    assert r.status == "ok", r.error
    est = estimate(exp)
    assert est.peak_by_category["parameters"] == r.peak_by_category["parameters"]
    assert abs(est.peak_bytes - r.peak_bytes) <= TOLERANCE * r.peak_bytes, (
        est.peak_bytes,
        r.peak_bytes,
    )


def test_amp_fp16_training_is_estimated_within_3_percent() -> None:
    """The GradScaler's overflow check reads a value (``found_inf.item()``): the estimator
    answers "no overflow" for those flags alone, so the step (optimizer included) is predicted
    as the run takes it; any other scalar read still names the op
    (test_data_dependent_model_names_the_op)."""
    from memlab import Experiment
    from memlab.runner import run

    exp = Experiment(workload="mlp", precision="amp-fp16", batch_size=16, steps=2, warmup=1)
    r = run(exp, timeout_s=240)
    assert r.status == "ok", r.error
    est = estimate(exp)
    assert est.peak_by_phase["optimizer"] > 0
    assert abs(est.peak_bytes - r.peak_bytes) <= TOLERANCE * r.peak_bytes, (est, r.peak_bytes)
    assert any("amp-fp16" in n for n in est.notes), est.notes


def test_sparse_storage_is_estimated_within_3_percent() -> None:
    """CSR storage: torch's sparse kernels cannot run on fake tensors, so the estimator adds
    their internal buffers (estimate_ops.csr_*, measured) to the outputs SparseMM allocates;
    the transformer's transposed input gradients also take gelu_backward's copies."""
    from memlab import Experiment
    from memlab.runner import run

    exp = Experiment(
        workload="transformer",
        sparsity=0.9,
        sparse_storage="sparse",
        batch_size=16,
        steps=2,
        warmup=1,
    )
    r = run(exp, timeout_s=240)
    assert r.status == "ok", r.error
    est = estimate(exp)
    assert abs(est.peak_bytes - r.peak_bytes) <= TOLERANCE * r.peak_bytes, (est, r.peak_bytes)


def test_dynamic_int8_is_estimated_and_other_quantizations_name_the_precision() -> None:
    """precision int8 (dynamically quantized Linear layers): the packed weights are outside the
    tensor account in the run as in the estimate, each product's output and buffer inside."""
    from memlab import Experiment
    from memlab.runner import run

    exp = Experiment(
        workload="transformer", mode="inference", precision="int8", batch_size=16, steps=2
    )
    exp = exp.replace(warmup=1)
    r = run(exp, timeout_s=240)
    assert r.status == "ok", r.error
    est = estimate(exp)
    assert est.peak_by_category["parameters"] == r.peak_by_category["parameters"]
    assert abs(est.peak_bytes - r.peak_bytes) <= TOLERANCE * r.peak_bytes, (est, r.peak_bytes)
    assert any("int8" in n for n in est.notes), est.notes
    with pytest.raises(EstimateError, match="weights 'streamed' cannot be estimated"):
        estimate(exp.replace(weights="streamed"))
