"""Exports (memlab/exports.py), each read back by its consumer's own code: torch's
``_memory_viz``, ``json`` against the Trace Event Format, TensorBoard's EventAccumulator,
``pandas.read_parquet``, an HTML parser; and the ``report``/``export`` CLI on a saved run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from memlab import exports
from memlab.comparing import compare
from memlab.config import Experiment
from memlab.store import Store
from memlab.timeline import CATEGORIES, PHASES, RunResult

from .runs_data import make_result


@pytest.fixture(scope="module")
def made() -> RunResult:
    return make_result(3, events=400)


@pytest.fixture(scope="module")
def real() -> RunResult:
    """One real, small measured run (its timeline starts from live parameters at entry)."""
    import memlab

    r = memlab.run(Experiment(workload="mlp", batch_size=8, steps=2, warmup=0))
    assert r.status == "ok", r.error
    return r


def _replay(snapshot: dict[str, Any], entry: int) -> np.ndarray:
    """Live bytes after each alloc/free of the snapshot's trace, from ``entry`` bytes."""
    deltas = [
        e["size"] if e["action"] == "alloc" else -e["size"]
        for e in snapshot["device_traces"][0]
        if e["action"] in ("alloc", "free_completed")
    ]
    return entry + np.cumsum(np.asarray(deltas, dtype=np.int64))


@pytest.mark.parametrize("which", ["made", "real"])
def test_memory_viz_renders_and_reproduces_the_timeline(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from torch.cuda import _memory_viz as mv

    r: RunResult = request.getfixturevalue(which)
    path = exports.to_memory_viz(r, tmp_path / "snap.pickle")
    with open(path, "rb") as f:
        snap = pickle.load(f)
    # torch's own renderers and its segment summary (which checks every segment's bytes add up)
    for page in (mv.trace_plot(snap), mv.segment_plot(snap)):
        assert page.startswith("\n<!DOCTYPE html>") and "snapshot.pickle" in page
    assert "total_allocated" in mv.segsum(snap)
    assert "entries" in mv.trace(snap)
    entry = sum(r.entry_by_category.values())
    live = _replay(snap, entry)
    total = r.timeline.total
    # exact: the peak, and the bytes at the end (= the segments' active blocks)
    assert int(live.max()) == int(total.max())
    assert int(live[-1]) == int(total[-1])
    active = sum(
        b["size"] for s in snap["segments"] for b in s["blocks"] if b["state"] == "active_allocated"
    )
    assert active == int(total[-1])
    # every free matches an earlier live block at that address, of that size
    alive: dict[int, int] = {}
    for e in snap["device_traces"][0]:
        if e["action"] == "alloc":
            assert e["addr"] not in alive
            alive[e["addr"]] = e["size"]
        elif e["action"] == "free_completed" and e["addr"] in alive:
            assert alive.pop(e["addr"]) == e["size"]


def test_memory_viz_per_category_after_every_event(made: RunResult) -> None:
    snap = exports.memory_snapshot(made)
    tl = made.timeline
    names = {v: k for k, v in exports.MEMORY_VIZ_CATEGORIES.items()}
    cur = {c: int(made.entry_by_category[c]) for c in CATEGORIES}
    times = (np.round(tl.t * 1e6)).astype(np.int64)
    ev = iter(snap["device_traces"][0])
    pending = next(ev, None)
    for i in range(len(tl)):
        while pending is not None and pending["time_us"] == times[i]:
            c = names[pending["category"]]
            if pending["action"] == "alloc":
                cur[c] += pending["size"]
            elif pending["action"] == "free_completed":
                cur[c] -= pending["size"]
            pending = next(ev, None)
        assert cur == {c: int(tl.by_category[c][i]) for c in CATEGORIES}, i


def test_chrome_trace_counters_phases_and_steps(made: RunResult, tmp_path: Path) -> None:
    path = exports.to_chrome_trace(made, tmp_path / "trace.json")
    d = json.loads(path.read_text())
    events = d["traceEvents"]
    # Trace Event Format: every event has name, ph, pid, tid; X has ts and dur >= 0; C has ts
    # and numeric args; M names a process or thread.
    for e in events:
        assert {"name", "ph", "pid", "tid"} <= set(e), e
        assert e["ph"] in ("C", "X", "M")
        if e["ph"] in ("C", "X"):
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
        if e["ph"] == "C":
            assert all(isinstance(v, (int, float)) for v in e["args"].values())
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name") and "name" in e["args"]
    tensor = [e for e in events if e["ph"] == "C" and e["name"] == "tensor bytes"]
    tl = made.timeline
    assert len(tensor) == len(tl)
    np.testing.assert_array_equal([sum(e["args"].values()) for e in tensor], tl.total)
    np.testing.assert_allclose([e["ts"] for e in tensor], tl.t * 1e6, atol=1e-3)
    for c in CATEGORIES:
        np.testing.assert_array_equal([e["args"][c] for e in tensor], tl.by_category[c])
    proc = [e for e in events if e["ph"] == "C" and e["name"] == "process memory"]
    assert len(proc) == len(made.process)
    assert "rss_shmem" not in proc[0]["args"]  # not measured: left out, not zero
    np.testing.assert_array_equal([e["args"]["rss"] for e in proc], made.process.parts["rss"])
    phases = [e for e in events if e["ph"] == "X" and e["cat"] == "phase"]
    runs = 1 + int(np.count_nonzero(tl.phase[1:] != tl.phase[:-1]))
    assert len(phases) == runs and {e["name"] for e in phases} <= set(PHASES)
    steps = [e for e in events if e["ph"] == "X" and e["cat"] == "step"]
    marks = sorted(t for t, label in tl.marks if label.startswith("step "))
    assert [e["name"] for e in steps] == ["step 1", "step 2"]
    np.testing.assert_allclose([(e["ts"] + e["dur"]) / 1e6 for e in steps], marks, atol=1e-8)


def test_tensorboard_scalars_read_back_equal(made: RunResult, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    logdir = exports.to_tensorboard(made, tmp_path / "tb", max_points=None)  # in the worker
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    tl = made.timeline

    def read(tag: str) -> tuple[list[int], np.ndarray, list[float]]:
        evs = acc.Tensors(tag)
        vals = np.asarray([tensor_util.make_ndarray(e.tensor_proto).item() for e in evs])
        return [e.step for e in evs], vals, [e.wall_time for e in evs]

    for c in CATEGORIES:
        steps, vals, wall = read(f"memory/{c}")
        assert steps == list(range(len(tl)))
        np.testing.assert_array_equal(vals.astype(np.int64), tl.by_category[c])
        np.testing.assert_allclose(wall, tl.t)
    _, total, _ = read("memory/total")
    np.testing.assert_array_equal(total.astype(np.int64), tl.total)
    steps, times, _ = read("step/wall_s")
    assert steps == [1, 2, 3] and times.tolist() == list(made.step_times_s)

    # thinned: fewer points, the peak kept exactly
    idx = exports.tensorboard_points(made, 50)
    assert len(idx) <= 50 and int(tl.total[idx].max()) == int(tl.total.max())


def test_parquet_round_trips_exactly(made: RunResult, tmp_path: Path) -> None:
    df = exports.to_dataframe(made)
    back = pd.read_parquet(exports.to_parquet(made, tmp_path / "run.parquet"))
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back.attrs == df.attrs
    assert json.loads(back.attrs["memlab_run"])["peak_bytes"] == made.peak_bytes
    tl = made.timeline
    np.testing.assert_array_equal(back["total"], tl.total)
    np.testing.assert_array_equal(back["t"], tl.t)
    assert list(back["phase"]) == tl.phase_names()
    # step: 1 up to and including the "step 1" mark's event, 2 after it, 3 after "step 2"
    marks = sorted(t for t, label in tl.marks if label.startswith("step "))
    expect = 1 + np.asarray([sum(m < t for m in marks) for t in tl.t])
    np.testing.assert_array_equal(back["step"], expect)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append((tag, str(a[key])))
        if tag == "script" and not a.get("src"):
            self.inline_scripts += 1


def _check_offline(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    assert not p.refs, p.refs  # nothing fetched: no src/href at all
    assert "plotly.js v" in page or "plotly.js" in page  # the library's inline bundle
    assert len(page) > 3_000_000  # plotly.min.js alone is ~4.6 MB
    return p


def test_html_of_a_run_and_a_comparison_is_offline(made: RunResult, tmp_path: Path) -> None:
    page = exports.to_html(made, tmp_path / "run.html").read_text()
    tags = _check_offline(page)
    assert tags.inline_scripts >= 3  # plotly + one per figure
    assert "Tensor memory by category" in page and "memlab RunResult" in page
    c = compare(make_result(1), made)
    page = exports.to_html(c, tmp_path / "cmp.html").read_text()
    _check_offline(page)
    assert "memlab comparison" in page and page.count("plotly.js v") <= 1
    # the checker itself finds an external script
    assert exports.external_references("<script src='https://cdn.x/y.js'></script>")
    with pytest.raises(TypeError, match="RunResult or a memlab Comparison"):
        exports.to_html("nope", tmp_path / "x.html")  # type: ignore[arg-type]


def _cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEMLAB_STORE": str(store)}
    return subprocess.run(
        [sys.executable, "-m", "memlab", *args], capture_output=True, text=True, env=env
    )


def test_cli_report_and_export(made: RunResult, tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    with Store(store) as s:
        rid, other = s.save(made), s.save(make_result(5))
    out = tmp_path / "out"
    p = _cli(store, "report", rid[:6], "-o", str(out / "run.html"))
    assert p.returncode == 0, p.stderr
    _check_offline((out / "run.html").read_text())
    p = _cli(store, "report", rid, other, "-o", str(out / "cmp.html"))
    assert p.returncode == 0, p.stderr
    assert "memlab comparison" in (out / "cmp.html").read_text()
    for fmt, name in (
        ("parquet", "r.parquet"),
        ("chrome", "r.json"),
        ("memory_viz", "r.pickle"),
        ("tensorboard", "tb"),
    ):
        p = _cli(store, "export", rid, "--format", fmt, "-o", str(out / name))
        assert p.returncode == 0, (fmt, p.stderr)
    loaded = Store(store).load(rid)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "r.parquet"), exports.to_dataframe(loaded))
    assert len(json.loads((out / "r.json").read_text())["traceEvents"]) > len(loaded.timeline)
    with open(out / "r.pickle", "rb") as f:
        assert pickle.load(f) == exports.memory_snapshot(loaded)
    assert any((out / "tb").iterdir())
    # bad input: one line naming what is allowed, exit 2
    p = _cli(store, "export", rid, "--format", "svg", "-o", str(out / "x"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("memlab: error: --format must be one of html, memory_viz, chrome")
    p = _cli(store, "report", "zzzz")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("memlab: error:") and "zzzz" in p.stderr
