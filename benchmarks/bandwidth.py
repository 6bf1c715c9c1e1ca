"""This machine's copy/triad bandwidth per working set, and issue 12's acceptance check: the
DRAM plateau of ``memlab.bandwidth()`` within 30% of a plain ``numpy.copyto`` of 256 MiB
measured in the same run, and the cache levels where /sys says they are.

    .venv/bin/python benchmarks/bandwidth.py [--max-bytes 1GiB] [--json PATH]

Prints the table (``memlab bandwidth``'s), the plateau over the anchor as a ratio, and how busy
the rest of the machine was while it measured (other processes' share of the CPU), since every
figure is a best-of-3 on cores others may be using.
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
from memlab.locality import bandwidth  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-bytes", default="1GiB")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result here")
    ns = p.parse_args()
    b0, w0 = busy_s(), time.monotonic()
    c0 = proc_cpu_s(os.getpid())
    r = bandwidth(max_bytes=ns.max_bytes, worker=False)  # in this process: its CPU is counted
    b1, w1, c1 = busy_s(), time.monotonic(), proc_cpu_s(os.getpid())
    print(f"memlab.bandwidth(max_bytes={ns.max_bytes!r}): {w1 - w0:.1f} s")
    from memlab.cli import bandwidth_table
    from memlab.timeline import format_bytes

    print(bandwidth_table(r))
    print(f"  anchor: numpy.copyto of {format_bytes(r.anchor_bytes)}: {r.anchor_gb_per_s:.2f} GB/s")
    if r.dram_gb_per_s is None:
        print("  DRAM plateau: none (no working set 4x above the last cache level)")
    else:
        ratio = r.dram_gb_per_s / r.anchor_gb_per_s
        verdict = "yes" if abs(ratio - 1) <= 0.30 else "NO"
        print(
            f"  DRAM plateau {r.dram_gb_per_s:.2f} GB/s = {ratio:.2f}x the anchor "
            f"(within 30%: {verdict})"
        )
    if None not in (b0, b1, c0, c1):
        others = max(0.0, (b1 - b0) - (c1 - c0)) / (w1 - w0)  # type: ignore[operator]
        print(f"  other processes kept {others:.2f} of {os.cpu_count()} cores busy meanwhile")
    for n in r.notes:
        print(f"  note: {n}")
    if ns.json:
        Path(ns.json).write_text(json.dumps(r.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
