"""The hooks ``memlab.track`` needs, installed once however many blocks are active.

Torch's hooks are process-wide: module forward hooks live on the module objects, the optimizer
step hooks are global (``torch.optim.optimizer.register_optimizer_step_pre_hook``), and backward
is seen by patching ``torch.autograd.backward``/``grad`` (``torch.Tensor.backward`` calls the
module attribute, torch/_tensor.py). This module keeps only what has to be shared -- the handles,
reference-counted per model and overall, and the list of active trackers -- and forwards every
hook call to each active :class:`~memlab.tracking.tracker.Tracker`, which owns its phase,
module stack and marks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memlab.tracking.tracker import Tracker

__all__ = ["activate", "deactivate", "hook_model", "unhook_model", "active", "pruned_weights_of"]


@dataclass
class _ModelHooks:
    handles: list[Any] = field(default_factory=list)
    count: int = 0
    grad_handles: list[Any] = field(default_factory=list)
    grad_count: int = 0


_active: list[Tracker] = []
_global_handles: list[Any] = []
_patched: dict[str, Callable[..., Any]] = {}
# Keyed by id(): a hooked model is referenced by the tracker that hooked it, so its id is not
# reused while it is here.
_models: dict[int, _ModelHooks] = {}


def active() -> tuple[Tracker, ...]:
    """The trackers inside whose block the code runs now, outermost first."""
    return tuple(_active)


def activate(tracker: Tracker) -> None:
    if not _active:
        _install_global()
    _active.append(tracker)


def deactivate(tracker: Tracker) -> None:
    if tracker in _active:
        _active.remove(tracker)
    if not _active:
        _remove_global()


# -- forwarding --------------------------------------------------------------------------------
def _pre_forward(module: Any, args: Any) -> None:
    is_root = id(module) in _models
    for t in _active:
        t._on_pre_forward(module, is_root)


def _post_forward(module: Any, args: Any, output: Any) -> None:
    for t in _active:
        t._on_post_forward()


def _pruned_pre_forward(module: Any, args: Any) -> None:
    """Runs after prune's own pre-hook has recomputed the weight: claim it as a parameter."""
    weights = pruned_weights_of(module)
    for t in _active:
        t._mark_category(weights, "parameters")


def _grad_hook(p: Any) -> None:
    if p.grad is not None:
        for t in _active:
            t._mark_category([p.grad], "gradients")


def _opt_pre(opt: Any, args: Any, kwargs: Any) -> None:
    for t in _active:
        t._on_optimizer_pre(opt)


def _opt_post(opt: Any, args: Any, kwargs: Any) -> None:
    for t in _active:
        t._on_optimizer_post(opt)


def _wrap_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        entered = [t for t in _active if t._enter_backward()]
        try:
            return fn(*args, **kwargs)
        finally:
            for t in entered:
                t._exit_backward()

    return wrapped


# -- installation ------------------------------------------------------------------------------
def _install_global() -> None:
    import torch
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    _global_handles.extend(
        [register_optimizer_step_pre_hook(_opt_pre), register_optimizer_step_post_hook(_opt_post)]
    )
    for name in ("backward", "grad"):
        orig = getattr(torch.autograd, name)
        _patched[name] = orig
        setattr(torch.autograd, name, _wrap_backward(orig))


def _remove_global() -> None:
    import torch

    for h in _global_handles:
        h.remove()
    _global_handles.clear()
    for name, orig in _patched.items():
        setattr(torch.autograd, name, orig)
    _patched.clear()


def hook_model(model: Any, *, grads: bool) -> None:
    """Forward hooks on every module of ``model``; with ``grads``, a hook per parameter that
    sees its gradient accumulate (used when no optimizer names the gradients: a hook per
    parameter costs ~1 us a call)."""
    h = _models.setdefault(id(model), _ModelHooks())
    if h.count == 0:
        for mod in model.modules():
            h.handles.append(mod.register_forward_pre_hook(_pre_forward))
            h.handles.append(mod.register_forward_hook(_post_forward, always_call=True))
            if pruned_weights_of(mod):  # registered after prune's hook, so it runs after it
                h.handles.append(mod.register_forward_pre_hook(_pruned_pre_forward))
    h.count += 1
    if grads:
        if h.grad_count == 0:
            h.grad_handles = [
                p.register_post_accumulate_grad_hook(_grad_hook)
                for p in model.parameters()
                if p.requires_grad
            ]
        h.grad_count += 1


def unhook_model(model: Any, *, grads: bool) -> None:
    h = _models[id(model)]
    if grads:
        h.grad_count -= 1
        if h.grad_count == 0:
            for g in h.grad_handles:
                g.remove()
            h.grad_handles = []
    h.count -= 1
    if h.count == 0:
        for handle in h.handles:
            handle.remove()
        for g in h.grad_handles:
            g.remove()
        del _models[id(model)]


def pruned_weights_of(mod: Any) -> list[Any]:
    """torch.nn.utils.prune keeps ``name_orig`` (a parameter) and ``name_mask`` (a buffer) and
    recomputes ``name = name_orig * name_mask`` as a plain attribute before every forward
    (torch/nn/utils/prune.py, BasePruningMethod.apply): model state, not an activation."""
    import torch

    out = []
    for key in list(mod._parameters):
        if key.endswith("_orig"):
            name = key[: -len("_orig")]
            t = mod.__dict__.get(name)
            if isinstance(t, torch.Tensor) and f"{name}_mask" in mod._buffers:
                out.append(t)
    return out
