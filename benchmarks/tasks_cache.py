"""Caching under a byte budget: no cache / LRU / LFU / unbounded on seeded traces.

    python benchmarks/tasks_cache.py [--items models,embeddings] [--n-items 24]
                                     [--requests 400] [--capacity BYTES|4MiB] [--seed 0]
                                     [--inputs 4] [--no-memo] [--json PATH]

Runs ``memlab.caching.cache_replay_job`` in this process (a benchmark may import torch) for each
item kind (``models``: the built-in mlp/cnn/transformer at growing widths; ``embeddings``: the
shards of one table), on three seeded traces over ``--n-items`` items:

  zipf     Zipf popularity (s = 1.1), the usual serving mix
  scan     a cyclic scan over every item (more than fit: LRU, and cachetools' LFU, get no hit)
  mixed    a Zipf hot set (a quarter of the items) interrupted every 40 requests by a scan of
           the cold items (where LFU keeps the hot set and LRU does not)

and prints per policy: hit rate, evictions, p50 / p99 / mean latency per request (ms), the mean
miss cost (the measured load: a read from the OS page cache plus deserialisation and the
module's assembly, never a cold disk read: the files were just written and dropping the page
cache needs root), the peak bytes the cache held (tensor bytes), and whether other processes
disturbed the replay. ``x none`` divides a policy's p50 and mean by the ``none`` policy's,
measured in the same replay (same items, same trace, same process). The capacity defaults to a
third of the trace's distinct items' bytes.

Then memoization (``--no-memo`` skips it): the zipf trace again with ``memoize=True``
(``--inputs`` distinct inputs per item; identical requests reuse their output), its memo hit
rate, and each policy's mean latency with the memo over its mean without, both measured here.

Speed on a shared machine is disturbed: read a latency ratio from one run as a direction, not
an answer; hit rates, evictions and bytes do not depend on the clock.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memlab.caching import (  # noqa: E402
    ITEMS,
    CacheResult,
    cache_replay_job,
    mixed_trace,
    scan_trace,
    zipf_trace,
)

MIB = 2**20


def _fmt(v: float, spec: str) -> str:
    return "n/a" if v != v else format(v, spec)  # NaN: no such request


def print_result(r: CacheResult) -> None:
    print(
        f"\n{r.items} / {r.name}: {len(r.trace)} requests over {len(set(r.trace))} items "
        f"({r.distinct_bytes / MIB:.2f} MiB), capacity {r.capacity_bytes / MIB:.2f} MiB"
        + (
            f", memoized ({len(set(zip(r.trace, r.inputs, strict=True)))} distinct requests)"
            if r.memoize
            else ""
        )
    )
    head = (
        f"  {'policy':<10}{'hit rate':>9}{'memo':>7}{'evict':>7}{'p50 ms':>9}{'x none':>8}"
        f"{'p99 ms':>9}{'mean ms':>9}{'x none':>8}{'miss ms':>9}{'peak MiB':>10}  timing"
    )
    print(head)
    rows = r.rows()
    base = next((row for row in rows if row["policy"] == "none"), None)
    for row, run in zip(rows, r.runs, strict=True):
        t = run.timing
        timing = "n/a" if t is None else ("steady" if t.steady else "DISTURBED")
        if t is not None and t.others_share is not None:
            timing += f", others {100 * t.others_share:.0f}% of CPU"
        p50_x = row["p50_ms"] / base["p50_ms"] if base and base["p50_ms"] else float("nan")
        mean_x = row["mean_ms"] / base["mean_ms"] if base and base["mean_ms"] else float("nan")
        print(
            f"  {row['policy']:<10}{100 * row['hit_rate']:>8.1f}%"
            f"{100 * row['memo_hit_rate']:>6.0f}%{row['evictions']:>7}"
            f"{row['p50_ms']:>9.3f}{_fmt(p50_x, '>7.2f')}x"
            f"{row['p99_ms']:>9.3f}{row['mean_ms']:>9.3f}{_fmt(mean_x, '>7.2f')}x"
            f"{_fmt(row['mean_miss_cost_ms'], '>9.3f')}{row['peak_bytes'] / MIB:>10.2f}  {timing}"
        )
    work = [
        f"{row['policy']} {_fmt(row['miss_work_p50_ms'], '.3f')} vs "
        f"{_fmt(row['hit_work_p50_ms'], '.3f')}"
        for row in rows
        if row["misses"] and row["hits"]
    ]
    if work:
        print(
            "  the request's own work, p50 ms, on a miss (tensors just loaded) vs a hit: "
            + "; ".join(work)
        )


def print_memo(plain: CacheResult, memo: CacheResult) -> None:
    print(
        f"  memoization on {plain.name}: memo hit rate {100 * memo.runs[0].memo_hit_rate:.1f}% "
        "of requests; mean latency with the memo / without (same trace, this run):"
    )
    print(
        "    "
        + "; ".join(
            f"{a.policy} {a.mean_ms:.3f} -> {b.mean_ms:.3f} ms ({b.mean_ms / a.mean_ms:.2f}x)"
            for a, b in zip(plain.runs, memo.runs, strict=True)
        )
    )
    m = memo.runs[-1]
    print(
        f"    a memo hit's p50 {m.latency_ms(50, 'memo') * 1e3:.1f} us against a cache hit's "
        f"{m.latency_ms(50, 'hit'):.3f} ms and a miss's {m.latency_ms(50, 'miss'):.3f} ms "
        f"({m.policy}); the memo held {(m.memo_bytes_peak or 0) / 1024:.1f} KiB of outputs"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--items", default="models")
    ap.add_argument("--n-items", type=int, default=24)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--capacity", default=None, help="bytes or a size such as 4MiB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inputs", type=int, default=4, help="distinct inputs per item (memo)")
    ap.add_argument("--no-memo", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    kinds = [k for k in args.items.split(",") if k]
    bad = [k for k in kinds if k not in ITEMS]
    if bad or not kinds:
        print(
            f"tasks_cache.py: --items: unknown {', '.join(bad) or '(none)'}; "
            f"allowed: {', '.join(ITEMS)}",
            file=sys.stderr,
        )
        return 2
    capacity: int | str | None = args.capacity
    if isinstance(capacity, str) and capacity.lstrip("-").isdigit():
        capacity = int(capacity)

    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; "
        f"{args.requests} requests per trace, seed {args.seed}; ratios are to 'none', same replay"
    )
    out: list[dict[str, Any]] = []
    for kind in kinds:
        try:
            n = args.n_items
            traces = {
                "zipf": zipf_trace(n, args.requests, s=1.1, seed=args.seed),
                "scan": scan_trace(n, args.requests),
                "mixed": mixed_trace(n, args.requests, seed=args.seed),
            }
            results: dict[str, CacheResult] = {}
            for name, trace in traces.items():
                r = cache_replay_job(
                    trace, items=kind, capacity_bytes=capacity, seed=args.seed, name=name
                )
                print_result(r)
                results[name] = r
                out.append(r.to_dict())
            if not args.no_memo:
                memo = cache_replay_job(
                    traces["zipf"],
                    items=kind,
                    capacity_bytes=capacity,
                    seed=args.seed,
                    memoize=True,
                    distinct_inputs=args.inputs,
                    name="zipf",
                )
                print_result(memo)
                print_memo(results["zipf"], memo)
                out.append(memo.to_dict())
        except ValueError as e:  # a bad argument: one line, exit 2
            print(f"tasks_cache.py: {e}", file=sys.stderr)
            return 2
        print("  notes: " + "\n         ".join(results["zipf"].notes))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
