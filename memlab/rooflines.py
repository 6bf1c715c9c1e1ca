"""The roofline of one inference request: each ATen op's FLOPs and bytes moved, against this
machine's measured DRAM bandwidth and peak compute rate.

    r = memlab.roofline(memlab.Experiment(workload="cnn", mode="inference"))
    r.ridge_flop_per_byte, r.table(), r.device_estimates()
    roofline_figure(r)        # memlab.plots_roofline

What each figure is:

- **FLOPs** per op: ``torch.utils.flop_counter.FlopCounterMode``'s formulas (matmuls,
  convolutions, attention). An op it has no formula for (elementwise ops, norms, reductions)
  gets 0 FLOPs and ``flops_counted=False``: its arithmetic is small, but not zero.
- **Bytes moved** per op: a *model*, a lower bound. The bytes of every distinct tensor the op
  reads (parameters included) plus every tensor it returns, as if each operand crossed DRAM
  exactly once: cache hits (an activation still in L2 from the op before) make the true DRAM
  traffic lower, and an op's internal buffers (im2col columns, packed panels) and a
  write-allocate read of each output make it higher. An op whose output shares storage with
  an input and writes nothing (a view: ``t``, ``permute``, ``unbind``) moves 0 bytes.
- **Time** per op: measured, in a second pass, under a ``TorchDispatchMode`` that wraps each
  op's kernel call in ``time.perf_counter``; median over ``requests`` requests. The mode's own
  Python work (a few microseconds per op) lies outside the timed calls, so the per-op times sum
  to less than a request under the mode takes; the request time beside them (``request_s``) is
  measured without any mode (``Workload.infer``, median over the same number of requests). The
  ratio of the two is ``op_time_coverage``.
- **The roofs**: the DRAM plateau of ``memlab.bandwidth`` (given, or measured in the worker
  with ``memlab.locality.measure``), and the peak compute rate, GFLOP/s of an ``n x n`` fp32
  matmul with torch's threads, best of several, measured in the same worker. The ridge point is
  peak / bandwidth (FLOP per byte); an op below it is memory-bound, above it compute-bound.
- **Device estimates** (``device_estimates``): bytes moved per request over each
  ``memlab.devices`` profile's peak bandwidth (``devices.estimate_latency_s``): an ESTIMATE,
  a lower bound from memory traffic alone, shown beside the request time MEASURED here.

This module imports torch only inside the functions that run in the worker, so the notebook
kernel can import it and hold a ``RooflineResult`` (plain data). It is ``memlab.rooflines``, not
``memlab.roofline``, for the reason ``memlab.locality`` gives: a submodule named like the public
function ``memlab.roofline`` would replace it on the package once imported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from memlab import devices

if TYPE_CHECKING:
    from memlab.config import Experiment
    from memlab.locality import BandwidthResult

__all__ = ["OpPoint", "RooflineResult", "roofline", "measure_roofline", "tensor_bytes"]

BOUNDS = ("memory", "compute", "none")
DEFAULT_MATMUL_N = 1024
DEFAULT_REQUESTS = 5


@dataclass(frozen=True)
class OpPoint:
    """One ATen op call of the request, in the order it ran."""

    index: int
    op: str  # "aten.linear.default"
    module: str  # the innermost module it ran in ("blocks.0.fc1"; "" = the model's own forward)
    flops: int
    flops_counted: bool  # False: FlopCounterMode has no formula for this op (flops is then 0)
    bytes_read: int
    bytes_written: int
    time_s: float  # measured: median over the requests of the op's kernel call

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte moved; None for an op that moves no bytes (a view)."""
        return self.flops / self.bytes_moved if self.bytes_moved else None


@dataclass(frozen=True)
class RooflineResult:
    """One request's ops against this machine's roofs. Torch-free: the kernel may hold it."""

    experiment: dict[str, Any]
    ops: tuple[OpPoint, ...]
    dram_gb_per_s: float  # measured here (or given): the memory roof
    bandwidth_source: str
    peak_gflop_per_s: float  # measured here: fp32 matmul with torch's threads
    matmul_n: int
    threads: int
    request_s: float  # measured: median time of one request without any dispatch mode
    request_times_s: tuple[float, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    # -- the machine's roofline -------------------------------------------------------------
    @property
    def ridge_flop_per_byte(self) -> float:
        """Where the roofs meet: peak FLOP/s over DRAM bytes/s."""
        return ridge(self.peak_gflop_per_s, self.dram_gb_per_s)

    def bound(self, op: OpPoint) -> str:
        """``memory`` (intensity below the ridge point), ``compute`` (at or above), or
        ``none`` (a view: no bytes moved, nothing to bound)."""
        return classify(op.intensity, self.ridge_flop_per_byte)

    def attainable_gflop_per_s(self, intensity: float) -> float:
        """The roof at ``intensity``: min(peak, bandwidth x intensity)."""
        return min(self.peak_gflop_per_s, self.dram_gb_per_s * intensity)

    def roof_time_s(self, op: OpPoint) -> float:
        """The roofline's lower bound on ``op``'s time: max(FLOPs / peak, bytes / bandwidth)."""
        return max(
            op.flops / (self.peak_gflop_per_s * 1e9), op.bytes_moved / (self.dram_gb_per_s * 1e9)
        )

    # -- totals -----------------------------------------------------------------------------
    @property
    def total_flops(self) -> int:
        return sum(o.flops for o in self.ops)

    @property
    def total_bytes(self) -> int:
        """Bytes moved per request: the sum over ops (the lower-bound model of the docstring)."""
        return sum(o.bytes_moved for o in self.ops)

    @property
    def op_time_s(self) -> float:
        return sum(o.time_s for o in self.ops)

    @property
    def op_time_coverage(self) -> float:
        """Sum of the ops' measured times over the measured request time."""
        return self.op_time_s / self.request_s if self.request_s > 0 else float("nan")

    def time_by_bound(self) -> dict[str, float]:
        """Measured op time per class (``memory``, ``compute``, ``none``), seconds."""
        out = dict.fromkeys(BOUNDS, 0.0)
        for o in self.ops:
            out[self.bound(o)] += o.time_s
        return out

    def device_estimates(
        self, profiles: Sequence[devices.DeviceProfile] | None = None
    ) -> dict[str, float]:
        """ESTIMATED latency per request on each device profile (all by default): this
        request's bytes moved at the profile's peak DRAM bandwidth
        (``devices.estimate_latency_s``), a lower bound from memory traffic alone. Compare with
        ``request_s``, which is MEASURED on this machine."""
        chosen = list(devices.PROFILES.values()) if profiles is None else list(profiles)
        return {p.name: devices.estimate_latency_s(self.total_bytes, p) for p in chosen}

    def table(self, top: int | None = None) -> list[dict[str, Any]]:
        """One row per op (plain data), slowest first when ``top`` is given."""
        ops = sorted(self.ops, key=lambda o: -o.time_s)[:top] if top else list(self.ops)
        return [
            {
                "index": o.index,
                "op": o.op,
                "module": o.module,
                "flops": o.flops,
                "flops_counted": o.flops_counted,
                "bytes_moved": o.bytes_moved,
                "intensity": o.intensity,
                "bound": self.bound(o),
                "time_s": o.time_s,
                "gflop_per_s": o.flops / o.time_s / 1e9 if o.time_s > 0 else None,
            }
            for o in ops
        ]

    # -- plain data -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = [asdict(o) for o in self.ops]
        d["request_times_s"] = list(self.request_times_s)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RooflineResult:
        return cls(
            experiment=dict(d["experiment"]),
            ops=tuple(OpPoint(**o) for o in d["ops"]),
            dram_gb_per_s=d["dram_gb_per_s"],
            bandwidth_source=d["bandwidth_source"],
            peak_gflop_per_s=d["peak_gflop_per_s"],
            matmul_n=d["matmul_n"],
            threads=d["threads"],
            request_s=d["request_s"],
            request_times_s=tuple(d["request_times_s"]),
            notes=tuple(d.get("notes", ())),
        )

    def __repr__(self) -> str:
        exp = self.experiment.get("workload", "?")
        return (
            f"RooflineResult({exp}: {len(self.ops)} ops, {self.total_flops / 1e9:.3f} GFLOP, "
            f"{self.total_bytes / 2**20:.1f} MiB moved per request; roofs "
            f"{self.dram_gb_per_s:.1f} GB/s, {self.peak_gflop_per_s:.1f} GFLOP/s, ridge "
            f"{self.ridge_flop_per_byte:.1f} FLOP/B; request {self.request_s * 1e3:.2f} ms)"
        )


# -- small pure functions -------------------------------------------------------------------


def ridge(peak_gflop_per_s: float, dram_gb_per_s: float) -> float:
    """The ridge point in FLOP per byte: peak compute over DRAM bandwidth."""
    if not (peak_gflop_per_s > 0 and dram_gb_per_s > 0):
        raise ValueError(
            f"peak_gflop_per_s and dram_gb_per_s must be positive, got {peak_gflop_per_s}, "
            f"{dram_gb_per_s}"
        )
    return peak_gflop_per_s / dram_gb_per_s


def classify(intensity: float | None, ridge_flop_per_byte: float) -> str:
    """``memory`` below the ridge point, ``compute`` at or above it, ``none`` without bytes."""
    if intensity is None:
        return "none"
    return "memory" if intensity < ridge_flop_per_byte else "compute"


def tensor_bytes(shape: Sequence[int], stride: Sequence[int], itemsize: int) -> int:
    """Bytes of the distinct elements a tensor view holds: the product of its sizes, leaving
    out dimensions of stride 0 (an ``expand``ed operand is read once, not once per copy)."""
    n = 1
    for size, st in zip(shape, stride, strict=True):
        if size == 0:
            return 0
        if st != 0:
            n *= size
    return n * itemsize


# -- the worker side (torch) ----------------------------------------------------------------


def _tensors(obj: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _key(t: Any) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def _nbytes(ts: Sequence[Any]) -> int:
    """Bytes of the distinct tensors in ``ts`` (the same view passed twice is read once)."""
    seen = {_key(t): t for t in ts}
    return sum(tensor_bytes(t.shape, t.stride(), t.element_size()) for t in seen.values())


def op_bytes(func: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    """(bytes read, bytes written) of one op call, the lower-bound model of the module
    docstring. ``out=`` arguments (kwarg-only, written by the schema's alias annotation) are
    written, not read. An op that writes no argument and returns only tensors sharing storage
    with its inputs is a view: (0, 0)."""
    schema = func._schema
    out_names = {
        a.name
        for a in schema.arguments
        if a.kwarg_only and a.alias_info is not None and a.alias_info.is_write
    }
    mutates = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    ins = _tensors(list(args)) + _tensors({k: v for k, v in kwargs.items() if k not in out_names})
    outs = _tensors(out)
    if not mutates and outs:
        in_storages = {t.untyped_storage().data_ptr() for t in ins}
        if all(t.untyped_storage().data_ptr() in in_storages for t in outs):
            return 0, 0
    return _nbytes(ins), _nbytes(outs)


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_val: Any = None,
                    **kwargs: Any) -> int:  # fmt: skip
    """FlopCounterMode registers attention's formula (``sdpa_flop_count``: the two batched
    matmuls) for the CUDA kernels ``_scaled_dot_product_{flash,efficient,cudnn}_attention``
    only (torch/utils/flop_counter.py, ``sdpa_flop``); CPU's SDPA runs
    ``_scaled_dot_product_flash_attention_for_cpu``, which it would count as 0. The same
    formula, applied to that op."""
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query.shape, key.shape, value.shape))


_cpu_sdpa_flops._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: takes tensors


def _module_stack(model: Any) -> tuple[list[str], list[Any]]:
    """Forward pre/post hooks on every submodule keeping a stack of module names; returns the
    stack (read its top) and the hook handles to remove."""
    stack: list[str] = []
    handles = []

    def pop(_m: Any, _a: Any, _o: Any) -> None:  # returns None: the output is kept as is
        stack.pop()

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n)))
        handles.append(m.register_forward_hook(pop))
    return stack, handles


def _count_pass(w: Any, x: Any) -> list[dict[str, Any]]:
    """One request under FlopCounterMode (inner) and a recording mode (outer): per top-level
    op its name, module, FLOPs (the counter's total before and after the op) and bytes."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(
        display=False,
        custom_mapping={
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops
        },
    )
    rows: list[dict[str, Any]] = []
    stack, handles = _module_stack(w.model)

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            before = counter.get_total_flops()
            out = func(*args, **kwargs)
            flops = counter.get_total_flops() - before
            packet = func._overloadpacket
            counted = packet in counter.flop_registry or flops > 0
            read, written = op_bytes(func, args, kwargs, out)
            rows.append(
                {
                    "op": str(func),
                    "module": stack[-1] if stack else "",
                    "flops": int(flops),
                    "flops_counted": bool(counted),
                    "bytes_read": read,
                    "bytes_written": written,
                }
            )
            return out

    try:
        # FlopCounterMode entered first, so it is below Record on the mode stack: Record sees
        # each op as the model calls it, and its func(...) call reaches the counter, which
        # may decompose it (attention) without Record seeing the parts.
        with counter, Record():
            w.infer(x)
    finally:
        for h in handles:
            h.remove()
    return rows


def _time_pass(w: Any, x: Any) -> list[tuple[str, float]]:
    """One request with each op's kernel call timed (``perf_counter`` around ``func``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    times: list[tuple[str, float]] = []
    clock = time.perf_counter

    class Time(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            t0 = clock()
            out = func(*args, **kwargs)
            times.append((str(func), clock() - t0))
            return out

    with Time():
        w.infer(x)
    return times


def peak_gflop_per_s(n: int = DEFAULT_MATMUL_N, *, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n`` fp32 matmul (2 n^3 FLOPs) with torch's threads: the best of
    ``repeats`` timings after one warm-up call (the least disturbed one)."""
    import torch

    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got {n}, {repeats}")
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _dram(bandwidth: BandwidthResult | float | None) -> tuple[float, str, list[str]]:
    """The memory roof: a given figure, a given BandwidthResult's plateau, or one measured
    now (``locality.measure`` up to 8x the last cache level, where the plateau starts at 4x)."""
    from memlab import locality

    notes: list[str] = []
    if isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be a positive GB/s figure, got {bandwidth}")
        return float(bandwidth), "given (GB/s)", notes
    if bandwidth is None:
        levels = locality.read_cache_levels()
        last = levels[-1].size_bytes if levels else locality.DRAM_FALLBACK_BYTES
        top = min(2 * locality.DRAM_FACTOR * last, locality.GIB)
        bandwidth = locality.measure(top, anchor_bytes=16 * locality.MIB, per_octave=1)
        source = f"measured (memlab.locality, working sets up to {top // locality.MIB} MiB)"
    elif isinstance(bandwidth, locality.BandwidthResult):
        source = "given (BandwidthResult)"
    else:
        raise TypeError(
            "bandwidth must be None (measure it), a GB/s number or a memlab.BandwidthResult, "
            f"got {type(bandwidth).__name__}"
        )
    if bandwidth.dram_gb_per_s is not None:
        return bandwidth.dram_gb_per_s, source + ": DRAM plateau", notes
    last_point = bandwidth.points[-1]
    notes.append(
        f"no DRAM plateau in the bandwidth result: the copy rate at its largest working set "
        f"({last_point.size_bytes} bytes) is the memory roof, which overstates DRAM"
    )
    return last_point.copy_gb_per_s, source + ": largest working set", notes


def measure_roofline(
    experiment: Experiment,
    bandwidth: BandwidthResult | float | None = None,
    *,
    requests: int = DEFAULT_REQUESTS,
    matmul_n: int = DEFAULT_MATMUL_N,
) -> RooflineResult:
    """The measurement, in this process (imports torch); ``roofline`` runs it in a worker."""
    import torch

    from memlab.knobs import build_experiment

    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    notes: list[str] = []
    if experiment.mode != "inference":
        notes.append(f"mode {experiment.mode!r} ignored: the roofline is of one inference request")
    small = experiment.replace(
        mode="inference", data="ram", data_size=experiment.batch_size, num_workers=0, device="cpu"
    )
    dram, source, bw_notes = _dram(bandwidth)
    notes += bw_notes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(small.seed)
        w = build_experiment(small, "cpu")
    w.model.eval()
    notes += list(w.notes)
    x = next(w.make_batches(1))[0]
    w.infer(x)  # warm-up: lazy one-time work (packing, buffer caches) stays out of the figures
    rows = _count_pass(w, x)
    per_op: list[list[float]] = [[] for _ in rows]
    request_times: list[float] = []
    for _ in range(requests):
        t0 = time.perf_counter()
        w.infer(x)
        request_times.append(time.perf_counter() - t0)
        timed = _time_pass(w, x)
        if [n for n, _ in timed] != [r["op"] for r in rows]:
            raise RuntimeError(
                "the ops of a timed request differ from the counted one; the model's forward "
                "is not the same sequence of ops every request"
            )
        for i, (_, dt) in enumerate(timed):
            per_op[i].append(dt)
    ops = tuple(
        OpPoint(index=i, time_s=statistics.median(per_op[i]), **r) for i, r in enumerate(rows)
    )
    if any(not o.flops_counted and o.bytes_moved for o in ops):
        notes.append(
            "ops without a FlopCounterMode formula (elementwise, norms, reductions) have 0 FLOPs "
            "(flops_counted=False): their few FLOPs per element are not counted"
        )
    if any(n for n, m in w.model.named_modules() if hasattr(m, "_packed_params")):
        notes.append(
            "quantized layers keep packed weights outside the tensors a dispatch mode sees: "
            "their weight bytes are not in bytes moved"
        )
    return RooflineResult(
        experiment=experiment.to_dict(),
        ops=ops,
        dram_gb_per_s=dram,
        bandwidth_source=source,
        peak_gflop_per_s=peak_gflop_per_s(matmul_n),
        matmul_n=matmul_n,
        threads=torch.get_num_threads(),
        request_s=statistics.median(request_times),
        request_times_s=tuple(request_times),
        notes=tuple(notes),
    )


def roofline(
    experiment: Experiment,
    *,
    bandwidth: BandwidthResult | float | None = None,
    requests: int = DEFAULT_REQUESTS,
    matmul_n: int = DEFAULT_MATMUL_N,
    in_worker: bool = True,
) -> RooflineResult:
    """The roofline of one inference request of ``experiment`` (its workload with its knobs,
    ``memlab.knobs.build_experiment``; a training experiment is measured as inference).

    ``bandwidth``: the memory roof, a ``memlab.bandwidth()`` result (its DRAM plateau) or a
    GB/s number; ``None`` measures it in the worker (a few seconds: working sets up to 8x the
    last cache level). Pass ``result.dram_gb_per_s`` back in to reuse it. ``requests`` timed
    requests give each op's median time and the request's. Runs in memlab's service worker
    (``memlab.runner.call``; torch never loads here) unless ``in_worker=False``.
    """
    from memlab.config import Experiment

    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be a memlab.Experiment, got {type(experiment).__name__}")
    if not isinstance(requests, int) or requests < 1:
        raise ValueError(f"requests must be a positive int, got {requests!r}")
    if not isinstance(matmul_n, int) or matmul_n < 16:
        raise ValueError(f"matmul_n must be an int >= 16, got {matmul_n!r}")
    if not in_worker:
        return measure_roofline(experiment, bandwidth, requests=requests, matmul_n=matmul_n)
    from memlab import runner

    return runner.call(  # type: ignore[no-any-return]
        measure_roofline, experiment, bandwidth, requests=requests, matmul_n=matmul_n
    )
