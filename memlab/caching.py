"""Caching under a byte budget: items loaded from disk on a miss, held in an LRU or LFU cache
bounded in *bytes*, replayed against a seeded request trace (lab 09, many tasks in one memory).

Items (``items=``):

- ``models``: small real models (the built-in ``mlp``, ``cnn`` and ``transformer`` of
  ``memlab.workloads.models`` at growing widths, item ``i`` is ``ITEM_KINDS_OF_MODELS[i % 3]``
  at width step ``1 + (i // 3) % 8``), saved once with ``torch.save`` (their ``state_dict``) in
  a temporary folder. A miss reads and deserialises the file (``torch.load``), builds the module
  on the meta device and assigns the loaded tensors (``load_state_dict(assign=True)``: no
  throw-away initialisation). A request is one real forward pass of a batch of one.
- ``embeddings``: one embedding table of ``n_items * shard_rows`` rows of ``embedding_dim``
  float32, stored as one file per shard of ``shard_rows`` rows. Item ``i`` is shard ``i``; a
  miss loads the shard's file; a request looks up ``lookup_rows`` seeded row ids in it
  (``torch.nn.functional.embedding``) and sums them.

An item's size is the bytes of its tensors (``numel * element_size`` of each tensor of its
``state_dict``, or of the shard), computed from the tensors loaded, and checked against the
tensors built before saving.

Policies (``POLICIES``): ``none`` loads on every request and keeps nothing; ``lru`` and ``lfu``
are ``cachetools.LRUCache`` / ``cachetools.LFUCache`` with ``maxsize=capacity_bytes`` and
``getsizeof=`` the item's tensor bytes (cachetools evicts until the new item fits; its LFU
forgets an item's count when it is evicted and breaks ties by the least recently used);
``unbounded`` never evicts. An item larger than the capacity is served without being cached (a
miss every time): cachetools refuses it (``ValueError: value too large``).

Memoization (``memoize=True``): each request also carries an input id (``request_inputs``, seeded,
``distinct_inputs`` of them); identical requests (same item, same input) reuse the output kept
in a keyed cache (``cachetools.keys.hashkey(item, input)``; unbounded, or a byte-bounded LRU of
``memo_capacity_bytes``). A memo hit does not consult the item cache at all.

Per request the worker measures (``time.perf_counter``): the outcome (``hit``, ``miss`` or
``memo``), the latency (cache look-up, the load on a miss, the request's work), the miss's load
time, and the bytes the cache holds after the request (``currsize``). The inputs are made
before the clock starts.

What "load from disk" measures: the files are written just before the replay and every item is
loaded once in a warm-up, so the reads come from the OS page cache (dropping it needs root,
which a lab does not have): a miss costs a read from memory, deserialisation and the module's
assembly, not a disk seek. A real cold read would cost more; the notes of every result say so.

This module imports neither torch nor cachetools at import time: ``cache_replay`` runs its job
(``cache_replay_job``) in the service worker (``memlab.runner.call``); the traces and results
are plain data for the notebook kernel.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memlab.timeline import Timing, format_bytes
from memlab.timeline import _percentile as percentile

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "POLICIES",
    "ITEMS",
    "OUTCOMES",
    "MODEL_KINDS",
    "MAX_ITEMS",
    "zipf_trace",
    "scan_trace",
    "mixed_trace",
    "request_inputs",
    "model_spec",
    "PolicyRun",
    "CacheResult",
    "cache_replay",
    "cache_replay_job",
]

#: The cache policies, in the order a comparison shows them (``none`` is the anchor).
POLICIES: tuple[str, ...] = ("none", "lru", "lfu", "unbounded")
#: What the cached items are.
ITEMS: tuple[str, ...] = ("models", "embeddings")
#: A request's outcome: served from the item cache, loaded from disk, or served from the memo.
OUTCOMES: tuple[str, ...] = ("hit", "miss", "memo")
#: The built-in workloads the ``models`` items cycle through.
MODEL_KINDS: tuple[str, ...] = ("mlp", "cnn", "transformer")
#: The most distinct items one replay may use, per kind (their files are written to disk).
MAX_ITEMS: dict[str, int] = {"models": 96, "embeddings": 512}

_WIDTH_STEPS = 8  # the models' widths cycle over this many steps


# ============================================================================================
# Traces (pure)
def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed


def _zipf_draws(n_items: int, n: int, s: float, rng: Any) -> list[int]:
    """``n`` ranks in ``0..n_items-1`` with P(rank k) proportional to 1/(k+1)**s."""
    import numpy as np

    weights = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** s
    return [int(v) for v in rng.choice(n_items, size=n, p=weights / weights.sum())]


def zipf_trace(n_items: int, n_requests: int, s: float = 1.1, seed: int = 0) -> tuple[int, ...]:
    """A seeded trace of ``n_requests`` item ids in ``0..n_items-1`` whose popularity follows a
    Zipf law of exponent ``s``: the k-th most popular item is asked ``1/k**s`` as often as the
    most popular one (web and model-serving request mixes are of this shape, s near 1). Which
    item has which rank is a seeded permutation, so popularity is not tied to an item's size
    (item ids grow in size for ``models``). The same arguments give the same trace."""
    import numpy as np

    _check_count("n_items", n_items)
    _check_count("n_requests", n_requests)
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 <= s < math.inf:
        raise ValueError(f"s (the Zipf exponent) must be a finite number >= 0, got {s!r}")
    rng = np.random.default_rng(_check_seed(seed))
    order = [int(v) for v in rng.permutation(n_items)]
    return tuple(order[r] for r in _zipf_draws(n_items, n_requests, float(s), rng))


def scan_trace(n_items: int, n_requests: int, start: int = 0) -> tuple[int, ...]:
    """A cyclic scan: ``start, start+1, ..., n_items-1, 0, 1, ...`` for ``n_requests``
    requests. When the ``n_items`` items do not fit in the cache together, LRU gets no hit at
    all: the item asked next is always the one used longest ago, the one LRU just evicted (an
    LRU cache holds the most recently used items, and the next one is never among them).
    cachetools' LFU gets none either: it counts uses only while an item is cached, so every
    cached item has been used once and the tie goes to the least recently used, which makes it
    LRU on this trace (an LFU that remembered evicted items' counts would keep some; see
    :func:`mixed_trace` for where in-cache counts do help). An unbounded cache hits from the
    second cycle on. Deterministic (no seed)."""
    _check_count("n_items", n_items)
    _check_count("n_requests", n_requests)
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < n_items:
        raise ValueError(f"start must be an int in 0..n_items-1 ({n_items - 1}), got {start!r}")
    return tuple((start + i) % n_items for i in range(n_requests))


def mixed_trace(
    n_items: int,
    n_requests: int,
    *,
    hot_items: int | None = None,
    scan_every: int = 40,
    scan_length: int | None = None,
    s: float = 1.1,
    seed: int = 0,
) -> tuple[int, ...]:
    """A Zipf hot set interrupted by scans, the trace where LFU beats LRU.

    Items ``0..hot_items-1`` (default a quarter of ``n_items``, at least 1) are the hot set,
    asked with Zipf popularity (exponent ``s``, seeded); after every ``scan_every`` hot
    requests comes a scan of ``scan_length`` cold items (default every cold item), continuing
    cyclically over ``hot_items..n_items-1`` where the previous scan stopped (a batch job, a
    backfill, a crawler). A scan longer than the cache flushes LRU's hot items, which then miss
    again; LFU keeps them (they have been used many times, each scanned item once). The trace
    has exactly ``n_requests`` requests (the last scan may be cut)."""
    _check_count("n_items", n_items, 2)
    _check_count("n_requests", n_requests)
    hot = max(1, n_items // 4) if hot_items is None else hot_items
    if not isinstance(hot, int) or isinstance(hot, bool) or not 1 <= hot < n_items:
        raise ValueError(
            f"hot_items must be an int in 1..n_items-1 ({n_items - 1}), got {hot_items!r}"
        )
    cold = n_items - hot
    length = cold if scan_length is None else scan_length
    _check_count("scan_every", scan_every)
    _check_count("scan_length", length)
    hot_trace = zipf_trace(hot, n_requests, s=s, seed=seed)
    out: list[int] = []
    next_cold = 0
    i = 0
    while len(out) < n_requests:
        out.append(hot_trace[i])
        i += 1
        if i % scan_every == 0:
            for _ in range(length):
                out.append(hot + next_cold)
                next_cold = (next_cold + 1) % cold
    return tuple(out[:n_requests])


def request_inputs(n_requests: int, distinct_inputs: int, seed: int = 0) -> tuple[int, ...]:
    """The input id of each request (``0..distinct_inputs-1``, uniform, seeded): two requests
    with the same item and the same input id are identical (what memoization reuses)."""
    import numpy as np

    _check_count("n_requests", n_requests)
    _check_count("distinct_inputs", distinct_inputs)
    # A stream apart from the traces' (a trace with the same seed must not fix the inputs).
    rng = np.random.default_rng([_check_seed(seed), 0x1A9])
    return tuple(int(v) for v in rng.integers(0, distinct_inputs, size=n_requests))


def model_spec(item: int) -> tuple[str, dict[str, int]]:
    """The workload and constructor arguments of ``models`` item ``item`` (pure): the built-in
    kinds in turn, 2 blocks each, width growing with ``item // 3`` over 8 steps."""
    _check_count("item", item, 0)
    kind = MODEL_KINDS[item % len(MODEL_KINDS)]
    step = 1 + (item // len(MODEL_KINDS)) % _WIDTH_STEPS
    if kind == "mlp":
        return kind, {"dim": 32 * step, "hidden": 128 * step, "depth": 2}
    if kind == "cnn":
        return kind, {"channels": 16 * step, "depth": 2}
    return kind, {"dim": 32 * step, "heads": 4, "hidden": 128 * step, "depth": 2}


# ============================================================================================
# Results (pure data)
def _percentile(values: Sequence[float], q: float) -> float:
    """``timeline``'s percentile (numpy's), ``nan`` for no values (a policy with no hit)."""
    p = percentile(values, q)
    return math.nan if p is None else p


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class PolicyRun:
    """One policy's replay of the trace: a per-request series (for plotting) and its summary.

    ``outcome[i]`` is ``hit``, ``miss`` or ``memo``; ``latency_s[i]`` the request's time;
    ``load_s[i]`` its load from disk (0.0 unless a miss); ``work_s[i]`` the request's own work
    (the forward or the look-up; 0.0 for a memo hit; empty if not recorded); ``bytes_held[i]``
    the item cache's bytes after it (0 for ``none``). ``capacity_bytes`` is the bound (None:
    ``none`` and ``unbounded``). ``evictions``: items the cache dropped; ``memo_bytes_peak``:
    the memo's largest size (None without memoization). ``timing``: whether other processes
    disturbed the replay (one window over the whole replay, ``memlab.timing.assess``)."""

    policy: str
    capacity_bytes: int | None
    outcome: tuple[str, ...]
    latency_s: tuple[float, ...]
    load_s: tuple[float, ...]
    bytes_held: tuple[int, ...]
    evictions: int = 0
    memo_bytes_peak: int | None = None
    timing: Timing | None = None
    work_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.outcome)
        for name in ("latency_s", "load_s", "bytes_held"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PolicyRun.{name} must have one entry per request ({n})")
        if len(self.work_s) not in (0, n):
            raise ValueError(f"PolicyRun.work_s must be empty or have one entry per request ({n})")
        bad = sorted(set(self.outcome) - set(OUTCOMES))
        if bad:
            raise ValueError(f"PolicyRun.outcome must be among {', '.join(OUTCOMES)}, got {bad}")

    @property
    def requests(self) -> int:
        return len(self.outcome)

    @property
    def hits(self) -> int:
        """Requests the item cache served."""
        return self.outcome.count("hit")

    @property
    def misses(self) -> int:
        """Requests that loaded their item from disk."""
        return self.outcome.count("miss")

    @property
    def memo_hits(self) -> int:
        """Requests served from the memo (the item cache not consulted)."""
        return self.outcome.count("memo")

    @property
    def hit_rate(self) -> float:
        """Hits over the requests the item cache saw (memo hits excluded)."""
        seen = self.hits + self.misses
        return self.hits / seen if seen else math.nan

    @property
    def memo_hit_rate(self) -> float:
        """Memo hits over all requests."""
        return self.memo_hits / self.requests if self.requests else math.nan

    def _latencies(self, outcome: str | None = None) -> list[float]:
        return [
            t for t, o in zip(self.latency_s, self.outcome, strict=True) if outcome in (None, o)
        ]

    def latency_ms(self, q: float, outcome: str | None = None) -> float:
        """The ``q``-th percentile of the latency (ms), over every request or one outcome's."""
        return 1e3 * _percentile(self._latencies(outcome), q)

    @property
    def p50_ms(self) -> float:
        return self.latency_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.latency_ms(99)

    @property
    def mean_ms(self) -> float:
        return 1e3 * _mean(self._latencies())

    @property
    def total_s(self) -> float:
        """The replay's time: the sum of the requests' latencies."""
        return sum(self.latency_s)

    def work_ms(self, q: float, outcome: str) -> float:
        """The ``q``-th percentile of the requests' own work (ms) for one outcome: on a miss it
        runs on tensors just loaded, on a hit on tensors already in use. NaN if not recorded."""
        work = [t for t, o in zip(self.work_s, self.outcome, strict=False) if o == outcome]
        return 1e3 * _percentile(work, q)

    @property
    def mean_miss_cost_ms(self) -> float:
        """Mean load time of a miss (ms), measured; NaN without misses."""
        loads = [t for t, o in zip(self.load_s, self.outcome, strict=True) if o == "miss"]
        return 1e3 * _mean(loads)

    @property
    def peak_bytes(self) -> int:
        return max(self.bytes_held, default=0)

    @property
    def final_bytes(self) -> int:
        return self.bytes_held[-1] if self.bytes_held else 0

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "requests": self.requests,
            "hits": self.hits,
            "misses": self.misses,
            "memo_hits": self.memo_hits,
            "hit_rate": self.hit_rate,
            "memo_hit_rate": self.memo_hit_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "hit_p50_ms": self.latency_ms(50, "hit"),
            "miss_p50_ms": self.latency_ms(50, "miss"),
            "memo_p50_ms": self.latency_ms(50, "memo"),
            "mean_miss_cost_ms": self.mean_miss_cost_ms,
            "hit_work_p50_ms": self.work_ms(50, "hit"),
            "miss_work_p50_ms": self.work_ms(50, "miss"),
            "peak_bytes": self.peak_bytes,
            "final_bytes": self.final_bytes,
            "capacity_bytes": self.capacity_bytes,
            "evictions": self.evictions,
            "memo_bytes_peak": self.memo_bytes_peak,
            "steady": None if self.timing is None else self.timing.steady,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("outcome", "latency_s", "load_s", "bytes_held", "work_s"):
            d[name] = list(d[name])
        d["timing"] = None if self.timing is None else self.timing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyRun:
        d = dict(d)
        d["outcome"] = tuple(str(v) for v in d["outcome"])
        d["latency_s"] = tuple(float(v) for v in d["latency_s"])
        d["load_s"] = tuple(float(v) for v in d["load_s"])
        d["work_s"] = tuple(float(v) for v in d.get("work_s", ()))
        d["bytes_held"] = tuple(int(v) for v in d["bytes_held"])
        d["timing"] = None if d.get("timing") is None else Timing.from_dict(d["timing"])
        return cls(**d)


@dataclass(frozen=True)
class CacheResult:
    """Every policy's replay of one trace, in the order asked (``none`` first by default: the
    anchor the latency ratios of ``table()`` divide by).

    ``trace`` and ``inputs``: each request's item id and input id; ``item_bytes[i]``: item
    ``i``'s tensor bytes (for every id up to the trace's largest); ``capacity_bytes``: the
    bound of ``lru`` and ``lfu``; ``name``: what the trace is; ``threads``: torch's intra-op
    threads in the worker; ``notes``: what was measured and how."""

    items: str
    name: str
    trace: tuple[int, ...]
    inputs: tuple[int, ...]
    item_bytes: tuple[int, ...]
    capacity_bytes: int
    memoize: bool
    seed: int
    cpus: int
    threads: int
    runs: tuple[PolicyRun, ...]
    notes: tuple[str, ...] = ()

    def __getitem__(self, policy: str) -> PolicyRun:
        for r in self.runs:
            if r.policy == policy:
                return r
        raise KeyError(f"no policy {policy!r}; policies: {', '.join(self.policies)}")

    @property
    def policies(self) -> list[str]:
        return [r.policy for r in self.runs]

    @property
    def distinct_bytes(self) -> int:
        """The bytes of every distinct item the trace asks (what ``unbounded`` ends up holding)."""
        return sum(self.item_bytes[i] for i in set(self.trace))

    def rows(self) -> list[dict[str, Any]]:
        """One row per policy (``PolicyRun.summary``) plus ``p50_vs_first`` and
        ``mean_vs_first``: this policy's latency over the first policy's, measured in the same
        job."""
        rows = [r.summary() for r in self.runs]
        ref = rows[0] if rows else None
        for row in rows:
            for key in ("p50_ms", "mean_ms"):
                base = ref[key] if ref else math.nan
                row[f"{key.removesuffix('_ms')}_vs_first"] = (
                    row[key] / base if base and not math.isnan(base) else math.nan
                )
        return rows

    def table(self) -> pd.DataFrame:
        """``rows()`` as a pandas DataFrame indexed by policy."""
        import pandas as pd

        return pd.DataFrame(self.rows()).set_index("policy")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("trace", "inputs", "item_bytes", "notes"):
            d[name] = list(d[name])
        d["runs"] = [r.to_dict() for r in self.runs]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CacheResult:
        d = dict(d)
        d["trace"] = tuple(int(v) for v in d["trace"])
        d["inputs"] = tuple(int(v) for v in d["inputs"])
        d["item_bytes"] = tuple(int(v) for v in d["item_bytes"])
        d["notes"] = tuple(str(v) for v in d.get("notes", ()))
        d["runs"] = tuple(PolicyRun.from_dict(r) for r in d["runs"])
        return cls(**d)

    def __repr__(self) -> str:
        head = (
            f"CacheResult({self.items} on {self.name}: {len(self.trace)} requests over "
            f"{len(set(self.trace))} items of {format_bytes(self.distinct_bytes)}, capacity "
            f"{format_bytes(self.capacity_bytes)})"
        )
        lines = [head]
        for r in self.runs:
            lines.append(
                f"  {r.policy:<10} hit rate {r.hit_rate:6.1%}  p50 {r.p50_ms:8.3f} ms  "
                f"p99 {r.p99_ms:8.3f} ms  miss cost {r.mean_miss_cost_ms:8.3f} ms  "
                f"peak {format_bytes(r.peak_bytes)}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return str(self.table().to_html(float_format=lambda v: f"{v:.4g}"))


# ============================================================================================
# Arguments (checked in the caller, before anything is sent to the worker)
def _check_trace(trace: object) -> tuple[int, ...]:
    if isinstance(trace, (str, bytes)) or not isinstance(trace, Sequence):
        raise ValueError(f"trace must be a sequence of item ids (ints >= 0), got {trace!r}")
    if len(trace) == 0:
        raise ValueError("trace must hold at least one request (item ids, ints >= 0), got none")
    for v in trace:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"trace must hold item ids (ints >= 0), got {v!r}")
    return tuple(int(v) for v in trace)


def _check_policies(policies: object) -> tuple[str, ...]:
    if isinstance(policies, str) or not isinstance(policies, Sequence) or not policies:
        raise ValueError(
            f"policies must be a non-empty sequence of {', '.join(POLICIES)}, got {policies!r}"
        )
    for p in policies:
        if p not in POLICIES:
            raise ValueError(f"policies: unknown policy {p!r}; allowed: {', '.join(POLICIES)}")
    if len(set(policies)) != len(policies):
        raise ValueError(f"policies must not repeat a policy, got {list(policies)}")
    return tuple(policies)


def _check_capacity(capacity_bytes: object, name: str = "capacity_bytes") -> int | None:
    """None, or a positive byte count (an int or a string such as ``"4MiB"``)."""
    if capacity_bytes is None:
        return None
    from memlab.config import parse_bytes

    if isinstance(capacity_bytes, (int, str)) and not isinstance(capacity_bytes, bool):
        try:
            return parse_bytes(capacity_bytes, name=name)
        except ValueError as e:
            raise ValueError(
                f"{e} (allowed: None, a positive int of bytes, or a size such as '4MiB')"
            ) from None
    raise ValueError(
        f"{name} must be None, a positive int of bytes, or a size such as '4MiB', "
        f"got {capacity_bytes!r}"
    )


def _check_args(
    trace: object,
    policies: object,
    capacity_bytes: object,
    items: object,
    seed: object,
    distinct_inputs: object,
    memo_capacity_bytes: object,
    warmup: object,
    shard_rows: object,
    embedding_dim: object,
    lookup_rows: object,
) -> tuple[tuple[int, ...], tuple[str, ...], int | None, int | None]:
    t = _check_trace(trace)
    pols = _check_policies(policies)
    cap = _check_capacity(capacity_bytes)
    memo_cap = _check_capacity(memo_capacity_bytes, "memo_capacity_bytes")
    if items not in ITEMS:
        raise ValueError(f"items must be one of {', '.join(ITEMS)}, got {items!r}")
    _check_seed(seed)
    _check_count("distinct_inputs", distinct_inputs)
    if not isinstance(warmup, bool):
        raise ValueError(f"warmup must be True or False, got {warmup!r}")
    _check_count("shard_rows", shard_rows)
    _check_count("embedding_dim", embedding_dim)
    _check_count("lookup_rows", lookup_rows)
    n = max(t) + 1
    if n > MAX_ITEMS[str(items)]:
        raise ValueError(
            f"trace: item ids must be below {MAX_ITEMS[str(items)]} for items={items!r} "
            f"(each item is written to disk), got item {n - 1}"
        )
    return t, pols, cap, memo_cap


def _default_capacity(trace: Sequence[int], item_bytes: Sequence[int]) -> int:
    """A third of the bytes of the trace's distinct items: a cache that must choose."""
    return max(1, sum(item_bytes[i] for i in set(trace)) // 3)


def _check_fits(capacity: int, trace: Sequence[int], item_bytes: Sequence[int]) -> None:
    smallest = min(item_bytes[i] for i in set(trace))
    if capacity < smallest:
        raise ValueError(
            f"capacity_bytes ({capacity}) is smaller than every item of the trace: allowed "
            f"values are at least the smallest item, {smallest} bytes "
            f"({format_bytes(smallest)}), or None (a third of the items' bytes)"
        )


# ============================================================================================
# The worker side
def _cachetools() -> Any:
    try:
        import cachetools
    except ImportError as e:  # pragma: no cover - declared in the tasks extra
        raise ImportError(
            "memlab.caching needs cachetools (byte-bounded LRU/LFU caches): "
            "pip install 'memlab[tasks]' (or pip install cachetools)"
        ) from e
    return cachetools


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct tensors (``numel * element_size``; a tensor seen twice counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        key = (t.data_ptr(), t.nbytes)
        if key in seen:
            continue
        seen.add(key)
        total += int(t.numel() * t.element_size())
    return total


class _Store:
    """The items on disk: how to load one (a miss) and run a request on it."""

    def __init__(
        self,
        items: str,
        n: int,
        folder: str,
        seed: int,
        shard_rows: int,
        embedding_dim: int,
        lookup_rows: int,
        distinct_inputs: int,
    ) -> None:
        import torch

        self.items = items
        self.paths = [os.path.join(folder, f"item{i:04d}.pt") for i in range(n)]
        self.built_bytes: list[int] = []
        self.inputs: dict[tuple[int, int], Any] = {}  # (item, input id) -> input, made once
        with torch.random.fork_rng(devices=[]):
            for i in range(n):
                torch.manual_seed(seed * 100_003 + i)
                if items == "models":
                    sd = self._build_model(i).state_dict()
                else:
                    sd = {"weight": torch.randn(shard_rows, embedding_dim)}
                self.built_bytes.append(_tensor_bytes(sd.values()))
                torch.save(sd, self.paths[i])
            for i in range(n):
                for k in range(distinct_inputs):
                    torch.manual_seed(seed * 7919 + i * 1009 + k)
                    self.inputs[i, k] = self._make_input(i, shard_rows, lookup_rows)

    @staticmethod
    def _build_model(i: int) -> Any:
        from memlab.workloads.models import CNN, MLP, Transformer

        kind, kw = model_spec(i)
        cls = {"mlp": MLP, "cnn": CNN, "transformer": Transformer}[kind]
        return cls(**kw)

    def _make_input(self, i: int, shard_rows: int, lookup_rows: int) -> Any:
        import torch

        if self.items == "embeddings":
            return torch.randint(0, shard_rows, (lookup_rows,))
        kind, _ = model_spec(i)
        shape = {"mlp": (1, 64), "cnn": (1, 1, 16, 16), "transformer": (1, 64, 4)}[kind]
        return torch.randn(*shape)

    def load(self, i: int) -> Any:
        """Item ``i`` from its file: read and deserialise; a model is built on the meta device
        and given the loaded tensors (nothing initialised only to be overwritten)."""
        import torch

        sd = torch.load(self.paths[i], weights_only=True, mmap=False)
        if self.items == "embeddings":
            return sd["weight"]
        with torch.device("meta"):
            model = self._build_model(i)
        model.load_state_dict(sd, assign=True)
        return model.eval()

    def size(self, obj: Any) -> int:
        """An item's tensor bytes, from the loaded tensors."""
        if self.items == "embeddings":
            return _tensor_bytes([obj])
        return _tensor_bytes(obj.state_dict().values())

    def run(self, obj: Any, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            if self.items == "embeddings":
                return F.embedding(x, obj).sum(0)
            return obj(x)


def _replay(
    store: _Store,
    trace: Sequence[int],
    inputs: Sequence[int],
    policy: str,
    capacity: int,
    sizes: Sequence[int],
    memo_capacity: int | None,
    memoize: bool,
    cpus: int,
    threads: int,
) -> PolicyRun:
    ct = _cachetools()
    from cachetools.keys import hashkey

    from memlab.timing import assess, machine_busy_s

    cache: Any = None
    if policy == "lru":
        cache = ct.LRUCache(maxsize=capacity, getsizeof=store.size)
    elif policy == "lfu":
        cache = ct.LFUCache(maxsize=capacity, getsizeof=store.size)
    elif policy == "unbounded":
        cache = ct.Cache(maxsize=math.inf, getsizeof=store.size)
    memo: Any = None
    if memoize:
        out_size: Callable[[Any], int] = lambda y: _tensor_bytes([y])  # noqa: E731
        memo = (
            ct.Cache(maxsize=math.inf, getsizeof=out_size)
            if memo_capacity is None
            else ct.LRUCache(maxsize=memo_capacity, getsizeof=out_size)
        )
    outcome: list[str] = []
    latency: list[float] = []
    load: list[float] = []
    work: list[float] = []
    held: list[int] = []
    evictions = 0
    memo_peak = 0
    wall0, cpu0, busy0 = time.perf_counter(), time.process_time(), machine_busy_s()
    clock = time.perf_counter
    for item, inp in zip(trace, inputs, strict=True):
        x = store.inputs[item, inp]
        key = hashkey(item, inp)
        t0 = clock()
        if memo is not None and key in memo:
            memo[key]  # a look-up, as a server would do (LRU: moves it to the end)
            t1 = clock()
            outcome.append("memo")
            latency.append(t1 - t0)
            load.append(0.0)
            work.append(0.0)
            held.append(0 if cache is None else int(cache.currsize))
            continue
        loaded = 0.0
        if cache is not None and item in cache:
            obj = cache[item]
            kind = "hit"
        else:
            obj = store.load(item)
            loaded = clock() - t0
            kind = "miss"
            if cache is not None and sizes[item] <= cache.maxsize:
                n_before = len(cache)
                cache[item] = obj
                evictions += n_before + 1 - len(cache)
        w0 = clock()
        y = store.run(obj, x)
        w1 = clock()
        if memo is not None and _tensor_bytes([y]) <= memo.maxsize:
            memo[key] = y
        t1 = clock()
        del obj
        outcome.append(kind)
        latency.append(t1 - t0)
        load.append(loaded)
        work.append(w1 - w0)
        held.append(0 if cache is None else int(cache.currsize))
        if memo is not None:
            memo_peak = max(memo_peak, int(memo.currsize))
    wall1, cpu1, busy1 = time.perf_counter(), time.process_time(), machine_busy_s()
    timing = assess(
        [wall1 - wall0],
        [cpu1 - cpu0],
        [None if busy0 is None or busy1 is None else busy1 - busy0],
        cpus=cpus,
        threads=threads,
        what="replays",
    )
    return PolicyRun(
        policy=policy,
        capacity_bytes=capacity if policy in ("lru", "lfu") else None,
        outcome=tuple(outcome),
        latency_s=tuple(latency),
        load_s=tuple(load),
        work_s=tuple(work),
        bytes_held=tuple(held),
        evictions=evictions,
        memo_bytes_peak=memo_peak if memoize else None,
        timing=timing,
    )


def cache_replay_job(
    trace: Sequence[int],
    *,
    policies: Sequence[str] = POLICIES,
    capacity_bytes: int | str | None = None,
    items: str = "models",
    seed: int = 0,
    memoize: bool = False,
    distinct_inputs: int = 4,
    memo_capacity_bytes: int | str | None = None,
    warmup: bool = True,
    shard_rows: int = 2048,
    embedding_dim: int = 64,
    lookup_rows: int = 32,
    name: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> CacheResult:
    """The torch side of :func:`cache_replay`, run where torch may be imported (the service
    worker, a benchmark, a test). Writes the items to a temporary folder (inside ``work_dir``
    if given), removed at the end."""
    import tempfile

    t, pols, cap, memo_cap = _check_args(
        trace,
        policies,
        capacity_bytes,
        items,
        seed,
        distinct_inputs,
        memo_capacity_bytes,
        warmup,
        shard_rows,
        embedding_dim,
        lookup_rows,
    )
    import torch

    n = max(t) + 1
    inputs = request_inputs(len(t), distinct_inputs, seed)
    cpus = _cpus()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="memlab-cache-", dir=work_dir) as folder:
        store = _Store(
            items, n, folder, seed, shard_rows, embedding_dim, lookup_rows, distinct_inputs
        )
        sizes = tuple(store.built_bytes)
        capacity = _default_capacity(t, sizes) if cap is None else cap
        _check_fits(capacity, t, sizes)
        for i in sorted(set(t)):
            obj = store.load(i)
            got = store.size(obj)
            if got != sizes[i]:  # pragma: no cover - a loader that lost or added tensors
                raise RuntimeError(f"item {i} loads {got} bytes of tensors, built {sizes[i]}")
            if warmup:  # first-call costs (kernel selection, the page cache), not the policy's
                for k in range(distinct_inputs):
                    store.run(obj, store.inputs[i, k])
            del obj
        runs = tuple(
            _replay(store, t, inputs, p, capacity, sizes, memo_cap, memoize, cpus, threads)
            for p in pols
        )
        file_bytes = sum(os.path.getsize(p) for p in store.paths)
    too_big = sorted(i for i in set(t) if sizes[i] > capacity)
    what = (
        "models: a miss reads the state_dict file (torch.load), builds the module on the meta "
        "device and assigns the tensors; a request is one forward pass of a batch of one"
        if items == "models"
        else f"embeddings: shards of {shard_rows} rows x {embedding_dim} float32; a miss reads "
        f"the shard's file (torch.load); a request sums {lookup_rows} looked-up rows"
    )
    notes = [
        what,
        f"{n} items written to a temporary folder ({format_bytes(file_bytes)} of files, "
        f"{format_bytes(sum(sizes))} of tensors); "
        + (
            "each loaded and run once before the replays (warm-up), so "
            if warmup
            else "written just before the replays, so "
        )
        + "'load from disk' measured a read from the OS page cache plus deserialisation, "
        "not a cold disk read (dropping the page cache needs root)",
        "item size = bytes of the item's tensors (numel x element_size), from the tensors "
        "loaded; the cache's own bookkeeping and Python objects are not counted",
        "a miss's cost (mean_miss_cost_ms) is the load alone; its latency also holds the "
        "request's work on the tensors just loaded, which can take longer than the same work "
        "on tensors already in use (compare miss_work_p50_ms with hit_work_p50_ms)",
        f"torch used {threads} intra-op threads on {cpus} CPUs; the inputs were made before "
        "the clock; each policy started with an empty cache",
    ]
    if cap is None:
        notes.append(
            f"capacity_bytes not given: a third of the trace's distinct items' bytes, "
            f"{format_bytes(capacity)}"
        )
    if too_big and any(p in ("lru", "lfu") for p in pols):
        notes.append(
            f"items {too_big} are larger than the capacity: lru and lfu serve them uncached "
            "(a miss every time)"
        )
    if memoize:
        notes.append(
            f"memoization: {distinct_inputs} distinct inputs per item; a repeated (item, "
            "input) request reuses the kept output without consulting the item cache ("
            + (
                "unbounded memo"
                if memo_cap is None
                else f"memo bounded to {format_bytes(memo_cap)}, LRU"
            )
            + ")"
        )
    return CacheResult(
        items=items,
        name=name or "a trace",
        trace=t,
        inputs=inputs,
        item_bytes=sizes,
        capacity_bytes=capacity,
        memoize=memoize,
        seed=seed,
        cpus=cpus,
        threads=threads,
        runs=runs,
        notes=tuple(notes),
    )


def cache_replay(
    trace: Sequence[int],
    *,
    policies: Sequence[str] = POLICIES,
    capacity_bytes: int | str | None = None,
    items: str = "models",
    seed: int = 0,
    memoize: bool = False,
    distinct_inputs: int = 4,
    memo_capacity_bytes: int | str | None = None,
    warmup: bool = True,
    shard_rows: int = 2048,
    embedding_dim: int = 64,
    lookup_rows: int = 32,
    name: str | None = None,
    timeout_s: float | None = None,
) -> CacheResult:
    """Replay ``trace`` (item ids, e.g. from :func:`zipf_trace`, :func:`scan_trace`,
    :func:`mixed_trace`) once per policy in ``policies``, in the service worker (torch stays out
    of the caller), and return what each measured. See the module doc.

    ``capacity_bytes``: the bound of ``lru`` and ``lfu`` (an int, or a size such as ``"4MiB"``;
    None: a third of the trace's distinct items' bytes); it must hold at least the smallest
    item. ``items``: ``models`` or ``embeddings``. ``memoize``: identical requests reuse their
    output (``distinct_inputs`` inputs per item, ``memo_capacity_bytes`` bounds the memo).
    ``warmup``: load and run every item once before the replays. ``shard_rows``,
    ``embedding_dim``, ``lookup_rows``: the embedding table's shape and a request's rows.
    ``name``: what the trace is, for tables and titles. Arguments are checked here, before
    anything is sent; a capacity below every item raises ValueError from the worker."""
    _check_args(
        trace,
        policies,
        capacity_bytes,
        items,
        seed,
        distinct_inputs,
        memo_capacity_bytes,
        warmup,
        shard_rows,
        embedding_dim,
        lookup_rows,
    )
    if items == "embeddings":  # sizes known without torch: refuse before starting anything
        cap = _check_capacity(capacity_bytes)
        if cap is not None:
            _check_fits(
                cap, _check_trace(trace), [shard_rows * embedding_dim * 4] * (max(trace) + 1)
            )
    from memlab import runner

    result: CacheResult = runner.call(
        cache_replay_job,
        list(trace),
        policies=tuple(policies),
        capacity_bytes=capacity_bytes,
        items=items,
        seed=seed,
        memoize=memoize,
        distinct_inputs=distinct_inputs,
        memo_capacity_bytes=memo_capacity_bytes,
        warmup=warmup,
        shard_rows=shard_rows,
        embedding_dim=embedding_dim,
        lookup_rows=lookup_rows,
        name=name,
        timeout_s=timeout_s,
    )
    return result
