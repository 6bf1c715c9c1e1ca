"""Predict the memory of a training step without allocating it.

    est = memlab.estimate(model_fn, batch_fn, optimizer_fn=lambda p: torch.optim.Adam(p))
    est.peak_bytes, est.peak_by_category, est.first_step_peak_bytes, est.steady_peak_bytes

How: the model is built on the ``meta`` device, its parameters recreated as fake CPU tensors
under ``FakeTensorMode`` (building inside the fake mode breaks some modules), and two steps run
on fake tensors -- the first, in which the optimizer creates its state, and a steady one. A
``TorchDispatchMode`` sees every storage an op returns and, through a weakref on the storage,
when it dies; those are the allocation events. The step runs inside ``memlab.track`` with this
fake source, so phases, categories and modules come from the very code that measures real runs.

A dispatch-level view misses buffers that kernels allocate and free inside one op (CPU
convolution backward's column buffers, for one: ARCHITECTURE.md, "Known traps").
``memlab.estimate_ops`` predicts them from shapes; each op's internal bytes are added as an
allocation that lives while the op runs, on top of its outputs.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from memlab.timeline import CATEGORIES, PHASES, RunResult, format_bytes
from memlab.tracking.sources import FakeSource

__all__ = ["Estimate", "EstimateError", "MaxBatch", "estimate", "max_batch_size"]

#: The subset of ``config.PRECISIONS`` that ``estimate(model_fn, batch_fn)`` models for a user's
#: own model: amp-fp16 needs a GradScaler step and int8 packed weights, neither of which a user
#: model's estimate sets up (an Experiment's estimate goes through its knobs instead).
USER_MODEL_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "amp-bf16")


class EstimateError(RuntimeError):
    """The model cannot run under fake tensors (the message names the op)."""


@dataclass(frozen=True, eq=False)
class Estimate:
    """A prediction of one training (or inference) step's tensor memory, by category."""

    peak_bytes: int
    first_step_peak_bytes: int
    steady_peak_bytes: int
    peak_by_category: dict[str, int]
    peak_by_phase: dict[str, int]
    activations_by_module: dict[str, int]
    elapsed_s: float
    first_step: RunResult
    steady: RunResult | None
    notes: tuple[str, ...] = ()
    label: str = "predicted"

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted": True,
            "peak_bytes": self.peak_bytes,
            "first_step_peak_bytes": self.first_step_peak_bytes,
            "steady_peak_bytes": self.steady_peak_bytes,
            "peak_by_category": dict(self.peak_by_category),
            "peak_by_phase": dict(self.peak_by_phase),
            "activations_by_module": dict(self.activations_by_module),
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        cats = ", ".join(f"{c}={format_bytes(v)}" for c, v in self.peak_by_category.items() if v)
        return (
            f"Estimate(predicted peak={format_bytes(self.peak_bytes)} [{cats}], "
            f"first step={format_bytes(self.first_step_peak_bytes)}, "
            f"steady={format_bytes(self.steady_peak_bytes)}, {self.elapsed_s * 1e3:.0f} ms)"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='text-align:left'>{c}</td><td style='text-align:right'>"
            f"{format_bytes(v)}</td></tr>"
            for c, v in self.peak_by_category.items()
            if v
        )
        return (
            f"<table><caption>memlab Estimate (predicted, not measured): peak "
            f"{format_bytes(self.peak_bytes)}</caption>{rows}</table>"
        )


# ----------------------------------------------------------------------------------------------
#: The fake tensors whose scalar reads (``aten._local_scalar_dense``, ``.item()``) answer 0: a
#: ``GradScaler``'s ``found_inf`` flags while its step runs, whose one data-dependent read is "did
#: any gradient overflow?". 0 is "no": the step a run takes unless its gradients overflow.
_READS_AS_ZERO: set[int] = set()


def _assume_finite_gradients(scaler: Any) -> None:
    """Make ``scaler.step`` (a ``torch.amp.GradScaler``) runnable on fake tensors: its
    ``found_inf`` reads answer "no overflow", so the optimizer step runs, as in a run whose
    gradients are finite (the usual step; a skipped one holds less, not more). Every other
    scalar read still fails with the op named."""
    inner = getattr(scaler, "_maybe_opt_step", None)
    if inner is None:  # a torch whose GradScaler has no such hook: the op error stays
        return

    def finite_step(optimizer: Any, optimizer_state: dict[str, Any], *a: Any, **k: Any) -> Any:
        flags = [id(t) for t in optimizer_state.get("found_inf_per_device", {}).values()]
        _READS_AS_ZERO.update(flags)
        try:
            return inner(optimizer, optimizer_state, *a, **k)
        finally:
            _READS_AS_ZERO.difference_update(flags)

    scaler._maybe_opt_step = finite_step


#: The source of the fake step running now (``_run_steps``), for what is modelled outside the
#: dispatcher (``_csr_products``).
_ACTIVE: list[FakeSource] = []


@contextlib.contextmanager
def _csr_products() -> Iterator[None]:
    """Add the sparse knob's CSR kernels' internal buffers to the fake step.

    ``memlab.knobs.sparsity._SparseMM`` cannot run torch's sparse kernels on fake tensors (the
    CSR constructor has no fake kernel), so under fake tensors it allocates only their outputs;
    the kernels' own buffers (``estimate_ops.csr_*_internal``, measured) are added here, as an
    op-internal transient right after each product, while the step runs."""
    from memlab import estimate_ops as eo
    from memlab.knobs import sparsity

    fn = sparsity._SparseMM
    forward, backward = fn.__dict__["forward"], fn.__dict__["backward"]

    def fwd(ctx: Any, values: Any, x: Any, crow: Any, col: Any, shape: tuple[int, int]) -> Any:
        out = forward.__func__(ctx, values, x, crow, col, shape)
        if _ACTIVE:
            m, k = shape
            copy = not x.t().is_contiguous()
            nnz = int(values.numel())
            _ACTIVE[-1].transient(
                eo.csr_mm_internal(m, k, int(x.shape[0]), nnz, values.element_size(), copy)
            )
        return out

    def bwd(ctx: Any, grad: Any) -> Any:
        grads = backward.__func__(ctx, grad)
        if _ACTIVE:
            values, x, _, _ = ctx.saved_tensors
            (m, k), n = ctx.shape, int(x.shape[0])
            nnz, es = int(values.numel()), values.element_size()
            copy = not grad.t().is_contiguous()  # MKL takes grad.t() as it is, or a copy
            extra = 0  # above grad_x and grad_values, the fake backward's survivors
            if ctx.needs_input_grad[1]:
                extra = eo.csr_mm_transposed_internal(m, k, n, nnz, es, copy)
                extra -= nnz * es if ctx.needs_input_grad[0] else 0  # not allocated yet
            if ctx.needs_input_grad[0]:
                # pattern zeros and grad.t().contiguous() live while sampled_addmm runs
                held = nnz * es + (m * n * es if copy else 0)
                extra = max(extra, held + eo.csr_sampled_addmm_internal(m, k, n, nnz, es))
            if extra > 0:
                _ACTIVE[-1].transient(extra)
        return grads

    fn.forward, fn.backward = staticmethod(fwd), staticmethod(bwd)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        fn.forward, fn.backward = forward, backward  # type: ignore[method-assign]


class _Uncacheable(Exception):
    """An op call the memo does not keep (see ``_OpMemo``)."""


#: The most op calls ``_OpMemo`` keeps (a few thousand distinct ones per workload; a search over
#: many shapes is cleared and starts again rather than grow without bound).
_MEMO_LIMIT = 200_000


#: ``_OpMemo.key``'s names, looked up once (``_key_types``): torch, FakeTensor, the strided
#: layout and the argument types kept by value.
_KEY_TYPES: tuple[Any, ...] = ()


def _key_types() -> tuple[Any, ...]:
    global _KEY_TYPES
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    scalars = frozenset(
        {
            int,
            float,
            bool,
            str,
            type(None),
            torch.dtype,
            torch.device,
            torch.layout,
            torch.memory_format,
        }
    )
    _KEY_TYPES = (torch, FakeTensor, torch.strided, scalars)
    return _KEY_TYPES


class _OpMemo:
    """What an op call gives under ``FakeTensorMode``, by the op and its arguments' metadata:
    which outputs are new tensors (and their metadata), which alias an input (in-place ops
    return it, views share its storage), and the bytes ``estimate_ops`` adds for the call.

    Why hand-written when ``FakeTensorMode`` has a cache of its own: its key is built in Python
    for every call, generically (``extract_tensor_metadata`` with seventeen fields per tensor
    and a recursive walk: ~40% of an estimate, profiled), and the recorder then reads the
    outputs again and re-derives the op-internal bytes. This memo keys on the same facts
    (every tensor's dtype, shape, stride, storage offset and size, layout, device,
    ``requires_grad``, conj/neg/inference bits; every other argument's type and value; the
    inference mode, default dtype and thread count) and only keeps calls that
    ``FakeTensorMode`` itself judged cacheable (its bypass counter unchanged, a hit or a miss
    counted), whose outputs are fresh strided tensors, the returned input, or views of an
    input. A new entry is replayed once and compared with the real output (metadata and
    storage size) before it is kept. Outputs are made as ``FakeTensorMode``'s cache makes
    them (``torch.empty_strided`` on meta, ``set_`` onto the input's storage for a view,
    wrapped in a ``FakeTensor``), so the storages the source sees are the same in number,
    size and lifetime. Kept for the worker process: the candidates of a search share most op
    calls (every optimizer op of an unchanged layer), and no entry depends on the experiment.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], Any] = {}

    @staticmethod
    def key(func: Any, args: Any, kwargs: dict[str, Any], nthreads: int) -> tuple[Any, ...]:
        torch, FakeTensor, strided, scalars = _KEY_TYPES or _key_types()
        parts: list[Any] = [
            func,
            torch.is_inference_mode_enabled(),
            torch.get_default_dtype(),
            nthreads,
        ]
        append = parts.append

        def add(v: Any) -> None:
            # the fast cases first, by exact type (a FakeTensor, a plain scalar: most of a
            # key's arguments); subclasses and containers go the general way below, and each
            # kind of value gives the same key part either way
            tv = type(v)
            if tv is FakeTensor or (tv not in scalars and isinstance(v, FakeTensor)):
                if v.constant is not None or v.layout is not strided:
                    raise _Uncacheable
                append(
                    (
                        v.dtype,
                        v.shape,
                        v.stride(),
                        v.storage_offset(),
                        v.untyped_storage().nbytes(),
                        v.device,
                        v.requires_grad,
                        v.is_conj(),
                        v.is_neg(),
                        v.is_inference(),
                    )
                )
            elif tv in scalars:
                append((tv, v))
            elif isinstance(v, torch.Tensor):
                raise _Uncacheable  # a real tensor: FakeTensorMode converts it
            elif isinstance(v, (list, tuple)):
                append((tv, len(v)))
                for x in v:
                    add(x)
            elif isinstance(v, tuple(scalars)):  # a subclass of one (an IntEnum, say)
                append((tv, v))
            else:
                raise _Uncacheable

        for a in args:
            add(a)
        for k, v in kwargs.items():
            append(k)
            add(v)
        return tuple(parts)

    @staticmethod
    def entry(
        func: Any, args: Any, kwargs: dict[str, Any], out: Any
    ) -> tuple[bool, tuple[Any, ...]]:
        """``(is a tuple, one spec per output)`` for a call's result, or ``_Uncacheable``."""
        import torch
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._pytree import tree_leaves

        outs = out if isinstance(out, tuple) else (out,)
        arg_storages = {
            int(a.untyped_storage()._cdata): i
            for i, a in enumerate(args)
            if isinstance(a, FakeTensor)
        }
        # storages of inputs that are not top-level arguments (in lists, keyword arguments):
        # an output on one of them is not described by an argument index
        nested = {
            int(t.untyped_storage()._cdata)
            for t in tree_leaves((args, kwargs))
            if isinstance(t, FakeTensor)
        }
        specs: list[Any] = []
        seen: set[int] = set()
        for o in outs:
            if not isinstance(o, FakeTensor) or o.constant is not None:
                raise _Uncacheable
            if o.layout is not torch.strided:
                raise _Uncacheable
            inplace = next((i for i, a in enumerate(args) if a is o), None)
            if inplace is not None:
                specs.append(("inplace", inplace))
                continue
            st = o.untyped_storage()
            cd = int(st._cdata)
            meta = (
                o.dtype,
                tuple(o.shape),
                o.stride(),
                o.storage_offset(),
                o.requires_grad,
                o.device,
                o.is_conj(),
                o.is_neg(),
            )
            if cd in nested and cd not in arg_storages:
                raise _Uncacheable
            if cd in arg_storages:
                if not (func.is_view or func in _ALIASING_NON_VIEWS):
                    raise _Uncacheable
                specs.append(("view", arg_storages[cd], meta))
            else:
                if cd in seen or o.storage_offset() != 0:
                    raise _Uncacheable
                seen.add(cd)
                specs.append(("new", int(st.nbytes()), meta))
        return isinstance(out, tuple), tuple(specs)

    @staticmethod
    def replay(mode: Any, args: Any, is_tuple: bool, specs: tuple[Any, ...]) -> Any:
        import torch

        if all(spec[0] == "inplace" for spec in specs):  # nothing to make
            outs_ = [args[spec[1]] for spec in specs]
            return tuple(outs_) if is_tuple else outs_[0]
        outs: list[Any] = []
        # Plain meta tensors, made with the dispatcher's Python layer off (FakeTensorMode is
        # still on the mode stack under the recorder and would fake them): ``empty_strided``
        # on meta and ``set_`` onto a meta storage run the same meta kernels either way, so
        # this is what FakeTensorMode's cache does under its ``in_kernel_invocation_manager``
        # (whose generator context was a tenth of a replay, profiled).
        with torch._C._DisableTorchDispatch():
            for spec in specs:
                if spec[0] == "inplace":
                    outs.append(args[spec[1]])
                    continue
                dtype, shape, stride, offset, rg, device, conj, neg = spec[2]
                t = torch.empty_strided(shape, stride, dtype=dtype, device="meta", requires_grad=rg)
                if conj:
                    torch._C._set_conj(t, True)
                if neg:
                    torch._C._set_neg(t, True)
                if spec[0] == "view":
                    t.set_(args[spec[1]].untyped_storage(), offset, shape, stride)
                outs.append(_fake(mode, t, device))
        return tuple(outs) if is_tuple else outs[0]

    @staticmethod
    def same(a: Any, b: Any, specs: tuple[Any, ...]) -> bool:
        """Whether replayed outputs ``a`` match the real ones ``b``: metadata, storage size,
        and storage identity (a view or in-place output is on the real one's storage, a new
        output on a storage of its own)."""
        import torch

        xs = a if isinstance(a, tuple) else (a,)
        ys = b if isinstance(b, tuple) else (b,)
        if (
            len(xs) != len(ys)
            or len(xs) != len(specs)
            or isinstance(a, tuple) != isinstance(b, tuple)
        ):
            return False
        for x, y, spec in zip(xs, ys, specs, strict=True):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            shared = x.untyped_storage()._cdata == y.untyped_storage()._cdata
            if shared != (spec[0] != "new"):
                return False
            if (x.dtype, x.shape, x.stride(), x.storage_offset(), x.requires_grad, x.device) != (
                y.dtype,
                y.shape,
                y.stride(),
                y.storage_offset(),
                y.requires_grad,
                y.device,
            ):
                return False
            if x.untyped_storage().nbytes() != y.untyped_storage().nbytes():
                return False
        return True


#: Per FakeTensorMode and device, the attributes ``FakeTensor.__new__`` gives a tensor it wraps
#: (``_fake`` copies them). Weak on the mode: it goes with its estimate.
_PROTOS: weakref.WeakKeyDictionary[Any, dict[Any, dict[str, Any]]] = weakref.WeakKeyDictionary()


def _fake(mode: Any, elem: Any, device: Any) -> Any:
    """``FakeTensor(mode, elem, device)`` for a fresh meta tensor ``elem``, made without
    ``FakeTensor.__new__``'s generic path (device normalisation, argument checks and fifteen
    attribute writes through descriptors: a third of a replay, profiled). The first tensor
    made for a mode and device goes through ``FakeTensor(...)`` itself and its instance
    attributes are kept; later ones are the same ``Tensor._make_subclass`` call with the
    same flags and a copy of those attributes, so the object is the one ``__new__`` makes
    (``__init__`` adds nothing outside ``torch.export``, which a fake step never runs)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorConfig

    by_device = _PROTOS.get(mode)
    proto = by_device.get(device) if by_device is not None else None
    if proto is None or FakeTensorConfig.debug:
        t = FakeTensor(mode, elem, device)
        if not FakeTensorConfig.debug:
            state = dict(t.__dict__)
            if state.pop("fake_mode") is mode and all(
                v is None for k, v in state.items() if k != "_fake_device"
            ):
                _PROTOS.setdefault(mode, {})[device] = state
        return t
    t = torch.Tensor._make_subclass(
        FakeTensor,
        elem,
        elem.requires_grad,
        dispatch_device=True,
        device_for_backend_keys=proto["_fake_device"],
    )
    if mode._allow_unsafe_data_ptr_access:  # as __new__ marks it
        torch._C._set_warn_deprecated_on_mutable_data_ptr(t)
    else:
        torch._C._set_throw_on_mutable_data_ptr(t)
    d = t.__dict__
    d.update(proto)
    d["fake_mode"] = mode
    if _CHECK_SHORTCUTS:  # against FakeTensor.__new__ on a twin of elem
        twin = torch.empty_strided(elem.shape, elem.stride(), dtype=elem.dtype, device="meta")
        ordinary = FakeTensor(mode, twin, device)
        keys = torch._C._dispatch_key_set
        assert d == ordinary.__dict__ and keys(t) == keys(ordinary), (d, ordinary.__dict__)
        _SHORTCUTS_CHECKED["FakeTensor"] = _SHORTCUTS_CHECKED.get("FakeTensor", 0) + 1
    return t


_MEMO = _OpMemo()

#: Ops whose output shares its input's storage without being a view op (no autograd view
#: relation). FakeTensorMode does not cache ``_unsafe_view`` (its cache would give the output
#: a storage of its own); the memo keeps it as what it is, an alias made with ``set_`` onto
#: the input's storage, as for views (128 calls a step in an encoder-decoder's attention:
#: an eighth of its estimate). Checked like every entry before it is kept.
_ALIASING_NON_VIEWS: set[Any] = set()


#: ``aten.view`` and ``aten._unsafe_view``: the ops whose misses ``_reshape_spec`` answers.
_RESHAPES: set[Any] = set()

#: Tests set this: every shortcut below is then also run the ordinary way and compared.
_CHECK_SHORTCUTS = False
_SHORTCUTS_CHECKED: dict[str, int] = {}

#: ``_constant_op``'s "not mine": the call goes the ordinary way.
_NO_SHORTCUT = object()


def _reshape_spec(args: Any, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """The memo spec (``("view", 0, metadata)``) of ``aten.view`` / ``aten._unsafe_view`` on a
    plain fake tensor, or None to go the ordinary way.

    FakeTensorMode answers both with ``fake_impls._view_meta``: ``torch._refs.
    _reshape_view_helper`` on the fake tensor, whose every inner op (``as_strided``,
    ``prims.split_dim``...) goes through FakeTensorMode's dispatch again -- about 3 ms a call,
    a sixth of an encoder-decoder's estimate, on the shapes a new batch size brings. Here the
    same Python function runs on a plain meta tensor on the same storage, offset, sizes and
    strides, with the Python dispatch layer off: the same algorithm on the same metadata
    calls the same meta kernels, so the view it returns has the same sizes, strides and
    offset. The output is made as a memo replay makes a view (``set_`` onto the input's
    storage): no storage is made, as under FakeTensorMode. Only where ``_view_meta`` would
    take that path (no symbolic sizes, ``backed_size_oblivious`` off, the tensor of the mode
    dispatching), on a tensor without a constant (constants are propagated by value) or the
    conj/neg bits; anything it refuses (a shape that needs a copy) goes the ordinary way,
    which raises as before. Not in
    inference mode: there a view of a normal tensor is a normal tensor while a fresh meta
    tensor is an inference tensor (FakeTensorMode does not cache such views either: their
    dispatch keys differ)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx.experimental import _config as fx_config

    if kwargs or len(args) != 2:
        return None
    a, shape = args
    if (
        type(a) is not FakeTensor
        or a.constant is not None
        or a.layout is not torch.strided
        or a.is_conj()
        or a.is_neg()
        or a.fake_mode.shape_env is not None
        or torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not a.fake_mode
        or fx_config.backed_size_oblivious
        or torch.is_inference_mode_enabled()
        or type(shape) not in (list, tuple)
        or any(type(n) is not int for n in shape)
    ):
        return None
    st = a.untyped_storage()
    try:
        with torch._C._DisableTorchDispatch():
            stand = torch.empty((0,), dtype=a.dtype, device="meta")
            stand.set_(st, a.storage_offset(), a.shape, a.stride())
            r = torch._refs._reshape_view_helper(stand, shape, allow_copy=False)
    except Exception:  # noqa: BLE001 - the ordinary dispatch raises it, with its message
        return None
    if r.untyped_storage()._cdata != st._cdata or r.is_conj() or r.is_neg():
        return None
    meta = (r.dtype, tuple(r.shape), r.stride(), r.storage_offset(), False, a.fake_device)
    return ("view", 0, (*meta, False, False))


def _constant_op(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """Adam's step counter without FakeTensorMode's slow path: ``aten.add_.Tensor`` with
    Python numbers and ``aten._local_scalar_dense`` (``.item()``) on a fake tensor holding a
    constant (``torch.tensor(0.0)`` under FakeTensorMode keeps the real value). Each call
    went through FakeTensorMode's cache key (refused: a constant), its dispatch and its
    constant propagation, twice per parameter per step (a twentieth of an estimate).

    What FakeTensorMode does for them (``_dispatch_impl``, every argument a constant or a
    number) is done here directly: the op runs on the real constant with the dispatcher's
    Python layer off (``no_dispatch``, as there); ``.item()`` returns the number; ``add_``
    updates the constant in place and FakeTensorMode returns the fake tensor the converter
    keeps for that constant -- this one, checked -- and allocates nothing. Anything else
    (a tensor argument, a constant larger than FakeTensorMode keeps, symbolic sizes, a
    constant the converter maps elsewhere, a fake tensor of another mode than the one
    dispatching) returns ``_NO_SHORTCUT``."""
    import torch
    from torch._subclasses.fake_tensor import CONSTANT_NUMEL_LIMIT

    a = args[0]
    c = a.constant
    if (
        c is None
        or type(c) is not torch.Tensor
        or a.fake_mode.shape_env is not None
        or torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not a.fake_mode
    ):
        return _NO_SHORTCUT
    for v in (*args[1:], *kwargs.values()):
        if type(v) not in (int, float, bool):
            return _NO_SHORTCUT
    if func is torch.ops.aten._local_scalar_dense.default:
        if len(args) != 1 or kwargs:
            return _NO_SHORTCUT
        with torch._C._DisableTorchDispatch():
            out = func(c)
        if _CHECK_SHORTCUTS:
            assert out == func(a), (func, out)
            _SHORTCUTS_CHECKED[str(func)] = _SHORTCUTS_CHECKED.get(str(func), 0) + 1
        return out
    if (
        c.numel() > CONSTANT_NUMEL_LIMIT
        or c.layout is not torch.strided
        or c.device.type == "meta"
        or a.fake_mode.fake_tensor_converter._get_memo(c) is not a
    ):
        return _NO_SHORTCUT
    if _CHECK_SHORTCUTS:  # the ordinary way, against the value this way gives
        with torch._C._DisableTorchDispatch():
            expected = func(c.clone(), *args[1:], **kwargs)
        out = func(*args, **kwargs)
        with torch._C._DisableTorchDispatch():  # real tensors: compared for real
            same = bool((c == expected).all())
        assert out is a and a.constant is c and same, (func, c, expected)
        _SHORTCUTS_CHECKED[str(func)] = _SHORTCUTS_CHECKED.get(str(func), 0) + 1
        return out
    with torch._C._DisableTorchDispatch():
        func(c, *args[1:], **kwargs)
    return a


def _check_shortcut(func: Any, args: Any, kwargs: dict[str, Any], out: Any, specs: Any) -> None:
    """With ``_CHECK_SHORTCUTS`` (tests): the ordinary dispatch's output against the
    shortcut's -- metadata, storage size and identity, as a memo entry is checked."""
    import torch

    ordinary = func(*args, **kwargs)
    assert _OpMemo.same(out, ordinary, specs), (func, out, ordinary)
    keys = torch._C._dispatch_key_set
    assert keys(out) == keys(ordinary), (func, keys(out), keys(ordinary))
    _SHORTCUTS_CHECKED[str(func)] = _SHORTCUTS_CHECKED.get(str(func), 0) + 1


def _bypasses() -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode

    return sum(FakeTensorMode.cache_bypasses.values())


def _dispatch_mode(source: FakeSource) -> Any:
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from memlab import estimate_ops

    nthreads = torch.get_num_threads()
    memo = _MEMO.entries
    scalar_read = torch.ops.aten._local_scalar_dense.default
    device_of = torch.ops.prim.device.default
    add_ = torch.ops.aten.add_.Tensor
    _ALIASING_NON_VIEWS.add(torch.ops.aten._unsafe_view.default)
    _RESHAPES.update((torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default))
    Tensor = torch.Tensor

    def record(out: Any, real: dict[int, int], internal: int) -> None:
        if isinstance(out, Tensor):
            source.saw(out, real.get(0))
        else:
            flat = out if isinstance(out, (tuple, list)) else tree_flatten(out)[0]
            for i, t in enumerate(flat):
                if isinstance(t, Tensor):
                    source.saw(t, real.get(i))
        if internal > 0:
            source.transient(internal)

    class _Recorder(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            # TorchDispatchMode's documented switch: without it every op's call goes through a
            # ``torch._disable_dynamo`` wrapper (~10% of an estimate, profiled); a fake step is
            # never compiled (``fuse="compile"`` is refused), so there is nothing to disable.
            return False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is device_of and type(args[0]) is FakeTensor:
                # ``t.device`` on a fake tensor (nn.Transformer asks it of every weight, each
                # call): what FakeTensorMode's handler answers (``_device_handler``), without
                # two dispatch modes' overhead; it allocates nothing.
                return args[0].fake_device
            kwargs = kwargs or {}
            if _READS_AS_ZERO and func is scalar_read:
                if id(args[0]) in _READS_AS_ZERO:
                    return False if args[0].dtype is torch.bool else 0
            if (func is scalar_read or func is add_) and type(args[0]) is FakeTensor:
                out = _constant_op(func, args, kwargs)
                if out is not _NO_SHORTCUT:
                    real = estimate_ops.real_output_bytes(func, args, kwargs, out)
                    internal = estimate_ops.internal_bytes(
                        func, args, kwargs, out, num_threads=nthreads
                    )
                    record(out, real, internal)
                    return out
            try:
                key: tuple[Any, ...] | None = _OpMemo.key(func, args, kwargs, nthreads)
                hit = memo.get(key)  # type: ignore[arg-type]
            except (_Uncacheable, TypeError):  # TypeError: an unhashable argument
                key, hit = None, None
            if hit is not None:
                for a in args:  # a loop: the generator it replaced was 3% of an estimate
                    if type(a) is FakeTensor:
                        mode = a.fake_mode
                        break
                else:
                    mode = next(a.fake_mode for a in args if isinstance(a, FakeTensor))
                is_tuple, specs, real, internal = hit
                out = _OpMemo.replay(mode, args, is_tuple, specs)
                record(out, real, internal)
                return out
            if key is not None and func in _RESHAPES:
                spec = _reshape_spec(args, kwargs)
                if spec is not None:
                    mode = args[0].fake_mode
                    out = _OpMemo.replay(mode, args, False, (spec,))
                    if _CHECK_SHORTCUTS:
                        _check_shortcut(func, args, kwargs, out, (spec,))
                    real = estimate_ops.real_output_bytes(func, args, kwargs, out)
                    internal = estimate_ops.internal_bytes(
                        func, args, kwargs, out, num_threads=nthreads
                    )
                    if len(memo) >= _MEMO_LIMIT:
                        memo.clear()
                    memo[key] = (False, (spec,), real, internal)
                    record(out, real, internal)
                    return out
            counted = (FakeTensorMode.cache_hits + FakeTensorMode.cache_misses, _bypasses())
            try:
                out = func(*args, **kwargs)
            except Exception as e:
                if isinstance(e, EstimateError):
                    raise
                raise EstimateError(
                    f"the op {func} cannot run under fake tensors: {type(e).__name__}: {e}"
                ) from e
            flat, _ = tree_flatten(out)
            # An output whose fake storage is smaller than the real one (the LSTM workspace,
            # 0 bytes under fake tensors) is counted at its real size.
            real = estimate_ops.real_output_bytes(func, args, kwargs, out)
            internal = estimate_ops.internal_bytes(func, args, kwargs, out, num_threads=nthreads)
            if (
                key is not None
                and (
                    func in _ALIASING_NON_VIEWS
                    or (
                        _bypasses() == counted[1]
                        and FakeTensorMode.cache_hits + FakeTensorMode.cache_misses > counted[0]
                    )
                )
                and any(isinstance(a, FakeTensor) for a in args)
            ):
                try:
                    is_tuple, specs = _OpMemo.entry(func, args, kwargs, out)
                    mode = next(a.fake_mode for a in args if isinstance(a, FakeTensor))
                    if _OpMemo.same(_OpMemo.replay(mode, args, is_tuple, specs), out, specs):
                        if len(memo) >= _MEMO_LIMIT:
                            memo.clear()
                        memo[key] = (is_tuple, specs, real, internal)
                except _Uncacheable:
                    pass
            for i, t in enumerate(flat):
                if isinstance(t, Tensor):
                    source.saw(t, real.get(i))
            if internal > 0:
                source.transient(internal)
            return out

    return _Recorder()


# ----------------------------------------------------------------------------------------------
def _fakeify(model: Any) -> None:
    """Give every parameter and buffer of a meta-device model a fake CPU tensor, keeping ties.
    Under a FakeTensorMode (as ``estimate`` calls it) a parameter is made as that mode makes
    ``torch.empty(shape, device="cpu")`` (an ``empty`` meta tensor in a ``FakeTensor``) and
    flagged a parameter in place (``_fake_parameter``), without two trips through the mode."""
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensor

    mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    cpu = torch.device("cpu")
    made: dict[int, Any] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                if mode is None:
                    made[id(p)] = nn.Parameter(
                        torch.empty(p.shape, dtype=p.dtype, device="cpu"),
                        requires_grad=p.requires_grad,
                    )
                else:
                    with torch._C._DisableTorchDispatch():
                        meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
                    fake = FakeTensor(mode, meta, cpu)
                    made[id(p)] = _fake_parameter(fake, p.requires_grad)
            mod._parameters[name] = made[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is None:
                continue
            if id(b) not in made:
                made[id(b)] = torch.zeros(b.shape, dtype=b.dtype, device="cpu")
            mod._buffers[name] = made[id(b)]


def _fake_parameter(fake: Any, requires_grad: bool) -> Any:
    """``nn.Parameter(fake, requires_grad)`` for a fresh FakeTensor that nothing else holds.
    For a tensor subclass ``nn.Parameter`` returns ``fake.detach().requires_grad_(...)`` flagged
    ``_is_param``: the detach goes through FakeTensorMode (~0.15 ms, once per parameter of
    every estimate) to make a second FakeTensor on the same storage, and the first is
    dropped. Flagging the fresh tensor itself leaves the same thing behind: one FakeTensor on
    that storage with the same metadata, a leaf without history at version 0."""
    import torch
    from torch import nn

    if _CHECK_SHORTCUTS:
        ordinary = nn.Parameter(fake, requires_grad=requires_grad)
    fake.requires_grad_(requires_grad)
    fake._is_param = True
    if _CHECK_SHORTCUTS:
        facts = lambda t: (  # noqa: E731
            type(t),
            t.__dict__,
            torch._C._dispatch_key_set(t),
            t.shape,
            t.stride(),
            t.storage_offset(),
            t.untyped_storage().nbytes(),
            t.untyped_storage()._cdata,
            t.requires_grad,
            t.is_leaf,
            t.grad_fn,
            t._version,
            isinstance(t, nn.Parameter),
        )
        assert facts(fake) == facts(ordinary), (facts(fake), facts(ordinary))
        _SHORTCUTS_CHECKED["Parameter"] = _SHORTCUTS_CHECKED.get("Parameter", 0) + 1
    return fake


def _default_loss(out: Any, y: Any) -> Any:
    import torch

    return torch.nn.functional.cross_entropy(out, y)


def _run_steps(
    model: Any,
    batches: Iterator[tuple[Any, Any]],
    step: Callable[[Any, Any], Any],
    optimizer: Any,
    n: int,
    *,
    runner_loop: bool = False,
) -> list[RunResult]:
    """``n`` tracked fake steps. With ``runner_loop`` the batch is loaded inside the block, in a
    ``data`` phase, while the previous one is still referenced -- as memlab's runner does
    (``x, y = next(batches)``), so two batches are live for a moment."""
    from memlab.tracking import Tracker

    out: list[RunResult] = []
    prev: tuple[Any, Any] | None = None
    for _ in range(n):
        source = FakeSource()
        if runner_loop:
            rec = Tracker(
                model,
                optimizer=optimizer,
                inputs=prev or (),
                sample_interval_s=None,
                _source=source,
            )
            with _dispatch_mode(source), rec:
                with rec.phase("data"):
                    x, y = next(batches)
                prev = None
                _ACTIVE.append(source)
                try:
                    step(x, y)
                finally:
                    _ACTIVE.pop()
            prev = (x, y)
        else:
            x, y = next(batches)
            rec = Tracker(
                model, optimizer=optimizer, inputs=(x, y), sample_interval_s=None, _source=source
            )
            with _dispatch_mode(source), rec:
                step(x, y)
        del x, y
        assert rec.result is not None
        out.append(rec.result)
    return out


def estimate(
    model_fn: Any,
    batch_fn: Callable[[], tuple[Any, Any]] | None = None,
    *,
    optimizer_fn: Callable[[Any], Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    precision: str = "fp32",
    checkpointing: str | None = None,
) -> Estimate:
    """Predict a step's peak tensor memory without allocating it.

    ``estimate(experiment)`` for memlab's own experiments, or ``estimate(model_fn, batch_fn,
    optimizer_fn=..., loss_fn=...)`` for any model: ``model_fn()`` returns an ``nn.Module``,
    ``batch_fn()`` ``(inputs, targets)``, ``optimizer_fn(params)`` an optimizer (none:
    inference), ``loss_fn(outputs, targets)`` the loss (default cross-entropy).
    """
    from memlab.config import Experiment

    if isinstance(model_fn, Experiment):
        return estimate_experiment(model_fn)
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a callable returning an nn.Module, got {model_fn!r}")
    if batch_fn is None or not callable(batch_fn):
        raise TypeError("batch_fn must be a callable returning (inputs, targets)")
    if precision not in USER_MODEL_PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(USER_MODEL_PRECISIONS)} here, got {precision!r}"
        )
    return _estimate(
        model_fn,
        batch_fn,
        optimizer_fn=optimizer_fn,
        loss_fn=loss_fn or _default_loss,
        precision=precision,
        checkpointing=checkpointing,
    )


def _estimate(
    model_fn: Callable[[], Any],
    batch_fn: Callable[[], tuple[Any, Any]],
    *,
    optimizer_fn: Callable[[Any], Any] | None,
    loss_fn: Callable[[Any, Any], Any],
    precision: str,
    checkpointing: str | None,
    prepare: Callable[[Any], Any] | None = None,
) -> Estimate:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    t0 = time.perf_counter()
    with torch.device("meta"):
        model = model_fn()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model_fn must return an nn.Module, got {type(model).__name__}")
    notes: list[str] = []
    with FakeTensorMode(allow_non_fake_inputs=True):
        _fakeify(model)
        if prepare is not None:
            model = prepare(model) or model
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        opt = optimizer_fn(list(model.parameters())) if optimizer_fn is not None else None
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if precision == "amp-bf16"
            else contextlib.nullcontext()
        )

        def batches() -> Iterator[tuple[Any, Any]]:
            while True:
                x, y = batch_fn()
                if precision == "bf16" and x.is_floating_point():
                    x = x.to(torch.bfloat16)
                yield x, y

        def train_step(x: Any, y: Any) -> None:
            with autocast:
                loss = loss_fn(model(x).float(), y)
            loss.backward()
            assert opt is not None
            opt.step()
            opt.zero_grad(set_to_none=True)

        def infer_step(x: Any, y: Any) -> None:
            with torch.no_grad(), autocast:
                loss_fn(model(x).float(), y)

        if opt is None:
            model.eval()
            results = _run_steps(model, batches(), infer_step, None, 1)
        else:
            results = _run_steps(model, batches(), train_step, opt, 2)
    return _combine(results, time.perf_counter() - t0, tuple(notes))


# ----------------------------------------------------------------------------------------------
def _swap_to_fake(model: Any, fake_mode: Any) -> None:
    """Replace a real model's parameters and buffers with fake copies (same shapes, dtypes,
    strides, storage sizes; no data), keeping ties. The real storages are then free to go.

    A tensor that is the whole of a storage no other parameter or buffer shares (every one in
    memlab's workloads) gets a fake tensor made as ``FakeTensorMode`` makes an op's output: an
    ``empty_strided`` meta tensor of its shape and strides in a ``FakeTensor``, checked to have
    the same storage size. ``fake_mode.from_tensor`` would give the same tensor but describes
    every tensor generically (views, symbolic sizes, subclasses): a sixth of a small model's
    estimate, measured. Anything else (a view into a larger storage, storages shared between
    tensors, quantized or sparse layouts) goes through ``from_tensor``, which keeps those
    relations."""
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensor, in_kernel_invocation_manager

    tensors: dict[int, Any] = {}
    for mod in model.modules():
        for t in (*mod._parameters.values(), *mod._buffers.values()):
            if t is not None:
                tensors[id(t)] = t
    owners: dict[int, int] = {}
    for t in tensors.values():
        if t.layout is torch.strided and not t.is_quantized:
            key = int(t.untyped_storage()._cdata)
            owners[key] = owners.get(key, 0) + 1

    def fake(t: Any, *, detach: bool = False) -> tuple[Any, bool]:
        """The fake tensor, and whether it is fresh (nothing else holds it: _fake_parameter)."""
        if (
            t.layout is torch.strided
            and not t.is_quantized
            and t.storage_offset() == 0
            and owners.get(int(t.untyped_storage()._cdata)) == 1
        ):
            with in_kernel_invocation_manager(fake_mode):
                meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            if meta.untyped_storage().nbytes() == t.untyped_storage().nbytes():
                return FakeTensor(fake_mode, meta, t.device), True
        return fake_mode.from_tensor(t.detach() if detach else t), False

    made: dict[int, Any] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in made:
                    f, fresh = fake(p, detach=True)
                    made[id(p)] = (
                        _fake_parameter(f, p.requires_grad)
                        if fresh
                        else nn.Parameter(f, requires_grad=p.requires_grad)
                    )
                mod._parameters[name] = made[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                if id(b) not in made:
                    made[id(b)] = fake(b)[0]
                mod._buffers[name] = made[id(b)]


def _stand_in_for_packed_linears(model: Any) -> int:
    """Replace each dynamically quantized Linear (``torch.ao.nn.quantized.dynamic.Linear``,
    precision ``int8``) by a module that allocates what its op does, for fake tensors: the
    packed weights are fbgemm objects outside PyTorch's allocator (a run's tensor account does
    not see them either) and ``quantized.linear_dynamic`` has no fake kernel. Measured with the
    recorder (torch 2.13 CPU, fbgemm): the op allocates its fp32 output and one more
    output-sized buffer, freed before it returns (the activations' int8 copy is fbgemm's own
    memory). Returns how many were replaced."""
    import torch
    from torch import nn

    class _PackedLinear(nn.Module):
        def __init__(self, out_features: int) -> None:
            super().__init__()
            self.out_features = out_features

        def forward(self, x: Any) -> Any:
            out = x.new_empty((*x.shape[:-1], self.out_features), dtype=torch.float32)
            if _ACTIVE:
                _ACTIVE[-1].transient(out.numel() * out.element_size())
            return out

    n = 0
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if hasattr(child, "_packed_params") and hasattr(child, "out_features"):
                setattr(mod, name, _PackedLinear(int(child.out_features)))
                n += 1
    return n


def estimate_experiment(exp: Any) -> Estimate:
    """Predict a memlab ``Experiment``'s step. The built-in models are a few MB, so they are
    built for real (knobs need real weights: magnitude pruning decides what a sparse layer keeps)
    with a one-batch data set, then swapped for fake tensors before any step runs."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memlab.config import QUANTIZED
    from memlab.knobs import build_experiment

    if (
        getattr(exp, "allocation", "dynamic") != "dynamic"
        or getattr(exp, "fuse", "none") == "compile"
    ):
        raise EstimateError(
            f"allocation {exp.allocation!r} / fuse {exp.fuse!r} cannot be estimated: the planned "
            "buffers and compiled kernels hold real tensors that fake tensors cannot replace "
            "(memlab/knobs/inference.py); measure it with memlab.run"
        )
    if getattr(exp, "weights", "resident") == "streamed":
        raise EstimateError(
            "weights 'streamed' cannot be estimated: the weights are copied in from a mapped "
            "file one layer at a time by hooks around each layer (memlab/knobs/streaming.py), "
            "which fake tensors cannot stand in for; expect about the largest layer twice (it "
            "and the next one prefetched) plus the activations, and measure it with memlab.run"
        )
    if exp.precision in QUANTIZED and exp.precision != "int8":
        # int8-static, int8-weight, int4-weight: the built quantized model on fake tensors
        from memlab.estimate_quant import estimate_quantized

        return estimate_quantized(exp)
    t0 = time.perf_counter()
    small = exp.replace(data="ram", data_size=exp.batch_size, num_workers=0, device="cpu")
    # Only pruning, compression and quantization read the weights' values (magnitudes, an
    # SVD, scales): otherwise the random initialisation (a seventh of an estimate's time for
    # the 8.4M-parameter MLP) is skipped, as the values never reach the fake step.
    values_needed = (
        exp.sparsity > 0 or exp.precision == "int8" or getattr(exp, "compression", "none") != "none"
    )
    with contextlib.nullcontext() if values_needed else _no_random_init():
        w = build_experiment(small, "cpu")
    x_real, y_real = next(w.make_batches(1))
    packed = _stand_in_for_packed_linears(w.model) if exp.precision == "int8" else 0
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        _swap_to_fake(w.model, fake_mode)
        if w.optimizer is not None:
            if w.make_optimizer is not None:
                w.rebuild_optimizer()
            else:  # a user workload without a builder: the same class and settings
                params = [p for p in w.model.parameters() if p.requires_grad]
                w.optimizer = type(w.optimizer)(params, **w.optimizer.defaults)
        x, y = fake_mode.from_tensor(x_real), fake_mode.from_tensor(y_real)
        del x_real, y_real
        if getattr(w, "grad_scaler", None) is not None:
            _assume_finite_gradients(w.grad_scaler)

        def batches() -> Iterator[tuple[Any, Any]]:
            while True:  # a new batch each step, as a data loader gives
                yield torch.empty_like(x), torch.empty_like(y)

        # The first step creates the optimizer's state; the second is steady, with the
        # previous batch still referenced while the next one loads.
        n = 2
        # One request of an inference run is the forward alone (Workload.infer, what the run
        # worker times and tracks); a training step is Workload.step.
        step = (lambda x, y: w.infer(x)) if exp.mode == "inference" else w.step
        sparse = exp.sparsity > 0 and exp.sparse_storage == "sparse"
        with torch.random.fork_rng(devices=[]), _csr_products() if sparse else _nothing():
            results = _run_steps(w.model, batches(), step, w.optimizer, n, runner_loop=True)
    notes = list(w.notes)
    if packed:
        notes.append(
            f"estimate: precision=int8: {packed} dynamically quantized Linear layers keep their "
            "weights packed outside PyTorch's allocator (fbgemm), as in a run: not counted; each "
            "product's output and its output-sized buffer are"
        )
    if exp.data == "memmap":
        notes.append(
            "estimate: data=memmap: each batch is numpy memory that torch wraps "
            "(torch.from_numpy), not allocated by torch, so a run does not count it as tensor "
            "bytes while the prediction does: expect the prediction higher by about the inputs"
        )
    if exp.precision == "amp-fp16" and exp.mode == "train":
        notes.append(
            "estimate: precision=amp-fp16: the gradient scaler's overflow check is answered "
            "'no overflow' (fake tensors hold no values), so every step is predicted as taken; "
            "a step a run skips holds less"
        )
    return _combine(results, time.perf_counter() - t0, tuple(notes))


_RANDOM_FILLS = (
    "aten.uniform_.default",
    "aten.normal_.default",
    "aten.random_.default",
    "aten.random_.from",
    "aten.random_.to",
    "aten.exponential_.default",
    "aten.bernoulli_.float",
)


def _no_random_init() -> Any:
    """A dispatch mode under which in-place random fills (``nn.init``'s ``uniform_``,
    ``normal_``...) leave the tensor as it is (uninitialised): for building a model whose
    values nobody reads."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _NoFill(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if str(func) in _RANDOM_FILLS:
                return args[0]
            return func(*args, **(kwargs or {}))

    return _NoFill()


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _combine(results: list[RunResult], elapsed: float, notes: tuple[str, ...]) -> Estimate:
    first = results[0]
    steady = max(results[1:], key=lambda r: r.peak_bytes) if len(results) > 1 else None
    top = first if steady is None or first.peak_bytes >= steady.peak_bytes else steady
    phases = {p: max(r.peak_by_phase.get(p, 0) for r in results) for p in PHASES}
    return Estimate(
        peak_bytes=top.peak_bytes,
        first_step_peak_bytes=first.peak_bytes,
        steady_peak_bytes=(steady or first).peak_bytes,
        peak_by_category={c: int(top.peak_by_category.get(c, 0)) for c in CATEGORIES},
        peak_by_phase={p: v for p, v in phases.items() if v},
        activations_by_module=dict(top.activations_by_module),
        elapsed_s=elapsed,
        first_step=first,
        steady=steady,
        notes=notes,
    )


@dataclass(frozen=True)
class MaxBatch:
    """The largest batch size predicted to fit a budget, and the real run that checks it."""

    batch_size: int
    budget_bytes: int
    predicted_peak_bytes: int
    estimates: int
    confirmed: RunResult | None = None
    searched: dict[int, int] = field(default_factory=dict)  # batch size -> predicted peak

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "budget_bytes": self.budget_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "estimates": self.estimates,
            "searched": {str(k): v for k, v in sorted(self.searched.items())},
            "confirmed": None
            if self.confirmed is None
            else {
                "status": self.confirmed.status,
                "peak_bytes": self.confirmed.peak_bytes,
                "error": self.confirmed.error,
            },
        }


def max_batch_size(
    experiment: Any, *, budget_bytes: int, confirm: bool = True, limit: int = 1 << 16
) -> MaxBatch:
    """The largest batch size whose predicted peak fits ``budget_bytes`` (searched on
    predictions alone: doubling, then bisection), confirmed by one real run under that budget
    (``confirm``). Works on CPU: no out-of-memory is needed to find the limit."""
    from memlab.config import ConfigError

    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ConfigError(f"budget_bytes must be a positive int, got {budget_bytes!r}")
    peaks: dict[int, int] = {}

    def peak(bs: int) -> int:
        if bs not in peaks:
            peaks[bs] = estimate_experiment(experiment.replace(batch_size=bs)).peak_bytes
        return peaks[bs]

    if peak(1) > budget_bytes:
        raise ConfigError(
            f"even batch size 1 is predicted to need {peak(1)} bytes, over the budget of "
            f"{budget_bytes} bytes"
        )
    lo, hi = 1, 2
    while hi <= limit and peak(hi) <= budget_bytes:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid
    confirmed = None
    if confirm:
        from memlab.runner import run

        confirmed = run(experiment.replace(batch_size=lo, budget_bytes=budget_bytes))
    return MaxBatch(lo, budget_bytes, peaks[lo], len(peaks), confirmed, dict(peaks))
