"""The logic behind the notebooks in ``labs/``: one module per lab, named by its topic.

    from memlab.labs import checkpointing as lab
    sweep = lab.run_sweep({s: base.replace(checkpointing=s) for s in settings})
    Markdown(lab.explain(sweep, baseline="off"))   # what the runs show, no exercise's answer
    ex1 = lab.exercise_saving(sweep)               # an exercise: keeps its attempts
    ex1.check(answer_1)                            # graded hints, then the worked solution

Lab modules: :mod:`tour`, :mod:`batch_size`, :mod:`checkpointing`, :mod:`precision`,
:mod:`sparsity`, :mod:`data_loading`, :mod:`inference`, :mod:`edge`, :mod:`beyond_ram`; each re-
exports the shared pieces its notebook uses, so a notebook needs only its own lab module. Shared
modules: :mod:`checks` (the answer-checking framework: ``Check``, ``Exercise``),
:mod:`exercises` (exercises several labs use, backed by real runs), :mod:`sweeps` (running
experiments and keeping their results), :mod:`analysis` (pure functions of results) and
:mod:`text` (Markdown helpers for the explanations).

No exercise's answer is on screen before the learner tries: each lab's ``explain`` says what
the runs show, and the part that states an answer is that exercise's worked solution.

Nothing here states a result it did not compute: every sentence that names a number or a
direction is built from the runs passed in. No module of this package imports torch (jobs that
need it run in a worker process through ``memlab.runner.call``), and plotly, pandas and the
runner are imported by the functions that use them, so importing a lab module is cheap.
"""

from __future__ import annotations

__all__ = [
    "tour",
    "batch_size",
    "checkpointing",
    "precision",
    "sparsity",
    "data_loading",
    "inference",
    "edge",
    "beyond_ram",
    "checks",
    "exercises",
    "sweeps",
    "analysis",
    "text",
]
