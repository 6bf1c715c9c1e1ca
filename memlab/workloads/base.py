"""``Workload``: a built model with everything one step needs, which the knobs then modify.

A workload is mutable on purpose: each knob (``memlab.knobs``) takes one, changes it in place
(swaps layers, wraps blocks, sets an autocast context) and returns it, so knobs compose in any
order the builder chooses. A user factory may build its own ``Workload`` from these fields.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = ["Workload", "Batch", "param_bytes_by_dtype"]

Batch = tuple[torch.Tensor, torch.Tensor]


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def param_bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    """Bytes the model holds, by dtype: parameters, buffers, dynamically quantized weights
    (packed, so not parameters: counted by their unpacked int8 size), the inner tensors of
    tensor subclasses (torchao's quantized weights), oneDNN-packed int8 weights (by their
    logical size) and tensors held as plain attributes (the ``weight`` that
    ``torch.nn.utils.prune`` recomputes from its mask). Each storage counts once."""
    seen: set[int] = set()
    out: dict[str, int] = {}

    def add(t: torch.Tensor | None) -> None:
        if t is None or not isinstance(t, torch.Tensor):
            return
        if is_traceable_wrapper_subclass(t):
            # A tensor subclass (torchao's Int8Tensor, IntxUnpackedToInt8Tensor...) owns no
            # bytes itself: its inner tensors (qdata, scale, zero_point) do
            # (torch/utils/_python_dispatch.py: __tensor_flatten__).
            for inner in t.__tensor_flatten__()[0]:
                add(getattr(t, inner))
            return
        if t.layout == torch._mkldnn:  # type: ignore[attr-defined]
            # A oneDNN-packed weight (int8-static's kernels): opaque, no storage; counted by
            # its logical size (the packed layout's real cost is measured from RSS).
            key = id(t)
            if key not in seen:
                seen.add(key)
                name = _dtype_name(t.dtype)
                out[name] = out.get(name, 0) + t.numel() * t.element_size()
            return
        if t.layout != torch.strided:  # a sparse tensor: count its parts
            if t.layout == torch.sparse_csr:
                for part in (t.values(), t.crow_indices(), t.col_indices()):
                    add(part)
            elif t.layout == torch.sparse_coo:
                add(t._values())
                add(t._indices())
            return
        try:
            st = t.untyped_storage()
            key, nbytes = int(st.data_ptr()), int(st.nbytes())
        except (RuntimeError, NotImplementedError):
            key, nbytes = id(t), t.numel() * t.element_size()
        if key in seen and key != 0:
            return
        seen.add(key)
        name = _dtype_name(t.dtype)
        out[name] = out.get(name, 0) + nbytes

    for mod in model.modules():
        for p in mod._parameters.values():
            add(p)
        for b in mod._buffers.values():
            add(b)
        if hasattr(mod, "_packed_params") and callable(getattr(mod, "weight", None)):
            # A packed quantized Linear; weight() unpacks a fresh copy, so count it by size.
            q: Any = mod
            for t in (q.weight(), q.bias()):
                if t is not None:
                    k = _dtype_name(t.dtype)
                    out[k] = out.get(k, 0) + t.numel() * t.element_size()
        for v in vars(mod).values():
            if isinstance(v, torch.Tensor):
                add(v)
    return dict(sorted(out.items()))


def _no_autocast() -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


@dataclass(eq=False)
class Workload:
    """A model, its optimizer and its data, ready to step.

    ``make_batches(num_batches=None)`` yields ``(x, y)`` already on ``device``: one pass over the
    synthetic data set by default, or exactly ``num_batches`` (epoch after epoch). ``blocks``
    are the model's repeated blocks (what checkpointing wraps). ``real_data()`` returns the real
    data set's ``(train, test)`` splits as CPU ``(x, y)`` pairs for ``fit`` and ``evaluate``; it
    is called on first use only (loading scikit-learn costs about a second, which a run that
    never asks for accuracy should not pay). ``None`` where a user workload has no real data,
    and then ``evaluate`` returns ``None``.
    """

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_batches: Callable[..., Iterator[Batch]]
    samples_per_step: int
    blocks: list[nn.Module] = field(default_factory=list)
    device: str = "cpu"
    mode: str = "train"
    real_data: Callable[[], tuple[Batch, Batch]] | None = None
    #: Builds an optimizer over a parameter list; knobs that replace parameters rebuild it.
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None
    #: Context wrapping forward and loss (``torch.autocast`` under the amp precisions).
    autocast: Callable[[], AbstractContextManager[Any]] = _no_autocast
    #: Context wrapping forward and loss around autocast: where autograd keeps what it saves
    #: for backward (``saved_tensors_hooks``; ``knobs/offload.py``). A null context by default.
    saved_tensors: Callable[[], AbstractContextManager[Any]] = _no_autocast
    #: ``torch.amp.GradScaler`` for fp16 autocast training (fp16 gradients underflow without it).
    grad_scaler: Any = None
    #: Inputs are cast to this dtype before the model (bf16 weights need bf16 inputs).
    input_dtype: torch.dtype | None = None
    #: Bytes of the synthetic data set's inputs (what ``ram`` holds and ``memmap`` maps).
    dataset_bytes: int = 0
    #: Knob name -> setting, as applied (``precision: "bf16"``...).
    applied: dict[str, Any] = field(default_factory=dict)
    #: Readable remarks from the knobs (what was converted, what had no effect and why).
    notes: list[str] = field(default_factory=list)
    #: Figures the knobs computed, by name (``sparse_csr_bytes``...); part of ``metrics``.
    measures: dict[str, float] = field(default_factory=dict)
    #: Learning rate for ``fit`` on the real data set.
    fit_lr: float = 1e-3
    _real: tuple[Batch, Batch] | None = field(default=None, init=False, repr=False)

    @property
    def metrics(self) -> dict[str, float]:
        """Figures of this workload as built, for a run's result: model bytes by dtype
        (``model_bytes_<dtype>``, see ``param_bytes_by_dtype``), the synthetic data set's bytes
        and what the knobs computed. Numbers only, JSON-safe."""
        by = param_bytes_by_dtype(self.model)
        out: dict[str, float] = {f"model_bytes_{k}": v for k, v in by.items()}
        out["model_bytes"] = sum(by.values())
        out["dataset_bytes"] = self.dataset_bytes
        out.update(self.measures)
        return out

    def _splits(self) -> tuple[Batch, Batch] | None:
        if self._real is None and self.real_data is not None:
            self._real = self.real_data()
        return self._real

    # -- one step ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x``, inputs cast as the precision knob requires."""
        if self.input_dtype is not None and x.is_floating_point():
            x = x.to(self.input_dtype)
        return self.model(x)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step (forward, loss, backward, optimizer step, grads freed), or one
        forward under ``torch.inference_mode`` in inference mode. Returns the detached loss."""
        if self.mode == "inference" or self.optimizer is None:
            with torch.inference_mode(), self.autocast():
                return self.loss_fn(self.forward(x).float(), y)
        with self.saved_tensors(), self.autocast():
            # The loss in fp32: a low-precision softmax over logits loses the small terms.
            loss = self.loss_fn(self.forward(x).float(), y)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        # set_to_none frees the gradients between steps (PyTorch's default since 2.0).
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """One inference request: the model's forward of one batch under
        ``torch.inference_mode`` (and the precision's autocast), no loss. What a run in
        ``mode="inference"`` measures and times as one request."""
        with torch.inference_mode(), self.autocast():
            return self.forward(x)

    def rebuild_optimizer(self) -> None:
        """A fresh optimizer over the model's current trainable parameters (knobs that replace
        parameters call this; optimizer state starts empty, as before the first step)."""
        if self.mode != "train" or self.make_optimizer is None:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self.make_optimizer(params)

    # -- the real data set ------------------------------------------------------------------
    def evaluate(self, model: nn.Module | None = None, *, batch_size: int = 512) -> float | None:
        """Accuracy (0..1) of ``model`` (default: this workload's) on the real test split, with
        this workload's precision; ``None`` when the workload has no real data set."""
        splits = self._splits()
        if splits is None:
            return None
        m = self.model if model is None else model
        was_training = m.training
        m.eval()
        x_all, y_all = splits[1]
        correct = 0
        try:
            with torch.inference_mode(), self.autocast():
                for i in range(0, len(x_all), batch_size):
                    x = x_all[i : i + batch_size].to(self.device)
                    y = y_all[i : i + batch_size].to(self.device)
                    if self.input_dtype is not None:
                        x = x.to(self.input_dtype)
                    correct += int((m(x).argmax(dim=1) == y).sum())
        finally:
            m.train(was_training)
        return correct / len(x_all)

    def fit(self, steps: int, *, lr: float | None = None, seed: int = 0) -> float | None:
        """Train this workload's model on the real training split for ``steps`` steps of
        ``samples_per_step`` samples (a fresh AdamW, under this workload's precision), so that
        accuracy means something; returns the last loss (``None`` without real data).

        The workload's own optimizer is left alone: its state stays as it was."""
        splits = self._splits()
        if splits is None or steps <= 0:
            return None
        x_all, y_all = splits[0]
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.fit_lr if lr is None else lr)
        g = torch.Generator().manual_seed(seed)
        bs = min(self.samples_per_step, len(x_all))
        was_training = self.model.training
        self.model.train()
        last = float("nan")
        try:
            perm = torch.randperm(len(x_all), generator=g)
            pos = 0
            for _ in range(steps):
                if pos + bs > len(perm):
                    perm, pos = torch.randperm(len(x_all), generator=g), 0
                idx = perm[pos : pos + bs]
                pos += bs
                x, y = x_all[idx].to(self.device), y_all[idx].to(self.device)
                with self.autocast():
                    loss = self.loss_fn(self.forward(x).float(), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                last = float(loss.detach())
        finally:
            self.model.train(was_training)
        return last
