"""Op-internal buffers of CPU aten ops: the bytes a dispatch-level view of a step does not see.

``memlab.estimate`` replays a training step under ``FakeTensorMode`` and records the storages
each aten op allocates and frees. That is exact for what crosses the dispatcher (outputs,
saved activations, gradients, optimizer state) and blind to what a kernel allocates for itself
and frees before it returns: oneDNN's reorders and scratchpads inside convolution and LSTM,
``.contiguous()`` copies of strided inputs, per-thread reduction buffers. Those buffers are
what ``internal_bytes`` predicts, from shapes, dtypes, strides and devices only (FakeTensors
carry no data), for one op call::

    peak during the call = live bytes before + bytes of the outputs it allocates
                           + internal_bytes(func, args, kwargs, out)

(an op that aliases an input allocates no output bytes). ``real_output_bytes`` covers the one
case where a *fake* output is smaller than the real one: oneDNN's LSTM workspace, which the
meta function reports as 0 bytes but which the real kernel allocates and autograd keeps until
the backward pass.

How the figures were obtained (torch 2.13.0 CPU, oneDNN 3.12, AVX-512, float32, 1/2/4 threads):
memlab's allocation recorder (``memlab/tracking/_alloc.cpp``) sees every CPU allocation, so for
one real op call ``internal = peak - live before - new output storages``; the sequence of
allocations inside the call (with ``ONEDNN_VERBOSE=1`` naming the primitives oneDNN chose)
shows which buffer is which. The rules below reproduce those sequences; each cites the kernel.
Calibrated: the ops in ``CALIBRATED_OPS`` as they occur in MLPs, CNNs (3x3 and 1x1, stride 1
and 2, depthwise, first layer with few input channels), transformer encoders/decoders (flash
and math attention), LSTMs, embeddings, cross-entropy and the Adam/AdamW/SGD steps
(``tests/test_estimate_ops.py`` checks them against the recorder). On a grid of 1,600 float32
convolutions (N 1-64, C 1-1024, H 7-112, k 1/3/5/7, stride 1/2, groups 1/C, 1/2/4 threads) the
convolution rules are within 1% of the measured internal bytes forward and within 5% for 98%
of the backward calls; the misses are oneDNN scratchpads of rare shapes (odd input sizes with a
strided 1x1 kernel). Thread count matters (per-thread buffers), so the current
``torch.get_num_threads()`` is used unless ``num_threads`` is given; so does the CPU's vector
width: oneDNN blocks channels by 16 on AVX-512 and by 8 on AVX2 (``_dnnl_block``). On a real
AVX2 CPU (AMD EPYC, 2 threads) the AVX2 direct kernel's backward weights follow its own rule
(``_avx2_bwd_w_scratch``: reducer space only where fewer weight blocks than threads); on 27
shapes x 1/2/4 threads it is exact but for 3 four-thread shapes, off by 4-8 KiB (under 4%); the
AVX2 1x1 kernel's backward (its 2D reducer is not transcribed) is within 2% on the test shapes.
16-bit (bf16) convolutions use the same rules at 2 bytes per element: forward exact, backward
approximate (see the note in ``_mkldnn_conv``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = [
    "internal_bytes",
    "real_output_bytes",
    "conv_backend",
    "CALIBRATED_OPS",
    "csr_mm_internal",
    "csr_mm_transposed_internal",
    "csr_sampled_addmm_internal",
]

_Rule = Callable[[Sequence[Any], dict[str, Any], Any, int], int]
_RULES: dict[str, _Rule] = {}


def _rule(*names: str) -> Callable[[_Rule], _Rule]:
    def deco(fn: _Rule) -> _Rule:
        for n in names:
            _RULES[n] = fn
        return fn

    return deco


# ------------------------------------------------------------------ helpers


def _is_t(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _nbytes(t: Any) -> int:
    return int(t.numel()) * int(t.element_size()) if _is_t(t) else 0


def _copy_if_strided(t: Any) -> int:
    """Bytes of ``t.contiguous()`` (a new buffer when ``t`` is not contiguous)."""
    return _nbytes(t) if _is_t(t) and not t.is_contiguous() else 0


def _arg(
    args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = None
) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _up(x: int, b: int) -> int:
    return -(-x // b) * b


def _div_up(a: int, b: int) -> int:
    return -(-a // b)


def _ints(v: Any, n: int) -> list[int]:
    vals = [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]
    return vals * n if len(vals) == 1 else vals


# ------------------------------------------------------------------ convolution


def conv_backend(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    bias_sizes: Sequence[int] | None = None,
) -> str:
    """The kernel family ``at::convolution`` picks for these arguments (``'Mkldnn'``,
    ``'Slow2d'``, ...): ATen's own ``select_conv_backend`` (aten/src/ATen/native/
    Convolution.cpp), which reads only metadata, so it accepts FakeTensors. It depends on the
    thread count: a 1x1 convolution with batch < 16 runs on ``Slow2d`` with 1 thread and on
    oneDNN with more (``ConvParams::use_mkldnn``)."""
    try:
        a = (
            input,
            weight,
            bias,
            list(stride),
            list(padding),
            list(dilation),
            bool(transposed),
            list(output_padding),
            int(groups),
        )
        if bias_sizes is not None:
            b = torch._C._select_conv_backend(*a, list(bias_sizes))
        else:
            b = torch._C._select_conv_backend(*a)
        return str(b).rsplit(".", 1)[-1]
    except Exception:  # an argument combination the selector rejects: not our business here
        return "Unknown"


def _bwd_w_nthr_mb(
    mb: int,
    ic: int,
    oc: int,
    ih: int,
    iw: int,
    oh: int,
    ow: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    first: bool,
    nthreads: int,
) -> int:
    """Threads oneDNN's f32 backward-weights kernel splits the minibatch over (each extra one
    owns a private copy of the weight gradient in the scratchpad). A transcription of
    ``jit_avx512_common_conv_bwd_weights_kernel_f32::balance`` (oneDNN src/cpu/x64/
    jit_avx512_common_conv_kernel.cpp, min_oh_reduce = 9, 2D NCHW-blocked, one group)."""
    ic_block = ic if first else 16
    nb_ic, nb_oc = _div_up(ic, ic_block), _div_up(oc, 16)
    red2d = oh > 9  # harness_2d_reduction
    ih_r, oh_r = (ih, oh) if red2d else (1, 1)
    ih_n, oh_n = (1, 1) if red2d else (ih, oh)
    nthr_oh = max(1, oh_r // 9)

    def mem(nmb: int, nocb: int, nicb: int) -> int:
        return (
            _div_up(mb * ih_r, nmb) * _div_up(nb_ic, nicb) * ic_block * ih_n * iw // sh // sw
            + _div_up(mb * oh_r, nmb) * _div_up(nb_oc, nocb) * 16 * oh_n * ow
            + 8 * _div_up(nb_oc, nocb) * _div_up(nb_ic, nicb) * kh * kw * ic_block * 16
        )

    def comp(nmb: int, nocb: int, nicb: int) -> int:
        return _div_up(mb * oh_r, nmb) * _div_up(nb_oc, nocb) * _div_up(nb_ic, nicb)

    nmax = min(nthreads, mb * nthr_oh)
    cands = [
        (nmb, nocb, min(nthreads // nmb // nocb, nb_ic))
        for nmb in range(1, nmax + 1)
        for nocb in range(1, min(nthreads // nmb, nb_oc) + 1)
    ]
    best = (1, 1, 1)
    best_mem = mem(*best)
    for c in cands:
        if mem(*c) <= best_mem:
            best, best_mem = c, mem(*c)
    best_comp = comp(*best)
    for c in cands:
        if (comp(*c) <= best_comp and mem(*c) < 1.1 * best_mem) or 4 * comp(*c) <= 3 * best_comp:
            best, best_comp = c, comp(*c)
    nmb = best[0]
    if nthreads // 2 < nmb < nthreads:
        nmb = min(mb * nthr_oh, nthreads)
    return nmb


def _bwd_w_1x1_nthr_mb(mb: int, ic: int, oc: int, os_: int, sh: int, sw: int, nthreads: int) -> int:
    """The same for oneDNN's 1x1 kernel: ``jit_avx512_common_1x1_conv_kernel::balance``
    (src/cpu/x64/jit_avx512_common_1x1_conv_kernel.cpp); the reduction dimension (minibatch x
    spatial) is taken whole, which is what its blocking amounts to for the shapes measured."""
    nb_b, nb_l = _div_up(ic, 16), _div_up(oc, 16)

    def mem(nmb: int, nocb: int, nicb: int) -> int:
        red = _div_up(mb * os_, nmb)
        return (
            red * _div_up(nb_b, nicb) * 16 // sh // sw
            + red * _div_up(nb_l, nocb) * 16
            + 12 * _div_up(nb_l, nocb) * _div_up(nb_b, nicb) * 256
        )

    best, best_mem = (1, 1, 1), mem(1, 1, 1)
    for nmb in range(1, min(nthreads, mb * os_) + 1):
        for nocb in range(1, min(nthreads // nmb, nb_l) + 1):
            c = (nmb, nocb, min(nthreads // nmb // nocb, nb_b))
            if mem(*c) <= best_mem:
                best, best_mem = c, mem(*c)
    nmb = best[0]
    if nthreads // 2 < nmb < nthreads:
        nmb = min(mb, nthreads)
    return nmb


def _reducer_scratch(nthr: int, job: int, njobs: int, red: int, max_buf: int) -> int:
    """Scratchpad bytes of oneDNN's ``cpu_reducer_t`` (float): threads that share one job each
    keep a private partial sum, reduced at the end. ``reduce_balancer_t::balance``
    (src/cpu/x64/cpu_reducer.cpp) decides how many threads share a job; transcribed here. The
    fixed 12 KiB on top of the partial sums is measured (torch 2.13's oneDNN, AVX2, 1/2/4
    threads): the space's 4 KiB alignment, the barriers and the registry's per-entry padding."""
    min_per = max(1, njobs // nthr)
    max_per = max(1, max_buf // (nthr * job))
    ngroups = min(njobs // min_per, nthr)
    npg = min(nthr // ngroups, red)
    ub = _div_up(njobs, ngroups)
    best = njobs * job * red
    for c in range(min_per, njobs):
        c_ngroups = min(njobs // c, nthr)
        c_npg = min(nthr // c_ngroups, red)
        c_ub = _div_up(njobs, c_ngroups)
        if c_npg > 1 and c_ub > max_per:
            continue
        cplx = job * c_ub * (_div_up(red, c_npg) + (c_npg != 1))
        if cplx < best:
            ngroups, npg, ub, best = c_ngroups, c_npg, c_ub, cplx
    if npg == 1:
        return 0
    return ngroups * (npg - 1) * ub * job * 4 + 12288


def _avx2_bwd_w_scratch(
    n: int, cin: int, cout: int, kk: int, flat: bool, bias: bool, nthreads: int
) -> int:
    """Scratchpad of oneDNN's ``jit_avx2_convolution_bwd_weights_t`` (the AVX2 direct kernel,
    src/cpu/x64/jit_avx2_convolution.hpp ``init_balancers``): a reducer over the minibatch for
    the weight gradient (jobs of kh*kw*ic_block*8 floats, one per (ic block, oc block)) and one
    for the bias (jobs of 8 floats), each with a 2 MiB buffer limit; plus a padded bias."""
    icb = cin if flat else 8
    njobs = (1 if flat else _div_up(cin, 8)) * _div_up(cout, 8)
    s = _reducer_scratch(nthreads, kk * icb * 8, njobs, n, 1 << 21)
    if bias:
        s += _reducer_scratch(nthreads, 8, _div_up(cout, 8), n, 1 << 21)
        if cout % 8:
            s += _up(cout, 8) * 4 + 128
    return s


def _brgconv_strided_scratch(
    cout: int,
    h: int,
    w: int,
    ho: int,
    wo: int,
    pad: int,
    sh: int,
    sw: int,
    itemsize: int,
    nthreads: int,
) -> int:
    """Scratchpad of oneDNN's ``brgconv_strided`` backward-data kernel (the one it picks for a
    strided convolution on AVX-512): a per-thread padded copy of one image's output gradient,
    in 16 KiB steps, plus fixed parts. Fitted to 140 shapes x 3 thread counts (exact on all of
    them but odd input sizes)."""
    odd = bool(h % sh or w % sw)
    x = ho * (wo + 2) if odd else (ho + pad) * (wo + pad)
    per_thread = 24 + 8192 + _up(cout * x * itemsize, 16384)
    return (16384 if odd else 12288) + nthreads * per_thread


def _mkldnn_conv(
    n: int,
    cin: int,
    h: int,
    w: int,
    cout: int,
    ho: int,
    wo: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    pad: int,
    groups: int,
    bias: bool,
    mask: Sequence[bool] | None,
    itemsize: int,
    nthreads: int,
    blk: int = 16,
) -> int:
    """oneDNN convolution through ideep, NCHW-contiguous activations
    (aten/src/ATen/native/mkldnn/Conv.cpp, ``_mkldnn_convolution`` and
    ``mkldnn_convolution_backward``). Note [MKLDNN Convolution Memory Formats] there: the
    input is reordered NCHW -> nChw16c (channels padded to 16), the weight OIHW -> blocked,
    the primitive writes a blocked output, and ``mkldnn_to_dense`` copies it into the NCHW
    result; the reorders and the blocked output are freed before the op returns. Which kernel
    oneDNN picks sets the formats: the "first convolution" kernel (fewer than 16 input
    channels, k > 1) reads NCHW directly, the 1x1 kernel pads even 3 channels to 16 and keeps
    a per-thread "reduce to unit stride" buffer for strides > 1, a strided backward-data runs
    on ``brgconv_strided`` in NHWC (whose result is converted twice), backward-weights may keep
    per-thread weight-gradient copies (see ``_bwd_w_nthr_mb``). ``mask`` None: forward."""
    P = _up
    kk = kh * kw

    def A(c: int, hh: int, ww: int) -> int:
        return n * c * hh * ww * itemsize

    dw = groups > 1 and groups == cin and cout == cin
    is1x1 = kh == 1 and kw == 1 and pad == 0
    first = groups == 1 and cin < blk and not is1x1
    strided = sh > 1 or sw > 1
    cin_g = cin // groups
    if mask is None:
        # Calibration (8x16x32x32 -> 32 ch, 3x3/2): [src 524288, wei 18432, dst 262144,
        # -wei, -src, out 262144, -dst]: internal = src + wei + dst - out = 542720, measured.
        if first:
            src_r, w_r = 0, P(cout, blk) * cin * kk * itemsize
        elif dw:
            src_r, w_r = A(P(cin, blk), h, w), P(cout, blk) * kk * itemsize
        else:
            src_r, w_r = A(P(cin, blk), h, w), P(cout, blk) * P(cin_g, blk) * kk * itemsize
        y = A(P(cout, blk), ho, wo)
        scratch = 0
        if is1x1 and strided and h % sh == 0 and w % sw == 0:
            scratch += nthreads * P(cin, blk) * ho * wo * itemsize + 128  # rtus buffer
        if cout % blk:
            scratch += 256  # padded bias
        out = A(cout, ho, wo)
        return max(src_r + w_r + y + scratch, y + out) - out

    gi = A(cin, h, w) if mask[0] else 0
    gw = cout * cin_g * kk * itemsize if mask[1] else 0
    gb = cout * itemsize if mask[2] else 0
    peak = 0
    if mask[0]:
        if strided and not dw and groups == 1:
            # brgconv_strided: [dy nhwc, wei, dx nhwc, scratch], then dx -> channels-last
            # dense -> contiguous (two result-sized buffers). 8x16x32x32, 32 ch, 3x3/2, 2
            # threads: [262144, 18432, 524288, 127024, ..., 524288, 524288, ...].
            sb = _brgconv_strided_scratch(cout, h, w, ho, wo, pad, sh, sw, itemsize, nthreads)
            gy_r, w_r, gx = A(cout, ho, wo), cout * P(cin, blk) * kk * itemsize, A(cin, h, w)
            peak = max(gy_r + w_r + gx + sb, gx + 2 * gi)
        else:
            gy_r = A(P(cout, blk), ho, wo)
            w_r = P(cout, blk) * (1 if dw else P(cin_g, blk)) * kk * itemsize
            gx = A(P(cin, blk), h, w)
            peak = max(gy_r + w_r + gx, gx + gi)
    if mask[1] or mask[2]:
        if dw and kk > 9:
            # depthwise kernels > 3x3: oneDNN's gemm-based backward weights, NCHW in place,
            # per-thread im2col columns (k5: 2 threads, 16x16: 64256 B measured).
            gy_r = x_r = w_b = 0
            s_w = nthreads * kk * ho * wo * itemsize + 800 * cin
        elif blk == 8 and not dw and not is1x1 and groups == 1:
            # AVX2: oneDNN's jit:avx2 direct kernel. It reads the input flat (NCHW) only for
            # exactly 3 channels (``set_default_formats``: IC() == 3); otherwise nChw8c.
            # 16x64x64x16, 3x3, 2 threads: [gy 1048576, x 1048576, w 147456, b 256], no
            # reducer space (each thread has its own (ic, oc) blocks).
            flat = cin == 3
            gy_r = A(P(cout, 8), ho, wo)
            x_r = 0 if flat else A(P(cin, 8), h, w)
            w_b = P(cout, 8) * (cin if flat else P(cin, 8)) * kk * itemsize
            s_w = _avx2_bwd_w_scratch(n, cin, cout, kk, flat, bias, nthreads)
        else:
            avx2 = blk == 16 and first and cin > 3  # AVX-512 1st-conv bwd: 1-3 channels
            gy_r = A(P(cout, blk), ho, wo)
            x_r = 0 if first and not avx2 else A(P(cin, 8 if avx2 else 16), h, w)
            if dw:
                w_b = P(cout, blk) * kk * itemsize
            elif first:
                w_b = P(cout, blk) * (P(cin, 8) if avx2 else cin) * kk * itemsize
            else:
                w_b = P(cout, blk) * P(cin_g, blk) * kk * itemsize
            s_w = 0
            if not dw and not avx2 and groups == 1:
                if is1x1:
                    nmb = _bwd_w_1x1_nthr_mb(
                        n, P(cin, blk), P(cout, blk), ho * wo, sh, sw, nthreads
                    )
                    if strided:
                        s_w += nthreads * min(P(cin, blk), 128) * ho * wo * itemsize + 128
                else:
                    nmb = _bwd_w_nthr_mb(
                        n,
                        cin if first else P(cin, blk),
                        P(cout, blk),
                        h,
                        w,
                        ho,
                        wo,
                        kh,
                        kw,
                        sh,
                        sw,
                        first,
                        nthreads,
                    )
                if nmb > 1:  # (nthr_mb - 1) private weight+bias gradients, + barrier etc.
                    s_w += (nmb - 1) * (w_b + P(cout, blk) * itemsize) + 8320
                if bias and cout % blk:
                    s_w += P(cout, blk) * itemsize + 128
            if itemsize < 4 and not first and not dw:
                # 16-bit backward weights (jit_bf16 kernel) accumulate in float: one float copy
                # of the weight gradient per thread. Approximate: on 216 bf16 shapes the
                # backward is then within 7% (median), 21% (90th percentile) -- the rest of
                # that kernel's scratchpad (transposed copies) is not modelled.
                s_w += nthreads * P(cout, blk) * P(cin_g, blk) * kk * 4
        peak = max(peak, gi + gy_r + x_r + w_b + gb + s_w, gi + w_b + 2 * gb + gw)
    return max(0, peak - (gi + gw + gb))


def _dnnl_block() -> int:
    """Channel block oneDNN uses on this CPU: 16 floats (AVX-512), 8 (AVX2 and older). Follows
    ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` when set, else ATen's detected capability."""
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if isa:
        return 16 if "AVX512" in isa or "AMX" in isa or isa == "ALL" else 8
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        return 16
    return 16 if "AVX512" in cap.upper() else 8


def _conv_geometry(
    inp: Any, weight: Any, stride: Any, padding: Any, dilation: Any
) -> tuple[int, ...] | None:
    if not (_is_t(inp) and _is_t(weight)) or inp.dim() not in (3, 4) or weight.dim() != inp.dim():
        return None
    nd = inp.dim() - 2
    st, pd, dl = _ints(stride, nd), _ints(padding, nd), _ints(dilation, nd)
    if nd == 1:  # conv1d runs as a 2D convolution of height 1 (ConvParams::view1d_as_2d)
        n, cin, w = inp.shape
        h, kh, kw, sh, sw, ph, pw = 1, 1, int(weight.shape[-1]), 1, st[0], 0, pd[0]
        dh, dw_ = 1, dl[0]
    else:
        n, cin, h, w = inp.shape
        kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
        (sh, sw), (ph, pw), (dh, dw_) = st, pd, dl
    cout = int(weight.shape[0])
    ho = (int(h) + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (int(w) + 2 * pw - dw_ * (kw - 1) - 1) // sw + 1
    return int(n), int(cin), int(h), int(w), cout, ho, wo, kh, kw, sh, sw, max(ph, pw)


def _conv_internal(
    inp: Any,
    weight: Any,
    bias_defined: bool,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    groups: int,
    mask: Sequence[bool] | None,
    backend: str,
    nthreads: int,
) -> int:
    if transposed or inp.device.type != "cpu":
        return 0
    geo = _conv_geometry(inp, weight, stride, padding, dilation)
    if geo is None:
        return 0
    n, cin, h, w, cout, ho, wo, kh, kw, sh, sw, pad = geo
    itemsize = int(inp.element_size())
    if backend == "Mkldnn":
        if (
            inp.dim() == 4
            and not inp.is_contiguous()
            and inp.is_contiguous(memory_format=torch.channels_last)
        ):
            # NHWC: oneDNN works on views of the input and output; only the weight is
            # reordered (Conv.cpp, case 2 of the memory-format note). Not calibrated beyond
            # that reorder.
            blk = _dnnl_block()
            wb = _up(cout, blk) * _up(cin // groups, blk) * kh * kw * itemsize
            return wb if mask is None else 2 * wb
        return _mkldnn_conv(
            n,
            cin,
            h,
            w,
            cout,
            ho,
            wo,
            kh,
            kw,
            sh,
            sw,
            pad,
            int(groups),
            bias_defined,
            mask,
            itemsize,
            nthreads,
            _dnnl_block(),
        )
    if backend in ("Slow2d", "SlowDilated2d"):
        # THNN im2col: slow_conv2d_forward_out_cpu / slow_conv2d_backward_out_cpu
        # (aten/src/ATen/native/ConvolutionMM2d.cpp) allocate ``finput`` / ``fgrad_input``
        # columns of [batch, Cin*kh*kw, Ho*Wo] -- none for a 1x1 stride-1 unpadded kernel,
        # which reads the input as is. Measured 1x64x14x14, 3x3: 451584 B forward and backward.
        # (The dilated path, NaiveDilatedConvolution.cpp, keeps one image's columns.)
        if kh == 1 and kw == 1 and sh == 1 and sw == 1 and pad == 0:
            return 0
        if mask is not None and not (mask[0] or mask[1]):
            return 0
        imgs = n if backend == "Slow2d" else 1
        return imgs * (cin // groups) * kh * kw * ho * wo * itemsize
    return 0


@_rule("aten.convolution.default")
def _r_convolution(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    inp, weight, bias = args[0], args[1], args[2]
    stride, padding, dilation, transposed, output_padding, groups = args[3:9]
    backend = conv_backend(
        inp, weight, bias, stride, padding, dilation, transposed, output_padding, groups
    )
    return _conv_internal(
        inp,
        weight,
        bias is not None,
        stride,
        padding,
        dilation,
        transposed,
        int(groups),
        None,
        backend,
        nthreads,
    )


@_rule("aten.conv1d.default", "aten.conv2d.default")
def _r_conv_nd(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """``conv2d`` / ``conv1d`` as a dispatch mode sees them under ``torch.inference_mode``
    (their CompositeImplicitAutograd decomposition into ``convolution`` happens below the
    mode there): the same kernel, so the same buffers as ``aten.convolution``."""
    a = list(args) + [None] * (7 - len(args))
    inp, weight, bias = a[0], a[1], a[2]
    stride = kwargs.get("stride", a[3] if a[3] is not None else 1)
    padding = kwargs.get("padding", a[4] if a[4] is not None else 0)
    dilation = kwargs.get("dilation", a[5] if a[5] is not None else 1)
    groups = int(kwargs.get("groups", a[6] if a[6] is not None else 1))
    if isinstance(padding, str) or not _is_t(weight):
        return 0  # 'same'/'valid' padding: not calibrated
    nd = weight.dim() - 2
    st, pd, dl = _ints(stride, nd), _ints(padding, nd), _ints(dilation, nd)
    return _r_convolution(
        (inp, weight, bias, st, pd, dl, False, [0] * nd, groups), {}, out, nthreads
    )


@_rule("aten.convolution_backward.default")
def _r_convolution_backward(
    args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int
) -> int:
    grad_out, inp, weight, bias_sizes = args[0], args[1], args[2], args[3]
    stride, padding, dilation, transposed, output_padding, groups, mask = args[4:11]
    backend = conv_backend(
        inp, weight, None, stride, padding, dilation, transposed, output_padding, groups, bias_sizes
    )
    extra = 0
    if backend == "Mkldnn":
        extra = _copy_if_strided(grad_out) if inp.is_contiguous() else 0
    return extra + _conv_internal(
        inp,
        weight,
        bias_sizes is not None,
        stride,
        padding,
        dilation,
        transposed,
        int(groups),
        [bool(m) for m in mask],
        backend,
        nthreads,
    )


# ------------------------------------------------------------------ LSTM (oneDNN RNN)


def _good_ld(n: int) -> int:
    """oneDNN's leading dimension for RNN buffers: channels rounded to 16, plus 16 when that is
    a multiple of 256 floats, to dodge 4K aliasing (rnn_utils ``get_good_ld``). Measured: the
    reordered weights of a 128-unit LSTM (gates 512) have 528 floats per row."""
    n16 = _up(n, 16)
    return n16 + 16 if n16 % 256 == 0 else n16


def _page(x: int) -> int:
    return _up(x, 4096)


def _lstm_dims(args: Sequence[Any], hidden_pos: int) -> tuple[int, int, int, int] | None:
    x = args[0]
    if not _is_t(x) or x.dim() != 3:
        return None
    seq, batch, inp = (int(s) for s in x.shape)  # the layer input is sequence-first
    return seq, batch, inp, int(args[hidden_pos])


@_rule("aten.mkldnn_rnn_layer.default")
def _r_mkldnn_rnn_layer(
    args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int
) -> int:
    """aten/src/ATen/native/mkldnn/RNN.cpp ``mkldnn_rnn_layer``: the two bias vectors are
    summed into one (``_shuffle_bias``, 4H floats), ideep reorders both weight matrices into
    oneDNN's ldigo layout (rows of ``_good_ld(4H)`` floats) and the LSTM primitive takes a
    scratchpad of the gates of every step plus two hidden-state rows, each part rounded to a
    4 KiB page. Fitted and exact on 135 shapes (seq 5-33, batch 1-8, input 20-128, hidden
    32-256, 1 and 2 threads: no thread dependence); 32x8, 128->128: 1096248 B."""
    return _lstm_buffers(args, 10)


def _lstm_buffers(args: Sequence[Any], hidden_pos: int) -> int:
    """The bias sum, the weight reorders and the scratchpad that the LSTM forward and backward
    both allocate (see ``_r_mkldnn_rnn_layer``); 0 where the shapes are unknown."""
    dims = _lstm_dims(args, hidden_pos)
    if dims is None:
        return 0
    seq, batch, inp, hid = dims
    g = 4 * hid
    ld = _good_ld(g)
    it = int(args[0].element_size())
    weights = (inp + hid) * ld * it
    scratch = 568 + _page(seq * batch * ld * it) + 2 * _page(batch * _good_ld(hid) * it) + 4096
    return g * it + weights + scratch


@_rule("aten.mkldnn_rnn_layer_backward.default")
def _r_mkldnn_rnn_layer_backward(
    args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int
) -> int:
    """``mkldnn_rnn_layer_backward`` (same file): the forward's bias sum, weight reorders and
    scratchpad again, ``grad_output.contiguous()``, zeros for an undefined grad of hy / cy, and
    when the input or hidden size is not already a good leading dimension, diff-weight buffers
    in the padded layout (20 inputs -> 32 rows). Exact on the same 135 shapes."""
    dims = _lstm_dims(args, 15)
    if dims is None:
        return 0
    _seq, _batch, inp, hid = dims
    g = 4 * hid
    it = int(args[0].element_size())
    total = _lstm_buffers(args, 15)
    total += _copy_if_strided(args[10])
    for gh, h in ((args[11], args[5]), (args[12], args[6])):
        total += _nbytes(h) if gh is None else _copy_if_strided(gh)
    for dim in (inp, hid):
        if _good_ld(dim) != dim:
            total += _good_ld(dim) * g * it
    return total


def _lstm_workspace(seq: int, batch: int, inp: int, hid: int, itemsize: int) -> int:
    """Bytes of the oneDNN LSTM training workspace (the 4th output of ``mkldnn_rnn_layer``):
    two gate buffers, layer/iteration states with (seq + 1) rows, each part page-rounded.
    Fitted on 135 shapes: mean error 1.6%, worst 12.5% (a 32 KiB workspace)."""
    g = 4 * hid
    return (
        2 * _page(seq * batch * _good_ld(g) * itemsize)
        + 3 * _page(2 * (seq + 1) * batch * _good_ld(max(inp, hid)) * itemsize)
        + _page((seq + 1) * batch * _good_ld(hid) * itemsize)
        + 4096
    )


def real_output_bytes(
    func: Any, args: Sequence[Any], kwargs: dict[str, Any] | None, out: Any
) -> dict[int, int]:
    """Outputs whose real storage is larger than the FakeTensor's: ``{flat output index: real
    bytes}`` (empty for nearly every op). ``mkldnn_rnn_layer`` returns its workspace as a
    0-byte tensor under FakeTensorMode (its meta function does not know oneDNN's size), while
    the real one -- 2,023,424 B for a 32-step, batch-8, 128-unit layer -- is saved for backward
    and lives until it runs."""
    if str(func) != "aten.mkldnn_rnn_layer.default":
        return {}
    train = bool(_arg(args, kwargs or {}, 15, "train", True))
    dims = _lstm_dims(args, 10)
    if not train or dims is None or not _is_t(args[0]) or args[0].device.type != "cpu":
        return {}
    return {3: _lstm_workspace(*dims, int(args[0].element_size()))}


# ------------------------------------------------------------------ attention


def _flash_splits(q_len: int, kv_len: int) -> tuple[int, int]:
    """q/kv block sizes of the CPU flash kernel (``flash_attention_kernel_impl``): q blocks of
    256 / 64 / 32 rows for q_len >= 768 / >= 192 / shorter, kv blocks of 512, both capped."""
    qs = 256 if q_len >= 768 else 64 if q_len >= 192 else 32
    return min(qs, q_len), min(512, kv_len)


@_rule("aten._scaled_dot_product_flash_attention_for_cpu.default")
def _r_flash_fwd(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """aten/src/ATen/native/cpu/FlashAttentionKernel.cpp ``cpu_flash_attention``: a per-thread
    float buffer of qSplit x kvSplit scores + 2 x qSplit row statistics + qSplit x head_dim
    accumulator, and (16-bit inputs) a per-thread reduced copy of the scores. Measured
    8x4 heads x 32 x 32: 8448 B per thread (1, 2, 4 threads)."""
    q, k = args[0], args[1]
    if not (_is_t(q) and _is_t(k)) or q.dim() != 4:
        return 0
    qs, kvs = _flash_splits(int(q.shape[2]), int(k.shape[2]))
    d = int(q.shape[3])
    it = int(q.element_size())
    total = nthreads * (qs * kvs + 2 * qs + qs * d) * 4
    if it < 4:
        total += nthreads * qs * kvs * it
    return total


@_rule("aten._scaled_dot_product_flash_attention_for_cpu_backward.default")
def _r_flash_bwd(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """``flash_attention_backward_kernel_impl`` + ``cpu_flash_attention_backward`` (same file):
    ``grad_out.contiguous()`` in (batch, seq, heads, dim) order, a per-thread float buffer of
    2 x qSplit x kvSplit (scores and their gradient; a 16-bit copy of both for 16-bit inputs)
    and a qSplit row-sum per worker. Measured 8x4x32x32 with a transposed grad_out: 131072 +
    threads x 8320 B (139392 / 147712 / 163968 B at 1 / 2 / 4 threads)."""
    g, q, k = args[0], args[1], args[2]
    if not (_is_t(g) and _is_t(q) and _is_t(k)) or q.dim() != 4:
        return 0
    qs, kvs = _flash_splits(int(q.shape[2]), int(k.shape[2]))
    it = int(q.element_size())
    total = _nbytes(g) if not g.transpose(1, 2).is_contiguous() else 0
    total += nthreads * 2 * qs * kvs * 4
    if it < 4:
        total += nthreads * 2 * qs * kvs * it
    total += min(nthreads, int(q.shape[0]) * int(q.shape[1])) * qs * 4
    return total


@_rule("aten._safe_softmax.default")
def _r_safe_softmax(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """aten/src/ATen/native/transformers/attention.cpp ``_safe_softmax`` (the math attention
    path: masks, dropout > 0): softmax, then ``self.eq(-inf)`` (a bool per element),
    ``all(.., dim)`` (a bool per row) and a 0-dim zero for ``where``, which writes over the
    softmax result. A strided input is copied by softmax first, and freed before the masks.
    Measured 8x4x32x32: 32768 + 1024 + 4 = 33796 B."""
    x, dim = args[0], int(_arg(args, kwargs, 1, "dim", -1))
    if not _is_t(x):
        return 0
    n = int(x.numel())
    rows = n // max(1, int(x.shape[dim])) if x.dim() else 1
    return max(_copy_if_strided(x), n + rows + 4)


@_rule("aten._softmax.default", "aten._log_softmax.default")
def _r_softmax(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """aten/src/ATen/native/SoftMax.cpp (``host_softmax`` via ``softmax_cpu_out``): a strided
    input is made contiguous first. Measured 64x16x48 transposed: 196608 B, contiguous: 0."""
    return _copy_if_strided(args[0])


@_rule("aten._softmax_backward_data.default", "aten._log_softmax_backward_data.default")
def _r_softmax_backward(
    args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int
) -> int:
    """SoftMax.cpp ``softmax_backward_cpu_out`` / ``log_softmax_backward_cpu_out``: strided
    grad / output are made contiguous. Measured: one transposed operand 196608 B."""
    return _copy_if_strided(args[0]) + _copy_if_strided(args[1])


# ------------------------------------------------------------------ normalisation


@_rule("aten.native_layer_norm.default")
def _r_layer_norm(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """aten/src/ATen/native/layer_norm.cpp ``layer_norm_cpu``: ``input.expect_contiguous()``
    (and weight / bias). Measured: strided 64x16x48 input 196608 B, contiguous 0."""
    return _copy_if_strided(args[0]) + _copy_if_strided(args[2]) + _copy_if_strided(args[3])


@_rule("aten.native_layer_norm_backward.default")
def _r_layer_norm_backward(
    args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int
) -> int:
    """layer_norm.cpp ``layer_norm_backward_cpu``: ``expect_contiguous`` on grad_out and input,
    and (aten/src/ATen/native/cpu/layer_norm_kernel.cpp ``LayerNormBackwardKernelImplInternal``)
    per-thread partial sums for dgamma and dbeta, [num_threads, N] floats each when either is
    requested. Measured N=128: 1024 B x threads (1, 2, 4); strided input of 8x24x128: +98304."""
    g, x, norm_shape = args[0], args[1], args[2]
    mask = args[7] if len(args) > 7 else (True, True, True)
    total = _copy_if_strided(g) + _copy_if_strided(x)
    n = 1
    for s in norm_shape:
        n *= int(s)
    if mask[1] or mask[2]:
        acc = 4 if x.element_size() <= 4 else 8
        total += 2 * nthreads * n * acc
    return total


def _channels(x: Any) -> int:
    return int(x.shape[1]) if x.dim() > 1 else int(x.shape[0])


@_rule(
    "aten.native_batch_norm.default",
    "aten._native_batch_norm_legit.default",
    "aten._native_batch_norm_legit_functional.default",
    "aten._native_batch_norm_legit_no_training.default",
)
def _r_batch_norm(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """aten/src/ATen/native/Normalization.cpp ``batch_norm_cpu`` (and the stats / transform
    kernels in cpu/batch_norm_kernel.cpp): per-channel float temporaries, 2 per channel for
    contiguous NCHW input, 4 for channels-last or 2-D input (per-thread partial sums).
    Measured C=32: 256 B (NCHW, train and eval), 512 B (channels-last, N x C)."""
    x = args[0]
    if not _is_t(x):
        return 0
    c = _channels(x)
    acc = 4 if x.element_size() <= 4 else 8
    nchw = x.dim() > 2 and x.is_contiguous()
    return (2 if nchw else 4) * c * acc


@_rule("aten.native_batch_norm_backward.default")
def _r_batch_norm_backward(
    args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int
) -> int:
    """Normalization.cpp ``batch_norm_backward_cpu_template``: the input-gradient kernel
    (cpu/batch_norm_kernel.cpp ``batch_norm_cpu_backward_*``) writes through an input-sized
    temporary; channels-last / 2-D input adds per-channel partial sums after it is freed.
    Measured 8x32x8x8: 65536 B with the input gradient, 0 without; 64x32: 8192 B."""
    x = args[1]
    mask = args[9] if len(args) > 9 else (True, True, True)
    if not _is_t(x):
        return 0
    c = _channels(x)
    acc = 4 if x.element_size() <= 4 else 8
    nchw = x.dim() > 2 and x.is_contiguous()
    partial = 0 if nchw else 4 * c * acc
    gi = _nbytes(x) if mask[0] else 0
    return max(gi, partial if mask[0] else 0)


# ------------------------------------------------------------------ embedding, matmul, misc


@_rule("aten.embedding.default")
def _r_embedding(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """aten/src/ATen/native/Embedding.cpp ``embedding``: ``indices.reshape(-1)`` copies strided
    indices. Measured (8, 24) slice of (8, 40) int64: 1536 B."""
    return _copy_if_strided(args[1])


@_rule("aten.embedding_dense_backward.default")
def _r_embedding_backward(
    args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int
) -> int:
    """Embedding.cpp ``embedding_dense_backward_cpu``: ``indices.contiguous()`` and
    ``grad.contiguous()``; padding_idx and scale_grad_by_freq added nothing measurable.
    Measured: transposed 8x32x128 grad 131072 B, strided (8, 24) indices 1536 B, both: sum."""
    return _copy_if_strided(args[0]) + _copy_if_strided(args[1])


def _blas_copy(t: Any) -> int:
    """A matmul operand BLAS cannot take as is (neither its last nor its second-to-last
    dimension unit-stride with a proper leading dimension) is copied
    (aten/src/ATen/native/LinearAlgebra.cpp ``addmm_impl_cpu_`` / ``baddbmm_cpu_kernel``
    resolve_conj / contiguous). Measured: a [:, ::2] slice of 64x256: 32768 B; transposes: 0."""
    if not _is_t(t) or t.dim() < 2:
        return 0
    s0, s1 = int(t.stride(-2)), int(t.stride(-1))
    r, c = int(t.shape[-2]), int(t.shape[-1])
    if (s1 == 1 and s0 >= max(1, c)) or (s0 == 1 and s1 >= max(1, r)) or r <= 1 or c <= 1:
        return 0
    return _nbytes(t)


@_rule("aten.mm.default", "aten.bmm.default")
def _r_mm(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    return _blas_copy(args[0]) + _blas_copy(args[1])


@_rule("aten.addmm.default", "aten.baddbmm.default")
def _r_addmm(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    return _blas_copy(args[1]) + _blas_copy(args[2])


@_rule("aten.native_dropout.default")
def _r_native_dropout(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """aten/src/ATen/native/Dropout.cpp ``native_dropout_cpu``: the Bernoulli noise is drawn
    into an input-sized float tensor before it becomes the bool mask. Measured 8x32x8x8:
    65536 B. (On CPU, training dropout normally goes through ``_dropout_impl`` instead:
    separate bernoulli_/mul/div ops with no internal buffers.)"""
    x, p, train = args[0], float(args[1]), _arg(args, kwargs, 2, "train", True)
    if not _is_t(x) or train is False or p <= 0:
        return 0
    return _nbytes(x)


@_rule("aten.gelu_backward.default")
def _r_gelu_backward(args: Sequence[Any], kwargs: dict[str, Any], out: Any, nthreads: int) -> int:
    """A non-contiguous gradient (a transposed product's, as the sparse knob's input gradient
    is) against a contiguous input: the CPU kernel allocates two more gradient-sized buffers.
    Measured (recorder, float32): 32x64x384 and 8x16x100 with the gradient laid out reversed:
    2x its bytes; contiguous gradients, or a strided input with a contiguous gradient: 0."""
    grad, x = args[0], args[1]
    if not (_is_t(grad) and _is_t(x)) or grad.is_contiguous() or not x.is_contiguous():
        return 0
    return 2 * _nbytes(grad)


CALIBRATED_OPS: frozenset[str] = frozenset(_RULES)


# -- sparse CSR products (memlab.knobs.sparsity's SparseLinear) ----------------------------------
# torch's CSR constructor has no fake kernel, so the sparse knob's products never reach the
# dispatcher under fake tensors (``sparsity._SparseMM`` allocates their outputs instead) and no
# ``_RULES`` entry can see them: the estimator adds these per call. Measured with memlab's
# recorder (torch 2.13.0 CPU, MKL sparse BLAS, float32 values, int64 indices, 2 threads) on
# M x K CSR weights with nnz stored values times N-row dense operands (M, K 256-1024, N 32-128,
# density 0.05-0.3): each sequence below is the kernel's allocation order, exact on those.
#: A 14,400-byte buffer the products allocate when they copy the dense operand (not always then:
#: not with N < 12, nor 4096 x 64 weights); counted with each copy, so a prediction is at most
#: this much high per call.
_MKL_SPARSE_WS = 14400
_IDX = 8  # int64 crow/col indices


def _peak_of(deltas: Sequence[int]) -> int:
    live = peak = 0
    for d in deltas:
        live += d
        peak = max(peak, live)
    return peak


def csr_mm_internal(m: int, k: int, n: int, nnz: int, itemsize: int, copy_dense: bool) -> int:
    """``torch.sparse.mm(W, x.t())`` for an ``m x k`` CSR ``W`` and ``x`` of ``n x k``: bytes
    above its ``m x n`` output. The kernel (aten/src/ATen/native/mkl/SparseBlasImpl.cpp
    ``addmm_out_sparse_csr``) writes into a second ``m x n`` result, copies a strided dense
    operand contiguous (``copy_dense``), creates the MKL handle, then converts the indices to
    int32: ``[m*n, k*n, ws, -ws, 4*(m+1), 4*nnz]`` (no ``k*n`` nor ``ws`` when ``x.t()`` is
    contiguous already)."""
    dense, ws = (k * n * itemsize, _MKL_SPARSE_WS) if copy_dense else (0, 0)
    return _peak_of([m * n * itemsize, dense, ws, -ws, 4 * (m + 1), 4 * nnz])


def csr_mm_transposed_internal(
    m: int, k: int, n: int, nnz: int, itemsize: int, copy_dense: bool
) -> int:
    """``torch.sparse.mm(W.t(), g.t())`` (the input gradient) for an ``m x k`` CSR ``W`` and
    ``g`` of ``n x m``: bytes above its ``k x n`` output. ``W.t()`` is CSC, which the kernel
    first converts to CSR (sorting the column indices with int64 keys and a permutation:
    several ``nnz``-sized index buffers at once), then multiplies as ``csr_mm_internal`` does."""
    v, i = nnz * itemsize, nnz * _IDX
    kn = k * n * itemsize
    mn, ws = (m * n * itemsize, _MKL_SPARSE_WS) if copy_dense else (0, 0)
    seq = [kn, 8, 8, -8, m * _IDX, (m + 1) * _IDX, -m * _IDX, 2 * i, 8, i, -8, 8, -8, 8, i, -8]
    seq += [-i, -i, i, i, i, i, -i, -i, 2 * i, v, (k + 1) * _IDX, (k + 1) * _IDX, k * _IDX]
    seq += [-k * _IDX, -(k + 1) * _IDX, -i, -i, -2 * i, -(m + 1) * _IDX, -8, mn]
    seq += [ws, -ws, 4 * (k + 1), 4 * nnz]
    return _peak_of(seq)


def csr_sampled_addmm_internal(m: int, k: int, n: int, nnz: int, itemsize: int) -> int:
    """``torch.sparse.sampled_addmm(P, a, b)`` for an ``m x k`` CSR pattern ``P`` with ``nnz``
    values, ``a`` ``m x n`` and ``b`` ``n x k`` (the values' gradient): bytes above its ``nnz``
    values. The result is a new CSR tensor (its own int64 index copies), and ``b`` is copied
    for MKL: ``[8, (m+1)*8, -8, nnz*8, <values>, k*n, ws]``."""
    return _peak_of([8, (m + 1) * _IDX, -8, nnz * _IDX, k * n * itemsize, _MKL_SPARSE_WS])


def internal_bytes(
    func: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None,
    out: Any,
    *,
    num_threads: int | None = None,
) -> int:
    """Transient bytes one call of ``func`` allocates inside its CPU kernel and frees before it
    returns, above the live bytes before the call plus the outputs it allocates.

    ``args`` / ``kwargs`` / ``out`` are the call's arguments and result, FakeTensors or real
    tensors alike: only shapes, dtypes, strides and devices are read. 0 for ops without a rule
    (see ``CALIBRATED_OPS``) and for anything not on the CPU. ``num_threads`` defaults to
    ``torch.get_num_threads()``: oneDNN and several ATen kernels size per-thread buffers by it,
    and the convolution backend itself depends on it."""
    rule = _RULES.get(str(func))
    if rule is None:
        return 0
    kwargs = kwargs or {}
    flat = [t for t in tree_flatten((args, kwargs))[0] if _is_t(t)]
    if not flat or any(t.device.type != "cpu" for t in flat):
        return 0
    nthreads = int(num_threads) if num_threads is not None else torch.get_num_threads()
    try:
        return max(0, int(rule(args, kwargs, out, max(1, nthreads))))
    except (IndexError, TypeError, ValueError, RuntimeError):
        return 0  # an unusual call signature: no prediction rather than a wrong one
