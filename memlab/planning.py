"""Ahead-of-time memory planning: every tensor of one inference pass placed in one arena.

Edge runtimes do not allocate tensor by tensor: they know every intermediate tensor's size and
lifetime before running and give each a fixed offset in one buffer (TFLite's ``ArenaPlanner``,
ExecuTorch's ``MemoryPlanningPass``). This module is that planning, as small pure functions over
lifetimes, so a plan can be computed in the notebook kernel (no torch here) and compared with
what eager PyTorch's allocator held.

    lives = [TensorLife(id=0, size=4096, start=0, end=1), ...]
    plan = best(lives)            # runs every planner in PLANNERS, keeps the smallest arena
    plan.offsets[0], plan.arena_bytes, plan.planner
    lower_bound(lives)            # no plan of these tensors can be smaller

Lifetimes are op indices, both ends inclusive: a tensor is alive at op ``t`` when
``start <= t <= end``. Two tensors alive at a common op must not share a byte.

Alignment: every size is rounded up to ``ALIGNMENT`` = 64 bytes, so every offset is a multiple
of 64 (TFLite's ``kDefaultTensorAlignment`` in ``tensorflow/lite/arena_planner.h``; one cache
line, and what PyTorch's CPU allocator aligns to, ``c10/core/alignment.h``
``gAlignment = 64``). ExecuTorch aligns to 16 (``ALIGNMENT = 16`` in ``exir/tensor.py``,
applied by ``TensorSpec.realign`` in ``exir/memory_planning.py``'s ``greedy`` and ``naive``);
every function here takes ``alignment=`` so a comparison with ExecuTorch can use its 16.

The suite is shaped like ExecuTorch's ``MemoryPlanningAlgorithmSuite``
(``exir/memory_planning.py``): several planners run, the one with the smallest arena is kept,
ties going to the earlier planner in ``PLANNERS``. The placement itself is not ExecuTorch's:
its ``greedy`` groups tensors into "shared objects" (``pick_shared_obj``) whose sizes are
summed, where these planners give each tensor a byte offset against the tensors alive with it
(TFLite's ``SimpleMemoryArena::Allocate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ALIGNMENT",
    "KINDS",
    "PLANNERS",
    "Plan",
    "TensorLife",
    "align",
    "best",
    "conflicts",
    "first_fit",
    "greedy_by_breadth",
    "greedy_by_size",
    "greedy_by_size_best_fit",
    "lower_bound",
    "naive",
    "plan_all",
    "validate",
]

#: Bytes every size is rounded up to (see the module docstring for why 64).
ALIGNMENT = 64

#: What a tensor is: ``graph`` (an op's output, which later ops read) or ``scratch`` (a buffer an
#: op allocates and frees inside itself: im2col columns, a matmul's packed panels).
KINDS: tuple[str, ...] = ("graph", "scratch")


@dataclass(frozen=True)
class TensorLife:
    """One tensor's size in bytes and the ops it is alive across (inclusive op indices)."""

    id: int
    size: int
    start: int
    end: int
    module: str = ""
    kind: str = "graph"


@dataclass(frozen=True)
class Plan:
    """Where a planner put each tensor: ``offsets[id]`` in an arena of ``arena_bytes``."""

    planner: str
    offsets: Mapping[int, int]
    arena_bytes: int
    alignment: int = ALIGNMENT
    extra: Mapping[str, object] = field(default_factory=dict)


def align(n: int, alignment: int = ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


def validate(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> list[TensorLife]:
    """The lifetimes as a list, or a ValueError naming the first bad one and what is allowed."""
    if not isinstance(alignment, int) or alignment < 1:
        raise ValueError(f"alignment must be a positive int of bytes, got {alignment!r}")
    out = list(lives)
    seen: set[int] = set()
    for t in out:
        if not isinstance(t, TensorLife):
            raise ValueError(f"expected TensorLife items, got {type(t).__name__}: {t!r}")
        if t.id in seen:
            raise ValueError(f"tensor id {t.id} appears twice; ids must be unique")
        seen.add(t.id)
        if t.size < 0:
            raise ValueError(f"tensor {t.id}: size must be >= 0 bytes, got {t.size}")
        if t.start < 0 or t.end < t.start:
            raise ValueError(
                f"tensor {t.id}: need 0 <= start <= end (inclusive op indices), "
                f"got start={t.start}, end={t.end}"
            )
        if t.kind not in KINDS:
            raise ValueError(f"tensor {t.id}: kind must be one of {KINDS}, got {t.kind!r}")
    return out


def _overlap_in_time(a: TensorLife, b: TensorLife) -> bool:
    return a.start <= b.end and b.start <= a.end


def lower_bound(
    lives: Iterable[TensorLife], alignment: int = ALIGNMENT, kinds: Sequence[str] = ("graph",)
) -> int:
    """Most (aligned) bytes of tensors of ``kinds`` alive at one op: no plan of them is smaller,
    since those tensors need disjoint bytes. A sweep over start/end events."""
    events: list[tuple[int, int]] = []
    for t in validate(lives, alignment):
        if t.kind in kinds:
            size = align(t.size, alignment)
            events.append((t.start, size))
            events.append((t.end + 1, -size))  # inclusive end: gone from op end+1
    # Frees before allocations at the same op index (end+1 of one, start of another).
    events.sort(key=lambda e: (e[0], e[1]))
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def conflicts(lives: Iterable[TensorLife], plan: Plan) -> list[tuple[int, int]]:
    """Pairs of tensor ids alive at a common op whose byte ranges overlap (empty for a valid
    plan). Zero-byte tensors occupy no bytes and never conflict."""
    items = [t for t in lives if t.size > 0]
    bad: list[tuple[int, int]] = []
    for i, a in enumerate(items):
        a0 = plan.offsets[a.id]
        a1 = a0 + align(a.size, plan.alignment)
        for b in items[i + 1 :]:
            if not _overlap_in_time(a, b):
                continue
            b0 = plan.offsets[b.id]
            if a0 < b0 + align(b.size, plan.alignment) and b0 < a1:
                bad.append((a.id, b.id))
    return bad


# --- placement -------------------------------------------------------------------------------


def _place(
    order: Sequence[TensorLife], alignment: int, best_fit: bool
) -> tuple[dict[int, int], int]:
    """Place tensors one by one in ``order``: each goes into a gap between the tensors already
    placed that are alive with it. ``best_fit=False``: the lowest offset that fits;
    ``best_fit=True``: the smallest gap that fits (TFLite's ``SimpleMemoryArena::Allocate``,
    ``tensorflow/lite/simple_memory_arena.cc``), else above them all."""
    placed: list[tuple[TensorLife, int, int]] = []  # (tensor, offset, aligned size)
    offsets: dict[int, int] = {}
    arena = 0
    for t in order:
        size = align(t.size, alignment)
        busy = sorted((off, off + sz) for u, off, sz in placed if _overlap_in_time(t, u))
        chosen: int | None = None
        best_gap: int | None = None
        cursor = 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size:
                if not best_fit:
                    chosen = cursor
                    break
                if best_gap is None or gap < best_gap:
                    chosen, best_gap = cursor, gap
            cursor = max(cursor, hi)
        if chosen is None:
            chosen = cursor
        offsets[t.id] = chosen
        if size:
            placed.append((t, chosen, size))
        arena = max(arena, chosen + size)
    return offsets, arena


def naive(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> Plan:
    """Each tensor its own buffer, one after the other (ExecuTorch's ``naive``): no reuse."""
    offsets: dict[int, int] = {}
    total = 0
    for t in validate(lives, alignment):
        offsets[t.id] = total
        total += align(t.size, alignment)
    return Plan("naive", MappingProxyType(offsets), total, alignment)


def first_fit(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> Plan:
    """In allocation order (start, then id), each at the lowest offset that fits: what an online
    allocator that never moves memory could at best do with a perfect free list."""
    order = sorted(validate(lives, alignment), key=lambda t: (t.start, t.id))
    offsets, arena = _place(order, alignment, best_fit=False)
    return Plan("first_fit", MappingProxyType(offsets), arena, alignment)


def _by_size(lives: Iterable[TensorLife], alignment: int) -> list[TensorLife]:
    # Largest first; ties by earlier start, then id, so the order (and the plan) is deterministic.
    return sorted(
        validate(lives, alignment), key=lambda t: (-align(t.size, alignment), t.start, t.id)
    )


def greedy_by_size(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> Plan:
    """Largest first, each at the lowest offset not overlapping a tensor alive with it (the order
    of TFLite's ``ArenaPlanner::CreateTensorAllocationVector``, and of ExecuTorch's ``greedy``,
    which sorts specs by ``allocated_memory``, largest first)."""
    offsets, arena = _place(_by_size(lives, alignment), alignment, best_fit=False)
    return Plan("greedy_by_size", MappingProxyType(offsets), arena, alignment)


def greedy_by_size_best_fit(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> Plan:
    """Largest first, each in the smallest gap that fits (TFLite's ``SimpleMemoryArena``)."""
    offsets, arena = _place(_by_size(lives, alignment), alignment, best_fit=True)
    return Plan("greedy_by_size_best_fit", MappingProxyType(offsets), arena, alignment)


def greedy_by_breadth(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> Plan:
    """Ops in order of their breadth (bytes alive at the op), widest first; at each op its
    unplaced tensors largest first, each in the smallest gap that fits. "Greedy by Breadth" of
    Pisarchyk and Lee, *Efficient Memory Management for Deep Neural Net Inference* (2020), sec. 4:
    the widest op constrains the arena most, so its tensors are packed first."""
    items = validate(lives, alignment)
    if not items:
        return Plan("greedy_by_breadth", MappingProxyType({}), 0, alignment)
    horizon = max(t.end for t in items) + 1
    breadth = [0] * horizon
    at_op: list[list[TensorLife]] = [[] for _ in range(horizon)]
    for t in items:
        for op in range(t.start, t.end + 1):
            breadth[op] += align(t.size, alignment)
            at_op[op].append(t)
    order: list[TensorLife] = []
    done: set[int] = set()
    for op in sorted(range(horizon), key=lambda i: (-breadth[i], i)):
        for t in sorted(at_op[op], key=lambda t: (-align(t.size, alignment), t.start, t.id)):
            if t.id not in done:
                done.add(t.id)
                order.append(t)
    offsets, arena = _place(order, alignment, best_fit=True)
    return Plan("greedy_by_breadth", MappingProxyType(offsets), arena, alignment)


#: The suite, in tie-break order: on equal arenas the earlier planner is kept.
PLANNERS: dict[str, Callable[..., Plan]] = {
    "greedy_by_size": greedy_by_size,
    "greedy_by_size_best_fit": greedy_by_size_best_fit,
    "greedy_by_breadth": greedy_by_breadth,
    "first_fit": first_fit,
    "naive": naive,
}


def plan_all(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> dict[str, Plan]:
    """Every planner of ``PLANNERS`` over the same lifetimes, by name."""
    items = validate(lives, alignment)
    return {name: fn(items, alignment) for name, fn in PLANNERS.items()}


def best(lives: Iterable[TensorLife], alignment: int = ALIGNMENT) -> Plan:
    """The plan with the smallest arena over ``PLANNERS`` (ties: the earlier planner), as
    ExecuTorch's ``MemoryPlanningAlgorithmSuite.__call__`` keeps ``min`` of its algorithms."""
    plans = plan_all(lives, alignment)
    return min(plans.values(), key=lambda p: (p.arena_bytes, list(PLANNERS).index(p.planner)))
