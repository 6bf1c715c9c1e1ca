"""memlab: see how memory-management choices change the memory and speed of PyTorch code.

The public API is small and loaded lazily, so ``import memlab`` imports neither torch nor plotly
(the notebook kernel can hold results without ever importing torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Experiment",
    "run",
    "start",
    "RunHandle",
    "track",
    "Tracker",
    "estimate",
    "max_batch_size",
    "Estimate",
    "plan",
    "MemoryPlan",
    "RunResult",
    "Timeline",
    "ProcessSeries",
    "CATEGORIES",
    "PHASES",
    "format_bytes",
    "bandwidth",
    "BandwidthResult",
    "strided_access",
    "conv_layouts",
    "roofline",
    "RooflineResult",
    "pipeline",
    "PipelineResult",
    "pinned_memory",
    "partition",
    "PartitionResult",
    "zero_copy",
    "ZeroCopyResult",
    "cache_replay",
    "CacheResult",
    "schedule",
    "ScheduleResult",
    "Task",
    "contention",
    "ContentionResult",
    "leak_check",
    "LeakResult",
    "AliveReport",
    "PeakReport",
    "PeakBlock",
    "runs",
    "load",
    "save",
    "Store",
    "compare",
    "Comparison",
    "sweep",
    "SweepResult",
    "compare_profilers",
    "ProfilerComparison",
    "search_architectures",
    "SearchResult",
    "exports",
]

_LAZY = {
    "Experiment": "memlab.config",
    "run": "memlab.runner",
    "start": "memlab.runner",
    "RunHandle": "memlab.runner",
    "track": "memlab.tracking",
    "estimate": "memlab.estimator",
    "max_batch_size": "memlab.estimator",
    "Estimate": "memlab.estimator",
    "plan": "memlab.planning",
    "MemoryPlan": "memlab.planning",
    "Tracker": "memlab.tracking",
    "RunResult": "memlab.timeline",
    "Timeline": "memlab.timeline",
    "ProcessSeries": "memlab.timeline",
    "CATEGORIES": "memlab.timeline",
    "PHASES": "memlab.timeline",
    "format_bytes": "memlab.timeline",
    "bandwidth": "memlab.locality",
    "BandwidthResult": "memlab.locality",
    "strided_access": "memlab.locality",
    "conv_layouts": "memlab.locality",
    "roofline": "memlab.rooflines",
    "RooflineResult": "memlab.rooflines",
    "pipeline": "memlab.pipelining",
    "PipelineResult": "memlab.pipelining",
    "pinned_memory": "memlab.pipelining",
    "partition": "memlab.partitioning",
    "PartitionResult": "memlab.partitioning",
    "zero_copy": "memlab.zerocopy",
    "ZeroCopyResult": "memlab.zerocopy",
    "cache_replay": "memlab.caching",
    "CacheResult": "memlab.caching",
    "schedule": "memlab.scheduling",
    "ScheduleResult": "memlab.scheduling",
    "Task": "memlab.scheduling",
    "contention": "memlab.contending",
    "ContentionResult": "memlab.contending",
    "leak_check": "memlab.leaks",
    "LeakResult": "memlab.leaks",
    "AliveReport": "memlab.timeline",
    "PeakReport": "memlab.timeline",
    "PeakBlock": "memlab.timeline",
    "runs": "memlab.store",
    "load": "memlab.store",
    "save": "memlab.store",
    "Store": "memlab.store",
    "compare": "memlab.comparing",
    "Comparison": "memlab.comparing",
    "sweep": "memlab.sweeping",
    "SweepResult": "memlab.sweeping",
    "compare_profilers": "memlab.profilers",
    "ProfilerComparison": "memlab.profilers",
    "search_architectures": "memlab.nas",
    "SearchResult": "memlab.nas",
}

if TYPE_CHECKING:
    from memlab.caching import CacheResult, cache_replay
    from memlab.comparing import Comparison, compare
    from memlab.config import Experiment
    from memlab.contending import ContentionResult, contention
    from memlab.estimator import Estimate, estimate, max_batch_size
    from memlab.leaks import LeakResult, leak_check
    from memlab.locality import BandwidthResult, bandwidth, conv_layouts, strided_access
    from memlab.nas import SearchResult, search_architectures
    from memlab.partitioning import PartitionResult, partition
    from memlab.pipelining import PipelineResult, pinned_memory, pipeline
    from memlab.planning import MemoryPlan, plan
    from memlab.profilers import ProfilerComparison, compare_profilers
    from memlab.rooflines import RooflineResult, roofline
    from memlab.runner import RunHandle, run, start
    from memlab.scheduling import ScheduleResult, Task, schedule
    from memlab.store import Store, load, runs, save
    from memlab.sweeping import SweepResult, sweep
    from memlab.timeline import (
        CATEGORIES,
        PHASES,
        AliveReport,
        PeakBlock,
        PeakReport,
        ProcessSeries,
        RunResult,
        Timeline,
        format_bytes,
    )
    from memlab.tracking import Tracker, track
    from memlab.zerocopy import ZeroCopyResult, zero_copy


def __getattr__(name: str) -> Any:
    if name == "exports":  # a submodule: memlab.exports.to_html(...), to_parquet(...), ...
        import importlib

        module = importlib.import_module("memlab.exports")
        globals()[name] = module
        return module
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'memlab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext memlab``: registers the ``%%memlab`` cell magic (memlab/magic.py)."""
    from memlab.magic import load_ipython_extension as load

    load(ipython)
