"""Inference runs and knobs: per-request latency and allocator calls, allocation
(dynamic / preallocated / lazy), inplace, fuse (fold / compile)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from memlab import cli
from memlab.config import ConfigError, Experiment
from memlab.timeline import Latency, RunResult


# -- the data model (no torch) ----------------------------------------------------------------
def test_latency_figures_are_the_percentiles_and_rates_of_the_request_times() -> None:
    times = [0.010, 0.012, 0.011, 0.030, 0.013]
    lat = Latency(
        first_s=0.5, request_times_s=times, samples_per_request=8, allocs_by_request=(3, 3, 4, 3, 3)
    )
    assert lat.p50_s == pytest.approx(float(np.percentile(times, 50)))
    assert lat.p99_s == pytest.approx(float(np.percentile(times, 99)))
    assert lat.requests_per_s == pytest.approx(5 / sum(times))
    assert lat.samples_per_s == pytest.approx(8 * 5 / sum(times))
    assert lat.allocs_per_request == pytest.approx(3.2)
    assert Latency().p50_s is None and Latency().allocs_per_request is None


def test_inference_result_json_has_latency_and_allocs_training_has_null() -> None:
    lat = Latency(
        first_s=0.5, request_times_s=(0.01, 0.02), samples_per_request=4, allocs_by_request=(0, 0)
    )
    r = RunResult(peak_bytes=10, peak_by_category={}, latency=lat, experiment={"mode": "inference"})
    d = json.loads(json.dumps(cli.result_json(r)))
    assert set(d["latency_s"]) == {"first", "p50", "p95", "p99"}
    assert d["latency_s"]["first"] == 0.5 and d["allocs_per_request"] == 0.0
    back = RunResult.from_json(r.to_json())
    assert back.latency == lat
    assert "allocs/request" in cli.result_table(r) and "first request" in cli.result_table(r)
    train = RunResult(peak_bytes=10, peak_by_category={}, experiment={"mode": "train"})
    d = cli.result_json(train)
    assert d["latency_s"] is None and d["allocs_per_request"] is None
    assert "allocs/request" not in cli.result_table(train)


def test_uncounted_allocations_read_as_not_available() -> None:
    r = RunResult(peak_bytes=1, peak_by_category={}, latency=Latency(request_times_s=(0.1,)))
    assert cli.result_json(r)["allocs_per_request"] is None
    assert "n/a" in cli.result_table(r)


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [("allocation", "preallocated"), ("fuse", "fold")])
def test_inference_only_knobs_name_both_fields_in_training(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field} '{value}'.*'inference'.*got mode 'train'"):
        Experiment(**{field: value})
    assert getattr(Experiment(mode="inference", **{field: value}), field) == value


def test_compile_with_a_planned_allocation_is_refused() -> None:
    with pytest.raises(ConfigError, match="allocation 'lazy' and fuse 'compile'"):
        Experiment(mode="inference", allocation="lazy", fuse="compile")


def test_cli_flags_come_from_the_fields() -> None:
    ns = cli._parser().parse_args(
        [
            "run",
            "--mode",
            "inference",
            "--allocation",
            "preallocated",
            "--inplace",
            "--fuse",
            "fold",
        ]
    )
    e = cli.experiment_from_args(ns)
    assert (e.allocation, e.inplace, e.fuse) == ("preallocated", True, "fold")


def test_cli_bad_combination_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--allocation", "lazy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "allocation 'lazy'" in err and "mode 'train'" in err


# -- the executor, in process, against the recorder's own count ---------------------------------
torch = pytest.importorskip("torch")


def _count_allocs(fn):  # type: ignore[no-untyped-def]
    from memlab.tracking.sources import default_source

    src = default_source()
    if src.name != "cpu-allocator":
        pytest.skip("needs memlab's native recorder (no C++ compiler here)")
    src.begin()
    try:
        p0 = src.position()
        out = fn()
        ev = src.events(p0, src.position())
    finally:
        src.end()
    return int((ev[:, 2] > 0).sum()), out


def _model(name: str, inplace: bool = False):  # type: ignore[no-untyped-def]
    from memlab.workloads.models import CNN, MLP, Transformer

    torch.manual_seed(0)
    m, shape = {
        "mlp": (MLP, (8, 64)),
        "cnn": (CNN, (8, 1, 16, 16)),
        "transformer": (Transformer, (8, 64, 4)),
    }[name]
    model = m().eval()
    for mod in model.modules():
        if hasattr(mod, "inplace"):
            mod.inplace = inplace
    return model, torch.randn(shape)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("inplace", [False, True])
def test_preallocated_requests_call_the_allocator_zero_times_and_match_eager(
    name: str, inplace: bool
) -> None:
    from memlab.knobs.inference import PlannedForward

    model, x = _model(name, inplace)
    with torch.inference_mode():
        eager_allocs, ref = _count_allocs(lambda: model(x).clone())
        pf = PlannedForward(model, x, "preallocated")
        pf(x)
        allocs, out = _count_allocs(lambda: pf(x))
    # the same forward, eager, allocates its intermediates: the recorder does see them
    assert eager_allocs > 10
    assert allocs == 0
    assert not pf.plan.fallback_ops
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # the arena holds every planned tensor at once, no more than each in its own buffer
    p = pf.plan
    assert p.lower_bound_bytes <= p.arena_bytes <= p.naive_bytes
    arena = [b for n, b in pf.named_buffers() if n.endswith("_arena")]
    assert len(arena) == 1 and arena[0].numel() == max(p.arena_bytes, 1)


def test_lazy_allocates_on_the_first_request_only_and_holds_the_naive_plan() -> None:
    from memlab.knobs.inference import PlannedForward

    model, x = _model("mlp")
    with torch.inference_mode():
        ref = model(x).clone()
        pf = PlannedForward(model, x, "lazy")
        first, _ = _count_allocs(lambda: pf(x))
        second, out = _count_allocs(lambda: pf(x))
    assert first > 0  # the buffers are made by the first request
    assert second == 0
    kept = sum(b.untyped_storage().nbytes() for n, b in pf.named_buffers() if "_v" in n)
    assert kept >= pf.plan.arena_bytes  # no reuse between tensors
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_out_variant_matches_argument_types_not_only_names() -> None:
    from memlab.knobs.inference import out_variant

    # bitwise_and.Scalar and .Tensor_out share argument names (self, other): the Scalar op's
    # out variant is Scalar_out, which takes the Scalar.
    got = {op: out_variant(getattr(torch.ops.aten.bitwise_and, op)) for op in ("Scalar", "Tensor")}
    assert got["Scalar"] is not None and got["Scalar"][0]._overloadname == "Scalar_out"
    assert got["Tensor"] is not None and got["Tensor"][0]._overloadname == "Tensor_out"
    add = out_variant(torch.ops.aten.add.Tensor)
    assert add is not None and add[0]._overloadname == "out" and add[1] == ["out"]


def test_an_op_without_an_out_variant_runs_eagerly_and_is_reported() -> None:
    from memlab.knobs.inference import PlannedForward

    model, x = _model("transformer")
    with torch.inference_mode():
        ref = model(x).clone()
        pf = PlannedForward(model, x, "preallocated")
        pf(x)
        allocs, out = _count_allocs(lambda: pf(x))
    assert pf.plan.fallback_ops == {"aten._scaled_dot_product_flash_attention_for_cpu.default": 4}
    assert allocs > 0  # the eager attention allocates: counted, not hidden
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_another_input_shape_is_planned_again() -> None:
    from memlab.knobs.inference import PlannedForward

    model, x = _model("mlp")
    with torch.inference_mode():
        pf = PlannedForward(model, x, "preallocated")
        y = torch.randn(3, 64)
        torch.testing.assert_close(pf(y).clone(), model(y), atol=1e-4, rtol=1e-4)
    assert pf.replans == 1


def _workload(**kw):  # type: ignore[no-untyped-def]
    from memlab.workloads import build_workload

    return build_workload(
        Experiment(mode="inference", batch_size=8, data_size=8, device="cpu", **kw)
    )


def test_fold_removes_the_batch_norms_and_matches_eager() -> None:
    from memlab.knobs.inference import apply_fuse

    w = _workload(workload="cnn")
    x, _ = next(w.make_batches(1))
    with torch.inference_mode():
        ref = w.model.eval()(x).clone()
    apply_fuse(w, "fold")
    assert w.measures["folded_conv_bn"] == 5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in w.model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(w.model(x), ref, atol=1e-4, rtol=1e-4)


def test_fold_without_batch_norm_says_so() -> None:
    from memlab.knobs.inference import apply_fuse

    w = _workload(workload="mlp")
    before = w.model
    apply_fuse(w, "fold")
    assert w.model is before and any("nothing to fold" in n for n in w.notes)


def test_fuse_and_allocation_refuse_training() -> None:
    from memlab.knobs import KnobUnsupported
    from memlab.knobs.inference import apply_allocation, apply_fuse
    from memlab.workloads import build_workload

    w = build_workload(Experiment(batch_size=8, data_size=8, device="cpu"))
    with pytest.raises(KnobUnsupported, match="inference"):
        apply_fuse(w, "fold")
    with pytest.raises(KnobUnsupported, match="inference"):
        apply_allocation(w, "lazy")


def test_compile_matches_eager_or_says_why_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    from memlab.knobs import KnobUnsupported
    from memlab.knobs import inference as inf

    monkeypatch.setattr(inf, "_cxx", lambda: None)
    with pytest.raises(KnobUnsupported, match="C\\+\\+ compiler"):
        inf.apply_fuse(_workload(workload="mlp"), "compile")


@pytest.mark.slow
def test_compile_output_matches_eager_and_its_time_is_kept_apart() -> None:
    from memlab.knobs.inference import _cxx, apply_fuse

    if _cxx() is None:
        pytest.skip("no C++ compiler for inductor")
    w = _workload(workload="mlp")
    x, _ = next(w.make_batches(1))
    with torch.inference_mode():
        ref = w.model.eval()(x).clone()
    apply_fuse(w, "compile")
    assert w.measures["compile_s"] > 0
    with torch.inference_mode():
        torch.testing.assert_close(w.model(x), ref, atol=1e-4, rtol=1e-4)


# -- whole runs in a worker -------------------------------------------------------------------
def _run(**kw):  # type: ignore[no-untyped-def]
    from memlab.runner import run

    base = dict(batch_size=8, data_size=64, steps=3, warmup=1, device="cpu")
    return run(Experiment(**{**base, **kw}), timeout_s=240)


def test_a_preallocated_cnn_run_reports_zero_allocs_per_request_and_dynamic_does_not() -> None:
    dyn = _run(workload="cnn", mode="inference")
    pre = _run(workload="cnn", mode="inference", allocation="preallocated")
    for r in (dyn, pre):
        assert r.status == "ok", r.error
        assert r.latency is not None and r.latency.first_s is not None
        assert len(r.latency.request_times_s) == 3 and r.step_times_s == r.latency.request_times_s
        assert all(math.isfinite(v) and v > 0 for v in r.latency.summary().values())  # type: ignore[arg-type]
    if dyn.latency.allocs_by_request is None:  # type: ignore[union-attr]
        pytest.skip("the profiler fallback does not count allocations per request")
    assert dyn.latency.allocs_per_request >= 20  # type: ignore[union-attr,operator]
    assert pre.latency.allocs_per_request == 0  # type: ignore[union-attr]
    # the arena is held by the model (counted at entry) as what it holds: temporaries; the
    # parameters are the same bytes as the eager run's
    arena = pre.metrics["plan_arena_bytes"]
    assert arena > 0
    assert pre.peak_by_category["temporaries"] >= arena
    assert pre.peak_by_category["parameters"] == dyn.peak_by_category["parameters"]


def test_inplace_in_training_is_a_run_error_explained_in_words() -> None:
    r = _run(workload="cnn", inplace=True, steps=1, warmup=0)
    assert r.status == "error"
    assert r.error is not None and "in-place operations (inplace=True)" in r.error
    assert "backward" in r.error and "inplace=False" in r.error
    assert r.latency is None


def test_latency_sweep_over_batch_sizes() -> None:
    from memlab.runner.runs import latency_sweep

    df = latency_sweep(Experiment(mode="inference", steps=2, warmup=0, device="cpu"), (1, 8))
    assert list(df["batch_size"]) == [1, 8] and list(df["status"]) == ["ok", "ok"]
    assert (df["p50_s"] > 0).all() and (df["peak_bytes"] > 0).all()
    assert df["latency_per_sample_s"].tolist() == pytest.approx(
        (df["p50_s"] / df["batch_size"]).tolist()
    )
    with pytest.raises(ValueError, match="inference"):
        latency_sweep(Experiment(), (1,))


@pytest.mark.cuda
def test_cuda_inference_run_measures_latency() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = _run(workload="mlp", mode="inference", device="cuda")
    assert r.status == "ok", r.error
    assert r.latency is not None and r.latency.p50_s is not None
    assert r.latency.allocs_by_request is not None


@pytest.mark.cuda
def test_cuda_preallocated_requests_do_not_allocate() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = _run(workload="mlp", mode="inference", device="cuda", allocation="preallocated")
    assert r.status == "ok", r.error
    assert r.latency is not None and r.latency.allocs_per_request == 0
