"""Turn the recorder's raw allocation events into categories, phases and a timeline.

Pure numpy, no torch: every rule here is tested on hand-written event streams.

A *block* is one allocation and its matching free (the next free at the same address). Each
block gets exactly one category, decided once its whole life is known:

1. marked by the tracker while alive as a parameter / gradient / optimizer state / input
   (gradients are marked from ``register_post_accumulate_grad_hook`` and the optimizer's step
   pre-hook, optimizer state from its step post-hook, all of them again at exit);
2. allocated inside a forward (or a checkpoint recompute) and still alive when that forward
   ended: ``activations`` (saved for backward, or the output);
3. allocated in a user-marked ``data`` phase and alive after it: ``inputs``;
4. alive at the end of the block, allocated outside any phase: ``other``;
5. everything else -- op-internal buffers, intermediate results, optimizer scratch: ``temporaries``.

At every step mark (``Tracker.step``) the blocks alive then are summed by category and grouped
by where they were allocated (phase, module, and the user's source line when recorded):
:func:`alive_report`, the per-step "still alive" report that shows a leak's growth.

Blocks alive at entry come in with the category the tracker found for their storage. A free of a
block that was neither allocated inside the block nor counted at entry is dropped, as
torch.profiler drops it (c10/core/CPUAllocator.cpp, ProfiledCPUMemoryReporter::Delete).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from memlab.timeline import (
    CATEGORIES,
    PHASES,
    AliveReport,
    AliveSite,
    AliveStep,
    PeakBlock,
    PeakReport,
    Timeline,
)

__all__ = [
    "Mark",
    "CategoryMark",
    "Attribution",
    "attribute",
    "DEFAULT_TOP_SITES",
    "DEFAULT_TOP_BLOCKS",
]

#: How many allocation sites each step of the alive report keeps (largest first).
DEFAULT_TOP_SITES = 10
#: How many blocks (and sites) the peak report keeps (largest first).
DEFAULT_TOP_BLOCKS = 20

_CAT = {c: i for i, c in enumerate(CATEGORIES)}
_PHASE = {p: i for i, p in enumerate(PHASES)}
# When two marks claim one block, the first in this order wins (a tied weight is a parameter).
_PRIORITY = ("parameters", "gradients", "optimizer_state", "inputs")
_FORWARDISH = (_PHASE["forward"], _PHASE["inference"])


@dataclass(frozen=True)
class Mark:
    """Something that happened between two events: ``idx`` events had been recorded by then.

    ``kind`` is ``phase`` (``value`` names the phase entered), ``recompute_start``,
    ``recompute_end`` or ``step`` (a step boundary; ``value`` is its label).
    """

    idx: int
    t_ns: int
    kind: str
    value: str = ""


@dataclass(frozen=True)
class CategoryMark:
    """The block at ``addr`` that is alive after ``idx`` events belongs to ``category``."""

    idx: int
    addr: int
    category: str
    t_ns: int = 0


@dataclass
class Attribution:
    timeline: Timeline
    peak_bytes: int
    peak_by_category: dict[str, int]
    entry_by_category: dict[str, int]
    end_by_category: dict[str, int]
    peak_by_phase: dict[str, int]
    activations_by_module: dict[str, int]
    peak_time_s: float
    peak_phase: str
    block_alloc_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    block_cat: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: What was alive at each step mark; None when no step was marked.
    alive: AliveReport | None = None
    #: What was alive at the peak, largest first.
    peak_report: PeakReport | None = None

    @property
    def block_category(self) -> dict[int, str]:
        """Category of every block allocated inside, keyed by its allocation event's index."""
        pairs = zip(self.block_alloc_idx, self.block_cat, strict=True)
        return {int(b): CATEGORIES[int(c)] for b, c in pairs}


def _segments(
    marks: Sequence[Mark], n: int, initial_phase: str
) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Phase of every event; forward, checkpoint-recompute and data segments."""
    phase_of = np.full(n, _PHASE[initial_phase], dtype=np.int8)
    phase_marks = [m for m in marks if m.kind == "phase"]
    bounds = [(0, _PHASE[initial_phase])] + [(m.idx, _PHASE[m.value]) for m in phase_marks]
    fwd: list[tuple[int, int]] = []
    data: list[tuple[int, int]] = []
    for k, (start, code) in enumerate(bounds):
        end = bounds[k + 1][0] if k + 1 < len(bounds) else n
        phase_of[start:end] = code
        if code in _FORWARDISH:
            fwd.append((start, end))
        elif code == _PHASE["data"]:
            data.append((start, end))
    recompute: list[tuple[int, int]] = []
    depth, start = 0, 0
    for m in marks:
        if m.kind == "recompute_start":
            if depth == 0:
                start = m.idx
            depth += 1
        elif m.kind == "recompute_end" and depth > 0:
            depth -= 1
            if depth == 0:
                recompute.append((start, m.idx))
    return phase_of, fwd, recompute, data


def _in_segment(idx: np.ndarray, segs: list[tuple[int, int]]) -> np.ndarray:
    """End of the segment holding each index (-1 where none holds it)."""
    out = np.full(len(idx), -1, dtype=np.int64)
    for s, e in segs:
        if e > s:
            inside = (idx >= s) & (idx < e)
            out[inside] = e
    return out


def attribute(
    events: np.ndarray,
    *,
    t0_ns: int,
    entry_blocks: Mapping[int, tuple[int, str]],
    marks: Sequence[Mark] = (),
    category_marks: Sequence[CategoryMark] = (),
    initial_phase: str = "other",
    module_names: Mapping[int, str] | None = None,
    source: str = "cpu-allocator",
    line_of_event: np.ndarray | None = None,
    line_names: Sequence[str] = (),
    top_sites: int = DEFAULT_TOP_SITES,
    op_of_event: np.ndarray | None = None,
    op_names: Sequence[str] = (),
    top_blocks: int = DEFAULT_TOP_BLOCKS,
) -> Attribution:
    """Categorize ``events`` (rows of ``t_ns, addr, delta, tag``) recorded inside one block.

    ``entry_blocks`` maps the address of every storage counted at entry to ``(bytes, category)``.
    ``tag`` is the id of the innermost module running at the allocation (0: none).
    ``line_of_event[i]`` indexes ``line_names`` with the source line of event ``i`` (-1: none);
    it names the sites of the alive report, which keeps ``top_sites`` sites per step.
    ``op_of_event[i]`` indexes ``op_names`` with the ATen op of event ``i`` (-1: none); the
    peak report keeps the ``top_blocks`` largest blocks and sites alive at the peak.
    """
    ev = np.asarray(events, dtype=np.int64).reshape(-1, 4)
    n = len(ev)
    t_ns, addr, delta, tag = ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3]
    is_alloc = delta > 0

    # -- pair every free with the allocation before it at the same address ----------------
    order = np.lexsort((np.arange(n), addr))
    s_addr, s_alloc = addr[order], is_alloc[order]
    prev_same = np.zeros(n, dtype=bool)
    if n > 1:
        prev_same[1:] = (s_addr[1:] == s_addr[:-1]) & s_alloc[:-1]
    block_of = np.full(n, -1, dtype=np.int64)  # alloc event index of each event's block
    block_of[order[s_alloc]] = order[s_alloc]
    paired_free = (~s_alloc) & prev_same
    block_of[order[paired_free]] = order[np.flatnonzero(paired_free) - 1]
    free_idx = np.full(n, n, dtype=np.int64)  # for alloc events: index of their free (n: never)
    free_idx[block_of[order[paired_free]]] = order[paired_free]

    # -- blocks alive at entry: their frees keep the entry category; unknown frees drop -----
    entry_cat = np.full(n, -1, dtype=np.int64)
    for i in np.flatnonzero((~is_alloc) & (block_of < 0)):
        known = entry_blocks.get(int(addr[i]))
        if known is not None and -delta[i] == known[0]:
            entry_cat[i] = _CAT[known[1]]

    # -- category of every block allocated inside ---------------------------------------------
    phase_of, fwd_segs, recompute_segs, data_segs = _segments(marks, n, initial_phase)
    alloc_idx = np.flatnonzero(is_alloc)
    cat = np.full(n, _CAT["temporaries"], dtype=np.int64)  # indexed by alloc event
    fwd_end = _in_segment(alloc_idx, fwd_segs + recompute_segs)
    act = (fwd_end >= 0) & (free_idx[alloc_idx] >= fwd_end)
    cat[alloc_idx[act]] = _CAT["activations"]
    data_end = _in_segment(alloc_idx, data_segs)
    inp = (data_end >= 0) & (free_idx[alloc_idx] >= data_end)
    cat[alloc_idx[inp]] = _CAT["inputs"]
    other = (~act) & (~inp) & (free_idx[alloc_idx] == n) & (phase_of[alloc_idx] == _PHASE["other"])
    cat[alloc_idx[other]] = _CAT["other"]

    # marks: the block at addr alive at idx is the last allocation there before idx. Done on
    # arrays: each (address, index) pair becomes one sortable key, address by its rank.
    if len(category_marks) and len(alloc_idx):
        a_addr_all = addr[alloc_idx]
        uniq = np.unique(a_addr_all)
        m_addr = np.fromiter((m.addr for m in category_marks), np.int64, len(category_marks))
        m_idx = np.fromiter((m.idx for m in category_marks), np.int64, len(category_marks))
        m_rank = np.fromiter(
            (_PRIORITY.index(m.category) for m in category_marks), np.int64, len(category_marks)
        )
        pos = np.searchsorted(uniq, m_addr)
        known = (pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == m_addr)
        span = n + 1
        a_key = np.searchsorted(uniq, a_addr_all) * span + alloc_idx
        order_k = np.argsort(a_key, kind="stable")
        a_key, a_blocks = a_key[order_k], alloc_idx[order_k]
        m_key = pos * span + m_idx
        k = np.searchsorted(a_key, m_key, side="left") - 1
        ok = known & (k >= 0)
        k = np.maximum(k, 0)
        ok &= (a_key[k] // span) == pos  # the same address
        b = a_blocks[k]
        ok &= free_idx[b] >= m_idx  # still alive when marked
        best = np.full(n, len(_PRIORITY), dtype=np.int64)
        np.minimum.at(best, b[ok], m_rank[ok])
        hit = best < len(_PRIORITY)
        cat[hit] = np.asarray([_CAT[c] for c in _PRIORITY], dtype=np.int64)[best[hit]]

    # -- running bytes per category ---------------------------------------------------------
    ev_cat = np.where(block_of >= 0, cat[np.maximum(block_of, 0)], entry_cat)
    keep = ev_cat >= 0
    k_idx = np.flatnonzero(keep)
    entry_by = {c: 0 for c in CATEGORIES}
    for nbytes, c in entry_blocks.values():
        entry_by[c] += int(nbytes)
    running = np.zeros((len(CATEGORIES), len(k_idx) + 1), dtype=np.int64)
    running[:, 0] = [entry_by[c] for c in CATEGORIES]
    if len(k_idx):
        steps = np.zeros((len(CATEGORIES), len(k_idx)), dtype=np.int64)
        steps[ev_cat[k_idx], np.arange(len(k_idx))] = delta[k_idx]
        running[:, 1:] = running[:, :1] + np.cumsum(steps, axis=1)
    total = running.sum(axis=0)
    peak_at = int(np.argmax(total))  # first time the maximum is reached
    t = np.concatenate([[0.0], (t_ns[k_idx] - t0_ns) / 1e9])
    first_phase = _PHASE[initial_phase]
    ph = np.concatenate([[first_phase], phase_of[k_idx]]).astype(np.int8)

    peak_by_phase: dict[str, int] = {}
    for code, name in enumerate(PHASES):
        sel = ph == code
        if sel.any():
            peak_by_phase[name] = int(total[sel].max())

    names = module_names or {}
    acts: dict[str, int] = {}
    # Per module: what each forward saved (recomputes in backward are transient; not counted).
    act_blocks = alloc_idx[cat[alloc_idx] == _CAT["activations"]]
    seg_of = _in_segment(act_blocks, fwd_segs)
    act_blocks, seg_of = act_blocks[seg_of >= 0], seg_of[seg_of >= 0]
    if len(act_blocks):
        per: dict[tuple[int, str], int] = {}
        for b, s in zip(act_blocks.tolist(), seg_of.tolist(), strict=True):
            key = (s, names.get(int(tag[b]), "(outside modules)"))
            per[key] = per.get(key, 0) + int(delta[b])
        for (_, name), v in per.items():
            acts[name] = max(acts.get(name, 0), v)

    mark_list = tuple(
        ((m.t_ns - t0_ns) / 1e9, m.value if m.kind in ("phase", "step") else m.kind)
        for m in marks
        if m.kind in ("phase", "step")
    )
    timeline = Timeline(
        t=t,
        phase=ph,
        by_category={c: running[i] for i, c in enumerate(CATEGORIES)},
        marks=mark_list,
        source=source,
    )
    alive = _alive_report(
        marks,
        t0_ns=t0_ns,
        running=running,
        kept=k_idx,
        blocks=_Blocks(
            alloc=alloc_idx,
            free=free_idx[alloc_idx],
            nbytes=delta[alloc_idx],
            cat=cat[alloc_idx],
            phase=phase_of[alloc_idx].astype(np.int64),
            tag=tag[alloc_idx],
            line=(
                np.full(len(alloc_idx), -1, dtype=np.int64)
                if line_of_event is None
                else np.asarray(line_of_event, dtype=np.int64)[alloc_idx]
            ),
        ),
        entry_blocks=entry_blocks,
        entry_frees=(np.flatnonzero(entry_cat >= 0), entry_cat, delta),
        module_names=names,
        line_names=line_names,
        top_sites=top_sites,
    )
    peak_report = _peak_report(
        peak_at=peak_at,
        kept=k_idx,
        t_s=float(t[peak_at]),
        phase=PHASES[int(ph[peak_at])],
        total=int(total[peak_at]),
        t0_ns=t0_ns,
        t_ns=t_ns,
        addr=addr,
        delta=delta,
        alloc_idx=alloc_idx,
        free_of_alloc=free_idx[alloc_idx],
        cat=cat,
        phase_of=phase_of,
        tag=tag,
        line_of=line_of_event,
        line_names=line_names,
        op_of=op_of_event,
        op_names=op_names,
        entry_blocks=entry_blocks,
        entry_frees=np.flatnonzero(entry_cat >= 0),
        module_names=names,
        top_blocks=top_blocks,
    )
    return Attribution(
        peak_report=peak_report,
        alive=alive,
        timeline=timeline,
        peak_bytes=int(total[peak_at]),
        peak_by_category={c: int(running[i, peak_at]) for i, c in enumerate(CATEGORIES)},
        entry_by_category=entry_by,
        end_by_category={c: int(running[i, -1]) for i, c in enumerate(CATEGORIES)},
        peak_by_phase=peak_by_phase,
        activations_by_module=dict(sorted(acts.items(), key=lambda kv: -kv[1])),
        peak_time_s=float(t[peak_at]),
        peak_phase=PHASES[int(ph[peak_at])],
        block_alloc_idx=alloc_idx,
        block_cat=cat[alloc_idx],
    )


@dataclass
class _Blocks:
    """The blocks allocated inside, one entry each: allocation and free event index (free: n
    when never freed), bytes, category, phase and tag of the allocation, source-line code."""

    alloc: np.ndarray
    free: np.ndarray
    nbytes: np.ndarray
    cat: np.ndarray
    phase: np.ndarray
    tag: np.ndarray
    line: np.ndarray


def _alive_report(
    marks: Sequence[Mark],
    *,
    t0_ns: int,
    running: np.ndarray,
    kept: np.ndarray,
    blocks: _Blocks,
    entry_blocks: Mapping[int, tuple[int, str]],
    entry_frees: tuple[np.ndarray, np.ndarray, np.ndarray],
    module_names: Mapping[int, str],
    line_names: Sequence[str],
    top_sites: int,
) -> AliveReport | None:
    """The blocks alive at each step mark: bytes by category (the timeline's own running sums,
    so the report agrees with it exactly) and the ``top_sites`` largest allocation sites.

    A step mark at ``k`` sits after ``k`` events: a block is alive there when it was allocated
    before (``alloc < k``) and freed at or after (``free >= k``). Only the blocks that span a
    boundary are grouped, so the cost is one pass over the blocks plus the long-lived ones.
    """
    steps = [m for m in marks if m.kind == "step"]
    if not steps:
        return None
    ks = np.asarray([m.idx for m in steps], dtype=np.int64)
    n_steps = len(ks)
    cols = np.searchsorted(kept, ks, side="left")  # kept events before each boundary
    by_cat = running[:, cols]  # categories x steps

    # -- blocks allocated inside, grouped by site -------------------------------------------
    j0 = np.searchsorted(ks, blocks.alloc, side="right")  # first boundary after the alloc
    j1 = np.searchsorted(ks, blocks.free, side="right")  # boundaries at or before the free
    span = j1 > j0
    keys = np.stack(
        [blocks.cat[span], blocks.phase[span], blocks.tag[span], blocks.line[span]], axis=1
    )
    site_keys, inv = (
        np.unique(keys, axis=0, return_inverse=True)
        if len(keys)
        else (np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64))
    )
    inv = np.asarray(inv).reshape(-1)
    n_sites = len(site_keys)
    site_bytes = np.zeros((n_steps + 1, n_sites), dtype=np.int64)
    site_count = np.zeros((n_steps + 1, n_sites), dtype=np.int64)
    np.add.at(site_bytes, (j0[span], inv), blocks.nbytes[span])
    np.add.at(site_bytes, (j1[span], inv), -blocks.nbytes[span])
    np.add.at(site_count, (j0[span], inv), 1)
    np.add.at(site_count, (j1[span], inv), -1)
    site_bytes = np.cumsum(site_bytes, axis=0)[:n_steps]
    site_count = np.cumsum(site_count, axis=0)[:n_steps]

    # -- blocks alive at entry, by category, less those freed before each boundary ----------
    entry_b = np.zeros(len(CATEGORIES), dtype=np.int64)
    entry_n = np.zeros(len(CATEGORIES), dtype=np.int64)
    for nbytes, c in entry_blocks.values():
        entry_b[_CAT[c]] += int(nbytes)
        entry_n[_CAT[c]] += 1
    e_idx, e_cat, delta = entry_frees
    freed_b = np.zeros((n_steps + 1, len(CATEGORIES)), dtype=np.int64)
    freed_n = np.zeros((n_steps + 1, len(CATEGORIES)), dtype=np.int64)
    je = np.searchsorted(ks, e_idx, side="right")  # first boundary after the free
    np.add.at(freed_b, (je, e_cat[e_idx]), -delta[e_idx])
    np.add.at(freed_n, (je, e_cat[e_idx]), 1)
    freed_b, freed_n = np.cumsum(freed_b, axis=0)[:n_steps], np.cumsum(freed_n, axis=0)[:n_steps]

    def name_of(tag: int) -> str:
        return module_names.get(tag, "") if tag else ""

    site_meta: list[tuple[str, str, str | None, str]] = [
        (
            PHASES[int(ph)],
            name_of(int(tg)),
            None if ln < 0 or ln >= len(line_names) else line_names[int(ln)],
            CATEGORIES[int(c)],
        )
        for c, ph, tg, ln in site_keys.tolist()
    ]
    out: list[AliveStep] = []
    for s, m in enumerate(steps):
        # the largest sites first (ties by key order, so the report is deterministic)
        top = np.argsort(-site_bytes[s], kind="stable")[:top_sites]
        sites = [
            AliveSite(
                phase=site_meta[i][0],
                module=site_meta[i][1],
                line=site_meta[i][2],
                category=site_meta[i][3],
                bytes=int(site_bytes[s, i]),
                count=int(site_count[s, i]),
            )
            for i in top.tolist()
            if site_count[s, i] > 0
        ]
        for ci, cname in enumerate(CATEGORIES):
            n_alive = int(entry_n[ci] - freed_n[s, ci])
            if n_alive > 0:
                sites.append(
                    AliveSite("entry", "", None, cname, int(entry_b[ci] - freed_b[s, ci]), n_alive)
                )
        sites.sort(key=lambda x: (-x.bytes, x.where, x.category))
        by = {c: int(by_cat[i, s]) for i, c in enumerate(CATEGORIES)}
        out.append(
            AliveStep(
                label=m.value,
                t_s=(m.t_ns - t0_ns) / 1e9,
                total_bytes=sum(by.values()),
                by_category=by,
                sites=tuple(sites[:top_sites]),
            )
        )
    return AliveReport(
        entry_bytes=int(entry_b.sum()),
        entry_by_category={c: int(entry_b[i]) for i, c in enumerate(CATEGORIES)},
        steps=tuple(out),
    )


def _peak_report(
    *,
    peak_at: int,
    kept: np.ndarray,
    t_s: float,
    phase: str,
    total: int,
    t0_ns: int,
    t_ns: np.ndarray,
    addr: np.ndarray,
    delta: np.ndarray,
    alloc_idx: np.ndarray,
    free_of_alloc: np.ndarray,
    cat: np.ndarray,
    phase_of: np.ndarray,
    tag: np.ndarray,
    line_of: np.ndarray | None,
    line_names: Sequence[str],
    op_of: np.ndarray | None,
    op_names: Sequence[str],
    entry_blocks: Mapping[int, tuple[int, str]],
    entry_frees: np.ndarray,
    module_names: Mapping[int, str],
    top_blocks: int,
) -> PeakReport:
    """The blocks alive at the peak, the timeline's column ``peak_at`` (0: the entry; ``j``:
    after the kept event ``kept[j - 1]``). A block allocated inside is alive there when its
    allocation is at or before that event and its free after it; a block alive at entry when
    its free (if any) is after it. Their bytes sum to the timeline's total there, exactly."""
    e = int(kept[peak_at - 1]) if peak_at > 0 else -1
    alive = alloc_idx[(alloc_idx <= e) & (free_of_alloc > e)]
    freed = {int(addr[i]) for i in entry_frees.tolist() if i <= e}

    def name(codes: np.ndarray | None, names: Sequence[str], i: int) -> str | None:
        if codes is None or not 0 <= int(codes[i]) < len(names):
            return None
        return names[int(codes[i])]

    rows = [
        PeakBlock(
            bytes=int(delta[i]),
            category=CATEGORIES[int(cat[i])],
            phase=PHASES[int(phase_of[i])],
            module=module_names.get(int(tag[i]), "") if tag[i] else "",
            op=name(op_of, op_names, i),
            line=name(line_of, line_names, i),
            t_s=(int(t_ns[i]) - t0_ns) / 1e9,
        )
        for i in alive.tolist()
    ]
    rows += [
        PeakBlock(bytes=int(nb), category=c, phase="entry")
        for a, (nb, c) in entry_blocks.items()
        if a not in freed
    ]
    rows.sort(key=lambda b: (-b.bytes, b.t_s if b.t_s is not None else -1.0))
    sites: dict[tuple[str, str, str, str | None, str | None], PeakBlock] = {}
    for b in rows:
        key = (b.category, b.phase, b.module, b.op, b.line)
        s = sites.get(key)
        sites[key] = (
            b
            if s is None
            else PeakBlock(
                bytes=s.bytes + b.bytes,
                category=b.category,
                phase=b.phase,
                module=b.module,
                op=b.op,
                line=b.line,
                count=s.count + 1,
                t_s=None if s.t_s is None or b.t_s is None else min(s.t_s, b.t_s),
            )
        )
    by_site = sorted(sites.values(), key=lambda b: (-b.bytes, b.where, b.category))
    return PeakReport(
        total_bytes=total,
        t_s=t_s,
        phase=phase,
        n_blocks=len(rows),
        blocks=tuple(rows[:top_blocks]),
        sites=tuple(by_site[:top_blocks]),
    )
