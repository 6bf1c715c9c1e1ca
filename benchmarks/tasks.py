"""Many tasks in one memory (lab 09): the cache table, then the scheduling and contention tables.

    python benchmarks/tasks.py [--quick]

Runs its two parts one after the other, each also runnable alone with all its options:

- ``tasks_cache.py``: no cache / LRU / LFU / unbounded on the seeded zipf, scan and mixed traces
  (models loaded from disk on a miss, then embedding shards), hit rate, latency as a ratio to
  no cache measured in the same replay, the miss cost, the bytes held; then memoization;
- ``tasks_sched.py``: the four scheduling policies on ``mixed_tasks(8, seed=0)`` at 64 MiB
  (deadline misses, p50/p99, makespan, exact peak, oom), and one run against itself together
  vs alone (throughput ratio, latency inflation, each run's timing verdict).

``--quick`` runs both with small sizes (a smoke check of the benchmark itself). Speed on a
shared machine is disturbed: each table says which figures were.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks_cache  # noqa: E402
import tasks_sched  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke check)")
    a = ap.parse_args(argv)
    cache_args = ["--items", "models,embeddings"]
    sched_args: list[str] = ["--slack", "1.5,4"]
    if a.quick:
        cache_args = ["--items", "embeddings", "--n-items", "12", "--requests", "90"]
        sched_args = ["--n", "4", "--steps", "3", "--contention", "mlp", "--slack", "1.5,4"]
    print("== caching ==", flush=True)
    rc = tasks_cache.main(cache_args)
    if rc:
        return rc
    print("\n== scheduling and contention ==", flush=True)
    tasks_sched.main(sched_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
