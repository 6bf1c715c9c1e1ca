"""Pipelining and prefetch for inference: sequential vs a two-stage pipeline, per workload.

    python benchmarks/pipelining.py [--workloads mlp,cnn,transformer] [--requests 24]
                                    [--scales mlp=48,cnn=24,transformer=24] [--depth 2]
                                    [--rate HZ] [--json PATH]

Runs ``memlab.pipelining.pipeline_job`` in this process (a benchmark may import torch) on one
seeded stream of raw requests per workload, once per mode (``default_modes``):

  sequential       preprocess then infer, per request, torch at every CPU (the anchor: what a
                   plain script gets)
  sequential-Nt    the same with N = CPUs/2 intra-op threads (the thread-matched anchor)
  pipelined        stage 1 (a thread) preprocesses request i+1 while stage 2 runs the model on
                   request i; a queue of --depth batches between; N intra-op threads (torch's
                   count is process-wide, so each stage runs its ops on N threads)

and prints per mode: throughput (requests/s), latency p50/p99 (arrival to result, ms), the
median preprocessing and forward time of one request, the queue's peak bytes, the process's
peak RSS, and how much of the machine other processes used (the timing verdict of
memlab/timing.py: "disturbed" when others took more than 10%). Ratios (``x anchor``) divide
each mode's figure by the first mode's, measured in the same run. The default raw scales make
preprocessing and the forward take comparable time on a 2-core machine (the pipeline's gain is
largest then: at most (pre + infer) / max(pre, infer)); the printed medians say how balanced
this run was. Speed on a shared machine is disturbed: never read one run's ratio as the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memlab.pipelining import WORKLOADS, PipelineResult, default_modes, pipeline_job  # noqa: E402

MIB = 2**20
DEFAULT_SCALES = {"mlp": 48, "cnn": 24, "transformer": 24}


def _scales(text: str) -> dict[str, int]:
    out = dict(DEFAULT_SCALES)
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in WORKLOADS or not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"--scales takes name=int pairs with names in {', '.join(WORKLOADS)}, got {part!r}"
            )
        out[name] = int(value)
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def print_result(r: PipelineResult) -> None:
    print(
        f"\n{r.workload}: batch {r.batch_size}, raw scale {r.raw_scale}; " + "; ".join(r.notes[:1])
    )
    head = (
        f"{'mode':<14}{'threads':>8}{'depth':>6}{'req/s':>8}{'x anchor':>9}{'p50 ms':>9}"
        f"{'x anchor':>9}{'p99 ms':>9}{'x anchor':>9}{'pre ms':>8}{'fwd ms':>8}"
        f"{'queue MiB':>10}{'RSS MiB':>9}  others"
    )
    print(head)
    for row, run in zip(r.table(), r.runs, strict=True):
        t = run.timing
        others = "n/a" if t is None or t.others_share is None else f"{100 * t.others_share:.0f}%"
        if t is not None and not t.steady:
            others += " disturbed"
        rss = _fmt(None if row["rss_peak_bytes"] is None else row["rss_peak_bytes"] / MIB, ".0f")
        print(
            f"{row['mode']:<14}{row['threads']:>8}{row['depth']:>6}"
            f"{row['throughput_rps']:>8.1f}{row['throughput_rps_vs_first']:>8.2f}x"
            f"{row['p50_ms']:>9.1f}{row['p50_ms_vs_first']:>8.2f}x"
            f"{row['p99_ms']:>9.1f}{row['p99_ms_vs_first']:>8.2f}x"
            f"{row['preprocess_ms']:>8.1f}{row['infer_ms']:>8.1f}"
            f"{row['peak_queue_bytes'] / MIB:>10.2f}{rss:>9}"
            f"  {others}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--scales", type=_scales, default=dict(DEFAULT_SCALES))
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument(
        "--rate", type=float, default=None, help="arrivals per second (default: back-to-back)"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    names = [w for w in args.workloads.split(",") if w]
    bad = [w for w in names if w not in WORKLOADS]
    if bad:
        print(
            f"unknown workload(s) {', '.join(bad)}; allowed: {', '.join(WORKLOADS)}",
            file=sys.stderr,
        )
        return 2

    import torch

    try:
        modes = default_modes(args.depth)
    except ValueError as e:
        print(f"pipelining.py: --depth: {e}", file=sys.stderr)
        return 2
    print(
        f"torch {torch.__version__}, default intra-op threads {torch.get_num_threads()}; modes: "
        + "; ".join(
            f"{m.name} = {m.kind}, {m.threads} intra-op thread(s)"
            + (f", depth {m.depth}" if m.kind == "pipelined" else "")
            for m in modes
        )
    )
    print(
        "arrivals: "
        + ("back-to-back" if args.rate is None else f"{args.rate:g} requests/s")
        + f"; {args.requests} requests per mode; ratios are to the first mode, same run"
    )
    results: list[dict[str, Any]] = []
    for w in names:
        try:
            r = pipeline_job(
                w,
                requests=args.requests,
                raw_scale=args.scales[w],
                depth=args.depth,
                rate_hz=args.rate,
                modes=modes,
            )
        except ValueError as e:  # a bad argument: one line, exit 2
            print(f"pipelining.py: {e}", file=sys.stderr)
            return 2
        print_result(r)
        results.append(r.to_dict())
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
