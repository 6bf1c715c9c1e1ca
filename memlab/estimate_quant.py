"""Predict the memory of a quantized inference request: precision ``int8-static``.

    from memlab.estimate_quant import estimate_quantized
    est = estimate_quantized(Experiment(workload="cnn", mode="inference", precision="int8-static"))

``int8-static`` (``memlab/knobs/quantization.py``) turns the model into an FX graph of oneDNN
int8 ops (``onednn.qlinear_pointwise``, ``onednn.qconv_pointwise``) whose weights are packed
into opaque ``torch._mkldnn`` tensors, with ``quantized_decomposed.quantize_per_tensor`` nodes
between them. The estimate uses that very graph:

1. the experiment is built for real, as a run builds it (``torch.export``, PT2E calibration,
   the oneDNN lowering), with a one-batch data set;
2. each packed weight is replaced by a fake strided tensor of its shape and dtype, kept as a
   plain attribute of the graph (not a buffer): the ops' meta kernels
   (``torch/_meta_registrations.py``) read only its shape, and a run's tensor account does not
   see the packed weights either (an opaque tensor has no storage: oneDNN holds it);
3. every ``quantized_decomposed`` node is pointed at the Python function that IS that op's
   CPU kernel (``torch/ao/quantization/fx/_decomposed.py``, registered there as its
   ``CompositeExplicitAutograd`` implementation), so its ``mul``/``round``/``add``/``clamp``
   intermediates are dispatched one by one, as in a run, where the op's meta kernel would show
   only its output (measured: ``quantize_per_tensor`` holds two fp32 copies of its input at
   once, 8x its uint8 output -- the peak of all three built-in models);
4. the remaining parameters and buffers are swapped for fake tensors and two requests run
   through ``estimator._run_steps``, the same fake recorder and tracker as every estimate.

The graph keeps a dynamic batch dimension, so one build serves every batch size: the fake
graph is kept (``_CACHE``, a few entries) and a later estimate of the same experiment at
another batch size only re-runs step 4 (``max_batch_size`` asks for many).

Ops outside what was checked against real runs (``_CHECKED_ONEDNN``, aten ops, the
``quantized_decomposed`` kernels) raise ``EstimateError`` naming the op. ``int8-weight`` and
``int4-weight`` raise it too (``_WEIGHT_ONLY_REASON``).
"""

from __future__ import annotations

import operator
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from memlab.estimator import Estimate, EstimateError, _combine, _run_steps, _swap_to_fake

__all__ = ["ESTIMATED_QUANTIZED", "estimate_quantized"]

#: The quantized precisions this module predicts.
ESTIMATED_QUANTIZED: tuple[str, ...] = ("int8-static",)

#: oneDNN op overloads whose meta kernel allocates what the real kernel does, checked against
#: memlab.run with the native recorder (torch 2.13 CPU, 2 threads): the output alone, or for
#: ``qlinear_pointwise.binary`` with a ``sum`` post-op none (it accumulates into its ``x_2``
#: argument and returns it, as the meta kernel does).
_CHECKED_ONEDNN = frozenset(
    {
        "onednn.qlinear_pointwise.default",
        "onednn.qlinear_pointwise.binary",
        "onednn.qconv_pointwise.default",
    }
)

#: Why weight-only quantization is refused (measured on the MLP, torch 2.13, torchao 0.18).
_WEIGHT_ONLY_REASON = (
    "torchao's quantized weights are tensor subclasses (Int8Tensor, IntxUnpackedToInt8Tensor) "
    "whose fake copies disagree with a run's account: a fake wrapper has a storage of the fp32 "
    "weight's size, counted as a parameter, and the views its linear takes of the int8 data "
    "are counted as new activations, while a run sees neither (the wrapper has no storage and "
    "the int8 data was allocated before the request); measure it with memlab.run"
)

#: Fake graphs kept for later batch sizes (an int8-static build takes 20-60 s on 2 cores).
_CACHE_SIZE = 4


@dataclass
class _Built:
    """An experiment's int8-static graph on fake tensors, ready for any batch size."""

    workload: Any
    fake_mode: Any
    x_shape: tuple[int, ...]
    x_dtype: Any
    y_shape: tuple[int, ...]
    y_dtype: Any
    notes: tuple[str, ...]


_CACHE: OrderedDict[Any, _Built] = OrderedDict()


def estimate_quantized(exp: Any) -> Estimate:
    """Predict one inference request's peak tensor memory for a quantized ``Experiment``
    (``exp.precision`` in ``ESTIMATED_QUANTIZED``), as ``memlab.run`` would measure it: the
    real lowered graph on fake tensors (module docstring). Raises ``EstimateError`` naming the
    precision, or the op, where that cannot be done exactly."""
    if exp.precision in ("int8-weight", "int4-weight"):
        raise EstimateError(
            f"precision {exp.precision!r} cannot be estimated: {_WEIGHT_ONLY_REASON}"
        )
    if exp.precision not in ESTIMATED_QUANTIZED:
        raise EstimateError(
            f"precision {exp.precision!r} is not estimated here: estimate_quantized predicts "
            f"{', '.join(map(repr, ESTIMATED_QUANTIZED))}"
        )
    if exp.mode != "inference":
        raise EstimateError(f"precision {exp.precision!r} runs in mode 'inference' only")
    if exp.allocation != "dynamic" or exp.fuse == "compile" or exp.weights == "streamed":
        raise EstimateError(
            f"precision {exp.precision!r} with allocation {exp.allocation!r}, fuse "
            f"{exp.fuse!r}, weights {exp.weights!r} cannot be estimated: planned buffers, "
            "compiled kernels and streamed weights hold real tensors that fake tensors cannot "
            "replace; measure it with memlab.run"
        )
    import torch

    t0 = time.perf_counter()
    built = _built(exp)
    w = built.workload
    with built.fake_mode:
        shape_x = (exp.batch_size, *built.x_shape[1:])
        shape_y = (exp.batch_size, *built.y_shape[1:])

        def batches() -> Iterator[tuple[Any, Any]]:
            while True:  # a new batch each request, as the run's data loader gives
                yield (
                    torch.empty(shape_x, dtype=built.x_dtype),
                    torch.empty(shape_y, dtype=built.y_dtype),
                )

        # Two requests, the second with the previous batch still referenced while the next
        # one loads (the runner's loop): what a run's measured block holds.
        results = _run_steps(w.model, batches(), lambda x, y: w.infer(x), None, 2, runner_loop=True)
    return _combine(results, time.perf_counter() - t0, built.notes)


def _cache_key(exp: Any) -> Any:
    """The experiment up to what does not change the lowered graph: the batch size (the graph's
    batch dimension is dynamic; a batch of 1 is kept apart, export may specialise it) and the
    data and run fields."""
    return exp.replace(
        batch_size=min(exp.batch_size, 2),
        data_size=min(exp.batch_size, 2),
        data="ram",
        num_workers=0,
        steps=1,
        warmup=1,
        budget_bytes=None,
        profile="none",
    )


def _built(exp: Any) -> _Built:
    key = _cache_key(exp)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    built = _build(exp)
    _CACHE[key] = built
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return built


def _build(exp: Any) -> _Built:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memlab.knobs import build_experiment

    small = exp.replace(data="ram", data_size=exp.batch_size, num_workers=0, device="cpu")
    w = build_experiment(small, "cpu")
    x_real, y_real = next(w.make_batches(1))
    graphs = [m for m in w.model.modules() if isinstance(m, torch.fx.GraphModule)]
    for gm in graphs:
        _check_and_decompose(gm)
    packed = _unregister_packed(w.model)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        _swap_to_fake(w.model, fake_mode)
        for owner, name, t in packed:
            # A plain attribute, not a buffer: the tracker counts a model's buffers at entry,
            # and a run's tensor account cannot see the opaque original.
            object.__setattr__(owner, name, torch.empty(t.shape, dtype=t.dtype))
    packed_bytes = sum(t.numel() * t.element_size() for _, _, t in packed)
    del packed  # the real packed weights go with their last reference
    kernels = "the lowered oneDNN int8 graph" if graphs else "the quantized model"
    note = (
        f"estimate: precision=int8-static: {kernels} was built for real (export, calibration, "
        "lowering) and run on fake tensors; each quantize node's fp32 intermediates are "
        "counted (its kernel's own ops run one by one)"
    )
    if packed_bytes:
        note += (
            f"; {packed_bytes} bytes of int8 weights packed by oneDNN into opaque tensors are "
            "outside PyTorch's allocator, as in a run: not counted"
        )
    return _Built(
        workload=w,
        fake_mode=fake_mode,
        x_shape=tuple(x_real.shape),
        x_dtype=x_real.dtype,
        y_shape=tuple(y_real.shape),
        y_dtype=y_real.dtype,
        notes=(*w.notes, note),
    )


def _check_and_decompose(gm: Any) -> None:
    """Refuse ops whose fake run was not checked against a real one (``EstimateError`` naming
    the op), and point each ``quantized_decomposed`` node at its Python CPU kernel."""
    import torch
    from torch.ao.quantization.fx import _decomposed

    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            name = f"{target.namespace}.{target._schema.name.split('::')[1]}.{target._overloadname}"
            if target.namespace == "aten" or name in _CHECKED_ONEDNN:
                continue
            if target.namespace == "quantized_decomposed":
                # quantize_per_tensor.tensor -> _decomposed.quantize_per_tensor_tensor
                base = target._schema.name.split("::")[1]
                ov = target._overloadname
                kernel = getattr(_decomposed, base if ov == "default" else f"{base}_{ov}", None)
                if callable(kernel):
                    node.target = kernel
                    changed = True
                    continue
            raise EstimateError(
                f"precision 'int8-static': the op {name} in the quantized graph cannot be "
                "estimated: its fake kernel was not checked against a run's allocations "
                "(memlab/estimate_quant.py, _CHECKED_ONEDNN); measure it with memlab.run"
            )
        if getattr(target, "__module__", None) in ("_operator", "operator") or (
            target in vars(operator).values()
        ):
            continue  # getitem on an op's tuple, arithmetic on sizes
        raise EstimateError(
            f"precision 'int8-static': the call {getattr(target, '__name__', target)!r} in the "
            "quantized graph cannot be estimated (not an aten, oneDNN or quantized_decomposed "
            "op); measure it with memlab.run"
        )
    if changed:
        gm.recompile()


def _unregister_packed(model: Any) -> list[tuple[Any, str, Any]]:
    """Remove the opaque (``torch._mkldnn``) buffers and parameters from ``model``; returns
    ``(owner, name, tensor)`` for each, for a fake stand-in to take its place."""
    out: list[tuple[Any, str, Any]] = []
    for mod in model.modules():
        for table in (mod._buffers, mod._parameters):
            for name, t in list(table.items()):
                if t is not None and t.is_mkldnn:
                    del table[name]
                    out.append((mod, name, t))
    return out
