"""The logic behind the notebooks in ``labs/``: one module per lab, named by its topic.

    from memlab.labs import checkpointing as lab
    sweep = lab.run_sweep({s: base.replace(checkpointing=s) for s in settings})
    Markdown(lab.explain(sweep, baseline="off"))   # "what happened and why", from the runs
    lab.check_saving(answer_1, sweep)              # an exercise, checked against the runs

Lab modules: :mod:`tour`, :mod:`batch_size`, :mod:`checkpointing`, :mod:`precision`,
:mod:`sparsity`, :mod:`data_loading`; each re-exports the shared pieces its notebook uses, so a
notebook needs only its own lab module. Shared modules: :mod:`checks` (the answer-checking
framework), :mod:`exercises` (checks several labs use, backed by real runs), :mod:`sweeps`
(running experiments and keeping their results), :mod:`analysis` (pure functions of results)
and :mod:`text` (Markdown helpers for the explanations).

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
    "checks",
    "exercises",
    "sweeps",
    "analysis",
    "text",
]
