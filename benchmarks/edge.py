"""Edge deployment, measured: every precision and compression setting's bytes, accuracy and
request latency per workload, and this machine's bandwidth table.

    python benchmarks/edge.py [--workloads mlp,cnn,transformer] [--rounds 3] [--steps 20]
                              [--variants "fp32,int8 static,..."] [--train-steps 200]
                              [--no-bandwidth] [--json test-artifacts/edge.json]

Each setting (``memlab.labs.edge.VARIANTS``: fp32, dynamic/static int8, weight-only int8/int4,
low rank, a shared codebook, pruned CSR) is one ``mode="inference"`` run of a built-in workload
in a fresh worker (``memlab.runner``), batch 32. Per setting the table prints

  weights     the model's bytes as built, every dtype (``model_bytes``), and its ratio to fp32
  rss         the most the worker's RSS rose over its runtime (Python + torch before the
              build): packed weights the tensor account cannot see are in it, and so is the
              synthetic data set the run reads (the same for every setting of a workload)
  accuracy    on the real digits test split after ``--train-steps`` steps of fp32 training,
              then the setting's knobs (``memlab.jobs.evaluate_variants``)
  p50         the median request latency of the untracked timed requests, and its ratio to
              fp32's *in the same round* (median of the per-round ratios, min-max): fp32 is
              the anchor, measured in the same run

Rounds interleave (every setting once per round, fp32 first), so a slow drift of the machine
hits all alike; a ratio from a round where either run was disturbed (``RunResult.timing``) is
marked ``!``. A setting this machine or torch build cannot run prints why. Then the bandwidth
table of ``memlab bandwidth`` with its DRAM plateau against a plain ``numpy.copyto`` anchor
measured in the same run. Figures only; no target is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANCHOR = "fp32"


def _args(argv: list[str] | None) -> argparse.Namespace:
    from memlab.labs.edge import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="mlp,cnn,transformer")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--no-bandwidth", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    ns.variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    unknown = [v for v in ns.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose among {list(VARIANTS)}")
    if ANCHOR not in ns.variants:
        ns.variants.insert(0, ANCHOR)
    if ns.rounds < 1 or ns.steps < 1:
        p.error("--rounds and --steps must be positive")
    return ns


def _disturbed(r: Any) -> bool:
    return r.timing is None or not r.timing.steady


def _workload(wl: str, ns: argparse.Namespace) -> list[dict[str, Any]]:
    from memlab import Experiment
    from memlab.labs.edge import rss_over_runtime, variant_experiments, weight_bytes
    from memlab.labs.sweeps import accuracies
    from memlab.runner import run

    base = Experiment(
        workload=wl, mode="inference", batch_size=ns.batch, steps=ns.steps, warmup=2, device="cpu"
    )
    exps = variant_experiments(base, ns.variants)
    runs: dict[str, list[Any]] = {k: [] for k in exps}
    for rnd in range(ns.rounds):
        for label, exp in exps.items():
            r = run(exp, timeout_s=600)
            runs[label].append(r)
            print(f"  [{wl} round {rnd + 1}] {label}: {r.status}", file=sys.stderr)
    acc = accuracies(exps, train_steps=ns.train_steps)
    rows = []
    for label in exps:
        rs = runs[label]
        ok = [r for r in rs if r.status == "ok" and r.latency is not None]
        row: dict[str, Any] = {"workload": wl, "variant": label, "status": rs[0].status}
        if not ok:
            row["error"] = (rs[0].error or "").splitlines()[0][:160]
            rows.append(row)
            continue
        ratios, marks = [], []
        for r, a in zip(rs, runs[ANCHOR], strict=True):
            if r.status == "ok" and a.status == "ok" and r.latency and a.latency:
                ratios.append(r.latency.p50_s / a.latency.p50_s)
                marks.append(_disturbed(r) or _disturbed(a))
        row.update(
            weight_bytes=weight_bytes(ok[0]),
            rss_over_runtime_bytes=statistics.median(
                v for v in (rss_over_runtime(r) for r in ok) if v is not None
            )
            if any(rss_over_runtime(r) is not None for r in ok)
            else None,
            accuracy=acc.get(label),
            p50_s=statistics.median(r.latency.p50_s for r in ok),
            p50_ratio=statistics.median(ratios) if ratios else None,
            p50_ratio_min=min(ratios) if ratios else None,
            p50_ratio_max=max(ratios) if ratios else None,
            disturbed_rounds=sum(marks),
            rounds=len(ratios),
        )
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    mib = 2**20
    anchor = next((r for r in rows if r["variant"] == ANCHOR and "weight_bytes" in r), None)
    print(
        f"  {'variant':<24} {'weights MiB':>11} {'x fp32':>7} {'rss MiB':>8} {'acc':>6} "
        f"{'p50 ms':>8} {'p50/fp32 (min-max)':>22}"
    )
    for r in rows:
        if "weight_bytes" not in r:
            print(f"  {r['variant']:<24} {r['status']}: {r.get('error', '')}")
            continue
        wr = (
            f"{r['weight_bytes'] / anchor['weight_bytes']:.3f}"
            if anchor and r["weight_bytes"]
            else "-"
        )
        rss = (
            "-"
            if r["rss_over_runtime_bytes"] is None
            else f"{r['rss_over_runtime_bytes'] / mib:.1f}"
        )
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        ratio = (
            "-"
            if r["p50_ratio"] is None
            else f"{r['p50_ratio']:.2f} ({r['p50_ratio_min']:.2f}-{r['p50_ratio_max']:.2f})"
            + ("!" * min(1, r["disturbed_rounds"]))
        )
        print(
            f"  {r['variant']:<24} {r['weight_bytes'] / mib:>11.3f} {wr:>7} {rss:>8} {acc:>6} "
            f"{r['p50_s'] * 1e3:>8.2f} {ratio:>22}"
        )


def main(argv: list[str] | None = None) -> int:
    ns = _args(argv)
    from memlab.runner import shutdown_service, shutdown_warm_worker

    out: dict[str, Any] = {"rows": []}
    try:
        for wl in [w.strip() for w in ns.workloads.split(",") if w.strip()]:
            rows = _workload(wl, ns)
            out["rows"].extend(rows)
            print(f"\n{wl}, batch {ns.batch}, {ns.rounds} rounds x {ns.steps} requests:")
            _print_table(rows)
        if not ns.no_bandwidth:
            import memlab
            from memlab.cli import bandwidth_table

            bw = memlab.bandwidth()
            out["bandwidth"] = bw.to_dict()
            print("\nthis machine's bandwidth (memlab bandwidth):")
            print(bandwidth_table(bw))
    finally:
        shutdown_warm_worker()
        shutdown_service()
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
