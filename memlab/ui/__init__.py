"""Widgets for the labs: a control panel bound to an Experiment, with live plotly charts.

    from memlab.ui import Panel
    panel = Panel(knobs=["batch_size", "checkpointing"], experiment=Experiment(workload="cnn"))
    panel                                   # the knobs, Run/Stop, status line and charts

This is the only part of memlab that imports ipywidgets (ARCHITECTURE.md, "Layers"): measurement
returns data, :mod:`memlab.plots` draws it, and this package only binds the two to widgets.
"""

from __future__ import annotations

from memlab.ui.charts import CHARTS, LiveCharts
from memlab.ui.controls import KNOB_GROUPS, KNOBS, smoke_experiment, smoke_mode
from memlab.ui.panel import Panel, run_labels

__all__ = [
    "CHARTS",
    "KNOBS",
    "KNOB_GROUPS",
    "LiveCharts",
    "Panel",
    "run_labels",
    "smoke_experiment",
    "smoke_mode",
]
