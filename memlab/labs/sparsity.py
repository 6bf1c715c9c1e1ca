"""Lab 04, sparsity: masks against sparse (CSR) storage, the crossover sparsity computed from
the bytes per stored weight, and accuracy against sparsity on the real digits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from memlab.config import MIB, SPARSE_STORAGES, Experiment
from memlab.labs.checks import Check, check_choice, check_number
from memlab.labs.sweeps import Sweep, accuracies, run_sweep
from memlab.labs.text import md_table, pct
from memlab.timeline import format_bytes

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "MIB",
    "Check",
    "Sweep",
    "run_sweep",
    "accuracy_by_sparsity",
    "crossover",
    "explain",
    "bytes_figure",
    "check_crossover",
    "check_accuracy",
]


def crossover(sweep: Sweep) -> float | None:
    """The density below which CSR is smaller than dense for these layers, as the sparse runs
    computed it (``sparse_density_crossover``); ``None`` when no run stored weights sparse."""
    return next(
        (
            float(r.metrics["sparse_density_crossover"])
            for r in sweep.results
            if r.metrics.get("sparse_density_crossover") is not None
        ),
        None,
    )


def accuracy_by_sparsity(
    base: Experiment, levels: Iterable[float], *, train_steps: int = 200
) -> dict[float, float | None]:
    """Accuracy on the real digits of ``base`` trained once in fp32, then pruned to each level
    (magnitude pruning, no fine-tuning), keyed by sparsity; one job in a worker process."""
    levels = [float(s) for s in levels]
    got = accuracies({f"{s:g}": base.replace(sparsity=s) for s in levels}, train_steps=train_steps)
    return {s: got[f"{s:g}"] for s in levels}


def explain(sweep: Sweep, dense: str, accuracy: Mapping[float, float | None] | None = None) -> str:
    """Mask against sparse storage at each sparsity: parameter bytes, the CSR arithmetic and
    the crossover, and accuracy against sparsity if given (keys: sparsity levels)."""
    base = sweep[dense]
    p0 = base.peak_by_category.get("parameters", 0)
    rows = []
    for label, e, r in sweep.runs():
        csr = r.metrics.get("sparse_csr_bytes")
        dense_eq = r.metrics.get("sparse_dense_equivalent_bytes")
        p = r.peak_by_category.get("parameters", 0)
        rows.append(
            (
                label,
                f"{e.sparsity:g}",
                e.sparse_storage if e.sparsity else "—",
                format_bytes(p),
                pct(p, p0) if r is not base else "—",
                "—" if csr is None else f"{format_bytes(csr)} vs {format_bytes(dense_eq)} dense",
                format_bytes(r.peak_bytes),
            )
        )
    header = (
        "run",
        "sparsity",
        "storage",
        "parameters",
        "vs dense",
        "Linear weights (CSR)",
        "peak",
    )
    out = [md_table(header, rows), ""]
    for label, e, r in sweep.runs():
        if not e.sparsity:
            continue
        p = r.peak_by_category.get("parameters", 0)
        if e.sparse_storage == "mask":
            out.append(
                f"- **{label}** (mask): parameters {format_bytes(p0)} → {format_bytes(p)} "
                f"({pct(p, p0)}). The pruned weights are still stored densely (zeros take 4 "
                "bytes like any fp32), plus a dense mask and the recomputed masked weight: "
                "masking " + ("saves nothing." if p >= p0 else "saved a little here.")
            )
            continue
        csr = r.metrics.get("sparse_csr_bytes")
        dense_eq = r.metrics.get("sparse_dense_equivalent_bytes")
        if csr is None or dense_eq is None:
            continue
        verdict = "smaller" if csr < dense_eq else "larger"
        out.append(
            f"- **{label}** (CSR): the Linear weights take {format_bytes(csr)} instead of "
            f"{format_bytes(dense_eq)}, {verdict} than dense; parameters {format_bytes(p0)} → "
            f"{format_bytes(p)} ({pct(p, p0)})."
        )
    cross = crossover(sweep)
    if cross is not None:
        out.append(
            f"- CSR stores a value (4 bytes) *and* a column index (8 bytes) per kept "
            f"weight, so it only wins below a density of **{cross:.3f}**, i.e. above "
            f"**{1 - cross:.3f} sparsity** for these layers."
        )
    if accuracy:
        pts = sorted((s, a) for s, a in accuracy.items() if a is not None)
        if pts:
            a0 = dict(pts).get(0.0, pts[0][1])
            desc = ", ".join(f"{s:g}: {a:.3f}" for s, a in pts)
            out.append(
                f"- Accuracy on the real digits by sparsity (magnitude pruning after "
                f"training, no fine-tuning): {desc}."
            )
            ok = [s for s, a in pts if a >= a0 - 0.05]
            if ok:
                out.append(
                    f"  The highest sparsity within 5 points of dense here: **{max(ok):g}**."
                )
    return "\n".join(out)


def bytes_figure(sweep: Sweep, dense: str) -> go.Figure:
    """Measured parameter bytes against sparsity, one line per storage, the dense baseline as a
    horizontal line and the CSR crossover as a vertical one."""
    import plotly.graph_objects as go

    colors = dict(zip(SPARSE_STORAGES, ("#E45756", "#4C78A8"), strict=True))
    fig = go.Figure()
    for storage in SPARSE_STORAGES:
        pts = sorted(
            (e.sparsity, r.peak_by_category.get("parameters", 0) / MIB)
            for _label, e, r in sweep.runs()
            if e.sparsity and e.sparse_storage == storage
        )
        if pts:
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=f"{storage} storage",
                    line={"color": colors[storage]},
                )
            )
    fig.add_hline(
        y=sweep[dense].peak_by_category.get("parameters", 0) / MIB,
        line_dash="dot",
        annotation_text="dense",
        line_color="#333333",
    )
    cross = crossover(sweep)
    if cross is not None:
        fig.add_vline(
            x=1 - cross,
            line_dash="dash",
            line_color="#72B7B2",
            annotation_text=f"CSR crossover {1 - cross:.2f}",
        )
    fig.update_layout(
        title={"text": "Parameter bytes at the peak vs sparsity (measured)"},
        xaxis={"title": {"text": "sparsity"}},
        yaxis={"title": {"text": "MiB"}, "rangemode": "tozero"},
        height=380,
    )
    return fig


def check_crossover(answer: Any, sweep: Sweep) -> Check:
    """Right when ``answer`` is within 0.03 of the sparsity above which CSR storage is smaller
    than dense for these layers (from the runs' own arithmetic)."""
    cross = crossover(sweep)
    if cross is None:
        return Check(False, "No run in this sweep used sparse storage; run one first.")
    return check_number(
        answer,
        1 - cross,
        abs_tol=0.03,
        what="a sparsity between 0 and 1",
        explain="12 bytes per kept fp32 weight in CSR against 4 per weight dense.",
    )


def check_accuracy(
    answer: Any, accuracy: Mapping[float, float | None], *, points: float = 5.0
) -> Check:
    """Right when ``answer`` is the highest tested sparsity whose accuracy stays within
    ``points`` percentage points of the dense (sparsity 0) accuracy."""
    pts = {float(s): a for s, a in accuracy.items() if a is not None}
    if 0.0 not in pts:
        return Check(False, "The accuracy curve has no dense (sparsity 0) point.")
    ok = [s for s, a in pts.items() if a >= pts[0.0] - points / 100]
    return check_choice(
        None if answer is None else f"{float(answer):g}",
        f"{max(ok):g}",
        options=[f"{s:g}" for s in sorted(pts)],
        what="a tested sparsity level",
    )
