"""memlab.labs: the analysis, explanations and exercise checks behind the notebooks, on
hand-made results (no runs), plus the pieces that run jobs in workers (accuracy, estimates,
the prediction check) and the lab workload (memlab.workloads.jobs.data_only)."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memlab import Experiment
from memlab.config import MIB
from memlab.labs import (
    analysis,
    batch_size,
    checkpointing,
    checks,
    data_loading,
    exercises,
    precision,
    sparsity,
    sweeps,
    tour,
)
from memlab.labs.checks import Check
from memlab.labs.sweeps import Sweep
from memlab.timeline import RunResult

ROOT = Path(__file__).resolve().parents[1]


def _result(
    exp: Experiment | None = None,
    *,
    status: str = "ok",
    steps: tuple[float, ...] = (0.01, 0.01),
    metrics: dict[str, Any] | None = None,
    **cats: int,
) -> RunResult:
    peak = sum(cats.values())
    spp = exp.batch_size if exp is not None else 32
    return RunResult(
        peak_bytes=peak,
        peak_by_category=cats,
        status=status,
        step_times_s=steps,
        samples_per_step=spp,
        experiment=None if exp is None else exp.to_dict(),
        metrics=metrics or {},
    )


def _batch_sweep() -> Sweep:
    base = Experiment(workload="transformer")
    exps, results = [], []
    for b in (8, 16, 32):
        exps.append(base.replace(batch_size=b))
        results.append(
            _result(
                exps[-1],
                steps=(0.01 * b / 8,) * 2,
                parameters=1000,
                gradients=1000,
                optimizer_state=2000,
                activations=100_000 * b,
                inputs=4096 * b,
                temporaries=8000 * b,
            )
        )
    return Sweep(tuple(f"batch {b}" for b in (8, 16, 32)), tuple(exps), tuple(results))


# -- analysis --------------------------------------------------------------------------------------
def test_category_trends() -> None:
    t = analysis.category_trends(_batch_sweep().results)
    assert t["activations"] == t["inputs"] == t["temporaries"] == "grows"
    assert t["parameters"] == t["gradients"] == t["optimizer_state"] == "constant"
    assert t["other"] == "absent"
    with pytest.raises(ValueError):
        analysis.category_trends(_batch_sweep().results[:1])


def test_linear_fit_recovers_line() -> None:
    slope, intercept = analysis.linear_fit([1, 2, 4], [7, 10, 16])
    assert slope == pytest.approx(3.0) and intercept == pytest.approx(4.0)
    with pytest.raises(ValueError):
        analysis.linear_fit([2, 2], [1, 3])


def test_epoch_profile_growth_from_start_of_measurement() -> None:
    # Setup wrote the file through a mapping (high), then unmapped it; steps 1-2 are epoch 1
    # (with 1 warm-up batch and 3 batches an epoch), steps 3-5 epoch 2.
    samples = [
        {"step": 0, "rss_file": 500, "rss_anon": 10, "rss_shmem": 0},
        {"step": 0, "rss_file": 100, "rss_anon": 10, "rss_shmem": 0},
        {"step": 1, "rss_file": 300, "rss_anon": 12, "rss_shmem": 0},
        {"step": 2, "rss_file": 400, "rss_anon": 12, "rss_shmem": 0},
        {"step": 3, "rss_file": 400, "rss_anon": 11, "rss_shmem": 0},
        {"step": 5, "rss_file": 410, "rss_anon": 11, "rss_shmem": 0},
    ]
    prof = analysis.epoch_profile(
        samples, steps=5, warmup=1, steps_per_epoch=3, step_times_s=[0.1, 0.2, 0.3, 0.4, 0.5]
    )
    assert [p["epoch"] for p in prof] == [1, 2]
    assert [p["measured steps"] for p in prof] == [2, 3]
    assert prof[0]["rss_file growth"] == 300 and prof[1]["rss_file growth"] == 10
    assert prof[0]["rss_anon growth"] == 2 and prof[1]["rss_anon growth"] == 0
    assert prof[1]["step ms"] == pytest.approx(400.0)
    assert data_loading.check_first_epoch_part("file-backed", prof).ok is True
    assert data_loading.check_first_epoch_part("anonymous", prof).ok is False


def test_phase_seconds_sums_event_gaps() -> None:
    from memlab.timeline import PHASES, Timeline

    f, b = PHASES.index("forward"), PHASES.index("backward")
    tl = Timeline(
        t=[0.0, 1.0, 3.0, 3.5], phase=[f, b, b, b], by_category={"activations": [1, 2, 3, 4]}
    )
    r = RunResult(peak_bytes=4, peak_by_category={"activations": 4}, timeline=tl)
    assert analysis.phase_seconds(r) == {"forward": 1.0, "backward": 2.5}


# -- explanations: every number in the text comes from the results -------------------------------
def test_explain_batch_size_is_built_from_the_numbers() -> None:
    text = batch_size.explain(_batch_sweep())
    assert "from 8 to 32 (4.00x)" in text
    per_sample = 100_000 + 4096 + 8000
    assert f"{per_sample / 1024:.1f} KiB per sample" in text
    assert "Throughput stayed about level" in text  # 32/(0.01*b/8) samples/s is flat
    why = batch_size.why_growing(_batch_sweep())
    assert "**Grew with the batch:** activations, inputs, temporaries" in why
    assert "**Stayed constant:** parameters, gradients, optimizer_state" in why


def test_explain_checkpointing_and_tour() -> None:
    base = Experiment(workload="transformer")
    labels = ("off", "every-block")
    exps = (base, base.replace(checkpointing="every-block"))
    results = (
        _result(exps[0], steps=(0.010,) * 3, parameters=10, activations=8 * MIB, temporaries=MIB),
        _result(
            exps[1], steps=(0.013,) * 3, parameters=10, activations=2 * MIB, temporaries=2 * MIB
        ),
    )
    sweep = Sweep(labels, exps, results)
    text = checkpointing.explain(sweep, "off")
    assert "3.0 ms more per step (+30%)" in text
    why = checkpointing.why_saving(sweep, "off")
    assert "2.0 MiB instead of 8.0 MiB (-75%)" in why
    assert "Temporaries rose (1.0 MiB → 2.0 MiB)" in why
    assert checkpointing.check_saving(0.75, sweep, "off", "every-block").ok is True
    assert checkpointing.check_saving(0.5, sweep, "off", "every-block").ok is False
    text = tour.why(sweep)
    assert "**every-block** lowered the peak" in text and "mostly through **activations**" in text
    assert tour.check_biggest_saving("every-block", sweep).ok is True


def test_explain_precision_sparsity_and_data_loading() -> None:
    b = Experiment(workload="mlp")
    exps = (
        b,
        b.replace(precision="amp-bf16"),
        b.replace(precision="bf16"),
        b.replace(mode="inference"),
        b.replace(mode="inference", precision="int8"),
    )
    labels = ("fp32", "amp-bf16", "bf16", "fp32 inference", "int8 inference")
    m32 = {"model_bytes_float32": 4 * MIB, "model_bytes": 4 * MIB}
    results = (
        _result(exps[0], metrics=m32, parameters=4 * MIB, optimizer_state=8 * MIB),
        _result(exps[1], metrics=m32, parameters=4 * MIB, optimizer_state=8 * MIB),
        _result(
            exps[2],
            metrics={"model_bytes_bfloat16": 2 * MIB, "model_bytes": 2 * MIB},
            parameters=2 * MIB,
            optimizer_state=4 * MIB,
        ),
        _result(exps[3], metrics=m32, parameters=4 * MIB),
        _result(exps[4], metrics={"model_bytes_qint8": MIB, "model_bytes": MIB}, parameters=10),
    )
    sweep = Sweep(labels, exps, results)
    text = precision.explain(
        sweep, "fp32", accuracy=dict.fromkeys(labels, 0.9), inference_baseline="fp32 inference"
    )
    assert "parameter bytes did not drop" not in text  # exercise 2's answer: after the check
    assert "parameter bytes did not drop (4.0 MiB → 4.0 MiB)" in precision.why_autocast(sweep)
    assert "parameters 4.0 MiB → 2.0 MiB (0.50x)" in text
    assert "1.0 MiB instead of 4.0 MiB (0.25x)" in text
    assert "outside PyTorch's tensor storage" in text  # the int8 peak is below the model
    assert precision.check_parameters(2.05, sweep, "bf16").ok is True
    assert precision.check_parameters(4.0, sweep, "bf16").ok is False
    assert precision.check_smallest_peak("bf16", sweep).ok is True
    assert precision.check_smallest_peak("fp32", sweep).ok is False

    sp = (b, b.replace(sparsity=0.9), b.replace(sparsity=0.5, sparse_storage="sparse"))
    sm = {
        "sparse_csr_bytes": 6 * MIB,
        "sparse_dense_equivalent_bytes": 4 * MIB,
        "sparse_density_crossover": 0.3229,
    }
    ssweep = Sweep(
        ("dense", "mask 0.9", "sparse 0.5"),
        sp,
        (
            _result(sp[0], parameters=4 * MIB),
            _result(sp[1], parameters=8 * MIB),
            _result(sp[2], metrics=sm, parameters=6 * MIB),
        ),
    )
    text = sparsity.explain(ssweep, "dense")
    assert "masking saves nothing" in text and "larger than dense" in text
    assert "a sparsity above **0.677**" in sparsity.why_crossover(ssweep)
    why_acc = sparsity.why_accuracy({0.0: 0.9, 0.5: 0.88, 0.9: 0.7})
    assert "within 5 points of dense here: **0.5**" in why_acc
    assert sparsity.check_crossover(0.68, ssweep).ok is True
    assert sparsity.check_crossover(0.33, ssweep).ok is False
    assert sparsity.check_accuracy(0.5, {0.0: 0.9, 0.5: 0.88, 0.9: 0.7}).ok is True
    assert sparsity.check_accuracy(0.9, {0.0: 0.9, 0.5: 0.88, 0.9: 0.7}).ok is False

    d = Experiment(workload="mlp", data_size=1024)
    ram = RunResult(
        peak_bytes=1,
        peak_by_category={},
        rss_anon_peak_bytes=300 * MIB,
        rss_file_peak_bytes=80 * MIB,
        metrics={"dataset_bytes": 64 * MIB},
    )
    mm = RunResult(
        peak_bytes=1,
        peak_by_category={},
        rss_anon_peak_bytes=236 * MIB,
        rss_file_peak_bytes=145 * MIB,
        metrics={"dataset_bytes": 64 * MIB},
    )
    dsweep = Sweep(("ram", "memmap"), (d, d.replace(data="memmap")), (ram, mm))
    text = data_loading.why_saving(dsweep, "ram", "memmap")
    assert "**64.0 MiB less** (100% of the data set's size)" in text
    row = {"rss_anon growth": 0, "rss_shmem growth": 0, "step ms": 1.0}
    epochs = {
        "memmap": [
            {**row, "epoch": 1, "rss_file growth": 64 * MIB},
            {**row, "epoch": 2, "rss_file growth": 0},
        ]
    }
    text = data_loading.why_epochs(epochs, "memmap", 64 * MIB)
    assert "file-backed RSS grew 64.0 MiB in the first epoch and 0 B at most" in text
    assert "grew while the first epoch ran and not after" in text
    epochs["memmap"][1]["rss_file growth"] = 60 * MIB  # growth later too: no such sentence
    assert "first epoch ran" not in data_loading.why_epochs(epochs, "memmap", 64 * MIB)
    assert data_loading.check_saving(60, dsweep, "ram", "memmap").ok is True
    assert data_loading.check_saving(10, dsweep, "ram", "memmap").ok is False


# -- checks ---------------------------------------------------------------------------------------
def test_check_number_and_choice() -> None:
    assert checks.check_number(None, 3.0).ok is None
    assert checks.check_number("3", 3.0).ok is False
    assert checks.check_number(True, 1.0).ok is False
    assert checks.check_number(3.1, 3.0, rel_tol=0.05).ok is True
    wrong = checks.check_number(4.0, 3.0, rel_tol=0.05)
    assert wrong.ok is False and "too high" in wrong.message and "3" not in wrong.message[:2]
    assert checks.check_choice({"Activations", "inputs"}, {"activations", "inputs"}).ok is True
    assert checks.check_choice("activations", {"activations"}).ok is False  # a set is asked for
    assert checks.check_choice("file backed", "file-backed").ok is True
    assert checks.check_choice("x", "y", options=["y", "z"]).ok is False


def test_check_renders() -> None:
    c = Check(True, "fine <b>")
    assert "&lt;b&gt;" in c._repr_markdown_() and repr(c).startswith("[RIGHT]")
    assert bool(c) and not bool(Check(None, "x")) and not bool(Check(False, "x"))


def test_check_largest_batch_uses_runs() -> None:
    asked: list[int] = []

    def fake_run(exp: Experiment) -> RunResult:
        asked.append(exp.batch_size)
        assert exp.budget_bytes is None and exp.data_size >= exp.batch_size
        return _result(exp, activations=1000 * exp.batch_size + 500)

    base = Experiment(workload="transformer", data_size=64)
    budget = 100_500  # batch 100 fits exactly, 108 does not
    assert exercises.check_largest_batch(None, base, budget, run=fake_run).ok is None
    assert (
        exercises.check_largest_batch(99, base, budget, run=fake_run).ok is False
    )  # not a multiple
    assert asked == []
    assert exercises.check_largest_batch(96, base, budget, run=fake_run).ok is True
    assert asked == [96, 104]
    assert exercises.check_largest_batch(88, base, budget, run=fake_run).ok is False  # 96 fits too
    assert exercises.check_largest_batch(104, base, budget, run=fake_run).ok is False  # over budget


def test_check_panel_result() -> None:
    class FakePanel:
        result: RunResult | None = None

    p = FakePanel()
    assert exercises.check_panel_result(p, max_peak_bytes=100, min_batch=64).ok is None
    exp = Experiment(workload="transformer", batch_size=64, checkpointing="every-block")
    p.result = _result(exp, activations=90)
    ok = exercises.check_panel_result(p, max_peak_bytes=100, min_batch=64, workload="transformer")
    assert ok.ok is True and "{'checkpointing': 'every-block'}" in ok.message  # what was changed
    assert exercises.check_panel_result(p, max_peak_bytes=80, min_batch=64).ok is False
    assert exercises.check_panel_result(p, max_peak_bytes=100, min_batch=128).ok is False
    assert (
        exercises.check_panel_result(p, max_peak_bytes=100, min_batch=64, workload="mlp").ok
        is False
    )
    p.result = _result(exp, status="oom", activations=90)
    assert exercises.check_panel_result(p, max_peak_bytes=100, min_batch=64).ok is False


def test_sweep_table_and_lookup() -> None:
    sweep = _batch_sweep()
    df = sweep.table()
    assert list(df.index) == ["batch 8", "batch 16", "batch 32"]
    assert df.loc["batch 32", "activations MiB"] == round(3_200_000 / MIB, 2)
    assert sweep["batch 16"].peak_by_category["activations"] == 1_600_000
    with pytest.raises(KeyError):
        sweep["batch 64"]
    assert "batch 8" in repr(sweep)
    fig = sweep.figure("t")
    assert fig.layout.title.text == "t"


# -- the package's shape ---------------------------------------------------------------------------
# One module per notebook: memlab.labs.__all__ without the shared modules.
LAB_MODULES = tuple(
    m
    for m in importlib.import_module("memlab.labs").__all__
    if m not in ("checks", "exercises", "sweeps", "analysis", "text")
)


def test_lab_modules_import_no_torch_plotly_or_widgets() -> None:
    """In a fresh interpreter (this one may hold torch already): importing every lab module
    loads none of the heavy packages, nor the runner or the workloads."""
    mods = ", ".join(f"memlab.labs.{m}" for m in LAB_MODULES)
    code = (
        f"import sys, {mods}\n"
        "heavy = ('torch', 'plotly', 'ipywidgets', 'pandas', 'memlab.runner', 'memlab.workloads')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name", LAB_MODULES)
def test_each_notebook_uses_only_its_lab_modules_public_names(name: str) -> None:
    """Every ``lab.<name>`` a notebook calls is in its module's ``__all__`` (so a renamed
    function breaks this test, not a workshop), and every ``__all__`` name exists."""
    mod = importlib.import_module(f"memlab.labs.{name}")
    assert all(hasattr(mod, n) for n in mod.__all__), name
    (nb,) = (ROOT / "labs").glob(f"[0-9][0-9]_{name}.ipynb")
    cells = json.loads(nb.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert f"from memlab.labs import {name} as lab" in code
    used = set(re.findall(r"\blab\.(\w+)", code))
    assert used and used <= set(mod.__all__), sorted(used - set(mod.__all__))


# -- the parts that need torch ---------------------------------------------------------------------
def test_data_only_workload_steps() -> None:
    pytest.importorskip("torch")
    from memlab.workloads.jobs import data_only

    exp = Experiment(workload=data_only, mode="inference", batch_size=16, data_size=64)
    w = data_only(exp, "cpu")
    assert sum(p.numel() for p in w.model.parameters()) == 64 * 10 + 10
    assert w.dataset_bytes == 64 * 64 * 4
    for x, y in w.make_batches(5):  # more batches than one epoch holds
        w.step(x, y)
    # A stored experiment names it by module path, and loads it back (what a worker does).
    assert exp.to_dict()["workload"] == "memlab.workloads.jobs:data_only"
    assert Experiment.from_dict(exp.to_dict()).workload is data_only


def test_jobs_module_does_not_import_torch() -> None:
    """The modules a kernel imports to name the lab workload and the labs' jobs leave torch to
    the worker."""
    code = "import sys, memlab.workloads.jobs, memlab.jobs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


@pytest.mark.slow
def test_estimates_table_estimates_every_run_in_a_worker() -> None:
    pytest.importorskip("torch")
    from memlab.estimator import estimate

    base = Experiment(workload="mlp", steps=1, warmup=1, data_size=64)
    exps = (base.replace(batch_size=8), base.replace(batch_size=16))
    measured = (10 * MIB, 20 * MIB)
    sweep = Sweep(
        ("b8", "b16"),
        exps,
        tuple(_result(e, activations=m) for e, m in zip(exps, measured, strict=True)),
    )
    df = batch_size.estimates_table(sweep)
    assert list(df.index) == ["b8", "b16"]
    for label, exp, m in zip(sweep.labels, exps, measured, strict=True):
        predicted = estimate(exp).peak_bytes  # deterministic: the same as the worker's
        assert df.loc[label, "predicted MiB"] == pytest.approx(predicted / MIB)
        assert df.loc[label, "measured MiB"] == m / MIB
        assert df.loc[label, "error %"] == pytest.approx(100 * (predicted / m - 1))


@pytest.mark.slow
def test_accuracies_match_workloads_accuracy() -> None:
    """Training once and applying each variant's knobs gives what memlab.workloads.accuracy
    gives when it trains for each variant."""
    pytest.importorskip("torch")
    from memlab.knobs import accuracy

    base = Experiment(workload="mlp", batch_size=32)
    variants = {
        "dense": base,
        "mask 0.9": base.replace(sparsity=0.9),
        "int8": base.replace(mode="inference", precision="int8"),
    }
    got = sweeps.accuracies(variants, train_steps=5)
    for label, exp in variants.items():
        assert got[label] == pytest.approx(accuracy(exp, train_steps=5, device="cpu")), label


def test_run_sweep_repeat_keeps_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    import memlab.runner

    times = iter([0.05, 0.02, 0.01, 0.04])  # A, B, A, B

    class FakeHandle:
        def __init__(self, exp: Experiment, **_kw: Any) -> None:
            t = next(times)
            self.samples = [{"step": 1, "t": t}]
            self.result = _result(exp, steps=(t, t), activations=100)

        def wait(self) -> RunResult:
            return self.result

    monkeypatch.setattr(memlab.runner, "start", FakeHandle)
    base = Experiment(workload="mlp")
    lines: list[str] = []
    sweep = sweeps.run_sweep(
        {"A": base, "B": base.replace(batch_size=64)}, repeat=2, progress=lines.append
    )
    assert sweep.labels == ("A", "B") and sweep.repeats == 2
    assert sweep["A"].step_time_median_s == 0.01 and sweep["B"].step_time_median_s == 0.02
    assert sweep.samples_of("A")[0]["t"] == 0.01
    assert len(lines) == 8 and lines[0] == "run 1/4: A …"
    assert sweeps.timing_note(sweep) == "Times are the fastest of 2 runs of each setting."
    with pytest.raises(ValueError):
        sweeps.run_sweep({"A": base}, repeat=0)


def test_timing_note_flags_unsteady_steps() -> None:
    exp = Experiment(workload="mlp")
    steady = Sweep(("a",), (exp,), (_result(exp, steps=(0.010, 0.011, 0.010)),))
    assert sweeps.timing_note(steady) == ""
    noisy = Sweep(("a",), (exp,), (_result(exp, steps=(0.010, 0.010, 0.030)),))
    assert "up to 200% longer than the median" in sweeps.timing_note(noisy)


def test_timing_note_names_runs_whose_timing_was_disturbed() -> None:
    from dataclasses import replace

    from memlab.timing import assess

    exp = Experiment(workload="mlp")
    quiet = assess([0.6, 0.6], [1.0, 1.0], [1.02, 1.02], cpus=2, threads=2)
    busy = assess([0.6, 0.6], [0.6, 0.6], [1.4, 1.4], cpus=2, threads=2, busiest=["hog (pid 9)"])
    r = _result(exp, steps=(0.6, 0.6))
    sweep = Sweep(("a", "b"), (exp, exp), (replace(r, timing=quiet), replace(r, timing=busy)))
    note = sweeps.timing_note(sweep)
    assert "Timing disturbed in 1 of 2 runs (b)" in note and "hog (pid 9)" in note
    assert sweeps.timing_note(Sweep(("a",), (exp,), (replace(r, timing=quiet),))) == ""


@pytest.mark.slow
def test_check_prediction_against_the_estimate_and_a_run() -> None:
    pytest.importorskip("torch")
    from memlab.config import Experiment
    from memlab.estimator import estimate

    exp = Experiment(workload="mlp", batch_size=8, steps=1, warmup=1, data_size=64)
    assert exercises.check_prediction(None, exp).ok is None
    assert exercises.check_prediction("lots", exp).ok is False
    peak = estimate(exp).peak_bytes / MIB  # within 3% of the run (tests/test_estimate.py)
    right = exercises.check_prediction(peak, exp)
    assert right.ok is True and "memlab.estimate predicted" in right.message
    assert exercises.check_prediction(peak * 2, exp).ok is False


# -- exercises: graded hints, mistakes of form, the solution only after an attempt -----------------
def _ckpt_sweep() -> Sweep:
    base = Experiment(workload="transformer")
    exps = (base, base.replace(checkpointing="every-block"))
    return Sweep(
        ("off", "every-block"),
        exps,
        (
            _result(exps[0], steps=(0.010,) * 3, parameters=10, activations=8 * MIB),
            _result(exps[1], steps=(0.013,) * 3, parameters=10, activations=2 * MIB),
        ),
    )


def test_exercise_hint_ladder_then_solution() -> None:
    ex = checkpointing.exercise_saving(_ckpt_sweep())  # the truth: 0.75 saved
    assert ex.check(None).ok is None and ex.attempts == 0  # unanswered: no attempt
    first = ex.check(0.5)
    assert first.ok is False and first.hint == ex.hints[0] and not first.solution
    assert "activations" in first.hint and "too low" in first.message
    again = ex.check(0.5)  # the same answer again (the cell run twice) is one attempt
    assert again.attempt == 1 and again.hint == ex.hints[0]
    second = ex.check(0.25)
    assert second.attempt == 2 and second.hint == ex.hints[1] and second.hint != first.hint
    assert not second.solution and not ex.revealed
    third = ex.check(0.3)
    assert third.ok is False and not third.hint and ex.revealed
    # The worked solution is computed from the runs: 8 MiB and 2 MiB of activations.
    assert "(8.0 MiB − 2.0 MiB) / 8.0 MiB = **0.750**" in third.solution
    assert "-75%" in third.solution  # the explanation kept back until now
    md = third._repr_markdown_()
    assert "attempt 3" in md and "Worked solution" in md and "0.750" in md


def test_exercise_right_answer_shows_the_solution_and_reveal_needs_an_attempt() -> None:
    ex = checkpointing.exercise_saving(_ckpt_sweep())
    before = ex.reveal()
    assert before.ok is None and not before.solution and "first" in before.message
    right = ex.check(0.74)
    assert right.ok is True and "0.750" in right.solution and right.attempt == 1
    assert ex.reveal().solution == right.solution
    wrong = checkpointing.exercise_saving(_ckpt_sweep())
    wrong.check(0.1)
    assert "0.750" in wrong.reveal().solution  # on request, after one attempt


def test_mistakes_of_form_are_named_and_not_counted() -> None:
    ex = checkpointing.exercise_saving(_ckpt_sweep())
    pct_ = ex.check(75)
    assert pct_.form_error and "75 looks like a percent" in pct_.message and "0.75" in pct_.message
    text = ex.check("0.75")
    assert text.form_error and "is a string" in text.message and "without quotes" in text.message
    junk = ex.check("lots")
    assert junk.form_error and "'lots'" in junk.message
    assert ex.check(-0.5).form_error and ex.check(True).form_error and ex.check([0.7]).form_error
    assert ex.attempts == 0 and not any(c.hint or c.solution for c in (pct_, text, junk))

    # bytes (or KiB, GiB) where MiB are asked
    d = Experiment(workload="mlp", data_size=1024)
    ram = RunResult(peak_bytes=1, peak_by_category={}, rss_anon_peak_bytes=300 * MIB)
    mm = RunResult(peak_bytes=1, peak_by_category={}, rss_anon_peak_bytes=240 * MIB)
    dsweep = Sweep(("ram", "memmap"), (d, d.replace(data="memmap")), (ram, mm))
    mib = data_loading.exercise_saving(dsweep, "ram", "memmap")
    as_bytes = mib.check(60 * MIB)
    assert as_bytes.form_error and "looks like bytes: answer in MiB" in as_bytes.message
    assert "60 MiB" in as_bytes.message
    assert "looks like GiB" in mib.check(0.06).message
    assert mib.attempts == 0
    assert mib.check(58).ok is True  # within 20% of 60 MiB

    # a label that is not one of the options lists the options
    tour_ex = tour.exercise_biggest_saving(_ckpt_sweep())
    odd = tour_ex.check("fp16")
    assert odd.form_error and "not one of the options" in odd.message
    assert "'every-block'" in odd.message and tour_ex.attempts == 0
    grew = batch_size.exercise_growing(_batch_sweep())
    assert grew.check("activations").form_error  # a set is asked for
    unknown = grew.check({"activation", "inputs"})
    assert unknown.form_error and "activation: not one of the names" in unknown.message
    assert "'temporaries'" in unknown.message

    # a percent where a sparsity level is asked
    acc = sparsity.exercise_accuracy({0.0: 0.9, 0.5: 0.88, 0.9: 0.7})
    assert "90 looks like a percent" in acc.check(90).message and acc.attempts == 0
    assert "not one of the options" in acc.check(0.7).message
    assert acc.check(0.9).ok is False and acc.attempts == 1
    assert acc.check(0.5).ok is True


def test_explanations_before_the_check_do_not_state_the_answers() -> None:
    # tour: which run saved the most (a label)
    sweep = _ckpt_sweep()
    ex = tour.exercise_biggest_saving(sweep)
    assert "every-block" not in tour.explain(sweep)
    assert "every-block" not in " ".join(h for h in ex.hints if isinstance(h, str))
    assert ex.check("every-block").ok is True and "**every-block**" in ex.solution()

    # batch size: which categories grew
    bs = _batch_sweep()
    text = batch_size.explain(bs)
    assert not [c for c in ("activations", "inputs", "temporaries") if c in text], text
    assert "**Grew with the batch:** activations, inputs, temporaries" in (
        batch_size.exercise_growing(bs).solution()
    )

    # checkpointing: the fraction saved (0.75, -75%)
    text = checkpointing.explain(sweep, "off")
    assert "75" not in text  # neither 0.75 nor -75%

    # precision: the category autocast changed the most
    b = Experiment(workload="mlp")
    exps = (b, b.replace(precision="amp-bf16"), b.replace(precision="bf16"))
    psweep = Sweep(
        ("fp32", "amp-bf16", "bf16"),
        exps,
        (
            _result(exps[0], parameters=4 * MIB, activations=3 * MIB, temporaries=MIB),
            _result(exps[1], parameters=4 * MIB, activations=2 * MIB, temporaries=5 * MIB),
            _result(exps[2], parameters=2 * MIB, activations=3 * MIB, temporaries=MIB),
        ),
    )
    text = precision.explain(psweep, "fp32")
    assert "temporaries" not in text and "amp-bf16**" not in text
    auto = precision.exercise_autocast(psweep)
    assert auto.check("activations").ok is False  # moved by 1 MiB only
    assert auto.check("temporaries").ok is True
    assert "The biggest change was **temporaries** (+4.0 MiB)" in auto.solution()

    # sparsity: the crossover (0.677) is neither in the text nor on the chart
    sp = (b, b.replace(sparsity=0.5, sparse_storage="sparse"))
    sm = {
        "sparse_csr_bytes": 6 * MIB,
        "sparse_dense_equivalent_bytes": 4 * MIB,
        "sparse_density_crossover": 0.3229,
    }
    ssweep = Sweep(
        ("dense", "sparse 0.5"),
        sp,
        (_result(sp[0], parameters=4 * MIB), _result(sp[1], metrics=sm, parameters=6 * MIB)),
    )
    text = sparsity.explain(ssweep, "dense")
    assert not [v for v in ("0.677", "0.68", "0.323", "crossover") if v in text], text
    fig = sparsity.bytes_figure(ssweep, "dense")
    labels = [a.text for a in fig.layout.annotations]
    assert labels == ["dense"], labels  # the dense line only, no crossover line
    shown = sparsity.bytes_figure(ssweep, "dense", show_crossover=True)
    assert "CSR crossover 0.68" in [a.text for a in shown.layout.annotations]
    cross = sparsity.exercise_crossover(ssweep)
    assert cross.check(0.5).ok is False and "0.677" not in cross.check(0.5).hint
    assert cross.check(0.68).ok is True and "**0.677**" in cross.solution()

    # data loading: what memmap saved (60 MiB) and the first epoch's growth
    d = Experiment(workload="mlp", data_size=1024)
    kw: dict[str, Any] = {"peak_bytes": 1, "peak_by_category": {}}
    kw["metrics"] = {"dataset_bytes": 64 * MIB}
    ram = RunResult(**kw, rss_anon_peak_bytes=300 * MIB, rss_file_peak_bytes=80 * MIB)
    mm = RunResult(**kw, rss_anon_peak_bytes=240 * MIB, rss_file_peak_bytes=145 * MIB)
    dsweep = Sweep(("ram", "memmap"), (d, d.replace(data="memmap")), (ram, mm))
    text = data_loading.explain(dsweep, "ram", "memmap")
    assert "60" not in text and "less" not in text and "first epoch" not in text, text
    assert "64.0 MiB" in text  # what the learner needs: the data set's size
    assert "**60.0 MiB less**" in data_loading.exercise_saving(dsweep, "ram", "memmap").solution()


def test_largest_batch_exercise_hints_then_a_searched_solution() -> None:
    asked: list[int] = []

    def fake_run(exp: Experiment) -> RunResult:
        asked.append(exp.batch_size)
        return _result(exp, activations=1000 * exp.batch_size + 500)

    base = Experiment(workload="transformer", data_size=64)
    budget = 100_500  # batch 100 fits exactly: the answer is 96, 104 is over
    bs = _batch_sweep()
    ex = batch_size.exercise_largest_batch(bs, base, budget, multiple=8, run=fake_run)
    assert ex.check(96.0).form_error and "int (96)" in ex.check(96.0).message
    assert ex.check(99).form_error and asked == []  # not a multiple: nothing runs
    low = ex.check(80)
    assert low.ok is False and "Go higher" in low.message and "line" in low.hint
    high = ex.check(112)
    assert "Go lower" in high.message and high.hint == ex.hints[1] and not high.solution
    n_runs = len(asked)
    last = ex.check(104)
    assert last.ok is False and last.solution and "**96**" in last.solution
    assert "| 96 |" in last.solution and "| 104 |" in last.solution  # the runs behind it
    assert len(asked) - n_runs <= 3  # runs are kept: each batch size measured once
    assert sorted(asked) == sorted(set(asked))
    # The line the solution starts from is the sweep's (computed, not hard-coded).
    slope, fixed = batch_size.peak_line(bs)
    assert f"**{(budget - fixed) / slope:.1f}** samples" in last.solution


def test_panel_challenge_points_at_the_biggest_category_of_the_latest_run() -> None:
    class FakePanel:
        result: RunResult | None = None

    sweep = _ckpt_sweep()
    ex = tour.exercise_fit_batch(sweep, max_peak_bytes=5 * MIB, min_batch=64)
    p = FakePanel()
    assert ex.check(p).ok is None
    exp = Experiment(workload="transformer", batch_size=32)
    p.result = _result(exp, activations=8 * MIB)
    small = ex.check(p)
    assert small.form_error and "at least 64" in small.message and ex.attempts == 0
    p.result = _result(exp.replace(batch_size=64), parameters=MIB, activations=16 * MIB)
    over = ex.check(p)
    assert over.ok is False and "biggest category at the peak was activations" in over.hint
    assert "16.0 MiB" in over.hint
    p.result = _result(exp.replace(batch_size=64, precision="bf16"), activations=12 * MIB)
    assert "every-block: activations −6.0 MiB" in ex.check(p).hint  # the tour's numbers
    p.result = _result(exp.replace(batch_size=64, checkpointing="every-block"), activations=MIB)
    ok = ex.check(p)
    assert ok.ok is True and "{'checkpointing': 'every-block'}" in ok.message and ok.solution


def test_predicted_run_exercises_run_once_and_solve_from_the_runs() -> None:
    runs: list[Experiment] = []

    def fake_run(exp: Experiment) -> RunResult:
        runs.append(exp)
        return _result(exp, parameters=2 * MIB, activations=exp.batch_size * 100_000)

    # lab 03, exercise 1: bf16 parameters predicted from the panel's fp32 run
    b = Experiment(workload="mlp")
    fp32 = _result(b, parameters=4 * MIB)
    ex = precision.exercise_parameters(fp32, b.replace(precision="bf16"), run=fake_run)
    assert ex.check(None).ok is None and runs == []  # nothing runs until an answer is given
    assert "4.0 MiB" in ex.check(4).hint and len(runs) == 1
    assert ex.check(2 * MIB).form_error  # bytes
    right = ex.check(2.02)
    assert right.ok is True and "**2.00 MiB**" in right.solution and len(runs) == 1

    # lab 01, exercise 3: the peak at batch 48
    bs = _batch_sweep()
    pred = batch_size.exercise_prediction(
        bs, Experiment(workload="transformer", batch_size=48), run=fake_run, estimate=lambda e: 5e6
    )
    truth = (2 * MIB + 48 * 100_000) / MIB
    wrong = pred.check(truth * 2)
    assert wrong.ok is False and "too high" in wrong.message and "line" in wrong.hint
    assert f"{truth:.1f}" not in wrong.message + wrong.hint  # not the measured value
    assert pred.check(truth * MIB).form_error
    got = pred.check(truth)
    slope, fixed = batch_size.peak_line(bs)
    assert got.ok is True and f"**{(fixed + 48 * slope) / MIB:.1f} MiB**" in got.solution
    assert f"{5e6 / MIB:.1f} MiB without running" in got.solution


def test_a_wrong_number_does_not_leak_the_truth_through_its_tolerance() -> None:
    # 5% of 16.1 MiB in MiB would be 0.805, from which the truth follows: say 5% instead.
    wrong = checks.check_number(30, 16.1, rel_tol=0.05, unit="MiB")
    assert (
        wrong.ok is False and "more than 5% off" in wrong.message and "0.805" not in wrong.message
    )
    assert "more than 0.05 off" in checks.check_number(0.5, 0.75, abs_tol=0.05).message
    big = checks.check_number(30 * MIB, 30.0, rel_tol=0.1, unit="MiB")
    assert big.form_error and big.message.startswith(f"{30 * MIB} looks like bytes")
