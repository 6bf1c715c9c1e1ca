"""Gradient checkpointing: keep a block's input, drop what it saved, recompute it in backward.

Uses ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, the variant PyTorch
recommends (it supports inputs that do not require grad and nested autograd; the docs say
``use_reentrant`` must be passed explicitly). A wrapped block saves only its inputs for backward;
its activations are recomputed during backward, so activation memory falls to about the block
inputs plus one block's activations, at the price of one extra forward per wrapped block.

The block's ``forward`` is overridden per instance (a bound method), not by wrapping it in a new
module: parameter names, ``state_dict`` keys and the per-module activation names stay the same,
and ``copy.deepcopy`` re-binds the bound method to the copy.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from memlab.config import CHECKPOINTING
from memlab.workloads.base import Workload

__all__ = ["apply_checkpointing", "checkpointed_blocks", "POLICIES"]

#: What each of config's ``CHECKPOINTING`` names means: checkpoint every n-th block (0: none).
POLICIES: dict[str, int] = {"off": 0, "every-block": 1, "every-other-block": 2}
_FLAG = "_memlab_checkpointed"


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    inner = type(self).forward.__get__(self)
    if not torch.is_grad_enabled():
        return inner(*args, **kwargs)  # nothing is saved for backward: no need to checkpoint
    return checkpoint(inner, *args, use_reentrant=False, **kwargs)


def _wrap(block: nn.Module) -> None:
    if getattr(block, _FLAG, False):
        return
    block.forward = types.MethodType(_checkpointed_forward, block)  # type: ignore[method-assign]
    setattr(block, _FLAG, True)


def _unwrap(block: nn.Module) -> None:
    if getattr(block, _FLAG, False):
        del block.forward
        delattr(block, _FLAG)


def checkpointed_blocks(workload: Workload) -> list[int]:
    """Indices (in ``workload.blocks``) of the blocks that are checkpointed now."""
    return [i for i, b in enumerate(workload.blocks) if getattr(b, _FLAG, False)]


def apply_checkpointing(workload: Workload, policy: str | int) -> Workload:
    """Checkpoint every block (``"every-block"``), every other one starting with the first
    (``"every-other-block"``), every ``n``-th (an int ``n >= 1``), or none (``"off"``, which also
    undoes an earlier call). Changes ``workload`` in place and returns it."""
    if isinstance(policy, bool) or not isinstance(policy, (str, int)):
        raise ValueError(
            f"checkpointing must be one of {list(CHECKPOINTING)} or an int >= 1, got {policy!r}"
        )
    if isinstance(policy, str):
        if policy not in CHECKPOINTING:
            raise ValueError(f"checkpointing must be one of {list(CHECKPOINTING)}, got {policy!r}")
        every = POLICIES[policy]
    else:
        if policy < 1:
            raise ValueError(f"checkpointing every n-th block needs n >= 1, got {policy}")
        every = policy
    if every and not workload.blocks:
        raise ValueError(f"workload {workload.name!r} lists no blocks to checkpoint")
    for i, block in enumerate(workload.blocks):
        if every and i % every == 0:
            _wrap(block)
        else:
            _unwrap(block)
    workload.applied["checkpointing"] = policy
    n = len(checkpointed_blocks(workload))
    workload.measures["checkpointed_blocks"] = n
    if n and workload.mode != "train":
        workload.notes.append(
            "checkpointing has no effect in inference: no activations are kept for backward"
        )
    elif n:
        workload.notes.append(
            f"checkpointing {n} of {len(workload.blocks)} blocks: their activations are "
            "recomputed in backward (one extra forward each)"
        )
    return workload
