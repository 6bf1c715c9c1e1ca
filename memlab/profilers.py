"""Profiling tools side by side (lab 10): memory-profiler, ``torch.profiler`` and memlab on
the same training step, against the allocator's truth.

``compare_profilers(exp)`` runs in the service worker (``runner.call``: the caller never
imports torch). It builds ``exp``'s workload with memlab's own builder, warms it up (lazy
optimizer state), and then runs ``steps`` steps of one batch under each tool in turn, in one
process and one job, so every figure of the comparison comes from the same model, the same
batch and the same machine state:

- **none**: the anchor. Steps with no tool at all, before and after the tools (their median
  is the step time each tool's cost is divided by);
- **memory_profiler** (``memory_usage``): the process's RSS sampled from a second process
  every ``interval_s`` while the steps run. It sees the process, not tensors: Python, torch's
  libraries and glibc's free lists are in it, and memory glibc keeps after a free never leaves;
- **mprun** (memory_profiler's ``LineProfiler``, what ``%mprun`` runs): RSS read before and
  after every line of ``Workload.step``, per line: usage and increment;
- **torch.profiler** (``profile_memory=True, record_shapes=True, with_stack=True``, what its
  memory timeline requires): the memory timeline (``export_memory_timeline``: bytes by
  category over time), the ops that allocated most (``key_averages``), and a TensorBoard trace
  written by ``tensorboard_trace_handler``;
- **memlab** (``memlab.track``): live tensor bytes by category and phase.

**The truth** is the peak of tensor bytes live through PyTorch's c10 CPU allocator during a
step: the bytes live when the step starts (the model's parameters and buffers, the optimizer's
state and the batch, summed over their distinct storages, read from the tensors themselves)
plus the highest rise of the allocator's running count during the step. The rise is read from
the c10 allocator's own ``[memory]`` events (every allocation and free that went through it,
op-internal buffers included, with its size), recorded by ``torch.profiler`` in the tool's
pass. That count is the allocator's, not any tool's interpretation of it: torch.profiler's
memory timeline is built from tensors and their categories and may miss or misplace bytes;
memlab's native recorder counts the same allocator calls by another mechanism (a wrapper
around the allocator). Where no C++ compiler is, memlab itself reads these very events
(``ProfilerSource``), so memlab equals the truth by construction there; the result's notes
say which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import linecache
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memlab.config import MIB, Experiment

__all__ = ["TOOLS", "ToolReading", "ProfilerComparison", "compare_profilers"]

#: The tools compared, in the order they run; ``none`` is the anchor (no tool).
TOOLS = ("none", "memory_profiler", "mprun", "torch.profiler", "memlab")

_WHAT = {
    "none": "nothing: the step alone (the anchor for every tool's cost)",
    "memory_profiler": "the process's RSS, sampled from another process (Python, torch's "
    "libraries and glibc's cached free memory included)",
    "mprun": "RSS before and after each line of the step function (increment per line)",
    "torch.profiler": "tensors through the allocator, by op and by category (memory timeline)",
    "memlab": "tensors through the allocator, by category, phase and module",
}


def _need_memory_profiler() -> Any:
    try:
        import memory_profiler
    except ImportError as e:  # pragma: no cover - the profilers extra is installed in CI
        raise ImportError(
            "memory-profiler is needed to compare profilers: pip install 'memlab[profilers]' "
            "(or pip install memory-profiler)"
        ) from e
    return memory_profiler


@dataclass(frozen=True)
class ToolReading:
    """What one tool reported for the same steps.

    ``peak_bytes`` is the highest memory it reports (RSS for the RSS tools, tensor bytes for
    the others; ``None`` for the anchor); ``rise_bytes`` the highest it read above its reading
    at the first step's start. ``t_s``/``memory_bytes`` its timeline (seconds since the first
    step began under this tool). ``attribution``: what it attributes the memory to (a line, an
    op, a category) and the bytes, largest first. ``step_times_s``: each step's wall time under
    the tool.
    """

    tool: str
    sees: str
    step_times_s: tuple[float, ...]
    peak_bytes: int | None = None
    rise_bytes: int | None = None
    t_s: tuple[float, ...] = ()
    memory_bytes: tuple[int, ...] = ()
    attribution: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def step_s(self) -> float | None:
        """Median step wall time under the tool."""
        return statistics.median(self.step_times_s) if self.step_times_s else None


@dataclass(frozen=True)
class ProfilerComparison:
    """Each tool's reading of the same training step, the truth, and what each tool cost.

    Torch-free: built in the service worker, drawn and explained in the kernel. Error is the
    tool's peak minus ``truth_bytes``; cost is its median step time over the anchor's (steps
    with no tool, in the same job).
    """

    workload: str
    batch_size: int
    steps: int
    source: str
    truth_bytes: int
    truth_entry_bytes: int
    truth_rise_bytes: int
    truth_t_s: tuple[float, ...]
    truth_memory_bytes: tuple[int, ...]
    tools: tuple[ToolReading, ...]
    #: memory_profiler's line profile of ``Workload.step``: (line, MiB after, increment MiB,
    #: occurrences, code).
    line_profile: tuple[tuple[int, float, float, int, str], ...] = ()
    #: ``show_results``' text, captured (not printed).
    line_profile_text: str = ""
    tensorboard_trace: str | None = None
    tensorboard_trace_bytes: int = 0
    tensorboard_events: int = 0
    #: RSS after the steps vs before them, and the truth's bytes live after the last step.
    rss_start_bytes: int | None = None
    rss_end_bytes: int | None = None
    truth_end_bytes: int | None = None
    timing_steady: bool | None = None
    timing_note: str = ""
    notes: tuple[str, ...] = ()

    # -- lookups -------------------------------------------------------------------------
    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(r.tool for r in self.tools)

    def reading(self, tool: str) -> ToolReading:
        for r in self.tools:
            if r.tool == tool:
                return r
        raise ValueError(f"unknown tool {tool!r}; this comparison has {list(self.labels)}")

    @property
    def anchor_step_s(self) -> float | None:
        """Median step wall time with no tool (the anchor)."""
        return self.reading("none").step_s

    def overhead(self, tool: str) -> float | None:
        """The tool's median step time over the anchor's (1.0: free)."""
        s, a = self.reading(tool).step_s, self.anchor_step_s
        return None if s is None or not a else s / a

    def error_bytes(self, tool: str) -> int | None:
        """The tool's reported peak minus the truth (negative: it under-reports)."""
        p = self.reading(tool).peak_bytes
        return None if p is None else p - self.truth_bytes

    def error_pct(self, tool: str) -> float | None:
        e = self.error_bytes(tool)
        return None if e is None or not self.truth_bytes else 100.0 * e / self.truth_bytes

    def rise_error_bytes(self, tool: str) -> int | None:
        """The tool's rise during the steps minus the truth's rise (the allocator's)."""
        r = self.reading(tool).rise_bytes
        return None if r is None else r - self.truth_rise_bytes

    def table(self) -> list[dict[str, Any]]:
        """One row per tool: peak, error vs the truth, rise vs the truth's rise, step time and
        overhead; the truth as the first row."""
        rows: list[dict[str, Any]] = [
            {
                "tool": "truth (c10 allocator)",
                "peak_mib": self.truth_bytes / MIB,
                "error_mib": 0.0,
                "error_pct": 0.0,
                "rise_mib": self.truth_rise_bytes / MIB,
                "step_ms": None,
                "overhead": None,
                "sees": "every allocation and free through PyTorch's CPU allocator",
            }
        ]
        for r in self.tools:
            e, rise = self.error_bytes(r.tool), r.rise_bytes
            pct, ov = self.error_pct(r.tool), self.overhead(r.tool)
            rows.append(
                {
                    "tool": r.tool,
                    "peak_mib": None if r.peak_bytes is None else r.peak_bytes / MIB,
                    "error_mib": None if e is None else e / MIB,
                    "error_pct": pct,
                    "rise_mib": None if rise is None else rise / MIB,
                    "step_ms": None if r.step_s is None else r.step_s * 1e3,
                    "overhead": ov,
                    "sees": r.sees,
                }
            )
        return rows

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples become lists."""
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProfilerComparison:
        def tup(v: Any) -> Any:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v

        data = {k: tup(v) for k, v in d.items() if k != "tools"}
        data["tools"] = tuple(
            ToolReading(**{k: tup(v) for k, v in t.items()}) for t in d.get("tools", ())
        )
        return cls(**data)


# -- the worker side (torch imported inside) -----------------------------------------------


def _check(exp: Experiment, steps: int, interval_s: float) -> None:
    if not isinstance(exp, Experiment):
        raise ValueError(f"exp must be a memlab.Experiment or None, got {type(exp).__name__}")
    if exp.mode != "train":
        raise ValueError(
            f"compare_profilers profiles a training step: exp.mode must be 'train', "
            f"got {exp.mode!r}"
        )
    if exp.device not in ("auto", "cpu"):
        raise ValueError(
            f"compare_profilers reads the CPU allocator: exp.device must be 'auto' or 'cpu' "
            f"(the step runs on the CPU either way), got {exp.device!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 50:
        raise ValueError(f"steps must be an int from 1 to 50, got {steps!r}")
    if not isinstance(interval_s, (int, float)) or not 0.0005 <= interval_s <= 1.0:
        raise ValueError(f"interval_s must be seconds from 0.0005 to 1, got {interval_s!r}")


def compare_profilers(
    exp: Experiment | None = None,
    *,
    steps: int = 5,
    interval_s: float = 0.002,
    trace_dir: str | None = None,
    timeout_s: float | None = 600.0,
) -> ProfilerComparison:
    """Profile ``exp``'s training step (default: the ``mlp`` workload, batch 32) with each tool
    of :data:`TOOLS`, ``steps`` steps each, in the service worker; see the module docstring.

    ``interval_s`` is memory_profiler's sampling period; ``trace_dir`` where the TensorBoard
    trace goes (a new temporary folder by default: its path is in the result).
    """
    from memlab import runner

    exp = Experiment() if exp is None else exp
    _check(exp, steps, interval_s)
    return runner.call(  # type: ignore[no-any-return]
        _compare_job, exp, steps, float(interval_s), trace_dir, timeout_s=timeout_s
    )


def _storage_bytes(tensors: Sequence[Any]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _entry_tensors(w: Any, x: Any, y: Any) -> list[Any]:
    import torch

    out: list[Any] = [*w.model.parameters(), *w.model.buffers()]
    out += [p.grad for p in w.model.parameters() if p.grad is not None]
    if w.optimizer is not None:
        for state in w.optimizer.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return [*out, x, y]


def _timed(fn: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _memory_profiler_pass(
    step: Any, n: int, interval_s: float
) -> tuple[ToolReading, int | None, int | None]:
    mp = _need_memory_profiler()
    starts: list[float] = []
    times: list[float] = []

    def run() -> None:
        for _ in range(n):
            starts.append(time.time())
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        time.sleep(3 * interval_s)  # a last sample after the last step

    samples = mp.memory_usage((run, (), {}), interval=interval_s, timestamps=True)
    t0 = starts[0]
    mem = [int(m * MIB) for m, _ in samples]  # memory_profiler reports MiB (2**20 bytes)
    ts = [t - t0 for _, t in samples]
    before = [m for m, t in zip(mem, ts, strict=True) if t <= 0]
    during = [m for m, t in zip(mem, ts, strict=True) if t >= 0]
    base = before[-1] if before else mem[0]
    reading = ToolReading(
        tool="memory_profiler",
        sees=_WHAT["memory_profiler"],
        step_times_s=tuple(times),
        peak_bytes=max(mem),
        rise_bytes=max(during or mem) - base,
        t_s=tuple(ts),
        memory_bytes=tuple(mem),
        notes=(
            f"{len(samples)} RSS samples every {interval_s * 1e3:g} ms from a sampling process",
        ),
    )
    return reading, base, mem[-1]


def _mprun_pass(
    w: Any, x: Any, y: Any, n: int
) -> tuple[ToolReading, tuple[tuple[int, float, float, int, str], ...], str]:
    mp = _need_memory_profiler()
    prof = mp.LineProfiler(backend="psutil")
    wrapped = prof(type(w).step)
    times = _timed(lambda: wrapped(w, x, y), n)
    buf = io.StringIO()
    mp.show_results(prof, stream=buf)
    rows: list[tuple[int, float, float, int, str]] = []
    for filename, lines in prof.code_map.items():
        for lineno, m in lines:
            if m:
                code = linecache.getline(filename, lineno).strip()
                rows.append((int(lineno), float(m[1]), float(m[0]), int(m[2]), code))
    # The ``def`` line's first increment is the whole RSS (memory_profiler starts it from 0):
    # an artefact, kept in the rows but not in the attribution or the rise.
    body = [r for r in rows if not r[4].startswith("def ")]
    attribution = tuple(
        sorted(
            ((f"line {r[0]}: {r[4]}", int(r[2] * MIB)) for r in body if r[2] > 0),
            key=lambda kv: -kv[1],
        )
    )
    peak = int(max(r[1] for r in rows) * MIB) if rows else None
    rise = int(sum(r[2] for r in body if r[2] > 0) * MIB) if body else None
    reading = ToolReading(
        tool="mprun",
        sees=_WHAT["mprun"],
        step_times_s=tuple(times),
        peak_bytes=peak,
        rise_bytes=rise,
        attribution=attribution,
        notes=(
            "a line's increment is RSS after it minus before it, summed over the steps: it "
            "shows what glibc asked the kernel for or gave back (large blocks are mapped and "
            "unmapped, small ones are kept and reused), not what the line allocated; the def "
            "line's first increment is the whole process (memory_profiler starts it from 0)",
        ),
    )
    return reading, tuple(rows), buf.getvalue()


def _walk(events: Any) -> Any:
    for e in events:
        yield e
        yield from _walk(e.children)


def _torch_profiler_pass(
    step: Any, n: int, trace_dir: str, entry_bytes: int
) -> tuple[ToolReading, dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    times: list[float] = []
    with (
        warnings.catch_warnings(),
        profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(trace_dir),
        ) as prof,
    ):
        warnings.simplefilter("ignore")
        for _ in range(n):
            t0 = time.perf_counter()
            with record_function("memlab_step"):
                step()
            times.append(time.perf_counter() - t0)

    tree = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))  # type: ignore[union-attr]
    step_ranges = sorted((e.start_time_ns, e.end_time_ns) for e in tree if e.name == "memlab_step")
    t0_ns = step_ranges[0][0] if step_ranges else 0
    alloc = torch._C._profiler._EventType.Allocation
    events = sorted(
        (e for e in tree if e.tag == alloc and e.typed[1].device.type == "cpu"),
        key=lambda e: e.start_time_ns,
    )
    # The truth: the allocator's running count, from each step's start.
    running = 0
    rise = 0
    truth_t: list[float] = [0.0]
    truth_m: list[int] = [entry_bytes]
    k = 0
    for s, end in step_ranges:
        while k < len(events) and events[k].start_time_ns < s:
            running += events[k].typed[1].alloc_size
            k += 1
        at_start = running
        while k < len(events) and events[k].start_time_ns <= end:
            running += events[k].typed[1].alloc_size
            rise = max(rise, running - at_start)
            truth_t.append((events[k].start_time_ns - t0_ns) / 1e9)
            truth_m.append(entry_bytes + running)
            k += 1
    truth_end = entry_bytes + running

    # What torch.profiler itself shows: its memory timeline (by category) and its ops.
    from torch.profiler import _memory_profiler as tmp

    # sizes[i] per category: index 0 unused, a category c at _CATEGORY_TO_INDEX[c] + 1.
    names = ["none"] * (len(tmp._CATEGORY_TO_INDEX) + 1)
    for c, i in tmp._CATEGORY_TO_INDEX.items():
        names[i + 1] = "unknown" if c is None else c.name.lower()
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as d:
        warnings.simplefilter("ignore")
        path = str(Path(d) / "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        times_us, sizes = json.loads(Path(path).read_text())
    totals = [sum(s) for s in sizes]
    peak_i = max(range(len(totals)), key=totals.__getitem__) if totals else 0
    by_cat = {names[i]: int(b) for i, b in enumerate(sizes[peak_i]) if b} if sizes else {}
    ops = sorted(
        (
            (ev.key, int(ev.self_cpu_memory_usage))
            for ev in prof.key_averages()
            if ev.self_cpu_memory_usage > 0
        ),
        key=lambda kv: -kv[1],
    )[:8]
    base = totals[0] if totals else 0  # the tensors it saw exist before the steps
    reading = ToolReading(
        tool="torch.profiler",
        sees=_WHAT["torch.profiler"],
        step_times_s=tuple(times),
        peak_bytes=int(max(totals)) if totals else None,
        rise_bytes=int(max(totals) - base) if totals else None,
        t_s=tuple((t * 1000 - t0_ns) / 1e9 for t in times_us),
        memory_bytes=tuple(int(v) for v in totals),
        attribution=tuple(sorted(by_cat.items(), key=lambda kv: -kv[1]))
        + tuple((f"op {k}", v) for k, v in ops),
        notes=(
            "peak from its memory timeline (export_memory_timeline): tensors it could "
            "categorise; attribution: the categories at that peak, then the ops that "
            "allocated most (key_averages' self CPU memory, summed over the steps)",
        ),
    )
    trace = sorted(Path(trace_dir).glob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    tb: dict[str, Any] = {
        "truth_rise": rise,
        "truth_t": tuple(truth_t),
        "truth_m": tuple(truth_m),
        "truth_end": truth_end,
        "trace": None,
        "trace_bytes": 0,
        "trace_events": 0,
    }
    if trace:
        p = trace[-1]
        tb["trace"] = str(p)
        tb["trace_bytes"] = p.stat().st_size
        with contextlib.suppress(ValueError, OSError):
            tb["trace_events"] = len(json.loads(p.read_text()).get("traceEvents", []))
    return reading, tb


def _memlab_pass(w: Any, x: Any, y: Any, n: int) -> tuple[ToolReading, str]:
    from memlab.tracking.tracker import track

    times: list[float] = []
    with track(w.model, optimizer=w.optimizer, inputs=(x, y), sample_interval_s=None) as rec:
        for _ in range(n):
            t0 = time.perf_counter()
            w.step(x, y)
            times.append(time.perf_counter() - t0)
            rec.step()
    r = rec.result
    assert r is not None
    tl = r.timeline
    total = [int(v) for v in tl.total] if len(tl) else []
    entry = sum(r.entry_by_category.values())
    reading = ToolReading(
        tool="memlab",
        sees=_WHAT["memlab"],
        step_times_s=tuple(times),
        peak_bytes=int(r.peak_bytes),
        rise_bytes=int(r.peak_bytes - entry),
        t_s=tuple(float(t) for t in tl.t),
        memory_bytes=tuple(total),
        attribution=tuple(
            sorted(((k, int(v)) for k, v in r.peak_by_category.items() if v), key=lambda kv: -kv[1])
        ),
        notes=tuple(r.notes),
    )
    return reading, tl.source


def _compare_job(
    exp: Experiment, steps: int, interval_s: float, trace_dir: str | None
) -> ProfilerComparison:
    import torch

    from memlab.knobs import build_experiment
    from memlab.timing import StepClock, assess
    from memlab.tracking.sources import NativeSource, default_source

    w = build_experiment(exp, "cpu")
    x, y = next(iter(w.make_batches(1)))
    for _ in range(max(1, exp.warmup)):
        w.step(x, y)  # lazy optimizer state: allocated once, before anything is measured

    def step() -> None:
        w.step(x, y)

    entry = _storage_bytes(_entry_tensors(w, x, y))
    clock = StepClock()
    readings_anchor: list[Any] = []

    def anchor() -> None:
        for _ in range(steps):
            clock.begin()
            step()
            readings_anchor.append(clock.end())

    anchor()
    mp_reading, rss_start, rss_end = _memory_profiler_pass(step, steps, interval_s)
    mprun_reading, line_rows, line_text = _mprun_pass(w, x, y, steps)
    out_dir = trace_dir or tempfile.mkdtemp(prefix="memlab-tb-")
    tp_reading, tp = _torch_profiler_pass(step, steps, out_dir, entry)
    ml_reading, _ = _memlab_pass(w, x, y, steps)
    anchor()  # before and after the tools: drift over the job is in the anchor's median

    timing = assess(
        [r.wall_s for r in readings_anchor],
        [r.cpu_s for r in readings_anchor],
        [r.busy_s for r in readings_anchor],
        cpus=clock.cpus,
        threads=torch.get_num_threads(),
        what="anchor steps",
    )
    none = ToolReading(
        tool="none", sees=_WHAT["none"], step_times_s=tuple(r.wall_s for r in readings_anchor)
    )
    source = "native" if isinstance(default_source(), NativeSource) else "profiler"
    notes = [
        "truth: tensor bytes live at the step's start (distinct storages of parameters, "
        "buffers, optimizer state and the batch) plus the highest rise of the c10 CPU "
        "allocator's running count during a step, from its [memory] events recorded in "
        "torch.profiler's pass",
        "each tool ran its own steps of the same batch, one after the other in one process; "
        "a timeline's time is seconds since the first step under that tool began",
        "RSS tools read the whole process (Python, torch's libraries, glibc's cached free "
        "memory), so their peak is far above the tensors', and after the warm-up step glibc "
        "reuses the memory it kept: RSS barely rises during a step although the allocator "
        "hands out and takes back the step's activations each time",
    ]
    if source == "native":
        notes.append(
            "memlab counted through its native recorder (a wrapper around the allocator): a "
            "mechanism independent of the profiler events the truth is read from"
        )
    else:
        notes.append(
            "no native recorder here (no C++ compiler): memlab read the same torch.profiler "
            "allocator events the truth is read from, so it equals the truth by construction"
        )
    return ProfilerComparison(
        workload=str(exp.workload),
        batch_size=exp.batch_size,
        steps=steps,
        source=source,
        truth_bytes=entry + int(tp["truth_rise"]),
        truth_entry_bytes=entry,
        truth_rise_bytes=int(tp["truth_rise"]),
        truth_t_s=tp["truth_t"],
        truth_memory_bytes=tuple(int(v) for v in tp["truth_m"]),
        tools=(none, mp_reading, mprun_reading, tp_reading, ml_reading),
        line_profile=line_rows,
        line_profile_text=line_text,
        tensorboard_trace=tp["trace"],
        tensorboard_trace_bytes=int(tp["trace_bytes"]),
        tensorboard_events=int(tp["trace_events"]),
        rss_start_bytes=rss_start,
        rss_end_bytes=rss_end,
        truth_end_bytes=int(tp["truth_end"]),
        timing_steady=timing.steady,
        timing_note=timing.note,
        notes=tuple(notes),
    )
