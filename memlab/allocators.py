"""The C allocator under PyTorch's CPU tensors: glibc, tuned glibc, jemalloc and mimalloc.

PyTorch's CPU allocator asks the C library's ``malloc`` for every tensor
(c10/core/impl/alloc_cpu.cpp, ``alloc_cpu``: ``posix_memalign``). What ``malloc`` does with a
freed block decides whether the process's memory comes down after a large request: glibc keeps
freed memory in its arenas (RSS stays up and stops tracking tensors), jemalloc and mimalloc
return it after a delay. This module measures that on a seeded stream of variable-shaped
inference requests, one fresh worker process per allocator configuration::

    from memlab import allocators
    cmp = allocators.compare(workload="transformer", requests=200)  # every configuration
    cmp.table()       # one dict per configuration (peak RSS, fragmentation, p50/p99 latency)
    cmp.explain()     # the result in sentences
    cmp["glibc"].fragmentation  # bytes after each request (see below)
    from memlab.plots_allocators import comparison_figure; comparison_figure(cmp)

``compare(workload, requests, configs=None, seed=0)`` takes configuration names from
``CONFIGS`` (or ``AllocatorConfig`` objects) and returns an ``AllocatorComparison`` of one
``AllocatorRun`` per configuration, in order. Both are plain data (no torch): a notebook kernel
can hold and draw them.

Configurations (``CONFIGS``; environment set when the worker process starts, because glibc reads
its ``MALLOC_*`` variables once, in ``ptmalloc_init``, and ``LD_PRELOAD`` acts only at exec):

- ``glibc``: the default (inherited ``LD_PRELOAD``, ``MALLOC_*``, ``MIMALLOC_*`` and
  ``GLIBC_TUNABLES`` are removed from the worker's environment, so it really is the default);
- ``glibc-arena2``: ``MALLOC_ARENA_MAX=2`` (fewer per-thread arenas, mallopt(3) M_ARENA_MAX);
- ``glibc-mmap``: ``MALLOC_MMAP_THRESHOLD_=131072``: every block of 128 KiB or more gets its own
  ``mmap`` and is unmapped at ``free`` (setting it also turns off glibc's dynamic threshold,
  which otherwise rises to the largest freed block, up to 32 MiB: mallopt(3) M_MMAP_THRESHOLD);
- ``jemalloc``, ``mimalloc``: ``LD_PRELOAD`` of Debian's shared libraries (packages
  ``libjemalloc2``, ``libmimalloc2.0``). A library not found is an ``unavailable`` run naming
  the package to install; a preload that did not take (the worker's ``/proc/self/maps`` lacks
  the library: ld.so only warns and goes on) is a ``failed`` run. Neither is ever measured as
  if it had worked.

The workload: ``requests`` requests, each a batch of random shape (``make_stream``: batch size,
and for the transformer sequence length, drawn log-uniformly with ``seed``), through a built-in
model of ``memlab/workloads/models.py`` in eval mode under ``torch.inference_mode()``. The
worker installs memlab's native recorder (``memlab/tracking/_alloc.cpp``, which wraps PyTorch's
CPU allocator, not ``malloc``, so it counts tensor bytes exactly under any ``malloc``) before
building the model, runs one warm-up request of the stream's smallest shape, then reads the
**baseline**, and after each request (its tensors freed) reads:

- ``live``: tensor bytes alive (the recorder; the parameters, once a request's tensors are gone);
- ``live_peak``: the recorder's peak during the request (input, activations, op buffers);
- ``anon``: anonymous RSS (``RssAnon`` of /proc/self/status, via ``memlab.tracking.procmem``);
- ``rss_peak``: the kernel's RSS high-water mark during the request (``VmHWM``, reset before the
  request through ``/proc/self/clear_refs``); it counts file-backed pages too, so the anonymous
  peak is estimated as ``VmHWM - RssFile - RssShmem`` read just after (``anon_peak``);
- ``malloc_free`` (glibc configurations only): bytes glibc's arenas hold free
  (``mallinfo2().fordblks``, summed over all arenas by glibc's ``__libc_mallinfo2``);
- ``latency_s``: the forward pass's wall time (the input is made before the clock starts);
- ``minflt``: minor page faults during the request (``getrusage``): memory the allocator had
  to get from the kernel again (an unmapped block is faulted in page by page when reused);
- ``others_cores`` (per run): how many cores other processes kept busy during the stream
  (``memlab.timing.machine_busy_s`` minus the worker's own CPU time, over the wall time); on a
  shared machine latencies with others near a core are disturbed, and ratios mean little.

**Fragmentation** after a request = ``(anon - live) - (anon_base - live_base)``: the anonymous
memory that no tensor uses, above what was already there at the baseline. The baseline
``anon_base - live_base`` is the interpreter, torch's libraries' heap (thread pools, kernels'
caches), the recorder's table, and whatever the warm-up request left: everything but tensors,
read after the model's parameters were allocated and one smallest request ran. What grows above
it during the stream is memory ``malloc`` keeps after tensors were freed (its free lists and
unreturned pages), plus any cache torch grows for new shapes (not separable here; the glibc
``malloc_free`` column shows how much of it glibc itself reports as free).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AllocatorConfig",
    "AllocatorUnavailable",
    "AllocatorRun",
    "AllocatorComparison",
    "CONFIGS",
    "WORKLOADS",
    "Request",
    "make_stream",
    "resolve",
    "run_config",
    "compare",
]

MIB = 2**20


# ============================================================================================
# Configurations
@dataclass(frozen=True)
class AllocatorConfig:
    """One way to run the worker's ``malloc``: environment variables, and a shared library to
    preload (the first of ``preload``'s file names found in the library directories)."""

    name: str
    description: str
    env: Mapping[str, str] = field(default_factory=dict)
    preload: tuple[str, ...] = ()  # candidate file names, first found wins
    package: str | None = None  # the Debian package that ships the library
    glibc: bool = True  # malloc is glibc's (its env variables and mallinfo2 apply)


CONFIGS: dict[str, AllocatorConfig] = {
    c.name: c
    for c in (
        AllocatorConfig("glibc", "glibc malloc, defaults"),
        AllocatorConfig("glibc-arena2", "glibc, MALLOC_ARENA_MAX=2", env={"MALLOC_ARENA_MAX": "2"}),
        AllocatorConfig(
            "glibc-mmap",
            "glibc, MALLOC_MMAP_THRESHOLD_=131072 (blocks >= 128 KiB mmapped, unmapped at free)",
            env={"MALLOC_MMAP_THRESHOLD_": "131072"},
        ),
        AllocatorConfig(
            "jemalloc",
            "jemalloc via LD_PRELOAD",
            preload=("libjemalloc.so.2", "libjemalloc.so"),
            package="libjemalloc2",
            glibc=False,
        ),
        AllocatorConfig(
            "mimalloc",
            "mimalloc via LD_PRELOAD",
            preload=("libmimalloc.so.2", "libmimalloc.so.2.0", "libmimalloc.so"),
            package="libmimalloc2.0",
            glibc=False,
        ),
    )
}

# Inherited variables that would change any configuration's malloc: removed from every
# worker's environment before the configuration's own are added (MALLOC_CONF is jemalloc's).
_CLEARED_PREFIXES = ("MALLOC_", "MIMALLOC_", "JEMALLOC_")
_CLEARED_NAMES = ("LD_PRELOAD", "GLIBC_TUNABLES")


class AllocatorUnavailable(RuntimeError):
    """A configuration cannot run here: its library is missing, or the platform lacks
    LD_PRELOAD / glibc. The message says what to install."""


def _library_dirs() -> list[Path]:
    """Where ld.so finds Debian's libraries (multiarch first), plus $MEMLAB_LIBRARY_PATH."""
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    extra = [p for p in os.environ.get("MEMLAB_LIBRARY_PATH", "").split(os.pathsep) if p]
    dirs = [*extra, f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/usr/lib"]
    return [Path(d) for d in [*dirs, "/usr/local/lib"]]


def _glibc_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"needs Linux (LD_PRELOAD and glibc's MALLOC_* variables); this is {sys.platform}"
    libc, _ = platform.libc_ver()
    if libc != "glibc":
        return f"needs glibc (this Python's C library is {libc or 'unknown'})"
    return None


def resolve(config: str | AllocatorConfig) -> tuple[AllocatorConfig, dict[str, str]]:
    """The configuration and the variables its worker gets (on top of the cleaned
    environment), with the preloaded library's absolute path; ``AllocatorUnavailable`` with
    the package to install where it cannot run here, ``ValueError`` for an unknown name."""
    cfg = _config(config)
    reason = _glibc_reason()
    if reason is not None and (cfg.glibc or cfg.preload):
        raise AllocatorUnavailable(f"{cfg.name} is unavailable: {reason}")
    env = dict(cfg.env)
    if cfg.preload:
        dirs = _library_dirs()
        found = next((d / n for n in cfg.preload for d in dirs if (d / n).is_file()), None)
        if found is None:
            pkg = cfg.package or "the library's package"
            raise AllocatorUnavailable(
                f"{cfg.name} is unavailable: none of {', '.join(cfg.preload)} in "
                f"{', '.join(str(d) for d in dirs)}; install it with "
                f"`apt-get install {pkg}` (Debian/Ubuntu), or put its directory in "
                "$MEMLAB_LIBRARY_PATH"
            )
        env["LD_PRELOAD"] = str(found)
    return cfg, env


def _config(config: str | AllocatorConfig) -> AllocatorConfig:
    if isinstance(config, AllocatorConfig):
        return config
    if not isinstance(config, str) or config not in CONFIGS:
        raise ValueError(
            f"unknown allocator configuration {config!r}; allowed: {', '.join(CONFIGS)} "
            "(or a memlab.allocators.AllocatorConfig)"
        )
    return CONFIGS[config]


# ============================================================================================
# The request stream
#: Built-in workloads and the shapes their requests draw: (max batch, max sequence length).
#: The transformer draws batch and sequence length; the MLP and the CNN draw the batch only.
WORKLOADS: dict[str, tuple[int, int | None]] = {
    "transformer": (32, 256),
    "mlp": (2048, None),
    "cnn": (256, None),
}
_MIN_SEQ = 8


@dataclass(frozen=True)
class Request:
    """One inference request: ``batch`` samples (of ``seq`` tokens for the transformer)."""

    batch: int
    seq: int | None = None


def _log_uniform_int(rng: random.Random, lo: int, hi: int) -> int:
    # Log-uniform: many small requests and a few large ones, like a service's traffic.
    return min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))


def make_stream(workload: str, requests: int, seed: int = 0) -> list[Request]:
    """``requests`` seeded requests for ``workload`` (shapes drawn log-uniformly)."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; allowed: {', '.join(WORKLOADS)}")
    if not isinstance(requests, int) or requests < 1:
        raise ValueError(f"requests must be a positive int, got {requests!r}")
    max_batch, max_seq = WORKLOADS[workload]
    rng = random.Random(seed)
    return [
        Request(
            _log_uniform_int(rng, 1, max_batch),
            None if max_seq is None else _log_uniform_int(rng, _MIN_SEQ, max_seq),
        )
        for _ in range(requests)
    ]


# ============================================================================================
# Results (plain data)
_SERIES = (
    "latency_s",
    "t_s",
    "live",
    "live_peak",
    "anon",
    "anon_peak",
    "rss_peak",
    "minflt",
    "malloc_free",
)


@dataclass
class AllocatorRun:
    """One configuration's measurement. ``status``: ``ok``, ``unavailable`` (``reason`` names
    the package to install) or ``failed`` (``reason`` says why: a preload that did not take,
    a worker that died). Per-request series are lists in request order (bytes, seconds);
    ``malloc_free`` is None off glibc."""

    config: str
    description: str
    status: str
    reason: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # what the worker was given
    cleared: list[str] = field(default_factory=list)  # inherited allocator variables removed
    worker_env: dict[str, str] = field(default_factory=dict)  # what it read in os.environ
    worker_maps: list[str] = field(default_factory=list)  # allocator libraries it had mapped
    param_bytes: int = 0  # the model's parameters and buffers, from their shapes
    anon_base: int = 0
    live_base: int = 0
    threads: int = 0
    others_cores: float | None = None  # cores other processes used during the stream
    requests: list[Request] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    t_s: list[float] = field(default_factory=list)  # end of each request, from the stream start
    live: list[int] = field(default_factory=list)
    live_peak: list[int] = field(default_factory=list)
    anon: list[int] = field(default_factory=list)
    anon_peak: list[int] = field(default_factory=list)
    rss_peak: list[int] = field(default_factory=list)
    minflt: list[int] = field(default_factory=list)
    malloc_free: list[int] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def baseline(self) -> int:
        """Anonymous bytes that are not tensors before the stream (see the module doc)."""
        return self.anon_base - self.live_base

    @property
    def fragmentation(self) -> list[int]:
        """After each request: anonymous RSS - live tensor bytes - the baseline."""
        return [a - v - self.baseline for a, v in zip(self.anon, self.live, strict=True)]

    def summary(self) -> dict[str, Any]:
        """The table's row: bytes and seconds (None where the run did not measure)."""
        row: dict[str, Any] = {
            "config": self.config,
            "status": self.status,
            "reason": self.reason,
        }
        if not self.ok or not self.anon:
            return row
        lat = sorted(self.latency_s)
        row.update(
            peak_anon=max(self.anon_peak),
            peak_rss=max(self.rss_peak),
            final_anon=self.anon[-1],
            final_rss_minus_live=self.anon[-1] - self.live[-1],
            final_fragmentation=self.fragmentation[-1],
            max_fragmentation=max(self.fragmentation),
            baseline=self.baseline,
            live_base=self.live_base,
            p50_s=_percentile(lat, 50),
            p99_s=_percentile(lat, 99),
            total_s=sum(lat),
            final_malloc_free=None if self.malloc_free is None else self.malloc_free[-1],
            minflt=sum(self.minflt),
            others_cores=self.others_cores,
        )
        return row

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["requests"] = [[r.batch, r.seq] for r in self.requests]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AllocatorRun:
        d = dict(d)
        d["requests"] = [Request(int(b), None if s is None else int(s)) for b, s in d["requests"]]
        return cls(**d)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy.percentile's default method)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class AllocatorComparison:
    """Every configuration's run on the same request stream, in the order asked."""

    workload: str
    seed: int
    stream: list[Request]
    runs: list[AllocatorRun]

    def __getitem__(self, name: str) -> AllocatorRun:
        for r in self.runs:
            if r.config == name:
                return r
        raise KeyError(f"no run of {name!r}; runs: {', '.join(r.config for r in self.runs)}")

    @property
    def names(self) -> list[str]:
        return [r.config for r in self.runs]

    def table(self) -> list[dict[str, Any]]:
        """One row per configuration, with ratios to ``glibc`` where it ran in this comparison
        (``*_vs_glibc``: this run's figure / glibc's, same stream, same session)."""
        rows = [r.summary() for r in self.runs]
        ref = next((row for row in rows if row["config"] == "glibc" and "p50_s" in row), None)
        for row in rows:
            if ref is None or "p50_s" not in row:
                continue
            for key in ("peak_anon", "final_rss_minus_live", "p50_s", "p99_s", "total_s"):
                row[f"{key}_vs_glibc"] = row[key] / ref[key] if ref[key] else math.nan
        return rows

    def to_frame(self) -> Any:
        """``table()`` as a pandas DataFrame indexed by configuration."""
        import pandas as pd

        return pd.DataFrame(self.table()).set_index("config")

    def explain(self) -> str:
        """The comparison in sentences; every number is read from the runs."""
        return _explain(self)

    def to_json(self) -> str:
        return json.dumps(
            {
                "workload": self.workload,
                "seed": self.seed,
                "stream": [[r.batch, r.seq] for r in self.stream],
                "runs": [r.to_dict() for r in self.runs],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> AllocatorComparison:
        d = json.loads(text)
        return cls(
            workload=d["workload"],
            seed=int(d["seed"]),
            stream=[Request(int(b), None if s is None else int(s)) for b, s in d["stream"]],
            runs=[AllocatorRun.from_dict(r) for r in d["runs"]],
        )


def _mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def _explain(cmp: AllocatorComparison) -> str:
    rows = {row["config"]: row for row in cmp.table()}
    out: list[str] = []
    for name, row in rows.items():
        if row["status"] != "ok":
            out.append(f"{name}: {row['status']}: {row['reason']}")
    ok = {n: r for n, r in rows.items() if r["status"] == "ok"}
    if not ok:
        return "\n".join(out) or "no configuration ran"
    base = ok.get("glibc")
    if base is not None:
        run = cmp["glibc"]
        big = max(range(len(run.requests)), key=lambda i: run.live_peak[i])
        text = (
            f"glibc kept {_mib(base['final_fragmentation'])} that no tensor uses at the end of "
            f"the {len(run.requests)} requests (at most {_mib(base['max_fragmentation'])}; the "
            f"largest request, #{big + 1}, had {_mib(run.live_peak[big])} of tensors at its peak)"
        )
        if base["final_malloc_free"] is not None:
            text += f"; glibc itself reports {_mib(base['final_malloc_free'])} free in its arenas"
        out.append(text + ".")
    for name, row in ok.items():
        if name == "glibc":
            continue
        s = f"{name}: {_mib(row['final_fragmentation'])} kept at the end"
        if base is not None:
            s += (
                f", {_mib(base['final_fragmentation'] - row['final_fragmentation'])} less than "
                f"glibc, at {row['p50_s_vs_glibc']:.2f}x glibc's median request time "
                f"({row['total_s_vs_glibc']:.2f}x its total; {row['minflt']} page faults "
                f"against glibc's {base['minflt']})"
            )
        out.append(s + ".")
    busy = {n: r["others_cores"] for n, r in ok.items() if (r["others_cores"] or 0) > 0.25}
    if busy:
        out.append(
            "Other processes kept "
            + ", ".join(f"{c:.1f} cores busy during {n}" for n, c in busy.items())
            + ": those times are disturbed."
        )
    out.append(
        "Kept = anonymous RSS - live tensor bytes - the same difference before the stream "
        "(interpreter, torch, parameters, one warm-up request). Times come from one run per "
        "configuration, one after the other: compare them as rough ratios (a fresh worker alone "
        "varies by tens of percent from the next on a small machine)."
    )
    return "\n".join(out)


# ============================================================================================
# Running: one fresh worker process per configuration
_live_workers: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()
_atexit_registered = False
_RESULT_MARK = "MEMLAB-ALLOCATORS-RESULT "


def _kill_workers() -> None:
    with _live_lock:
        procs = list(_live_workers)
    for p in procs:
        _kill(p)


def _kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a kill that does not act
        pass
    with _live_lock:
        _live_workers.discard(p)


def _worker_env(extra: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    env = dict(os.environ)
    removed = [
        k for k in env if k in _CLEARED_NAMES or any(k.startswith(p) for p in _CLEARED_PREFIXES)
    ]
    for k in removed:
        del env[k]
    env.update(extra)
    # The worker imports this module: make the checkout importable if memlab is not installed.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env, sorted(removed)


def run_config(
    config: str | AllocatorConfig,
    stream: Sequence[Request],
    *,
    workload: str = "transformer",
    seed: int = 0,
    threads: int | None = None,
    timeout_s: float = 600.0,
) -> AllocatorRun:
    """Run ``stream`` in a fresh worker with ``config``'s allocator. Unavailable or failed
    configurations come back as such (status and reason), never as a measurement."""
    global _atexit_registered
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; allowed: {', '.join(WORKLOADS)}")
    cfg = _config(config)
    try:
        cfg, extra = resolve(cfg)
    except AllocatorUnavailable as e:
        return AllocatorRun(cfg.name, cfg.description, "unavailable", str(e))
    env, cleared = _worker_env(extra)
    job = {
        "workload": workload,
        "seed": seed,
        "threads": threads,
        "glibc": cfg.glibc,
        "requests": [[r.batch, r.seq] for r in stream],
    }
    fd, err_path = tempfile.mkstemp(prefix="memlab-allocators-", suffix=".stderr")
    # Why not runner.procs._spawn: multiprocessing's spawn starts the child with the parent's
    # os.environ (multiprocessing/util.py, spawnv_passfds passes no env), so LD_PRELOAD would
    # have to be set in this process's own environment, racing every other thread that starts
    # a process. Popen(env=...) gives this child alone its environment.
    cmd = [sys.executable, "-c", "from memlab.allocators import _worker_main; _worker_main()"]
    with _live_lock:
        if not _atexit_registered:
            atexit.register(_kill_workers)
            _atexit_registered = True
    try:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd, close_fds=True
        )
    except BaseException:
        os.unlink(err_path)
        raise
    finally:
        os.close(fd)
    with _live_lock:
        _live_workers.add(proc)
    try:
        try:
            out, _ = proc.communicate(json.dumps(job).encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return AllocatorRun(
                cfg.name, cfg.description, "failed", f"worker still running after {timeout_s} s"
            )
        line = next(
            (ln for ln in out.decode(errors="replace").splitlines() if ln.startswith(_RESULT_MARK)),
            None,
        )
        if proc.returncode != 0 or line is None:
            from memlab.runner.procs import _stderr_tail

            return AllocatorRun(
                cfg.name,
                cfg.description,
                "failed",
                f"worker exited with code {proc.returncode}: {_stderr_tail(err_path)}",
            )
        got = json.loads(line[len(_RESULT_MARK) :])
    finally:
        _kill(proc)  # always: after a result, an error, a timeout or Ctrl-C
        try:
            os.unlink(err_path)
        except OSError:
            pass
    run = _run_from_worker(cfg, extra, list(stream), got)
    run.cleared = cleared
    return run


def _run_from_worker(
    cfg: AllocatorConfig, env: dict[str, str], stream: list[Request], got: dict[str, Any]
) -> AllocatorRun:
    run = AllocatorRun(
        config=cfg.name,
        description=cfg.description,
        status="ok",
        env=env,
        worker_env=got["env"],
        worker_maps=got["maps"],
        param_bytes=got["param_bytes"],
        anon_base=got["anon_base"],
        live_base=got["live_base"],
        threads=got["threads"],
        others_cores=got["others_cores"],
        requests=stream,
        **{k: got[k] for k in _SERIES},
    )
    missing = [k for k, v in env.items() if got["env"].get(k) != v]
    if missing:
        run.status, run.reason = "failed", f"the worker did not see {', '.join(missing)}"
    elif "LD_PRELOAD" in env and os.path.realpath(env["LD_PRELOAD"]) not in got["maps"]:
        # /proc/self/maps names the file a symlink points to (libmimalloc.so.2 -> .so.2.0).
        run.status = "failed"
        run.reason = (
            f"LD_PRELOAD={env['LD_PRELOAD']} did not take: the worker's /proc/self/maps lacks "
            f"it (mapped allocator libraries: {', '.join(got['maps']) or 'none'})"
        )
    return run


def compare(
    workload: str = "transformer",
    requests: int = 200,
    configs: Iterable[str | AllocatorConfig] | None = None,
    *,
    seed: int = 0,
    threads: int | None = None,
    timeout_s: float = 600.0,
    on_run: Callable[[AllocatorRun], None] | None = None,
) -> AllocatorComparison:
    """Run the same seeded stream of ``requests`` requests through ``workload`` once per
    configuration (default: all of ``CONFIGS``), one after the other, each in a fresh worker.
    ``threads``: torch's intra-op threads in the worker (default: torch's own choice);
    ``on_run(run)`` is called as each configuration's run ends (a lab's progress line)."""
    names = list(CONFIGS) if configs is None else list(configs)
    if not names:
        raise ValueError("configs is empty; allowed: " + ", ".join(CONFIGS))
    cfgs = [_config(c) for c in names]  # every name checked before anything runs
    stream = make_stream(workload, requests, seed)
    runs = []
    for c in cfgs:
        run = run_config(
            c, stream, workload=workload, seed=seed, threads=threads, timeout_s=timeout_s
        )
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return AllocatorComparison(workload, seed, stream, runs)


# ============================================================================================
# The worker (torch is imported here only)
def _die_with_parent() -> None:
    """The worker must never outlive its parent (a parent killed by SIGKILL runs no finally)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        # prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills us when the parent thread exits.
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)
        return

    def watch() -> None:  # pragma: no cover - not Linux
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()  # pragma: no cover


def _mapped_allocators() -> list[str]:
    """Allocator libraries in this process's /proc/self/maps (glibc's is libc.so, not listed)."""
    paths: set[str] = set()
    try:
        text = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "malloc" in Path(parts[5]).name:
            paths.add(parts[5])
    return sorted(paths)


def _mallinfo2_free() -> Any:
    """A reader of glibc's free bytes in its arenas (``mallinfo2().fordblks``), or None."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        # glibc malloc/malloc.h, struct mallinfo2: ten size_t fields, in this order.
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return None  # glibc < 2.33
    fn.restype = Mallinfo2
    fn.argtypes = []
    return lambda: int(fn().fordblks)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _worker_main() -> None:
    _die_with_parent()
    job = json.loads(sys.stdin.read())
    out = _measure(job)
    sys.stdout.write(_RESULT_MARK + json.dumps(out) + "\n")
    sys.stdout.flush()


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    import gc
    import resource

    import torch

    from memlab.timing import machine_busy_s
    from memlab.tracking.procmem import read_process_memory, reset_peak_rss
    from memlab.tracking.sources import NativeSource, default_source

    if job["threads"]:
        torch.set_num_threads(int(job["threads"]))
    # Installed before the model is built, so the parameters are counted as live.
    src = default_source()
    if not isinstance(src, NativeSource):
        raise RuntimeError(
            "the allocator comparison needs memlab's native recorder (exact live tensor bytes "
            f"at any moment); this worker got the {src.name} source. Install a C++ compiler "
            "and ninja, and leave MEMLAB_EVENT_SOURCE unset or 'native'."
        )
    lib = src.lib
    model, forward, make_input = _build(job["workload"], job["seed"])
    param_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    reqs = [(int(b), None if s is None else int(s)) for b, s in job["requests"]]
    gen = torch.Generator().manual_seed(job["seed"])
    free_reader = _mallinfo2_free() if job["glibc"] else None

    def mem() -> dict[str, int]:
        m = read_process_memory()
        if m["rss_anon"] is None:
            raise RuntimeError("/proc/self/status has no RssAnon (Linux >= 4.5 needed)")
        return {k: int(v or 0) for k, v in m.items()}

    smallest = (min(b for b, _ in reqs), min((s for _, s in reqs if s), default=None))
    with torch.inference_mode():
        forward(make_input(*smallest, gen))  # warm-up: lazy initialisations go to the baseline
    gc.collect()
    base = mem()
    live_base = src.live()
    series: dict[str, list[Any]] = {k: [] for k in _SERIES}
    busy0, own0, start = machine_busy_s(), _own_cpu_s(), time.perf_counter()
    flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for b, s in reqs:
        x = make_input(b, s, gen)
        lib.memlab_reset_peak()
        reset_peak_rss()
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = forward(x)
        t1 = time.perf_counter()
        del x, y
        m = mem()
        series["latency_s"].append(t1 - t0)
        series["t_s"].append(time.perf_counter() - start)
        flt, before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, flt
        series["minflt"].append(flt - before)
        series["live"].append(src.live())
        series["live_peak"].append(int(lib.memlab_peak()))
        series["anon"].append(m["rss_anon"])
        series["rss_peak"].append(m["rss_hwm"])
        series["anon_peak"].append(m["rss_hwm"] - m["rss_file"] - m["rss_shmem"])
        if free_reader is not None:
            series["malloc_free"].append(free_reader())
    busy1, own1, wall = machine_busy_s(), _own_cpu_s(), time.perf_counter() - start
    others = None if busy0 is None or busy1 is None else ((busy1 - busy0) - (own1 - own0)) / wall
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _CLEARED_NAMES or any(k.startswith(p) for p in _CLEARED_PREFIXES)
    }
    return {
        "env": env,
        "maps": _mapped_allocators(),
        "param_bytes": int(param_bytes),
        "anon_base": base["rss_anon"],
        "live_base": live_base,
        "threads": torch.get_num_threads(),
        "others_cores": others,
        **{
            k: (None if k == "malloc_free" and free_reader is None else v)
            for k, v in series.items()
        },
    }


def _build(workload: str, seed: int) -> tuple[Any, Any, Any]:
    """The model (eval mode), its forward for one request, and the request's input maker."""
    import torch

    from memlab.workloads.models import CNN, MLP, Transformer

    _, max_seq = WORKLOADS[workload]
    torch.manual_seed(seed)
    model: Any
    if workload == "transformer":
        # Learned positions for the longest request; a request of s tokens uses the first s.
        # Transformer.forward adds all of self.pos, which fixes the sequence length, so its
        # forward is written out here with the positions sliced (models.py, Transformer).
        model = Transformer(seq_len=max_seq or 0).eval()

        def forward(x: Any) -> Any:
            h = model.embed(x) + model.pos[:, : x.shape[1]]
            for blk in model.blocks:
                h = blk(h)
            return model.head(model.norm(h).mean(dim=1))

        def make_input(b: int, s: int | None, g: Any) -> Any:
            return torch.randn(b, s or 1, model.embed.in_features, generator=g)

        return model, forward, make_input
    model = (MLP() if workload == "mlp" else CNN()).eval()
    shape = (64,) if workload == "mlp" else (1, 16, 16)

    def make_flat_input(b: int, s: int | None, g: Any) -> Any:
        return torch.randn(b, *shape, generator=g)

    return model, model, make_flat_input
