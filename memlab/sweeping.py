"""Sweeps: every combination of a grid of Experiment fields, measured and cached in the run store.

    res = memlab.sweep(memlab.Experiment(workload="mlp"), {"batch_size": [8, 16, 32]}, repeat=2)
    res.table()                                 # one row per run; ``cached`` marks loaded ones
    res.figure(x="batch_size", y="peak_bytes")  # cached points drawn hollow

Each configuration (the base experiment with one value per grid field) is looked up in the run
store by its content hash (:func:`memlab.store.experiment_hash`): one with ``repeat`` finished
runs (``ok`` or ``oom``, measured on this machine's hardware) is loaded, not run again, unless
``rerun=True``; one with fewer is topped up. New runs are saved with ``source="sweep"``.

Where the runs happen (``backend``):

- ``"local"``: one after the other, each in its own fresh worker process (``memlab.runner``),
  never two at once: on a laptop's 2 cores concurrent runs disturb each other's step times.
- ``"ray"``: each run is a Ray task (https://docs.ray.io) on a cluster, at most one per node at
  a time, holding all of that node's CPUs (``num_cpus``), pinned to the node
  (``NodeAffinitySchedulingStrategy``), with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to
  those cores; inside the task the run goes through memlab's normal runner (a fresh worker
  process per run, not saved there) and returns its result; this process saves it into the
  same store. The default when ``RAY_ADDRESS`` is set. Needs ``pip install 'memlab[cluster]'``
  here and memlab installed on every node.

This module never imports torch: the runs happen in workers (the notebook kernel may sweep).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memlab.config import Experiment
from memlab.timeline import RunResult, format_bytes

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from memlab.store import Store

__all__ = ["BACKENDS", "SweepResult", "SweepRow", "sweep"]

#: Where a sweep's runs happen; ``None`` picks ``"ray"`` when ``RAY_ADDRESS`` is set.
BACKENDS: tuple[str, ...] = ("local", "ray")

#: The run statuses that answer a configuration's question (a cache hit): the store's default.
_FINISHED = ("ok", "oom")

#: Thread-count variables set to a node's cores inside a Ray task (read by torch's OpenMP and
#: MKL thread pools when the run's worker process imports torch).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class SweepRow:
    """One run of a sweep: its configuration (the grid's fields), where it came from, and its
    headline figures (measured; ``None`` where the run did not measure one)."""

    config: Mapping[str, Any]
    repeat: int
    run_id: str | None
    status: str
    cached: bool
    peak_bytes: int
    step_time_s: float | None
    throughput: float | None
    rss_peak_bytes: int | None
    error: str | None = None


@dataclass(frozen=True, eq=False)
class SweepResult:
    """A sweep's runs, in grid order (configuration by configuration, repeats together)."""

    base: Experiment
    grid: Mapping[str, tuple[Any, ...]]
    rows: tuple[SweepRow, ...]
    results: tuple[RunResult, ...] = field(repr=False)
    backend: str = "local"
    #: Wall time of the whole sweep (seconds), cache look-ups and loads included.
    wall_s: float = 0.0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.grid)

    @property
    def n_cached(self) -> int:
        return sum(r.cached for r in self.rows)

    @property
    def n_run(self) -> int:
        """Runs measured by this call (not loaded from the store)."""
        return len(self.rows) - self.n_cached

    def table(self) -> pd.DataFrame:
        """One row per run: the grid's fields, ``repeat``, ``run_id``, ``status``,
        ``cached``, ``peak_bytes``, ``step_time_s`` (median), ``throughput`` (samples/s),
        ``rss_peak_bytes``, ``error``."""
        import pandas as pd

        cols = [*self.fields, "repeat", "run_id", "status", "cached", "peak_bytes"]
        cols += ["step_time_s", "throughput", "rss_peak_bytes", "error"]
        data = [
            {
                **dict(r.config),
                "repeat": r.repeat,
                "run_id": r.run_id,
                "status": r.status,
                "cached": r.cached,
                "peak_bytes": r.peak_bytes,
                "step_time_s": r.step_time_s,
                "throughput": r.throughput,
                "rss_peak_bytes": r.rss_peak_bytes,
                "error": r.error,
            }
            for r in self.rows
        ]
        return pd.DataFrame(data, columns=cols)

    def figure(self, x: str | None = None, y: str = "peak_bytes") -> go.Figure:
        """``y`` against the grid field ``x`` (default: the first), one line per combination of
        the other fields; runs loaded from the store are drawn hollow."""
        from memlab.plots_sweeping import sweep_figure

        return sweep_figure(self, x=x, y=y)

    def _repr_html_(self) -> str:
        return str(self.table()._repr_html_())

    def __repr__(self) -> str:
        parts = ", ".join(
            ",".join(f"{k}={v}" for k, v in r.config.items())
            + f": {r.status} {format_bytes(r.peak_bytes)}"
            + (" (cached)" if r.cached else "")
            for r in self.rows
        )
        return f"SweepResult({parts})"


# ==========================================================================================
# Validation: everything is checked before anything runs
# ==========================================================================================
def _field_name(key: Any) -> str:
    from memlab.config import FIELDS

    if isinstance(key, str):
        if key in FIELDS:
            return key
        for spec in FIELDS.values():
            if spec.alias and key == spec.alias:
                return spec.name
    names = ", ".join(FIELDS)
    raise ValueError(f"grid: unknown Experiment field {key!r}; the fields are: {names}")


def _check_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, tuple[Any, ...]]:
    from memlab.config import FIELDS, ConfigError

    if not isinstance(grid, Mapping):
        raise TypeError(
            f"grid must be a mapping of field -> values, got {type(grid).__name__}"
            " (e.g. {'batch_size': [8, 16]})"
        )
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in grid.items():
        name = _field_name(key)
        if name in out:
            raise ValueError(f"grid: field {name!r} is given twice (as {key!r} and {name!r})")
        spec = FIELDS[name]
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(
                f"grid[{key!r}] must be a list of values ({spec.rule()}), got {values!r}"
            )
        vals = tuple(values)
        if not vals:
            raise ValueError(f"grid[{key!r}] is empty: give at least one value ({spec.rule()})")
        checked = []
        for v in vals:
            try:
                checked.append(spec.check(v))
            except ConfigError as e:
                raise ValueError(f"grid[{key!r}]: {e}") from None
        if len(set(map(repr, checked))) != len(checked):
            raise ValueError(f"grid[{key!r}] lists a value more than once: {list(vals)}")
        out[name] = tuple(checked)
    return out


def _configs(
    base: Experiment, grid: Mapping[str, tuple[Any, ...]]
) -> list[tuple[dict[str, Any], Experiment]]:
    from memlab.config import ConfigError

    out = []
    for combo in itertools.product(*grid.values()):
        config = dict(zip(grid, combo, strict=True))
        try:
            out.append((config, base.replace(**config)))
        except ConfigError as e:  # a rule across fields (precision int8 in training, ...)
            raise ValueError(f"grid: the configuration {config} is not valid: {e}") from None
    return out


def _backend(backend: str | None) -> str:
    if backend is None:
        return "ray" if os.environ.get("RAY_ADDRESS", "").strip() else "local"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


# ==========================================================================================
# The sweep
# ==========================================================================================
def sweep(
    base: Experiment,
    grid: Mapping[str, Sequence[Any]],
    *,
    repeat: int = 1,
    rerun: bool = False,
    backend: str | None = None,
    progress: bool = True,
    store: Store | None = None,
    on_result: Callable[[SweepRow, RunResult], None] | None = None,
    timeout_s: float | None = None,
    ray_address: str | None = None,
) -> SweepResult:
    """Measure ``base`` with every combination of ``grid``'s values (``{field: [values]}``,
    a field's name or its CLI alias such as ``budget``), each ``repeat`` times.

    A configuration that already has ``repeat`` finished runs (``ok``/``oom``) of this
    machine in ``store`` (default: the run store, ``memlab.runs()``) is loaded, not re-run,
    and its rows are marked ``cached``; ``rerun=True`` measures every configuration again.
    New runs are saved with ``source="sweep"`` (``error`` runs too, but only finished runs
    count as cached). With the store off (``MEMLAB_STORE=off``) and no ``store``, nothing is
    cached or saved.

    ``backend``: ``"local"`` (one run at a time on this machine), ``"ray"`` (Ray tasks, one
    per node at a time, on the cluster at ``ray_address``, else ``$RAY_ADDRESS``, else the
    Ray session already initialised in this process, else a local one started here), or
    ``None``: ``"ray"`` if ``RAY_ADDRESS`` is set, else ``"local"``. ``progress`` shows a tqdm
    bar (``tqdm.auto``: a widget in a notebook, text on stderr elsewhere). ``on_result(row,
    result)`` is called for each run, cached ones included, in this thread.

    Raises ``ValueError`` naming the field for an unknown field or a value it does not allow
    (or a combination the Experiment rejects), before anything runs. A failed run does not
    raise: its row's ``status`` and ``error`` say what happened."""
    from memlab import store as store_mod

    t0 = time.perf_counter()
    if not isinstance(base, Experiment):
        raise TypeError(f"base must be a memlab.Experiment, got {type(base).__name__}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be positive seconds or None, got {timeout_s!r}")
    kind = _backend(backend)
    checked = _check_grid(grid)
    configs = _configs(base, checked)
    if store is None and store_mod.store_enabled():
        store = store_mod.default_store()

    # What the store already holds: up to ``repeat`` finished runs per configuration.
    cached: dict[int, list[str]] = {}
    for i, (_config, exp) in enumerate(configs):
        found = [] if store is None or rerun else store.find(exp, status=_FINISHED)
        cached[i] = found[:repeat]
    # Runs to measure, interleaved (A B C A B C): a burst of other work on the machine then
    # rarely lands on one setting only.
    todo = [(i, k) for k in range(repeat) for i in range(len(configs)) if k >= len(cached[i])]

    rows: dict[tuple[int, int], tuple[SweepRow, RunResult]] = {}
    bar = _bar(len(configs) * repeat, progress, kind)

    def record(i: int, k: int, result: RunResult, run_id: str | None, hit: bool) -> None:
        row = _row(configs[i][0], k, result, run_id, hit)
        rows[(i, k)] = (row, result)
        if bar is not None:
            label = ",".join(f"{n}={v}" for n, v in row.config.items())
            bar.set_postfix_str(f"{label}: {row.status} {format_bytes(row.peak_bytes)}", False)
            bar.update(1)
        if on_result is not None:
            on_result(row, result)

    try:
        for i, ids in cached.items():
            for k, rid in enumerate(ids):
                assert store is not None
                record(i, k, store.load(rid), rid, True)

        def save(i: int, result: RunResult, machine: Mapping[str, Any] | None) -> str | None:
            if store is None or result.status == "cancelled":
                return None
            return store.save(result, configs[i][1], source="sweep", machine=machine)

        if kind == "local":
            _run_local(configs, todo, save, record, timeout_s)
        else:
            _run_ray(configs, todo, save, record, timeout_s, ray_address)
    finally:
        if bar is not None:
            bar.close()
    order = sorted(rows)
    return SweepResult(
        base=base,
        grid=checked,
        rows=tuple(rows[key][0] for key in order),
        results=tuple(rows[key][1] for key in order),
        backend=kind,
        wall_s=time.perf_counter() - t0,
    )


def _row(
    config: Mapping[str, Any], k: int, r: RunResult, run_id: str | None, cached: bool
) -> SweepRow:
    err = None if not r.error else str(r.error).splitlines()[0]
    return SweepRow(
        config=dict(config),
        repeat=k,
        run_id=run_id,
        status=r.status,
        cached=cached,
        peak_bytes=int(r.peak_bytes),
        step_time_s=r.step_time_median_s,
        throughput=r.throughput_samples_per_s,
        rss_peak_bytes=r.rss_peak_bytes,
        error=err,
    )


def _bar(total: int, progress: bool, kind: str) -> Any:
    if not progress:
        return None
    # tqdm.auto: an ipywidgets bar in a notebook, text on stderr in a terminal or a test.
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sweep ({kind})", unit="run")


#: Saves run ``i``'s result, measured on ``machine`` (``store.machine_info()``; None: here).
_Save = Callable[[int, RunResult, "Mapping[str, Any] | None"], "str | None"]
_Record = Callable[[int, int, RunResult, "str | None", bool], None]


def _run_local(
    configs: Sequence[tuple[dict[str, Any], Experiment]],
    todo: Sequence[tuple[int, int]],
    save: _Save,
    record: _Record,
    timeout_s: float | None,
) -> None:
    """One run at a time, each in a fresh worker; saved here (into the sweep's store)."""
    from memlab.runner import start

    for i, k in todo:
        result = start(configs[i][1], timeout_s=timeout_s, save=False).wait()
        record(i, k, result, save(i, result, None), False)


# ==========================================================================================
# Ray
# ==========================================================================================
def _ray_trial(experiment: Experiment, cores: int, timeout_s: float | None) -> dict[str, Any]:
    """A Ray task: one measured run on this node through memlab's runner (a fresh worker
    process, which inherits the thread settings), not saved here; returns the result's dict
    (timeline included), where it ran and that node's machine (for the store)."""
    import socket

    from memlab.store import machine_info

    for var in _THREAD_VARS:
        os.environ[var] = str(cores)
    from memlab.runner import start

    result = start(experiment, timeout_s=timeout_s, save=False).wait()
    return {
        "result": result.to_dict(timeline=True),
        "host": socket.gethostname(),
        "machine": machine_info(),
    }


def _ray_nodes(ray: Any) -> list[tuple[str, int]]:
    nodes = [
        (str(n["NodeID"]), int(n.get("Resources", {}).get("CPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    nodes = [(nid, cpus) for nid, cpus in nodes if cpus >= 1]
    if not nodes:
        raise RuntimeError("the Ray cluster has no alive node with a CPU to run a sweep on")
    return nodes


def _run_ray(
    configs: Sequence[tuple[dict[str, Any], Experiment]],
    todo: Sequence[tuple[int, int]],
    save: _Save,
    record: _Record,
    timeout_s: float | None,
    address: str | None,
) -> None:
    """Each run a Ray task holding all of one node's CPUs, at most one per node at a time (a
    node's next run starts when its last ends); results saved here as they arrive."""
    if not todo:
        return
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError as e:
        raise ImportError(
            "memlab.sweep(backend='ray') needs Ray: pip install 'memlab[cluster]' "
            "(and memlab on every node of the cluster)"
        ) from e
    address = address or os.environ.get("RAY_ADDRESS", "").strip() or None
    if not ray.is_initialized():
        if address is None:  # a local cluster on this machine, for this process
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    trial = ray.remote(_ray_trial)
    pending = list(todo)
    free = _ray_nodes(ray)
    running: dict[Any, tuple[int, int, str, int]] = {}
    while pending or running:
        while pending and free:
            node, cpus = free.pop(0)
            i, k = pending.pop(0)
            ref = trial.options(
                num_cpus=cpus,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
            ).remote(configs[i][1], cpus, timeout_s)
            running[ref] = (i, k, node, cpus)
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            i, k, node, cpus = running.pop(ref)
            free.append((node, cpus))
            try:
                got = ray.get(ref)
            except ray.exceptions.RayError as e:  # the task or its node died: not a result
                # about the experiment, so not saved (the next sweep tries it again)
                msg = f"the Ray task failed on node {node}: {type(e).__name__}: {e}"
                record(i, k, _failed(msg), None, False)
                continue
            result = RunResult.from_dict(got["result"])
            where = f"measured on Ray node {got['host']} ({cpus} CPUs, {cpus} threads)"
            result = _with_note(result, where)
            record(i, k, result, save(i, result, got.get("machine")), False)


def _with_note(result: RunResult, note: str) -> RunResult:
    import dataclasses

    return dataclasses.replace(result, notes=(*result.notes, note))


def _failed(msg: str) -> RunResult:
    return RunResult(peak_bytes=0, peak_by_category={}, status="error", error=msg)
