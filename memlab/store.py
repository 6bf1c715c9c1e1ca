"""The run store: every finished run in one SQLite file, so results outlive the kernel.

    memlab.runs()                   # a DataFrame, newest first (filters: status, workload, ...)
    memlab.load("3fa2")             # a RunResult with its timeline (an id or a unique prefix)
    memlab.save(result)             # what the runner does after each measured run
    Store("/tmp/other.sqlite")      # an explicit file

Where: ``~/.memlab/runs.sqlite``, or the path in ``$MEMLAB_STORE``; ``MEMLAB_STORE=off``
turns the runner's automatic saving off (``memlab.save`` then needs an explicit ``Store``).

Why SQLite (the standard library's ``sqlite3``) in WAL mode: one file, no server, and atomic
commits with concurrent readers and serialized writers (https://sqlite.org/wal.html). Each
save is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction under a busy timeout, so two
processes saving at once both land, and a process killed mid-write leaves every committed run
readable (SQLite's journal rolls the half-written transaction back on the next open:
https://sqlite.org/atomiccommit.html).

The schema's version is ``PRAGMA user_version``; :data:`MIGRATIONS` brings an older file up,
one transaction per step. A file this code cannot read (not SQLite, damaged, not a memlab
store, or written by a newer memlab) raises :class:`StoreError` naming the file, and is never
written to.

A run's row holds the experiment (JSON), its content hash (:func:`experiment_hash`, what a
sweep's cache looks runs up by), the result's figures (JSON, no timeline), the timeline and
process series (numpy arrays in a compressed ``.npz``), the status, where it came from
(``source``: ``run``, ``magic``, ``sweep``, ``manual``), an optional label and tags, and the
machine (CPU model, cores, memory, torch and memlab versions: :func:`machine_info`). This
module never imports torch (the notebook kernel saves and loads runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memlab.timeline import PROCESS_PARTS, STATUSES, ProcessSeries, RunResult, Timeline

if TYPE_CHECKING:
    from memlab.config import Experiment

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SOURCES",
    "Store",
    "StoreError",
    "StoreWarning",
    "StoredRun",
    "default_path",
    "default_store",
    "experiment_hash",
    "load",
    "machine_info",
    "runs",
    "save",
    "store_enabled",
]

#: Where a saved run came from: a measured run (the runner saves each one), the ``%%memlab``
#: magic, a sweep, or ``memlab.save`` called by hand.
SOURCES: tuple[str, ...] = ("run", "magic", "sweep", "manual")

#: The environment variable naming the store's file; ``off`` (or ``0``, ``none``) turns the
#: runner's automatic saving off.
ENV = "MEMLAB_STORE"
_OFF = ("off", "0", "none", "false", "no")

#: ``PRAGMA application_id`` of a memlab store ("MEML"): a SQLite file of another program is
#: recognised and left alone (https://sqlite.org/pragma.html#pragma_application_id).
APPLICATION_ID = 0x4D454D4C

#: How long a write waits for another process's transaction before it fails (seconds).
BUSY_TIMEOUT_S = 30.0

# The first 16 bytes of every SQLite 3 database (https://sqlite.org/fileformat.html).
_HEADER = b"SQLite format 3\x00"

# A timeline's arrays are stored as a compressed .npz (numpy's zip of .npy files): exact
# dtypes and values, about 10x smaller than their JSON for a stepping training run's timeline.
_CODEC = "npz-1"


class StoreWarning(RuntimeWarning):
    """A run could not be saved (the run itself is fine; its result carries a note)."""


class StoreError(RuntimeError):
    """The store's file cannot be used: not SQLite, damaged, another program's, or written by
    a newer memlab. The message names the file; the file is left as it was."""


# ==========================================================================================
# Schema and migrations
# ==========================================================================================
def _v0_to_v1(con: sqlite3.Connection) -> None:
    """The first schema: one row per run, plus indexes for the listing and the cache."""
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            status TEXT NOT NULL,
            source TEXT NOT NULL,
            label TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            exp_hash TEXT,
            workload TEXT,
            mode TEXT,
            experiment TEXT,
            result TEXT NOT NULL,
            result_hash TEXT NOT NULL UNIQUE,
            timeline BLOB,
            timeline_codec TEXT,
            machine TEXT NOT NULL,
            machine_id TEXT NOT NULL,
            memlab_version TEXT
        )
        """
    )
    con.execute("CREATE INDEX runs_created ON runs (created)")
    con.execute("CREATE INDEX runs_exp_hash ON runs (exp_hash, status)")


#: ``MIGRATIONS[i]`` brings a store from schema version ``i`` to ``i + 1`` (version 0 is an
#: empty file). A new schema appends a step; each runs in its own transaction, with the new
#: ``user_version`` written in the same transaction, so a failed step leaves the old version.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v0_to_v1,)
#: The schema this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


# ==========================================================================================
# Hashes and machine
# ==========================================================================================
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _json_default(v: Any) -> Any:
    """numpy scalars and arrays in a result's metrics, as their Python values."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"a {type(v).__name__} cannot be stored as JSON: {v!r}")


def experiment_hash(experiment: Experiment | Mapping[str, Any]) -> str:
    """A stable content hash of an experiment: sha256 of its canonical JSON (``to_dict``,
    keys sorted, no spaces), hex. Equal for equal experiments in any process and any Python
    session; different when any field changes. Every field is in it: each one changes what a
    run measures (``steps`` and ``seed`` included). A user factory counts by its
    ``module:qualname`` (its code is not hashed: edit it and give it a new name, or clear the
    cache)."""
    d = experiment.to_dict() if hasattr(experiment, "to_dict") else dict(experiment)
    return hashlib.sha256(_canonical(d).encode()).hexdigest()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86: "model name"; arm64 kernels: "Model" or "Hardware" (no model name).
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    """An installed distribution's version, from its metadata: torch is never imported here
    (the kernel never imports torch)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def machine_info() -> dict[str, Any]:
    """The machine a run is saved on: CPU model, cores, total memory, OS, Python, torch and
    memlab versions; ``id`` names the hardware and OS (not the versions), so a cache can ask
    for runs of this machine. The host name is left out (a store may be shared)."""
    import psutil

    import memlab

    hw = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": int(psutil.virtual_memory().total),
        "system": platform.system(),
        "arch": platform.machine(),
    }
    return {
        **hw,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "memlab": getattr(memlab, "__version__", None) or _version("memlab"),
        "numpy": np.__version__,
        "id": hashlib.sha256(_canonical(hw).encode()).hexdigest()[:16],
    }


# ==========================================================================================
# Timelines as bytes
# ==========================================================================================
def _pack_timeline(result: RunResult) -> bytes:
    tl, pr = result.timeline, result.process
    arrays: dict[str, np.ndarray] = {"t": tl.t, "phase": tl.phase, "proc_t": pr.t}
    for c, v in tl.by_category.items():
        arrays[f"cat_{c}"] = v
    for p, pv in pr.parts.items():
        if pv is not None:
            arrays[f"proc_{p}"] = pv
    meta = {"marks": [list(m) for m in tl.marks], "source": tl.source}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _unpack_timeline(blob: bytes) -> tuple[Timeline, ProcessSeries]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    meta = json.loads(a["meta"].tobytes().decode())
    tl = Timeline(
        t=a["t"],
        phase=a["phase"],
        by_category={k[4:]: v for k, v in a.items() if k.startswith("cat_")},
        marks=tuple((float(x), str(y)) for x, y in meta["marks"]),
        source=str(meta["source"]),
    )
    proc = ProcessSeries(t=a["proc_t"], parts={p: a.get(f"proc_{p}") for p in PROCESS_PARTS})
    return tl, proc


# ==========================================================================================
# The store
# ==========================================================================================
@dataclass(frozen=True)
class StoredRun:
    """A saved run's row without its figures: who, when, what, where."""

    id: str
    created: float
    status: str
    source: str
    label: str | None
    tags: tuple[str, ...]
    exp_hash: str | None
    experiment: Mapping[str, Any] | None
    machine: Mapping[str, Any]
    memlab_version: str | None


def default_path() -> Path:
    """``$MEMLAB_STORE`` if set (and not ``off``), else ``~/.memlab/runs.sqlite``."""
    env = os.environ.get(ENV, "").strip()
    if env and env.lower() not in _OFF:
        return Path(env).expanduser()
    return Path.home() / ".memlab" / "runs.sqlite"


def store_enabled() -> bool:
    """Whether the runner saves runs: not with ``MEMLAB_STORE=off`` (or ``0``, ``none``)."""
    return os.environ.get(ENV, "").strip().lower() not in _OFF


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _as_list(name: str, value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    vals = [value] if isinstance(value, str) else list(value)
    for v in vals:
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a string or a list of strings, got {v!r}")
    return vals


class Store:
    """One store file. Thread-safe (one connection behind a lock); each process opens its own.

    Opening checks the file before anything is written: a file that is not SQLite, fails
    ``PRAGMA quick_check``, belongs to another program, or has a newer schema than
    :data:`SCHEMA_VERSION` raises :class:`StoreError` and is left untouched. An older schema
    is migrated (:data:`MIGRATIONS`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        migrations: Sequence[Callable[[sqlite3.Connection], None]] = MIGRATIONS,
    ) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        self._migrations = tuple(migrations)
        self._lock = threading.RLock()
        self._con = self._open()

    # -- opening ----------------------------------------------------------------------------
    def _fail(self, what: str, e: BaseException | None = None) -> StoreError:
        err = StoreError(
            f"memlab store {str(self.path)!r}: {what}. The file was left as it is; move it "
            f"away, or set {ENV} to another path (or {ENV}=off to stop saving runs)"
        )
        if e is not None:
            err.__cause__ = e
        return err

    def _open(self) -> sqlite3.Connection:
        p = self.path
        if p.is_dir():
            raise self._fail("is a directory, not a file")
        if p.exists() and p.stat().st_size > 0:
            with open(p, "rb") as f:
                head = f.read(len(_HEADER))
            if head != _HEADER:
                raise self._fail("is not a SQLite database (its first bytes are not SQLite's)")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level None: no implicit transactions; each write is an explicit
            # BEGIN IMMEDIATE ... COMMIT (takes the write lock up front, so a busy store waits
            # in the busy handler rather than failing half-way through a transaction).
            con = sqlite3.connect(
                str(p), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise self._fail(f"cannot be opened ({type(e).__name__}: {e})", e) from e
        try:
            version = self._check(con)
            self._migrate(con, version)
            # WAL: readers never block the writer; one writer at a time, commits atomic.
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - e.g. a file system without
                raise self._fail(f"cannot use write-ahead logging (journal mode {mode!r})")
            con.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, never corrupt
        except StoreError:
            con.close()
            raise
        except sqlite3.OperationalError as e:  # locked past the busy timeout, read-only, ...
            con.close()
            raise self._fail(f"cannot be used ({e})", e) from e
        except sqlite3.DatabaseError as e:
            con.close()
            raise self._fail(f"is damaged or not a SQLite database ({e})", e) from e
        return con

    def _check(self, con: sqlite3.Connection) -> int:
        """Read-only checks: integrity, owner, schema version. Returns the version."""
        rows = con.execute("PRAGMA quick_check").fetchall()
        if [tuple(r) for r in rows] != [("ok",)]:
            first = "; ".join(" ".join(str(r[0]).split()) for r in rows[:3])
            raise self._fail(f"failed SQLite's integrity check ({first})")
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        app = int(con.execute("PRAGMA application_id").fetchone()[0])
        tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app != APPLICATION_ID and (app != 0 or version != 0 or tables):
            raise self._fail(
                "is a SQLite database of another program, not a memlab store "
                f"(application_id {app:#x}, user_version {version}, {tables} schema objects)"
            )
        known = len(self._migrations)
        if version > known:
            raise self._fail(
                f"has schema version {version}, newer than the version {known} this memlab "
                "reads (written by a newer memlab; upgrade memlab to read it)"
            )
        return version

    def _migrate(self, con: sqlite3.Connection, version: int) -> None:
        for v in range(version, len(self._migrations)):
            con.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while this one waited for the lock.
                now = int(con.execute("PRAGMA user_version").fetchone()[0])
                if now == v:
                    self._migrations[v](con)
                    con.execute(f"PRAGMA user_version = {v + 1}")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._con.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT count(*) FROM runs").fetchone()[0])

    # -- writing ----------------------------------------------------------------------------
    def save(
        self,
        result: RunResult,
        experiment: Experiment | Mapping[str, Any] | None = None,
        *,
        source: str = "manual",
        label: str | None = None,
        tags: Iterable[str] = (),
        machine: Mapping[str, Any] | None = None,
    ) -> str:
        """Save ``result`` (with its timeline) in one transaction; return the run's id.

        ``experiment`` (an ``Experiment`` or its dict) replaces ``result.experiment`` where
        given. ``machine`` is the ``machine_info()`` of the machine that measured the run
        (default: this one); a sweep on Ray passes the node's. Saving the same result twice
        (the runner saved it, then ``memlab.save``) keeps one row and returns its id: a row is
        keyed by the hash of the result's figures.
        """
        if not isinstance(result, RunResult):
            raise TypeError(f"result must be a memlab.RunResult, got {type(result).__name__}")
        _check_choice("source", source, SOURCES)
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string or None, got {label!r}")
        tag_list = _as_list("tags", tags) or []
        if experiment is not None:
            exp_d = experiment.to_dict() if hasattr(experiment, "to_dict") else dict(experiment)
            result = dataclasses.replace(result, experiment=exp_d)
        exp = result.experiment
        res_json = json.dumps(result.to_dict(timeline=False), default=_json_default)
        blob = _pack_timeline(result)
        res_hash = hashlib.sha256(res_json.encode() + blob).hexdigest()
        if machine is None:
            machine = machine_info()
        elif not isinstance(machine, Mapping) or not {"id", "memlab"} <= set(machine):
            raise TypeError(
                "machine must be a dict from memlab.store.machine_info() (with 'id' and "
                f"'memlab'), got {machine!r}"
            )
        machine = dict(machine)
        run_id = uuid.uuid4().hex[:12]
        row = (
            run_id,
            time.time(),
            result.status,
            source,
            label,
            json.dumps(tag_list),
            None if exp is None else experiment_hash(exp),
            None if exp is None else str(exp.get("workload")),
            None if exp is None else str(exp.get("mode")),
            None if exp is None else json.dumps(dict(exp)),
            res_json,
            res_hash,
            blob,
            _CODEC,
            json.dumps(machine),
            machine["id"],
            machine["memlab"],
        )
        with self._write() as con:
            found = con.execute("SELECT id FROM runs WHERE result_hash = ?", (res_hash,))
            old = found.fetchone()
            if old is not None:
                return str(old[0])
            con.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(row))})", row)
        return run_id

    def set_label(self, run_id: str, label: str | None) -> None:
        """Label a saved run (``None`` removes the label)."""
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string or None, got {label!r}")
        rid = self.resolve(run_id)
        with self._write() as con:
            con.execute("UPDATE runs SET label = ? WHERE id = ?", (label, rid))

    def delete(self, run_id: str) -> None:
        rid = self.resolve(run_id)
        with self._write() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (rid,))

    class _Tx:
        def __init__(self, store: Store) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store._con.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise
            return self.store._con

        def __exit__(self, et: Any, e: Any, tb: Any) -> None:
            try:
                self.store._con.execute("COMMIT" if et is None else "ROLLBACK")
            finally:
                self.store._lock.release()

    def _write(self) -> Store._Tx:
        return Store._Tx(self)

    # -- reading ----------------------------------------------------------------------------
    def resolve(self, run_id: str) -> str:
        """The full id of ``run_id``: an id, or a prefix that only one run's id starts with."""
        if not isinstance(run_id, str) or not run_id.strip():
            raise ValueError(f"run_id must be a run's id (a non-empty string), got {run_id!r}")
        rid = run_id.strip().lower()
        if not all(ch in "0123456789abcdef" for ch in rid):
            raise KeyError(f"no run {run_id!r} in {self.path} (run ids are hexadecimal)")
        with self._lock:
            hits = self._con.execute(
                "SELECT id FROM runs WHERE id >= ? AND id < ? ORDER BY id LIMIT 3",
                (rid, rid + "g"),
            ).fetchall()
        if not hits:
            raise KeyError(f"no run {run_id!r} in {self.path} (memlab.runs() lists them)")
        if len(hits) > 1 and hits[0][0] != rid:
            some = ", ".join(h[0] for h in hits[:2])
            raise KeyError(f"run id {run_id!r} is ambiguous ({some}, ...): give more of it")
        return str(hits[0][0])

    def load(self, run_id: str) -> RunResult:
        """The saved ``RunResult``, timeline and process series included."""
        rid = self.resolve(run_id)
        with self._lock:
            res, blob, codec = self._con.execute(
                "SELECT result, timeline, timeline_codec FROM runs WHERE id = ?", (rid,)
            ).fetchone()
        d = json.loads(res)
        if blob is not None:
            if codec != _CODEC:
                raise StoreError(f"run {rid}: unknown timeline encoding {codec!r}")
            tl, proc = _unpack_timeline(blob)
            return dataclasses.replace(RunResult.from_dict(d), timeline=tl, process=proc)
        return RunResult.from_dict(d)

    def info(self, run_id: str) -> StoredRun:
        """A saved run's row without its figures (when, status, source, machine...)."""
        rid = self.resolve(run_id)
        with self._lock:
            r = self._con.execute(
                "SELECT id, created, status, source, label, tags, exp_hash, experiment, "
                "machine, memlab_version FROM runs WHERE id = ?",
                (rid,),
            ).fetchone()
        return StoredRun(
            id=r[0],
            created=float(r[1]),
            status=r[2],
            source=r[3],
            label=r[4],
            tags=tuple(json.loads(r[5])),
            exp_hash=r[6],
            experiment=None if r[7] is None else json.loads(r[7]),
            machine=json.loads(r[8]),
            memlab_version=r[9],
        )

    def find(
        self,
        experiment: Experiment | Mapping[str, Any] | str,
        *,
        status: str | Iterable[str] | None = ("ok", "oom"),
        this_machine: bool = True,
    ) -> list[str]:
        """Ids of the saved runs of ``experiment`` (an Experiment, its dict, or its hash),
        newest first: what a sweep's cache asks before it runs. By default only runs that
        answered the question (``ok`` or ``oom``) and were measured on this machine's
        hardware (:func:`machine_info`'s ``id``)."""
        h = experiment if isinstance(experiment, str) else experiment_hash(experiment)
        where, args = ["exp_hash = ?"], [h]
        st = _as_list("status", status)
        if st is not None:
            for s in st:
                _check_choice("status", s, STATUSES)
            where.append(f"status IN ({', '.join('?' * len(st))})")
            args += st
        if this_machine:
            where.append("machine_id = ?")
            args.append(machine_info()["id"])
        with self._lock:
            rows = self._con.execute(
                f"SELECT id FROM runs WHERE {' AND '.join(where)} ORDER BY created DESC", args
            ).fetchall()
        return [str(r[0]) for r in rows]

    def runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        workload: str | Iterable[str] | None = None,
        mode: str | None = None,
        source: str | Iterable[str] | None = None,
        label: str | None = None,
        exp_hash: str | None = None,
        limit: int | None = None,
    ) -> Any:
        """The saved runs as a pandas DataFrame, newest first, one row per run:
        ``id, created, status, source, label, workload, mode, batch_size, precision,
        changes`` (the other fields that differ from their defaults), ``device,
        peak_bytes, rss_peak_bytes, step_time_s`` (median), ``throughput`` (samples/s),
        ``exp_hash, error``. Each filter takes a value or a list of values."""
        import pandas as pd

        from memlab.config import FIELDS

        where: list[str] = []
        args: list[Any] = []
        for name, value, allowed in (
            ("status", status, STATUSES),
            ("workload", workload, None),
            ("source", source, SOURCES),
            ("mode", mode, None),
            ("label", label, None),
            ("exp_hash", exp_hash, None),
        ):
            vals = _as_list(name, value)
            if vals is None:
                continue
            if allowed is not None:
                for v in vals:
                    _check_choice(name, v, allowed)
            where.append(f"{name} IN ({', '.join('?' * len(vals))})")
            args += vals
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        sql = "SELECT id, created, status, source, label, result, exp_hash FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._con.execute(sql, args).fetchall()
        shown = ("workload", "mode", "batch_size", "precision")
        out = []
        for rid, created, st, src, lab, res, h in rows:
            d = json.loads(res)
            exp = d.get("experiment") or {}
            changes = ", ".join(
                f"{k}={v}"
                for k, v in exp.items()
                if k not in shown and k in FIELDS and v != FIELDS[k].default
            )
            err = d.get("error")
            out.append(
                {
                    "id": rid,
                    "created": created,
                    "status": st,
                    "source": src,
                    "label": lab,
                    **{k: exp.get(k) for k in shown},
                    "changes": changes,
                    "device": d.get("device"),
                    "peak_bytes": d.get("peak_bytes"),
                    "rss_peak_bytes": d.get("rss_peak_bytes"),
                    "step_time_s": (d.get("step_time_s") or {}).get("median"),
                    "throughput": d.get("throughput_samples_per_s"),
                    "exp_hash": h,
                    "error": None if not err else str(err).splitlines()[0],
                }
            )
        df = pd.DataFrame(out, columns=_COLUMNS)
        df["created"] = pd.to_datetime(df["created"], unit="s", utc=True).dt.floor("us")
        return df


_COLUMNS = [
    "id",
    "created",
    "status",
    "source",
    "label",
    "workload",
    "mode",
    "batch_size",
    "precision",
    "changes",
    "device",
    "peak_bytes",
    "rss_peak_bytes",
    "step_time_s",
    "throughput",
    "exp_hash",
    "error",
]


# ==========================================================================================
# The default store, and the module-level functions memlab exports
# ==========================================================================================
_default_lock = threading.Lock()
_defaults: dict[Path, Store] = {}


def default_store() -> Store:
    """The store at :func:`default_path` (one per path per process, opened on first use)."""
    if not store_enabled():
        raise StoreError(
            f"the run store is off ({ENV}={os.environ.get(ENV)!r}): set {ENV} to a file's path, "
            "or pass store=memlab.store.Store(path)"
        )
    path = default_path()
    with _default_lock:
        s = _defaults.get(path)
        if s is None:
            s = _defaults[path] = Store(path)
        return s


def save(
    result: RunResult,
    experiment: Experiment | Mapping[str, Any] | None = None,
    *,
    source: str = "manual",
    label: str | None = None,
    tags: Iterable[str] = (),
    store: Store | None = None,
) -> str:
    """Save ``result`` in ``store`` (default: :func:`default_store`); return its run id."""
    return (store or default_store()).save(
        result, experiment, source=source, label=label, tags=tags
    )


def load(run_id: str, *, store: Store | None = None) -> RunResult:
    """The saved run ``run_id`` (an id or a unique prefix), with its timeline."""
    return (store or default_store()).load(run_id)


def runs(*, store: Store | None = None, **filters: Any) -> Any:
    """The saved runs as a DataFrame, newest first (:meth:`Store.runs` for the filters)."""
    return (store or default_store()).runs(**filters)
