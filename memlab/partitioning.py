"""Model partitioning: a built-in model cut into K contiguous stages, each run by its own worker
process, inference over M micro-batches as a pipeline. (``memlab.partitioning``, not
``memlab.partition``: a submodule named like the public function would replace it on the
package once imported; see ``memlab.locality``.)

    result = memlab.partition("transformer", stages=2, micro_batches=8)
    result.summary()        # per-stage peaks, their sum vs one process, bubble, throughput

What runs where. The caller (the notebook kernel) only orchestrates: it spawns the stages with
``memlab.runner.procs`` (``spawn``, killed at exit), creates the shared-memory rings between
them, says go, and collects. It never imports torch. Each stage process builds the whole
model from the experiment's seed (so every stage has exactly the weights one process would),
keeps its blocks only, frees the rest and trims the C heap, warms up, then runs its part of the
pipeline inside ``memlab.track`` (tracked tensor bytes, RSS parts). The *anchor* is the same
code with K = 1: one process running the whole model over the same micro-batches, measured in
the same call, before the pipeline.

The cut. Stage k runs ``blocks[lo:hi]`` of ``model.blocks``, split into K contiguous groups of
as equal a count as possible (earlier stages take the remainder); the first stage also runs the
model's stem (``stem``; the transformer's ``embed`` plus ``pos``), the last one its head
(``norm``/mean pooling and ``head``), transcribing each model's ``forward`` in
``memlab/workloads/models.py`` exactly, so the outputs are the one process's to the bit
(checked: ``outputs_equal``).

The handover: ``multiprocessing.shared_memory`` plus numpy views, not ``torch.multiprocessing``
queues. Between stage k and k+1 the orchestrator creates one ring of ``slots`` slots, each the
size of stage k's output; stage k copies its output into a free slot (one copy, counted in
``copied_bytes``) and sends the slot's number over a pipe; stage k+1 wraps the slot with
``torch.from_numpy`` (no copy) and computes from it, then sends the slot back as free. Why:

- the orchestrator owns the segments (created and unlinked by it, stdlib only, so without
  torch), so a stage that is killed leaves nothing behind; with ``torch.multiprocessing`` every
  tensor sent is moved into a fresh shared segment by its sender (``share_memory_``: a copy as
  well) whose life is refcounted across processes, and a dead sender's segments are cleaned up
  by torch's ``torch_shm_manager`` only eventually;
- the memory in flight is bounded and known: ``slots`` activations per link, allocated once,
  not one segment per micro-batch; the bytes copied are exactly one write per hop;
- flow control is explicit: a stage waits for a free slot (back-pressure), and that wait is
  visible as idle time in the Gantt chart.

The slots are outside PyTorch's allocator, so the tracker does not count them: each stage's
ring bytes are reported beside its tracked peak (``shm_bytes``), and they are in both
neighbours' RSS (``RssShmem``) once touched: a summed RSS counts them twice.

The bubble. Every stage records, per micro-batch, when it started waiting for input, when the
input was there, when its compute ended, when it had a free slot and when it had handed the
output over (``time.monotonic``, one clock for every process on Linux and macOS). A stage is
*busy* while it computes or copies, *idle* otherwise; its idle fraction is over the pipeline's
makespan (go to the last stage's last output). The ideal pipeline's bubble with equal stages,
``(K - 1) / (M + K - 1)`` (GPipe, Huang et al. 2019, section 2.2), is beside it, labelled
predicted.

Faults: a stage that raises, or dies (killed, segfault), ends the run as status ``error``,
naming the stage; every other stage is killed at once, the rings unlinked; the caller never
waits on a dead stage (``multiprocessing.connection.wait`` on every stage's pipe and sentinel).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.shared_memory import SharedMemory

    from memlab.config import Experiment
    from memlab.runner.procs import _Worker

__all__ = [
    "WORKLOADS",
    "BLOCKS",
    "FAULT_KINDS",
    "MicroBatchTimes",
    "StageResult",
    "PartitionResult",
    "split_blocks",
    "predicted_bubble",
    "partition",
]

#: The built-in workloads this module knows how to cut (their ``forward`` is transcribed below).
WORKLOADS = ("mlp", "cnn", "transformer")
#: ``len(model.blocks)`` of each built-in model at its defaults (memlab/workloads/models.py);
#: here so that the caller can check ``stages`` without building a model. A stage checks it
#: against the model it built (and a test against the models).
BLOCKS = {"mlp": 4, "cnn": 4, "transformer": 4}
#: Injected faults, to see (and test) what a failing stage does: ``raise`` an exception,
#: ``kill`` itself with SIGKILL (as the OOM killer or ``kill -9`` would).
FAULT_KINDS = ("raise", "kill")
#: Knobs that change the model or how its forward runs; a partition cuts the plain model only.
_PLAIN_KNOBS = {
    "precision": "fp32",
    "checkpointing": "off",
    "sparsity": 0.0,
    "allocation": "dynamic",
    "inplace": False,
    "fuse": "none",
    "compression": "none",
    "offload_activations": "off",
    "weights": "resident",
    "budget_bytes": None,
    "profile": "none",
}
_POLL_S = 0.05  # how long the orchestrator waits on its stages before checking the deadline
_GRACE_S = 0.2  # after a stage's link broke, how long to wait for the stage that caused it


# ============================================================================================
# Data (no torch): what crosses to the kernel
@dataclass(frozen=True)
class MicroBatchTimes:
    """One micro-batch in one stage, in seconds from the pipeline's go. ``wait_s``: the stage
    began to wait for the input; ``input_s``: it had it; ``compute_end_s``: its blocks were
    done; ``slot_s``: it had a free slot in the next ring (= ``compute_end_s`` for the last
    stage); ``sent_s``: the output was copied and announced."""

    stage: int
    index: int
    wait_s: float
    input_s: float
    compute_end_s: float
    slot_s: float
    sent_s: float

    @property
    def busy_s(self) -> float:
        """Computing plus copying the output out."""
        return (self.compute_end_s - self.input_s) + (self.sent_s - self.slot_s)


@dataclass
class StageResult:
    """One stage process: what it held and when it worked."""

    index: int
    lo: int  # first block (index into model.blocks)
    hi: int  # one past the last block
    modules: list[str]  # the model's top-level parts it runs: stem, blocks.0, ..., head
    pid: int
    threads: int
    param_bytes: int  # its parameters and buffers (each storage once)
    peak_bytes: int  # tracked tensor peak during the measured pipeline (memlab.track)
    peak_by_category: dict[str, int]
    input_bytes: int  # one micro-batch's input to this stage
    output_bytes: int  # one micro-batch's output of this stage
    copied_bytes: int  # bytes it wrote into the next ring (one copy per micro-batch)
    shm_bytes: int  # bytes of the rings it maps (in and out)
    rss_runtime_bytes: int | None  # RSS after importing torch, before building (the runtime)
    rss_built_bytes: int | None  # RSS with its part of the model only, heap trimmed
    rss_hwm_bytes: int | None  # peak RSS during the measured pipeline (VmHWM, reset at entry)
    rss_anon_peak_bytes: int | None
    rss_shmem_peak_bytes: int | None
    times: list[MicroBatchTimes]

    @property
    def busy_s(self) -> float:
        return sum(t.busy_s for t in self.times)

    @property
    def end_s(self) -> float:
        return max((t.sent_s for t in self.times), default=0.0)

    def idle_fraction(self, makespan_s: float) -> float:
        """Fraction of the makespan this stage was not computing or copying, in [0, 1]."""
        if makespan_s <= 0:
            return math.nan
        return min(1.0, max(0.0, 1.0 - self.busy_s / makespan_s))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["times"] = [dataclasses.asdict(t) for t in self.times]
        d["modules"] = list(self.modules)
        d["peak_by_category"] = dict(self.peak_by_category)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageResult:
        d = dict(d)
        d["times"] = [MicroBatchTimes(**t) for t in d["times"]]
        return cls(**d)


@dataclass
class PartitionResult:
    """A K-stage pipeline and its one-process anchor, measured in the same call.

    ``status``: ``ok`` or ``error`` (then ``error`` names the stage and what happened, and the
    figures of the failed part are missing). ``outputs_equal``: the pipeline's outputs are the
    anchor's to the bit; ``max_abs_diff`` beside it."""

    workload: str
    stages: int
    micro_batches: int
    micro_batch_size: int
    threads: int
    slots: int
    status: str
    error: str | None = None
    failed_stage: int | None = None
    stage_results: list[StageResult] = field(default_factory=list)
    anchor: StageResult | None = None
    makespan_s: float | None = None  # go to the last stage's last output
    anchor_wall_s: float | None = None
    outputs_equal: bool | None = None
    max_abs_diff: float | None = None
    pids: list[int] = field(default_factory=list)  # every process this call started
    notes: list[str] = field(default_factory=list)

    # -- derived --------------------------------------------------------------------------
    @property
    def throughput_per_s(self) -> float | None:
        """Micro-batches per second through the pipeline."""
        m = self.makespan_s
        return self.micro_batches / m if m else None

    @property
    def anchor_throughput_per_s(self) -> float | None:
        m = self.anchor_wall_s
        return self.micro_batches / m if m else None

    @property
    def speedup(self) -> float | None:
        """Pipeline throughput over the one process's (measured in the same call)."""
        a, b = self.throughput_per_s, self.anchor_throughput_per_s
        return a / b if a and b else None

    @property
    def summed_peak_bytes(self) -> int | None:
        """Sum of the stages' tracked tensor peaks (each stage peaks at its own time)."""
        return sum(s.peak_bytes for s in self.stage_results) if self.stage_results else None

    @property
    def summed_rss_hwm_bytes(self) -> int | None:
        v = [s.rss_hwm_bytes for s in self.stage_results]
        return None if not v or any(x is None for x in v) else sum(x for x in v if x is not None)

    @property
    def bytes_copied(self) -> int:
        """Bytes written into the rings: one copy of each activation per hop."""
        return sum(s.copied_bytes for s in self.stage_results)

    def idle_fractions(self) -> list[float]:
        m = self.makespan_s or 0.0
        return [s.idle_fraction(m) for s in self.stage_results]

    @property
    def bubble(self) -> float | None:
        """Measured: the fraction of all stages' time over the makespan that was idle."""
        if not self.stage_results or not self.makespan_s:
            return None
        busy = sum(s.busy_s for s in self.stage_results)
        return min(1.0, max(0.0, 1.0 - busy / (len(self.stage_results) * self.makespan_s)))

    @property
    def predicted_bubble(self) -> float:
        """Predicted for equal stages and free handover: (K - 1) / (M + K - 1)."""
        return predicted_bubble(self.stages, self.micro_batches)

    def summary(self) -> dict[str, Any]:
        a = self.anchor
        return {
            "workload": self.workload,
            "stages": self.stages,
            "micro_batches": self.micro_batches,
            "status": self.status,
            "stage_peak_bytes": [s.peak_bytes for s in self.stage_results],
            "summed_peak_bytes": self.summed_peak_bytes,
            "anchor_peak_bytes": None if a is None else a.peak_bytes,
            "stage_rss_hwm_bytes": [s.rss_hwm_bytes for s in self.stage_results],
            "summed_rss_hwm_bytes": self.summed_rss_hwm_bytes,
            "anchor_rss_hwm_bytes": None if a is None else a.rss_hwm_bytes,
            "throughput_per_s": self.throughput_per_s,
            "anchor_throughput_per_s": self.anchor_throughput_per_s,
            "speedup": self.speedup,
            "bubble": self.bubble,
            "predicted_bubble": self.predicted_bubble,
            "idle_fractions": self.idle_fractions(),
            "bytes_copied": self.bytes_copied,
            "outputs_equal": self.outputs_equal,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stage_results"] = [s.to_dict() for s in self.stage_results]
        d["anchor"] = None if self.anchor is None else self.anchor.to_dict()
        d["pids"] = list(self.pids)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PartitionResult:
        d = dict(d)
        d["stage_results"] = [StageResult.from_dict(s) for s in d["stage_results"]]
        d["anchor"] = None if d.get("anchor") is None else StageResult.from_dict(d["anchor"])
        return cls(**d)


# ============================================================================================
# Pure helpers
def split_blocks(n_blocks: int, stages: int) -> list[tuple[int, int]]:
    """``stages`` contiguous ``(lo, hi)`` ranges covering ``range(n_blocks)``, sizes differing
    by at most one, the larger first."""
    if not 1 <= stages <= n_blocks:
        raise ValueError(f"stages must be from 1 to {n_blocks} (one block at least each)")
    base, extra = divmod(n_blocks, stages)
    out, lo = [], 0
    for k in range(stages):
        hi = lo + base + (1 if k < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def predicted_bubble(stages: int, micro_batches: int) -> float:
    """The idle fraction of a pipeline of ``stages`` equal stages over ``micro_batches``
    micro-batches with free handover: (K - 1) / (M + K - 1) (GPipe, Huang et al. 2019)."""
    return (stages - 1) / (micro_batches + stages - 1)


def _is_int(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _experiment(experiment: Experiment | str) -> Experiment:
    from memlab.config import Experiment

    if isinstance(experiment, str):
        if experiment not in WORKLOADS:
            raise ValueError(
                f"unknown workload {experiment!r}; partition cuts the built-in workloads: "
                f"{', '.join(WORKLOADS)} (or a memlab.Experiment of one of them)"
            )
        return Experiment(workload=experiment, mode="inference", device="cpu")
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"experiment must be a memlab.Experiment or a workload name "
            f"({', '.join(WORKLOADS)}), got {type(experiment).__name__}"
        )
    if not isinstance(experiment.workload, str) or experiment.workload not in WORKLOADS:
        raise ValueError(
            f"partition cuts the built-in workloads only ({', '.join(WORKLOADS)}), "
            f"got {experiment.workload_name!r}"
        )
    changed = [
        f"{k}={getattr(experiment, k)!r}"
        for k, plain in _PLAIN_KNOBS.items()
        if getattr(experiment, k) != plain
    ]
    if changed:
        raise ValueError(
            f"partition cuts the plain fp32 model; these knobs must be at their defaults: "
            f"{', '.join(changed)} (allowed: "
            + ", ".join(f"{k}={v!r}" for k, v in _PLAIN_KNOBS.items())
            + ")"
        )
    if experiment.device == "cuda":
        raise ValueError("partition runs its stages on the CPU: device must be 'cpu' or 'auto'")
    return experiment.replace(mode="inference", device="cpu")


def _check_args(
    stages: object, micro_batches: object, threads: object, slots: object, warmup: object
) -> None:
    if not _is_int(stages, 1):
        raise ValueError(f"stages must be a positive int, got {stages!r}")
    if not _is_int(micro_batches, 1):
        raise ValueError(f"micro_batches must be a positive int, got {micro_batches!r}")
    if not _is_int(threads, 1):
        raise ValueError(
            f"threads must be a positive int (torch threads per stage), got {threads!r}"
        )
    if not _is_int(slots, 1):
        raise ValueError(
            f"slots must be a positive int (activations in flight per link), got {slots!r}"
        )
    if not _is_int(warmup, 0):
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def _check_fault(fault: Mapping[str, Any] | None, stages: int, micro_batches: int) -> None:
    if fault is None:
        return
    if not isinstance(fault, Mapping) or set(fault) - {"stage", "at", "kind"}:
        raise ValueError(f"fault must be a dict with keys stage, at, kind (or None), got {fault!r}")
    if fault.get("kind") not in FAULT_KINDS:
        raise ValueError(
            f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {fault.get('kind')!r}"
        )
    s, at = fault.get("stage"), fault.get("at", 0)
    if not _is_int(s, 0) or s >= stages:  # type: ignore[operator]
        raise ValueError(f"fault stage must be an int from 0 to {stages - 1}, got {s!r}")
    if not _is_int(at, 0) or at >= micro_batches:  # type: ignore[operator]
        raise ValueError(
            f"fault at must be a micro-batch from 0 to {micro_batches - 1}, got {at!r}"
        )


# ============================================================================================
# The stage process (torch lives here only)
def _stage_module(model: Any, name: str, lo: int, hi: int, first: bool, last: bool) -> Any:
    """An ``nn.Module`` running ``blocks[lo:hi]`` of ``model`` (plus its stem when ``first``
    and its head when ``last``), sharing the model's submodules (no copy). Its forward is the
    matching slice of each model's ``forward`` in memlab/workloads/models.py, op for op."""
    from torch import nn

    class Stage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(model.blocks[lo:hi])
            if first:
                if name == "transformer":
                    self.embed, self.pos = model.embed, model.pos
                else:
                    self.stem = model.stem
            if last:
                self.head = model.head
                if name != "cnn":
                    self.norm = model.norm

        def forward(self, x: Any) -> Any:
            if first:
                # Transformer.forward: embed(x) + pos; MLP.forward and CNN.forward: stem(x)
                x = self.embed(x) + self.pos if name == "transformer" else self.stem(x)
            for b in self.blocks:
                x = b(x)
            if last:
                if name == "mlp":  # MLP.forward
                    return self.head(self.norm(x))
                if name == "cnn":  # CNN.forward
                    return self.head(x.mean(dim=(2, 3)))
                return self.head(self.norm(x).mean(dim=1))  # Transformer.forward
            return x

    return Stage()


def _module_names(name: str, lo: int, hi: int, first: bool, last: bool) -> list[str]:
    stem = ["embed", "pos"] if name == "transformer" else ["stem"]
    head = ["head"] if name == "cnn" else ["norm", "head"]
    return (stem if first else []) + [f"blocks.{i}" for i in range(lo, hi)] + (head if last else [])


def _storage_bytes(module: Any) -> int:
    """Bytes of ``module``'s parameters and buffers, each storage once."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += int(st.nbytes())
    return total


def _ring_views(shm: SharedMemory, slots: int, shape: Sequence[int]) -> list[Any]:
    """``slots`` float32 tensors over ``shm``'s buffer, one per slot: numpy views wrapped by
    ``torch.from_numpy``, which shares the memory (no copy; torch/csrc/utils/tensor_numpy.cpp,
    tensor_from_numpy)."""
    import numpy as np
    import torch

    arr = np.ndarray((slots, *shape), dtype=np.float32, buffer=shm.buf)
    return [torch.from_numpy(arr[i]) for i in range(slots)]


def _stage_main(
    conn: Connection,
    cancel: Any,
    stderr_path: str,
    *,
    spec: dict[str, Any],
    prev: Connection | None,
    nxt: Connection | None,
) -> None:
    """Entry point of one stage process (spawned by ``memlab.runner.procs._spawn``)."""
    import faulthandler
    import sys

    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives with the process
    faulthandler.enable()  # a segfault prints the Python stack to stderr, for the parent
    k = int(spec["index"])
    try:
        _stage_body(conn, spec, prev, nxt)
    except (EOFError, BrokenPipeError, ConnectionResetError) as e:
        # A neighbour (or the orchestrator) is gone: a consequence, not the cause.
        try:
            conn.send(("error", k, f"a link closed: {type(e).__name__}", "link"))
        except OSError:
            pass
    except BaseException as e:  # noqa: BLE001 - report, never hang the parent
        import traceback

        try:
            conn.send(("error", k, f"{type(e).__name__}: {e}\n{traceback.format_exc()}", "stage"))
        except OSError:
            pass


def _stage_body(
    conn: Connection, spec: dict[str, Any], prev: Connection | None, nxt: Connection | None
) -> None:
    import gc
    import signal
    from multiprocessing.shared_memory import SharedMemory

    import torch

    from memlab.config import Experiment
    from memlab.knobs import build_experiment
    from memlab.tracking import track
    from memlab.tracking.procmem import read_process_memory, trim_heap

    k, lo, hi = int(spec["index"]), int(spec["lo"]), int(spec["hi"])
    n_stages, m_total = int(spec["stages"]), int(spec["micro_batches"])
    slots, threads = int(spec["slots"]), int(spec["threads"])
    first, last = k == 0, k == n_stages - 1
    fault = spec.get("fault")
    torch.set_num_threads(threads)
    rss_runtime = read_process_memory()["rss"]

    exp = Experiment.from_dict(spec["experiment"])
    name = exp.workload_name
    w = build_experiment(exp, "cpu")
    model: Any = w.model.eval()
    if len(model.blocks) != BLOCKS[name]:
        raise RuntimeError(
            f"the {name} model has {len(model.blocks)} blocks, memlab.partitioning.BLOCKS says "
            f"{BLOCKS[name]}: update BLOCKS"
        )
    inputs = [x for x, _ in w.make_batches(m_total)]
    stage = _stage_module(model, name, lo, hi, first, last).eval()
    with torch.inference_mode():  # this stage's input and output shapes, from micro-batch 0
        before = _stage_module(model, name, 0, lo, True, False) if not first else None
        x_in = inputs[0] if before is None else before(inputs[0])
        y0 = stage(x_in)
    in_shape, out_shape = list(x_in.shape), list(y0.shape)
    if not last and y0.dtype != torch.float32:
        raise RuntimeError(f"stage {k} outputs {y0.dtype}; the rings hold float32 only")
    in_bytes = int(x_in.numel() * x_in.element_size())
    out_bytes = int(y0.numel() * y0.element_size())
    # Keep this stage's part only: the rest of the model (and the other stages' inputs) freed,
    # the C heap trimmed, so RSS shows what this stage holds (glibc keeps freed memory).
    if not first:
        inputs = []
    del w, model, before, x_in, y0
    gc.collect()
    trim_heap()
    rss_built = read_process_memory()["rss"]
    conn.send(
        (
            "built",
            {
                "pid": os.getpid(),
                "in_shape": in_shape,
                "out_shape": out_shape,
                "in_bytes": in_bytes,
                "out_bytes": out_bytes,
            },
        )
    )
    msg = conn.recv()  # ("rings", in_name, out_name)
    shms = []
    in_views: list[Any] = []
    out_views: list[Any] = []
    if msg[1] is not None:
        shms.append(SharedMemory(name=msg[1]))
        in_views = _ring_views(shms[-1], slots, in_shape)
    if msg[2] is not None:
        shms.append(SharedMemory(name=msg[2]))
        out_views = _ring_views(shms[-1], slots, out_shape)
    shm_bytes = sum(s.size for s in shms)

    # Warm-up on zeros of the input's shape: first-call costs (oneDNN primitives, thread pool)
    # are not the pipeline's.
    with torch.inference_mode():
        for _ in range(int(spec["warmup"])):
            stage(torch.zeros(in_shape, dtype=inputs[0].dtype if first else torch.float32))
    conn.send(("ready",))
    msg = conn.recv()  # ("go", t0)
    t0 = float(msg[1])

    def now() -> float:
        return time.monotonic() - t0

    free = list(range(slots))  # free slots of the next ring (the producer's view)
    times: list[MicroBatchTimes] = []
    outputs: list[Any] = []
    copied = 0
    with track(stage, inputs=inputs) as rec, torch.inference_mode():
        for m in range(m_total):
            t_wait = now()
            if first:
                x, slot_in = inputs[m], None
            else:
                assert prev is not None
                tag, mb, slot_in = prev.recv()
                if tag != "mb" or mb != m:
                    raise RuntimeError(f"stage {k} expected micro-batch {m}, got {tag} {mb}")
                x = in_views[slot_in]
            t_in = now()
            if fault is not None and fault["stage"] == k and fault["at"] == m:
                if fault["kind"] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected fault in stage {k} at micro-batch {m}")
            y = stage(x)
            if slot_in is not None:
                if y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                    y = y.clone()  # never hand the slot back while the output lives in it
                del x
                assert prev is not None
                prev.send(("free", slot_in))
            t_c = now()
            if last:
                outputs.append(y.numpy().copy())
                t_slot = t_sent = now()
            else:
                assert nxt is not None
                while not free or nxt.poll():
                    tag, s = nxt.recv()
                    free.append(s)
                t_slot = now()
                s = free.pop(0)
                out_views[s].copy_(y)  # the one copy of this hop
                copied += int(y.numel() * y.element_size())
                nxt.send(("mb", m, s))
                t_sent = now()
            del y
            times.append(MicroBatchTimes(k, m, t_wait, t_in, t_c, t_slot, t_sent))
    r = rec.result
    assert r is not None
    result = StageResult(
        index=k,
        lo=lo,
        hi=hi,
        modules=_module_names(name, lo, hi, first, last),
        pid=os.getpid(),
        threads=threads,
        param_bytes=_storage_bytes(stage),
        peak_bytes=int(r.peak_bytes),
        peak_by_category={c: int(v) for c, v in r.peak_by_category.items()},
        input_bytes=in_bytes,
        output_bytes=out_bytes,
        copied_bytes=copied,
        shm_bytes=shm_bytes,
        rss_runtime_bytes=rss_runtime,
        rss_built_bytes=rss_built,
        rss_hwm_bytes=r.rss_hwm_bytes,
        rss_anon_peak_bytes=r.rss_anon_peak_bytes,
        rss_shmem_peak_bytes=r.process.peak("rss_shmem"),
        times=times,
    )
    # The last stage waits for nothing; the others make sure their consumer has taken every
    # slot before leaving (its "free" messages would otherwise hit a closed pipe).
    if nxt is not None:
        while len(free) < slots:
            free.append(nxt.recv()[1])
    conn.send(("done", result.to_dict(), outputs))
    del in_views, out_views
    gc.collect()
    for s in shms:
        try:
            s.close()
        except BufferError:  # a view still exported: the process exits anyway
            pass
    conn.recv()  # ("bye",): the orchestrator has read everything


# ============================================================================================
# The orchestrator (the caller's process: no torch)
class _Failure(Exception):
    def __init__(self, stage: int | None, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _run_pipeline(
    exp: Experiment,
    ranges: list[tuple[int, int]],
    *,
    micro_batches: int,
    threads: int,
    slots: int,
    warmup: int,
    fault: Mapping[str, Any] | None,
    deadline: float,
    on_start: Callable[[list[int]], None] | None,
    pids: list[int],
) -> tuple[list[StageResult], list[Any], float]:
    """Spawn one stage per range, run the pipeline, return (stage results, the last stage's
    outputs, makespan). Raises ``_Failure`` naming the stage; always leaves no stage alive and
    no ring behind."""
    import multiprocessing as mp
    from multiprocessing.shared_memory import SharedMemory

    from memlab.runner.procs import _kill, _spawn

    ctx = mp.get_context("spawn")
    n = len(ranges)
    links = [ctx.Pipe(duplex=True) for _ in range(n - 1)]  # (stage k's end, stage k+1's end)
    workers: list[_Worker] = []
    rings: list[SharedMemory] = []
    try:
        for k, (lo, hi) in enumerate(ranges):
            spec = {
                "index": k,
                "lo": lo,
                "hi": hi,
                "stages": n,
                "micro_batches": micro_batches,
                "slots": slots,
                "threads": threads,
                "warmup": warmup,
                "fault": None if fault is None else dict(fault),
                "experiment": exp.to_dict(),
            }
            target = functools.partial(
                _stage_main,
                spec=spec,
                prev=links[k - 1][1] if k > 0 else None,
                nxt=links[k][0] if k < n - 1 else None,
            )
            workers.append(_spawn(target, f"memlab-stage-{k}"))
            pids.append(int(workers[-1].process.pid))
        for a, b in links:  # the stages hold them now; a dead stage's link must read EOF
            a.close()
            b.close()
        built = _gather(workers, "built", deadline)
        for k in range(n - 1):
            size = slots * int(built[k]["out_bytes"])
            rings.append(SharedMemory(create=True, size=max(1, size)))
        for k, w in enumerate(workers):
            w.conn.send(
                (
                    "rings",
                    rings[k - 1].name if k > 0 else None,
                    rings[k].name if k < n - 1 else None,
                )
            )
        _gather(workers, "ready", deadline)
        if on_start is not None:
            on_start([int(w.process.pid) for w in workers])
        t0 = time.monotonic()
        for w in workers:
            w.conn.send(("go", t0))
        done = _gather(workers, "done", deadline)
        for w in workers:
            try:
                w.conn.send(("bye",))
            except OSError:
                pass
        results = [StageResult.from_dict(d[0]) for d in done]
        makespan = max(s.end_s for s in results)
        return results, done[-1][1], makespan
    finally:
        for w in workers:
            _kill(w)
        for s in rings:
            s.close()
            try:
                s.unlink()
            except FileNotFoundError:
                pass


def _death(w: _Worker, k: int) -> str:
    """How stage ``k`` died: its exit code or signal, and its last stderr lines."""
    from memlab.runner.procs import _stderr_tail

    w.process.join(timeout=1)
    code = w.process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    tail = _stderr_tail(w.stderr_path)
    return f"stage {k} died ({how})" + (f"; its last stderr lines:\n{tail}" if tail else "")


def _gather(workers: list[_Worker], tag: str, deadline: float) -> list[Any]:
    """Each stage's next message, which must be ``tag``; the first failure raises ``_Failure``
    (a stage's own error before a broken link, which is only its neighbour's consequence)."""
    from multiprocessing.connection import wait

    got: dict[int, Any] = {}
    link_failure: tuple[int, str, float] | None = None
    by_conn = {id(w.conn): k for k, w in enumerate(workers)}
    by_sentinel = {w.process.sentinel: k for k, w in enumerate(workers)}
    while len(got) < len(workers):
        now = time.monotonic()
        if link_failure is not None and now - link_failure[2] > _GRACE_S:
            raise _Failure(link_failure[0], link_failure[1])
        if now > deadline:
            missing = [k for k in range(len(workers)) if k not in got]
            raise _Failure(None, f"timed out waiting for stage(s) {missing} ({tag})")
        waitables: list[Any] = []
        for k, w in enumerate(workers):
            if k not in got:
                waitables += [w.conn, w.process.sentinel]
        ready = wait(waitables, timeout=_POLL_S)
        # Messages before deaths: a stage that sent its error and then exited is an error.
        ready.sort(key=lambda r: isinstance(r, int))
        for r in ready:
            if isinstance(r, int):
                k = by_sentinel[r]
                w = workers[k]
                if k in got or w.conn.poll():
                    continue  # its message is read below / was read
                raise _Failure(k, _death(w, k))
            k = by_conn[id(r)]
            try:
                msg = workers[k].conn.recv()
            except (EOFError, OSError):
                raise _Failure(k, _death(workers[k], k)) from None
            if msg[0] == "error":
                if msg[3] == "link":
                    if link_failure is None:
                        link_failure = (k, f"stage {k}: {msg[2]}", time.monotonic())
                    continue
                raise _Failure(k, f"stage {k} raised {msg[2]}".rstrip())
            if msg[0] != tag:
                raise _Failure(k, f"stage {k} sent {msg[0]!r}, expected {tag!r}")
            got[k] = msg[1] if len(msg) == 2 else msg[1:]
    return [got[k] for k in range(len(workers))]


def partition(
    experiment: Experiment | str = "mlp",
    *,
    stages: int = 2,
    micro_batches: int = 8,
    threads: int = 1,
    slots: int = 2,
    warmup: int = 2,
    fault: Mapping[str, Any] | None = None,
    on_start: Callable[[list[int]], None] | None = None,
    anchor: bool = True,
    timeout_s: float = 300.0,
) -> PartitionResult:
    """Cut ``experiment``'s model into ``stages`` contiguous stages, one process each, and run
    ``micro_batches`` micro-batches of ``experiment.batch_size`` samples through them as a
    pipeline; the anchor (one process, the whole model, the same micro-batches) runs first, in
    the same call. See the module doc.

    ``threads``: torch's intra-op threads in each process (the anchor's too, so its outputs
    are computed by the same kernels: the pipeline uses ``stages`` times the cores).
    ``slots``: activations in flight per link. ``fault``: ``{"stage": k, "at": m, "kind":
    "raise" | "kill"}`` makes stage k fail at micro-batch m. ``on_start(pids)`` is called with
    the stages' pids once they are ready, before the go. ``anchor=False`` skips the one-process
    run (and the comparisons that need it). Never raises for a failing stage: the
    result's ``status`` is ``error`` and ``error`` names the stage."""
    _check_args(stages, micro_batches, threads, slots, warmup)
    exp = _experiment(experiment)
    name = exp.workload_name
    if stages > BLOCKS[name]:
        raise ValueError(
            f"stages must be from 1 to {BLOCKS[name]} for {name} (it has {BLOCKS[name]} "
            f"blocks, one at least per stage), got {stages}"
        )
    _check_fault(fault, stages, micro_batches)
    if on_start is not None and not callable(on_start):
        raise TypeError(f"on_start must be callable or None, got {type(on_start).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    # Exactly micro_batches distinct batches of synthetic data, the same in every process.
    exp = exp.replace(data="ram", data_size=exp.batch_size * micro_batches, num_workers=0)
    out = PartitionResult(
        workload=name,
        stages=stages,
        micro_batches=micro_batches,
        micro_batch_size=exp.batch_size,
        threads=threads,
        slots=slots,
        status="ok",
    )
    deadline = time.monotonic() + float(timeout_s)

    def run(
        ranges: list[tuple[int, int]],
        fault: Mapping[str, Any] | None,
        on_start: Callable[[list[int]], None] | None,
    ) -> tuple[list[StageResult], list[Any], float]:
        return _run_pipeline(
            exp,
            ranges,
            micro_batches=micro_batches,
            threads=threads,
            slots=slots,
            warmup=warmup,
            fault=fault,
            deadline=deadline,
            on_start=on_start,
            pids=out.pids,
        )

    anchor_out: list[Any] | None = None
    try:
        if anchor:
            one, anchor_out, out.anchor_wall_s = run(split_blocks(BLOCKS[name], 1), None, None)
            out.anchor = one[0]
        results, outputs, makespan = run(split_blocks(BLOCKS[name], stages), fault, on_start)
    except _Failure as e:
        out.status, out.error, out.failed_stage = "error", str(e), e.stage
        return out
    out.stage_results, out.makespan_s = results, makespan
    if anchor_out is None:
        out.notes = ["no anchor asked for (anchor=False): nothing to compare with"]
        return out
    import numpy as np

    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(outputs, anchor_out, strict=True)]
    out.outputs_equal = all(np.array_equal(a, b) for a, b in zip(outputs, anchor_out, strict=True))
    out.max_abs_diff = max(diffs, default=0.0)
    out.notes = [
        f"{name}: {micro_batches} micro-batches of {exp.batch_size}; stages run blocks "
        + ", ".join(f"[{s.lo}:{s.hi}]" for s in results),
        f"each process runs torch with {threads} intra-op thread(s): the anchor uses "
        f"{threads} core(s), the pipeline up to {stages * threads}",
        "each process holds its own Python and torch runtime (rss_runtime_bytes): a summed RSS "
        "counts it once per stage",
        "ring slots are shared memory outside PyTorch's allocator: not in the tracked peaks "
        "(shm_bytes), and in both neighbours' RSS once touched",
        f"predicted bubble (equal stages, free handover): {out.predicted_bubble:.3f}",
    ]
    return out
