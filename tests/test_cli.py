"""The command line, as a user runs it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

REQUIRED = {
    "status",
    "error",
    "experiment",
    "peak_bytes",
    "peak_by_category",
    "rss_peak_bytes",
    "rss_anon_peak_bytes",
    "rss_file_peak_bytes",
    "step_time_s",
    "throughput_samples_per_s",
}


def memlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memlab", *args], capture_output=True, text=True, timeout=timeout
    )


def test_run_json_has_every_figure() -> None:
    p = memlab("run", "--workload", "mlp", "--batch-size", "16", "--steps", "2", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert REQUIRED <= set(d)
    assert d["status"] == "ok" and d["error"] is None
    assert d["experiment"]["batch_size"] == 16
    assert sum(d["peak_by_category"].values()) == d["peak_bytes"] > 0
    assert set(d["step_time_s"]) == {"median", "p95"}
    assert d["throughput_samples_per_s"] > 0


def test_run_table_is_readable() -> None:
    p = memlab("run", "--workload", "mlp", "--steps", "1")
    assert p.returncode == 0, p.stderr
    assert "peak (tensors)" in p.stdout and "parameters" in p.stdout
    assert "RSS peak" in p.stdout


def test_over_budget_exits_3() -> None:
    p = memlab("run", "--workload", "mlp", "--steps", "1", "--budget", "100KB", "--json")
    assert p.returncode == 3, p.stderr
    assert json.loads(p.stdout)["status"] == "oom"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "-3"], "batch_size must be a positive int, got -3"),
        (["--batch-size", "many"], "--batch-size"),
        (["--precision", "fp8"], "precision"),
        (["--budget", "lots"], "budget"),
        (["--sparsity", "1.5"], "sparsity"),
        (["--frobnicate"], "--frobnicate"),
    ],
)
def test_bad_argument_is_one_line_exit_2(args: list[str], needle: str) -> None:
    p = memlab("run", *args, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_estimate_json_is_labelled_predicted() -> None:
    p = memlab("estimate", "--workload", "transformer", "--batch-size", "8", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["predicted"] is True
    assert sum(d["peak_by_category"].values()) == d["peak_bytes"] > 0
    assert d["peak_bytes"] == max(d["first_step_peak_bytes"], d["steady_peak_bytes"])
    assert d["experiment"]["batch_size"] == 8


def test_estimate_max_batch_confirmed_by_a_run() -> None:
    p = memlab("estimate", "--workload", "transformer", "--max-batch", "--budget", "40MB", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["predicted_peak_bytes"] <= 40_000_000
    # the next batch size up was predicted over the budget (or the search hit its limit)
    over = [int(b) for b, v in d["searched"].items() if v > 40_000_000]
    assert over and min(over) == d["batch_size"] + 1
    assert d["confirmed"]["status"] == "ok" and d["confirmed"]["peak_bytes"] <= 40_000_000


def test_estimate_max_batch_needs_a_budget() -> None:
    p = memlab("estimate", "--max-batch", timeout=60)
    assert p.returncode == 2 and "--budget" in p.stderr
