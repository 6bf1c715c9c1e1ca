"""Architectures of the built-in model families at other sizes: depth, width, kernel size and
expansion, for lab 11's architecture search (``memlab.nas``).

An ``Architecture`` is pure data with a name that says it all (``cnn_d2_w32_k5``,
``mlp_d3_w128_e4``, ``transformer_d2_w32_e2``), so an ``Experiment`` names one as the workload
``memlab.workloads.jobs:architecture.<name>`` (see ``memlab.workloads.jobs.architecture``): the
experiment stays a plain, storable record, and the run worker and the estimator both build it
through ``memlab.workloads.build_workload`` like any user factory. Only ``build_model`` imports
torch, inside the function.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Architecture", "FAMILIES", "TRANSFORMER_HEADS"]

#: The model families (the built-in workloads whose data, layout and learning rate they share).
FAMILIES = ("mlp", "cnn", "transformer")
#: Attention heads of every searched transformer (its width must be a multiple of this).
TRANSFORMER_HEADS = 4

_NAME = re.compile(r"(mlp|cnn|transformer)_d(\d+)_w(\d+)_(?:k(\d+)|e(\d+))")


@dataclass(frozen=True)
class Architecture:
    """One model: ``family`` (``mlp``, ``cnn``, ``transformer``), ``depth`` repeated blocks of
    ``width`` features (MLP and transformer) or channels (CNN); ``kernel`` is the CNN blocks'
    convolution size (odd; 3 is the built-in CNN), ``expansion`` the MLP/transformer blocks'
    hidden size as a multiple of the width (4 is the built-in models'). A field a family does
    not use must keep its default (so one model has one name)."""

    family: str
    depth: int
    width: int
    kernel: int = 3
    expansion: int = 4

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        for name in ("depth", "width", "kernel", "expansion"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {self.kernel}")
        if self.family == "cnn" and self.expansion != 4:
            raise ValueError("expansion applies to mlp and transformer only; keep it 4 for cnn")
        if self.family != "cnn" and self.kernel != 3:
            raise ValueError("kernel applies to cnn only; keep it 3 for mlp and transformer")
        if self.family == "transformer" and self.width % TRANSFORMER_HEADS:
            raise ValueError(
                f"a transformer's width must be a multiple of its {TRANSFORMER_HEADS} heads, "
                f"got {self.width}"
            )

    @property
    def name(self) -> str:
        tail = f"k{self.kernel}" if self.family == "cnn" else f"e{self.expansion}"
        return f"{self.family}_d{self.depth}_w{self.width}_{tail}"

    @classmethod
    def parse(cls, name: str) -> Architecture:
        """The architecture ``name`` (what ``.name`` writes) describes."""
        m = _NAME.fullmatch(name)
        if m is None:
            raise ValueError(
                f"not an architecture name: {name!r} (expected e.g. cnn_d2_w32_k5, "
                "mlp_d3_w128_e4, transformer_d2_w32_e2)"
            )
        family, d, w, k, e = m.groups()
        if family == "cnn" and k is None or family != "cnn" and e is None:
            raise ValueError(f"{name!r}: a cnn names its kernel (k), the others expansion (e)")
        return cls(family, int(d), int(w), kernel=int(k or 3), expansion=int(e or 4))

    @property
    def workload(self) -> Callable[..., Any]:
        """The workload factory to name as ``Experiment(workload=...)``: it builds this
        architecture (stored as ``memlab.workloads.jobs:architecture.<name>``)."""
        from memlab.workloads.jobs import architecture

        return getattr(architecture, self.name)  # type: ignore[no-any-return]

    def build_model(self) -> nn.Module:
        """The model, on the CPU, with the current torch seed's weights."""
        from torch import nn

        from memlab.workloads.models import CNN, MLP, Transformer

        if self.family == "mlp":
            return MLP(dim=self.width, hidden=self.width * self.expansion, depth=self.depth)
        if self.family == "transformer":
            return Transformer(
                dim=self.width,
                heads=TRANSFORMER_HEADS,
                hidden=self.width * self.expansion,
                depth=self.depth,
            )
        model = CNN(channels=self.width, depth=self.depth)
        if self.kernel != 3:  # the built-in ConvBlock is 3x3: the other sizes replace its conv
            for block in model.blocks:
                block.conv = nn.Conv2d(  # type: ignore[union-attr]
                    self.width, self.width, self.kernel, padding=self.kernel // 2, bias=False
                )
        return model
