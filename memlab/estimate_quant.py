"""Predict the memory of a quantized inference request: ``int8-static``, ``int8-weight``,
``int4-weight``.

    from memlab.estimate_quant import estimate_quantized
    est = estimate_quantized(Experiment(workload="cnn", mode="inference", precision="int8-static"))

Each is predicted from the model as a run builds it (``memlab/knobs/quantization.py``), built
for real with a one-batch data set, then swapped onto fake tensors; two requests run through
``estimator._run_steps``, the same fake recorder and tracker as every estimate. What a fake
copy would get wrong is fixed before that:

- ``int8-static``: an FX graph of oneDNN int8 ops (``onednn.qlinear_pointwise``,
  ``onednn.qconv_pointwise``) with weights packed into opaque ``torch._mkldnn`` tensors and
  ``quantized_decomposed.quantize_per_tensor`` nodes between them. Each packed weight is
  replaced by a fake strided tensor of its shape and dtype, kept as a plain attribute (not a
  buffer): the ops' meta kernels (``torch/_meta_registrations.py``) read only its shape, and a
  run's tensor account does not see the packed weights either (an opaque tensor has no
  storage: oneDNN holds it). Every ``quantized_decomposed`` node is pointed at the Python
  function that IS that op's CPU kernel (``torch/ao/quantization/fx/_decomposed.py``,
  registered there as its ``CompositeExplicitAutograd`` implementation), so its
  ``mul``/``round``/``add``/``clamp`` intermediates are dispatched one by one, as in a run,
  where the op's meta kernel would show only its output (measured: ``quantize_per_tensor``
  holds two fp32 copies of its input at once, 8x its uint8 output -- the peak of all three
  built-in models). Ops not checked against a run raise ``EstimateError`` naming the op.
- ``int8-weight`` / ``int4-weight``: torchao tensor subclasses (``Int8Tensor``,
  ``IntxUnpackedToInt8Tensor``) as Linear weights. ``FakeTensorMode.from_tensor`` would turn
  one into a plain fake tensor (the dequantization would vanish), so each is rebuilt from fake
  copies of its inner tensors (``__tensor_flatten__`` / ``__tensor_unflatten__``, what
  ``torch.compile`` does), and registered as the parameter it was. A wrapper subclass has no
  storage of its own: a run's tracker counts it as the plain tensors inside it
  (``tracking/tracker.py``, ``_plain_tensors``), and so does the fake step.
  ``torchao.dequantize_affine`` (int4's dequantization) is a custom op whose fake
  kernel returns only its output; while the step runs, torchao's Python entry point calls the
  op's own decomposition instead (``OpOverload.decompose``: the kernel a run executes), so its
  ``to``/``sub``/``mul`` intermediates are seen. Any other non-aten op reaching the dispatcher
  raises ``EstimateError`` naming it.

The int8-static graph keeps a dynamic batch dimension, so one build serves every batch size:
the fake model is kept (``_CACHE``, a few entries) and a later estimate of the same experiment
at another batch size only runs the fake requests (``max_batch_size`` asks for many).
"""

from __future__ import annotations

import contextlib
import operator
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from memlab.estimator import (
    Estimate,
    EstimateError,
    _combine,
    _run_steps,
    _swap_to_fake,
)
from memlab.tracking.tracker import _plain_tensors

__all__ = ["ESTIMATED_QUANTIZED", "estimate_quantized"]

#: The quantized precisions this module predicts.
ESTIMATED_QUANTIZED: tuple[str, ...] = ("int8-static", "int8-weight", "int4-weight")

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

#: Namespaces of ops whose fake run is the real one's (aten: with ``estimate_ops``' internal
#: buffers, as in every estimate; prim: metadata).
_PLAIN_NAMESPACES = frozenset({"aten", "prim"})

#: Fake models kept for later batch sizes (an int8-static build takes 20-90 s on 2 cores).
_CACHE_SIZE = 4


@dataclass
class _Built:
    """An experiment's quantized model on fake tensors, ready for any batch size."""

    workload: Any
    fake_mode: Any
    x_shape: tuple[int, ...]
    x_dtype: Any
    y_shape: tuple[int, ...]
    y_dtype: Any
    notes: tuple[str, ...]
    #: Storages a run's account does not see (a weight-only subclass's inner tensors).
    unseen: list[Any] = field(default_factory=list)


_CACHE: OrderedDict[Any, _Built] = OrderedDict()


def estimate_quantized(exp: Any) -> Estimate:
    """Predict one inference request's peak tensor memory for a quantized ``Experiment``
    (``exp.precision`` in ``ESTIMATED_QUANTIZED``), as ``memlab.run`` would measure it: the
    real quantized model on fake tensors (module docstring). Raises ``EstimateError`` naming
    the precision, or the op, where that cannot be done exactly."""
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

        def request(x: Any, y: Any) -> Any:
            return w.infer(x)

        # Two requests, the second with the previous batch still referenced while the next
        # one loads (the runner's loop): what a run's measured block holds.
        with _decomposed_dequantize(), _only_checked_ops(exp.precision):
            results = _run_steps(w.model, batches(), request, None, 2, runner_loop=True)
    return _combine(results, time.perf_counter() - t0, built.notes)


def _cache_key(exp: Any) -> Any:
    """The experiment up to what does not change the quantized model: the batch size (the
    int8-static graph's batch dimension is dynamic; a batch of 1 is kept apart, export may
    specialise it) and the data and run fields."""
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
    packed = _unregister(w.model, lambda t: bool(t.is_mkldnn))
    subclassed = _unregister(w.model, _is_subclass)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    unseen: list[Any] = []
    with fake_mode:
        _swap_to_fake(w.model, fake_mode)
        # Packed weights: plain attributes, not buffers or parameters: the tracker counts a
        # model's buffers and parameters at entry, and a run's account does not see oneDNN's
        # opaque tensors (no storage in PyTorch's allocator).
        for owner, name, t in packed:
            object.__setattr__(owner, name, torch.empty(t.shape, dtype=t.dtype))
        # torchao's wrappers: parameters again, around fake inner tensors; the tracker counts
        # a wrapper parameter as the plain tensors inside it, as in a run.
        for owner, name, t in subclassed:
            fake = _fake_subclass(t.detach(), fake_mode)
            if isinstance(t, torch.nn.Parameter):
                owner._parameters[name] = torch.nn.Parameter(fake, requires_grad=False)
            else:
                owner._buffers[name] = fake
            unseen.extend(_plain_tensors(fake))  # what the tracker counts
    packed_bytes = sum(t.numel() * t.element_size() for _, _, t in packed)
    inner_bytes = sum(t.untyped_storage().nbytes() for t in unseen)
    del packed, subclassed  # the real weights go with their last reference
    note = (
        f"estimate: precision={exp.precision}: the quantized model was built for real and run "
        "on fake tensors"
    )
    if exp.precision == "int8-static":
        note += (
            "; each quantize node's fp32 intermediates are counted (its kernel's own ops run "
            "one by one)"
        )
    if packed_bytes:
        note += (
            f"; {packed_bytes} bytes of int8 weights packed by oneDNN into opaque tensors are "
            "outside PyTorch's allocator, as in a run: not counted"
        )
    if inner_bytes:
        note += (
            f"; {len(unseen)} tensors ({inner_bytes} bytes) inside torchao's quantized weights "
            "are counted as parameters, as a run counts them; each dequantized weight is"
        )
    return _Built(
        workload=w,
        fake_mode=fake_mode,
        x_shape=tuple(x_real.shape),
        x_dtype=x_real.dtype,
        y_shape=tuple(y_real.shape),
        y_dtype=y_real.dtype,
        notes=(*w.notes, note),
        unseen=unseen,
    )


def _op_name(op: Any) -> str:
    return f"{op.namespace}.{op._schema.name.split('::')[1]}.{op._overloadname}"


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
            name = _op_name(target)
            if target.namespace in _PLAIN_NAMESPACES or name in _CHECKED_ONEDNN:
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
        if target in vars(operator).values():
            continue  # getitem on an op's tuple, arithmetic on sizes
        raise EstimateError(
            f"precision 'int8-static': the call {getattr(target, '__name__', target)!r} in the "
            "quantized graph cannot be estimated (not an aten, oneDNN or quantized_decomposed "
            "op); measure it with memlab.run"
        )
    if changed:
        gm.recompile()


def _is_subclass(t: Any) -> bool:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return bool(is_traceable_wrapper_subclass(t))


def _unregister(model: Any, which: Any) -> list[tuple[Any, str, Any]]:
    """Remove the parameters and buffers ``which`` selects from ``model``; returns
    ``(owner, name, tensor)`` for each, for a fake stand-in to take its place."""
    out: list[tuple[Any, str, Any]] = []
    for mod in model.modules():
        for table in (mod._buffers, mod._parameters):
            for name, t in list(table.items()):
                if t is not None and which(t):
                    del table[name]
                    out.append((mod, name, t))
    return out


def _fake_subclass(t: Any, fake_mode: Any) -> Any:
    """A wrapper subclass rebuilt around fake copies of its inner tensors."""
    if not _is_subclass(t):
        return fake_mode.from_tensor(t)
    names, ctx = t.__tensor_flatten__()
    inner = {n: _fake_subclass(getattr(t, n), fake_mode) for n in names}
    return type(t).__tensor_unflatten__(inner, ctx, t.size(), t.stride())


@contextlib.contextmanager
def _decomposed_dequantize() -> Iterator[None]:
    """While a fake step runs, torchao's ``dequantize_affine`` runs the decomposition of its
    custom op (the kernel a real run executes, ``CompositeImplicitAutograd``) instead of the op,
    whose fake kernel allocates only the output: its intermediates are then dispatched and
    recorded. Nothing is changed where torchao is not installed or has no such entry point."""
    try:
        import torch
        from torchao.quantization import quant_primitives as qp
    except ImportError:
        yield
        return
    original = getattr(qp, "_dequantize_affine", None)
    op = getattr(getattr(torch.ops, "torchao", None), "dequantize_affine", None)
    if original is None or op is None:
        yield
        return

    def decomposed(*args: Any, **kwargs: Any) -> Any:
        return op.default.decompose(*args, **kwargs)

    qp._dequantize_affine = decomposed
    try:
        yield
    finally:
        qp._dequantize_affine = original


def _only_checked_ops(precision: str) -> Any:
    """A dispatch mode under the estimate's recorder that refuses every op outside aten, prim
    and the checked oneDNN ops, naming it: a custom op's fake kernel shows its output only,
    where a run would see its intermediates too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Checked(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            ns = getattr(func, "namespace", "aten")
            if ns not in _PLAIN_NAMESPACES and _op_name(func) not in _CHECKED_ONEDNN:
                raise EstimateError(
                    f"precision {precision!r}: the op {_op_name(func)} cannot be estimated: "
                    "its fake kernel allocates only its output, and what the real kernel "
                    "allocates inside was not checked against a run; measure it with memlab.run"
                )
            return func(*args, **(kwargs or {}))

    return _Checked()
