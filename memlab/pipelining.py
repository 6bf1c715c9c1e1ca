"""Pipelining and prefetch for inference: preprocessing of the next request overlapped with the
current one's compute, and pinned memory as a CUDA host-to-device matter.

A request arrives *raw* and must be preprocessed before the model's forward:

- ``cnn``: a uint8 grey image batch of ``(batch, 1, 16*s, 16*s)`` (a camera frame at ``s``
  times the model's resolution): to float, normalised, resized to 16x16 with an antialiased
  bilinear filter (``torch.nn.functional.interpolate(..., antialias=True)``, what
  torchvision's ``Resize`` does on tensors);
- ``transformer``: the same image, then cut into 64 tokens of 2x2 pixels (the ``patches16``
  layout of ``memlab.workloads.data.digits_as``: the built-in transformer takes continuous
  tokens, not token ids);
- ``mlp``: rows of ``64*s*s`` int16 sensor readings (12-bit), to float, standardised, each
  window of ``s*s`` readings averaged into one of the model's 64 features.

``s`` is ``raw_scale``: the preprocessing work grows with ``s**2``, so it can be dialled from
negligible to larger than the forward. The raw pixels are seeded noise (what preprocessing costs
does not depend on what the pictures show).

Each *mode* runs the same seeded request stream (``Mode``):

- ``sequential``: per request, preprocess then infer, on one thread (torch's intra-op pool of
  ``threads`` threads serves both);
- ``pipelined``: a two-stage pipeline. Stage 1, a thread, preprocesses request i+1 while stage
  2 (the calling thread) runs the model on request i; between them a bounded queue of ``depth``
  preprocessed batches. A thread, not a process: torch's and numpy's kernels release the GIL
  (each dispatch lambda that tools/autograd/gen_python_functions.py generates opens with
  ``pybind11::gil_scoped_release no_gil``), so two threads overlap on two cores, and a batch handed
  over by reference costs no copy (a process would pickle or share-memory every batch).
  ``torch.set_num_threads`` is process-wide (at::set_num_threads sets the one intra-op pool:
  a thread that calls it changes it for every thread, checked on torch 2.13), so the pipelined
  default is 1 intra-op thread: each stage's ops run on its own core. The comparison is only
  fair when the thread settings are printed beside it: every ``ModeRun`` carries them.

Arrivals (``rate_hz``): ``None`` is back-to-back, a saturated closed loop: a request arrives
when the system can take it (sequential: when the previous one has finished; pipelined: when
stage 1 is free). Latency is arrival to result, so the pipelined latency includes the time a
preprocessed batch waits in the queue: the throughput gained is paid in latency (Little's law).
With ``rate_hz`` requests arrive at fixed times ``i / rate_hz``; a system slower than the rate
builds a backlog, and latency counts it.

Memory in flight: the queue counts the bytes of every preprocessed batch it holds (exact:
``numel * element_size`` of each); ``peak_queue_bytes`` is its high-water mark, at most
``depth`` batches. Stage 1 also holds the batch it is preparing (or waiting to put), and stage
2 the one it computes on, as the sequential mode does. The process's peak RSS (``VmHWM``, reset
before each mode) is beside it, with the allocator's noise in it.

Timing quality: the consumer reads the clocks after every request (``memlab.timing``: wall,
this process's CPU time, the machine's busy time), and ``memlab.timing.assess`` over those
windows says whether other processes disturbed the mode (``ModeRun.timing``).

Nothing here imports torch at import time: the results are plain data for the notebook kernel;
``pipeline`` and ``pinned_memory`` run their jobs in the service worker (``memlab.runner.call``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memlab.timeline import Timing

if TYPE_CHECKING:
    from memlab.config import Experiment

__all__ = [
    "WORKLOADS",
    "KINDS",
    "Mode",
    "RequestTimes",
    "ModeRun",
    "PipelineResult",
    "PipelineError",
    "PinnedResult",
    "default_modes",
    "run_stream",
    "pipeline",
    "pipeline_job",
    "pinned_memory",
    "pinned_job",
]

#: The built-in workloads whose raw requests this module knows how to make and preprocess.
WORKLOADS = ("mlp", "cnn", "transformer")
KINDS = ("sequential", "pipelined")
_MAX_SCALE = 64  # a 1024x1024 frame: beyond it one request is hundreds of MiB raw
_THREAD_NAME = "memlab-preprocess"


class PipelineError(RuntimeError):
    """A request could not be preprocessed (or inferred); the message names the request and the
    stage, the original exception is ``__cause__``."""


# ============================================================================================
# Data (no torch)
@dataclass(frozen=True)
class Mode:
    """How one pass over the stream runs. ``kind``: ``sequential`` or ``pipelined``;
    ``threads``: torch's intra-op threads (process-wide) during the pass; ``depth``: the
    pipelined queue's capacity in preprocessed batches (ignored when sequential)."""

    name: str
    kind: str
    threads: int
    depth: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Mode.name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"Mode.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not _is_pos_int(self.threads):
            raise ValueError(f"Mode.threads must be a positive int, got {self.threads!r}")
        if self.kind == "pipelined" and not _is_pos_int(self.depth):
            raise ValueError(
                f"Mode.depth must be a positive int for a pipelined mode, got {self.depth!r}"
            )
        if self.kind == "sequential" and self.depth != 0:
            raise ValueError(f"a sequential mode has no queue: depth must be 0, got {self.depth}")


def _is_pos_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_modes(depth: int = 2, cpus: int | None = None) -> list[Mode]:
    """The anchor first: sequential at torch's default thread count here (every CPU: what a
    plain script gets); then sequential with one thread per CPU pair, the thread-matched
    anchor (on a busy machine torch's threads wait on each other at every op's barrier, and
    that, not the overlap, can decide the comparison); then pipelined with as many threads
    per stage (torch's count is process-wide), each stage on its own core."""
    n = _cpus() if cpus is None else cpus
    half = max(1, n // 2)
    modes = [Mode("sequential", "sequential", threads=n)]
    if half != n:
        modes.append(Mode(f"sequential-{half}t", "sequential", threads=half))
    modes.append(Mode("pipelined", "pipelined", threads=half, depth=depth))
    return modes


@dataclass(frozen=True)
class RequestTimes:
    """One request's times in seconds from the pass's start."""

    index: int
    arrival_s: float
    pre_start_s: float
    pre_end_s: float
    infer_start_s: float
    infer_end_s: float

    @property
    def latency_s(self) -> float:
        """Arrival to result."""
        return self.infer_end_s - self.arrival_s

    @property
    def queued_s(self) -> float:
        """Preprocessed, waiting for the model (0 in a sequential pass, up to rounding)."""
        return self.infer_start_s - self.pre_end_s


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy.percentile's default method)."""
    v = sorted(values)
    if not v:
        return math.nan
    pos = (len(v) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass
class ModeRun:
    """One mode's pass over the stream: per-request times, order, queue and memory figures."""

    mode: Mode
    requests: list[RequestTimes]
    preprocessed_order: list[int]  # request indices in the order stage 1 finished them
    inferred_order: list[int]  # ... and in the order the model ran them
    batch_bytes: list[int]  # each preprocessed batch's bytes
    raw_bytes: int = 0  # one raw request's bytes
    peak_queue_len: int = 0
    peak_queue_bytes: int = 0
    queue_samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, len, bytes)
    rss_start_bytes: int | None = None
    rss_peak_bytes: int | None = None
    timing: Timing | None = None
    outputs: list[list[Any]] | None = None  # each request's model output, when kept

    @property
    def wall_s(self) -> float:
        """First arrival to last result."""
        if not self.requests:
            return 0.0
        return max(r.infer_end_s for r in self.requests) - min(r.arrival_s for r in self.requests)

    @property
    def throughput_rps(self) -> float:
        return len(self.requests) / self.wall_s if self.wall_s > 0 else math.nan

    def latency_ms(self, q: float) -> float:
        return 1e3 * _percentile([r.latency_s for r in self.requests], q)

    @property
    def preprocess_ms(self) -> float:
        """Median preprocessing time of one request."""
        return 1e3 * _percentile([r.pre_end_s - r.pre_start_s for r in self.requests], 50)

    @property
    def infer_ms(self) -> float:
        """Median forward time of one request."""
        return 1e3 * _percentile([r.infer_end_s - r.infer_start_s for r in self.requests], 50)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode.name,
            "kind": self.mode.kind,
            "threads": self.mode.threads,
            "depth": self.mode.depth,
            "requests": len(self.requests),
            "throughput_rps": self.throughput_rps,
            "p50_ms": self.latency_ms(50),
            "p99_ms": self.latency_ms(99),
            "preprocess_ms": self.preprocess_ms,
            "infer_ms": self.infer_ms,
            "batch_bytes": max(self.batch_bytes, default=0),
            "peak_queue_len": self.peak_queue_len,
            "peak_queue_bytes": self.peak_queue_bytes,
            "rss_peak_bytes": self.rss_peak_bytes,
            "steady": None if self.timing is None else self.timing.steady,
            "others_share": None if self.timing is None else self.timing.others_share,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["mode"] = dataclasses.asdict(self.mode)
        d["requests"] = [dataclasses.asdict(r) for r in self.requests]
        d["queue_samples"] = [list(s) for s in self.queue_samples]
        d["timing"] = None if self.timing is None else self.timing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModeRun:
        d = dict(d)
        d["mode"] = Mode(**d["mode"])
        d["requests"] = [RequestTimes(**r) for r in d["requests"]]
        d["queue_samples"] = [(float(t), int(n), int(b)) for t, n, b in d["queue_samples"]]
        d["timing"] = None if d.get("timing") is None else Timing.from_dict(d["timing"])
        return cls(**d)


@dataclass
class PipelineResult:
    """Every mode's pass over one seeded stream of raw requests, in the order asked."""

    workload: str
    batch_size: int
    raw_scale: int
    rate_hz: float | None
    seed: int
    cpus: int
    runs: list[ModeRun]
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> ModeRun:
        for r in self.runs:
            if r.mode.name == name:
                return r
        raise KeyError(f"no mode {name!r}; modes: {', '.join(r.mode.name for r in self.runs)}")

    @property
    def names(self) -> list[str]:
        return [r.mode.name for r in self.runs]

    def table(self) -> list[dict[str, Any]]:
        """One row per mode; ``*_vs_first``: this mode's figure over the first mode's (the
        anchor, measured in the same job)."""
        rows = [r.summary() for r in self.runs]
        ref = rows[0] if rows else None
        for row in rows:
            for key in ("throughput_rps", "p50_ms", "p99_ms"):
                base = ref[key] if ref else math.nan
                row[f"{key}_vs_first"] = row[key] / base if base else math.nan
        return rows

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["runs"] = [r.to_dict() for r in self.runs]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineResult:
        d = dict(d)
        d["runs"] = [ModeRun.from_dict(r) for r in d["runs"]]
        return cls(**d)


# ============================================================================================
# The engine (pure Python threads; the callables do the work)
_DONE = object()  # the end of the stream


@dataclass
class _Failed:
    """Stage 1 could not preprocess request ``index``."""

    index: int
    error: BaseException


class _CountingQueue:
    """A FIFO of at most ``depth`` preprocessed batches that records its length and the bytes it
    holds at every put and get, under the same lock that changes them (``queue.Queue`` exposes
    only a racy ``qsize``, so its high-water mark could not be read exactly). The end of the
    stream and a failure are flags beside the items, never items: they take no room."""

    def __init__(self, depth: int, clock: Callable[[], float]) -> None:
        self.depth = depth
        self._clock = clock
        self._cv = threading.Condition()
        self._items: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self._end: _Failed | object | None = None  # _DONE or a _Failed, once stage 1 stops
        self.peak_len = 0
        self.peak_bytes = 0
        self.samples: list[tuple[float, int, int]] = []

    def _record(self) -> None:
        n = len(self._items)
        self.peak_len = max(self.peak_len, n)
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        self.samples.append((self._clock(), n, self._bytes))

    def put(self, item: Any, nbytes: int, stop: threading.Event) -> bool:
        """Wait for room; False (nothing queued) if ``stop`` was set meanwhile."""
        with self._cv:
            while len(self._items) >= self.depth:
                if stop.is_set():
                    return False
                self._cv.wait(0.05)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._record()
            self._cv.notify_all()
            return True

    def close(self, end: _Failed | object) -> None:
        """Stage 1 has stopped: ``_DONE``, or the ``_Failed`` request (after what is queued)."""
        with self._cv:
            self._end = end
            self._cv.notify_all()

    def get(self) -> Any:
        """The next batch in order; once drained, the end marker (``_DONE`` or ``_Failed``)."""
        with self._cv:
            while not self._items and self._end is None:
                self._cv.wait()
            if not self._items:
                return self._end
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._record()
            self._cv.notify_all()
            return item


class _Readings:
    """Clock readings after each request, for ``memlab.timing.assess`` (windows between
    consecutive readings cover the pass without gaps)."""

    def __init__(self) -> None:
        from memlab.timing import machine_busy_s

        self._busy = machine_busy_s
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.busy: list[float | None] = []
        self._last = self._read()

    def _read(self) -> tuple[float, float, float | None]:
        return time.perf_counter(), time.process_time(), self._busy()

    def tick(self) -> None:
        now = self._read()
        w0, c0, b0 = self._last
        self.wall.append(now[0] - w0)
        self.cpu.append(now[1] - c0)
        self.busy.append(None if b0 is None or now[2] is None else now[2] - b0)
        self._last = now


def run_stream(
    raw: Sequence[Any],
    preprocess: Callable[[Any], Any],
    infer: Callable[[Any], Any],
    mode: Mode,
    *,
    nbytes: Callable[[Any], int] = lambda x: 0,
    rate_hz: float | None = None,
    keep: Callable[[Any], Any] | None = None,
    cpus: int | None = None,
) -> ModeRun:
    """Run every raw request through ``preprocess`` then ``infer`` as ``mode`` says, and time
    it (see the module doc for arrivals and latency). ``nbytes(x)`` is a preprocessed batch's
    size, counted by the queue; ``keep(y)`` turns a result into plain data to return (None:
    results are dropped). The thread settings are the caller's: this function only overlaps.

    A preprocessing or inference error stops the pass: stage 1 is told to stop and joined
    (no thread outlives the call), and ``PipelineError`` names the request and the stage.
    """
    if not raw:
        raise ValueError("raw must hold at least one request")
    if rate_hz is not None and not (isinstance(rate_hz, (int, float)) and 0 < rate_hz < math.inf):
        raise ValueError(
            f"rate_hz must be a positive number of requests per second or None, got {rate_hz!r}"
        )
    from memlab.timing import assess

    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    def arrive(i: int) -> float:
        """The request's arrival: now (back-to-back), or its scheduled time (waited for)."""
        if rate_hz is None:
            return clock()
        due = i / rate_hz
        wait = due - clock()
        if wait > 0:
            time.sleep(wait)
        return due

    times: list[RequestTimes] = []
    pre_order: list[int] = []
    inf_order: list[int] = []
    sizes: list[int] = []
    outputs: list[Any] | None = [] if keep is not None else None
    readings = _Readings()
    queue: _CountingQueue | None = None

    def finish(i: int, arrival: float, p0: float, p1: float, x: Any) -> None:
        s0 = clock()
        try:
            y = infer(x)
        except Exception as e:
            raise PipelineError(f"inference of request {i} failed: {type(e).__name__}: {e}") from e
        if outputs is not None and keep is not None:
            outputs.append(keep(y))
        s1 = clock()
        del y
        inf_order.append(i)
        times.append(RequestTimes(i, arrival, p0, p1, s0, s1))
        readings.tick()

    if mode.kind == "sequential":
        for i, r in enumerate(raw):
            arrival = arrive(i)
            p0 = clock()
            try:
                x = preprocess(r)
            except Exception as e:
                raise PipelineError(
                    f"preprocessing of request {i} failed: {type(e).__name__}: {e}"
                ) from e
            p1 = clock()
            pre_order.append(i)
            sizes.append(int(nbytes(x)))
            finish(i, arrival, p0, p1, x)
            del x
    else:
        queue = _CountingQueue(mode.depth, clock)
        stop = threading.Event()

        def stage1() -> None:
            for i, r in enumerate(raw):
                if stop.is_set():
                    return
                arrival = arrive(i)
                p0 = clock()
                try:
                    x = preprocess(r)
                except BaseException as e:  # noqa: BLE001 - handed to stage 2, raised there
                    queue.close(_Failed(i, e))
                    return
                p1 = clock()
                n = int(nbytes(x))
                pre_order.append(i)
                if not queue.put((i, arrival, p0, p1, x, n), n, stop):
                    return
                del x
            queue.close(_DONE)

        worker = threading.Thread(target=stage1, name=_THREAD_NAME, daemon=True)
        worker.start()
        try:
            while True:
                item = queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failed):
                    err = item.error
                    raise PipelineError(
                        f"preprocessing of request {item.index} failed: {type(err).__name__}: {err}"
                    ) from err
                i, arrival, p0, p1, x, n = item
                del item
                sizes.append(n)
                finish(i, arrival, p0, p1, x)
                del x
        finally:
            stop.set()
            worker.join()
    n_cpus = _cpus() if cpus is None else cpus
    # Threads that may be busy at once: one stage's intra-op pool, or two stages' pools.
    busy_threads = mode.threads if mode.kind == "sequential" else min(n_cpus, 2 * mode.threads)
    timing = assess(
        readings.wall,
        readings.cpu,
        readings.busy,
        cpus=n_cpus,
        threads=busy_threads,
        what="requests",
    )
    return ModeRun(
        mode=mode,
        requests=times,
        preprocessed_order=pre_order,
        inferred_order=inf_order,
        batch_bytes=sizes,
        peak_queue_len=0 if queue is None else queue.peak_len,
        peak_queue_bytes=0 if queue is None else queue.peak_bytes,
        queue_samples=[] if queue is None else queue.samples,
        timing=timing,
        outputs=outputs,
    )


# ============================================================================================
# The torch side: raw requests, preprocessing, the job
# Normalisation constants of the raw data (fixed, as a deployed model's preprocessing has):
# uint8 pixels uniform on 0..255 have mean 127.5/255 and std 0.2887 (= 1/sqrt(12)) in [0, 1];
# 12-bit readings are uniform on 0..4095.
_PIX_MEAN, _PIX_STD = 0.5, 0.2887
# log1p of them: mean 7.32 and std 1.00 (numerically, over 0..4095).
_READ_MAX = 4096
_LOG_MEAN, _LOG_STD = 7.32, 1.00


#: Distinct raw batches made (request i reads batch i mod this): a large frame times many
#: requests would hold GiBs, and making them inside the stream would take a core from it.
RAW_POOL = 4


def _raw_requests(workload: str, n: int, batch: int, scale: int, seed: int) -> list[Any]:
    """``n`` seeded raw requests, ``RAW_POOL`` distinct ones cycled (same work per request)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = min(n, RAW_POOL)
    if workload == "mlp":
        shape: tuple[int, ...] = (batch, 64 * scale * scale)
        return [
            torch.randint(0, _READ_MAX, shape, dtype=torch.int16, generator=g) for _ in range(n)
        ]
    side = 16 * scale
    return [
        torch.randint(0, 256, (batch, 1, side, side), dtype=torch.uint8, generator=g)
        for _ in range(n)
    ]


def _preprocessor(workload: str, scale: int) -> Callable[[Any], Any]:
    import torch
    import torch.nn.functional as F

    def image(raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(torch.float32).div_(255.0).sub_(_PIX_MEAN).div_(_PIX_STD)
        if scale > 1:
            x = F.interpolate(
                x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False
            )
        return x.contiguous()

    def patches(raw: torch.Tensor) -> torch.Tensor:
        img = image(raw)
        n = img.shape[0]
        # (n, 1, 16, 16) -> (n, 8, 2, 8, 2) -> (n, 8, 8, 2, 2) -> (n, 64, 4): data.digits_as
        return img.reshape(n, 8, 2, 8, 2).permute(0, 1, 3, 2, 4).reshape(n, 64, 4).contiguous()

    def rows(raw: torch.Tensor) -> torch.Tensor:
        # log1p: readings spread over orders of magnitude are compared on a log scale
        x = raw.to(torch.float32).log1p_().sub_(_LOG_MEAN).div_(_LOG_STD)
        if scale > 1:
            x = F.avg_pool1d(x.unsqueeze(1), kernel_size=scale * scale).squeeze(1)
        return x.contiguous()

    return {"mlp": rows, "cnn": image, "transformer": patches}[workload]


def _check_args(
    requests: object, raw_scale: object, depth: object, rate_hz: object, warmup: object
) -> None:
    if not _is_pos_int(requests):
        raise ValueError(f"requests must be a positive int, got {requests!r}")
    if not _is_pos_int(raw_scale) or raw_scale > _MAX_SCALE:  # type: ignore[operator]
        raise ValueError(f"raw_scale must be an int from 1 to {_MAX_SCALE}, got {raw_scale!r}")
    if not _is_pos_int(depth):
        raise ValueError(
            f"depth must be a positive int (preprocessed batches queued), got {depth!r}"
        )
    if rate_hz is not None and (
        isinstance(rate_hz, bool)
        or not isinstance(rate_hz, (int, float))
        or not 0 < rate_hz < math.inf
    ):
        raise ValueError(
            f"rate_hz must be a positive number of requests per second or None "
            f"(back-to-back), got {rate_hz!r}"
        )
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def _experiment(experiment: Experiment | str) -> Experiment:
    from memlab.config import Experiment

    if isinstance(experiment, str):
        if experiment not in WORKLOADS:
            raise ValueError(
                f"unknown workload {experiment!r}; allowed: {', '.join(WORKLOADS)} "
                "(or a memlab.Experiment of one of them)"
            )
        return Experiment(workload=experiment, mode="inference")
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"experiment must be a memlab.Experiment or a workload name "
            f"({', '.join(WORKLOADS)}), got {type(experiment).__name__}"
        )
    if experiment.workload_name not in WORKLOADS or not isinstance(experiment.workload, str):
        raise ValueError(
            f"pipeline knows the raw requests of the built-in workloads only "
            f"({', '.join(WORKLOADS)}), got {experiment.workload_name!r}"
        )
    return experiment


def _modes(modes: Sequence[Mode] | None, depth: int) -> list[Mode]:
    out = default_modes(depth) if modes is None else list(modes)
    if not out:
        raise ValueError("modes must name at least one Mode")
    for m in out:
        if not isinstance(m, Mode):
            raise TypeError(f"modes must be memlab.pipelining.Mode objects, got {m!r}")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"mode names must be unique, got {names}")
    return out


def pipeline_job(
    experiment: Experiment | str = "cnn",
    *,
    requests: int = 32,
    raw_scale: int = 16,
    depth: int = 2,
    rate_hz: float | None = None,
    modes: Sequence[Mode] | None = None,
    keep_outputs: bool = False,
    warmup: int = 2,
) -> PipelineResult:
    """The torch side of :func:`pipeline`, run where torch may be imported (the service
    worker, a benchmark, a test). The process's torch thread count is restored at the end."""
    _check_args(requests, raw_scale, depth, rate_hz, warmup)
    exp = _experiment(experiment)
    run_modes = _modes(modes, depth)

    import torch

    from memlab.knobs import build_experiment
    from memlab.tracking.procmem import read_process_memory, reset_peak_rss

    # One batch of synthetic data only: the stream below is the data; inference mode so the
    # knobs of lab 06 (allocation, fuse, precision) apply as in a run.
    small = exp.replace(
        mode="inference", data="ram", data_size=exp.batch_size, num_workers=0, device="cpu"
    )
    w = build_experiment(small, "cpu")
    w.model.eval()
    name = small.workload_name
    pool = _raw_requests(name, requests, small.batch_size, raw_scale, small.seed)
    raw = [pool[i % len(pool)] for i in range(requests)]
    pre = _preprocessor(name, raw_scale)

    def nbytes(x: torch.Tensor) -> int:
        return int(x.numel() * x.element_size())

    def keep(y: torch.Tensor) -> list[Any]:
        return y.detach().float().tolist()  # type: ignore[no-any-return]

    cpus = _cpus()
    old_threads = torch.get_num_threads()
    runs: list[ModeRun] = []
    try:
        for m in run_modes:
            torch.set_num_threads(m.threads)
            for r in raw[: min(warmup, len(raw))]:  # first-call costs, at this thread count
                w.infer(pre(r))
            reset_ok = reset_peak_rss()
            rss0 = read_process_memory().get("rss")
            run = run_stream(
                raw,
                pre,
                w.infer,
                m,
                nbytes=nbytes,
                rate_hz=rate_hz,
                keep=keep if keep_outputs else None,
                cpus=cpus,
            )
            run.raw_bytes = nbytes(raw[0])
            run.rss_start_bytes = rss0
            run.rss_peak_bytes = read_process_memory().get("rss_hwm") if reset_ok else None
            runs.append(run)
    finally:
        torch.set_num_threads(old_threads)
    notes = [
        f"{name}: raw request {tuple(raw[0].shape)} {str(raw[0].dtype).replace('torch.', '')}, "
        f"preprocessed to {nbytes(pre(raw[0]))} bytes per batch; {len(pool)} distinct raw "
        "batches, cycled",
        "torch's intra-op thread count is process-wide: a pipelined mode's two stages each run "
        "their ops on that many threads",
        "arrivals: "
        + (
            "back-to-back (each request arrives when the system can take it)"
            if rate_hz is None
            else f"fixed rate, {rate_hz:g} requests/s"
        ),
    ]
    return PipelineResult(
        workload=name,
        batch_size=small.batch_size,
        raw_scale=raw_scale,
        rate_hz=None if rate_hz is None else float(rate_hz),
        seed=small.seed,
        cpus=cpus,
        runs=runs,
        notes=notes,
    )


def pipeline(
    experiment: Experiment | str = "cnn",
    *,
    requests: int = 32,
    raw_scale: int = 16,
    depth: int = 2,
    rate_hz: float | None = None,
    modes: Sequence[Mode] | None = None,
    keep_outputs: bool = False,
    warmup: int = 2,
    timeout_s: float | None = None,
) -> PipelineResult:
    """Sequential vs pipelined inference on one seeded stream of raw requests, measured in the
    service worker (torch stays out of the caller). See the module doc; ``modes`` defaults to
    :func:`default_modes`. Arguments are checked here, before anything is sent."""
    _check_args(requests, raw_scale, depth, rate_hz, warmup)
    _experiment(experiment)
    _modes(modes, depth)
    from memlab import runner

    result: PipelineResult = runner.call(
        pipeline_job,
        experiment,
        requests=requests,
        raw_scale=raw_scale,
        depth=depth,
        rate_hz=rate_hz,
        modes=modes,
        keep_outputs=keep_outputs,
        warmup=warmup,
        timeout_s=timeout_s,
    )
    return result


# ============================================================================================
# Pinned memory: a CUDA host-to-device matter
NOT_MEASURED = (
    "not measured: pinned (page-locked) host memory matters for copies from the host to a CUDA "
    "device (the GPU's DMA engine reads only page-locked memory, so a copy from pageable memory "
    "is staged through a pinned buffer first, and cannot overlap compute). There is no CUDA "
    "device here, so there is nothing to measure; on CPU, pin_memory has no effect"
)


@dataclass(frozen=True)
class PinnedResult:
    """Host-to-device copies from pageable vs pinned buffers, and a copy of batch i+1 on a
    side stream overlapping the compute of batch i. ``measured`` False: no CUDA device, every
    figure is None and ``note`` says why (never a guessed figure)."""

    measured: bool
    note: str
    device: str | None = None
    batch_bytes: int = 0
    batches: int = 0
    pageable_copy_s: float | None = None  # median over batches, one host-to-device copy
    pinned_copy_s: float | None = None
    compute_s: float | None = None  # median, the compute on one batch alone
    serial_s: float | None = None  # whole stream: copy then compute, one stream
    overlapped_s: float | None = None  # whole stream: copy of i+1 beside compute of i
    outputs_match: bool | None = None  # the overlapped stream computed what the serial one did

    @property
    def pageable_gb_per_s(self) -> float | None:
        return _gbps(self.batch_bytes, self.pageable_copy_s)

    @property
    def pinned_gb_per_s(self) -> float | None:
        return _gbps(self.batch_bytes, self.pinned_copy_s)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PinnedResult:
        return cls(**d)


def _gbps(nbytes: int, s: float | None) -> float | None:
    return None if s is None or s <= 0 else nbytes / s / 1e9


def pinned_job(
    batch_bytes: int = 64 * 2**20, batches: int = 8, device: str = "cuda"
) -> PinnedResult:
    """The torch side of :func:`pinned_memory`. Times with CUDA events around each copy (the
    copy is asynchronous to the host), and the streams' totals with a synchronize at the end.
    Pattern from PyTorch's tutorial "A guide on good usage of non_blocking and pin_memory() in
    PyTorch" (pytorch.org/tutorials/intermediate/pinmem_nonblock.html) and the CUDA C
    Programming Guide's "Overlap of Data Transfer and Kernel Execution"."""
    if not _is_pos_int(batch_bytes) or batch_bytes < 2**20:
        raise ValueError(f"batch_bytes must be an int of at least 1 MiB, got {batch_bytes!r}")
    if not _is_pos_int(batches) or batches < 2:
        raise ValueError(
            f"batches must be an int of at least 2 (overlap needs two), got {batches!r}"
        )
    import torch

    if not torch.cuda.is_available() or not str(device).startswith("cuda"):
        return PinnedResult(measured=False, note=NOT_MEASURED)
    dev = torch.device(device)
    k = 1024  # rows of k floats: the compute is a (rows, k) @ (k, k) matmul per batch
    rows = max(1, batch_bytes // (4 * k))
    g = torch.Generator().manual_seed(0)
    pageable = [torch.randn(rows, k, generator=g) for _ in range(batches)]
    pinned = [t.pin_memory() for t in pageable]
    weight = torch.randn(k, k, generator=g).to(dev) / math.sqrt(k)
    nb = rows * k * 4

    def compute(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ weight)

    def copy_times(src: list[torch.Tensor], non_blocking: bool) -> float:
        dst = torch.empty(rows, k, device=dev)
        out = []
        for s in src:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(s, non_blocking=non_blocking)
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        return _percentile(out, 50)

    # Warm-up: the context, cuBLAS handles, the caching allocator's first blocks.
    compute(pinned[0].to(dev, non_blocking=True))
    torch.cuda.synchronize(dev)
    pageable_s = copy_times(pageable, non_blocking=False)
    pinned_s = copy_times(pinned, non_blocking=True)
    d = pinned[0].to(dev)
    torch.cuda.synchronize(dev)
    c_times = []
    for _ in range(batches):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        compute(d)
        b.record()
        b.synchronize()
        c_times.append(a.elapsed_time(b) / 1e3)

    # Serial: copy then compute, one stream.
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    serial_sums = []
    for s in pinned:
        x = s.to(dev, non_blocking=True)
        serial_sums.append(compute(x).sum())
    torch.cuda.synchronize(dev)
    serial = time.perf_counter() - t0

    # Overlapped: double-buffered; the copy stream fills buffer i+1 while the compute stream
    # works on buffer i; events order them (a buffer is refilled only after its compute).
    copy_stream = torch.cuda.Stream(dev)
    main = torch.cuda.current_stream(dev)
    bufs = [torch.empty(rows, k, device=dev) for _ in range(2)]
    ready = [torch.cuda.Event() for _ in range(2)]
    freed = [torch.cuda.Event() for _ in range(2)]
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    with torch.cuda.stream(copy_stream):
        bufs[0].copy_(pinned[0], non_blocking=True)
        ready[0].record(copy_stream)
    over_sums = []
    for i in range(batches):
        cur, nxt = i % 2, (i + 1) % 2
        if i + 1 < batches:
            with torch.cuda.stream(copy_stream):
                if i >= 1:
                    copy_stream.wait_event(freed[nxt])  # compute of batch i-1 is done with it
                bufs[nxt].copy_(pinned[i + 1], non_blocking=True)
                ready[nxt].record(copy_stream)
        main.wait_event(ready[cur])
        over_sums.append(compute(bufs[cur]).sum())
        freed[cur].record(main)
    torch.cuda.synchronize(dev)
    overlapped = time.perf_counter() - t0
    match = bool(torch.allclose(torch.stack(serial_sums), torch.stack(over_sums), rtol=1e-4))
    return PinnedResult(
        measured=True,
        note=(
            f"measured on {torch.cuda.get_device_name(dev)}: {batches} batches of "
            f"{nb / 2**20:.0f} MiB; pageable copies are synchronous (staged through a driver "
            "buffer), pinned ones asynchronous with non_blocking=True"
        ),
        device=str(dev),
        batch_bytes=nb,
        batches=batches,
        pageable_copy_s=pageable_s,
        pinned_copy_s=pinned_s,
        compute_s=_percentile(c_times, 50),
        serial_s=serial,
        overlapped_s=overlapped,
        outputs_match=match,
    )


def pinned_memory(
    batch_bytes: int = 64 * 2**20,
    batches: int = 8,
    *,
    device: str = "cuda",
    timeout_s: float | None = None,
) -> PinnedResult:
    """Pageable vs pinned host-to-device copies and copy/compute overlap, measured in the
    service worker on a CUDA device; without one, a result that says it was not measured."""
    from memlab import runner

    result: PinnedResult = runner.call(
        pinned_job, batch_bytes, batches, device, timeout_s=timeout_s
    )
    return result
