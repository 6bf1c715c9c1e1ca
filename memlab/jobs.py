"""Torch-side jobs that the labs hand to a worker with ``memlab.runner.call`` (the notebook
kernel never imports torch).

Each is a module-level function, so the worker finds it by its module path. This module imports
nothing heavy at import time: torch, the knobs and the estimator are imported inside the
functions, which only ever run in a worker. It sits above ``memlab.knobs`` and
``memlab.estimator`` (it builds experiments and estimates them), beside the runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memlab.config import Experiment
    from memlab.estimator import Estimate

__all__ = ["evaluate_variants", "estimate_each", "footprints", "edge_programs"]


def evaluate_variants(
    variants: Sequence[tuple[str, Experiment]], train_steps: int
) -> dict[str, tuple[float | None, str | None]]:
    """Accuracy on the real digits of each ``(label, experiment)``: every distinct (workload,
    seed, batch size) is trained once in fp32 on CPU for ``train_steps`` steps, then each
    variant loads those weights, applies its knobs and is evaluated (what
    ``memlab.knobs.accuracy`` does, without training again for every variant). Returns
    ``label -> (accuracy, None)``, or ``(None, reason)`` where the variant's knob cannot run."""
    import torch

    from memlab.knobs import KnobUnsupported, apply_knobs
    from memlab.workloads import build_workload

    trained: dict[tuple[str, int, int], dict[str, Any]] = {}
    out: dict[str, tuple[float | None, str | None]] = {}
    for label, exp in variants:
        small = exp.replace(data="ram", data_size=exp.batch_size, num_workers=0, device="cpu")
        key = (small.workload_name, small.seed, small.batch_size)
        if key not in trained:
            # The plain model every variant starts from: fp32, trained, no technique applied
            # (the inference-only knobs reset too, or mode "train" would refuse them).
            plain = small.replace(
                precision="fp32",
                mode="train",
                sparsity=0.0,
                checkpointing="off",
                compression="none",
                allocation="dynamic",
                fuse="none",
                inplace=False,
            )
            torch.manual_seed(plain.seed)
            w = build_workload(plain, "cpu")
            w.fit(train_steps, seed=plain.seed)
            trained[key] = {k: v.detach().clone() for k, v in w.model.state_dict().items()}
        torch.manual_seed(small.seed)
        w = build_workload(small, "cpu")
        w.model.load_state_dict(trained[key])
        try:
            apply_knobs(w, small)
        except KnobUnsupported as e:
            out[label] = (None, str(e))
            continue
        out[label] = (w.evaluate(), None)
    return out


def estimate_each(experiments: Sequence[Experiment]) -> list[Estimate]:
    """``memlab.estimate`` of each experiment, in order, in one job (the worker imports torch
    and builds the estimator's machinery once for all of them). An ``Estimate`` is plain data
    (numbers and RunResults), so it comes back to the kernel without torch."""
    from memlab.estimator import estimate

    return [estimate(exp) for exp in experiments]


def footprints(exp: Experiment, precisions: Sequence[str]) -> list[dict[str, Any]]:
    """What each precision of ``exp`` costs the process (RSS around build and first request,
    each in a fresh subprocess, beside the tensor account's model bytes):
    ``memlab.knobs.quantization.footprint``, as plain dicts."""
    from memlab.knobs.quantization import footprint

    return [dict(f) for f in footprint(exp, precisions)]


def edge_programs(
    exp: Experiment, quantize: Sequence[bool] = (False, True)
) -> list[dict[str, Any]]:
    """``exp``'s model exported through ExecuTorch, fp32 and/or int8 (XNNPACK quantizer): the
    ``.pte`` size, the planned arena and the runtime's latency here
    (``memlab.knobs.quantization.executorch_program``), as plain dicts."""
    from memlab.knobs.quantization import executorch_program

    return [dict(executorch_program(exp, quantize=q)) for q in quantize]
