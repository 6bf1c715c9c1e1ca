"""Caching under a byte budget (memlab.caching): seeded traces, the worker's replays against a
reference simulation written here, bytes held against the tensors' sizes, memoization, bad
input, and the figures.

The independent truth for hits and bytes held is ``_reference`` below: a plain simulation of
LRU, LFU (cachetools' rules: counts kept only while cached, ties to the least recently used)
and an unbounded cache over the same trace and item sizes. Which item is evicted is
deterministic, so the worker's counts must equal it exactly. Item sizes are checked against
models built here from ``memlab.caching.model_spec`` (parameters and buffers, numel x
element_size). No figure here is a speed threshold: the only timing check is a comparison of
a miss with a hit in the same replay.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence

import pytest

import memlab.caching as C
from memlab.caching import CacheResult, PolicyRun

N_MODELS = 9  # item ids 0..8: the three built-in kinds at width steps 1..3
MIXED = C.mixed_trace(
    N_MODELS, 120, hot_items=3, scan_every=12, scan_length=6, seed=1
)  # hot set 0..2, scans over 3..8
SCAN = C.scan_trace(N_MODELS, 3 * N_MODELS)
EMB_TRACE = C.zipf_trace(24, 160, s=1.0, seed=2)
SHARD = {"shard_rows": 512, "embedding_dim": 32, "lookup_rows": 16}


def _reference(
    trace: Sequence[int], sizes: Sequence[int], policy: str, capacity: int
) -> tuple[int, list[int]]:
    """Hits and the bytes held after each request, simulated without cachetools."""
    held: dict[int, tuple[int, int]] = {}  # item -> (uses while cached, last use)
    hits = 0
    series: list[int] = []
    for t, item in enumerate(trace):
        if item in held:
            hits += 1
            held[item] = (held[item][0] + 1, t)
        elif policy == "unbounded":
            held[item] = (1, t)
        elif policy in ("lru", "lfu") and sizes[item] <= capacity:
            while sum(sizes[k] for k in held) + sizes[item] > capacity:
                if policy == "lru":
                    victim = min(held, key=lambda k: held[k][1])
                else:
                    victim = min(held, key=lambda k: held[k])
                del held[victim]
            held[item] = (1, t)
        series.append(sum(sizes[k] for k in held))
    return hits, series


@pytest.fixture(scope="module")
def mixed() -> CacheResult:
    return C.cache_replay(MIXED, name="mixed", timeout_s=300)


@pytest.fixture(scope="module")
def scan() -> CacheResult:
    return C.cache_replay(SCAN, policies=("lru", "lfu", "unbounded"), name="scan", timeout_s=300)


@pytest.fixture(scope="module")
def emb() -> CacheResult:
    return C.cache_replay(
        EMB_TRACE,
        items="embeddings",
        policies=("none", "lru", "unbounded"),
        capacity_bytes=8 * 512 * 32 * 4,  # 8 of the 24 shards
        memoize=True,
        distinct_inputs=3,
        name="zipf",
        timeout_s=300,
        **SHARD,
    )


# -- traces (pure) ----------------------------------------------------------------------------
def test_traces_are_seeded_reproducible_and_in_range() -> None:
    z = C.zipf_trace(20, 500, s=1.2, seed=3)
    assert z == C.zipf_trace(20, 500, s=1.2, seed=3)
    assert z != C.zipf_trace(20, 500, s=1.2, seed=4)
    assert len(z) == 500 and set(z) <= set(range(20))
    # Zipf: the most asked item is asked far more often than the median item.
    counts = sorted((z.count(i) for i in range(20)), reverse=True)
    assert counts[0] > 3 * counts[10]
    assert C.scan_trace(4, 10) == (0, 1, 2, 3, 0, 1, 2, 3, 0, 1)
    assert C.scan_trace(4, 3, start=2) == (2, 3, 0)
    m = C.mixed_trace(12, 200, hot_items=3, scan_every=10, scan_length=5, seed=0)
    assert m == C.mixed_trace(12, 200, hot_items=3, scan_every=10, scan_length=5, seed=0)
    assert len(m) == 200 and set(m) <= set(range(12))
    # After every 10 hot requests, 5 cold ones continuing cyclically over 3..11.
    assert all(v < 3 for v in m[:10]) and m[10:15] == (3, 4, 5, 6, 7)
    assert all(v < 3 for v in m[15:25]) and m[25:30] == (8, 9, 10, 11, 3)
    assert C.request_inputs(50, 3, seed=1) == C.request_inputs(50, 3, seed=1)
    assert set(C.request_inputs(50, 3, seed=1)) == {0, 1, 2}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: C.zipf_trace(0, 10), "n_items"),
        (lambda: C.zipf_trace(5, -1), "n_requests"),
        (lambda: C.zipf_trace(5, 10, s=-1.0), "s (the Zipf exponent)"),
        (lambda: C.zipf_trace(5, 10, seed=-2), "seed"),
        (lambda: C.scan_trace(5, 10, start=5), "start"),
        (lambda: C.mixed_trace(8, 10, hot_items=8), "hot_items"),
        (lambda: C.mixed_trace(8, 10, scan_every=0), "scan_every"),
        (lambda: C.request_inputs(10, 0), "distinct_inputs"),
    ],
)
def test_trace_arguments_are_checked(call, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        call()


# -- bad input to the replay: refused in the caller, before a worker starts --------------------
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"trace": ()}, "trace must hold at least one request"),
        ({"trace": (0, -1)}, r"trace must hold item ids \(ints >= 0\)"),
        ({"capacity_bytes": -5}, "capacity_bytes must be a positive number of bytes.*allowed"),
        ({"capacity_bytes": 0}, "capacity_bytes must be a positive number of bytes"),
        ({"capacity_bytes": "lots"}, "capacity_bytes must be a byte size"),
        ({"policies": ("lru", "fifo")}, "unknown policy 'fifo'; allowed: none, lru, lfu"),
        ({"policies": ()}, "policies must be a non-empty sequence of none, lru, lfu, unbounded"),
        ({"items": "images"}, "items must be one of models, embeddings"),
        ({"trace": (0, 500)}, "item ids must be below 96"),
        (
            {"items": "embeddings", "capacity_bytes": 1000, **SHARD},
            r"capacity_bytes \(1000\) is smaller than every item.*at least the smallest item, "
            "65536 bytes",
        ),
    ],
)
def test_bad_replay_input_names_the_field_and_allowed_values(
    kwargs: dict[str, object], pattern: str
) -> None:
    args: dict[str, object] = {"trace": (0, 1, 0)}
    args.update(kwargs)
    trace = args.pop("trace")
    with pytest.raises(ValueError, match=pattern):
        C.cache_replay(trace, **args)  # type: ignore[arg-type]


def test_capacity_below_every_model_is_refused_by_the_worker(mixed: CacheResult) -> None:
    smallest = min(mixed.item_bytes)
    with pytest.raises(ValueError, match=f"at least the smallest item, {smallest} bytes"):
        C.cache_replay(MIXED, capacity_bytes=smallest - 1, policies=("lru",), timeout_s=300)


# -- the replays against the reference ---------------------------------------------------------
def test_item_sizes_are_the_tensors_bytes(mixed: CacheResult) -> None:
    import torch

    from memlab.workloads.models import CNN, MLP, Transformer

    classes = {"mlp": MLP, "cnn": CNN, "transformer": Transformer}
    expected = []
    for i in range(N_MODELS):
        kind, kw = C.model_spec(i)
        with torch.device("meta"):
            m = classes[kind](**kw)
        expected.append(sum(t.numel() * t.element_size() for t in m.state_dict().values()))
    assert mixed.item_bytes == tuple(expected)
    assert len(set(expected)) == N_MODELS  # nine different sizes


def test_mixed_trace_hits_and_bytes_equal_the_reference(mixed: CacheResult) -> None:
    sizes, cap = mixed.item_bytes, mixed.capacity_bytes
    assert mixed.policies == list(C.POLICIES)
    assert cap == sum(sizes) // 3  # the default: a third of the distinct items' bytes
    for policy in ("lru", "lfu", "unbounded"):
        hits, series = _reference(MIXED, sizes, policy, cap)
        run = mixed[policy]
        assert run.hits == hits, policy
        assert run.misses == len(MIXED) - hits, policy
        assert list(run.bytes_held) == series, policy
    # The trace's point: LFU keeps the hot set through the scans, LRU does not.
    assert mixed["lfu"].hits > mixed["lru"].hits
    # Bounded caches never hold more than the capacity; unbounded ends with every item.
    for policy in ("lru", "lfu"):
        assert max(mixed[policy].bytes_held) <= cap
        assert mixed[policy].capacity_bytes == cap
    assert mixed["unbounded"].final_bytes == sum(sizes) == mixed.distinct_bytes
    assert mixed["unbounded"].peak_bytes > cap
    # No cache: every request loads, nothing is held.
    none = mixed["none"]
    assert none.hits == 0 and none.misses == len(MIXED) and set(none.bytes_held) == {0}
    assert all(t > 0 for t in none.load_s)
    # Loads happen exactly on misses; each latency holds its load and its work (a forward).
    for run in mixed.runs:
        for o, load, work, lat in zip(
            run.outcome, run.load_s, run.work_s, run.latency_s, strict=True
        ):
            assert (load > 0) == (o == "miss")
            assert work > 0
            assert lat >= load + work
    assert any("page cache" in n for n in mixed.notes)


def test_scan_defeats_lru_and_cachetools_lfu(scan: CacheResult) -> None:
    sizes, cap = scan.item_bytes, scan.capacity_bytes
    assert sum(sizes) > cap  # the scan does not fit
    assert scan["lru"].hits == 0
    # cachetools' LFU forgets evicted items' counts: every cached item has one use, the tie
    # goes to the least recently used, so it is LRU here (the reference says the same).
    assert scan["lfu"].hits == _reference(SCAN, sizes, "lfu", cap)[0] == 0
    assert scan["unbounded"].hits == len(SCAN) - N_MODELS  # every request after the first cycle
    for policy in ("lru", "lfu", "unbounded"):
        assert list(scan[policy].bytes_held) == _reference(SCAN, sizes, policy, cap)[1]


def test_embeddings_memoization_and_miss_cost(emb: CacheResult) -> None:
    shard = SHARD["shard_rows"] * SHARD["embedding_dim"] * 4
    assert set(emb.item_bytes) == {shard}
    assert emb.inputs == C.request_inputs(len(EMB_TRACE), 3, seed=0)
    # Memo: unbounded, keyed by (item, input): a request is a memo hit iff its pair came before.
    seen: set[tuple[int, int]] = set()
    expected = []
    for pair in zip(EMB_TRACE, emb.inputs, strict=True):
        expected.append("memo" if pair in seen else "served")
        seen.add(pair)
    for run in emb.runs:
        got = ["memo" if o == "memo" else "served" for o in run.outcome]
        assert got == expected, run.policy
        assert run.memo_hits == expected.count("memo") > 0
        assert run.memo_bytes_peak == len(seen) * 4 * SHARD["embedding_dim"]  # one float32 row
        assert all((w == 0) == (o == "memo") for w, o in zip(run.work_s, run.outcome, strict=True))
    # The item cache sees only the memo's misses; its hits follow the reference on that trace.
    served = [item for item, e in zip(EMB_TRACE, expected, strict=True) if e == "served"]
    cap = emb.capacity_bytes
    for policy in ("lru", "unbounded"):
        assert emb[policy].hits == _reference(served, emb.item_bytes, policy, cap)[0]
        assert max(emb[policy].bytes_held) <= (cap if policy == "lru" else math.inf)
    assert emb["none"].hits == 0
    # Uniform items, a tiny request: a miss (a shard read from the page cache and
    # deserialised) costs more than a hit, and a memo hit less than a served request.
    run = emb["unbounded"]
    assert run.hits > 5 and run.misses > 5
    assert run.latency_ms(50, "miss") > run.latency_ms(50, "hit")
    lru = emb["lru"]
    assert lru.latency_ms(50, "memo") < lru.latency_ms(50, "hit")


def test_result_round_trips_and_tables(mixed: CacheResult) -> None:
    back = CacheResult.from_dict(mixed.to_dict())
    assert back == mixed
    import json

    assert CacheResult.from_dict(json.loads(json.dumps(mixed.to_dict()))) == mixed
    t = mixed.table()
    assert list(t.index) == list(C.POLICIES)
    assert t.loc["lru", "hits"] == mixed["lru"].hits
    assert t.loc["none", "p50_vs_first"] == pytest.approx(1.0)
    assert t.loc["lfu", "hit_rate"] == pytest.approx(mixed["lfu"].hits / len(MIXED))
    assert "lfu" in repr(mixed) and "<table" in mixed._repr_html_()
    with pytest.raises(KeyError, match="policies: none, lru"):
        mixed["fifo"]


def test_policy_run_summary_is_computed_from_its_series() -> None:
    run = PolicyRun(
        policy="lru",
        capacity_bytes=100,
        outcome=("miss", "hit", "memo", "miss"),
        latency_s=(0.010, 0.002, 0.001, 0.020),
        load_s=(0.008, 0.0, 0.0, 0.012),
        bytes_held=(40, 40, 40, 90),
    )
    assert (run.hits, run.misses, run.memo_hits) == (1, 2, 1)
    assert run.hit_rate == pytest.approx(1 / 3)
    assert run.mean_miss_cost_ms == pytest.approx(10.0)
    assert run.p50_ms == pytest.approx(6.0)  # median of 1, 2, 10, 20 ms
    assert (run.peak_bytes, run.final_bytes) == (90, 90)
    with pytest.raises(ValueError, match="outcome must be among hit, miss, memo"):
        PolicyRun("lru", None, ("cached",), (0.1,), (0.0,), (0,))
    with pytest.raises(ValueError, match="one entry per request"):
        PolicyRun("lru", None, ("hit",), (0.1, 0.2), (0.0,), (0,))
    with pytest.raises(ValueError, match="work_s must be empty or have one entry per request"):
        PolicyRun("lru", None, ("hit",), (0.1,), (0.0,), (0,), work_s=(0.1, 0.1))


def test_caching_imports_neither_torch_nor_cachetools() -> None:
    code = (
        "import sys, memlab.caching as c; c.mixed_trace(12, 50); c.model_spec(4); "
        "print('torch' in sys.modules, 'cachetools' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- figures -----------------------------------------------------------------------------------
def test_figures(mixed: CacheResult, emb: CacheResult) -> None:
    from memlab.plots_caching import bytes_figure, policy_figure

    fig = policy_figure(mixed)
    rate = fig.data[0]
    assert list(rate.y) == pytest.approx([r.hit_rate for r in mixed.runs])
    assert [t.name for t in fig.data[1:]] == ["p50", "p99", "mean miss cost (load)"]
    assert list(fig.data[1].y) == pytest.approx([r.p50_ms for r in mixed.runs])
    assert fig.data[3].y[0] == pytest.approx(mixed["none"].mean_miss_cost_ms)
    assert "memo hit rate (of all requests)" in [t.name for t in policy_figure(emb).data]

    fig = bytes_figure(mixed)
    names = [t.name for t in fig.data]
    assert names == [*C.POLICIES, "capacity (lru, lfu)"]
    lru = fig.data[1]
    assert list(lru.y) == pytest.approx([b / 2**20 for b in mixed["lru"].bytes_held])
    assert len(lru.x) == len(MIXED)
    assert list(fig.data[-1].y) == pytest.approx([mixed.capacity_bytes / 2**20] * 2)
