"""CPU time read from /proc (proc(5)), for the benchmarks' check of how busy the machine was."""

from __future__ import annotations

import os


def busy_s() -> float | None:
    """Machine-wide busy CPU seconds so far: memlab's own reading (memlab/timing.py), which a
    run's timing verdict uses too (/proc/stat; steal counts: a VM's neighbours)."""
    from memlab.timing import machine_busy_s

    return machine_busy_s()


def proc_cpu_s(pid: int | None) -> float | None:
    """CPU seconds process ``pid`` (all its threads) has used (utime + stime); None if gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
