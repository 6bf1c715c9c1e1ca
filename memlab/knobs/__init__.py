"""The techniques, as knobs: small functions that change a built workload in place.

    w = build_workload(exp)
    apply_sparsity(w, 0.9, "sparse"); apply_precision(w, "bf16"); apply_checkpointing(w, 1)

Each returns the workload, records its setting in ``workload.applied`` and explains itself in
``workload.notes``. ``apply_knobs`` applies an ``Experiment``'s knobs in the order that composes
(sparsity, precision, checkpointing); ``build_experiment`` builds the workload and applies them,
and ``accuracy`` trains briefly on the real digits first (``memlab.knobs.build``). Knobs depend
on ``memlab.workloads``; workloads know nothing of knobs.
"""

from __future__ import annotations

from memlab.knobs.build import accuracy, apply_knobs, build_experiment
from memlab.knobs.checkpointing import apply_checkpointing, checkpointed_blocks
from memlab.knobs.compression import apply_compression
from memlab.knobs.errors import KnobUnsupported
from memlab.knobs.offload import apply_offload
from memlab.knobs.precision import amp_context, apply_precision, autocast_unsupported_reason
from memlab.knobs.sparsity import (
    SparseLinear,
    apply_sparsity,
    csr_bytes,
    dense_bytes,
    density_crossover,
    magnitude_mask,
)
from memlab.knobs.streaming import apply_weights, close_weights
from memlab.workloads.base import param_bytes_by_dtype

__all__ = [
    "accuracy",
    "apply_knobs",
    "build_experiment",
    "apply_checkpointing",
    "apply_compression",
    "apply_offload",
    "apply_precision",
    "apply_sparsity",
    "apply_weights",
    "close_weights",
    "amp_context",
    "autocast_unsupported_reason",
    "checkpointed_blocks",
    "param_bytes_by_dtype",
    "SparseLinear",
    "csr_bytes",
    "dense_bytes",
    "density_crossover",
    "magnitude_mask",
    "KnobUnsupported",
]
