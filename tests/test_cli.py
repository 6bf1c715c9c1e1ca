"""The command line, as a user runs it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("torch")


from memlab import cli
from memlab.config import FIELDS, ConfigError, Experiment

from .experiments import every_field_changed

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
    "timing",
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
    timing = d["timing"]
    assert {"steady", "cpu_share", "disturbed_steps", "note"} <= set(timing)
    assert isinstance(timing["steady"], bool) and isinstance(timing["note"], str)
    assert 0 < timing["cpu_share"] and 0 <= timing["disturbed_steps"] <= 2
    # the reported median is the timed steps' (untracked), which the JSON lists
    assert d["step_time_s"]["median"] == pytest.approx(statistics.median(timing["step_wall_s"]))
    # saved in the run store (the session's, conftest.py), under the id it printed
    from memlab.store import load

    assert load(d["run_id"]).to_dict(timeline=False) == {k: d[k] for k in d if k != "run_id"}


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
        (["--batch-size", "many"], "batch_size must be a positive int, got 'many'"),
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


# -- the options derive from config.FIELDS ------------------------------------------------------
def _options(command: str) -> dict[str, argparse.Action]:
    """The experiment options of ``memlab <command>``, by destination."""
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out: dict[str, argparse.Action] = {}
    for a in sub.choices[command]._actions:
        if a.option_strings:
            out.setdefault(a.dest, a)  # a bool's --no-<name> shares the dest: keep the first
    return out


@pytest.mark.parametrize("command", ["run", "estimate"])
def test_every_field_is_an_option_with_its_declared_default_and_choices(command: str) -> None:
    options = _options(command)
    extra = {"help", "json", "timeout", "max_batch", "no_confirm"}
    assert set(options) - extra == set(FIELDS)
    for name, spec in FIELDS.items():
        a = options[name]
        assert "--" + spec.option.replace("_", "-") in a.option_strings
        assert a.default == spec.default, name
        assert spec.help in (a.help or ""), name
        if spec.choices:
            assert a.metavar is not None and a.metavar.startswith(
                "{" + ",".join(spec.choices) + "}"
            ), name
    # the defaults parse to the default Experiment
    ns = cli._parser().parse_args([command])
    assert cli.experiment_from_args(ns) == Experiment()


def _argv(exp: Experiment) -> list[str]:
    argv: list[str] = []
    for name, spec in FIELDS.items():
        v = exp.to_dict()[name]
        flag = "--" + spec.option.replace("_", "-")
        if spec.kind == "bool":
            argv.append(flag if v else "--no-" + flag[2:])
        elif v is not None:
            argv += [flag, str(v)]
    return argv


def test_every_field_round_trips_through_the_command_line() -> None:
    both = every_field_changed()
    changed = {n for e in both for n, s in FIELDS.items() if getattr(e, n) != s.default}
    assert changed == set(FIELDS), f"change every field: {set(FIELDS) - changed}"
    for e in both:
        ns = cli._parser().parse_args(["run", *_argv(e)])
        assert cli.experiment_from_args(ns) == e
    # a field with an alias also answers to its own name
    ns = cli._parser().parse_args(["estimate", "--budget-bytes", "2GB"])
    assert cli.experiment_from_args(ns).budget_bytes == 2 * 10**9


# A value of the wrong kind for each field, as typed on the command line.
_BAD_TEXT = {"choice": "nope", "workload": "nope", "int": "many", "float": "lots", "bytes": "lots"}


@pytest.mark.parametrize("name", [n for n, s in FIELDS.items() if s.kind != "bool"])
def test_bad_value_gives_the_config_message_and_exit_2(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = FIELDS[name]
    text = _BAD_TEXT[spec.kind]
    with pytest.raises(ConfigError) as ei:
        Experiment(**{name: text})
    flag = "--" + spec.option.replace("_", "-")
    assert cli.main(["run", flag, text]) == 2
    assert capsys.readouterr().err == f"memlab: error: {ei.value}\n"


# (field, as typed, the same value in Python): numbers arrive as numbers, sizes as text
@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("batch_size", "-3", -3),
        ("sparsity", "1.5", 1.5),
        ("warmup", "-1", -1),
        ("budget_bytes", "0", "0"),
    ],
)
def test_out_of_range_value_gives_the_config_message(
    name: str, text: str, value: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as ei:
        Experiment(**{name: value})
    flag = "--" + FIELDS[name].option.replace("_", "-")
    assert cli.main(["estimate", flag, text]) == 2
    assert capsys.readouterr().err == f"memlab: error: {ei.value}\n"


def _store_cli(path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEMLAB_STORE": str(path)}
    return subprocess.run(
        [sys.executable, "-m", "memlab", *args], capture_output=True, text=True, env=env
    )


def test_runs_show_and_compare_read_the_store(tmp_path: Any) -> None:
    from memlab.store import Store

    from .runs_data import make_result

    path = tmp_path / "runs.sqlite"
    a, b = make_result(1), make_result(2, status="oom")
    with Store(path) as s:
        ia, ib = s.save(a), s.save(b)
    p = _store_cli(path, "runs", "--json", "--limit", "5")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["id"] for r in rows] == [ib, ia]
    assert [r["peak_bytes"] for r in rows] == [b.peak_bytes, a.peak_bytes]
    assert rows[0]["status"] == "oom" and rows[1]["step_time_s"] == a.step_time_median_s
    p = _store_cli(path, "runs")
    assert p.returncode == 0 and ia in p.stdout and ib in p.stdout
    p = _store_cli(path, "compare", ia[:6], ib, "--json")
    assert p.returncode == 0, p.stderr
    c = json.loads(p.stdout)
    assert (c["a"]["id"], c["b"]["id"]) == (ia, ib)
    peak = next(d for d in c["deltas"] if d["name"] == "peak tensors")
    assert peak["delta"] == b.peak_bytes - a.peak_bytes
    p = _store_cli(path, "compare", ia, ib)
    assert p.returncode == 0 and "changed: batch_size 9 -> 10, seed 1 -> 2" in p.stdout
    p = _store_cli(path, "show", ib, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["run_id"] == ib
    assert json.loads(p.stdout)["peak_bytes"] == b.peak_bytes


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["compare", "0123", "abcd"], "no run '0123'"),
        (["show", "run-1"], "run ids are hexadecimal"),
        (["runs", "--status", "done"], "status must be one of"),
        (["runs", "--limit", "x"], "--limit must be a positive int"),
    ],
)
def test_store_commands_bad_input_is_one_line_exit_2(
    tmp_path: Any, args: list[str], needle: str
) -> None:
    p = _store_cli(tmp_path / "runs.sqlite", *args)
    assert p.returncode == 2 and needle in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_store_commands_refuse_a_file_that_is_not_a_store(tmp_path: Any) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a database")
    p = _store_cli(bad, "runs")
    assert p.returncode == 2 and "not a SQLite database" in p.stderr and str(bad) in p.stderr
    assert bad.read_text() == "not a database"
