"""``Experiment``: one run's choices, frozen and validated on construction.

A bad value fails here, with a message that names the field, the value and what is allowed
(``batch_size must be a positive int, got -3``), never as a torch traceback from deep inside a
run. This module does not import torch at import time: a notebook kernel can build, validate and
store experiments without paying for torch (only ``resolved_device`` asks torch about CUDA).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    "MAX_SPARSITY",
    "MIB",
    "MEMORY_FIELDS",
]

#: One mebibyte (IEC 80000-13), the unit of every chart and knob in memlab.
MIB = 2**20

WORKLOADS: tuple[str, ...] = ("mlp", "cnn", "transformer")
MODES: tuple[str, ...] = ("train", "inference")
PRECISIONS: tuple[str, ...] = ("fp32", "amp-bf16", "amp-fp16", "bf16", "int8")
CHECKPOINTING: tuple[str, ...] = ("off", "every-block", "every-other-block")
SPARSE_STORAGES: tuple[str, ...] = ("mask", "sparse")
DATA_SOURCES: tuple[str, ...] = ("ram", "memmap")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: The Experiment fields that decide a step's tensor memory (what an estimate depends on;
#: steps, seed, data loading and the budget do not).
MEMORY_FIELDS: tuple[str, ...] = (
    "workload", "mode", "batch_size", "precision", "checkpointing", "sparsity",
    "sparse_storage", "device",
)
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


def parse_bytes(value: int | str, *, name: str = "size") -> int:
    """Bytes from an int or a string such as ``"512MB"``, ``"2GB"``, ``"1.5GiB"``, ``"4096"``.

    MB/GB are decimal (10**6, 10**9), MiB/GiB binary (2**20, 2**30); case does not matter.
    The result must be a positive whole number of bytes. ``name`` goes into the error message.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a byte size such as 512MB or 2GiB, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{name} must be a positive number of bytes, got {value}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a byte size such as 512MB or 2GiB, got {value!r}")
    m = _BYTES_RE.match(value)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS:
        allowed = ", ".join(u for u in _UNITS if u)
        raise ConfigError(
            f"{name} must be a byte size such as 512MB or 2GiB (units: {allowed}), got {value!r}"
        )
    n = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(n) or n < 1 or n != int(n):
        raise ConfigError(f"{name} must be a positive whole number of bytes, got {value!r}")
    return int(n)


# -- validation helpers -------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    # bool is an int subclass in Python; True as a batch size is a bug, not a 1.
    return isinstance(v, int) and not isinstance(v, bool)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        opts = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{name} must be one of {opts}, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _nonneg_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")


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
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"workload {name!r} cannot be loaded: {e}") from e
    if not callable(obj):
        raise ConfigError(f"workload {name!r} is not callable")
    return obj  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Experiment:
    """Everything one run needs, validated on construction.

    ``workload`` is a built-in name (``mlp``, ``cnn``, ``transformer``) or a callable
    ``factory(experiment, device) -> Workload`` (see ``memlab.workloads``). ``data_size`` is the
    number of synthetic samples the run reads (memory and speed); accuracy uses the real digits
    data set instead. ``budget_bytes`` also takes a string such as ``"512MB"`` (stored as int).
    """

    workload: str | Callable[..., Any] = "mlp"
    mode: str = "train"
    batch_size: int = 32
    precision: str = "fp32"
    checkpointing: str = "off"
    sparsity: float = 0.0
    sparse_storage: str = "mask"
    data: str = "ram"
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int = 2
    data_size: int = 2048
    steps: int = 5
    warmup: int = 1
    device: str = "auto"
    budget_bytes: int | None = None
    seed: int = 0
    # Not part of the experiment's identity: a user factory compares by name, not by object.
    _factory_name: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        wl = self.workload
        if callable(wl) and not isinstance(wl, str):
            object.__setattr__(self, "_factory_name", _qualname(wl))
        elif not isinstance(wl, str) or wl not in WORKLOADS:
            opts = ", ".join(repr(a) for a in WORKLOADS)
            raise ConfigError(
                f"workload must be one of {opts} or a callable factory(experiment, device) "
                f"returning a Workload, got {wl!r}"
            )
        _choice("mode", self.mode, MODES)
        _positive_int("batch_size", self.batch_size)
        _choice("precision", self.precision, PRECISIONS)
        _choice("checkpointing", self.checkpointing, CHECKPOINTING)
        s = self.sparsity
        if (
            isinstance(s, bool)
            or not isinstance(s, (int, float))
            or not math.isfinite(s)
            or not 0.0 <= s <= MAX_SPARSITY
        ):
            raise ConfigError(
                f"sparsity must be a number with 0 <= sparsity <= {MAX_SPARSITY}, got {s!r}"
            )
        object.__setattr__(self, "sparsity", float(s))
        _choice("sparse_storage", self.sparse_storage, SPARSE_STORAGES)
        _choice("data", self.data, DATA_SOURCES)
        _nonneg_int("num_workers", self.num_workers)
        if not isinstance(self.pin_memory, bool):
            raise ConfigError(f"pin_memory must be True or False, got {self.pin_memory!r}")
        _positive_int("prefetch_factor", self.prefetch_factor)
        _positive_int("data_size", self.data_size)
        _positive_int("steps", self.steps)
        _nonneg_int("warmup", self.warmup)
        _choice("device", self.device, DEVICES)
        if self.budget_bytes is not None:
            object.__setattr__(
                self, "budget_bytes", parse_bytes(self.budget_bytes, name="budget_bytes")
            )
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        # -- rules across fields --
        if self.precision == "int8" and self.mode != "inference":
            raise ConfigError(
                "precision 'int8' (dynamic quantization) works for mode 'inference' only, "
                f"got mode {self.mode!r}"
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
        if unknown:
            raise ConfigError(f"unknown Experiment field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        wl = kw.get("workload")
        if isinstance(wl, str) and wl not in WORKLOADS and ":" in wl:
            kw["workload"] = _resolve_qualname(wl)
        return cls(**kw)
