"""The techniques, as knobs: small functions that change a built workload in place.

    w = build_workload(exp)
    apply_sparsity(w, 0.9, "sparse"); apply_precision(w, "bf16"); apply_checkpointing(w, 1)

Each returns the workload, records its setting in ``workload.applied`` and explains itself in
``workload.notes``. ``apply_knobs`` applies an ``Experiment``'s knobs in the order that composes:
sparsity first (it replaces Linear layers), then precision (it converts or quantizes whatever
layers exist, sparse ones included), then checkpointing (it wraps the blocks, whatever is inside).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memlab.knobs.checkpointing import apply_checkpointing, checkpointed_blocks
from memlab.knobs.errors import KnobUnsupported
from memlab.knobs.precision import (
    amp_context,
    apply_precision,
    autocast_unsupported_reason,
    param_bytes_by_dtype,
)
from memlab.knobs.sparsity import (
    SparseLinear,
    apply_sparsity,
    csr_bytes,
    dense_bytes,
    density_crossover,
    magnitude_mask,
)
from memlab.workloads.base import Workload

if TYPE_CHECKING:
    from memlab.config import Experiment

__all__ = [
    "apply_knobs",
    "apply_checkpointing",
    "apply_precision",
    "apply_sparsity",
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


def apply_knobs(workload: Workload, exp: Experiment) -> Workload:
    """Apply ``exp``'s sparsity, precision and checkpointing to ``workload``; returns it.
    (Batch size and data are build-time choices: ``build_workload`` already made them.)"""
    apply_sparsity(workload, exp.sparsity, exp.sparse_storage)
    apply_precision(workload, exp.precision)
    apply_checkpointing(workload, exp.checkpointing)
    return workload
