"""``memlab.track``: exact, event-based tensor memory of a block of PyTorch code.

    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    rec.result.peak_bytes, rec.result.peak_by_category, rec.result.timeline

How it sees everything: on CPU, every allocation and free of PyTorch's CPU allocator, op-internal
buffers included, from memlab's recorder (``_alloc.cpp``) or, where it cannot be compiled,
torch.profiler's allocator events; on CUDA, the caching allocator's own counters and trace
(``torch.cuda.memory``); see ``sources.py``. Phases come from hooks (``hooks.py``): module
forward hooks (forward), ``torch.autograd.backward``/``grad`` (backward), the optimizer step
hooks (optimizer), and ``rec.phase("data")`` for the user's own. Categories are assigned after
the block, once every block's life is known (``attribution.py``).

At every ``rec.step()`` the result's ``alive`` report (``timeline.AliveReport``) records what is
still alive: bytes by category, the allocation sites holding them (phase, module, and with
``source_lines=True`` the user's source line), and the growth per step -- a leak's signature.
It is computed from the events after the block, so it costs nothing while the steps run.
So is the ``peak_report`` (``timeline.PeakReport``): the blocks alive at the peak, largest
first, with their category, phase and module; with ``ops=True`` the ATen op that allocated each,
with ``source_lines=True`` the op and the user's line (both a dispatch mode per op: opt in).

Each ``Tracker`` owns its phase, module stack and marks. Blocks nest: the hooks reach every
active block, and a phase or step marked in one is marked in those around it too (they measure
the same code), so an inner block agrees with the outer one on what it saw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from memlab.timeline import CATEGORY_ATTR, PHASES, ProcessSeries, RunResult
from memlab.tracking import hooks, procmem
from memlab.tracking.attribution import (
    DEFAULT_TOP_BLOCKS,
    DEFAULT_TOP_SITES,
    CategoryMark,
    Mark,
    attribute,
)
from memlab.tracking.sources import CudaSource, EventSource, cuda_source, default_source

__all__ = ["track", "Tracker", "OPS_DEFAULT"]

#: Whether ``track`` names the ATen op of every allocation when ``ops`` is not given.
OPS_DEFAULT = False

SampleCallback = Callable[[float, dict[str, Any]], None]


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


def _plain_tensors(t: Any) -> Iterator[Any]:
    """``t``, or where it is a wrapper tensor subclass (torchao's quantized weights:
    ``Int8Tensor``, ``IntxUnpackedToInt8Tensor``) the plain tensors it holds: a wrapper has no
    storage of its own, so only its inner tensors' storages are what the allocator holds."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        for n in names:
            yield from _plain_tensors(getattr(t, n))
    else:
        yield t


def _model_state(model: Any) -> tuple[list[Any], list[Any]]:
    """(parameters, buffers and pruned weights; gradients) of ``model``, in one walk; a
    parameter that is a wrapper subclass counts as the plain tensors inside it."""
    if model is None:
        return [], []
    params: list[Any] = []
    others: list[Any] = []
    seen: set[int] = set()
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                params.extend(_plain_tensors(p))
        others.extend(
            b for b in mod._buffers.values() if b is not None and not hasattr(b, CATEGORY_ATTR)
        )
        others.extend(hooks.pruned_weights_of(mod))
    grads = [p.grad for p in params if p.grad is not None]
    return params + others, grads


def _tagged_buffers(model: Any) -> dict[str, list[Any]]:
    """Buffers of ``model`` that carry :data:`CATEGORY_ATTR`, by that category. Counted at the
    block's entry (a planned arena exists before it); not marked at exit, where only the model's
    state categories rank (``attribution._PRIORITY``)."""
    out: dict[str, list[Any]] = {}
    if model is None:
        return out
    for mod in model.modules():
        for b in mod._buffers.values():
            cat = getattr(b, CATEGORY_ATTR, None) if b is not None else None
            if cat is not None:
                out.setdefault(str(cat), []).append(b)
    return out


def _grads_of(opt: Any) -> list[Any]:
    return [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]


def _optimizer_state(opt: Any) -> list[Any]:
    return list(_tensors_in(list(opt.state.values())))


def _storage_key(t: Any, source: EventSource) -> tuple[int, int, str] | None:
    try:
        s = t.untyped_storage()
        return source.addr(t), int(s.nbytes()), str(t.device)
    except Exception:  # noqa: BLE001 - tensors without storage (sparse, fake) are skipped
        return None


# -- op names and source lines (``ops=True``, ``source_lines=True``) ------------------------
# An op run under a tracker that records ops carries a negative tag, -(code + 1), where
# ``_TAG_KEYS[code]`` is (innermost module's id, the user's "file:line" or None, the ATen op's
# name). Module tags are ids (positive), so the two never collide; the table is process-wide so
# that any block, nested or not, can decode what another one tagged.
_TAG_CODES: dict[tuple[Any, ...], int] = {}
_TAG_KEYS: list[tuple[int, str | None, str]] = []


@functools.cache
def _skipped_dirs() -> tuple[str, ...]:
    """Frames in these directories are torch's or the tracker's, not the user's."""
    import torch

    here = os.path.dirname(os.path.abspath(__file__))
    return (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep, here + os.sep)


def _short_path(path: str) -> str:
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[-2:])


def _op_name(func: Any) -> str:
    """``aten::addmm`` for the OpOverload ``aten.addmm.default`` (the overload is dropped)."""
    schema = getattr(func, "_schema", None)
    return str(schema.name) if schema is not None else str(func)


def _new_code(key: tuple[Any, ...], entry: tuple[int, str | None, str]) -> int:
    code = len(_TAG_KEYS)
    _TAG_KEYS.append(entry)
    _TAG_CODES[key] = code
    return code


def _op_tag(module_tag: int, func: Any) -> int:
    """The tag of an op called now: its module and its name (one dict look-up)."""
    key = (module_tag, func)
    code = _TAG_CODES.get(key)
    if code is None:
        code = _new_code(key, (module_tag, None, _op_name(func)))
    return -(code + 1)


def _line_tag(module_tag: int, func: Any) -> int:
    """The tag of an op called now: its module, its name and the first frame outside torch and
    the tracker (the user's line)."""
    skip = _skipped_dirs()
    f: Any = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(skip):
        f = f.f_back
    if f is None:
        return _op_tag(module_tag, func)
    key = (module_tag, func, f.f_code.co_filename, f.f_lineno)
    code = _TAG_CODES.get(key)
    if code is None:
        line = f"{_short_path(key[2])}:{key[3]}"
        code = _new_code(key, (module_tag, line, _op_name(func)))
    return -(code + 1)


@dataclasses.dataclass
class _Decoded:
    """Events with module tags restored; each event's line and op (indices, -1: none)."""

    events: np.ndarray
    line_of: np.ndarray | None = None
    lines: list[str] = dataclasses.field(default_factory=list)
    op_of: np.ndarray | None = None
    ops: list[str] = dataclasses.field(default_factory=list)


def _decode_tags(events: np.ndarray) -> _Decoded:
    tags = events[:, 3]
    neg = tags < 0
    if not neg.any():
        return _Decoded(events)
    codes = -tags[neg] - 1
    lines: dict[str, int] = {}
    ops: dict[str, int] = {}
    mods = np.empty(len(_TAG_KEYS), dtype=np.int64)
    line_code = np.empty(len(_TAG_KEYS), dtype=np.int64)
    op_code = np.empty(len(_TAG_KEYS), dtype=np.int64)
    for i, (mod, line, op) in enumerate(_TAG_KEYS):
        mods[i] = mod
        line_code[i] = -1 if line is None else lines.setdefault(line, len(lines))
        op_code[i] = ops.setdefault(op, len(ops))
    events = events.copy()
    events[neg, 3] = mods[codes]
    line_of = np.full(len(events), -1, dtype=np.int64)
    line_of[neg] = line_code[codes]
    op_of = np.full(len(events), -1, dtype=np.int64)
    op_of[neg] = op_code[codes]
    return _Decoded(
        events,
        line_of if (line_of >= 0).any() else None,
        list(lines),
        op_of,
        list(ops),
    )


@functools.cache
def _op_mode_class() -> type:
    from torch.utils._python_dispatch import TorchDispatchMode

    class _OpTagger(TorchDispatchMode):
        """Tags every op's allocations with the op's name (and with ``lines``, the user's source
        line: one Python frame walk per op), then restores the module tag."""

        def __init__(self, tracker: Tracker, lines: bool) -> None:
            super().__init__()
            self.tracker = tracker
            self.tag = _line_tag if lines else _op_tag

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            tr = self.tracker
            src = tr._source
            mod = tr._stack[-1] if tr._stack else 0
            if src is None:
                return func(*args, **(kwargs or {}))
            src.set_tag(self.tag(mod, func))
            try:
                return func(*args, **(kwargs or {}))
            finally:
                src.set_tag(mod)

    return _OpTagger


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
        source_lines: bool = False,
        top_sites: int = DEFAULT_TOP_SITES,
        ops: bool | None = None,
        top_blocks: int = DEFAULT_TOP_BLOCKS,
        _source: EventSource | None = None,
    ) -> None:
        if not isinstance(source_lines, bool):
            raise ValueError(f"source_lines must be True or False, got {source_lines!r}")
        if ops is not None and not isinstance(ops, bool):
            raise ValueError(f"ops must be True, False or None (the default), got {ops!r}")
        if isinstance(top_blocks, bool) or not isinstance(top_blocks, int) or top_blocks < 1:
            raise ValueError(f"top_blocks must be an int >= 1, got {top_blocks!r}")
        if isinstance(top_sites, bool) or not isinstance(top_sites, int) or top_sites < 1:
            raise ValueError(f"top_sites must be an int >= 1, got {top_sites!r}")
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
        self.source_lines = source_lines
        # Source lines are found per op, so they name the op too.
        self.ops = source_lines or (OPS_DEFAULT if ops is None else ops)
        self.top_sites = top_sites
        self.top_blocks = top_blocks
        self._op_mode: Any = None
        self.result: RunResult | None = None
        self._requested_source = _source
        self._source: EventSource | None = None  # chosen at entry
        self._by_time = False
        # What this block saw: its phase, the modules running now (innermost last), the marks.
        self._phase = "other"
        self._initial_phase = "other"
        self._stack: list[int] = []
        self._marks: list[Mark] = []
        self._cat_marks: list[CategoryMark] = []
        self._stepped: weakref.WeakSet[Any] = weakref.WeakSet()  # optimizers seen stepping
        self._ev_start = 0
        self._entry: dict[int, tuple[int, str]] = {}
        self._entry_total = 0
        self._live_at_entry = 0
        self._prev_limit: int | None = None
        self._sampler: procmem.ProcessSampler | None = None
        self._device = "cpu"
        self._t0 = 0

    # -- public helpers -------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a user phase (e.g. ``data``) for the code inside the ``with``."""
        if name not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {name!r}")
        targets = hooks.active()
        outer = [t._phase for t in targets]
        for t in targets:
            t._set_phase(name)
        try:
            yield
        finally:
            for t, p in zip(targets, outer, strict=True):
                t._set_phase(p)

    def step(self, label: str = "step") -> None:
        """Mark a step boundary on the timeline."""
        for t in hooks.active():
            t._mark("step", label)

    def live_bytes(self) -> int:
        """Tensor bytes live now, by the same account as ``peak_bytes`` (entry + rise). With
        the profiler fallback, by a dispatch-level count (op-internal buffers are missed)."""
        if self._source is None:
            return self._entry_total
        return self._source.live() - self._live_at_entry + self._entry_total

    # -- marks ------------------------------------------------------------------------------
    def _pos(self) -> int:
        """Events recorded by this block so far; 0 where marks are placed by time at exit."""
        assert self._source is not None
        return 0 if self._by_time else self._source.position() - self._ev_start

    def _mark(self, kind: str, value: str = "") -> None:
        self._marks.append(Mark(self._pos(), time.monotonic_ns(), kind, value))

    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        self._mark("phase", phase)

    def _mark_category(self, tensors: Iterable[Any], category: str) -> None:
        assert self._source is not None
        idx = self._pos()
        now = time.monotonic_ns()
        for t in tensors:
            try:
                addr = self._source.addr(t)
            except Exception:  # noqa: BLE001 - sparse, meta or fake tensors have no storage
                continue
            if addr != 0:
                self._cat_marks.append(CategoryMark(idx, addr, category, now))

    def _set_tag(self) -> None:
        assert self._source is not None
        self._source.set_tag(self._stack[-1] if self._stack else 0)

    # -- called by hooks.py -------------------------------------------------------------------
    def _on_pre_forward(self, module: Any, is_root: bool) -> None:
        if self._phase == "backward":
            if not self._stack:
                self._mark("recompute_start")
        elif is_root:
            import torch

            self._stack.clear()
            self._set_phase("forward" if torch.is_grad_enabled() else "inference")
        self._stack.append(id(module))
        self._set_tag()

    def _on_post_forward(self) -> None:
        if self._stack:
            self._stack.pop()
        self._set_tag()
        if self._phase == "backward" and not self._stack:
            self._mark("recompute_end")

    def _on_optimizer_pre(self, opt: Any) -> None:
        self._stepped.add(opt)
        self._mark_category(_grads_of(opt), "gradients")
        self._set_phase("optimizer")

    def _on_optimizer_post(self, opt: Any) -> None:
        self._mark_category(_optimizer_state(opt), "optimizer_state")
        self._set_phase("other")

    def _enter_backward(self) -> bool:
        """Enter the backward phase; False if already in it (a nested backward or grad)."""
        if self._phase == "backward":
            return False
        self._set_phase("backward")
        return True

    def _exit_backward(self) -> None:
        self._set_phase("other")

    # -- entry / exit -----------------------------------------------------------------------
    def _entry_storages(self, source: EventSource) -> dict[int, tuple[int, str]]:
        blocks: dict[int, tuple[int, str]] = {}
        state, grads = _model_state(self.model)
        groups = [
            (state, "parameters"),
            (grads, "gradients"),
            ([t for o in self.optimizers for t in _grads_of(o)], "gradients"),
            ([t for o in self.optimizers for t in _optimizer_state(o)], "optimizer_state"),
            (list(_tensors_in(self.inputs)), "inputs"),
            *((ts, cat) for cat, ts in _tagged_buffers(self.model).items()),
        ]
        for tensors, cat in groups:
            for t in tensors:
                key = _storage_key(t, source)
                if key is None or key[0] == 0 or key[0] in blocks:
                    continue
                if key[2] != self._device:
                    continue  # a storage on another device does not count toward this device
                blocks[key[0]] = (key[1], cat)
                source.adopt(t, key[1])
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
        if self._requested_source is not None:
            source = self._requested_source
        elif self._device == "cpu":
            source = default_source()
        else:
            source = cuda_source(self._device)
        self._source, self._by_time = source, source.by_time
        around = hooks.active()
        if around:  # a block inside another starts where that one is
            self._phase, self._stack = around[-1]._phase, list(around[-1]._stack)
        self._initial_phase = self._phase
        source.begin()
        if self.model is not None:
            hooks.hook_model(self.model, grads=not self.optimizers)
        self._entry = self._entry_storages(source)
        self.inputs = None  # holding them would keep them alive past the user's own `del`
        self._entry_total = sum(b for b, _ in self._entry.values())
        procmem.reset_peak_rss()
        self._t0 = time.monotonic_ns()
        self._live_at_entry = source.live()
        self._ev_start = source.position()
        hooks.activate(self)
        if self.ops:
            self._op_mode = _op_mode_class()(self, self.source_lines)
            self._op_mode.__enter__()
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

        assert self.budget_bytes is not None and self._source is not None
        if self._entry_total >= self.budget_bytes:
            raise torch.OutOfMemoryError(
                f"memlab budget exceeded: {self._entry_total} bytes are live at entry, "
                f"the budget is {self.budget_bytes} bytes"
            )
        # In the source's own count; a block inside another keeps the tighter of the two.
        limit = self.budget_bytes - self._entry_total + self._live_at_entry
        self._prev_limit = self._source.limit
        if self._prev_limit:
            limit = min(limit, self._prev_limit)
        self._source.set_limit(limit)

    def _clear_budget(self) -> None:
        if self._prev_limit is not None and self._source is not None:
            self._source.set_limit(self._prev_limit)
            self._prev_limit = None

    def _emit_sample(self, t: float, row: dict[str, int | None]) -> None:
        assert self.on_sample is not None
        self.on_sample(t, {"tensor_bytes": self.live_bytes(), "phase": self._phase, **row})

    def _placed_by_time(self, times: np.ndarray) -> tuple[list[Mark], list[CategoryMark]]:
        """Marks among events that were read after the fact: a phase starts before the events
        at or after its time; a storage marked at a time is the one alive then."""
        at = np.searchsorted(times, [m.t_ns for m in self._marks], side="left")
        cat_at = np.searchsorted(times, [m.t_ns for m in self._cat_marks], side="right")
        marks = [
            Mark(int(i), m.t_ns, m.kind, m.value) for i, m in zip(at, self._marks, strict=True)
        ]
        cats = [
            CategoryMark(int(i), m.addr, m.category, m.t_ns)
            for i, m in zip(cat_at, self._cat_marks, strict=True)
        ]
        return marks, cats

    def _module_names(self) -> dict[int, str]:
        if self.model is None:
            return {}
        root = type(self.model).__name__
        return {id(m): name or root for name, m in self.model.named_modules()}

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        source = self._source
        assert source is not None
        if self._op_mode is not None:
            self._op_mode.__exit__(None, None, None)
            self._op_mode = None
        self._clear_budget()
        ev_end = source.position()
        duration = (time.monotonic_ns() - self._t0) / 1e9
        process = self._sampler.stop() if self._sampler is not None else None
        # Exit marks: what is a parameter / gradient / optimizer state now.
        for o in {id(o): o for o in [*self.optimizers, *self._stepped]}.values():
            self._mark_category(_grads_of(o), "gradients")
            self._mark_category(_optimizer_state(o), "optimizer_state")
        params, grads = _model_state(self.model)
        self._mark_category(grads, "gradients")
        self._mark_category(params, "parameters")
        hooks.deactivate(self)
        if self.model is not None:
            hooks.unhook_model(self.model, grads=not self.optimizers)
        try:
            events = source.events(self._ev_start, ev_end)
        finally:
            source.end()
        cuda_stats = source.stats() if isinstance(source, CudaSource) else None
        marks, cat_marks = (
            self._placed_by_time(events[:, 0]) if self._by_time else (self._marks, self._cat_marks)
        )
        dec = _decode_tags(events)
        att = attribute(
            dec.events,
            t0_ns=self._t0,
            entry_blocks=self._entry,
            marks=marks,
            category_marks=cat_marks,
            initial_phase=self._initial_phase,
            module_names=self._module_names(),
            source=source.name,
            line_of_event=dec.line_of,
            line_names=dec.lines,
            top_sites=self.top_sites,
            op_of_event=dec.op_of,
            op_names=dec.ops,
            top_blocks=self.top_blocks,
        )
        notes: list[str] = list(source.notes)
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
        if self.ops and isinstance(source, CudaSource):
            notes.append(
                "the CUDA trace carries no tags: the alive and peak reports have no ops or lines"
            )
        if cuda_stats is not None and cuda_stats.get("peak", 0) > att.peak_bytes:
            notes.append("CUDA allocator peak exceeds the traced peak; trace may be truncated")
        status = _status_of(exc)
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        late_oom = (
            exc is None
            and not source.live_exact
            and self.budget_bytes is not None
            and att.peak_bytes > self.budget_bytes
        )
        if late_oom:
            # The live count missed op-internal buffers; the exact events show the budget was
            # passed: the block fails as it would have at that allocation, only later.
            status = "oom"
            error = (
                f"OutOfMemoryError: memlab budget exceeded: the block's peak of "
                f"{att.peak_bytes} bytes passed the budget of {self.budget_bytes} bytes "
                "(seen in the exact events after the block; the live check sees op outputs only)"
            )
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
            status=status,
            error=error,
            notes=tuple(notes),
            alive=att.alive,
            peak_report=att.peak_report,
        )
        if late_oom:
            import torch

            assert error is not None
            raise torch.OutOfMemoryError(error.removeprefix("OutOfMemoryError: "))


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
    source_lines: bool = False,
    top_sites: int = DEFAULT_TOP_SITES,
    ops: bool | None = None,
    top_blocks: int = DEFAULT_TOP_BLOCKS,
) -> Tracker:
    """Measure the tensor memory of a block, exactly, by category and phase.

    ``model`` (an ``nn.Module``), ``optimizer`` (one or a list) and ``inputs`` (tensors, nested
    in tuples, lists or dicts) name what is live at entry; everything allocated inside the block
    is seen as it happens. ``sample_interval_s`` is the period of the process-memory sampler
    (``None``: off); ``on_sample(t, sample)`` is called on each of its beats with the live tensor
    bytes, the phase and the RSS parts. ``budget_bytes`` simulates a device limit: an
    allocation that would take the block's account past it raises ``torch.OutOfMemoryError``
    (the result's status is then ``oom``).

    Each ``rec.step()`` marks a step boundary; the result's ``alive`` report then says what was
    still alive there (bytes by category, the ``top_sites`` allocation sites holding the most)
    and the growth per step: usable on any training loop to find a leak. ``source_lines=True``
    also names the user's source ``file:line`` of each site (a frame walk per op: it slows
    the block; off by default).

    The result's ``peak_report`` (``timeline.PeakReport``) lists what was alive at the peak:
    the ``top_blocks`` largest blocks and sites (bytes, category, phase, module), summing to
    the peak exactly when all are listed. ``ops=True`` names the ATen op that allocated each
    (``aten::addmm``); ``source_lines=True`` names the op and the line. Both put a Python
    dispatch mode on every op, so both are off by default (``ops=None``: :data:`OPS_DEFAULT`).
    Measured with ``benchmarks/drilldown.py`` (CPU, 2 threads, a loaded 2-core machine): op
    names +16 us per op, source lines +19 us per op (a loop of tiny ops, best of 15); the
    tests' MLP and CNN train steps dispatch 105 and 145 ops, so op names add about 1.7 and
    2.4 ms to their fastest tracked steps of 13.2 and 14.5 ms (13% and 16%; the fastest steps
    with op names were 17.3 and 18.9 ms), source lines about 15% and 19% -- over the 5% that
    would have put op names on by default. Scalars made from Python numbers
    (``torch.tensor(0.0)``) are not dispatched and have no op; with the mode on, Adam's step
    held one more 8-byte scalar at the peak.
    """
    return Tracker(
        model,
        optimizer=optimizer,
        inputs=inputs,
        sample_interval_s=sample_interval_s,
        on_sample=on_sample,
        budget_bytes=budget_bytes,
        source_lines=source_lines,
        top_sites=top_sites,
        ops=ops,
        top_blocks=top_blocks,
    )
