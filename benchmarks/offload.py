"""Activation offload, measured: what each ``offload_activations`` setting saves and what it
costs, per workload.

    python benchmarks/offload.py [--workloads mlp,cnn,transformer] [--rounds 3] [--steps 10]
                                 [--batch 32] [--settings off,cpu,disk,disk-compressed]
                                 [--json test-artifacts/offload.json]

Each setting is one training run of a built-in workload in a fresh worker (``memlab.runner``).
Per setting the table prints

  acts        the activations category at the peak (``RunResult.peak_by_category``), MiB
  peak        the peak tensor bytes of the tracked steps, MiB
  step        the median step time of the untracked timed steps, ms
  x off       that step time over ``off``'s *in the same round* (median of the per-round
              ratios, min-max): ``off`` is the anchor, measured in the same run
  saved/ms    peak MiB saved per ms of extra step time against ``off`` in the same round
              (median over rounds); ``free`` where the step was not slower in any round,
              ``-`` where nothing was saved
  written     bytes written per step (``offload_bytes_written``), and the compression ratio
  pack/unpack ms per step spent in the hooks (``offload_pack_s``, ``offload_unpack_s``)

Rounds interleave (every setting once per round, ``off`` first, the others rotating), so a
slow drift of the machine hits all alike; a ratio from a round where either run was disturbed
(``RunResult.timing``: other processes took the CPU) is marked ``!``. Memory figures do not
depend on the clock and are never marked. Figures only; no target is asserted.
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

ANCHOR = "off"
MIB = 2**20


def _args(argv: list[str] | None) -> argparse.Namespace:
    from memlab.config import OFFLOADS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="mlp,cnn,transformer")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--settings", default=",".join(OFFLOADS))
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    ns.settings = [v.strip() for v in ns.settings.split(",") if v.strip()]
    unknown = [v for v in ns.settings if v not in OFFLOADS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose among {list(OFFLOADS)}")
    if ANCHOR not in ns.settings:
        ns.settings.insert(0, ANCHOR)
    if ns.rounds < 1 or ns.steps < 1 or ns.batch < 1:
        p.error("--rounds, --steps and --batch must be positive")
    return ns


def _disturbed(r: Any) -> bool:
    return r.timing is None or not r.timing.steady


def _order(settings: list[str], rnd: int) -> list[str]:
    """``off`` first, then the others rotated by the round number."""
    rest = [s for s in settings if s != ANCHOR]
    k = rnd % len(rest) if rest else 0
    return [ANCHOR, *rest[k:], *rest[:k]]


def _workload(wl: str, ns: argparse.Namespace) -> list[dict[str, Any]]:
    from memlab import Experiment
    from memlab.runner import run

    base = Experiment(
        workload=wl, batch_size=ns.batch, steps=ns.steps, warmup=2, device="cpu", seed=0
    )
    runs: dict[str, list[Any]] = {s: [] for s in ns.settings}
    for rnd in range(ns.rounds):
        for s in _order(ns.settings, rnd):
            r = run(base.replace(offload_activations=s), timeout_s=900)
            runs[s].append(r)
            print(f"  [{wl} round {rnd + 1}] {s}: {r.status}", file=sys.stderr)
    rows = []
    for s in ns.settings:
        rs = runs[s]
        ok = [r for r in rs if r.status == "ok" and r.step_time_median_s]
        row: dict[str, Any] = {"workload": wl, "setting": s, "status": rs[0].status}
        if not ok:
            row["error"] = (rs[0].error or "").splitlines()[0][:160]
            rows.append(row)
            continue
        ratios, per_ms, marks = [], [], []
        for r, a in zip(rs, runs[ANCHOR], strict=True):
            if r.status != "ok" or a.status != "ok":
                continue
            if not (r.step_time_median_s and a.step_time_median_s):
                continue
            ratios.append(r.step_time_median_s / a.step_time_median_s)
            marks.append(_disturbed(r) or _disturbed(a))
            extra_ms = (r.step_time_median_s - a.step_time_median_s) * 1e3
            saved = (a.peak_bytes - r.peak_bytes) / MIB
            per_ms.append(saved / extra_ms if extra_ms > 0 else float("inf"))
        m = ok[0].metrics
        row.update(
            activations_bytes=ok[0].peak_by_category.get("activations", 0),
            peak_bytes=ok[0].peak_bytes,
            step_s=statistics.median(r.step_time_median_s for r in ok),
            ratio=statistics.median(ratios) if ratios else None,
            ratio_min=min(ratios) if ratios else None,
            ratio_max=max(ratios) if ratios else None,
            saved_mib_per_ms=statistics.median(per_ms) if per_ms else None,
            disturbed_rounds=sum(marks),
            rounds=len(ratios),
            written_bytes=m.get("offload_bytes_written"),
            compression_ratio=m.get("offload_compression_ratio"),
            pack_s=statistics.median(r.metrics.get("offload_pack_s", 0.0) for r in ok),
            unpack_s=statistics.median(r.metrics.get("offload_unpack_s", 0.0) for r in ok),
        )
        rows.append(row)
    anchor = next((r for r in rows if r["setting"] == ANCHOR and "peak_bytes" in r), None)
    for row in rows:  # nothing saved: the per-ms figure means nothing
        if anchor and "peak_bytes" in row and row["peak_bytes"] >= anchor["peak_bytes"]:
            row["saved_mib_per_ms"] = None
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"  {'setting':<16} {'acts MiB':>9} {'peak MiB':>9} {'step ms':>8} "
        f"{'x off (min-max)':>20} {'saved/ms':>9} {'written MiB':>12} {'ratio':>6} "
        f"{'pack/unpack ms':>15}"
    )
    for r in rows:
        if "peak_bytes" not in r:
            print(f"  {r['setting']:<16} {r['status']}: {r.get('error', '')}")
            continue
        ratio = (
            "-"
            if r["ratio"] is None
            else f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
            + ("!" if r["disturbed_rounds"] else "")
        )
        spm = r["saved_mib_per_ms"]
        per_ms = "-" if spm is None else ("free" if spm == float("inf") else f"{spm:.3f}")
        written = "-" if r["written_bytes"] is None else f"{r['written_bytes'] / MIB:.2f}"
        cr = "-" if r["compression_ratio"] is None else f"{r['compression_ratio']:.2f}"
        hooks = (
            "-"
            if r["written_bytes"] is None
            else f"{r['pack_s'] * 1e3:.1f}/{r['unpack_s'] * 1e3:.1f}"
        )
        print(
            f"  {r['setting']:<16} {r['activations_bytes'] / MIB:>9.2f} "
            f"{r['peak_bytes'] / MIB:>9.2f} {r['step_s'] * 1e3:>8.1f} {ratio:>20} "
            f"{per_ms:>9} {written:>12} {cr:>6} {hooks:>15}"
        )


def main(argv: list[str] | None = None) -> int:
    ns = _args(argv)
    from memlab.runner import shutdown_warm_worker

    out: dict[str, Any] = {"rows": []}
    try:
        for wl in [w.strip() for w in ns.workloads.split(",") if w.strip()]:
            rows = _workload(wl, ns)
            out["rows"].extend(rows)
            print(f"\n{wl}, batch {ns.batch}, {ns.rounds} rounds x {ns.steps} steps:")
            _print_table(rows)
    finally:
        shutdown_warm_worker()
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
