"""Experiments shared by the config and CLI tests (no torch needed)."""

from __future__ import annotations

from memlab.config import Experiment


def every_field_changed() -> Experiment:
    """An Experiment in which every field differs from its default (a valid combination)."""
    return Experiment(
        workload="transformer",
        mode="inference",
        batch_size=16,
        precision="int8",
        checkpointing="every-other-block",
        sparsity=0.5,
        sparse_storage="sparse",
        allocation="preallocated",
        inplace=True,
        fuse="fold",
        compression="shared",
        rank=4,
        codebook_bits=3,
        data="memmap",
        num_workers=2,
        pin_memory=True,
        prefetch_factor=4,
        data_size=4096,
        steps=7,
        warmup=2,
        device="cpu",
        budget_bytes="1GiB",
        profile="rpi-4-2gb",
        seed=3,
    )
