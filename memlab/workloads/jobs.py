"""Workloads the labs name in their experiments (``Experiment(workload=data_only)``).

Each is a module-level factory, so a worker finds it by its module path
(``memlab.workloads.jobs:data_only`` in a stored experiment). This module imports no torch at
import time (torch is imported inside the factories, which only ever run in a worker), so a
notebook kernel can name them without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memlab.config import Experiment
    from memlab.workloads.base import Workload

__all__ = ["data_only"]


def data_only(exp: Experiment, device: str) -> Workload:
    """A workload factory: the ``mlp`` workload's data (``ram`` or ``memmap``, any size, any
    loader settings) feeding one ``Linear(64, 10)``, so that a step costs little more than
    reading its batch. The data-loading lab uses it to look at the data path alone: with the
    8.4M-parameter MLP, three epochs over 64 MiB of samples would take minutes on a laptop."""
    from torch import nn

    from memlab.workloads import build_workload

    w = build_workload(exp.replace(workload="mlp"), device)
    w.name = "data_only"
    w.model = nn.Linear(64, 10).to(device)
    w.model.train(exp.mode == "train")
    w.blocks = []
    w.optimizer = None
    w.rebuild_optimizer()
    return w
