"""Workloads the labs name in their experiments (``Experiment(workload=data_only)``).

Each is a module-level factory, so a worker finds it by its module path
(``memlab.workloads.jobs:data_only`` in a stored experiment). This module imports no torch at
import time (torch is imported inside the factories, which only ever run in a worker), so a
notebook kernel can name them without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memlab.config import Experiment
    from memlab.workloads.architectures import Architecture
    from memlab.workloads.base import Workload

__all__ = ["data_only", "architecture"]


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


class _Architectures:
    """``architecture.<name>``: the workload factory of the architecture ``name`` describes
    (``memlab.workloads.architectures.Architecture``), e.g. ``architecture.cnn_d2_w32_k5``.

    Lab 11 searches over depth, width, kernel and expansion, which no ``Experiment`` field
    holds; a factory per name keeps the experiment a plain record that ``to_dict`` writes as
    ``memlab.workloads.jobs:architecture.cnn_d2_w32_k5`` and ``from_dict`` (the run worker, the
    store) resolves again by attribute lookup. The same name always gives the same function
    object, so two experiments of one architecture compare equal."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        from memlab.workloads.architectures import Architecture

        try:
            arch = Architecture.parse(name)
        except ValueError as e:
            raise AttributeError(str(e)) from None
        name = arch.name  # the canonical spelling
        if name not in self._made:
            self._made[name] = _architecture_factory(arch)
        return self._made[name]


def _architecture_factory(arch: Architecture) -> Any:
    def factory(exp: Experiment, device: str) -> Workload:
        """The built-in ``arch.family`` workload (its data, real digits and learning rate)
        with ``arch``'s model, seeded by ``exp.seed``."""
        import torch

        from memlab.workloads import build_workload

        w = build_workload(exp.replace(workload=arch.family), device)
        del w.model  # the family's default model: replaced before anything measures it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(exp.seed)
            model = arch.build_model()
        w.name = arch.name
        w.model = model.to(device)
        w.model.train(exp.mode == "train")
        w.blocks = list(model.blocks)  # type: ignore[arg-type]
        w.optimizer = None
        w.rebuild_optimizer()
        return w

    factory.__module__ = __name__
    factory.__name__ = arch.name
    factory.__qualname__ = f"architecture.{arch.name}"
    return factory


#: ``memlab.workloads.jobs:architecture.<name>``: a searched architecture's workload factory.
architecture = _Architectures()
