"""Knob widgets bound to :class:`memlab.config.Experiment` fields, and smoke-mode sizes.

Each knob is one widget whose value maps to one Experiment field; which fields are knobs, their
labels, ranges, options and tooltips all come from the field declarations in
``memlab.config.FIELDS`` (the budget is shown in MiB, the unit of every chart, and stored in
bytes). Building an Experiment from the widgets goes
through ``Experiment.replace``, so an invalid combination fails with the config's own readable
``ConfigError`` message, which the panel shows in its status line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from memlab.config import FIELDS, MIB, ConfigError, Experiment, FieldSpec

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


# A choice with this many options or fewer is a row of toggle buttons; more, a dropdown.
_MAX_TOGGLES = 2


def _widget_maker(spec: FieldSpec) -> Callable[[Experiment], widgets.ValueWidget]:
    """The widget for ``spec``'s kind, its range and labels from the declaration."""
    common: dict[str, Any] = {"description": spec.label, "tooltip": spec.help, "style": _STYLE}

    def make(exp: Experiment) -> widgets.ValueWidget:
        value = getattr(exp, spec.name)
        if spec.kind == "workload":
            options: list[tuple[str, Any]] = [(w, w) for w in spec.choices]
            if not isinstance(value, str):
                # A user factory: listed by its function name, selected by the object itself.
                options.append((_factory_label(value), value))
            return widgets.Dropdown(options=options, value=value, **common)
        if spec.kind == "choice":
            if len(spec.choices) <= _MAX_TOGGLES:
                style = {**_STYLE, "button_width": "auto"}
                return widgets.ToggleButtons(
                    options=list(spec.choices), value=value, **{**common, "style": style}
                )
            return widgets.Dropdown(options=list(spec.choices), value=value, **common)
        if spec.kind == "bool":
            return widgets.Checkbox(value=value, indent=False, **common)
        if spec.kind == "bytes":  # shown in MiB, the unit of every chart; 0 = none
            return widgets.BoundedFloatText(
                value=_budget_to_mib(value),
                min=0.0,
                max=1e9,
                step=10.0,
                layout=widgets.Layout(width="220px"),
                **{**common, "description": f"{spec.label} MiB (0 = none)"},
            )
        lo = spec.minimum if spec.minimum is not None else 0
        hi = spec.maximum if spec.maximum is not None else spec.typical_max
        if hi is None:
            raise TypeError(f"field {spec.name!r} has no maximum or typical_max for a slider")
        # continuous_update=False: a dragged slider reports once, where it is let go.
        if spec.kind == "int":
            v = int(value)
            return widgets.IntSlider(
                value=v, min=int(lo), max=max(int(hi), v), continuous_update=False, **common
            )
        return widgets.FloatSlider(
            value=float(value),
            min=float(lo),
            max=float(hi),
            step=0.01,
            readout_format=".2f",
            continuous_update=False,
            **common,
        )

    return make


def _knob(spec: FieldSpec) -> _Knob:
    if spec.kind == "bytes":
        return _Knob(spec.option, spec.name, _widget_maker(spec), _budget_to_bytes, _budget_to_mib)
    return _Knob(spec.option, spec.name, _widget_maker(spec))


# Every field declared as a knob in config.FIELDS, in declaration order.
_KNOB_LIST: tuple[_Knob, ...] = tuple(_knob(s) for s in FIELDS.values() if s.knob)

#: Knob names in display order.
KNOBS: tuple[str, ...] = tuple(k.name for k in _KNOB_LIST)
_BY_NAME: dict[str, _Knob] = {k.name: k for k in _KNOB_LIST}
#: Names that stand for several knobs (a field group's knobs) or for a knob under its field's
#: name (``budget_bytes`` for ``budget``).
KNOB_GROUPS: dict[str, tuple[str, ...]] = {
    "data_loading": tuple(k.name for k in _KNOB_LIST if FIELDS[k.field].group == "data"),
    **{k.field: (k.name,) for k in _KNOB_LIST if k.field != k.name},
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
