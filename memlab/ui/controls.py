"""Knob widgets bound to :class:`memlab.config.Experiment` fields, and smoke-mode sizes.

Each knob is one widget whose value maps to one Experiment field (the budget is shown in MiB,
the unit of every chart, and stored in bytes). Building an Experiment from the widgets goes
through ``Experiment.replace``, so an invalid combination fails with the config's own readable
``ConfigError`` message, which the panel shows in its status line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from memlab.config import (
    CHECKPOINTING,
    DATA_SOURCES,
    MAX_SPARSITY,
    MIB,
    MODES,
    PRECISIONS,
    SPARSE_STORAGES,
    WORKLOADS,
    ConfigError,
    Experiment,
)

__all__ = [
    "KNOBS",
    "KNOB_GROUPS",
    "SMOKE_DATA_SIZE",
    "SMOKE_STEPS",
    "SMOKE_WARMUP",
    "build_controls",
    "experiment_from_controls",
    "knob_field",
    "resolve_knobs",
    "set_controls",
    "set_knob",
    "smoke_experiment",
    "smoke_mode",
    "to_field",
]

#: Smoke mode (``MEMLAB_SMOKE=1``): sizes small enough that a lab executes in seconds.
SMOKE_STEPS = 2
SMOKE_WARMUP = 1
SMOKE_DATA_SIZE = 256

_STYLE = {"description_width": "initial"}


def smoke_mode(smoke: bool | None = None) -> bool:
    """``smoke`` if given, else whether the environment asks for it (``MEMLAB_SMOKE=1``)."""
    if smoke is not None:
        return bool(smoke)
    return os.environ.get("MEMLAB_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")


def smoke_experiment(exp: Experiment, **changes: Any) -> Experiment:
    """``exp`` with ``changes`` and smoke sizes: at most 2 steps, 1 warm-up step, and a data set
    of ``SMOKE_DATA_SIZE`` samples (or one batch, if the batch is larger)."""
    batch = changes.get("batch_size", exp.batch_size)
    data_size = changes.get("data_size", exp.data_size)
    steps = changes.get("steps", exp.steps)
    warmup = changes.get("warmup", exp.warmup)
    small: dict[str, Any] = {}
    if isinstance(steps, int) and isinstance(warmup, int) and isinstance(data_size, int):
        small = {
            "steps": min(steps, SMOKE_STEPS),
            "warmup": min(warmup, SMOKE_WARMUP),
            "data_size": max(
                min(data_size, SMOKE_DATA_SIZE), batch if isinstance(batch, int) else 0
            ),
        }
    return exp.replace(**{**changes, **small})


# -- knobs ------------------------------------------------------------------------------------


def _identity(v: Any) -> Any:
    return v


def _budget_to_bytes(mib: Any) -> int | None:
    if mib is None or mib == 0:
        return None
    if not isinstance(mib, (int, float)) or mib < 0:
        raise ConfigError(f"budget must be a number of MiB >= 0 (0 = no budget), got {mib!r}")
    return max(1, int(round(float(mib) * MIB)))


def _budget_to_mib(nbytes: int | None) -> float:
    return 0.0 if nbytes is None else round(nbytes / MIB, 3)


@dataclass(frozen=True)
class _Knob:
    """One control: its widget factory and the mapping between widget value and field value."""

    name: str
    field: str
    make: Callable[[Experiment], widgets.ValueWidget]
    to_field: Callable[[Any], Any] = _identity
    from_field: Callable[[Any], Any] = _identity


def _workload_widget(exp: Experiment) -> widgets.ValueWidget:
    options: list[tuple[str, Any]] = [(w, w) for w in WORKLOADS]
    if not isinstance(exp.workload, str):
        # A user factory: listed by its function name, selected by the object itself.
        options.append((_factory_label(exp.workload), exp.workload))
    return widgets.Dropdown(
        options=options, value=exp.workload, description="workload", style=_STYLE
    )


def _choice(
    name: str, options: Sequence[str], *, toggle: bool = False
) -> Callable[[Experiment], widgets.ValueWidget]:
    def make(exp: Experiment) -> widgets.ValueWidget:
        cls = widgets.ToggleButtons if toggle else widgets.Dropdown
        return cls(
            options=list(options),
            value=getattr(exp, name),
            description=name.replace("_", " "),
            style={**_STYLE, "button_width": "auto"} if toggle else _STYLE,
        )

    return make


def _int_slider(
    name: str, lo: int, hi: int, label: str
) -> Callable[[Experiment], widgets.ValueWidget]:
    def make(exp: Experiment) -> widgets.ValueWidget:
        v = int(getattr(exp, name))
        # continuous_update=False: a dragged slider reports once, where it is let go.
        return widgets.IntSlider(
            value=v,
            min=lo,
            max=max(hi, v),
            description=label,
            continuous_update=False,
            style=_STYLE,
        )

    return make


def _sparsity_widget(exp: Experiment) -> widgets.ValueWidget:
    return widgets.FloatSlider(
        value=exp.sparsity,
        min=0.0,
        max=MAX_SPARSITY,
        step=0.01,
        description="sparsity",
        readout_format=".2f",
        continuous_update=False,
        style=_STYLE,
    )


def _budget_widget(exp: Experiment) -> widgets.ValueWidget:
    return widgets.BoundedFloatText(
        value=_budget_to_mib(exp.budget_bytes),
        min=0.0,
        max=1e9,
        step=10.0,
        description="budget MiB (0 = none)",
        style=_STYLE,
        layout=widgets.Layout(width="220px"),
    )


_KNOB_LIST: tuple[_Knob, ...] = (
    _Knob("workload", "workload", _workload_widget),
    _Knob("mode", "mode", _choice("mode", MODES, toggle=True)),
    _Knob("batch_size", "batch_size", _int_slider("batch_size", 1, 1024, "batch size")),
    _Knob("precision", "precision", _choice("precision", PRECISIONS)),
    _Knob("checkpointing", "checkpointing", _choice("checkpointing", CHECKPOINTING)),
    _Knob("sparsity", "sparsity", _sparsity_widget),
    _Knob(
        "sparse_storage", "sparse_storage", _choice("sparse_storage", SPARSE_STORAGES, toggle=True)
    ),
    _Knob("data", "data", _choice("data", DATA_SOURCES, toggle=True)),
    _Knob("num_workers", "num_workers", _int_slider("num_workers", 0, 8, "workers")),
    _Knob(
        "pin_memory",
        "pin_memory",
        lambda exp: widgets.Checkbox(value=exp.pin_memory, description="pin memory", indent=False),
    ),
    _Knob("prefetch_factor", "prefetch_factor", _int_slider("prefetch_factor", 1, 8, "prefetch")),
    _Knob("budget", "budget_bytes", _budget_widget, _budget_to_bytes, _budget_to_mib),
)

#: Knob names in display order.
KNOBS: tuple[str, ...] = tuple(k.name for k in _KNOB_LIST)
_BY_NAME: dict[str, _Knob] = {k.name: k for k in _KNOB_LIST}
#: Names that stand for several knobs (or for a knob under its field's name).
KNOB_GROUPS: dict[str, tuple[str, ...]] = {
    "data_loading": ("data", "num_workers", "pin_memory", "prefetch_factor"),
    "budget_bytes": ("budget",),
}


def resolve_knobs(knobs: Sequence[str] | None) -> tuple[str, ...]:
    """Knob names (groups expanded, duplicates dropped) in display order; ``None`` is all."""
    if knobs is None:
        return KNOBS
    if isinstance(knobs, str):
        knobs = [knobs]
    wanted: set[str] = set()
    for name in knobs:
        if name in _BY_NAME:
            wanted.add(name)
        elif name in KNOB_GROUPS:
            wanted.update(KNOB_GROUPS[name])
        else:
            allowed = ", ".join(KNOBS + tuple(KNOB_GROUPS))
            raise ConfigError(f"knob must be one of {allowed}, got {name!r}")
    return tuple(k for k in KNOBS if k in wanted)


def build_controls(exp: Experiment, knobs: Sequence[str]) -> dict[str, widgets.ValueWidget]:
    """One widget per knob in ``knobs`` (already resolved), showing ``exp``'s values."""
    return {name: _BY_NAME[name].make(exp) for name in knobs}


def to_field(name: str, value: Any) -> Any:
    """The Experiment field value for knob ``name``'s widget value."""
    return _BY_NAME[name].to_field(value)


def experiment_from_controls(
    base: Experiment, controls: Mapping[str, widgets.Widget], *, smoke: bool = False
) -> Experiment:
    """``base`` with every knob widget's value applied (and smoke sizes, if asked), validated.

    Raises :class:`ConfigError` with the config's message for an invalid combination.
    """
    changes = {
        _BY_NAME[name].field: _BY_NAME[name].to_field(w.value)
        for name, w in controls.items()
        if name in _BY_NAME
    }
    return smoke_experiment(base, **changes) if smoke else base.replace(**changes)


def _factory_label(factory: Any) -> str:
    return str(getattr(factory, "__qualname__", None) or getattr(factory, "__name__", factory))


def set_knob(w: widgets.Widget, name: str, field_value: Any) -> None:
    """Show an Experiment field's value on knob ``name``'s widget (widening its range or
    options if the value lies outside them)."""
    value = _BY_NAME[name].from_field(field_value)
    if name == "workload" and not isinstance(value, str):
        if value not in [v for _, v in w.options]:  # type: ignore[attr-defined]
            w.options = [*w.options, (_factory_label(value), value)]  # type: ignore[attr-defined]
    hi = getattr(w, "max", None)
    if isinstance(hi, (int, float)) and isinstance(value, (int, float)) and value > hi:
        w.max = value  # type: ignore[attr-defined]
    w.value = value  # type: ignore[attr-defined]


def set_controls(controls: Mapping[str, widgets.Widget], exp: Experiment) -> None:
    """Show ``exp``'s values on the knob widgets present in ``controls``."""
    for name, w in controls.items():
        if name in _BY_NAME:
            set_knob(w, name, getattr(exp, _BY_NAME[name].field))


def knob_field(name: str) -> str:
    """The Experiment field a knob sets."""
    return _BY_NAME[name].field
