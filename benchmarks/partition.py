"""Model partitioning: throughput and per-process / summed peaks for K stages, per workload.

    python benchmarks/partition.py [--workloads mlp,cnn,transformer] [--stages 2,3]
                                   [--micro-batches 16] [--batch 32] [--threads 1]
                                   [--json PATH]

For each workload and each K, one ``memlab.partitioning`` call: its one-process anchor (the whole
model over the same micro-batches, measured first in the same call) and the K-stage pipeline.
Prints per row: throughput (micro-batches/s) and its ratio to the anchor of the same call, the
measured bubble beside the predicted (K-1)/(M+K-1), each stage's tracked tensor peak and RSS
high-water mark, their sums and the sums' ratios to the anchor's, the bytes copied between
stages, and whether the outputs equal the anchor's to the bit. Each process runs torch with
--threads intra-op threads (the anchor too): the pipeline uses K times the cores, so on a
2-core machine K=3 oversubscribes. Speed on a shared machine is disturbed: never read one
run's ratio as the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memlab.config import Experiment  # noqa: E402
from memlab.partitioning import BLOCKS, WORKLOADS, PartitionResult, partition  # noqa: E402

MIB = 2**20


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(
            f"partition.py: {what} must be comma-separated ints, got {text!r}"
        ) from None
    if not out or any(v < 1 for v in out):
        raise SystemExit(f"partition.py: {what} must be positive ints, got {text!r}")
    return out


def _mib(v: int | None) -> str:
    return "n/a" if v is None else f"{v / MIB:.1f}"


def _row(r: PartitionResult) -> list[str]:
    a = r.anchor
    assert a is not None
    sp = r.summed_peak_bytes or 0
    rss = r.summed_rss_hwm_bytes
    return [
        f"{r.workload:<12}",
        f"{r.stages:>2}",
        f"{r.anchor_throughput_per_s or 0:8.2f}",
        f"{r.throughput_per_s or 0:8.2f}",
        f"{r.speedup or 0:6.2f}x",
        f"{100 * (r.bubble or 0):5.1f}%/{100 * r.predicted_bubble:4.1f}%",
        f"{_mib(a.peak_bytes):>7}",
        "/".join(_mib(s.peak_bytes) for s in r.stage_results),
        f"{_mib(sp):>7} ({sp / a.peak_bytes:.2f}x)",
        f"{_mib(a.rss_hwm_bytes):>7}",
        "/".join(_mib(s.rss_hwm_bytes) for s in r.stage_results),
        f"{_mib(rss)} ({rss / a.rss_hwm_bytes:.2f}x)" if rss and a.rss_hwm_bytes else "n/a",
        f"{_mib(r.bytes_copied):>6}",
        "yes" if r.outputs_equal else "NO",
    ]


HEADER = [
    "workload",
    "K",
    "anchor/s",
    "pipe/s",
    "ratio",
    "bubble meas/pred",
    "1p peak",
    "stage peaks",
    "sum peaks",
    "1p RSS",
    "stage RSS",
    "sum RSS",
    "copied",
    "equal",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--stages", default="2,3")
    p.add_argument("--micro-batches", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        raise SystemExit(
            f"partition.py: unknown workload(s) {bad}; allowed: {', '.join(WORKLOADS)}"
        )
    stages = _ints(args.stages, "--stages")
    results: list[dict[str, Any]] = []
    print("  ".join(HEADER))
    print("(MiB; throughput in micro-batches/s; 1p: one process, the anchor of the same call)")
    for w in workloads:
        exp = Experiment(workload=w, mode="inference", batch_size=args.batch, device="cpu")
        for k in stages:
            if k > BLOCKS[w]:
                print(f"{w:<12} {k:>2}  skipped: {w} has {BLOCKS[w]} blocks")
                continue
            r = partition(exp, stages=k, micro_batches=args.micro_batches, threads=args.threads)
            results.append(r.to_dict())
            if r.status != "ok":
                print(f"{w:<12} {k:>2}  error: {r.error}")
                continue
            print("  ".join(_row(r)), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
