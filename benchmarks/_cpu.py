"""CPU time read from /proc (proc(5)), for the benchmarks' check of how busy the machine was."""

from __future__ import annotations

import os


def busy_s() -> float | None:
    """Machine-wide busy CPU seconds so far (/proc/stat; steal counts: a VM's neighbours)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


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
