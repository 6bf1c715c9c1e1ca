"""User workload factories (``factory(experiment, device) -> Workload``) shared by the runner
and UI tests. Module-level, so that a spawned worker process can import them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from memlab.workloads import Workload


def _workload(exp: Any, device: str, model: Any, sleep_s: float = 0.0) -> Workload:
    opt = torch.optim.Adam(model.parameters()) if exp.mode == "train" else None

    def batches(num_batches: int | None = None) -> Iterator[tuple[Any, Any]]:
        for _ in range(num_batches or 1_000_000):
            if sleep_s:
                time.sleep(sleep_s)
            yield torch.randn(exp.batch_size, 64), torch.randint(0, 10, (exp.batch_size,))

    return Workload(
        name="user",
        model=model,
        optimizer=opt,
        loss_fn=torch.nn.functional.cross_entropy,
        make_batches=batches,
        samples_per_step=exp.batch_size,
        device=device,
        mode=exp.mode,
    )


def tiny(exp: Any, device: str) -> Workload:
    return _workload(
        exp,
        device,
        torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)),
    )


def slow(exp: Any, device: str) -> Workload:
    """0.2 s per step, spent in the data phase (long enough to act on mid-run)."""
    return _workload(exp, device, torch.nn.Linear(64, 10), sleep_s=0.2)


def paced(exp: Any, device: str) -> Workload:
    """0.05 s per step, so that a run lasts long enough to count its samples."""
    return _workload(exp, device, torch.nn.Linear(64, 10), sleep_s=0.05)
