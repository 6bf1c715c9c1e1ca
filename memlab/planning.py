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
from typing import Any

__all__ = [
    "ALIGNMENT",
    "KINDS",
    "PLANNERS",
    "Plan",
    "REORDER_BUDGET",
    "REORDER_MAX_EVALS",
    "TensorLife",
    "align",
    "best",
    "conflicts",
    "first_fit",
    "greedy_by_breadth",
    "greedy_by_size",
    "greedy_by_size_best_fit",
    "greedy_by_size_reordered",
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


def _neighbours(items: Sequence[TensorLife]) -> dict[int, list[TensorLife]]:
    """For each tensor id, the other non-empty tensors alive at a common op with it (a sweep
    over starts, so the pairs are found once: what ``_place`` would otherwise scan for every
    tensor on every pass)."""
    out: dict[int, list[TensorLife]] = {t.id: [] for t in items}
    live: list[TensorLife] = []
    for t in sorted((t for t in items if t.size > 0), key=lambda t: (t.start, t.id)):
        live = [u for u in live if u.end >= t.start]
        for u in live:
            out[t.id].append(u)
            out[u.id].append(t)
        live.append(t)
    return out


def _place_lowest(
    order: Sequence[TensorLife], neighbours: Mapping[int, list[TensorLife]], alignment: int
) -> tuple[dict[int, int], int, list[int]]:
    """``_place(order, alignment, best_fit=False)`` over precomputed neighbours; also returns,
    for each position in ``order``, the top (offset + aligned size) of the tensor placed there."""
    offsets: dict[int, int] = {}
    tops: list[int] = []
    arena = 0
    for t in order:
        size = align(t.size, alignment)
        busy = sorted(
            (offsets[u.id], offsets[u.id] + align(u.size, alignment))
            for u in neighbours.get(t.id, ())
            if u.id in offsets
        )
        cursor = 0
        for lo, hi in busy:
            if lo - cursor >= size:
                break
            cursor = max(cursor, hi)
        offsets[t.id] = cursor
        tops.append(cursor + size)
        arena = max(arena, cursor + size)
    return offsets, arena, tops


#: The reordering search's default budget, in tensor-neighbour visits over all its placements
#: (one placement visits every tensor and its placed neighbours): about 1-2 s of pure Python
#: on a busy 2-core VM, so a graph of thousands of densely overlapping tensors still plans in
#: seconds, while a graph of hundreds gets the full ``REORDER_MAX_EVALS`` placements.
REORDER_BUDGET = 2_000_000
REORDER_MAX_EVALS = 64


def greedy_by_size_reordered(
    lives: Iterable[TensorLife], alignment: int = ALIGNMENT, max_evals: int | None = None
) -> Plan:
    """Greedy by size, then a deterministic search over the order in which tensors are placed.

    Placement stays TFLite's lowest offset that fits; only the order changes. Why the order is
    the thing to search: for any optimal plan, placing the tensors in the order of their
    optimal offsets, each at its lowest fit, puts each one at or below its optimal offset (the
    tensors placed before it that are alive with it lie below its optimal offset in the optimal
    plan, and placement only lowers them), so *some* order reaches the optimum. Which order is
    the search; this one is a deterministic form of the hill climb of TVM's unified static
    memory planner (``src/tir/usmp/algo/hill_climb.cc``, ``HillClimbAllocator``: re-run greedy
    placement, pick a buffer that sets the arena's top, permute it with buffers that conflict
    with it, keep the order when the arena does not grow). Here the tensor that set the top
    first is moved earlier: to the front, else just before each tensor alive with it that was
    placed before it, the first such move that does not grow the arena and gives an order not
    tried yet is kept. It stops at the lower bound over these tensors (nothing can beat it),
    when no move is left, or after ``max_evals`` placements (each O(n * neighbours); by default
    ``REORDER_MAX_EVALS``, fewer where ``REORDER_BUDGET`` neighbour visits would be exceeded, and
    always at least 2), so it stays fast on large graphs. It is a heuristic, never worse than
    greedy by size (the first placement *is* greedy by size). The case it was built for: a
    residual stream (memlab's ``mlp``) whose block input and output overlap by one op, where
    greedy by size stacks every block's wide tensors at offset 0 and leaves no room for the
    residuals at the bound."""
    if max_evals is not None and (not isinstance(max_evals, int) or max_evals < 1):
        raise ValueError(f"max_evals must be an int >= 1 (placements) or None, got {max_evals!r}")
    items = validate(lives, alignment)
    neighbours = _neighbours(items)
    if max_evals is None:
        work = len(items) + sum(len(v) for v in neighbours.values())
        max_evals = max(2, min(REORDER_MAX_EVALS, REORDER_BUDGET // max(1, work)))
    target = lower_bound(items, alignment, kinds=KINDS)
    order = _by_size(items, alignment)
    offsets, arena, tops = _place_lowest(order, neighbours, alignment)
    seen = {tuple(t.id for t in order)}
    evals = 1
    while arena > target and evals < max_evals:
        pos = tops.index(arena)  # the first tensor placed at the top
        peak = order[pos]
        alive_with = {u.id for u in neighbours[peak.id]}
        targets = [0] + [i for i in range(1, pos) if order[i].id in alive_with]
        moved = False
        for i in targets:
            if evals >= max_evals:
                break
            cand = [*order[:i], peak, *order[i:pos], *order[pos + 1 :]]
            key = tuple(t.id for t in cand)
            if key in seen:
                continue
            seen.add(key)
            evals += 1
            c_offsets, c_arena, c_tops = _place_lowest(cand, neighbours, alignment)
            if c_arena <= arena:
                order, offsets, arena, tops = cand, c_offsets, c_arena, c_tops
                moved = True
                break
        if not moved:
            break
    extra = {"evals": evals, "target": target}
    return Plan("greedy_by_size_reordered", MappingProxyType(offsets), arena, alignment, extra)


#: The suite, in tie-break order: on equal arenas the earlier planner is kept.
PLANNERS: dict[str, Callable[..., Plan]] = {
    "greedy_by_size": greedy_by_size,
    "greedy_by_size_best_fit": greedy_by_size_best_fit,
    "greedy_by_breadth": greedy_by_breadth,
    "greedy_by_size_reordered": greedy_by_size_reordered,
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


# --- memlab.plan: the lifetimes of one eager inference pass, planned ---------------------------


@dataclass(frozen=True)
class MemoryPlan:
    """One inference pass of a model: what eager PyTorch's allocator held, and the arena that
    ahead-of-time planning of the same tensors needs. Pure data (no torch), for the kernel.

    ``eager_peak_bytes``: the allocator's peak during the pass, inputs included, parameters not,
    op-internal scratch included (measured by the native recorder; predicted with ``fake``).
    ``scratch_bytes``: the part of that peak in buffers an op allocated and freed inside itself.
    ``lower_bound_bytes``, ``planner_bytes`` (every planner), ``best_planner``/``best_bytes``:
    over the graph tensors (inputs and op outputs, at ``alignment``), which is what ExecuTorch's
    and TFLite's planners place; op-internal scratch stays outside the arena (ExecuTorch gives
    kernels a separate temp allocator). ``tensors``: every lifetime (op indices into ``ops``),
    ``offsets``: the best plan's offset of each graph tensor, for the arena chart."""

    eager_peak_bytes: int
    scratch_bytes: int
    scratch_max_bytes: int
    inputs_bytes: int
    lower_bound_bytes: int
    planner_bytes: Mapping[str, int]
    best_planner: str
    offsets: Mapping[int, int]
    tensors: tuple[TensorLife, ...]
    ops: tuple[str, ...]
    alignment: int = ALIGNMENT
    predicted: bool = False
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def best_bytes(self) -> int:
        return self.planner_bytes[self.best_planner]

    @property
    def naive_bytes(self) -> int:
        return self.planner_bytes["naive"]

    @property
    def greedy_bytes(self) -> int:
        return self.planner_bytes["greedy_by_size"]

    @property
    def reuse_factor(self) -> float:
        """naive / best: how many times over the best plan reuses its bytes."""
        return self.naive_bytes / self.best_bytes if self.best_bytes else 1.0

    def to_dict(self, *, tensors: bool = False) -> dict[str, object]:
        d: dict[str, object] = {
            "predicted": self.predicted,
            "eager_peak_bytes": self.eager_peak_bytes,
            "scratch_bytes": self.scratch_bytes,
            "scratch_max_bytes": self.scratch_max_bytes,
            "inputs_bytes": self.inputs_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "naive_bytes": self.naive_bytes,
            "greedy_bytes": self.greedy_bytes,
            "planner_bytes": dict(self.planner_bytes),
            "best_planner": self.best_planner,
            "best_bytes": self.best_bytes,
            "reuse_factor": self.reuse_factor,
            "alignment": self.alignment,
            "num_ops": len(self.ops),
            "num_graph_tensors": sum(t.kind == "graph" for t in self.tensors),
            "num_scratch_buffers": sum(t.kind == "scratch" for t in self.tensors),
            "source": self.source,
            "notes": list(self.notes),
        }
        if tensors:
            d["tensors"] = [
                {**t.__dict__, "offset": self.offsets.get(t.id), "op": self.ops[t.start]}
                for t in self.tensors
            ]
        return d


def lifetimes_from_events(
    events: Sequence[tuple[int, int]],
    windows: Sequence[tuple[int, int]],
    uses: Sequence[Sequence[int]],
    modules: Sequence[str],
    inputs: Mapping[int, int],
    outputs: Iterable[int] = (),
) -> tuple[list[TensorLife], int, int, int]:
    """Tensor lifetimes from one pass's allocator events, pure.

    ``events``: ``(addr, delta)`` in order (+bytes allocated, -bytes freed); ``windows[i]``:
    the event indices ``[begin, end)`` during which op ``i`` ran; ``uses[i]``: the storage
    addresses op ``i`` read or wrote (its inputs and outputs); ``modules[i]``: the module it ran
    in; ``inputs``: address -> bytes of the pass's inputs (allocated before it); ``outputs``:
    addresses the pass returns (kept to the last op).

    An allocation freed inside the window of the op that made it is ``scratch`` (start = end =
    that op). Any other is a ``graph`` tensor from the op that made it (or the next op, if made
    between ops) to the last op that used it: its last use, not eager's free, which Python's
    reference counting may delay (what a planner knows is the graph, as ExecuTorch's
    ``update_tensor_lifetime`` in ``exir/memory_planning.py`` sets lifetimes by uses). Returns
    ``(lifetimes, eager peak bytes, scratch bytes at that peak, largest scratch live at once)``;
    the eager peak counts the inputs plus the running sum of the events."""
    n_ops = len(windows)
    if n_ops == 0:
        return [], sum(inputs.values()), 0, 0
    # Which op each event index falls to, and whether inside its window.
    op_of = [0] * len(events)
    inside = [False] * len(events)
    for i, (b, e) in enumerate(windows):
        nxt = windows[i + 1][0] if i + 1 < n_ops else len(events)
        for k in range(b, min(e, len(events))):
            op_of[k], inside[k] = i, True
        for k in range(e, min(nxt, len(events))):
            op_of[k] = min(i + 1, n_ops - 1)  # made between ops: first used by the next
    for k in range(0, min(windows[0][0], len(events))):
        op_of[k] = 0
    # Pair each allocation with its free: spans[j] = (alloc event, free event or None, bytes).
    # An address is reused once freed, so a use names the span open at that address when the
    # op ran (resolved as the events are replayed op by op), never just the address.
    spans: list[tuple[int, int | None, int]] = []
    span_addr: list[int] = []
    open_: dict[int, int] = {}  # addr -> span index
    current: dict[int, int] = {a: -1 - i for i, a in enumerate(inputs)}  # inputs: -1, -2, ...
    last_use: dict[int, int] = {}  # span index (or input's negative index) -> op
    k = 0

    def replay(upto: int) -> None:
        nonlocal k
        while k < min(upto, len(events)):
            addr, delta = events[k]
            if delta > 0:
                open_[addr] = current[addr] = len(spans)
                spans.append((k, None, delta))
                span_addr.append(addr)
            elif addr in open_:  # else: freed something made before the pass
                j = open_.pop(addr)
                spans[j] = (spans[j][0], k, spans[j][2])
            k += 1

    for i, (_, end) in enumerate(windows):
        replay(end)
        for a in uses[i]:
            if a in current:
                last_use[current[a]] = i
    replay(len(events))
    kept = {current[a] for a in outputs if a in current}

    lives: list[TensorLife] = []
    for i, size in enumerate(inputs.values()):
        end = n_ops - 1 if -1 - i in kept else last_use.get(-1 - i, 0)
        lives.append(TensorLife(len(lives), size, 0, end, "input", "graph"))

    is_scratch: list[bool] = []
    for j, (k0, k1, size) in enumerate(spans):
        op0 = op_of[k0]
        scratch = k1 is not None and inside[k0] and inside[k1] and op_of[k1] == op0
        is_scratch.append(scratch)
        if scratch:
            end = op0
        elif j in kept:
            end = n_ops - 1
        else:
            end = max(op0, last_use.get(j, op0))
        kind = "scratch" if scratch else "graph"
        lives.append(TensorLife(len(lives), size, op0, end, modules[op0], kind))

    # Eager's running bytes, and the scratch part of them, event by event.
    delta_all = [0] * (len(events) + 1)
    delta_scr = [0] * (len(events) + 1)
    for (k0, k1, size), scratch in zip(spans, is_scratch, strict=True):
        end_k = len(events) if k1 is None else k1
        delta_all[k0] += size
        delta_all[end_k] -= size
        if scratch:
            delta_scr[k0] += size
            delta_scr[end_k] -= size
    base = sum(inputs.values())
    peak, peak_scratch, scratch_max = base, 0, 0
    running = scr = 0
    for k in range(len(events)):
        running += delta_all[k]
        scr += delta_scr[k]
        if base + running > peak:
            peak, peak_scratch = base + running, scr
        scratch_max = max(scratch_max, scr)
    return lives, peak, peak_scratch, scratch_max


def _trace(model: Any, inputs: tuple[Any, ...], source: Any, fake: bool) -> dict[str, Any]:
    """Run ``model(*inputs)`` once under ``torch.no_grad`` and a dispatch mode that notes each
    aten op's window of allocator events, the storages it touched and the module it ran in."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from memlab import estimate_ops

    def keys(obj: Any) -> list[int]:
        out = []
        for t in tree_flatten(obj)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > 0:
                out.append(source.addr(t))
        return out

    stack: list[str] = []
    ops: list[str] = []
    modules: list[str] = []
    windows: list[tuple[int, int]] = []
    uses: list[list[int]] = []

    class _Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            if func.namespace == "prim":  # prim.device and the like: metadata, not an op
                return func(*args, **kwargs)
            used = keys((args, kwargs))
            begin = source.position()
            out = func(*args, **kwargs)
            if fake:  # what the native recorder would have seen: outputs, then scratch
                real = estimate_ops.real_output_bytes(func, args, kwargs, out)
                for i, t in enumerate(tree_flatten(out)[0]):
                    if isinstance(t, torch.Tensor):
                        source.saw(t, real.get(i))
                internal = estimate_ops.internal_bytes(func, args, kwargs, out)
                if internal > 0:
                    source.transient(internal)
            windows.append((begin, source.position()))
            uses.append(used + keys(out))
            ops.append(str(func.overloadpacket.__name__))
            modules.append(stack[-1] if stack else "")
            return out

    def enter(label: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            stack.append(label)

        return hook

    def leave(*_: Any) -> None:
        stack.pop()

    handles = []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(enter(name or type(model).__name__)))
        handles.append(mod.register_forward_hook(leave))
    inputs_bytes = {}
    for t in tree_flatten(inputs)[0]:
        if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > 0:
            inputs_bytes[source.addr(t)] = int(t.untyped_storage().nbytes())
    if fake:  # parameters, buffers and inputs exist before the pass: not allocations in it
        for t in [*model.parameters(), *model.buffers(), *tree_flatten(inputs)[0]]:
            if isinstance(t, torch.Tensor):
                source.adopt(t, int(t.untyped_storage().nbytes()))
    try:
        source.begin()
        start = source.position()
        with torch.no_grad(), _Ops():
            out = model(*inputs)
        stop = source.position()
        rows = source.events(start, stop)
        source.end()
    finally:
        for h in handles:
            h.remove()
    return {
        "events": [(int(r[1]), int(r[2])) for r in rows],
        "windows": [(b - start, e - start) for b, e in windows],
        "uses": uses,
        "modules": modules,
        "ops": ops,
        "inputs": inputs_bytes,
        "outputs": keys(out),
    }


def _plan_here(
    model_fn: Callable[[], Any] | None,
    inputs_fn: Callable[[], Any] | None,
    experiment: Any,
    fake: bool,
    alignment: int,
) -> MemoryPlan:
    """The worker side of :func:`plan` (imports torch)."""
    import torch

    from memlab.tracking.sources import FakeSource, default_source

    notes: list[str] = []
    fake_mode: Any = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if experiment is not None:
            from memlab.knobs import build_experiment

            small = experiment.replace(
                data="ram", data_size=experiment.batch_size, num_workers=0, device="cpu"
            )
            w = build_experiment(small, "cpu")
            model, x = w.model, next(w.make_batches(1))[0]
            inputs: tuple[Any, ...] = (x,)
            notes.extend(w.notes)
            if experiment.mode != "inference":
                notes.append(
                    f"mode {experiment.mode!r} ignored: a plan is of one inference pass (the "
                    "model in eval mode, no gradients)"
                )
        else:
            assert model_fn is not None and inputs_fn is not None
            model = model_fn()
            raw = inputs_fn()
            inputs = tuple(raw) if isinstance(raw, (tuple, list)) else (raw,)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model_fn must return an nn.Module, got {type(model).__name__}")
        model.eval()
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            from memlab.estimator import _swap_to_fake

            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            with fake_mode:
                _swap_to_fake(model, fake_mode)
                inputs = tuple(
                    fake_mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in inputs
                )
                got = _trace(model, inputs, FakeSource(), fake=True)
            source_name = FakeSource.name
            notes.append(
                "predicted: fake tensors, op-internal buffers from memlab.estimate_ops' rules"
            )
        else:
            source = default_source()
            with torch.no_grad():  # a first pass: lazy one-time allocations stay out
                model(*inputs)
            got = _trace(model, inputs, source, fake=False)
            source_name = source.name
            notes.extend(source.notes)
    lives, peak, scratch, scratch_max = lifetimes_from_events(
        got["events"], got["windows"], got["uses"], got["modules"], got["inputs"], got["outputs"]
    )
    graph = [t for t in lives if t.kind == "graph"]
    plans = plan_all(graph, alignment)
    chosen = best(graph, alignment)
    return MemoryPlan(
        eager_peak_bytes=peak,
        scratch_bytes=scratch,
        scratch_max_bytes=scratch_max,
        inputs_bytes=sum(got["inputs"].values()),
        lower_bound_bytes=lower_bound(graph, alignment),
        planner_bytes={name: p.arena_bytes for name, p in plans.items()},
        best_planner=chosen.planner,
        offsets=dict(chosen.offsets),
        tensors=tuple(lives),
        ops=tuple(got["ops"]),
        alignment=alignment,
        predicted=fake,
        source=source_name,
        notes=tuple(notes),
    )


def plan(
    model_fn: Any,
    inputs_fn: Callable[[], Any] | None = None,
    *,
    fake: bool = False,
    alignment: int = ALIGNMENT,
    in_worker: bool = True,
) -> MemoryPlan:
    """Plan one inference pass: ``plan(model_fn, inputs_fn)`` (``model_fn()`` an ``nn.Module``,
    ``inputs_fn()`` its input tensor or a tuple of them) or ``plan(experiment)`` (its model in
    eval mode on one batch). ``fake=True`` runs under ``FakeTensorMode`` (nothing allocated, a
    large model planned on a laptop; eager's figures are then predicted). Torch runs in memlab's
    service worker (``memlab.runner.call``) unless ``in_worker=False``."""
    from memlab.config import Experiment

    experiment = model_fn if isinstance(model_fn, Experiment) else None
    if experiment is None:
        if not callable(model_fn):
            raise TypeError(
                f"model_fn must be an Experiment or a callable returning an nn.Module, "
                f"got {model_fn!r}"
            )
        if inputs_fn is None or not callable(inputs_fn):
            raise TypeError("inputs_fn must be a callable returning the model's input(s)")
    elif inputs_fn is not None:
        raise TypeError("plan(experiment) takes no inputs_fn: the experiment's data is used")
    validate([], alignment)
    if not in_worker:
        return _plan_here(None if experiment else model_fn, inputs_fn, experiment, fake, alignment)
    from memlab import runner

    return runner.call(  # type: ignore[no-any-return]
        _plan_here, None if experiment else model_fn, inputs_fn, experiment, fake, alignment
    )
