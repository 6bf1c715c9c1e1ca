"""Pure data: the memory timeline of a tracked block and the result of a run.

One data model for everything memlab measures (cf. bloomberg/memray: one model, reporters that
only render it). This module imports neither torch nor plotly, so a result can be loaded, stored
and drawn in a process that never imported torch (the notebook kernel, for one).
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CATEGORIES",
    "PHASES",
    "PROCESS_PARTS",
    "STATUSES",
    "Timeline",
    "ProcessSeries",
    "RunResult",
    "Timing",
    "Latency",
    "AliveSite",
    "AliveStep",
    "AliveReport",
    "PeakBlock",
    "PeakReport",
    "format_bytes",
]

#: The one vocabulary of memory categories, used by the tracker, estimator, plots and store.
CATEGORIES: tuple[str, ...] = (
    "parameters",
    "gradients",
    "optimizer_state",
    "activations",
    "inputs",
    "temporaries",
    "other",
)

#: A tensor with this attribute (a module buffer) is counted by the tracker in the category it
#: names rather than as the model's state: the arena of a planned inference
#: (``memlab/knobs/inference.py``) holds the pass's intermediate tensors, which an eager
#: inference run counts as temporaries.
CATEGORY_ATTR = "_memlab_category"

#: Phases a sample can be in. ``other`` is time inside a block that no phase claims.
PHASES: tuple[str, ...] = ("data", "forward", "backward", "optimizer", "inference", "other")

#: Process-memory parts (Linux /proc/self/status names in brackets).
PROCESS_PARTS: tuple[str, ...] = ("rss", "rss_anon", "rss_file", "rss_shmem", "rss_hwm")

STATUSES: tuple[str, ...] = ("ok", "oom", "error", "cancelled")


def format_bytes(n: float | None) -> str:
    """Human-readable bytes with binary prefixes; ``None`` (not measured) reads as 'n/a'."""
    if n is None:
        return "n/a"
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{sign}{v:.0f} {unit}" if unit == "B" else f"{sign}{v:.1f} {unit}"
        v /= 1024
    raise AssertionError("unreachable")


def _as_int_array(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True, eq=False)
class Timeline:
    """Live tensor bytes by category after every allocation and free (event-based, not sampled).

    ``t`` is seconds since the block began; ``phase`` indexes :data:`PHASES`;
    ``by_category[c][i]`` is the bytes of category ``c`` live right after event ``i``.
    ``marks`` are phase and step boundaries: ``(t, label)``.
    """

    t: np.ndarray
    phase: np.ndarray
    by_category: Mapping[str, np.ndarray]
    marks: tuple[tuple[float, str], ...] = ()
    source: str = "cpu-allocator"

    def __post_init__(self) -> None:
        t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "phase", np.asarray(self.phase, dtype=np.int8).reshape(-1))
        cats = {c: _as_int_array(self.by_category.get(c, np.zeros(len(t)))) for c in CATEGORIES}
        unknown = set(self.by_category) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; allowed: {CATEGORIES}")
        for c, v in cats.items():
            if len(v) != len(t):
                raise ValueError(f"category {c!r} has {len(v)} points, t has {len(t)}")
        if len(self.phase) != len(t):
            raise ValueError(f"phase has {len(self.phase)} points, t has {len(t)}")
        object.__setattr__(self, "by_category", cats)
        object.__setattr__(self, "marks", tuple((float(a), str(b)) for a, b in self.marks))

    def __len__(self) -> int:
        return len(self.t)

    @property
    def total(self) -> np.ndarray:
        """Live tensor bytes (all categories) after each event."""
        if len(self.t) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.sum(np.stack([self.by_category[c] for c in CATEGORIES]), axis=0)

    def phase_names(self) -> list[str]:
        return [PHASES[int(p)] for p in self.phase]

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t.tolist(),
            "phase": self.phase.tolist(),
            "by_category": {c: v.tolist() for c, v in self.by_category.items()},
            "marks": [list(m) for m in self.marks],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Timeline:
        return cls(
            t=np.asarray(d["t"], dtype=np.float64),
            phase=np.asarray(d["phase"], dtype=np.int8),
            by_category={c: np.asarray(v, dtype=np.int64) for c, v in d["by_category"].items()},
            marks=tuple((float(a), str(b)) for a, b in d.get("marks", ())),
            source=str(d.get("source", "cpu-allocator")),
        )

    @classmethod
    def empty(cls) -> Timeline:
        return cls(t=np.zeros(0), phase=np.zeros(0), by_category={})

    def to_dataframe(self) -> Any:
        """One row per event: ``t``, ``phase``, one column per category and ``total``."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - pandas is a dependency
            raise ImportError("Timeline.to_dataframe needs pandas: pip install pandas") from e
        df = pd.DataFrame({"t": self.t, "phase": pd.Categorical(self.phase_names(), PHASES)})
        for c in CATEGORIES:
            df[c] = self.by_category[c]
        df["total"] = self.total
        return df


@dataclass(frozen=True, eq=False)
class ProcessSeries:
    """Process memory sampled over time. A part this platform cannot measure is ``None``."""

    t: np.ndarray
    parts: Mapping[str, np.ndarray | None]

    def __post_init__(self) -> None:
        t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "t", t)
        parts: dict[str, np.ndarray | None] = {}
        for p in PROCESS_PARTS:
            v = self.parts.get(p)
            parts[p] = None if v is None else _as_int_array(v)
            if parts[p] is not None and len(parts[p]) != len(t):  # type: ignore[arg-type]
                raise ValueError(f"process part {p!r} has the wrong length")
        object.__setattr__(self, "parts", parts)

    def __len__(self) -> int:
        return len(self.t)

    def peak(self, part: str) -> int | None:
        v = self.parts[part]
        return None if v is None or len(v) == 0 else int(v.max())

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t.tolist(),
            "parts": {p: None if v is None else v.tolist() for p, v in self.parts.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProcessSeries:
        return cls(t=np.asarray(d["t"]), parts=dict(d["parts"]))

    @classmethod
    def empty(cls) -> ProcessSeries:
        return cls(t=np.zeros(0), parts={p: np.zeros(0, dtype=np.int64) for p in PROCESS_PARTS})


def _int_dict(d: Mapping[str, Any] | None) -> dict[str, int]:
    return {str(k): int(v) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class Timing:
    """Whether a run's step times can be trusted, and the per-step figures that say so.

    Measured in the run worker around each measured step (``memlab/timing.py``): the wall time,
    the worker's CPU time (its children's included: DataLoader workers), and the share of the
    machine's CPU that *other* processes used meanwhile (a browser redrawing charts, the
    notebook kernel, a compile in another terminal). A step is *disturbed* when that share
    passes ``threshold``; the run is ``steady`` when few enough of its steps are. ``note`` says
    why in words, naming the busiest other processes when the run was not steady.

    ``cpu_share`` is the worker's CPU time over wall time x ``threads`` (torch's intra-op
    threads), median over steps: near 1 a step kept all its threads busy; low values mean it
    waited (for the disk, for a core another process held, or on serial code).
    """

    steady: bool
    cpu_share: float | None
    disturbed_steps: int
    note: str
    threads: int | None = None
    #: Median over steps of the share of the machine's CPU other processes used (0..1).
    others_share: float | None = None
    threshold: float | None = None
    step_wall_s: tuple[float, ...] = ()
    step_cpu_s: tuple[float, ...] = ()
    step_others_share: tuple[float | None, ...] = ()
    step_disturbed: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_wall_s", tuple(float(v) for v in self.step_wall_s))
        object.__setattr__(self, "step_cpu_s", tuple(float(v) for v in self.step_cpu_s))
        object.__setattr__(
            self,
            "step_others_share",
            tuple(None if v is None else float(v) for v in self.step_others_share),
        )
        object.__setattr__(self, "step_disturbed", tuple(bool(v) for v in self.step_disturbed))

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Timing:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@dataclass(frozen=True)
class Latency:
    """Per-request figures of an inference run (``mode="inference"``: one request is one forward
    of one batch). ``None`` where not measured, never guessed.

    ``first_s`` is the very first forward in the fresh worker, before any warm-up (with
    ``warmup=0``, the first tracked request, so timed under the tracker) (lazy
    allocations, cold caches, a lazy buffer cache filled); ``request_times_s`` are the timed
    pass's requests (untracked), from which the percentiles and rates come; requests/s is
    ``len / sum`` of them (one request after another, as the run serves them).
    ``allocs_by_request`` is the number of allocator calls (allocations, positive deltas) the
    memory source counted inside each request of the tracked pass (the batch's own loading
    excluded); ``None`` where the source cannot count them per request.
    ``compile_s`` is the time ``fuse="compile"`` spent compiling (not in any latency).
    """

    first_s: float | None = None
    request_times_s: tuple[float, ...] = ()
    samples_per_request: int | None = None
    allocs_by_request: tuple[int, ...] | None = None
    allocs_first_request: int | None = None
    compile_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_times_s", tuple(float(v) for v in self.request_times_s))
        if self.allocs_by_request is not None:
            object.__setattr__(
                self, "allocs_by_request", tuple(int(v) for v in self.allocs_by_request)
            )

    @property
    def p50_s(self) -> float | None:
        return _percentile(self.request_times_s, 50)

    @property
    def p95_s(self) -> float | None:
        return _percentile(self.request_times_s, 95)

    @property
    def p99_s(self) -> float | None:
        return _percentile(self.request_times_s, 99)

    @property
    def requests_per_s(self) -> float | None:
        total = sum(self.request_times_s)
        return len(self.request_times_s) / total if total > 0 else None

    @property
    def samples_per_s(self) -> float | None:
        rps = self.requests_per_s
        return (
            None if rps is None or not self.samples_per_request else rps * self.samples_per_request
        )

    @property
    def allocs_per_request(self) -> float | None:
        """Mean allocator calls per request in the tracked pass (None: not counted)."""
        a = self.allocs_by_request
        return None if not a else float(np.mean(a))

    def summary(self) -> dict[str, float | None]:
        """The JSON's ``latency_s`` object: first, p50, p95, p99 (seconds)."""
        return {"first": self.first_s, "p50": self.p50_s, "p95": self.p95_s, "p99": self.p99_s}

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_s": self.first_s,
            "request_times_s": list(self.request_times_s),
            "samples_per_request": self.samples_per_request,
            "allocs_by_request": None
            if self.allocs_by_request is None
            else list(self.allocs_by_request),
            "allocs_first_request": self.allocs_first_request,
            "compile_s": self.compile_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Latency:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("request_times_s", "allocs_by_request"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)


@dataclass(frozen=True)
class AliveSite:
    """Blocks still alive at a step boundary that were allocated at one place.

    ``phase`` is the phase of their allocation (``entry``: alive when the block began, before
    anything ran), ``module`` the innermost module running then (``""``: none), ``line`` the
    user's source ``file:line`` that called the op (``None``: not recorded; opt in with
    ``memlab.track(..., source_lines=True)``), ``category`` their category, ``bytes`` and
    ``count`` their total size and number."""

    phase: str
    module: str
    line: str | None
    category: str
    bytes: int
    count: int

    @property
    def where(self) -> str:
        """One readable label: ``module (phase) at file:line``."""
        if self.phase == "entry":
            return "alive at entry"
        mod = self.module or "(outside modules)"
        return f"{mod} ({self.phase})" + ("" if self.line is None else f" at {self.line}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AliveSite:
        return cls(
            phase=str(d["phase"]),
            module=str(d["module"]),
            line=None if d.get("line") is None else str(d["line"]),
            category=str(d["category"]),
            bytes=int(d["bytes"]),
            count=int(d["count"]),
        )


@dataclass(frozen=True)
class AliveStep:
    """What is still alive at one step boundary (``Tracker.step``): the tensor bytes live then,
    by category (summing to ``total_bytes``), and the allocation sites holding the most bytes
    (``sites``, largest first, at most the tracker's ``top_sites``)."""

    label: str
    t_s: float
    total_bytes: int
    by_category: Mapping[str, int]
    sites: tuple[AliveSite, ...] = ()

    def __post_init__(self) -> None:
        d = _int_dict(self.by_category)
        unknown = set(d) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"by_category: unknown categories {sorted(unknown)}")
        object.__setattr__(self, "by_category", {c: d.get(c, 0) for c in CATEGORIES})
        object.__setattr__(self, "sites", tuple(self.sites))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "t_s": self.t_s,
            "total_bytes": self.total_bytes,
            "by_category": dict(self.by_category),
            "sites": [s.to_dict() for s in self.sites],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AliveStep:
        return cls(
            label=str(d["label"]),
            t_s=float(d["t_s"]),
            total_bytes=int(d["total_bytes"]),
            by_category=d["by_category"],
            sites=tuple(AliveSite.from_dict(s) for s in d.get("sites", ())),
        )


def _slope(y: Sequence[float]) -> float | None:
    """Least-squares slope of ``y`` against its index; None with fewer than 2 points."""
    if len(y) < 2:
        return None
    x = np.arange(len(y), dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    return float(np.sum((x - x.mean()) * (yy - yy.mean())) / np.sum((x - x.mean()) ** 2))


@dataclass(frozen=True)
class AliveReport:
    """The tensor bytes still alive at each step boundary of a tracked block, and their growth.

    ``entry_bytes``/``entry_by_category`` are what was live when the block began; ``steps`` one
    :class:`AliveStep` per ``Tracker.step()`` call. The growth per step is the least-squares
    slope of the alive bytes over the step boundaries, after ``warmup`` steps (the first step
    allocates lazily: optimizer state, caches): with ``warmup=1`` the fit runs over every step's
    end, so the first step's rise from the entry is left out. A loop that frees what each step
    made grows by 0; a leak grows by the bytes it keeps per step.
    """

    entry_bytes: int
    entry_by_category: Mapping[str, int]
    steps: tuple[AliveStep, ...] = ()
    warmup: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        d = _int_dict(self.entry_by_category)
        object.__setattr__(self, "entry_by_category", {c: d.get(c, 0) for c in CATEGORIES})
        object.__setattr__(self, "steps", tuple(self.steps))

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def totals(self) -> np.ndarray:
        """Alive bytes at each step boundary."""
        return np.asarray([s.total_bytes for s in self.steps], dtype=np.int64)

    def by_category(self, category: str) -> np.ndarray:
        """Alive bytes of ``category`` at each step boundary."""
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
        return np.asarray([s.by_category[category] for s in self.steps], dtype=np.int64)

    @property
    def growth_bytes(self) -> np.ndarray:
        """Each step's change of the alive bytes (the first step's from the entry)."""
        return np.diff(np.concatenate([[self.entry_bytes], self.totals]))

    def _fit(self, series: Sequence[float]) -> float | None:
        return _slope(list(series)[self.warmup :])

    @property
    def growth_per_step_bytes(self) -> float | None:
        """Least-squares growth of the alive bytes per step after the warm-up (bytes/step);
        None with fewer than two points to fit."""
        return self._fit([self.entry_bytes, *self.totals.tolist()])

    @property
    def growth_by_category(self) -> dict[str, float | None]:
        """:attr:`growth_per_step_bytes` of each category."""
        return {
            c: self._fit([self.entry_by_category[c], *self.by_category(c).tolist()])
            for c in CATEGORIES
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_bytes": self.entry_bytes,
            "entry_by_category": dict(self.entry_by_category),
            "steps": [s.to_dict() for s in self.steps],
            "warmup": self.warmup,
            "growth_per_step_bytes": self.growth_per_step_bytes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AliveReport:
        return cls(
            entry_bytes=int(d["entry_bytes"]),
            entry_by_category=d["entry_by_category"],
            steps=tuple(AliveStep.from_dict(s) for s in d.get("steps", ())),
            warmup=int(d.get("warmup", 1)),
        )

    def to_dataframe(self) -> Any:
        """One row per step: ``label``, ``t_s``, one column per category, ``total`` and
        ``growth`` (from the previous step)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - pandas is a dependency
            raise ImportError("AliveReport.to_dataframe needs pandas: pip install pandas") from e
        df = pd.DataFrame(
            {"label": [s.label for s in self.steps], "t_s": [s.t_s for s in self.steps]}
        )
        for c in CATEGORIES:
            df[c] = self.by_category(c)
        df["total"] = self.totals
        df["growth"] = self.growth_bytes
        return df


@dataclass(frozen=True)
class PeakBlock:
    """Tensor memory alive at the peak: one block (``count`` 1) or the blocks of one site.

    ``phase`` is the phase of the allocation (``entry``: alive when the tracked block began),
    ``module`` the innermost module running then (``""``: none), ``op`` the ATen op that
    allocated it (``aten::addmm``; ``None``: not recorded, see ``memlab.track(ops=...)``),
    ``line`` the user's ``file:line`` that called the op (``None``: not recorded, opt in with
    ``source_lines=True``), ``t_s`` when it was allocated (seconds from the block's start; the
    earliest of a site's; ``None`` for blocks alive at entry)."""

    bytes: int
    category: str
    phase: str
    module: str = ""
    op: str | None = None
    line: str | None = None
    count: int = 1
    t_s: float | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {self.category!r}")
        if self.phase != "entry" and self.phase not in PHASES:
            raise ValueError(f"phase must be 'entry' or one of {PHASES}, got {self.phase!r}")

    @property
    def where(self) -> str:
        """One readable label: ``op in module (phase) at file:line``."""
        if self.phase == "entry":
            return "alive at entry"
        mod = self.module or "(outside modules)"
        op = "" if self.op is None else f"{self.op} in "
        return f"{op}{mod} ({self.phase})" + ("" if self.line is None else f" at {self.line}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PeakBlock:
        return cls(
            bytes=int(d["bytes"]),
            category=str(d["category"]),
            phase=str(d["phase"]),
            module=str(d.get("module", "")),
            op=None if d.get("op") is None else str(d["op"]),
            line=None if d.get("line") is None else str(d["line"]),
            count=int(d.get("count", 1)),
            t_s=None if d.get("t_s") is None else float(d["t_s"]),
        )


@dataclass(frozen=True)
class PeakReport:
    """What was alive at the peak of a tracked block (the first event where the tensor bytes
    reach ``RunResult.peak_bytes``): the largest blocks and the largest sites (blocks grouped
    by category, phase, module, op and line), largest first, at most the tracker's
    ``top_blocks`` of each. ``total_bytes`` is the peak; ``n_blocks`` how many blocks were
    alive then; the blocks not listed hold :attr:`rest_bytes`."""

    total_bytes: int
    t_s: float
    phase: str
    n_blocks: int
    blocks: tuple[PeakBlock, ...] = ()
    sites: tuple[PeakBlock, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "sites", tuple(self.sites))

    @property
    def rest_bytes(self) -> int:
        """The peak's bytes in blocks not listed in ``blocks``."""
        return self.total_bytes - sum(b.bytes for b in self.blocks)

    @property
    def sites_rest_bytes(self) -> int:
        """The peak's bytes in sites not listed in ``sites``."""
        return self.total_bytes - sum(b.bytes for b in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "t_s": self.t_s,
            "phase": self.phase,
            "n_blocks": self.n_blocks,
            "blocks": [b.to_dict() for b in self.blocks],
            "sites": [b.to_dict() for b in self.sites],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PeakReport:
        return cls(
            total_bytes=int(d["total_bytes"]),
            t_s=float(d["t_s"]),
            phase=str(d["phase"]),
            n_blocks=int(d["n_blocks"]),
            blocks=tuple(PeakBlock.from_dict(b) for b in d.get("blocks", ())),
            sites=tuple(PeakBlock.from_dict(b) for b in d.get("sites", ())),
        )

    def to_dataframe(self, *, sites: bool = False) -> Any:
        """One row per block (or per site): bytes, count, category, phase, module, op, line."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - pandas is a dependency
            raise ImportError("PeakReport.to_dataframe needs pandas: pip install pandas") from e
        rows = self.sites if sites else self.blocks
        return pd.DataFrame([b.to_dict() for b in rows])


@dataclass(frozen=True, eq=False)
class RunResult:
    """What a tracked block or a whole run measured. Pure data; renders itself.

    ``peak_bytes`` is the tensor bytes live at entry plus the highest rise inside the block;
    ``peak_by_category`` splits it, and always sums to it. Process-memory peaks are ``None``
    where this platform cannot measure that part (never guessed).
    """

    peak_bytes: int
    peak_by_category: Mapping[str, int]
    timeline: Timeline = field(default_factory=Timeline.empty)
    process: ProcessSeries = field(default_factory=ProcessSeries.empty)
    entry_by_category: Mapping[str, int] = field(default_factory=dict)
    end_by_category: Mapping[str, int] = field(default_factory=dict)
    peak_by_phase: Mapping[str, int] = field(default_factory=dict)
    activations_by_module: Mapping[str, int] = field(default_factory=dict)
    peak_time_s: float = 0.0
    peak_phase: str = "other"
    duration_s: float = 0.0
    device: str = "cpu"
    rss_peak_bytes: int | None = None
    rss_anon_peak_bytes: int | None = None
    rss_file_peak_bytes: int | None = None
    rss_hwm_bytes: int | None = None
    cuda: Mapping[str, int] | None = None
    #: Wall time of each timed step: run untracked after the tracked ones, so the tracker's
    #: cost is not in it (``memlab.runner``); what ``step_time_median_s`` reports.
    step_times_s: tuple[float, ...] = ()
    samples_per_step: int | None = None
    status: str = "ok"
    error: str | None = None
    experiment: Mapping[str, Any] | None = None
    #: Further figures a run measured, by name (accuracy, parameter bytes by dtype...).
    metrics: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: Wall time of each step of the tracked block (the memory pass; the tracker's cost is in
    #: it). As many as the steps that ran before an oom, a cancel or an error.
    tracked_step_times_s: tuple[float, ...] = ()
    #: Whether the step times can be trusted (a run's measured steps); None: not measured.
    timing: Timing | None = None
    #: Per-request latency and allocator calls of an inference run; None for training runs.
    latency: Latency | None = None
    #: What was still alive at each step boundary (``Tracker.step``); None: no step marked.
    alive: AliveReport | None = None
    #: What was alive at the peak, largest first (``PeakReport``); None: not recorded.
    peak_report: PeakReport | None = None

    def __post_init__(self) -> None:
        for name in ("peak_by_category", "entry_by_category", "end_by_category"):
            d = _int_dict(getattr(self, name))
            if d:
                unknown = set(d) - set(CATEGORIES)
                if unknown:
                    raise ValueError(f"{name}: unknown categories {sorted(unknown)}")
                d = {c: d.get(c, 0) for c in CATEGORIES}
            object.__setattr__(self, name, d)
        object.__setattr__(self, "peak_by_phase", _int_dict(self.peak_by_phase))
        object.__setattr__(self, "activations_by_module", _int_dict(self.activations_by_module))
        object.__setattr__(self, "step_times_s", tuple(float(s) for s in self.step_times_s))
        object.__setattr__(
            self, "tracked_step_times_s", tuple(float(s) for s in self.tracked_step_times_s)
        )
        object.__setattr__(self, "notes", tuple(str(s) for s in self.notes))
        object.__setattr__(self, "metrics", dict(self.metrics))
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.cuda is not None:
            object.__setattr__(self, "cuda", _int_dict(self.cuda))
        if isinstance(self.timing, Mapping):
            object.__setattr__(self, "timing", Timing.from_dict(self.timing))
        if isinstance(self.latency, Mapping):
            object.__setattr__(self, "latency", Latency.from_dict(self.latency))
        if isinstance(self.alive, Mapping):
            object.__setattr__(self, "alive", AliveReport.from_dict(self.alive))
        if isinstance(self.peak_report, Mapping):
            object.__setattr__(self, "peak_report", PeakReport.from_dict(self.peak_report))

    # -- derived figures -------------------------------------------------------------------
    @property
    def step_time_median_s(self) -> float | None:
        return float(np.median(self.step_times_s)) if self.step_times_s else None

    @property
    def step_time_p95_s(self) -> float | None:
        return float(np.percentile(self.step_times_s, 95)) if self.step_times_s else None

    @property
    def throughput_samples_per_s(self) -> float | None:
        med = self.step_time_median_s
        if med is None or not self.samples_per_step or med <= 0:
            return None
        return self.samples_per_step / med

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self, *, timeline: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("timeline", "process"):
                if timeline:
                    d[f.name] = v.to_dict()
                continue
            if f.name in ("timing", "latency", "alive", "peak_report"):
                d[f.name] = None if v is None else v.to_dict()
                continue
            d[f.name] = (
                dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
            )
        d["step_time_s"] = {"median": self.step_time_median_s, "p95": self.step_time_p95_s}
        d["throughput_samples_per_s"] = self.throughput_samples_per_s
        # Inference runs only; null for training runs (they have no requests).
        lat = self.latency
        d["latency_s"] = None if lat is None else lat.summary()
        d["allocs_per_request"] = None if lat is None else lat.allocs_per_request
        return d

    def to_json(self, *, timeline: bool = True, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(timeline=timeline), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in names}
        if "timeline" in d:
            kw["timeline"] = Timeline.from_dict(d["timeline"])
        if "process" in d:
            kw["process"] = ProcessSeries.from_dict(d["process"])
        if d.get("timing") is not None:
            kw["timing"] = Timing.from_dict(d["timing"])
        if d.get("latency") is not None:
            kw["latency"] = Latency.from_dict(d["latency"])
        if d.get("alive") is not None:
            kw["alive"] = AliveReport.from_dict(d["alive"])
        if d.get("peak_report") is not None:
            kw["peak_report"] = PeakReport.from_dict(d["peak_report"])
        for k in ("step_times_s", "tracked_step_times_s", "notes"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> RunResult:
        return cls.from_dict(json.loads(s))

    # -- rendering -------------------------------------------------------------------------
    def _summary_rows(self) -> list[tuple[str, str]]:
        rows = [("status", self.status if not self.error else f"{self.status}: {self.error}")]
        rows.append(("peak (tensors)", f"{format_bytes(self.peak_bytes)} in {self.peak_phase}"))
        for c in CATEGORIES:
            v = self.peak_by_category.get(c, 0)
            if v:
                share = 100.0 * v / self.peak_bytes if self.peak_bytes else 0.0
                rows.append((f"  {c}", f"{format_bytes(v)} ({share:.0f}%)"))
        rows.append(("RSS peak", format_bytes(self.rss_peak_bytes)))
        rows.append(("  anonymous", format_bytes(self.rss_anon_peak_bytes)))
        rows.append(("  file-backed", format_bytes(self.rss_file_peak_bytes)))
        if self.cuda:
            for k, v in self.cuda.items():
                rows.append((f"cuda {k}", format_bytes(v)))
        med, p95 = self.step_time_median_s, self.step_time_p95_s
        if med is not None and p95 is not None:
            rows.append(("step time", f"{med * 1e3:.1f} ms median, {p95 * 1e3:.1f} ms p95"))
        thr = self.throughput_samples_per_s
        if thr is not None:
            rows.append(("throughput", f"{thr:.1f} samples/s"))
        lat = self.latency
        if lat is not None:
            rows.extend(_latency_rows(lat))
        if self.timing is not None:
            rows.append(
                ("timing", ("steady: " if self.timing.steady else "DISTURBED: ") + self.timing.note)
            )
        return rows

    def __repr__(self) -> str:
        parts = ", ".join(f"{c}={format_bytes(v)}" for c, v in self.peak_by_category.items() if v)
        return (
            f"RunResult(status={self.status!r}, peak={format_bytes(self.peak_bytes)} "
            f"[{parts}], device={self.device!r}, events={len(self.timeline)})"
        )

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(k)}</td>"
            f"<td style='text-align:right'>{html.escape(v)}</td></tr>"
            for k, v in self._summary_rows()
        )
        return (
            f"<table><caption>memlab RunResult ({html.escape(self.device)})</caption>{body}</table>"
        )


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.2f} ms"


def _latency_rows(lat: Latency) -> list[tuple[str, str]]:
    rows = [
        ("first request", _ms(lat.first_s)),
        ("latency", f"{_ms(lat.p50_s)} p50, {_ms(lat.p95_s)} p95, {_ms(lat.p99_s)} p99"),
    ]
    rps, sps = lat.requests_per_s, lat.samples_per_s
    if rps is not None:
        rows.append(
            ("requests/s", f"{rps:.1f}" + ("" if sps is None else f" ({sps:.1f} samples/s)"))
        )
    apr = lat.allocs_per_request
    rows.append(("allocs/request", "n/a (not counted here)" if apr is None else f"{apr:.1f}"))
    if lat.compile_s is not None:
        rows.append(("compile time", f"{lat.compile_s:.2f} s (not in the latency)"))
    return rows


def sum_categories(d: Mapping[str, int], cats: Sequence[str] = CATEGORIES) -> int:
    return int(sum(int(d.get(c, 0)) for c in cats))
