"""memlab.nas (lab 11's search) and memlab search: the budget is respected for every candidate it
trains, infeasible ones are never trained, seeded samplers propose the same candidates, the
front is non-dominated (brute force here), and the chosen model's measured peak is within 3% of
its prediction (a real run under the profile and budget)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memlab.nas import Candidate, SearchResult, SearchSpace, pareto_front, search_architectures

pytest.importorskip("optuna")

PROFILE = "rpi-zero-2w"
BUDGET = 16 * 2**20
# Small enough to be quick, wide enough that some candidates do not fit 16 MiB (an MLP of
# width 512 and depth 4 holds 34 MB of weights) and some do.
SPACE = SearchSpace(
    families=("mlp", "cnn"),
    depths=(1, 4),
    widths={"mlp": (64, 512), "cnn": (8, 32)},
    kernels=(3, 5),
    expansions=(1, 4),
)
KW: dict[str, Any] = dict(profile=PROFILE, budget_bytes=BUDGET, train_steps=5, trials=6)


@pytest.fixture(scope="module")
def cache() -> dict[Any, Candidate]:
    return {}


@pytest.fixture(scope="module")
def nsga(cache: dict[Any, Candidate]) -> SearchResult:
    seen: list[int] = []
    r = search_architectures(
        SPACE,
        sampler="nsga2",
        seed=3,
        cache=cache,
        on_trial=lambda s: seen.append(len(s.candidates)),
        **KW,
    )
    assert seen[: KW["trials"]] == list(range(1, KW["trials"] + 1))  # called as trials end
    return r


def test_budget_respected_and_infeasible_never_trained(nsga: SearchResult) -> None:
    assert len(nsga.candidates) == KW["trials"]
    assert nsga.trained, "nothing fitted: the test's space is wrong"
    for c in nsga.candidates:
        assert c.feasible == (c.predicted_peak_bytes <= BUDGET)
        assert c.trained == c.feasible
        if c.trained:
            assert c.accuracy is not None and 0.0 <= c.accuracy <= 1.0
            assert c.latency_s is not None and c.latency_s > 0
            assert c.latency_steady is not None and c.latency_note  # a verdict, in words
        else:
            assert c.accuracy is None and c.latency_s is None


def test_chosen_verified_within_3_percent(nsga: SearchResult) -> None:
    chosen, v = nsga.chosen, nsga.verification
    assert chosen is not None and v is not None
    best = max(c.accuracy for c in nsga.trained if c.accuracy is not None)
    assert chosen.accuracy == best
    assert v.status == "ok"
    assert v.measured_peak_bytes is not None and v.measured_peak_bytes <= BUDGET
    assert abs(v.measured_peak_bytes - v.predicted_peak_bytes) <= 0.03 * v.predicted_peak_bytes


def test_front_is_non_dominated_by_brute_force(nsga: SearchResult) -> None:
    def objs(c: Candidate) -> tuple[float, float, float]:
        assert c.accuracy is not None and c.latency_s is not None
        return (-c.accuracy, c.predicted_peak_bytes, c.latency_s)

    trained = list(nsga.trained)
    for c in trained:
        dominated = any(
            all(a <= b for a, b in zip(objs(o), objs(c), strict=True)) and objs(o) != objs(c)
            for o in trained
        )
        if c.number in nsga.pareto:
            assert not dominated
        elif c.architecture not in {nsga[n].architecture for n in nsga.pareto}:
            assert dominated


def test_pareto_front_on_hand_made_points() -> None:
    def cand(n: int, acc: float, peak: int, lat: float) -> Candidate:
        return Candidate(n, f"mlp_d1_w{n + 8}_e1", "mlp", peak, True, True, acc, lat, 1)

    pts = [cand(0, 0.9, 100, 1.0), cand(1, 0.8, 200, 2.0), cand(2, 0.5, 50, 1.0)]
    assert pareto_front(pts) == (0, 2)  # 1 is worse than 0 in all three


def test_seeded_samplers_propose_the_same(nsga: SearchResult, cache: dict[Any, Candidate]) -> None:
    again = search_architectures(SPACE, sampler="nsga2", seed=3, cache=cache, verify=False, **KW)
    assert [c.architecture for c in again.candidates] == [c.architecture for c in nsga.candidates]
    kw = {**KW, "trials": 3}
    r1 = search_architectures(SPACE, sampler="random", seed=3, cache=cache, verify=False, **kw)
    r2 = search_architectures(SPACE, sampler="random", seed=3, cache=cache, verify=False, **kw)
    assert [c.architecture for c in r1.candidates] == [c.architecture for c in r2.candidates]
    assert all(c.trained == (c.predicted_peak_bytes <= BUDGET) for c in r1.candidates)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (dict(profile="nope"), "profile"),
        (dict(profile=PROFILE, budget_bytes=0), "budget_bytes"),
        (dict(profile=PROFILE, budget_bytes=-5), "budget_bytes"),
        (dict(profile=PROFILE, trials=0), "trials"),
        (dict(profile=PROFILE, sampler="grid"), "sampler"),
    ],
)
def test_bad_input_names_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        search_architectures(**kw)


def test_cli_json(capsys: pytest.CaptureFixture[str], nsga: SearchResult) -> None:
    from memlab.cli import main

    rc = main(
        [
            "search",
            "--device",
            PROFILE,
            "--budget",
            "16MiB",
            "--trials",
            "2",
            "--sampler",
            "random",
            "--train-steps",
            "3",
            "--no-verify",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["profile"] == PROFILE and out["budget_bytes"] == BUDGET
    assert len(out["candidates"]) == 2
    assert all(c["trained"] == (c["predicted_peak_bytes"] <= BUDGET) for c in out["candidates"])
    assert main(["search", "--device", PROFILE, "--sampler", "grid"]) == 2


def test_a_latency_taken_beside_busy_processes_is_flagged_disturbed() -> None:
    """Two busy loops, one per core, while a candidate's forwards are timed: memlab.timing's
    verdict (others' CPU share over the timed window) marks the latency disturbed and names
    the busy processes."""
    import subprocess
    import sys

    from memlab.config import Experiment
    from memlab.nas import Architecture, candidate_experiment, train_and_time

    exp = candidate_experiment(
        Architecture("mlp", 1, 32, expansion=1),
        Experiment(workload="mlp", mode="inference", batch_size=8, data_size=256),
    )
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        got = train_and_time(exp, 1)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert got["latency_steady"] is False, got["latency_note"]
    assert "python" in got["latency_note"], got["latency_note"]
