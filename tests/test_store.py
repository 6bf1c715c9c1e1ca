"""The run store: exact round trips, other processes (a new kernel, concurrent writers, a
writer killed mid-transaction), files it must refuse and leave alone, migrations, the
experiment hash, the listing, and the runner saving a real run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from memlab import store as st
from memlab.config import FIELDS, ConfigError, Experiment
from memlab.store import SCHEMA_VERSION, Store, StoreError, experiment_hash
from memlab.timeline import CATEGORIES, PROCESS_PARTS

from .experiments import every_field_changed
from .runs_data import make_result

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, path: Path, **kw: object) -> subprocess.Popen[str]:
    """A fresh interpreter ("another kernel") with the store at ``path``."""
    env = {**os.environ, "MEMLAB_STORE": str(path)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "runs.sqlite")
    yield s  # type: ignore[misc]
    s.close()


# -- round trips ------------------------------------------------------------------------------
def test_a_run_measured_elsewhere_keeps_that_machine(store: Store) -> None:
    """A run a Ray node measured is stored with the node's machine, not the saver's."""
    from memlab.store import machine_info

    here = machine_info()
    node = {**here, "id": "a-ray-node", "cpu_model": "Node CPU", "logical_cores": 64}
    rid = store.save(make_result(1), source="sweep", machine=node)
    info = store.info(rid)
    assert info.machine["id"] == "a-ray-node" and info.machine["logical_cores"] == 64
    assert store.info(store.save(make_result(2))).machine["id"] == here["id"]
    with pytest.raises(TypeError, match="machine must be a dict from memlab.store.machine_info"):
        store.save(make_result(3), machine={"cpu_model": "no id"})
    assert len(store) == 2  # the refused save wrote nothing


def test_save_load_round_trip_is_exact(store: Store) -> None:
    r = make_result(1)
    rid = store.save(r, source="run", label="baseline", tags=["a", "b"])
    back = store.load(rid)
    assert back.to_dict() == r.to_dict()  # every figure, timeline and process series included
    for c in CATEGORIES:
        assert back.timeline.by_category[c].dtype == np.int64
        assert np.array_equal(back.timeline.by_category[c], r.timeline.by_category[c])
    assert np.array_equal(back.timeline.t, r.timeline.t) and back.timeline.t.dtype == np.float64
    assert np.array_equal(back.timeline.phase, r.timeline.phase)
    assert back.timeline.marks == r.timeline.marks
    for p in PROCESS_PARTS:
        a, b = back.process.parts[p], r.process.parts[p]
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    info = store.info(rid[:6])  # a unique prefix names the run
    assert (info.id, info.status, info.source, info.label, info.tags) == (
        rid,
        "ok",
        "run",
        "baseline",
        ("a", "b"),
    )
    assert info.exp_hash == experiment_hash(Experiment(batch_size=9, seed=1))
    assert info.machine["memory_bytes"] > 0 and info.machine["logical_cores"] >= 1
    assert info.machine["cpu_model"] and info.machine["python"]
    # Saving the very same result again (the runner saved it, then memlab.save) keeps one row.
    assert store.save(r) == rid and len(store) == 1
    # An experiment passed explicitly replaces the result's.
    exp = Experiment(workload="cnn", batch_size=4)
    rid2 = store.save(r, exp)
    assert store.load(rid2).experiment == exp.to_dict()
    assert store.info(rid2).exp_hash == experiment_hash(exp)


def test_numpy_figures_in_metrics_are_stored_as_numbers(store: Store) -> None:
    r = make_result(0)
    r = dataclasses.replace(r, metrics={"loss": np.float32(0.5), "bytes": np.arange(3)})
    assert store.load(store.save(r)).metrics == {"loss": 0.5, "bytes": [0, 1, 2]}


def test_bad_arguments_name_the_field(store: Store) -> None:
    with pytest.raises(ValueError, match=r"source must be one of \('run', 'magic'"):
        store.save(make_result(0), source="notebook")
    with pytest.raises(TypeError, match="result must be a memlab.RunResult"):
        store.save({"peak_bytes": 1})  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no run 'abc'"):
        store.load("abc")
    with pytest.raises(KeyError, match="hexadecimal"):
        store.load("run-1")
    with pytest.raises(ValueError, match=r"status must be one of \('ok', 'oom'"):
        store.runs(status="done")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        store.runs(limit=0)


def test_runs_dataframe_columns_filters_and_find(store: Store) -> None:
    base = Experiment(batch_size=16)
    ids = {
        "ok": store.save(make_result(2, experiment=base)),
        "oom": store.save(make_result(3, status="oom", experiment=base.replace(batch_size=64))),
        "error": store.save(make_result(4, status="error", experiment=base)),
        "cnn": store.save(make_result(5, experiment=Experiment(workload="cnn")), source="sweep"),
    }
    df = store.runs()
    assert list(df.columns) == [
        "id", "created", "status", "source", "label", "workload", "mode", "batch_size",
        "precision", "changes", "device", "peak_bytes", "rss_peak_bytes", "step_time_s",
        "throughput", "exp_hash", "error",
    ]  # fmt: skip
    assert list(df["id"]) == [ids["cnn"], ids["error"], ids["oom"], ids["ok"]]  # newest first
    row = df.set_index("id").loc[ids["ok"]]
    r = store.load(ids["ok"])
    assert row["peak_bytes"] == r.peak_bytes and row["batch_size"] == 16
    assert row["step_time_s"] == pytest.approx(r.step_time_median_s)
    assert row["throughput"] == pytest.approx(16 / r.step_time_median_s)
    assert set(store.runs(status="oom")["id"]) == {ids["oom"]}
    assert set(store.runs(status=["ok", "error"], workload="mlp")["id"]) == {
        ids["ok"],
        ids["error"],
    }
    assert set(store.runs(source="sweep")["id"]) == {ids["cnn"]}
    assert list(store.runs(limit=2)["id"]) == [ids["cnn"], ids["error"]]
    # The cache's question: runs of this experiment that answered it (ok/oom), newest first.
    assert store.find(base) == [ids["ok"]]
    assert store.find(experiment_hash(base), status=None) == [ids["error"], ids["ok"]]
    assert store.find(base.replace(seed=9)) == []


def test_exp_hash_differs_for_every_field_and_is_stable() -> None:
    bases = (Experiment(), Experiment(mode="inference"))
    covered = set()
    for name in FIELDS:
        for base in bases:
            for other in every_field_changed():
                if getattr(other, name) == getattr(base, name):
                    continue
                try:
                    changed = base.replace(**{name: getattr(other, name)})
                except ConfigError:  # a cross-field rule: the other base covers it
                    continue
                assert experiment_hash(changed) != experiment_hash(base), name
                covered.add(name)
    assert covered == set(FIELDS)
    e = Experiment(batch_size=24, sparsity=0.25, budget_bytes="512MB")
    # Equal experiments hash equal, whatever the form they are given in.
    assert experiment_hash(e) == experiment_hash(Experiment.from_dict(e.to_dict()))
    assert experiment_hash(e) == experiment_hash(e.to_dict())
    assert experiment_hash(e) == experiment_hash(e.replace(budget_bytes=512 * 10**6))


# -- other processes --------------------------------------------------------------------------
def test_another_process_reads_and_writes_the_same_store(store: Store) -> None:
    """A run saved here is listed and loaded by a fresh interpreter (a restarted kernel), and
    one saved there is read here; the experiment hash is the same in both."""
    r = make_result(6)
    rid = store.save(r)
    e = Experiment(workload="cnn", batch_size=12, precision="amp-bf16")
    p = _python(
        f"""
        import json, sys
        import memlab.store as st
        from memlab.config import Experiment
        from tests.runs_data import make_result
        df = st.runs()
        back = st.load({rid[:8]!r})
        new = st.save(make_result(7), source="magic")
        e = Experiment(workload="cnn", batch_size=12, precision="amp-bf16")
        print(json.dumps({{"ids": list(df["id"]), "result": back.to_dict(), "new": new,
                          "hash": st.experiment_hash(e), "torch": "torch" in sys.modules}}))
        """,
        store.path,
    )
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    d = json.loads(out)
    assert d["ids"] == [rid]
    assert d["result"] == json.loads(r.to_json())  # the same figures, through JSON
    assert d["hash"] == experiment_hash(e)
    assert d["torch"] is False  # the store never imports torch (the kernel never does)
    assert store.load(d["new"]).to_dict() == make_result(7).to_dict()
    assert store.info(d["new"]).source == "magic"


_WRITER = """
import sys
from memlab.store import Store
from tests.runs_data import make_result
s = Store(sys.argv[1])
k = int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # start together
for i in range({n}):
    print(s.save(make_result(1000 * k + i, events=2000)), flush=True)
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    Store(path).close()  # created (and migrated) once; the writers race on the saves
    n, writers = 15, 3
    env = {**os.environ, "MEMLAB_STORE": str(path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER.format(n=n), str(path), str(k)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(writers)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    ids: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids += out.split()
    assert len(ids) == len(set(ids)) == n * writers
    with Store(path) as s:
        assert len(s) == n * writers
        assert set(s.runs()["id"]) == set(ids)
        assert (
            s.load(ids[-1]).to_dict()
            == make_result(1000 * (writers - 1) + n - 1, events=2000).to_dict()
        )


def test_writer_killed_mid_transaction_leaves_every_committed_run(tmp_path: Path) -> None:
    """SIGKILL while a transaction is open (half a run written): the committed runs are all
    there, the half-written one is not, the file passes SQLite's integrity check, and the next
    writer is not locked out."""
    path = tmp_path / "runs.sqlite"
    p = _python(
        """
        import os, sys, time
        from memlab.store import Store
        from tests.runs_data import make_result
        s = Store(os.environ["MEMLAB_STORE"])
        for i in range(4):
            print(s.save(make_result(i, events=3000)), flush=True)
        with s._write() as con:  # one more run, killed before its commit
            con.execute("INSERT INTO runs (id, created, status, source, result, result_hash, "
                        "machine, machine_id) VALUES ('ffffffffffff', 0, 'ok', 'run', '{}', "
                        "'x', '{}', 'x')")
            con.execute("UPDATE runs SET label = 'half-written'")
            print("in-transaction", flush=True)
            time.sleep(60)
        """,
        path,
    )
    assert p.stdout is not None
    committed = []
    for line in p.stdout:
        if line.strip() == "in-transaction":
            break
        committed.append(line.strip())
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert len(committed) == 4
    with Store(path) as s:  # opening runs PRAGMA quick_check
        assert sorted(s.runs()["id"]) == sorted(committed)
        assert s.runs()["label"].isna().all()
        assert s.load(committed[-1]).to_dict() == make_result(3, events=3000).to_dict()
        s.save(make_result(99))  # the killed writer's lock is gone
        assert len(s) == 5


# -- files the store refuses (and leaves alone) -----------------------------------------------
def _assert_refused(path: Path, *needles: str) -> None:
    before = path.read_bytes()
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(StoreError) as e:
        Store(path)
    msg = str(e.value)
    assert str(path) in msg and "MEMLAB_STORE" in msg and "left as it is" in msg
    for n in needles:
        assert n in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == siblings  # no journal left behind


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    _assert_refused(path, "not a SQLite database")


def test_a_path_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StoreError, match="cannot be opened .*MEMLAB_STORE"):
        Store(tmp_path / "a-file" / "runs.sqlite")
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)


def test_a_damaged_store_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as s:
        for i in range(5):
            s.save(make_result(i, events=3000))
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 6 * page
    data[2 * page : 5 * page] = b"\xa5" * (3 * page)  # three pages of the tables overwritten
    path.write_bytes(bytes(data))
    _assert_refused(path)


def test_another_programs_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE contacts (name TEXT)")
    con.commit()
    con.close()
    _assert_refused(path, "another program")


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as s:
        s.save(make_result(0))
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.close()
    _assert_refused(path, f"schema version {SCHEMA_VERSION + 5}", f"version {SCHEMA_VERSION}")


def test_migrations_bring_an_old_store_up_and_roll_back_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 1
        rid = s.save(make_result(0))

    def broken(con: sqlite3.Connection) -> None:
        con.execute("ALTER TABLE runs ADD COLUMN half TEXT")
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        Store(path, migrations=(*st.MIGRATIONS, broken))
    con = sqlite3.connect(path)
    cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1 and "half" not in cols
    con.close()

    def v1_to_v2(con: sqlite3.Connection) -> None:
        con.execute("ALTER TABLE runs ADD COLUMN project TEXT")
        con.execute("UPDATE runs SET project = 'lab'")

    with Store(path, migrations=(*st.MIGRATIONS, v1_to_v2)) as s2:
        assert s2.schema_version == 2
        assert s2.load(rid).to_dict() == make_result(0).to_dict()
        rows = s2._con.execute("SELECT project FROM runs").fetchall()
        assert rows == [("lab",)]
    # This code reads version 1: the migrated file is now newer than it, and left alone.
    _assert_refused(path, "schema version 2", "version 1")


def test_memlab_store_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMLAB_STORE", "off")
    assert not st.store_enabled()
    with pytest.raises(StoreError, match="off"):
        st.runs()
    monkeypatch.setenv("MEMLAB_STORE", str(tmp_path / "x.sqlite"))
    assert st.store_enabled() and st.default_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("MEMLAB_STORE")
    assert st.default_path() == Path.home() / ".memlab" / "runs.sqlite"


# -- the runner saves what it ran -------------------------------------------------------------
def test_a_real_run_is_saved_and_a_broken_store_never_breaks_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from memlab import runner

    monkeypatch.setenv("MEMLAB_STORE", str(tmp_path / "runs.sqlite"))
    exp = Experiment(workload="mlp", batch_size=4, data_size=64, steps=1, warmup=0)
    h = runner.start(exp)
    r = h.wait(timeout=300)
    assert r.status == "ok" and h.run_id is not None
    assert st.load(h.run_id).to_dict() == r.to_dict()
    assert st.runs()["id"].tolist() == [h.run_id]
    info = st.default_store().info(h.run_id)
    assert info.source == "run" and info.exp_hash == experiment_hash(exp)

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database")
    monkeypatch.setenv("MEMLAB_STORE", str(bad))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h2 = runner.start(exp.replace(batch_size=2))
        r2 = h2.wait(timeout=300)
    assert r2.status == "ok" and h2.run_id is None
    assert any("not saved in the run store" in n and str(bad) in n for n in r2.notes)
    assert any(issubclass(w.category, st.StoreWarning) for w in caught)
    assert bad.read_bytes() == b"not a database"
