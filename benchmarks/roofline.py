"""The roofline of one inference request of each built-in workload, with this machine's roofs
measured in the same run, and the locality examples with their ratios.

    .venv/bin/python benchmarks/roofline.py [--batch-size 32] [--requests 5] [--smoke]
                                            [--json PATH]

Anchors, measured here in this run: the DRAM plateau (``memlab.locality.measure`` up to 8x the
last cache level) and the peak compute rate (an fp32 matmul with torch's threads). Each op is
placed against them; the ratios printed are op time over the roofline's lower bound, a strided
read's time over a contiguous one of the same count, NCHW over channels_last. Every figure is
measured on cores others may be using: the script prints how busy the rest of the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._cpu import busy_s, proc_cpu_s  # noqa: E402
from memlab import locality  # noqa: E402
from memlab.cli import roofline_table  # noqa: E402
from memlab.config import Experiment  # noqa: E402
from memlab.rooflines import roofline  # noqa: E402
from memlab.timeline import format_bytes  # noqa: E402


def _others(b0: float | None, b1: float | None, c0: float | None, c1: float | None,
            wall: float) -> str:  # fmt: skip
    if None in (b0, b1, c0, c1) or wall <= 0:
        return "machine load unknown"
    others = max(0.0, (b1 - b0) - (c1 - c0)) / wall  # type: ignore[operator]
    return f"other processes kept {others:.2f} of {os.cpu_count()} cores busy meanwhile"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--requests", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="small locality sizes")
    p.add_argument("--json", default=None, metavar="PATH", help="write every result here")
    ns = p.parse_args()
    out: dict[str, object] = {}

    # -- the roofs and the roofline of each workload (in this process: its CPU is counted) ----
    b0, c0, w0 = busy_s(), proc_cpu_s(os.getpid()), time.monotonic()
    levels = locality.read_cache_levels()
    last = levels[-1].size_bytes if levels else locality.DRAM_FALLBACK_BYTES
    bw = locality.measure(
        min(2 * locality.DRAM_FACTOR * last, locality.GIB), anchor_bytes=16 * 2**20, per_octave=1
    )
    print(
        f"anchor: DRAM plateau {bw.dram_gb_per_s} GB/s (memlab.locality, this run); "
        f"numpy.copyto of 16 MiB {bw.anchor_gb_per_s:.1f} GB/s"
    )
    for wl in ("mlp", "cnn", "transformer"):
        exp = Experiment(workload=wl, mode="inference", batch_size=ns.batch_size)
        r = roofline(exp, bandwidth=bw, requests=ns.requests, in_worker=False)
        print(f"\n== {wl} (batch {ns.batch_size}) ==")
        print(roofline_table(r, top=10))
        slow = sorted(r.ops, key=lambda o: -o.time_s)[:3]
        print(
            "  op time / roofline bound (slowest 3): "
            + ", ".join(f"#{o.index} {o.time_s / r.roof_time_s(o):.1f}x" for o in slow)
        )
        out[wl] = r.to_dict()
    print("\n" + _others(b0, busy_s(), c0, proc_cpu_s(os.getpid()), time.monotonic() - w0))

    # -- locality ------------------------------------------------------------------------------
    b0, c0, w0 = busy_s(), proc_cpu_s(os.getpid()), time.monotonic()
    sr = locality.strided_access(smoke=ns.smoke, worker=False)
    print(
        f"\nstrided vs contiguous reads: {sr.points[0].count} float64 per read "
        f"({format_bytes(sr.points[0].useful_bytes)} useful), buffer "
        f"{format_bytes(sr.buffer_bytes)}, {sr.line_bytes} B lines"
    )
    print(f"  {'stride':>6} {'touched/useful':>14} {'sum GB/s':>9} {'x contig':>9} "
          f"{'gather GB/s':>11} {'x contig':>9}")  # fmt: skip
    for pt in sr.points:
        print(
            f"  {pt.stride:>6} {pt.bytes_per_useful_byte:>14.1f} {pt.sum_gb_per_s:>9.2f} "
            f"{sr.slowdown(pt.stride):>9.2f} {pt.copy_gb_per_s:>11.2f} "
            f"{sr.slowdown(pt.stride, 'copy'):>9.2f}"
        )
    cr = locality.conv_layouts(ns.batch_size, smoke=ns.smoke, worker=False)
    print(f"\nchannels_last vs NCHW, conv 3x3 forward ({cr.threads} threads):")
    print(f"  {'shape':<14} {'NCHW ms':>8} {'CL ms':>8} {'NCHW/CL':>8} {'alloc NCHW':>11} "
          f"{'alloc CL':>10} {'alloc mixed':>12}")  # fmt: skip
    for c in cr.points:
        print(
            f"  {c.name:<14} {c.nchw_s * 1e3:>8.3f} {c.channels_last_s * 1e3:>8.3f} "
            f"{c.speedup:>8.2f} {format_bytes(c.nchw_alloc_bytes):>11} "
            f"{format_bytes(c.channels_last_alloc_bytes):>10} "
            f"{format_bytes(c.mixed_alloc_bytes):>12}"
        )
    print(_others(b0, busy_s(), c0, proc_cpu_s(os.getpid()), time.monotonic() - w0))
    for n in (*sr.notes, *cr.notes):
        print(f"  note: {n}")
    if ns.json:
        out["bandwidth"] = bw.to_dict()
        out["strides"] = sr.to_dict()
        out["conv_layouts"] = cr.to_dict()
        Path(ns.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
