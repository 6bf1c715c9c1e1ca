"""Precision: what the weights are stored in, and what the arithmetic runs in.

- ``fp32``: everything in float32 (the baseline).
- ``amp-bf16`` / ``amp-fp16``: ``torch.autocast`` around forward and loss. Weights stay fp32
  (the "master" copy the optimizer updates); autocast casts them to 16 bits for each matmul,
  and those casts are short-lived copies (temporaries), so parameter bytes do not drop; saved
  activations of autocast ops are 16-bit. fp16 training also needs a ``GradScaler`` (small fp16
  gradients underflow to zero otherwise; torch.amp docs), which the workload's step uses.
- ``bf16``: the weights themselves stored in bfloat16 (``model.to(torch.bfloat16)``): parameter,
  gradient and optimizer-state bytes halve. There is no fp32 master copy, so very small updates
  can round away (the trade-off this mode shows).
- ``int8``: inference only, CPU only: ``torch.ao.quantization.quantize_dynamic`` replaces every
  ``nn.Linear`` by a dynamically quantized one (int8 weights, activations quantized on the fly).
  Convolutions and normalisation layers stay fp32 (dynamic quantization covers Linear layers).
- ``int8-static``, ``int8-weight``, ``int4-weight``: inference only, CPU only; static int8 of
  convolutions and Linear layers (PT2E, calibrated on the real digits, oneDNN int8 kernels),
  and weight-only int8/int4 of Linear layers (torchao ``quantize_``): ``knobs/quantization.py``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from memlab.config import PRECISIONS
from memlab.knobs.errors import KnobUnsupported
from memlab.workloads.base import Workload, _dtype_name, param_bytes_by_dtype

__all__ = [
    "apply_precision",
    "autocast_unsupported_reason",
    "amp_context",
]

_AMP = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}


@functools.cache
def autocast_unsupported_reason(device_type: str, dtype: torch.dtype) -> str | None:
    """Why ``torch.autocast(device_type, dtype)`` cannot run here, or ``None`` if it can.

    Probed with a tiny matmul: some torch builds/CPUs refuse a dtype with an error, others only
    warn and silently disable autocast, which would make the run a mislabelled fp32 run."""
    if device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16 (needs compute capability 8.0 or newer)"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device_type, dtype=dtype):
                a = torch.ones(4, 4, device=device_type)
                got = (a @ a).dtype
    except (RuntimeError, ValueError, TypeError) as e:
        return str(e).splitlines()[0]
    if got != dtype:
        said = "; ".join(str(w.message).splitlines()[0] for w in caught)
        return f"autocast ran the matmul in {_dtype_name(got)}" + (f" ({said})" if said else "")
    return None


def _autocast_factory(
    device_type: str, dtype: torch.dtype
) -> Callable[[], AbstractContextManager[Any]]:
    def make() -> AbstractContextManager[Any]:
        return torch.autocast(device_type, dtype=dtype)

    return make


def _quantize_int8(workload: Workload) -> int:
    from torch.nn.utils import prune

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:  # pragma: no cover - depends on the torch build
        raise KnobUnsupported(
            f"precision 'int8' needs torch.ao.quantization, which torch {torch.__version__} "
            "does not have"
        ) from e
    model = workload.model
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    for m in linears:
        # A mask-pruned Linear keeps weight_orig and a mask; fold them so the int8 weights are
        # the pruned ones.
        if prune.is_pruned(m) and hasattr(m, "weight_orig"):
            prune.remove(m, "weight")
    with warnings.catch_warnings():
        # torch 2.10+ marks torch.ao.quantization deprecated (moving to torchao) but ships it.
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return len(linears)


def apply_precision(workload: Workload, precision: str) -> Workload:
    """Apply a precision (see the module docstring) to ``workload`` in place and return it.

    ``amp-*`` set ``workload.autocast``, the context ``workload.step`` wraps forward and loss in.
    Raises ``KnobUnsupported`` where this device or torch build cannot run the mode.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dev_type = torch.device(workload.device).type
    if precision in _AMP:
        dtype = _AMP[precision]
        reason = autocast_unsupported_reason(dev_type, dtype)
        if reason is not None:
            raise KnobUnsupported(
                f"precision {precision!r} is not supported on {dev_type} here: {reason}. "
                "Choose 'amp-bf16' or 'fp32'" + (" or run on a GPU" if dev_type == "cpu" else "")
            )
        workload.autocast = _autocast_factory(dev_type, dtype)
        if dtype == torch.float16 and workload.mode == "train":
            workload.grad_scaler = torch.amp.GradScaler(dev_type)
        workload.notes.append(
            f"{precision}: weights stay fp32 (master copy); autocast casts them to "
            f"{_dtype_name(dtype)} per op, and the casts are temporaries"
        )
        if dev_type == "cpu" and dtype == torch.float16:
            # Many CPUs have no native fp16 arithmetic; the memory saving is real, the speed
            # may not be. Said, not asserted: compare the measured step times.
            workload.notes.append(
                "amp-fp16 on CPU: many CPUs lack fast fp16 kernels, so compare its step time "
                "with fp32's before counting on a speed-up"
            )
    elif precision == "bf16":
        workload.model.to(torch.bfloat16)
        workload.input_dtype = torch.bfloat16
        workload.rebuild_optimizer()
        workload.notes.append(
            "bf16: weights stored in bfloat16, no fp32 master copy (small updates can round away)"
        )
    elif precision == "int8":
        if workload.mode != "inference":
            raise KnobUnsupported(
                "precision 'int8' (dynamic quantization) is for mode 'inference' only: the int8 "
                "weights cannot be trained"
            )
        if dev_type != "cpu":
            raise KnobUnsupported(
                "precision 'int8' (torch dynamic quantization) runs on CPU only; choose device "
                "'cpu' or another precision"
            )
        n = _quantize_int8(workload)
        after = param_bytes_by_dtype(workload.model)
        left = sum(v for k, v in after.items() if k != "qint8")
        workload.notes.append(
            f"int8: {n} Linear layers quantized; {left} bytes of other weights (convolutions, "
            "norms, sparse layers, biases) stay in their dtype"
        )
    elif precision in ("int8-static", "int8-weight", "int4-weight"):
        if workload.mode != "inference":
            raise KnobUnsupported(
                f"precision {precision!r} is for mode 'inference' only: quantized weights "
                "cannot be trained"
            )
        if dev_type != "cpu":
            raise KnobUnsupported(
                f"precision {precision!r} is implemented for the CPU here (oneDNN / torchao CPU "
                "kernels); choose device 'cpu'"
            )
        from memlab.knobs import quantization as Q

        if precision == "int8-static":
            info = Q.quantize_static_int8(workload)
            workload.measures["int8_static_onednn"] = float(info["kernels"] == "onednn-int8")
        else:
            info = Q.quantize_weight_only(workload, 8 if precision == "int8-weight" else 4)
        workload.notes.append(Q.describe(workload, precision, info))
    workload.applied["precision"] = precision
    return workload


def amp_context(workload: Workload) -> AbstractContextManager[Any]:
    """The context ``workload.step`` wraps forward and loss in (a no-op unless amp)."""
    return workload.autocast()
