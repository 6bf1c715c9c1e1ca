"""Lab 11's module on hand-made SearchResults (no torch, no worker): the explanation and
claims are computed from the data (change the data, the text changes), the exercise takes its
truth from the data, the explanation shown before the exercise does not give its answer, and
the live Pareto callback updates its figure's traces."""

from __future__ import annotations

import dataclasses

import pytest

from memlab.config import MIB
from memlab.labs import capstone as lab
from memlab.nas import Candidate, SearchResult, Verification, pareto_front

BUDGET = 16 * MIB


def cand(
    number: int, arch: str, peak_mib: float, acc: float | None, lat_ms: float = 1.0
) -> Candidate:
    peak = int(peak_mib * MIB)
    fits = peak <= BUDGET
    return Candidate(
        number=number,
        architecture=arch,
        family=arch.split("_")[0],
        predicted_peak_bytes=peak,
        feasible=fits,
        trained=fits,
        accuracy=acc if fits else None,
        latency_s=lat_ms / 1e3 if fits else None,
        params=1000 if fits else None,
    )


def make(
    *,
    small_acc: float = 0.93,
    measured_mib: float | None = 8.1,
    sampler: str = "nsga2",
    extra: tuple[Candidate, ...] = (),
) -> SearchResult:
    cands = (
        cand(0, "mlp_d4_w512_e4", 12.0, 0.95, 3.0),  # the baseline: the largest trained peak
        cand(1, "cnn_d1_w8_k3", 5.0, small_acc, 0.5),  # under half of 12 MiB
        cand(2, "transformer_d4_w64_e4", 40.0, None),  # over the budget
        cand(3, "mlp_d1_w64_e1", 2.0, 0.80, 0.2),
        cand(4, "cnn_d2_w32_k5", 8.0, 0.97, 2.0),  # the most accurate: chosen
        *extra,
    )
    chosen = max((c for c in cands if c.trained), key=lambda c: c.accuracy or 0.0)
    ver = Verification(
        architecture=chosen.architecture,
        status="ok" if measured_mib is not None else "oom",
        predicted_peak_bytes=chosen.predicted_peak_bytes,
        measured_peak_bytes=None if measured_mib is None else int(measured_mib * MIB),
        budget_bytes=BUDGET,
    )
    return SearchResult(
        sampler=sampler,
        seed=0,
        profile="rpi-zero-2w",
        budget_bytes=BUDGET,
        train_steps=150,
        experiment={},
        candidates=cands,
        pareto=pareto_front(cands),
        chosen=chosen,
        verification=ver,
    )


def test_explain_is_computed_from_the_result() -> None:
    r = make()
    text = lab.explain(r)
    assert "5 candidates" in text and "1 were predicted over it" in text
    assert "4 were trained for 150 steps" in text
    verb = "lies" if len(r.pareto) == 1 else "lie"
    assert f"{len(r.pareto)} {verb} on the Pareto front" in text
    assert "`cnn_d2_w32_k5`" in text and "0.970" in text
    assert "+1.2%" in text and "within the 3% tolerance" in text  # 8.1 / 8.0 - 1
    # Change the data, the text changes.
    off = lab.explain(make(measured_mib=8.5))
    assert "+6.2%" in off and "outside the 3% tolerance" in off
    assert "ended `oom`" in lab.explain(make(measured_mib=None))
    more = lab.explain(make(extra=(cand(5, "mlp_d2_w32_e2", 30.0, None),)))
    assert "6 candidates" in more and "2 were predicted over it" in more


def test_claims_follow_the_data() -> None:
    assert lab.claims(make()) == {
        "trained within budget": True,
        "over budget never trained": True,
        "chosen within 3%": True,
    }
    assert lab.claims(make(measured_mib=8.4))["chosen within 3%"] is False  # +5%
    assert lab.claims(make(measured_mib=None))["chosen within 3%"] is False
    # A candidate over the budget that was trained anyway breaks both budget claims.
    bad = dataclasses.replace(cand(5, "mlp_d4_w512_e4", 20.0, None), trained=True, accuracy=0.9)
    c = lab.claims(make(extra=(bad,)))
    assert c["trained within budget"] is False and c["over budget never trained"] is False


def test_exercise_takes_its_truth_from_the_data() -> None:
    r = make()
    base = lab.baseline_of(r)
    assert base.architecture == "mlp_d4_w512_e4"
    # 5 MiB <= 6 MiB but 0.93 < 0.95: no winner; at 0.96 cnn_d1_w8_k3 wins.
    assert lab.half_memory_winners(r, base) == []
    ex = lab.exercise_half_memory(r)
    assert ex.check(None).ok is None
    assert ex.check("cnn_d1_w8_k3").ok is False
    assert ex.check("not_a_model").form_error  # not among the trained ones: not an attempt
    assert ex.attempts == 1
    right = ex.check("none")
    assert right.ok is True and "`none`" in right.solution
    r2 = make(small_acc=0.96)
    assert lab.half_memory_winners(r2, lab.baseline_of(r2)) == ["cnn_d1_w8_k3"]
    ex2 = lab.exercise_half_memory(r2)
    assert ex2.check("none").ok is False
    assert ex2.check(" CNN-d1-w8-k3 ").ok is True  # spelling normalised like every lab
    # cnn_d2_w32_k5 is more accurate but 8 MiB > half of 12 MiB: wrong.
    assert lab.check_half_memory("cnn_d2_w32_k5", lab.baseline_of(r2), r2).ok is False


def test_several_right_answers_each_accepted() -> None:
    r = make(small_acc=0.96, extra=(cand(5, "mlp_d1_w32_e2", 1.0, 0.955),))
    base = lab.baseline_of(r)
    assert lab.half_memory_winners(r, base) == ["cnn_d1_w8_k3", "mlp_d1_w32_e2"]
    for a in ("cnn_d1_w8_k3", "mlp_d1_w32_e2"):
        assert lab.check_half_memory(a, base, r).ok is True
    sol = lab.why_half_memory(r, base)
    assert "`cnn_d1_w8_k3`" in sol and "`mlp_d1_w32_e2`" in sol and "Right answers" in sol


def test_no_answer_on_screen_before_the_learner_tries() -> None:
    r = make(small_acc=0.96)
    (winner,) = lab.half_memory_winners(r, lab.baseline_of(r))
    shown = lab.explain(r) + lab.explain_samplers({"nsga2": r, "random": make(sampler="random")})
    assert winner not in shown
    ex = lab.exercise_half_memory(r)
    assert winner not in ex.question and not any(winner in str(h) for h in ex.hints)
    first_wrong = ex.check("mlp_d1_w64_e1")
    assert first_wrong.ok is False and winner not in repr(first_wrong)
    assert ex.reveal().solution  # after an attempt the solution may be shown


def test_no_baseline_without_a_trained_candidate() -> None:
    r = SearchResult("nsga2", 0, "rpi-zero-2w", BUDGET, 10, {}, (cand(0, "x_d1", 40.0, None),))
    with pytest.raises(ValueError, match="no candidate"):
        lab.baseline_of(r)
    assert "No candidate fitted" in lab.explain(r)


def test_explain_samplers_compares_the_searches() -> None:
    nsga = make()
    worse = tuple(
        dataclasses.replace(c, accuracy=0.9) if c.accuracy == 0.97 else c for c in make().candidates
    )
    rand = dataclasses.replace(make(sampler="random"), candidates=worse)
    text = lab.explain_samplers({"NSGA-II": nsga, "random": rand})
    assert "| NSGA-II | 5 | 5 | 1 | 4 | 0.970 | 5 |" in text
    assert "| random | 5 | 5 | 1 | 4 | 0.950 | 1 |" in text
    assert "NSGA-II found the more accurate model (0.970 against 0.950)" in text
    assert "same best accuracy, 0.970" in lab.explain_samplers({"a": nsga, "b": make()})
    with pytest.raises(ValueError, match="results"):
        lab.explain_samplers({})


def test_live_pareto_callback_updates_the_figure() -> None:
    pytest.importorskip("anywidget")
    fw, on_trial = lab.live_pareto()
    assert all(len(t.x or ()) == 0 for t in fw.data)
    r = make()
    partial = dataclasses.replace(
        r, candidates=r.candidates[:3], pareto=pareto_front(r.candidates[:3]), chosen=None
    )
    on_trial(partial)
    by = {t.name: t for t in fw.data}
    assert len(by["trained (fits)"].x) == 2 and len(by["over budget (not trained)"].x) == 1
    assert list(by["over budget (not trained)"].x) == [pytest.approx(40.0)]
    assert len(by["chosen"].x) == 0
    on_trial(r)
    by = {t.name: t for t in fw.data}
    assert len(by["trained (fits)"].x) == 4
    assert sorted(by["Pareto front"].text) == sorted(r[n].architecture for n in r.pareto)
    assert list(by["chosen"].x) == [pytest.approx(8.0)] and list(by["chosen"].y) == [0.97]
    assert "5 trials, 4 trained" in fw.layout.title.text
