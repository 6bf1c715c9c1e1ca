"""Lab 07's module (memlab.labs.edge) on hand-made runs and rooflines: every figure in its
tables, prose and exercises comes from the objects passed in, an oom under the profile is a
"does not fit", and no explanation shown before an exercise states that exercise's answer."""

from __future__ import annotations

import pytest

from memlab import Experiment, devices
from memlab.labs import edge as lab
from memlab.labs.sweeps import Sweep
from memlab.rooflines import OpPoint, RooflineResult
from memlab.timeline import Latency, RunResult

MIB = 2**20
BASE = Experiment(workload="mlp", mode="inference", batch_size=32, steps=3)


def _run(
    label: str,
    *,
    weights: int,
    peak: int,
    rss_peak: int | None,
    status: str = "ok",
    p50: float = 0.01,
    error: str | None = None,
    kill: int | None = None,
) -> RunResult:
    exp = lab.variant_experiments(BASE, [label], profile="rpi-zero-2w", budget_bytes="48MB")
    metrics: dict[str, object] = {"model_bytes": weights, "rss_baseline_bytes": 200 * MIB}
    if kill is not None:
        metrics["rss_at_kill_bytes"] = kill
    return RunResult(
        peak_bytes=peak if status == "ok" else 0,
        peak_by_category={"parameters": peak} if status == "ok" else {},
        status=status,
        error=error,
        rss_peak_bytes=rss_peak,
        experiment=exp[label].to_dict(),
        metrics=metrics,
        step_times_s=(p50,) * 3 if status == "ok" else (),
        samples_per_step=32,
        latency=Latency(request_times_s=(p50,) * 3, samples_per_request=32)
        if status == "ok"
        else None,
    )


def _search() -> lab.FitSearch:
    runs = {
        "fp32": _run(
            "fp32",
            weights=32 * MIB,
            peak=33 * MIB,
            rss_peak=None,
            status="oom",
            error="worker killed: its RSS 270000000 bytes passed the hard cap of 250000000 bytes",
            kill=200 * MIB + 52 * MIB,
        ),
        "int8 dynamic": _run("int8 dynamic", weights=8 * MIB, peak=1 * MIB, rss_peak=230 * MIB),
        "int8 static": _run(
            "int8 static", weights=8 * MIB + 40_000, peak=9 * MIB, rss_peak=225 * MIB
        ),
        "shared 2-bit": _run("shared 2-bit", weights=2 * MIB, peak=3 * MIB, rss_peak=221 * MIB),
    }
    labels = tuple(runs)
    exps = lab.variant_experiments(BASE, labels, profile="rpi-zero-2w", budget_bytes="48MB")
    sweep = Sweep(labels, tuple(exps.values()), tuple(runs.values()))
    acc = {"fp32": 0.95, "int8 dynamic": 0.94, "int8 static": 0.94, "shared 2-bit": 0.60}
    return lab.FitSearch(sweep, acc, "rpi-zero-2w", 48_000_000)


def test_variants_compose_with_the_profile_and_refuse_training() -> None:
    exps = lab.variant_experiments(BASE, ["int8 static", "shared 4-bit"], profile="rpi-4-2gb")
    assert exps["int8 static"].precision == "int8-static"
    assert exps["shared 4-bit"].compression == "shared"
    assert exps["shared 4-bit"].codebook_bits == 4
    assert all(e.profile == "rpi-4-2gb" for e in exps.values())
    assert exps["int8 static"].effective_budget_bytes == devices.PROFILES["rpi-4-2gb"].budget_bytes
    with pytest.raises(ValueError, match="inference"):
        lab.variant_experiments(BASE.replace(mode="train"), ["fp32"])
    with pytest.raises(ValueError, match="unknown variants"):
        lab.variant_experiments(BASE, ["int3"])


def test_profiles_table_names_every_profile_and_its_source() -> None:
    t = lab.profiles_table("rpi-4-2gb")
    for name, p in devices.PROFILES.items():
        assert name in t and p.source in t
    assert "**rpi-4-2gb**" in t and "12.8" in t


def test_fit_rows_say_what_fits_and_what_the_process_held() -> None:
    s = _search()
    rows = {r["variant"]: r for r in lab.fit_rows(s)}
    assert rows["fp32"]["fits"] is False and rows["fp32"]["status"] == "oom"
    assert rows["fp32"]["rss_over_runtime_bytes"] == 52 * MIB  # where the cap killed it
    assert rows["fp32"]["peak_bytes"] is None and rows["fp32"]["p50_s"] is None
    assert rows["int8 dynamic"]["rss_over_runtime_bytes"] == 30 * MIB
    assert rows["int8 static"]["weight_bytes"] == 8 * MIB + 40_000
    assert rows["shared 2-bit"]["p50_s"] == pytest.approx(0.01)
    table = lab.fit_table(s)
    assert "no (oom)" in table and "94.0%" in table and "45.8 MiB" in table


def test_best_fit_is_the_most_accurate_that_fits_ties_to_smaller_weights() -> None:
    s = _search()
    # fp32 is the most accurate but does not fit; int8 dynamic and static tie on accuracy and
    # dynamic has the smaller weights
    assert lab.best_fit(s) == "int8 dynamic"
    explained = lab.explain_fit(s)
    assert "3 of 4 configurations" in explained and "fp32 did not (RSS cap)" in explained
    assert "shared 2-bit's: 2.00 MiB, 16.00x smaller" in explained
    assert "int8 dynamic" in explained  # named for what RSS held beyond its tensors...
    assert "best" not in explained.lower()  # ...but the best fit is exercise 2's answer


def test_exercises_grade_against_the_runs() -> None:
    s = _search()
    ex1 = lab.exercise_weight_ratio(s, "fp32", "int8 static")
    truth = 32 * MIB / (8 * MIB + 40_000)
    assert not ex1.check(truth * 1.2).ok
    assert ex1.check(round(truth, 2)).ok
    ex2 = lab.exercise_best_fit(s)
    assert not ex2.check("fp32").ok
    assert ex2.check("int8 dynamic").ok
    assert ex2.check("nonsense").form_error  # a name that is no option is a slip of form


def _roofline() -> RooflineResult:
    ops = (
        # a matmul: 2*32*64*64 FLOPs over (32*64 + 64*64 + 32*64)*4 bytes = 8 FLOP/B
        OpPoint(0, "aten.mm.default", "fc", 262144, True, 24576, 8192, 0.002),
        OpPoint(1, "aten.relu.default", "act", 0, False, 8192, 8192, 0.001),
        OpPoint(2, "aten.t.default", "", 0, False, 0, 0, 0.0),
    )
    return RooflineResult(
        experiment=BASE.to_dict(),
        ops=ops,
        dram_gb_per_s=20.0,
        bandwidth_source="given",
        peak_gflop_per_s=100.0,  # ridge 5 FLOP/B: mm compute-bound, relu memory-bound
        matmul_n=512,
        threads=2,
        request_s=0.004,
        request_times_s=(0.004,),
    )


def test_roofline_summary_and_the_device_estimate_beside_the_measured_time() -> None:
    rl = _roofline()
    s = lab.roofline_summary(rl)
    assert s["ops"] == 3 and s["memory_bound_ops"] == 1
    assert s["memory_bound_time_share"] == pytest.approx(1 / 3)
    assert s["bytes_moved"] == 24576 + 8192 + 16384
    t = lab.device_table(rl, "rpi-zero-2w")
    est_ms = s["bytes_moved"] / 3.6e9 * 1e3
    assert f"{est_ms:.3f} (estimate)" in t and "4.000 (measured)" in t
    assert "**rpi-zero-2w**" in t
    text = lab.explain_roofline(rl, "rpi-zero-2w")
    assert "1 of the 3 ops" in text and "5.0 FLOP per byte" in text
    assert f"{est_ms:.3f}" not in text  # exercise 3's answer is not in the prose
    ex3 = lab.exercise_device_estimate(rl, "rpi-zero-2w")
    assert ex3.check(est_ms * 1.02).ok and not ex3.check(est_ms * 2).ok


def test_packed_tables_compare_the_tensor_account_with_rss_and_the_program() -> None:
    fps = [
        {
            "precision": "fp32",
            "model_bytes": {"float32": 4 * MIB},
            "rss_build": 5 * MIB,
            "rss_first_request": 3 * MIB,
            "rss_peak": 8 * MIB,
            "rss_after": 8 * MIB,
        },
        {
            "precision": "int8",
            "model_bytes": {"float32": MIB // 2, "qint8": 0},
            "rss_build": 3 * MIB,
            "rss_first_request": 1 * MIB,
            "rss_peak": 4 * MIB,
            "rss_after": 4 * MIB,
        },
    ]
    progs = [
        {
            "quantized": False,
            "pte_bytes": 4 * MIB,
            "arena_bytes": MIB,
            "delegated": 2,
            "latency_s": 0.01,
            "max_abs_diff": 0.0,
        },
        {
            "quantized": True,
            "pte_bytes": MIB,
            "arena_bytes": MIB,
            "delegated": 2,
            "latency_s": None,
            "max_abs_diff": 0.2,
        },
    ]
    t = lab.footprint_table(fps)
    assert "| int8 | 512.0 KiB |" in t and "8.0 MiB" in t
    p = lab.program_table(progs)
    assert "int8 (XNNPACK quantizer)" in p and "10.00" in p and "| – |" in p
    text = lab.explain_packed(fps, progs)
    # int8: 512 KiB seen, 4 MiB held (8x); fp32: 4 MiB seen, 8 MiB held (2x)
    assert "int8: the tensor account sees 512.0 KiB" in text and "(8.00x that)" in text
    assert "(2.00x that)" in text and "(4.00x smaller)" in text
