"""Reference workloads, and building an experiment: workload plus knobs.

    w = build_experiment(Experiment(workload="transformer", checkpointing="every-block"))
    for x, y in w.make_batches(5):
        w.step(x, y)

``build_workload`` gives the plain workload; ``build_experiment`` also applies the experiment's
knobs (``memlab.knobs.apply_knobs``); ``accuracy`` trains briefly on the real digits first.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from memlab.workloads.base import Batch, Workload

if TYPE_CHECKING:
    from memlab.config import Experiment

__all__ = ["Workload", "Batch", "build_workload", "build_experiment", "accuracy"]


def build_workload(
    exp: Experiment, device: str | None = None, *, data_dir: str | os.PathLike[str] | None = None
) -> Workload:
    """The workload ``exp`` names, built on ``device`` (default ``exp.resolved_device()``),
    with its synthetic data set loaded (``ram``) or prepared and mapped (``memmap``, files under
    ``data_dir``, default ``memlab.workloads.data.default_data_dir()``). No knob is applied.

    A user factory is called as ``factory(exp, device)`` and must return a ``Workload``.
    """
    from memlab.config import ConfigError, Experiment

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


def build_experiment(
    exp: Experiment,
    device: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    pretrain_steps: int = 0,
) -> Workload:
    """``build_workload`` then every knob of ``exp``, in the order that composes
    (``memlab.knobs.apply_knobs``). With ``pretrain_steps``, the plain fp32 model is first
    trained that many steps on the real digits, so that pruning and quantization act on
    trained weights and accuracy means something."""
    from memlab.knobs import apply_knobs

    w = build_workload(exp, device, data_dir=data_dir)
    if pretrain_steps > 0:
        w.fit(pretrain_steps, seed=exp.seed)
    return apply_knobs(w, exp)


def accuracy(exp: Experiment, train_steps: int = 200, device: str | None = None) -> float | None:
    """Accuracy on the real digits test split of ``exp``'s workload after ``train_steps`` steps
    of training in fp32 and then ``exp``'s knobs (pruning, precision...); ``None`` for a user
    workload without real data. Cheap: the synthetic set is cut to one batch in RAM."""
    small = exp.replace(data="ram", data_size=exp.batch_size, num_workers=0)
    return build_experiment(small, device, pretrain_steps=train_steps).evaluate()
