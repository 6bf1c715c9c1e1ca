"""The C allocator under PyTorch's CPU tensors: glibc vs tuned glibc vs jemalloc vs mimalloc.

    python benchmarks/allocators.py [--workload transformer] [--requests 200] [--rounds 1]
                                    [--configs glibc,jemalloc] [--seed 0] [--threads N]
                                    [--json PATH] [--html PATH]

Runs ``memlab.allocators.compare``: the same seeded stream of variable-shaped inference
requests through the workload's model, once per allocator configuration, each in a fresh worker
process with its environment (``MALLOC_*``, ``LD_PRELOAD``) set at start. Prints one row per
configuration:

  peak anon    the highest anonymous RSS during any request (VmHWM - RssFile - RssShmem)
  end - live   anonymous RSS - live tensor bytes after the last request (absolute)
  kept@end     the same minus that difference before the stream (the baseline: interpreter,
               torch, parameters, one warm-up request): memory malloc kept that no tensor uses
  malloc free  glibc's own count of free bytes in its arenas at the end (mallinfo2.fordblks)
  faults       minor page faults over the stream (getrusage): memory taken from the kernel again
  others       cores other processes kept busy during the stream (above ~0.25: disturbed)
  p50 / p99    request latency (the forward pass), milliseconds
  x glibc      each figure divided by the default glibc's, from the same round

With ``--rounds N`` each round runs every configuration once, in a rotated order (so no
configuration always runs first or last), and the table shows the median over the rounds with
the ratios' min-max. Latencies on a shared machine are disturbed by other processes: read the
latency ratios as rough, and run several rounds before believing a difference of 10-20%.
A configuration whose library is missing prints as unavailable with the package to install.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memlab.allocators import CONFIGS, WORKLOADS, AllocatorComparison, compare  # noqa: E402

MIB = 2**20


def _fmt_mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / MIB:.1f}"


def _fmt_ratio(values: list[float]) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x ({min(values):.2f}-{max(values):.2f})"


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def print_table(comparisons: list[AllocatorComparison], names: list[str]) -> None:
    per: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for cmp in comparisons:
        for row in cmp.table():
            per[row["config"]].append(row)
    head = (
        f"{'configuration':<14} {'peak anon':>10} {'end - live':>11} {'kept@end':>9} "
        f"{'malloc free':>11} {'faults':>8} {'others':>6} {'p50 ms':>7} {'p99 ms':>7}   "
        f"{'peak x glibc':>12} {'end-live x glibc':>16} {'p50 x glibc':>12} {'p99 x glibc':>12}"
    )
    print(head)
    print("-" * len(head))
    for name in names:
        rows = [r for r in per[name] if r["status"] == "ok"]
        if not rows:
            bad = per[name][0]
            print(f"{name:<14} {bad['status']}: {bad['reason']}")
            continue
        p50, p99 = _median(rows, "p50_s"), _median(rows, "p99_s")
        ratios = {
            k: [r[f"{k}_vs_glibc"] for r in rows if f"{k}_vs_glibc" in r]
            for k in ("peak_anon", "final_rss_minus_live", "p50_s", "p99_s")
        }
        print(
            f"{name:<14} {_fmt_mib(_median(rows, 'peak_anon')):>10} "
            f"{_fmt_mib(_median(rows, 'final_rss_minus_live')):>11} "
            f"{_fmt_mib(_median(rows, 'final_fragmentation')):>9} "
            f"{_fmt_mib(_median(rows, 'final_malloc_free')):>11} "
            f"{_median(rows, 'minflt') or 0:>8.0f} {_median(rows, 'others_cores') or 0:>6.2f} "
            f"{(p50 or 0) * 1e3:>7.1f} {(p99 or 0) * 1e3:>7.1f}   "
            f"{_fmt_ratio(ratios['peak_anon']):>12} "
            f"{_fmt_ratio(ratios['final_rss_minus_live']):>16} "
            f"{_fmt_ratio(ratios['p50_s']):>12} {_fmt_ratio(ratios['p99_s']):>12}"
        )
    print("(MiB; medians over rounds; ratios: median (min-max) of per-round ratios)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="transformer", choices=list(WORKLOADS))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each worker")
    ap.add_argument("--json", type=Path, default=None, help="write the last round here")
    ap.add_argument("--html", type=Path, default=None, help="write the last round's figure")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        print(
            f"allocators.py: unknown configuration(s) {', '.join(unknown) or '(none given)'}; "
            f"allowed: {', '.join(CONFIGS)}",
            file=sys.stderr,
        )
        return 2
    if a.requests < 1 or a.rounds < 1:
        print("allocators.py: --requests and --rounds must be >= 1", file=sys.stderr)
        return 2
    comparisons: list[AllocatorComparison] = []
    for k in range(a.rounds):
        order = names[k % len(names) :] + names[: k % len(names)]
        t0 = time.perf_counter()
        comparisons.append(compare(a.workload, a.requests, order, seed=a.seed, threads=a.threads))
        print(
            f"round {k + 1}/{a.rounds} ({', '.join(order)}): {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    last = comparisons[-1]
    q = last.stream
    big = max(q, key=lambda r: r.batch * (r.seq or 1))
    print(
        f"{a.workload}: {a.requests} requests (seed {a.seed}; largest batch {big.batch}"
        + ("" if big.seq is None else f" x {big.seq} tokens")
        + f"), {a.rounds} round(s), {last.runs[0].threads or '?'} torch threads\n"
    )
    print_table(comparisons, names)
    print()
    print(last.explain())
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(last.to_json())
    if a.html is not None:
        from memlab.plots_allocators import comparison_figure

        a.html.parent.mkdir(parents=True, exist_ok=True)
        comparison_figure(last).write_html(a.html, include_plotlyjs="cdn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
