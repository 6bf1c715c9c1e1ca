"""Reference workloads: the model, optimizer and data an ``Experiment`` names, no knob applied.

    w = build_workload(Experiment(workload="transformer"))
    for x, y in w.make_batches(5):
        w.step(x, y)

This package is below the knobs and never imports them: ``memlab.knobs.build_experiment``
builds a workload here and then applies the experiment's knobs to it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memlab.config import Experiment
    from memlab.workloads.base import Batch, Workload, param_bytes_by_dtype

# Loaded on first use (base.py imports torch): a notebook kernel names lab workloads such as
# memlab.workloads.jobs.data_only, which imports this package, and must not import torch.
_LAZY = ("Workload", "Batch", "param_bytes_by_dtype")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'memlab.workloads' has no attribute {name!r}")
    from memlab.workloads import base

    value = getattr(base, name)
    globals()[name] = value
    return value


__all__ = ["Workload", "Batch", "build_workload", "param_bytes_by_dtype"]


def build_workload(
    exp: Experiment, device: str | None = None, *, data_dir: str | os.PathLike[str] | None = None
) -> Workload:
    """The workload ``exp`` names, built on ``device`` (default ``exp.resolved_device()``),
    with its synthetic data set loaded (``ram``) or prepared and mapped (``memmap``, files under
    ``data_dir``, default ``memlab.workloads.data.default_data_dir()``). No knob is applied.

    A user factory is called as ``factory(exp, device)`` and must return a ``Workload``.
    """
    from memlab.config import ConfigError, Experiment
    from memlab.workloads.base import Workload

    if not isinstance(exp, Experiment):
        raise TypeError(f"exp must be a memlab.Experiment, got {type(exp).__name__}")
    dev = exp.resolved_device() if device is None else device
    if isinstance(exp.workload, str):
        from memlab.workloads.builtin import build_builtin

        return build_builtin(exp, dev, data_dir=data_dir)
    w = exp.workload(exp, dev)
    if not isinstance(w, Workload):
        raise ConfigError(
            f"workload factory {exp.workload_name} must return a memlab.workloads.Workload, "
            f"got {type(w).__name__}"
        )
    return w
