"""``Experiment``: one run's choices, frozen and validated on construction.

A bad value fails here, with a message that names the field, the value and what is allowed
(``batch_size must be a positive int, got -3``), never as a torch traceback from deep inside a
run. Each field is declared once, with its default and its rule (``FIELDS``, a table of
``FieldSpec``); the validation here, the CLI's options and the lab controls are derived from it.
This module does not import torch at import time: a notebook kernel can build, validate and
store experiments without paying for torch (only ``resolved_device`` asks torch about CUDA).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from memlab.devices import PROFILES as _PROFILES


def _device_profiles() -> tuple[str, ...]:
    return tuple(_PROFILES)


__all__ = [
    "ConfigError",
    "Experiment",
    "parse_bytes",
    "WORKLOADS",
    "MODES",
    "PRECISIONS",
    "CHECKPOINTING",
    "SPARSE_STORAGES",
    "DATA_SOURCES",
    "DEVICES",
    "ALLOCATIONS",
    "FUSES",
    "QUANTIZED",
    "COMPRESSIONS",
    "OFFLOADS",
    "WEIGHTS",
    "PROFILE_NAMES",
    "MAX_SPARSITY",
    "MIB",
    "MEMORY_FIELDS",
    "FIELDS",
    "FieldSpec",
    "GROUPS",
]

#: One mebibyte (IEC 80000-13), the unit of every chart and knob in memlab.
MIB = 2**20

WORKLOADS: tuple[str, ...] = ("mlp", "cnn", "transformer")
MODES: tuple[str, ...] = ("train", "inference")
PRECISIONS: tuple[str, ...] = (
    "fp32",
    "amp-bf16",
    "amp-fp16",
    "bf16",
    "int8",
    "int8-static",
    "int8-weight",
    "int4-weight",
)
#: The quantized precisions (memlab/knobs/quantization.py): inference only. ``int8`` is dynamic
#: quantization of Linear layers; ``int8-static`` post-training static quantization calibrated
#: on the data set; ``int8-weight`` / ``int4-weight`` weight-only quantization of Linear layers.
QUANTIZED: tuple[str, ...] = ("int8", "int8-static", "int8-weight", "int4-weight")
CHECKPOINTING: tuple[str, ...] = ("off", "every-block", "every-other-block")
SPARSE_STORAGES: tuple[str, ...] = ("mask", "sparse")
DATA_SOURCES: tuple[str, ...] = ("ram", "memmap")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: How an inference request gets its intermediate tensors (memlab/knobs/inference.py): a fresh
#: allocation per tensor per request, one arena planned ahead, or buffers kept from request 1.
ALLOCATIONS: tuple[str, ...] = ("dynamic", "preallocated", "lazy")
#: Graph-level rewrites for inference: none, conv + batch-norm folding, torch.compile.
FUSES: tuple[str, ...] = ("none", "fold", "compile")
#: Weight compression (memlab/knobs/compression.py): each Linear factored at a low rank (svd), or
#: its weights clustered to 2**bits shared values stored as b-bit indices plus a codebook.
COMPRESSIONS: tuple[str, ...] = ("none", "svd", "shared")
#: Where a training step keeps the activations autograd saves for backward
#: (memlab/knobs/offload.py): in memory (off), in CPU memory (cpu: CUDA runs only change),
#: written to disk in the run's temporary folder (disk), or compressed on the way (disk-compressed).
OFFLOADS: tuple[str, ...] = ("off", "cpu", "disk", "disk-compressed")
#: Where an inference run's weights live (memlab/streaming.py): all resident in memory, or saved
#: once to a safetensors file and streamed layer by layer through a memory map (the next
#: layer prefetched on a thread).
WEIGHTS: tuple[str, ...] = ("resident", "streamed")
#: Edge targets a run can be held to (memlab/devices.py); "none": this machine, no profile.
PROFILE_NAMES: tuple[str, ...] = ("none", *_device_profiles())
#: Pruning every weight leaves nothing to learn or to store; 0.99 is the top of the range.
MAX_SPARSITY = 0.99


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the field, value and rule."""


# -- byte sizes ---------------------------------------------------------------------------
# SI prefixes are powers of 10, IEC prefixes powers of 2 (IEC 80000-13), so "512MB" is
# 512 * 10**6 bytes and "1.5GiB" is 1.5 * 2**30.
_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_BYTES_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: a value the user got
    wrong may be huge (a 5,000-digit int, whose repr raises past Python's int-to-str limit) or
    have a repr that fails, and the message must still be one short line naming the field."""
    try:
        text = repr(value)
    except Exception:  # any user object's __repr__, or int's digit limit (ValueError)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_bytes(value: int | str, *, name: str = "size") -> int:
    """Bytes from an int or a string such as ``"512MB"``, ``"2GB"``, ``"1.5GiB"``, ``"4096"``.

    MB/GB are decimal (10**6, 10**9), MiB/GiB binary (2**20, 2**30); case does not matter.
    The result must be a positive whole number of bytes. ``name`` goes into the error message.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a byte size such as 512MB or 2GiB, got {_show(value)}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{name} must be a positive number of bytes, got {_show(value)}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a byte size such as 512MB or 2GiB, got {_show(value)}")
    m = _BYTES_RE.match(value)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS:
        allowed = ", ".join(u for u in _UNITS if u)
        raise ConfigError(
            f"{name} must be a byte size such as 512MB or 2GiB (units: {allowed}), "
            f"got {_show(value)}"
        )
    n = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(n) or n < 1 or n != int(n):
        raise ConfigError(f"{name} must be a positive whole number of bytes, got {_show(value)}")
    return int(n)


# -- validation helpers -------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    # bool is an int subclass in Python; True as a batch size is a bug, not a 1.
    return isinstance(v, int) and not isinstance(v, bool)


def _qualname(fn: Callable[..., Any]) -> str:
    mod = getattr(fn, "__module__", None) or "?"
    qn = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{mod}:{qn}"


def _resolve_qualname(name: str) -> Callable[..., Any]:
    """The callable named ``module:qualname`` (what ``to_dict`` writes for a user factory)."""
    import importlib

    mod_name, _, qual = name.partition(":")
    if not mod_name or not qual or "<" in qual:
        raise ConfigError(
            f"workload {name!r} cannot be loaded: a user factory must be a module-level "
            "callable written as 'module:name'"
        )
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # importing a module runs its code: any error (or '..' relative)
        raise ConfigError(f"workload {name!r} cannot be loaded: {type(e).__name__}: {e}") from e
    if not callable(obj):
        raise ConfigError(f"workload {name!r} is not callable")
    return obj  # type: ignore[no-any-return]


# -- the field table ----------------------------------------------------------------------
#: The kinds of value a field holds; each has one rule (``FieldSpec.check``).
Kind = Literal["workload", "choice", "int", "float", "bool", "bytes"]
#: Field groups, in display order: what is run, the memory techniques, how the data is read,
#: and how the run is carried out.
Group = Literal["experiment", "techniques", "data", "run"]
GROUPS: tuple[Group, ...] = get_args(Group)


@dataclass(frozen=True)
class FieldSpec:
    """One ``Experiment`` field and what it allows: the single declaration that validation, the
    CLI's options and the lab controls all read.

    ``choices`` for ``choice``/``workload`` fields; ``minimum``/``maximum`` (inclusive, ``None``
    for open) for ``int``/``float`` fields; ``typical_max`` is the top of the range a control
    offers by default (larger values are still valid); ``optional`` means ``None`` is allowed
    (for a ``bytes`` field: no limit). ``alias`` is the shorter name the CLI and the controls
    use (``budget`` for ``budget_bytes``). ``memory`` says whether the field decides a step's
    tensor memory (``MEMORY_FIELDS``); ``knob`` whether the lab panel offers a control for it
    (``memlab.ui.KNOBS``).
    """

    name: str
    kind: Kind
    default: Any
    help: str
    group: Group
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    typical_max: float | None = None
    unit: str = ""
    optional: bool = False
    alias: str = ""
    memory: bool = False
    knob: bool = False

    @property
    def option(self) -> str:
        """The name a user types: ``alias`` if there is one, else the field name."""
        return self.alias or self.name

    @property
    def label(self) -> str:
        """A short human label (``batch size``)."""
        return self.option.replace("_", " ")

    def rule(self) -> str:
        """What is allowed, as the error messages say it (``a positive int``)."""
        if self.kind in ("choice", "workload"):
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "True or False"
        if self.kind == "bytes":
            return "a byte size such as 512MB or 2GiB"
        lo, hi = self.minimum, self.maximum
        what = "a number" if self.kind == "float" else "an int"
        if lo is not None and hi is not None:
            return f"{what} with {lo:g} <= {self.name} <= {hi:g}"
        if hi is not None:
            return f"{what} <= {hi:g}"
        if lo is None:
            return what
        return "a positive int" if self.kind == "int" and lo == 1 else f"{what} >= {lo:g}"

    def check(self, value: Any) -> Any:
        """``value`` as the field stores it (an int sparsity becomes a float, ``"512MB"`` bytes),
        or a ``ConfigError`` naming the field, the value and the rule. Rules across fields are
        ``Experiment``'s, not this."""
        if value is None and self.optional:
            return None
        ok: bool
        if self.kind == "workload":
            if callable(value) and not isinstance(value, str):
                return value
            if not isinstance(value, str) or value not in self.choices:
                raise ConfigError(
                    f"{self.name} must be {self.rule()} or a callable factory(experiment, "
                    f"device) returning a Workload, got {_show(value)}"
                )
            return value
        if self.kind == "bytes":
            return parse_bytes(value, name=self.name)
        if self.kind == "choice":
            ok = isinstance(value, str) and value in self.choices
        elif self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "int":
            # Every int field reaches torch or C as an int64: a larger one is no valid setting.
            ok = _is_int(value) and self._in_range(value) and abs(value) < 2**63
        else:  # float; bool is an int subclass, and True is no sparsity
            ok = (
                not isinstance(value, bool)
                and isinstance(value, (int, float))
                and (isinstance(value, int) or math.isfinite(value))  # 10**400: no float
                and self._in_range(value)
            )
            if ok:
                value = float(value)
        if not ok:
            raise ConfigError(f"{self.name} must be {self.rule()}, got {_show(value)}")
        return value

    def _in_range(self, v: float) -> bool:
        return (self.minimum is None or v >= self.minimum) and (
            self.maximum is None or v <= self.maximum
        )


_SPEC = "memlab"  # the dataclass field metadata key holding a field's rule


def _declare(default: Any, *, kind: Kind, group: Group, help: str, **rule: Any) -> Any:
    """A dataclass field with its default and its rule (read back into ``FIELDS``): the one
    place a field's name, default and allowed values are written down."""
    return field(default=default, metadata={_SPEC: dict(kind=kind, group=group, help=help, **rule)})


@dataclass(frozen=True)
class Experiment:
    """Everything one run needs, validated on construction.

    ``workload`` is a built-in name (``mlp``, ``cnn``, ``transformer``) or a callable
    ``factory(experiment, device) -> Workload`` (see ``memlab.workloads``). ``data_size`` is the
    number of synthetic samples the run reads (memory and speed); accuracy uses the real digits
    data set instead. ``budget_bytes`` also takes a string such as ``"512MB"`` (stored as int).
    """

    workload: str | Callable[..., Any] = _declare(
        "mlp",
        kind="workload",
        group="experiment",
        help="a built-in model, or module:function returning a Workload",
        choices=WORKLOADS,
        memory=True,
        knob=True,
    )
    mode: str = _declare(
        "train",
        kind="choice",
        group="experiment",
        help="train (forward, backward, optimizer) or inference (forward only)",
        choices=MODES,
        memory=True,
        knob=True,
    )
    batch_size: int = _declare(
        32,
        kind="int",
        group="experiment",
        help="samples per step",
        minimum=1,
        typical_max=1024,
        unit="samples",
        memory=True,
        knob=True,
    )
    precision: str = _declare(
        "fp32",
        kind="choice",
        group="techniques",
        help="what weights are stored in and arithmetic runs in (int8: inference only)",
        choices=PRECISIONS,
        memory=True,
        knob=True,
    )
    checkpointing: str = _declare(
        "off",
        kind="choice",
        group="techniques",
        help="which blocks recompute their activations in backward",
        choices=CHECKPOINTING,
        memory=True,
        knob=True,
    )
    sparsity: float = _declare(
        0.0,
        kind="float",
        group="techniques",
        help="fraction of weights pruned by magnitude",
        minimum=0.0,
        maximum=MAX_SPARSITY,
        memory=True,
        knob=True,
    )
    sparse_storage: str = _declare(
        "mask",
        kind="choice",
        group="techniques",
        help="pruned weights as dense masks or stored sparse (CSR)",
        choices=SPARSE_STORAGES,
        memory=True,
        knob=True,
    )
    allocation: str = _declare(
        "dynamic",
        kind="choice",
        group="techniques",
        help="inference only: a fresh allocation per tensor per request (dynamic), one arena "
        "planned ahead (preallocated), or buffers allocated on the first request and kept (lazy)",
        choices=ALLOCATIONS,
        memory=True,
        knob=True,
    )
    inplace: bool = _declare(
        False,
        kind="bool",
        group="techniques",
        help="in-place activations and residual adds in the built-in models",
        memory=True,
        knob=True,
    )
    fuse: str = _declare(
        "none",
        kind="choice",
        group="techniques",
        help="inference only: fold conv + batch-norm (fold) or torch.compile with inductor "
        "(compile)",
        choices=FUSES,
        memory=True,
        knob=True,
    )
    compression: str = _declare(
        "none",
        kind="choice",
        group="techniques",
        help="Linear weights factored at a low rank (svd) or shared as a 2**bits codebook "
        "with b-bit indices (shared, inference only)",
        choices=COMPRESSIONS,
        memory=True,
        knob=True,
    )
    rank: int = _declare(
        16,
        kind="int",
        group="techniques",
        help="compression 'svd': the rank each Linear layer is factored at (capped at the "
        "layer's smaller dimension)",
        minimum=1,
        typical_max=128,
        unit="rank",
        memory=True,
        knob=True,
    )
    codebook_bits: int = _declare(
        4,
        kind="int",
        group="techniques",
        help="compression 'shared': bits per weight index (2**bits shared values per layer)",
        minimum=1,
        maximum=8,
        unit="bits",
        memory=True,
        knob=True,
    )
    offload_activations: str = _declare(
        "off",
        kind="choice",
        group="techniques",
        help="training only: keep saved activations in memory (off), in CPU memory (cpu, CUDA "
        "runs), on disk (disk) or compressed on disk (disk-compressed)",
        choices=OFFLOADS,
        memory=True,
        knob=True,
    )
    weights: str = _declare(
        "resident",
        kind="choice",
        group="techniques",
        help="inference only: all weights in memory (resident), or streamed layer by layer "
        "from a memory-mapped safetensors file (streamed)",
        choices=WEIGHTS,
        memory=True,
        knob=True,
    )
    data: str = _declare(
        "ram",
        kind="choice",
        group="data",
        help="the synthetic data set held in RAM or memory-mapped from disk",
        choices=DATA_SOURCES,
        knob=True,
    )
    num_workers: int = _declare(
        0,
        kind="int",
        group="data",
        help="DataLoader worker processes (0: load in the run's process)",
        minimum=0,
        typical_max=8,
        unit="processes",
        knob=True,
    )
    pin_memory: bool = _declare(
        False, kind="bool", group="data", help="page-locked batches (faster to a GPU)", knob=True
    )
    prefetch_factor: int = _declare(
        2,
        kind="int",
        group="data",
        help="batches each worker loads ahead",
        minimum=1,
        typical_max=8,
        unit="batches",
        knob=True,
    )
    data_size: int = _declare(
        2048,
        kind="int",
        group="data",
        help="synthetic samples the run reads",
        minimum=1,
        unit="samples",
    )
    steps: int = _declare(
        5, kind="int", group="run", help="measured steps", minimum=1, unit="steps"
    )
    warmup: int = _declare(
        1,
        kind="int",
        group="run",
        help="steps run before measuring (lazy allocations happen there)",
        minimum=0,
        unit="steps",
    )
    device: str = _declare(
        "auto",
        kind="choice",
        group="run",
        help="where to run (auto: CUDA if torch sees a GPU)",
        choices=DEVICES,
        memory=True,
    )
    budget_bytes: int | None = _declare(
        None,
        kind="bytes",
        group="run",
        help="simulated device limit, e.g. 512MB or 2GiB (none: no limit)",
        optional=True,
        alias="budget",
        unit="bytes",
        knob=True,
    )
    profile: str = _declare(
        "none",
        kind="choice",
        group="run",
        help="an edge device profile (memlab.devices): its RAM budget becomes the run's "
        "budget and RSS cap; its speed is only ever estimated",
        choices=PROFILE_NAMES,
        knob=True,
    )
    seed: int = _declare(0, kind="int", group="run", help="random seed for weights and data")
    # Not part of the experiment's identity: a user factory compares by name, not by object.
    _factory_name: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Each field's own rule comes from its declaration (FIELDS); check() also normalises
        # (an int sparsity to float, "512MB" to bytes).
        for spec in FIELDS.values():
            value = getattr(self, spec.name)
            checked = spec.check(value)
            if checked is not value:
                object.__setattr__(self, spec.name, checked)
        if callable(self.workload) and not isinstance(self.workload, str):
            object.__setattr__(self, "_factory_name", _qualname(self.workload))
        # -- rules across fields --
        if self.precision in QUANTIZED and self.mode != "inference":
            raise ConfigError(
                f"precision {self.precision!r} (quantization) works for mode 'inference' only, "
                f"got mode {self.mode!r}"
            )
        if self.offload_activations != "off" and self.mode != "train":
            raise ConfigError(
                f"offload_activations {self.offload_activations!r} works for mode 'train' only "
                f"(inference saves no activations for backward), got mode {self.mode!r}"
            )
        if self.compression == "shared" and self.mode != "inference":
            raise ConfigError(
                "compression 'shared' (b-bit codebook indices) works for mode 'inference' only, "
                f"got mode {self.mode!r} (use compression 'svd' or 'none' for training)"
            )

        for name, value, plain in (
            ("allocation", self.allocation, "dynamic"),
            ("fuse", self.fuse, "none"),
            ("weights", self.weights, "resident"),
        ):
            if value != plain and self.mode != "inference":
                raise ConfigError(
                    f"{name} {value!r} works for mode 'inference' only, got mode {self.mode!r} "
                    f"(use {name} {plain!r} for training)"
                )
        if self.fuse == "compile" and self.allocation != "dynamic":
            raise ConfigError(
                f"allocation {self.allocation!r} and fuse 'compile' cannot be combined: both "
                "replace how the forward runs (inductor plans its own buffers); use allocation "
                "'dynamic' with fuse 'compile'"
            )
        if self.data_size < self.batch_size:
            raise ConfigError(
                f"data_size must be at least batch_size ({self.batch_size}) so one batch fits, "
                f"got {self.data_size}"
            )

    # -- derived ----------------------------------------------------------------------------
    @property
    def workload_name(self) -> str:
        """The built-in name, or ``module:qualname`` of a user factory."""
        return self.workload if isinstance(self.workload, str) else self._factory_name

    @property
    def effective_budget_bytes(self) -> int | None:
        """The tracked-memory limit a run is held to: ``budget_bytes`` if given, else the
        device profile's budget, else ``None`` (no limit)."""
        if self.budget_bytes is not None:
            return self.budget_bytes
        if self.profile != "none":
            return _PROFILES[self.profile].budget_bytes
        return None

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``: ``auto`` picks CUDA when torch sees a GPU."""
        if self.device == "cpu":
            return "cpu"
        import torch

        has_cuda = bool(torch.cuda.is_available())
        if self.device == "auto":
            return "cuda" if has_cuda else "cpu"
        if not has_cuda:
            raise ConfigError(
                "device 'cuda' was asked for, but torch sees no CUDA device "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "use device 'cpu' or 'auto'"
            )
        return "cuda"

    def replace(self, **changes: Any) -> Experiment:
        """A copy with ``changes`` applied, validated again."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self) if f.init}
        if unknown:
            raise ConfigError(f"unknown Experiment field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; a user factory is written as its ``module:qualname``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        d["workload"] = self.workload_name
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Experiment:
        """Inverse of ``to_dict``; a ``module:qualname`` workload is imported again."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"an Experiment dict must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(d) - known
        if unknown:  # keys of any type: sorted as text
            names = ", ".join(sorted(map(str, unknown)))
            raise ConfigError(f"unknown Experiment field(s): {names}")
        kw = dict(d)
        wl = kw.get("workload")
        if isinstance(wl, str) and wl not in WORKLOADS and ":" in wl:
            kw["workload"] = _resolve_qualname(wl)
        return cls(**kw)


#: Every Experiment field's declaration, by name, in the dataclass's order: the one vocabulary
#: that validation, the CLI's options and the lab controls derive from.
FIELDS: Mapping[str, FieldSpec] = MappingProxyType(
    {
        f.name: FieldSpec(name=f.name, default=f.default, **f.metadata[_SPEC])
        for f in dataclasses.fields(Experiment)
        if f.init
    }
)
#: The Experiment fields that decide a step's tensor memory (what an estimate depends on;
#: steps, seed, data loading and the budget do not).
MEMORY_FIELDS: tuple[str, ...] = tuple(n for n, s in FIELDS.items() if s.memory)
