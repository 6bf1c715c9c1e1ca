"""Compression: fewer bytes per weight by structure, not by a narrower dtype.

Two ways, both with real storage (the bytes the model holds go down; ``param_bytes_by_dtype``
and the tracker's ``parameters`` category show it):

- ``svd`` (low rank): each layer's weight ``W`` (``out x in``; a convolution's is
  ``out x in*kh*kw``) is replaced by its truncated SVD at rank ``r = min(rank, out, in)``,
  ``W ~ (U sqrt(S)) (sqrt(S) V^T)``, as two layers: a Linear ``in -> r`` (no bias) then a
  Linear ``r -> out`` (the bias); a convolution becomes a ``kh x kw`` convolution to ``r``
  channels then a ``1 x 1`` convolution to ``out`` (the channel decomposition of Zhang et al.,
  "Accelerating Very Deep Convolutional Networks", TPAMI 2016). The square root of ``S`` goes to
  both factors so that neither starts with a much larger scale than the other (it trains
  better than all of ``S`` on one side). ``r*(out+in)`` numbers replace ``out*in``: a layer
  where the factored form would be as large or larger is left dense, and the note counts them.
  No layer is exempt by name, the output classifier included: the size rule alone decides (a
  10-class head is factored only at rank < 10 * in / (10 + in), about 9, and that is what rank
  1 costs in accuracy). Trainable: the factors are ordinary layers (mode ``train`` works).
- ``shared`` (weight sharing, Han, Mao and Dally, "Deep Compression", ICLR 2016, section 3):
  each layer's weights are clustered into ``2**bits`` values by 1-D k-means with linear
  initialisation (their finding: linear init keeps the rare large weights, which matter
  most), and stored as ``bits``-bit indices packed densely into a ``uint8`` buffer
  (``ceil(n*bits/8)`` bytes, 3-bit indices take 3 bits, not a byte) plus a float32 codebook of
  ``2**bits`` values. The forward unpacks a dense fp32 weight on every call, then runs
  ``F.linear`` / ``F.conv2d``: that weight (4 bytes per weight) and the int32 indices it is
  looked up with (4 more) are short-lived, so the tracker counts them as temporaries, and a
  request's peak can be above the dense model's while the model's own bytes are far below.
  Inference only (the indices cannot be trained; Deep Compression fine-tunes the centroids,
  which this lab does not).

Convolutions too (``nn.Conv2d``, ``groups=1``), not only Linear layers: Deep Compression shares
the weights of both, and the CNN keeps nearly all its weights in convolutions, so a Linear-only
knob would leave it untouched.

Composition:

- with sparsity ``mask`` (torch's prune): the mask is folded into the weight first
  (``torch.nn.utils.prune.remove``). ``shared`` then keeps exact zeros: code 0 is reserved for
  0.0 and the other ``2**bits - 1`` values are clustered from the surviving weights (Deep
  Compression clusters the weights that survive pruning). ``svd`` factors the pruned weight; its
  factors are dense, so the zeros are not kept (the note says so).
- with sparsity ``sparse`` (``SparseLinear``, CSR): ``shared`` codes the CSR ``values`` through
  the codebook (``SharedSparseLinear``: packed codes, codebook, and the CSR index buffers); the
  pruned convolutions are dense with zeros and are coded like the ``mask`` case. ``svd`` is an
  error: the factors of a CSR layer are dense, so the sparse storage would be undone.
- with precision: ``svd``'s factors are ordinary Linear layers, so quantization converts them
  like any other; ``shared`` layers are not ``nn.Linear``, so quantization leaves them alone.
  ``bf16`` converts the codebook to bf16 (the indices stay ``uint8``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import COMPRESSIONS, ConfigError
from memlab.knobs.sparsity import SparseLinear, _SparseMM
from memlab.workloads.base import Workload

__all__ = [
    "apply_compression",
    "LowRank",
    "SharedLinear",
    "SharedConv2d",
    "SharedSparseLinear",
    "pack_indices",
    "unpack_indices",
    "kmeans_1d",
    "lowrank_numel",
    "shared_bytes",
]


# -- the arithmetic ---------------------------------------------------------------------------
def lowrank_numel(out_features: int, in_features: int, rank: int) -> int:
    """Weights of the rank-``min(rank, out, in)`` factors of an ``out x in`` matrix (no bias)."""
    r = min(rank, out_features, in_features)
    return r * (out_features + in_features)


def shared_bytes(n: int, bits: int, codebook_bytes: int = 4) -> int:
    """Bytes of ``n`` weights stored as ``bits``-bit packed indices plus a codebook of
    ``2**bits`` values: ``ceil(n*bits/8) + codebook_bytes * 2**bits``."""
    return -(-n * bits // 8) + codebook_bytes * 2**bits


# -- packing b-bit indices --------------------------------------------------------------------
# The layout is the little-endian bit stream numpy's ``packbits(bitorder="little")`` writes:
# index i occupies stream bits [i*b, (i+1)*b), least significant bit first. Written by hand
# because torch has no sub-byte pack (its ``uint1..uint7`` dtypes have no kernels for this) and
# numpy cannot run inside a forward (nor under the estimator's fake tensors). Eight indices fill
# exactly ``b`` bytes, so each of the 8 positions of a group has a fixed byte and shift: the
# loops below run 8 times, each over all groups at once.
def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"codebook_bits must be an integer from 1 to 8, got {bits!r}")


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """``indices`` (integers in ``[0, 2**bits)``, any shape) packed ``bits`` bits each into a
    flat ``uint8`` tensor of ``ceil(n*bits/8)`` bytes."""
    _check_bits(bits)
    flat = indices.reshape(-1).to(torch.int32)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"indices must lie in [0, {2**bits}) for {bits} bits")
    groups = -(-n // 8)
    padded = torch.zeros(groups * 8, dtype=torch.int32, device=flat.device)
    padded[:n] = flat
    v = padded.view(groups, 8)
    out = torch.zeros((groups, bits), dtype=torch.int32, device=flat.device)
    for j in range(8):
        k, s = divmod(j * bits, 8)
        out[:, k] |= (v[:, j] << s) & 0xFF
        if s + bits > 8:  # the index runs into the next byte
            out[:, k + 1] |= v[:, j] >> (8 - s)
    return out.to(torch.uint8).view(-1)[: -(-n * bits // 8)].clone()


def unpack_indices(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` indices of ``packed`` (``pack_indices``' layout), as ``int32`` (what
    ``index_select`` takes; ``uint8`` indices would be read as a boolean mask)."""
    _check_bits(bits)
    groups = -(-n // 8)
    need = groups * bits
    p = packed
    if p.numel() < need:  # the last group was cut short when stored: pad it back (a temporary)
        p = torch.cat([p, p.new_zeros(need - p.numel())])
    p = p[:need].view(groups, bits)
    out = torch.empty((groups, 8), dtype=torch.int32, device=p.device)
    for j in range(8):
        k, s = divmod(j * bits, 8)
        v = p[:, k].to(torch.int32)
        if s + bits > 8:
            v = v | (p[:, k + 1].to(torch.int32) << 8)
        v = v >> s
        # The low ``bits`` bits, by shifts rather than ``& mask``: allocation 'preallocated'
        # (knobs/inference.py, out_variant) pairs aten.bitwise_and.Scalar with the Tensor out
        # overload (same argument names) and fails; the shifts run as they are.
        out[:, j] = v - ((v >> bits) << bits)
    return out.view(-1)[:n]


# -- 1-D k-means ------------------------------------------------------------------------------
def kmeans_1d(
    values: torch.Tensor, k: int, *, iters: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of the numbers in ``values`` into ``k`` clusters, linearly initialised
    over ``[min, max]`` (Deep Compression, section 3.3). Returns ``(centroids, indices)``:
    ``k`` sorted float32 centroids and, per value, the index of its nearest one (int64).

    Hand written because in one dimension each cluster is a run of the sorted values, so an
    iteration is a ``searchsorted`` of the ``k - 1`` midpoints plus prefix sums, O(k log n),
    where scikit-learn's general ``KMeans`` is O(n k) per iteration (256 clusters of a million
    weights: seconds per layer instead of milliseconds). Empty clusters keep their centroid."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = values.detach().reshape(-1).double()
    n = x.numel()
    if n == 0:
        return torch.zeros(k, dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    xs = torch.sort(x).values
    csum = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
    c = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64, device=x.device)
    prev: torch.Tensor | None = None
    for _ in range(iters):
        bounds = torch.searchsorted(xs, (c[1:] + c[:-1]) / 2)  # values < midpoint go left
        if prev is not None and torch.equal(bounds, prev):
            break  # assignments unchanged: converged
        prev = bounds
        lo = torch.cat([bounds.new_zeros(1), bounds])
        hi = torch.cat([bounds, bounds.new_full((1,), n)])
        count = hi - lo
        means = (csum[hi] - csum[lo]) / count.clamp(min=1)
        c = torch.sort(torch.where(count > 0, means, c)).values
    idx = torch.searchsorted((c[1:] + c[:-1]) / 2, x, right=True)
    return c.float(), idx


def _codebook(
    weight: torch.Tensor, bits: int, keep_zero: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codebook, indices)`` for ``weight``; with ``keep_zero``, code 0 is exactly 0.0 and the
    nonzero weights share the other ``2**bits - 1`` values."""
    w = weight.detach().reshape(-1).float()
    k = 2**bits
    if not keep_zero:
        return kmeans_1d(w, k)
    nz = w != 0
    cents, sub = kmeans_1d(w[nz], k - 1)
    idx = torch.zeros(w.numel(), dtype=torch.int64, device=w.device)
    idx[nz] = sub + 1
    return torch.cat([cents.new_zeros(1), cents]), idx


# -- the layers -------------------------------------------------------------------------------
class LowRank(nn.Sequential):
    """Two layers standing for one: ``in -> rank`` then ``rank -> out`` (Linear or conv)."""

    def __init__(self, first: nn.Module, second: nn.Module, rank: int) -> None:
        super().__init__(first, second)
        self.rank = rank

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


def _factor(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation of the 2-D ``w``
    (Eckart-Young), ``sqrt(S)`` on each side. ``torch.linalg.svd``, reduced."""
    u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).contiguous(), (root[:, None] * vh[:rank]).contiguous()


def _lowrank_linear(m: nn.Linear, rank: int) -> LowRank:
    a, b = _factor(m.weight, rank)
    first = nn.Linear(m.in_features, rank, bias=False, device=m.weight.device)
    second = nn.Linear(rank, m.out_features, bias=m.bias is not None, device=m.weight.device)
    with torch.no_grad():
        first.weight.copy_(b)
        second.weight.copy_(a)
        if m.bias is not None and second.bias is not None:
            second.bias.copy_(m.bias)
    return LowRank(first, second, rank)


def _lowrank_conv(m: nn.Conv2d, rank: int) -> LowRank:
    out_c, in_c, kh, kw = m.weight.shape
    a, b = _factor(m.weight.reshape(out_c, in_c * kh * kw), rank)
    first = nn.Conv2d(
        in_c,
        rank,
        (kh, kw),
        stride=m.stride,  # type: ignore[arg-type]
        padding=m.padding,  # type: ignore[arg-type]
        dilation=m.dilation,  # type: ignore[arg-type]
        bias=False,
        padding_mode=m.padding_mode,
        device=m.weight.device,
    )
    second = nn.Conv2d(rank, out_c, 1, bias=m.bias is not None, device=m.weight.device)
    with torch.no_grad():
        first.weight.copy_(b.reshape(rank, in_c, kh, kw))
        second.weight.copy_(a.reshape(out_c, rank, 1, 1))
        if m.bias is not None and second.bias is not None:
            second.bias.copy_(m.bias)
    return LowRank(first, second, rank)


class _Shared(nn.Module):
    """Packed ``bits``-bit codes (``uint8`` buffer) and a codebook (float buffer) standing for a
    weight of ``shape``; ``weight()`` unpacks a dense copy (a temporary, on every call)."""

    codes: torch.Tensor
    codebook: torch.Tensor

    def __init__(
        self,
        shape: tuple[int, ...],
        codes: torch.Tensor,
        codebook: torch.Tensor,
        bits: int,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.bits = bits
        self.register_buffer("codes", codes)
        self.register_buffer("codebook", codebook)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def weight(self) -> torch.Tensor:
        idx = unpack_indices(self.codes, self.bits, self.numel)
        return self.codebook.index_select(0, idx).view(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, bits={self.bits}"


class SharedLinear(_Shared):
    """A Linear layer whose weight is ``bits``-bit codes into a shared codebook."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class SharedConv2d(_Shared):
    """A Conv2d (zeros padding) whose weight is ``bits``-bit codes into a shared codebook."""

    def __init__(self, conv: nn.Conv2d, codes: torch.Tensor, codebook: torch.Tensor, bits: int):
        bias = None if conv.bias is None else conv.bias.detach().clone()
        super().__init__(tuple(conv.weight.shape), codes, codebook, bits, bias)
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class SharedSparseLinear(_Shared):
    """A ``SparseLinear`` whose CSR values are ``bits``-bit codes into a shared codebook; the
    CSR index buffers are kept as they were. The product is ``SparseLinear``'s
    (``memlab.knobs.sparsity._SparseMM``, which also stands in under the estimator's fakes)."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor

    def __init__(self, sl: SparseLinear, codes: torch.Tensor, codebook: torch.Tensor, bits: int):
        bias = None if sl.bias is None else sl.bias.detach().clone()
        super().__init__((sl.nnz,), codes, codebook, bits, bias)
        self.in_features = sl.in_features
        self.out_features = sl.out_features
        self.register_buffer("crow_indices", sl.crow_indices)
        self.register_buffer("col_indices", sl.col_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        values = self.weight().float()  # torch's CPU sparse matmul has no 16-bit kernels
        with torch.autocast(x.device.type, enabled=False):
            out = _SparseMM.apply(
                values,
                x.reshape(-1, self.in_features).to(values.dtype),
                self.crow_indices,
                self.col_indices,
                (self.out_features, self.in_features),
            )
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        return out.to(x.dtype).reshape(*lead, self.out_features)


# -- the knob ---------------------------------------------------------------------------------
def _fold_masks(model: nn.Module) -> int:
    """Fold torch's pruning masks into plain weights (``prune.remove``); returns how many."""
    from torch.nn.utils import prune

    n = 0
    for m in model.modules():
        if prune.is_pruned(m) and hasattr(m, "weight_orig"):
            prune.remove(m, "weight")
            n += 1
    return n


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, str, nn.Module]]:
    """``(parent, name, qualified name, layer)`` for every Linear, Conv2d and SparseLinear, in
    module order."""
    out = []
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, nn.Conv2d, SparseLinear):
                out.append((parent, name, f"{prefix}.{name}" if prefix else name, child))
    return out


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def apply_compression(
    workload: Workload, compression: str = "none", rank: int = 16, codebook_bits: int = 4
) -> Workload:
    """Compress ``workload``'s Linear and Conv2d layers in place (``none``, ``svd`` at
    ``rank``, ``shared`` with ``codebook_bits``; see the module docstring); returns it. Apply
    after sparsity and before precision. Records the bytes before and after in
    ``workload.measures`` and explains itself in ``workload.notes``."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    _check_bits(codebook_bits)
    workload.applied["compression"] = compression
    if compression == "none":
        return workload
    model = workload.model
    sparse_layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    if compression == "svd":
        workload.applied["rank"] = rank
        if sparse_layers:
            raise ConfigError(
                "svd and sparse storage cannot be combined: the low-rank factors of a CSR layer "
                "are dense, which would undo the sparse storage; use sparse_storage 'mask' "
                "(pruned, then factored) or compression 'shared' (CSR values coded)"
            )
    else:
        workload.applied["codebook_bits"] = codebook_bits
        if workload.mode != "inference":
            raise ConfigError(
                "compression 'shared' (b-bit codebook indices) works for mode 'inference' only, "
                f"got mode {workload.mode!r} (use compression 'svd' or 'none' for training)"
            )
    folded = _fold_masks(model)
    pruned = float(workload.applied.get("sparsity", 0.0) or 0.0) > 0
    before = after = 0
    done = 0
    larger: list[str] = []  # layers left dense: the compressed form would not be smaller
    other: list[str] = []  # layers left dense for another reason (said why)
    for parent, name, label, layer in _targets(model):
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            other.append(f"{label} (groups {layer.groups}, padding {layer.padding_mode})")
            continue
        new: nn.Module
        if compression == "svd":
            w = layer.weight
            assert isinstance(w, torch.Tensor)
            out_f, in_f = w.shape[0], w[0].numel()
            r = min(rank, out_f, in_f)
            dense_n, low_n = out_f * in_f, lowrank_numel(out_f, in_f, r)
            if low_n >= dense_n:
                larger.append(label)
                continue
            if isinstance(layer, nn.Linear):
                new = _lowrank_linear(layer, r)
            else:
                assert isinstance(layer, nn.Conv2d)
                new = _lowrank_conv(layer, r)
            before += dense_n * w.element_size()
            after += low_n * w.element_size()
        else:
            values: torch.Tensor
            if isinstance(layer, SparseLinear):
                values = layer.values
                n, dense_b = values.numel(), _nbytes(values)
                keep_zero = False  # CSR stores the survivors only: no zeros to keep
            else:
                w = layer.weight
                assert isinstance(w, torch.Tensor)
                n, dense_b = w.numel(), _nbytes(w)
                keep_zero = pruned
                values = w
            if shared_bytes(n, codebook_bits) >= dense_b:
                larger.append(label)
                continue
            book, idx = _codebook(values, codebook_bits, keep_zero)
            codes = pack_indices(idx, codebook_bits)
            book = book.to(values.device)
            if isinstance(layer, SparseLinear):
                new = SharedSparseLinear(layer, codes, book, codebook_bits)
            elif isinstance(layer, nn.Conv2d):
                new = SharedConv2d(layer, codes, book, codebook_bits)
            else:
                assert isinstance(layer, nn.Linear)
                bias = None if layer.bias is None else layer.bias.detach().clone()
                new = SharedLinear(tuple(layer.weight.shape), codes, book, codebook_bits, bias)
            before += dense_b
            after += _nbytes(codes, book)
        new.train(layer.training)
        setattr(parent, name, new)
        done += 1
    workload.rebuild_optimizer()
    workload.measures.update(
        compression_layers=done,
        compression_left_dense=len(larger) + len(other),
        compression_weight_bytes_before=before,
        compression_weight_bytes_after=after,
    )
    if compression == "svd":
        msg = (
            f"svd at rank {rank}: {done} layers factored into two (rank min({rank}, out, in)); "
            f"their weights {before} bytes -> {after} bytes (biases unchanged)"
        )
        if folded:
            msg += f"; {folded} pruning masks folded first (the dense factors do not keep zeros)"
    else:
        msg = (
            f"shared {codebook_bits}-bit: {done} layers' weights clustered to "
            f"{2**codebook_bits} values (1-D k-means, Deep Compression), stored as packed "
            f"{codebook_bits}-bit indices plus an fp32 codebook: {before} bytes -> {after} "
            "bytes; each forward unpacks a dense fp32 weight and int32 indices per layer "
            "(8 bytes per weight), short-lived: the tracker counts them as temporaries"
        )
        if pruned:
            msg += "; pruned zeros kept exact (code 0 is 0.0)"
        if folded:
            msg += f"; {folded} pruning masks folded first"
        if sparse_layers:
            msg += f"; {len(sparse_layers)} CSR layers have their values coded (indices kept)"
    if larger:
        msg += (
            f"; {len(larger)} layers left dense because the compressed form would not be "
            f"smaller ({', '.join(larger)})"
        )
    if other:
        msg += f"; {len(other)} convolutions left dense (not supported: {', '.join(other)})"
    workload.notes.append(msg)
    return workload
