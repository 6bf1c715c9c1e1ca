"""Lab 04, sparsity: masks against sparse (CSR) storage, the crossover sparsity computed from
the bytes per stored weight, and accuracy against sparsity on the real digits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from memlab.config import MIB, SPARSE_STORAGES, Experiment
from memlab.labs.checks import Check, Exercise, as_number, check_choice, check_number, todo
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
    "Exercise",
    "explain",
    "why_crossover",
    "why_accuracy",
    "bytes_figure",
    "exercise_crossover",
    "exercise_accuracy",
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


def explain(sweep: Sweep, dense: str) -> str:
    """What you see, before the exercises: mask against sparse storage at each sparsity,
    parameter bytes and the CSR bytes of each run. Not the crossover (exercise 1's answer) nor
    the accuracy verdict (exercise 2's): ``why_crossover`` and ``why_accuracy`` say them."""
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
    # The crossover is exercise 1's answer and the accuracy verdict exercise 2's: ``why_crossover``
    # and ``why_accuracy`` say them once the learner has tried.
    return "\n".join(out)


def why_crossover(sweep: Sweep) -> str:
    """Why CSR wins only past a sparsity, and where (exercise 1's worked solution)."""
    cross = crossover(sweep)
    if cross is None:
        return "No run stored weights sparse, so there is no crossover to compute."
    return "\n".join(
        [
            "1. Dense fp32 stores 4 bytes per weight, kept or not.",
            "2. CSR stores, per *kept* weight, its value (4 bytes, fp32) and its column index "
            "(8 bytes, int64): 12 bytes, plus one row pointer per row.",
            "3. CSR is smaller when 12 × density < 4, i.e. below a density of about 1/3. With "
            f"the row pointers of these layers the runs computed a density of **{cross:.3f}**, "
            f"i.e. a sparsity above **{1 - cross:.3f}**.",
            "4. Check it against the sweep: a sparse run below that sparsity stores more bytes "
            "than dense, one above it fewer.",
        ]
    )


def why_accuracy(accuracy: Mapping[float, float | None], *, points: float = 5.0) -> str:
    """Accuracy against sparsity, and the highest sparsity within ``points`` of dense
    (exercise 2's worked solution)."""
    pts = sorted((s, a) for s, a in accuracy.items() if a is not None)
    if not pts:
        return "No accuracy was measured."
    a0 = dict(pts).get(0.0, pts[0][1])
    rows = [(f"{s:g}", f"{a:.3f}", f"{(a - a0) * 100:+.1f}") for s, a in pts]
    out = [
        md_table(("sparsity", "accuracy", "points vs dense"), rows),
        "",
        f"Dense accuracy is {a0:.3f}; within {points:g} points means at least "
        f"{a0 - points / 100:.3f}.",
    ]
    ok = [s for s, a in pts if a >= a0 - points / 100]
    if ok:
        out.append(
            f"The highest sparsity within {points:g} points of dense here: **{max(ok):g}**. "
            "Magnitude pruning removes the smallest weights first, so accuracy holds until the "
            "pruning reaches weights that matter; fine-tuning after pruning would move the "
            "limit further."
        )
    return "\n".join(out)


def bytes_figure(sweep: Sweep, dense: str, *, show_crossover: bool = False) -> go.Figure:
    """Measured parameter bytes against sparsity, one line per storage, the dense baseline as a
    horizontal line and, with ``show_crossover``, the CSR crossover as a vertical one (off by
    default: it is exercise 1's answer)."""
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
    if show_crossover and cross is not None:
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
        fraction=True,
    )


def check_accuracy(
    answer: Any, accuracy: Mapping[float, float | None], *, points: float = 5.0
) -> Check:
    """Right when ``answer`` is the highest tested sparsity whose accuracy stays within
    ``points`` percentage points of the dense (sparsity 0) accuracy."""
    pts = {float(s): a for s, a in accuracy.items() if a is not None}
    if 0.0 not in pts:
        return Check(False, "The accuracy curve has no dense (sparsity 0) point.")
    if answer is None:
        return todo("a tested sparsity level")
    levels = [f"{s:g}" for s in sorted(pts)]
    x = as_number(answer, "a sparsity level")
    if isinstance(x, Check):
        return x
    if x > 1 and f"{x / 100:g}" in levels:
        return Check(
            False,
            f"{x:g} looks like a percent: the levels are fractions ({x / 100:g}).",
            form_error=True,
        )
    ok = [s for s, a in pts.items() if a >= pts[0.0] - points / 100]
    return check_choice(f"{x:g}", f"{max(ok):g}", options=levels, what="a tested sparsity level")


def exercise_crossover(sweep: Sweep, id: str = "1") -> Exercise:
    """Exercise 1: the sparsity above which CSR is smaller than dense."""
    hints = (
        "Look at the 'Linear weights (CSR)' column: at which tested sparsity does CSR take "
        "fewer bytes than dense? The answer lies between a sparsity where it is larger and "
        "one where it is smaller. In the chart, where does the sparse line cross the dense one?",
        "Count bytes per weight: dense fp32 stores 4 for every weight; CSR stores a value "
        "(4 bytes) and an int64 column index (8 bytes) for every kept weight. At which "
        "density are the two equal?",
    )
    return Exercise(
        id,
        "The CSR crossover",
        lambda a: check_crossover(a, sweep),
        hints=hints,
        solution=lambda: why_crossover(sweep),
    )


def exercise_accuracy(
    accuracy: Mapping[float, float | None], *, points: float = 5.0, id: str = "2"
) -> Exercise:
    """Exercise 2: the highest tested sparsity within ``points`` of dense accuracy."""
    a0 = accuracy.get(0.0)
    floor = "" if a0 is None else f" (dense: {a0:.3f}, so at least {a0 - points / 100:.3f})"
    hints = (
        "Read the accuracy of each level in the `accuracy` table above, against the dense "
        "one (sparsity 0).",
        f"{points:g} percentage points is {points / 100:g} of accuracy{floor}: take the "
        "highest level that stays at or above it.",
    )
    return Exercise(
        id,
        "How far can you prune",
        lambda a: check_accuracy(a, accuracy, points=points),
        hints=hints,
        solution=lambda: why_accuracy(accuracy, points=points),
    )
