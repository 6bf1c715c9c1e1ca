"""Experiments shared by the config and CLI tests (no torch needed)."""

from __future__ import annotations

from memlab.config import Experiment


def every_field_changed() -> tuple[Experiment, Experiment]:
    """Two valid Experiments between which every field differs from its default: an inference
    one (the inference-only knobs) and a training one (the training-only knobs)."""
    inference = Experiment(
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
        weights="streamed",
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
    training = inference.replace(
        mode="train",
        precision="bf16",
        allocation="dynamic",
        fuse="none",
        weights="resident",
        compression="svd",
        offload_activations="disk-compressed",
    )
    return inference, training
