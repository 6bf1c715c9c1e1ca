"""Two runs side by side: what changed in memory and speed, and where.

    c = memlab.compare("3fa2", "9b01")      # run ids (or unique prefixes), or RunResults
    c.table()                               # one row per figure: a, b, delta, ratio
    c.figure()                              # the two timelines overlaid (memlab.plots_compare)

Every figure is one of the two results' own (measured) figures; a delta is ``b - a`` and a
ratio ``b / a``. A figure one run lacks (an oom run's step time, a category's peak of a run
saved without its timeline) is ``None``, and so are its delta and ratio: never guessed.
This module imports neither torch nor plotly.

(``memlab.comparing``, not ``memlab.compare``: a submodule named like the public function would
replace it on the package once imported; see ``memlab.scheduling``.)
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np

from memlab.timeline import CATEGORIES, PHASES, RunResult, format_bytes

__all__ = ["SECTIONS", "Comparison", "Delta", "compare"]

#: The kinds of figure a comparison holds, in the order of its table.
SECTIONS: tuple[str, ...] = (
    "total",
    "at peak",
    "category peak",
    "phase peak",
    "module activations",
    "speed",
)


@dataclass(frozen=True)
class Delta:
    """One figure of both runs: ``a``, ``b``, in ``unit`` (``bytes``, ``s``, ``samples/s``).

    ``section`` (one of :data:`SECTIONS`): ``total`` the peak tensor and process memory;
    ``at peak`` each category's bytes at the run's peak (they sum to the peak); ``category
    peak`` each category's own highest value over the timeline (these need not coincide in
    time); ``phase peak`` the highest total inside each phase; ``module activations`` what each
    module's forward saved for backward; ``speed`` step time and throughput."""

    section: str
    name: str
    a: float | None
    b: float | None
    unit: str

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def ratio(self) -> float | None:
        return None if self.a is None or self.b is None or self.a == 0 else self.b / self.a

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "a": self.a,
            "b": self.b,
            "unit": self.unit,
            "delta": self.delta,
            "ratio": self.ratio,
        }

    def text(self, v: float | None, signed: bool = False) -> str:
        if v is None:
            return "n/a"
        if self.unit == "bytes":
            return ("+" if signed and v > 0 else "") + format_bytes(v)
        if self.unit == "s":
            return f"{v * 1e3:+.2f} ms" if signed else f"{v * 1e3:.2f} ms"
        return f"{v:+.1f}" if signed else f"{v:.1f}"


@dataclass(frozen=True, eq=False)
class Comparison:
    """Run ``b`` against run ``a``: their figures (:class:`Delta`) and the two results (with
    their timelines, for :meth:`figure`). ``a_id``/``b_id`` are their run ids where they came
    from the store."""

    a: RunResult
    b: RunResult
    deltas: tuple[Delta, ...]
    a_id: str | None = None
    b_id: str | None = None

    @property
    def labels(self) -> tuple[str, str]:
        """How the two runs are named in tables and figures: their ids, else ``a`` and ``b``."""
        return (self.a_id or "a", self.b_id or "b")

    def get(self, section: str, name: str) -> Delta:
        """The figure ``name`` of ``section`` (``c.get("at peak", "activations")``)."""
        for d in self.deltas:
            if d.section == section and d.name == name:
                return d
        names = sorted({d.name for d in self.deltas if d.section == section})
        raise KeyError(f"no figure {name!r} in section {section!r}; there: {names}")

    def section(self, section: str) -> dict[str, Delta]:
        if section not in SECTIONS:
            raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
        return {d.name: d for d in self.deltas if d.section == section}

    def table(self) -> Any:
        """A pandas DataFrame, one row per figure: ``section, name, unit, a, b, delta,
        ratio``."""
        import pandas as pd

        cols = ["section", "name", "unit", "a", "b", "delta", "ratio"]
        return pd.DataFrame([d.to_dict() for d in self.deltas], columns=cols)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the ids, both runs' status and experiment, and every figure."""
        return {
            "a": {"id": self.a_id, "status": self.a.status, "experiment": self.a.experiment},
            "b": {"id": self.b_id, "status": self.b.status, "experiment": self.b.experiment},
            "changed": changed_fields(self.a, self.b),
            "deltas": [d.to_dict() for d in self.deltas],
        }

    def figure(self, *, x: str = "auto", max_points: int = 4000) -> Any:
        """The two timelines overlaid (``memlab.plots_compare.compare_figure``)."""
        from memlab.plots_compare import compare_figure

        return compare_figure(self, x=x, max_points=max_points)

    def __repr__(self) -> str:
        p = self.get("total", "peak tensors")
        a, b = self.labels
        return (
            f"Comparison({a} -> {b}: peak {p.text(p.a)} -> {p.text(p.b)} "
            f"({p.text(p.delta, signed=True)}), {len(self.deltas)} figures)"
        )

    def _repr_html_(self) -> str:
        a, b = self.labels
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ("", "figure", a, b, "delta", "ratio"))
        rows = []
        for d in self.deltas:
            ratio = "n/a" if d.ratio is None else f"x{d.ratio:.3g}"
            cells = [
                d.section,
                d.name,
                d.text(d.a),
                d.text(d.b),
                d.text(d.delta, signed=True),
                ratio,
            ]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        changed = changed_fields(self.a, self.b)
        cap = ", ".join(f"{k}: {va} -> {vb}" for k, (va, vb) in changed.items()) or "same settings"
        return (
            f"<table><caption>memlab comparison {html.escape(a)} -> {html.escape(b)} "
            f"({html.escape(cap)})</caption><tr>{head}</tr>{''.join(rows)}</table>"
        )


def changed_fields(a: RunResult, b: RunResult) -> dict[str, tuple[Any, Any]]:
    """The experiment fields whose values differ between the two runs: ``{name: (a, b)}``."""
    ea, eb = dict(a.experiment or {}), dict(b.experiment or {})
    return {k: (ea.get(k), eb.get(k)) for k in sorted(set(ea) | set(eb)) if ea.get(k) != eb.get(k)}


def _category_peak(r: RunResult, c: str) -> int | None:
    """A category's highest value over the timeline; None without a timeline."""
    v = r.timeline.by_category.get(c)
    return None if v is None or len(v) == 0 else int(np.max(v))


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


def _deltas(a: RunResult, b: RunResult) -> tuple[Delta, ...]:
    out: list[Delta] = []

    def add(section: str, name: str, va: Any, vb: Any, unit: str = "bytes") -> None:
        out.append(Delta(section, name, _opt(va), _opt(vb), unit))

    # A failed run (error, cancelled before measuring) has no peak: 0 there means "not
    # measured", not "nothing allocated".
    ma, mb = a.status in ("ok", "oom"), b.status in ("ok", "oom")

    def m(ok: bool, v: Any) -> Any:
        return v if ok else None

    add("total", "peak tensors", m(ma, a.peak_bytes), m(mb, b.peak_bytes))
    add("total", "RSS peak", a.rss_peak_bytes, b.rss_peak_bytes)
    add("total", "RSS anonymous peak", a.rss_anon_peak_bytes, b.rss_anon_peak_bytes)
    add("total", "RSS file-backed peak", a.rss_file_peak_bytes, b.rss_file_peak_bytes)
    for c in CATEGORIES:
        add(
            "at peak",
            c,
            m(ma, a.peak_by_category.get(c, 0)),
            m(mb, b.peak_by_category.get(c, 0)),
        )
    for c in CATEGORIES:
        add("category peak", c, _category_peak(a, c), _category_peak(b, c))
    for p in PHASES:
        va, vb = a.peak_by_phase.get(p), b.peak_by_phase.get(p)
        if va is not None or vb is not None:
            add("phase peak", p, va, vb)
    mods_a, mods_b = a.activations_by_module, b.activations_by_module
    # Largest first (by the larger of the two), then by name: the table reads top-down.
    for name in sorted(
        set(mods_a) | set(mods_b), key=lambda k: (-max(mods_a.get(k, 0), mods_b.get(k, 0)), k)
    ):
        # A module one run does not have (another model, a checkpointed block that saves
        # nothing) saved 0 bytes there, where that run measured modules at all.
        add(
            "module activations",
            name,
            mods_a.get(name, 0 if mods_a else None),
            mods_b.get(name, 0 if mods_b else None),
        )
    add("speed", "step time (median)", a.step_time_median_s, b.step_time_median_s, "s")
    add("speed", "step time (p95)", a.step_time_p95_s, b.step_time_p95_s, "s")
    add(
        "speed",
        "throughput",
        a.throughput_samples_per_s,
        b.throughput_samples_per_s,
        "samples/s",
    )
    return tuple(out)


def _resolve(x: RunResult | str, store: Any) -> tuple[RunResult, str | None]:
    if isinstance(x, RunResult):
        return x, None
    if isinstance(x, str):
        from memlab.store import default_store

        s = store or default_store()
        rid = s.resolve(x)
        return s.load(rid), rid
    raise TypeError(f"compare takes run ids or memlab.RunResults, got {type(x).__name__}")


def compare(a: RunResult | str, b: RunResult | str, *, store: Any = None) -> Comparison:
    """Run ``b`` against run ``a`` (ids or unique id prefixes in ``store``, default the run
    store, or ``RunResult``s): per-category, per-phase and per-module deltas, step time and
    throughput, and the two timelines for :meth:`Comparison.figure`."""
    ra, ia = _resolve(a, store)
    rb, ib = _resolve(b, store)
    return Comparison(a=ra, b=rb, deltas=_deltas(ra, rb), a_id=ia, b_id=ib)
