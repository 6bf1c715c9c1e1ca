"""``memlab.track``: exact, event-based tensor memory of a block of PyTorch code.

    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    rec.result.peak_bytes, rec.result.peak_by_category, rec.result.timeline

How it sees everything: on CPU, every allocation and free of PyTorch's CPU allocator goes through
memlab's recorder (``_alloc.cpp``), op-internal buffers included; on CUDA, the caching
allocator's own counters and trace (``torch.cuda.memory``). Phases come from hooks: module
forward hooks (forward), ``torch.autograd.backward``/``grad`` (backward), the optimizer step
hooks (optimizer), and ``rec.phase("data")`` for the user's own. Categories are assigned after
the block, once every block's life is known (``attribution.py``).
"""

from __future__ import annotations

import contextlib
import functools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from memlab.timeline import PHASES, ProcessSeries, RunResult
from memlab.tracking import procmem
from memlab.tracking.attribution import CategoryMark, Mark, attribute
from memlab.tracking.sources import EventSource, NativeSource, default_source

__all__ = ["track", "Tracker"]

SampleCallback = Callable[[float, dict[str, Any]], None]


# ----------------------------------------------------------------------------------------
# Process-wide state: one recorder, one current phase, one module stack, shared by every
# active block (so nested or repeated blocks see the same events and the same marks).
# ----------------------------------------------------------------------------------------
class _State:
    def __init__(self) -> None:
        self.blocks: list[Tracker] = []
        self.phase = "other"
        self.stack: list[int] = []
        self.module_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.module_names: dict[int, str] = {}
        self.model_hooks: dict[int, tuple[list[Any], int]] = {}
        self.param_hooks: dict[int, tuple[list[Any], int]] = {}
        self.global_hooks: list[Any] = []
        self.patched: dict[str, Callable[..., Any]] = {}
        self.optimizers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.roots: weakref.WeakSet[Any] = weakref.WeakSet()  # models passed to track()
        self.source: EventSource | None = None

    def event_count(self) -> int:
        return self.source.event_count() if self.source is not None else 0


_S = _State()


def _mark(kind: str, value: str = "") -> None:
    idx = _S.event_count()
    t = time.monotonic_ns()
    for b in _S.blocks:
        b._marks.append(Mark(idx - b._ev_start, t, kind, value))


def _set_phase(phase: str) -> None:
    _S.phase = phase
    _mark("phase", phase)


def _mark_category(tensors: Iterable[Any], category: str) -> None:
    if not _S.blocks:
        return
    idx = _S.event_count()
    now = time.monotonic_ns()
    for t in tensors:
        try:
            addr = _addr(t)
        except Exception:  # noqa: BLE001 - sparse, meta or fake tensors have no storage
            continue
        if addr == 0:
            continue
        for b in _S.blocks:
            b._cat_marks.append(CategoryMark(idx - b._ev_start, addr, category, now))


def _addr(t: Any) -> int:
    if _S.source is not None:
        return _S.source.addr(t)
    return int(t.untyped_storage().data_ptr())


def _set_tag() -> None:
    if _S.source is not None:
        _S.source.set_tag(_S.stack[-1] if _S.stack else 0)


# -- hooks ------------------------------------------------------------------------------
def _pre_forward(module: Any, args: Any) -> None:
    mid = _S.module_ids.get(module, 0)
    if _S.phase == "backward":
        if not _S.stack:
            _mark("recompute_start")
    elif module in _S.roots:
        import torch

        _S.stack.clear()
        _set_phase("forward" if torch.is_grad_enabled() else "inference")
    _S.stack.append(mid)
    _set_tag()


def _post_forward(module: Any, args: Any, output: Any) -> None:
    if _S.stack:
        _S.stack.pop()
    _set_tag()
    if _S.phase == "backward" and not _S.stack:
        _mark("recompute_end")


def _opt_pre(opt: Any, args: Any, kwargs: Any) -> None:
    _S.optimizers.add(opt)
    _mark_category(_grads_of(opt), "gradients")
    _set_phase("optimizer")


def _opt_post(opt: Any, args: Any, kwargs: Any) -> None:
    _mark_category(_optimizer_state(opt), "optimizer_state")
    _set_phase("other")


def _grad_hook(p: Any) -> None:
    if p.grad is not None:
        _mark_category([p.grad], "gradients")


def _wrap_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        outer = _S.phase
        if outer != "backward":
            _set_phase("backward")
        try:
            return fn(*args, **kwargs)
        finally:
            if outer != "backward":
                _set_phase("other")

    return wrapped


def _install_global_hooks() -> None:
    import torch

    if _S.global_hooks:
        return
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    _S.global_hooks = [
        register_optimizer_step_pre_hook(_opt_pre),
        register_optimizer_step_post_hook(_opt_post),
    ]
    # torch.Tensor.backward calls torch.autograd.backward by attribute, so patching the module
    # attribute sees loss.backward() too (torch/_tensor.py).
    for name in ("backward", "grad"):
        orig = getattr(torch.autograd, name)
        _S.patched[name] = orig
        setattr(torch.autograd, name, _wrap_backward(orig))


def _remove_global_hooks() -> None:
    import torch

    for h in _S.global_hooks:
        h.remove()
    _S.global_hooks = []
    for name, orig in _S.patched.items():
        setattr(torch.autograd, name, orig)
    _S.patched = {}


def _hook_model(model: Any, with_optimizer: bool) -> None:
    key = id(model)
    if key in _S.model_hooks:
        hooks, n = _S.model_hooks[key]
        _S.model_hooks[key] = (hooks, n + 1)
        return
    hooks = []
    for name, mod in model.named_modules():
        if mod not in _S.module_ids:
            mid = len(_S.module_names) + 1
            _S.module_ids[mod] = mid
            _S.module_names[mid] = name or type(model).__name__
        hooks.append(mod.register_forward_pre_hook(_pre_forward))
        hooks.append(mod.register_forward_hook(_post_forward, always_call=True))
        if _pruned_weights_of(mod):  # registered after prune's hook, so it runs after it
            hooks.append(mod.register_forward_pre_hook(_pruned_pre_forward))
    if not with_optimizer:
        # Without an optimizer, gradients are found as autograd accumulates them; with one, its
        # step pre-hook and the exit marks find them (a hook per parameter costs ~1 us a call).
        for p in model.parameters():
            if p.requires_grad:
                hooks.append(p.register_post_accumulate_grad_hook(_grad_hook))
    _S.roots.add(model)
    _S.model_hooks[key] = (hooks, 1)


def _unhook_model(model: Any) -> None:
    key = id(model)
    hooks, n = _S.model_hooks[key]
    if n > 1:
        _S.model_hooks[key] = (hooks, n - 1)
        return
    for h in hooks:
        h.remove()
    del _S.model_hooks[key]
    _S.roots.discard(model)


# -- walking what is live -----------------------------------------------------------------
def _tensors_in(obj: Any) -> Iterator[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _tensors_in(v)


def _model_state(model: Any) -> tuple[list[Any], list[Any]]:
    """(parameters, buffers and pruned weights; gradients) of ``model``, in one walk."""
    if model is None:
        return [], []
    params: list[Any] = []
    others: list[Any] = []
    seen: set[int] = set()
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        others.extend(b for b in mod._buffers.values() if b is not None)
        others.extend(_pruned_weights_of(mod))
    grads = [p.grad for p in params if p.grad is not None]
    return params + others, grads


def _pruned_weights(model: Any) -> list[Any]:
    """torch.nn.utils.prune keeps ``name_orig`` (a parameter) and ``name_mask`` (a buffer) and
    recomputes ``name = name_orig * name_mask`` as a plain attribute before every forward
    (torch/nn/utils/prune.py, BasePruningMethod.apply): model state, not an activation."""
    return [t for mod in model.modules() for t in _pruned_weights_of(mod)]


def _pruned_weights_of(mod: Any) -> list[Any]:
    import torch

    out = []
    for key in list(mod._parameters):
        if key.endswith("_orig"):
            name = key[: -len("_orig")]
            t = mod.__dict__.get(name)
            if isinstance(t, torch.Tensor) and f"{name}_mask" in mod._buffers:
                out.append(t)
    return out


def _pruned_pre_forward(module: Any, args: Any) -> None:
    """Runs after prune's own pre-hook has recomputed the weight: claim it as a parameter."""
    _mark_category(_pruned_weights_of(module), "parameters")


def _grads_of(opt: Any) -> list[Any]:
    return [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]


def _optimizer_state(opt: Any) -> list[Any]:
    return list(_tensors_in(list(opt.state.values())))


def _storage_key(t: Any) -> tuple[int, int, str] | None:
    try:
        s = t.untyped_storage()
        return _addr(t), int(s.nbytes()), str(t.device)
    except Exception:  # noqa: BLE001 - tensors without storage (sparse, fake) are skipped
        return None


# ----------------------------------------------------------------------------------------
class Tracker:
    """The object ``memlab.track`` yields. ``result`` is set when the block exits."""

    def __init__(
        self,
        model: Any = None,
        *,
        optimizer: Any = None,
        inputs: Any = (),
        sample_interval_s: float | None = 0.01,
        on_sample: SampleCallback | None = None,
        budget_bytes: int | None = None,
        _source: EventSource | None = None,
    ) -> None:
        if budget_bytes is not None and (
            isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0
        ):
            raise ValueError(f"budget_bytes must be a positive int or None, got {budget_bytes!r}")
        if sample_interval_s is not None and sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be > 0 or None, got {sample_interval_s}")
        optimizers = (
            []
            if optimizer is None
            else list(optimizer)
            if isinstance(optimizer, (list, tuple))
            else [optimizer]
        )
        for o in optimizers:
            if not hasattr(o, "param_groups") or not hasattr(o, "state"):
                raise TypeError(
                    f"optimizer must be a torch.optim.Optimizer, got {type(o).__name__}"
                )
        if model is not None and not hasattr(model, "named_modules"):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.optimizers = optimizers
        self.inputs = inputs
        self.sample_interval_s = sample_interval_s
        self.on_sample = on_sample
        self.budget_bytes = budget_bytes
        self._source = _source
        self.result: RunResult | None = None
        self._marks: list[Mark] = []
        self._cat_marks: list[CategoryMark] = []
        self._ev_start = 0
        self._entry: dict[int, tuple[int, str]] = {}
        self._sampler: procmem.ProcessSampler | None = None
        self._device = "cpu"
        self._cuda_entry = 0

    # -- public helpers -------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a user phase (e.g. ``data``) for the code inside the ``with``."""
        if name not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {name!r}")
        outer = _S.phase
        _set_phase(name)
        try:
            yield
        finally:
            _set_phase(outer)

    def step(self, label: str = "step") -> None:
        """Mark a step boundary on the timeline."""
        _mark("step", label)

    def live_bytes(self) -> int:
        """Tensor bytes live now, by the same account as ``peak_bytes`` (entry + rise)."""
        if self._device.startswith("cuda"):
            import torch

            return (
                int(torch.cuda.memory_allocated(self._device))
                - self._cuda_entry
                + self._entry_total
            )
        assert _S.source is not None
        return _S.source.live() - self._live_at_entry + self._entry_total

    # -- entry / exit -----------------------------------------------------------------------
    def _entry_storages(self) -> dict[int, tuple[int, str]]:
        blocks: dict[int, tuple[int, str]] = {}
        state, grads = _model_state(self.model)
        groups = [
            (state, "parameters"),
            (grads, "gradients"),
            ([t for o in self.optimizers for t in _grads_of(o)], "gradients"),
            ([t for o in self.optimizers for t in _optimizer_state(o)], "optimizer_state"),
            (list(_tensors_in(self.inputs)), "inputs"),
        ]
        for tensors, cat in groups:
            for t in tensors:
                key = _storage_key(t)
                if key is None or key[0] == 0 or key[0] in blocks:
                    continue
                if key[2] != self._device and not (key[2] == "cpu" and self._device == "cpu"):
                    continue  # a storage on another device does not count toward this device
                blocks[key[0]] = (key[1], cat)
                if self._device == "cpu" and _S.source is not None:
                    _S.source.adopt(t, key[1])
        return blocks

    def _first_tensors(self) -> Iterator[Any]:
        if self.model is not None:
            yield from self.model.parameters()
            yield from self.model.buffers()
        yield from _tensors_in(self.inputs)

    def _detect_device(self) -> str:
        for t in self._first_tensors():
            if t.device.type == "cuda":
                return str(t.device if t.device.index is not None else "cuda:0")
        return "cpu"

    def __enter__(self) -> Tracker:

        self._device = self._detect_device()
        if self._source is not None:
            if _S.blocks and _S.source is not self._source:
                raise RuntimeError("memlab.track blocks with different event sources cannot nest")
            _S.source = self._source
        elif self._device == "cpu":
            if _S.blocks and not isinstance(_S.source, NativeSource):
                raise RuntimeError("memlab.track blocks with different event sources cannot nest")
            if not isinstance(_S.source, NativeSource):
                _S.source = default_source()
        else:
            _S.source = None
        if not _S.blocks:
            _install_global_hooks()
            if _S.source is not None:
                _S.source.clear()
                _S.source.set_recording(True)
        if self.model is not None:
            _hook_model(self.model, with_optimizer=bool(self.optimizers))
        self._entry = self._entry_storages()
        self.inputs = None  # holding them would keep them alive past the user's own `del`
        self._entry_total = sum(b for b, _ in self._entry.values())
        self._initial_phase = _S.phase
        procmem.reset_peak_rss()
        self._t0 = time.monotonic_ns()
        if self._device.startswith("cuda"):
            self._cuda_enter()
        self._live_at_entry = _S.source.live() if _S.source is not None else 0
        self._ev_start = _S.event_count()
        _S.blocks.append(self)
        if self.sample_interval_s is not None:
            cb = None if self.on_sample is None else self._emit_sample
            self._sampler = procmem.ProcessSampler(
                self.sample_interval_s, t0_ns=self._t0, on_sample=cb
            ).start()
        if self.budget_bytes is not None:
            try:
                self._set_budget()
            except BaseException as e:  # over budget already: clean up as a failed block would
                self.__exit__(type(e), e, e.__traceback__)
                raise
        return self

    def _set_budget(self) -> None:
        """A simulated device limit: an allocation that would take this block's account past
        ``budget_bytes`` raises ``torch.OutOfMemoryError``, as a full GPU would."""
        import torch

        assert self.budget_bytes is not None
        if self._entry_total >= self.budget_bytes:
            raise torch.OutOfMemoryError(
                f"memlab budget exceeded: {self._entry_total} bytes are live at entry, "
                f"the budget is {self.budget_bytes} bytes"
            )
        if self._device.startswith("cuda"):
            dev = torch.device(self._device)
            total = torch.cuda.get_device_properties(dev).total_memory
            limit = self._cuda_entry - self._entry_total + self.budget_bytes
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), dev)
        else:
            assert _S.source is not None
            _S.source.set_limit(self.budget_bytes - self._entry_total + self._live_at_entry)

    def _clear_budget(self) -> None:
        if self.budget_bytes is None:
            return
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.set_per_process_memory_fraction(1.0, torch.device(self._device))
        elif _S.source is not None:
            _S.source.set_limit(0)

    def _emit_sample(self, t: float, row: dict[str, int | None]) -> None:
        assert self.on_sample is not None
        self.on_sample(t, {"tensor_bytes": self.live_bytes(), "phase": _S.phase, **row})

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._clear_budget()
        ev_end = _S.event_count()
        duration = (time.monotonic_ns() - self._t0) / 1e9
        process = self._sampler.stop() if self._sampler is not None else None
        # Exit marks: what is a parameter / gradient / optimizer state now.
        for o in {id(o): o for o in [*self.optimizers, *_S.optimizers]}.values():
            _mark_category(_grads_of(o), "gradients")
            _mark_category(_optimizer_state(o), "optimizer_state")
        params, grads = _model_state(self.model)
        _mark_category(grads, "gradients")
        _mark_category(params, "parameters")
        _S.blocks.remove(self)
        if self.model is not None:
            _unhook_model(self.model)
        events = np.zeros((0, 4), dtype=np.int64)
        if _S.source is not None:
            events = _S.source.events(self._ev_start, ev_end)
        if not _S.blocks:
            _remove_global_hooks()
            _S.phase = "other"
            _S.stack.clear()
            if _S.source is not None:
                _S.source.set_recording(False)
                _S.source.clear()
                _S.source.set_tag(0)
        cuda_stats = None
        if self._device.startswith("cuda"):
            events, cuda_stats = self._cuda_exit(events)
        att = attribute(
            events,
            t0_ns=self._t0,
            entry_blocks=self._entry,
            marks=self._marks,
            category_marks=self._cat_marks,
            initial_phase=self._initial_phase,
            module_names=_S.module_names,
            source=self._source_name(cuda_stats is not None),
        )
        notes: list[str] = []
        packed = (
            [n for n, m in self.model.named_modules() if hasattr(m, "_packed_params")]
            if self.model is not None
            else []
        )
        if packed:
            notes.append(
                f"{len(packed)} quantized layers keep their weights packed outside PyTorch's "
                "allocator (fbgemm), so those bytes are not in the tensor account"
            )
        if cuda_stats is not None and cuda_stats.get("peak", 0) > att.peak_bytes:
            notes.append("CUDA allocator peak exceeds the traced peak; trace may be truncated")
        self.result = RunResult(
            peak_bytes=att.peak_bytes,
            peak_by_category=att.peak_by_category,
            timeline=att.timeline,
            process=process if process is not None else ProcessSeries.empty(),
            entry_by_category=att.entry_by_category,
            end_by_category=att.end_by_category,
            peak_by_phase=att.peak_by_phase,
            activations_by_module=att.activations_by_module,
            peak_time_s=att.peak_time_s,
            peak_phase=att.peak_phase,
            duration_s=duration,
            device=self._device,
            rss_peak_bytes=process.peak("rss") if process is not None else None,
            rss_anon_peak_bytes=process.peak("rss_anon") if process is not None else None,
            rss_file_peak_bytes=process.peak("rss_file") if process is not None else None,
            rss_hwm_bytes=process.peak("rss_hwm") if process is not None else None,
            cuda=cuda_stats,
            status=_status_of(exc),
            error=None if exc is None else f"{type(exc).__name__}: {exc}",
            notes=tuple(notes),
        )

    def _source_name(self, cuda: bool) -> str:
        if self._source is not None:
            return getattr(self._source, "name", "custom")
        return "cuda-allocator" if cuda else "cpu-allocator"

    # -- CUDA ------------------------------------------------------------------------------
    def _cuda_enter(self) -> None:
        import torch

        dev = torch.device(self._device)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        self._cuda_entry = int(torch.cuda.memory_allocated(dev))
        self._wall_minus_mono = time.time_ns() - time.monotonic_ns()
        # context=None: the trace needs addresses, sizes and times, not stacks; capturing
        # stacks also broke custom autograd Functions under checkpointing on torch 2.11.
        torch.cuda.memory._record_memory_history(max_entries=1_000_000, context=None, device=dev)

    def _cuda_exit(self, _cpu_events: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        import torch

        dev = torch.device(self._device)
        torch.cuda.synchronize(dev)
        snap = torch.cuda.memory._snapshot(dev)
        torch.cuda.memory._record_memory_history(enabled=None, device=dev)
        stats = {
            "allocated": int(torch.cuda.memory_allocated(dev)),
            "reserved": int(torch.cuda.memory_reserved(dev)),
            "peak": int(torch.cuda.max_memory_allocated(dev)),
            "allocated_at_entry": self._cuda_entry,
        }
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        trace = snap["device_traces"][idx] if idx < len(snap["device_traces"]) else []
        t0_wall_us = (self._t0 + self._wall_minus_mono) / 1e3
        rows = []
        for e in trace:
            if e.get("time_us", t0_wall_us) < t0_wall_us:
                continue
            if e["action"] == "alloc":
                rows.append((e["time_us"], e["addr"], e["size"]))
            elif e["action"] == "free_completed":
                rows.append((e["time_us"], e["addr"], -e["size"]))
        ev = np.zeros((len(rows), 4), dtype=np.int64)
        if rows:
            arr = np.asarray(rows, dtype=np.float64)
            ev[:, 0] = (arr[:, 0] * 1e3 - self._wall_minus_mono).astype(np.int64)
            ev[:, 1] = arr[:, 1].astype(np.int64)
            ev[:, 2] = arr[:, 2].astype(np.int64)
        # Marks were taken as event counts of the CPU recorder; on CUDA, place them by time.
        times = ev[:, 0]
        self._marks = [
            Mark(int(np.searchsorted(times, m.t_ns, side="left")), m.t_ns, m.kind, m.value)
            for m in self._marks
        ]
        self._cat_marks = [
            CategoryMark(int(np.searchsorted(times, m.t_ns, side="right")), m.addr, m.category)
            for m in self._cat_marks
        ]
        return ev, stats


def _status_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    import torch

    return "oom" if isinstance(exc, torch.OutOfMemoryError) else "error"


def track(
    model: Any = None,
    *,
    optimizer: Any = None,
    inputs: Any = (),
    sample_interval_s: float | None = 0.01,
    on_sample: SampleCallback | None = None,
    budget_bytes: int | None = None,
) -> Tracker:
    """Measure the tensor memory of a block, exactly, by category and phase.

    ``model`` (an ``nn.Module``), ``optimizer`` (one or a list) and ``inputs`` (tensors, nested
    in tuples, lists or dicts) name what is live at entry; everything allocated inside the block
    is seen as it happens. ``sample_interval_s`` is the period of the process-memory sampler
    (``None``: off); ``on_sample(t, sample)`` is called on each of its beats with the live tensor
    bytes, the phase and the RSS parts. ``budget_bytes`` simulates a device limit: an
    allocation that would take the block's account past it raises ``torch.OutOfMemoryError``
    (the result's status is then ``oom``).
    """
    return Tracker(
        model,
        optimizer=optimizer,
        inputs=inputs,
        sample_interval_s=sample_interval_s,
        on_sample=on_sample,
        budget_bytes=budget_bytes,
    )
