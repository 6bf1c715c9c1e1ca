"""The tests' three small models (tests/test_track.py) as memlab workloads, so the runner can
run them: module-level factories, importable by a spawned worker (the benchmark puts the
checkout on sys.path, and spawn hands sys.path to its children)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from memlab.workloads import Workload
from tests.test_track import MODELS


def _factory(name: str, exp: Any, device: str) -> Workload:
    model, (x, y) = MODELS[name]()
    model, x, y = model.to(device), x.to(device), y.to(device)

    def batches(num_batches: int | None = None) -> Iterator[tuple[Any, Any]]:
        for _ in range(num_batches or 1_000_000):
            yield x, y  # the same batch each step, as tests/test_track.py's train_step uses

    return Workload(
        name=f"test {name}",
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        loss_fn=torch.nn.functional.cross_entropy,
        make_batches=batches,
        samples_per_step=int(x.shape[0]),
        device=device,
    )


def test_mlp(exp: Any, device: str) -> Workload:
    return _factory("mlp", exp, device)


def test_cnn(exp: Any, device: str) -> Workload:
    return _factory("cnn", exp, device)


def test_transformer(exp: Any, device: str) -> Workload:
    return _factory("transformer", exp, device)


TEST_WORKLOADS = {"test mlp": test_mlp, "test cnn": test_cnn, "test transformer": test_transformer}
