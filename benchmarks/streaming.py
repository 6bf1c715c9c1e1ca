"""Weight streaming, measured: request latency, tracked peak and RSS parts, resident vs streamed.

    python benchmarks/streaming.py [--workloads mlp,cnn,transformer] [--rounds 3] [--steps 20]
                                   [--requests 20] [--json test-artifacts/streaming.json]

Part 1, runs. Each round runs every workload ``mode="inference"`` twice in fresh workers
(``memlab.run``): ``weights="resident"`` (the anchor) then ``weights="streamed"``, batch 32.
Per setting it prints

  peak        the tracked tensor peak of the memory pass (what a budget is held to)
  anon/file   the worker's peak anonymous and file-backed RSS (the mapping is file-backed)
  p50         the median latency of the untracked timed requests, and its ratio to resident's
              *in the same round* (median of the per-round ratios, min-max; ``!`` when either
              run's timing was disturbed, ``RunResult.timing``)
  read        bytes copied out of the file per request; hits and waits per request (a hit: the
              layer's prefetch was ready when its forward began); time blocked per request

Part 2, prefetch. In this process (a benchmark may import torch), each workload built three
ways, resident, streamed with prefetch and streamed without, their requests interleaved
round by round (``--requests`` each per round, after two warm-up requests); the median request
time of each, and its ratio to resident's in the same round. Figures only; nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1 << 20


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="mlp,cnn,transformer")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    ns.workloads = [w.strip() for w in ns.workloads.split(",") if w.strip()]
    unknown = [w for w in ns.workloads if w not in ("mlp", "cnn", "transformer")]
    if unknown:
        p.error(f"unknown workloads {unknown}; choose among ['mlp', 'cnn', 'transformer']")
    if min(ns.rounds, ns.steps, ns.requests, ns.batch) < 1:
        p.error("--rounds, --steps, --requests and --batch must be positive")
    return ns


def _disturbed(r: Any) -> bool:
    return r.timing is None or not r.timing.steady


def _runs(wl: str, ns: argparse.Namespace) -> list[dict[str, Any]]:
    from memlab import Experiment
    from memlab.runner import run

    base = Experiment(
        workload=wl, mode="inference", batch_size=ns.batch, steps=ns.steps, warmup=2, device="cpu"
    )
    labels = ("resident", "streamed")
    runs: dict[str, list[Any]] = {k: [] for k in labels}
    for rnd in range(ns.rounds):
        for label in labels:
            r = run(base.replace(weights=label), timeout_s=600)
            runs[label].append(r)
            print(f"  [{wl} round {rnd + 1}] {label}: {r.status}", file=sys.stderr)
    rows = []
    for label in labels:
        rs = runs[label]
        ok = [r for r in rs if r.status == "ok" and r.latency is not None]
        row: dict[str, Any] = {"workload": wl, "weights": label, "status": rs[0].status}
        if not ok:
            row["error"] = (rs[0].error or "").splitlines()[0][:160]
            rows.append(row)
            continue
        ratios, marks = [], []
        for r, a in zip(rs, runs["resident"], strict=True):
            if r.status == "ok" and a.status == "ok" and r.latency and a.latency:
                if r.latency.p50_s and a.latency.p50_s:
                    ratios.append(r.latency.p50_s / a.latency.p50_s)
                    marks.append(_disturbed(r) or _disturbed(a))
        m = ok[-1].metrics

        def med(key: str, rs: list[Any] = ok) -> float | None:
            vals = [getattr(r, key) for r in rs if getattr(r, key) is not None]
            return statistics.median(vals) if vals else None

        row.update(
            weight_bytes=m.get("model_bytes", 0) + m.get("streamed_weight_bytes", 0),
            peak_bytes=med("peak_bytes"),
            rss_anon_peak_bytes=med("rss_anon_peak_bytes"),
            rss_file_peak_bytes=med("rss_file_peak_bytes"),
            p50_s=statistics.median(r.latency.p50_s for r in ok),
            p50_ratio=statistics.median(ratios) if ratios else None,
            p50_ratio_min=min(ratios) if ratios else None,
            p50_ratio_max=max(ratios) if ratios else None,
            disturbed_rounds=sum(marks),
            rounds=len(ratios),
            bytes_read_per_request=m.get("stream_bytes_read_per_request"),
            hits_per_request=m.get("stream_hits_per_request"),
            waits_per_request=m.get("stream_waits_per_request"),
            wait_s_per_request=m.get("stream_wait_s_per_request"),
        )
        rows.append(row)
    return rows


def _prefetch(wl: str, ns: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from memlab import Experiment
    from memlab.knobs import apply_weights, build_experiment, close_weights

    exp = Experiment(workload=wl, mode="inference", batch_size=ns.batch, device="cpu")
    built = {}
    for label, mode, prefetch in (
        ("resident", "resident", True),
        ("streamed, prefetch", "streamed", True),
        ("streamed, no prefetch", "streamed", False),
    ):
        torch.manual_seed(exp.seed)
        w = build_experiment(exp)
        built[label] = apply_weights(w, mode, prefetch=prefetch)
    x, _ = next(built["resident"].make_batches(1))
    times: dict[str, list[float]] = {k: [] for k in built}
    ratios: dict[str, list[float]] = {k: [] for k in built}
    for w in built.values():
        for _ in range(2):
            w.infer(x)
    for _ in range(ns.rounds):
        med: dict[str, float] = {}
        for label, w in built.items():
            ts = []
            for _ in range(ns.requests):
                t0 = time.perf_counter()
                w.infer(x)
                ts.append(time.perf_counter() - t0)
            med[label] = statistics.median(ts)
            times[label].extend(ts)
        for label in built:
            ratios[label].append(med[label] / med["resident"])
    rows = []
    for label, w in built.items():
        rows.append(
            {
                "workload": wl,
                "setting": label,
                "median_s": statistics.median(times[label]),
                "ratio": statistics.median(ratios[label]),
                "ratio_min": min(ratios[label]),
                "ratio_max": max(ratios[label]),
                "hits_per_request": w.measures.get("stream_hits_per_request"),
                "wait_s_per_request": w.measures.get("stream_wait_s_per_request"),
            }
        )
        close_weights(w)
    return rows


def _mib(v: Any) -> str:
    return "n/a" if v is None else f"{v / MIB:8.2f}"


def main(argv: list[str] | None = None) -> int:
    ns = _args(argv)
    runs = [row for wl in ns.workloads for row in _runs(wl, ns)]
    print("\nPart 1: runs (MiB; p50 in ms; ratio to resident in the same round)")
    print(
        f"{'workload':<12}{'weights':<10}{'weights MiB':>12}{'peak':>9}{'anon':>9}{'file':>9}"
        f"{'p50':>9}{'ratio (min-max)':>22}{'read MiB':>10}{'hits':>6}{'waits':>6}{'wait ms':>9}"
    )
    for r in runs:
        if "error" in r:
            print(f"{r['workload']:<12}{r['weights']:<10} {r['status']}: {r['error']}")
            continue
        ratio = (
            f"{r['p50_ratio']:.2f} ({r['p50_ratio_min']:.2f}-{r['p50_ratio_max']:.2f})"
            + ("!" if r["disturbed_rounds"] else " ")
            if r["p50_ratio"] is not None
            else "n/a"
        )
        streamed = r["weights"] == "streamed"
        print(
            f"{r['workload']:<12}{r['weights']:<10}{_mib(r['weight_bytes']):>12}"
            f"{_mib(r['peak_bytes']):>9}{_mib(r['rss_anon_peak_bytes']):>9}"
            f"{_mib(r['rss_file_peak_bytes']):>9}{r['p50_s'] * 1e3:9.2f}{ratio:>22}"
            + (
                f"{_mib(r['bytes_read_per_request']):>10}{r['hits_per_request']:6.1f}"
                f"{r['waits_per_request']:6.1f}{r['wait_s_per_request'] * 1e3:9.2f}"
                if streamed
                else ""
            )
        )
    pre = [row for wl in ns.workloads for row in _prefetch(wl, ns)]
    print("\nPart 2: prefetch, in one process, interleaved (ms; ratio to resident per round)")
    print(f"{'workload':<12}{'setting':<24}{'median':>9}{'ratio (min-max)':>20}{'hits':>6}")
    for r in pre:
        hits = r["hits_per_request"]
        print(
            f"{r['workload']:<12}{r['setting']:<24}{r['median_s'] * 1e3:9.2f}"
            f"{r['ratio']:>8.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
            + (f"{hits:6.1f}" if hits is not None else "")
        )
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps({"runs": runs, "prefetch": pre}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
