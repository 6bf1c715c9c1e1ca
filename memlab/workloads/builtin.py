"""The built-in workloads ``mlp``, ``cnn`` and ``transformer``: model, optimizer and data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from memlab.workloads import data as D
from memlab.workloads.base import Batch, Workload
from memlab.workloads.models import CNN, MLP, Transformer

if TYPE_CHECKING:
    from memlab.config import Experiment

__all__ = ["SPECS", "WorkloadSpec", "build_builtin"]


@dataclass(frozen=True)
class WorkloadSpec:
    """How to build one built-in workload."""

    make_model: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    layout: str  # how the real digits are laid out for this model (data.digits_as)
    lr: float  # AdamW learning rate, for the run and for fit on the real data


SPECS: dict[str, WorkloadSpec] = {
    "mlp": WorkloadSpec(MLP, (64,), "flat", 1e-3),
    "cnn": WorkloadSpec(CNN, (1, 16, 16), "image16", 2e-3),
    "transformer": WorkloadSpec(Transformer, (64, 4), "patches16", 1e-3),
}


def _adamw(lr: float) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    def make(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        # AdamW: two state tensors per parameter, so optimizer_state is 2x parameters -- the
        # usual picture of a training step's memory.
        return torch.optim.AdamW(params, lr=lr)

    return make


def build_builtin(
    exp: Experiment, device: str, *, data_dir: str | os.PathLike[str] | None = None
) -> Workload:
    """Build ``exp.workload`` (a built-in name) on ``device``; no knob is applied yet."""
    name = exp.workload_name
    spec = SPECS[name]
    # The model's initial weights depend on the seed only (not on what ran before).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(exp.seed)
        model = spec.make_model()
    model = model.to(device)
    model.train(exp.mode == "train")

    make_opt = _adamw(spec.lr)
    optimizer = make_opt(list(model.parameters())) if exp.mode == "train" else None

    # -- synthetic data (memory and speed) --
    dataset: torch.utils.data.Dataset[Batch]
    if exp.data == "ram":
        x, y = D.synthetic_tensors(exp.data_size, spec.input_shape, seed=exp.seed)
        dataset = D.RamBatches(x, y)
        dataset_bytes = x.numel() * x.element_size()
    else:
        path = D.memmap_path(
            name, exp.data_size, spec.input_shape, seed=exp.seed, data_dir=data_dir
        )
        files = D.prepare_memmap(path, exp.data_size, spec.input_shape, seed=exp.seed)
        dataset = D.MemmapBatches(files)
        dataset_bytes = files.x_bytes
    on_cuda = device.startswith("cuda")
    # Pinned host memory only helps a copy to a GPU; without one torch would warn and ignore it.
    pin = exp.pin_memory and on_cuda
    loader = D.make_loader(
        dataset,
        exp.batch_size,
        seed=exp.seed,
        num_workers=exp.num_workers,
        pin_memory=pin,
        prefetch_factor=exp.prefetch_factor,
    )

    def make_batches(num_batches: int | None = None) -> Iterator[Batch]:
        for xb, yb in D.iterate(loader, num_batches):
            yield xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)

    def real_data() -> tuple[Batch, Batch]:
        x_tr, y_tr, x_te, y_te = D.digits(seed=exp.seed)
        return (D.digits_as(x_tr, spec.layout), y_tr), (D.digits_as(x_te, spec.layout), y_te)

    notes = []
    if exp.pin_memory and not on_cuda:
        notes.append("pin_memory has no effect without a GPU (nothing is copied to a device)")

    return Workload(
        name=name,
        model=model,
        optimizer=optimizer,
        loss_fn=F.cross_entropy,
        make_batches=make_batches,
        samples_per_step=exp.batch_size,
        blocks=list(model.blocks),  # type: ignore[arg-type]
        device=device,
        mode=exp.mode,
        real_data=real_data,
        make_optimizer=make_opt if exp.mode == "train" else None,
        dataset_bytes=dataset_bytes,
        notes=notes,
        fit_lr=spec.lr,
    )
