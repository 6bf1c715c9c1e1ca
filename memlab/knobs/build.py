"""Building an experiment: the workload ``memlab.workloads`` builds, then the knobs applied.

It lives here, above both, because it needs both: knobs depend on workloads, never the reverse.

    w = build_experiment(Experiment(workload="transformer", checkpointing="every-block"))
    for x, y in w.make_batches(5):
        w.step(x, y)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from memlab.knobs.checkpointing import apply_checkpointing
from memlab.knobs.compression import apply_compression
from memlab.knobs.inference import apply_inference_knobs
from memlab.knobs.offload import apply_offload
from memlab.knobs.precision import apply_precision
from memlab.knobs.sparsity import apply_sparsity
from memlab.knobs.streaming import apply_weights
from memlab.workloads import Workload, build_workload

if TYPE_CHECKING:
    from memlab.config import Experiment

__all__ = ["apply_knobs", "build_experiment", "accuracy"]


def apply_knobs(workload: Workload, exp: Experiment) -> Workload:
    """Apply ``exp``'s sparsity, compression, precision, checkpointing and inference knobs to
    ``workload``; returns it. (Batch size and data are build-time choices: ``build_workload``
    made them.)

    The order composes: sparsity first (it replaces Linear layers), then compression (it
    factors or codes the layers sparsity left, ``knobs/compression.py``), then precision (it
    converts or quantizes whatever layers exist, sparse ones included; quantization leaves the
    codebook layers alone), then checkpointing (it wraps the blocks, whatever is inside), then
    the inference knobs (``knobs/inference.py``: in place, fuse, allocation), which trace or
    compile the model as the others left it."""
    apply_sparsity(workload, exp.sparsity, exp.sparse_storage)
    apply_compression(workload, exp.compression, exp.rank, exp.codebook_bits)
    apply_precision(workload, exp.precision)
    apply_checkpointing(workload, exp.checkpointing)
    apply_offload(workload, exp.offload_activations)  # hooks around forward, after checkpointing
    apply_inference_knobs(workload, exp)
    apply_weights(workload, exp.weights)  # last: it streams the layers the others left
    return workload


def build_experiment(
    exp: Experiment,
    device: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    pretrain_steps: int = 0,
) -> Workload:
    """``build_workload`` then every knob of ``exp``, in the order that composes
    (``apply_knobs``). With ``pretrain_steps``, the plain fp32 model is first trained that many
    steps on the real digits, so that pruning and quantization act on trained weights and
    accuracy means something."""
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
