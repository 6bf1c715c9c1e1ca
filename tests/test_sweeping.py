"""memlab.sweep: a grid of measured runs, cached by experiment hash in the run store, locally
and on a real local Ray cluster; the ``memlab sweep`` CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from memlab.config import Experiment
from memlab.store import Store, default_store, experiment_hash, machine_info
from memlab.sweeping import SweepResult, sweep

# A tiny measured run (one step, 64 samples); seed 15 keeps its hash apart from other tests'.
BASE = Experiment(workload="mlp", steps=1, warmup=0, data_size=64, batch_size=8, seed=15)
GRID = {"batch_size": [8, 16], "precision": ["fp32"]}
CACHED_S = 1.0  # a generous deadline for a sweep that only reads the store


def _sweep_rows(store: Store) -> int:
    return int((store.runs(source="sweep")["exp_hash"].isin(_hashes(GRID))).sum())


def _hashes(grid: dict[str, list[Any]]) -> set[str]:
    import itertools

    return {
        experiment_hash(BASE.replace(**dict(zip(grid, combo, strict=True))))
        for combo in itertools.product(*grid.values())
    }


def _point_symbols(fig: Any) -> list[str]:
    """The marker of each drawn run (the legend's marker-meaning entries have one symbol)."""
    return [s for tr in fig.data if isinstance(tr.marker.symbol, tuple) for s in tr.marker.symbol]


@pytest.fixture(scope="module")
def local() -> tuple[SweepResult, float, SweepResult, float, int]:
    """The grid swept twice into the session's store: measured, then from the cache."""
    if importlib.util.find_spec("torch") is None:  # not imported here: the runs are workers'
        pytest.skip("torch is not installed")
    store = default_store()
    t0 = time.perf_counter()
    first = sweep(BASE, GRID, progress=False)
    t_first = time.perf_counter() - t0
    n_after_first = _sweep_rows(store)
    t0 = time.perf_counter()
    again = sweep(BASE, GRID, progress=False)
    t_again = time.perf_counter() - t0
    return first, t_first, again, t_again, n_after_first


def test_a_local_sweep_runs_each_configuration_and_saves_it_as_a_sweep(
    local: tuple[SweepResult, float, SweepResult, float, int],
) -> None:
    first, _t, _again, _t2, n_saved = local
    store = default_store()
    assert [r.config for r in first.rows] == [
        {"batch_size": 8, "precision": "fp32"},
        {"batch_size": 16, "precision": "fp32"},
    ]
    assert [r.status for r in first.rows] == ["ok", "ok"], [r.error for r in first.rows]
    assert not any(r.cached for r in first.rows) and first.n_run == 2
    assert n_saved == 2
    for row, result in zip(first.rows, first.results, strict=True):
        assert row.run_id is not None
        info = store.info(row.run_id)
        assert info.source == "sweep"
        assert info.exp_hash == experiment_hash(BASE.replace(**row.config))
        # The row's figures are the run's, as the store holds them.
        assert row.peak_bytes == store.load(row.run_id).peak_bytes == result.peak_bytes > 0
        assert row.step_time_s == result.step_time_median_s
    table = first.table()
    assert list(table["batch_size"]) == [8, 16] and list(table["cached"]) == [False, False]
    assert _point_symbols(first.figure()) == ["circle", "circle"]


def test_the_re_run_is_loaded_from_the_store_without_running(
    local: tuple[SweepResult, float, SweepResult, float, int],
) -> None:
    first, t_first, again, t_again, n_saved = local
    assert all(r.cached for r in again.rows) and again.n_run == 0
    assert [r.run_id for r in again.rows] == [r.run_id for r in first.rows]
    assert [r.peak_bytes for r in again.rows] == [r.peak_bytes for r in first.rows]
    assert _sweep_rows(default_store()) == n_saved  # no new run saved: none ran
    assert t_again < CACHED_S and t_again < t_first / 5, (t_again, t_first)
    fig = again.figure(x="batch_size")
    assert _point_symbols(fig) == ["circle-open"] * 2
    assert "2 of 2 runs cached" in fig.layout.title.text


def test_rerun_measures_again_and_repeat_counts_the_stored_runs(
    local: tuple[SweepResult, float, SweepResult, float, int],
) -> None:
    first = local[0]
    store = default_store()
    n0 = _sweep_rows(store)
    fresh = sweep(BASE, {"batch_size": [8]}, rerun=True, progress=False)
    assert [r.cached for r in fresh.rows] == [False] and fresh.rows[0].status == "ok"
    assert fresh.rows[0].run_id not in {r.run_id for r in first.rows}
    assert _sweep_rows(store) == n0 + 1
    # batch_size 8 now has two finished runs: repeat=2 is answered from the store, newest first.
    t0 = time.perf_counter()
    two = sweep(BASE, {"batch_size": [8]}, repeat=2, progress=False)
    assert time.perf_counter() - t0 < CACHED_S
    assert [r.cached for r in two.rows] == [True, True] and _sweep_rows(store) == n0 + 1
    assert [r.run_id for r in two.rows] == [fresh.rows[0].run_id, first.rows[0].run_id]
    assert [r.repeat for r in two.rows] == [0, 1]


@pytest.mark.parametrize(
    ("grid", "kw", "words"),
    [
        ({"batchsize": [8]}, {}, ["'batchsize'", "batch_size", "precision"]),
        ({"batch_size": [8, 0]}, {}, ["batch_size", "positive int", "0"]),
        ({"precision": ["fp32", "fp8"]}, {}, ["precision", "'bf16'", "'fp8'"]),
        ({"precision": ["int8"]}, {}, ["precision", "inference"]),  # a rule across fields
        ({"batch_size": 8}, {}, ["batch_size", "list"]),
        ({"batch_size": [8, 8]}, {}, ["batch_size", "more than once"]),
        ({"batch_size": [8]}, {"repeat": 0}, ["repeat"]),
        ({"batch_size": [8]}, {"backend": "gpu"}, ["backend", "'local'", "'ray'"]),
    ],
)
def test_a_bad_grid_is_refused_before_anything_runs(
    grid: dict[str, Any], kw: dict[str, Any], words: list[str]
) -> None:
    store = Store(Path(tempfile.mkdtemp()) / "runs.sqlite")
    with pytest.raises(ValueError) as e:
        sweep(BASE, grid, progress=False, store=store, **kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert len(store) == 0


def test_cli_sweep_prints_the_cached_rows_as_json(
    local: tuple[SweepResult, float, SweepResult, float, int],
) -> None:
    first = local[0]
    args = [
        *("--workload", "mlp", "--steps", "1", "--warmup", "0", "--data-size", "64"),
        *("--seed", "15", "--grid", "batch_size=8,16", "--grid", "precision=fp32"),
    ]
    cli = [sys.executable, "-m", "memlab", "sweep"]
    p = subprocess.run([*cli, *args, "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["backend"] == "local"
    assert [(r["batch_size"], r["precision"], r["cached"]) for r in out["rows"]] == [
        (8, "fp32", True),
        (16, "fp32", True),
    ]
    assert out["rows"][1]["run_id"] == first.rows[1].run_id
    assert out["rows"][1]["peak_bytes"] == first.rows[1].peak_bytes
    bad = subprocess.run([*cli, *args, "--grid", "precision=fp8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "precision" in bad.stderr and "fp8" in bad.stderr


@pytest.mark.slow
def test_a_sweep_on_a_local_ray_cluster_lands_in_the_store_and_its_re_run_is_instant(
    local: tuple[SweepResult, float, SweepResult, float, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray = pytest.importorskip("ray")
    first = local[0]
    # On a loaded 2-core machine Ray's agents can take longer than the raylet's default wait.
    monkeypatch.setenv("RAY_agent_register_timeout_ms", "180000")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    store = Store(Path(tmp) / "runs.sqlite")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    try:
        grid = {"batch_size": [8, 4]}
        res = sweep(BASE, grid, backend="ray", store=store, progress=False)
        assert res.backend == "ray"
        assert [r.status for r in res.rows] == ["ok", "ok"], [r.error for r in res.rows]
        assert not any(r.cached for r in res.rows) and len(store) == 2
        for row, result in zip(res.rows, res.results, strict=True):
            assert row.run_id is not None and store.info(row.run_id).source == "sweep"
            assert any("measured on Ray node" in n for n in result.notes)
            # the node's machine is stored (a local cluster: this machine's hardware)
            assert store.info(row.run_id).machine["id"] == machine_info()["id"]
        # The same experiment measured through Ray and locally: the same tensor peak.
        assert res.rows[0].peak_bytes == pytest.approx(first.rows[0].peak_bytes, rel=0.01)
        t0 = time.perf_counter()
        again = sweep(BASE, grid, backend="ray", store=store, progress=False)
        assert time.perf_counter() - t0 < CACHED_S
        assert all(r.cached for r in again.rows) and len(store) == 2
        assert [r.run_id for r in again.rows] == [r.run_id for r in res.rows]
    finally:
        ray.shutdown()
        store.close()
