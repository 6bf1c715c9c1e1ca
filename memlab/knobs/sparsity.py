"""Sparsity: magnitude pruning, and whether the pruned weights are *stored* sparse.

Every ``nn.Linear`` and ``nn.Conv2d`` weight loses its ``round(sparsity * numel)`` smallest
entries by magnitude, layer by layer (``torch.nn.utils.prune.l1_unstructured`` semantics).
Then, by ``storage``:

- ``mask``: torch's pruning reparametrisation. The module keeps the dense ``weight_orig``
  (a parameter), a dense ``weight_mask`` (a buffer of the same dtype) and recomputes a dense
  ``weight = weight_orig * weight_mask`` on every forward. Zeros take as many bytes as any other
  number, so this saves nothing -- it costs a mask and a product on top.
- ``sparse``: every ``nn.Linear`` becomes a ``SparseLinear`` holding CSR parts only: the
  surviving ``values`` (a parameter), ``col_indices`` and ``crow_indices`` (int64 buffers). The
  forward pass multiplies with ``torch.sparse.mm``. Convolutions are pruned in place but stay
  dense: a sparse convolution would need an unfolded input (``kernel_size**2`` times the
  activation), which costs more than it saves, so the note says how many bytes stayed dense.

Where sparse storage stops paying is computed, not assumed: CSR takes
``nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes`` bytes against
``rows * cols * value_bytes`` dense, so with fp32 values and int64 indices it is smaller only
below a density of about 1/3 (``density_crossover``): a 50 % pruned layer stored as CSR is
*larger* than dense.

Training with sparse storage (decided): allowed. The surviving weights are ordinary parameters
and learn; the sparsity pattern is fixed at pruning time (no regrowth). Gradients and optimizer
state are the size of ``values``, so they shrink too. The weight gradient is computed with
``torch.sparse.sampled_addmm`` (dense ``grad_out.T @ x`` sampled at the pattern), which on CPU
forms the dense product as a short-lived temporary.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from memlab.config import MAX_SPARSITY, SPARSE_STORAGES
from memlab.workloads.base import Workload

__all__ = [
    "apply_sparsity",
    "SparseLinear",
    "csr_bytes",
    "dense_bytes",
    "density_crossover",
    "magnitude_mask",
]


# -- the arithmetic of where sparse storage pays ------------------------------------------------
def dense_bytes(rows: int, cols: int, value_bytes: int = 4) -> int:
    """Bytes of a dense ``rows x cols`` matrix."""
    return rows * cols * value_bytes


def csr_bytes(rows: int, cols: int, nnz: int, value_bytes: int = 4, index_bytes: int = 8) -> int:
    """Bytes of a ``rows x cols`` CSR matrix with ``nnz`` stored values: values, one column
    index per value, and ``rows + 1`` row pointers (torch's default index dtype is int64)."""
    del cols  # CSR's size does not depend on the column count
    return nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes


def density_crossover(rows: int, cols: int, value_bytes: int = 4, index_bytes: int = 8) -> float:
    """The density (fraction of entries kept) at which CSR takes as many bytes as dense; CSR
    is smaller only below it. About ``value_bytes / (value_bytes + index_bytes)``: 1/3 for fp32
    with int64 indices, 1/5 for bf16, 1/2 for fp32 with int32 indices."""
    total = rows * cols
    if total <= 0:
        raise ValueError(f"rows and cols must be positive, got {rows} x {cols}")
    nnz = (dense_bytes(rows, cols, value_bytes) - (rows + 1) * index_bytes) / (
        value_bytes + index_bytes
    )
    return max(0.0, nnz / total)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping all but the ``round(sparsity * numel)`` smallest-magnitude entries
    (the count ``torch.nn.utils.prune.l1_unstructured`` prunes)."""
    n = weight.numel()
    n_prune = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if n_prune > 0:
        idx = torch.topk(weight.detach().abs().flatten().float(), n_prune, largest=False).indices
        mask[idx] = False
    return mask.reshape(weight.shape)


# -- the sparse Linear ------------------------------------------------------------------------
def _csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta": known, and what this knob demonstrates.
        warnings.simplefilter("ignore", UserWarning)
        # The parts come from torch's own to_sparse_csr, so the invariants hold; checking them
        # on every forward would cost a pass over the indices.
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _is_fake(t: torch.Tensor) -> bool:
    """A FakeTensor (memlab.estimate): torch's sparse CSR constructor has no fake kernel
    (aten.sparse_compressed_tensor), so the product's memory is stood in for by its outputs."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


class _SparseMM(torch.autograd.Function):
    """``x @ W.T`` for a CSR ``W`` given by its parts, with a gradient for ``values`` only at
    the stored positions (torch's generic sparse backward builds dense intermediates larger
    than this)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        values: torch.Tensor,
        x: torch.Tensor,
        crow: torch.Tensor,
        col: torch.Tensor,
        shape: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(values, x, crow, col)
        ctx.shape = shape
        if _is_fake(values):  # memlab.estimate: allocate what the real kernels return
            return x.new_empty(shape[0], x.shape[0]).t().contiguous()
        # W @ x.T comes out transposed; handing that layout on would make later ops (attention
        # above all) keep contiguous copies of it, so return nn.Linear's layout (one copy here,
        # a temporary).
        return torch.sparse.mm(_csr(crow, col, values, shape), x.t()).t().contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        values, x, crow, col = ctx.saved_tensors
        # Under autocast or bf16 storage the incoming gradient can be 16-bit while the product
        # ran in fp32; cuSPARSE refuses mixed dtypes, so bring it to the compute dtype.
        grad = grad.to(values.dtype)
        grad_values = grad_x = None
        if _is_fake(values):  # memlab.estimate: the same allocations, without sparse kernels
            if ctx.needs_input_grad[1]:
                grad_x = x.new_empty(x.shape[1], x.shape[0]).t()
            if ctx.needs_input_grad[0]:
                zeros = torch.zeros_like(values)
                g_t = grad.t().contiguous()
                grad_values = values.new_empty(values.shape)
                del zeros, g_t
            return grad_values, grad_x, None, None, None
        if ctx.needs_input_grad[1]:
            w = _csr(crow, col, values, ctx.shape)
            grad_x = torch.sparse.mm(w.t(), grad.t()).t()
        if ctx.needs_input_grad[0]:
            # zeros, not empty: sampled_addmm computes beta * input even for beta=0, and
            # 0 * NaN from uninitialised memory is NaN.
            pattern = _csr(crow, col, torch.zeros_like(values), ctx.shape)
            grad_values = torch.sparse.sampled_addmm(
                pattern, grad.t().contiguous(), x, beta=0.0
            ).values()
        return grad_values, grad_x, None, None, None


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored as CSR: ``values`` (trainable), ``col_indices``
    and ``crow_indices``. Computes in fp32 when the values are 16-bit and under autocast
    (torch's CPU sparse matmul has no bf16/fp16 kernel) and returns the input's dtype."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        crow_indices: torch.Tensor,
        col_indices: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.values = nn.Parameter(values)
        self.register_buffer("crow_indices", crow_indices)
        self.register_buffer("col_indices", col_indices)
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, sparsity: float) -> SparseLinear:
        """Prune ``linear`` by magnitude and store what survives as CSR."""
        w = linear.weight.detach()
        kept = w * magnitude_mask(w, sparsity)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            csr = kept.to_sparse_csr()
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(
            linear.in_features,
            linear.out_features,
            csr.crow_indices().clone(),
            csr.col_indices().clone(),
            csr.values().clone(),
            bias,
        ).to(w.device)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def density(self) -> float:
        return self.nnz / (self.in_features * self.out_features)

    def weight_csr(self) -> torch.Tensor:
        """The weight as a CSR tensor (shares storage with the parts; no copy)."""
        return _csr(
            self.crow_indices, self.col_indices, self.values, (self.out_features, self.in_features)
        )

    def to_dense_weight(self) -> torch.Tensor:
        return self.weight_csr().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        values: torch.Tensor = self.values
        if values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        # Outside autocast: it would cast the sparse product's operands to 16 bits, for which
        # torch's CPU sparse kernels (MKL) have no implementation and cuSPARSE no mixed mode.
        with torch.autocast(x.device.type, enabled=False):
            out = _SparseMM.apply(
                values,
                x2.to(values.dtype),
                self.crow_indices,
                self.col_indices,
                (self.out_features, self.in_features),
            )
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        return out.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nnz={self.nnz}, density={self.density:.3f}"
        )


# -- the knob ---------------------------------------------------------------------------------
def _replace_linears(model: nn.Module, sparsity: float) -> list[SparseLinear]:
    out: list[SparseLinear] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                sl = SparseLinear.from_dense(child, sparsity)
                setattr(parent, name, sl)
                out.append(sl)
    return out


def apply_sparsity(workload: Workload, sparsity: float, storage: str = "mask") -> Workload:
    """Prune ``workload``'s Linear and Conv2d weights to ``sparsity`` (0..``MAX_SPARSITY``) by
    magnitude and store them as ``storage`` (``mask`` or ``sparse``; see the module docstring).
    In place; returns the workload. The optimizer is rebuilt over the new parameters."""
    from torch.nn.utils import prune

    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or not (0.0 <= sparsity <= MAX_SPARSITY)
    ):
        raise ValueError(
            f"sparsity must be a number with 0 <= sparsity <= {MAX_SPARSITY}, got {sparsity!r}"
        )
    if storage not in SPARSE_STORAGES:
        raise ValueError(f"sparse_storage must be one of {list(SPARSE_STORAGES)}, got {storage!r}")
    workload.applied["sparsity"] = float(sparsity)
    workload.applied["sparse_storage"] = storage
    if sparsity == 0:
        return workload
    model = workload.model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if storage == "mask":
        layers = [m for m in model.modules() if type(m) is nn.Linear] + convs
        for m in layers:
            prune.l1_unstructured(m, "weight", amount=float(sparsity))
        workload.notes.append(
            f"sparsity {sparsity:g} as masks on {len(layers)} layers: each keeps its dense "
            "weight plus a dense mask, so parameter memory grows instead of shrinking"
        )
    else:
        sparse = _replace_linears(model, float(sparsity))
        with torch.no_grad():
            for m in convs:
                m.weight.mul_(magnitude_mask(m.weight, float(sparsity)))
        vb = next((s.values.element_size() for s in sparse), 4)
        dense = sum(dense_bytes(s.out_features, s.in_features, vb) for s in sparse)
        stored = sum(csr_bytes(s.out_features, s.in_features, s.nnz, vb) for s in sparse)
        cross = min(
            (density_crossover(s.out_features, s.in_features, vb) for s in sparse), default=0.0
        )
        msg = (
            f"sparsity {sparsity:g} stored as CSR in {len(sparse)} Linear layers: "
            f"{dense} dense bytes -> {stored} bytes; CSR pays in every layer only below "
            f"density {cross:.3f} "
            f"(sparsity above {1 - cross:.3f})"
        )
        workload.measures.update(
            sparse_dense_equivalent_bytes=dense,
            sparse_csr_bytes=stored,
            sparse_density_crossover=round(cross, 4),
        )
        if convs:
            conv_bytes = sum(m.weight.numel() * m.weight.element_size() for m in convs)
            msg += f"; {len(convs)} conv layers pruned but stored dense ({conv_bytes} bytes)"
        workload.notes.append(msg)
    workload.rebuild_optimizer()
    return workload
