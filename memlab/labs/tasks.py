"""Lab 09, many tasks in one memory: caching, memory-aware scheduling, contention and leaks.

Everything here reads results made in worker processes (``memlab.caching.cache_replay``,
``memlab.scheduling.schedule``, ``memlab.contention``, ``memlab.leak_check``, ``memlab.run``),
so the notebook kernel never imports torch; every number in the prose is computed from the
objects passed in.

- **caching**: which items to keep in a fixed number of bytes (LRU or LFU, ``cachetools``), on
  seeded request traces: Zipf (a few items are popular), a scan (every item in turn: LRU's
  worst case) and a hot set interrupted by scans (where LFU keeps what LRU flushes);
- **scheduling**: which task runs next (FIFO, priority, earliest deadline), and whether it may
  start at all (memory-aware admission by predicted peaks), with a shared memory budget
  enforced as a device would: the allocation that does not fit fails;
- **contention**: two runs at once on the laptop's 2 cores against one after the other;
- **leaks**: what is still alive at the end of each step, and the three classic leaks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from memlab.config import MIB
from memlab.labs.checks import Check, Exercise, check_choice, check_number
from memlab.labs.text import md_table, times
from memlab.scheduling import admission_floor, run_alone, service_times, with_deadlines
from memlab.timeline import format_bytes

if TYPE_CHECKING:
    from memlab.caching import CacheResult
    from memlab.contending import ContentionResult
    from memlab.leaks import LeakResult
    from memlab.scheduling import ScheduleResult, Task
    from memlab.timeline import AliveReport

__all__ = [
    "MIB",
    "cache_traces",
    "run_caches",
    "cache_table",
    "explain_caching",
    "memo_table",
    "explain_memo",
    "run_alone",
    "service_times",
    "with_deadlines",
    "tasks_table",
    "admission_floor",
    "policies_table",
    "explain_policies",
    "contention_table",
    "explain_contention",
    "LEAK_EXAMPLES",
    "run_leaks",
    "leaks_table",
    "explain_leaks",
    "alive_table",
    "exercise_policy",
    "exercise_admission_floor",
    "exercise_leak_growth",
    "exercise_scan_capacity",
    "scan_capacity",
]


def _ms(v: float | None) -> str:
    """Milliseconds to 3 significant figures (a memo hit takes microseconds)."""
    return "–" if v is None or v != v else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "–" if v is None or v != v else f"{100 * v:.0f}%"


def _mib(v: float | None) -> str:
    return "–" if v is None else f"{v / MIB:.2f}"


# -- caching ---------------------------------------------------------------------------------


def cache_traces(n_items: int, n_requests: int, seed: int = 0) -> dict[str, tuple[int, ...]]:
    """The lab's three seeded traces over ``n_items`` items: ``zipf``, ``scan``, ``mixed``."""
    from memlab.caching import mixed_trace, scan_trace, zipf_trace

    return {
        "zipf": zipf_trace(n_items, n_requests, seed=seed),
        "scan": scan_trace(n_items, n_requests),
        "mixed": mixed_trace(n_items, n_requests, scan_every=max(4, n_requests // 8), seed=seed),
    }


def run_caches(
    traces: Mapping[str, Sequence[int]],
    capacity_bytes: int | str | None = None,
    *,
    items: str = "models",
    progress: Callable[[str], None] | None = None,
    **kw: Any,
) -> dict[str, CacheResult]:
    """Every policy's replay of each trace (one service job per trace), by trace name."""
    from memlab.caching import cache_replay

    out = {}
    for name, trace in traces.items():
        if progress is not None:
            progress(f"replaying {name} ({len(trace)} requests, {items})")
        out[name] = cache_replay(trace, capacity_bytes=capacity_bytes, items=items, name=name, **kw)
    return out


def cache_table(results: Mapping[str, CacheResult]) -> str:
    """One row per trace and policy: hit rate, latency (p50, p99), the measured cost of a
    miss, the most bytes held, against the capacity."""
    rows = []
    for name, res in results.items():
        for row in res.rows():
            cap = "∞" if row["policy"] == "unbounded" else _mib(res.capacity_bytes)
            if row["policy"] == "none":
                cap = "0"
            rows.append(
                (
                    name,
                    row["policy"],
                    _pct(row["hit_rate"]),
                    _ms(row["p50_ms"]),
                    _ms(row["p99_ms"]),
                    _ms(row["mean_miss_cost_ms"]),
                    _mib(row["peak_bytes"]),
                    cap,
                    "yes" if row["steady"] else ("no" if row["steady"] is False else "–"),
                )
            )
    return md_table(
        [
            "trace",
            "policy",
            "hit rate",
            "p50 ms",
            "p99 ms",
            "miss cost ms",
            "held MiB (max)",
            "capacity MiB",
            "timing steady",
        ],
        rows,
    )


def explain_caching(results: Mapping[str, CacheResult]) -> str:
    """What the replays show, from their numbers: LRU on the scan, LFU against LRU on the mixed
    trace, and what a miss costs against a hit."""
    out = []
    if "scan" in results:
        s = results["scan"]
        n_items = len(set(s.trace))
        out.append(
            f"- **Scan** ({n_items} items in turn, {_mib(s.distinct_bytes)} MiB in all, a cache "
            f"of {_mib(s.capacity_bytes)} MiB): LRU hits {_pct(s['lru'].hit_rate)}, LFU "
            f"{_pct(s['lfu'].hit_rate)}, unbounded {_pct(s['unbounded'].hit_rate)}. LRU "
            "evicts the item asked longest ago, which in a cyclic scan larger than the cache "
            "is always the next one asked: every request misses."
        )
    if "mixed" in results:
        m = results["mixed"]
        lru, lfu = m["lru"].hit_rate, m["lfu"].hit_rate
        out.append(
            f"- **Hot set interrupted by scans**: LRU {_pct(lru)}, LFU {_pct(lfu)}. Each scan "
            "pushes the hot items out of LRU (they are not the most recent any more); LFU "
            "keeps them, counted many times, while each scanned item has been asked once "
            "(cachetools' LFU counts an item's uses only while it is cached)."
        )
    if "zipf" in results:
        z = results["zipf"]
        hit, miss = z["lru"].latency_ms(50, "hit"), z["lru"].latency_ms(50, "miss")
        out.append(
            f"- **Zipf**: LRU {_pct(z['lru'].hit_rate)}, LFU {_pct(z['lfu'].hit_rate)}, "
            f"unbounded {_pct(z['unbounded'].hit_rate)} holding {_mib(z['unbounded'].peak_bytes)}"
            f" MiB against LRU's {_mib(z['lru'].peak_bytes)}. A miss took {_ms(miss)} ms "
            f"(median), a hit {_ms(hit)} ms ({times(miss, hit)}): loading the item (read, "
            "deserialise, assemble) is most of a miss. p50 with LRU was "
            f"{times(z['lru'].p50_ms, z['none'].p50_ms)} the no-cache p50."
        )
    notes = sorted({n for r in results.values() for n in r.notes})
    if notes:
        out.append("\n_" + " ".join(notes) + "_")
    return "\n".join(out)


def memo_table(result: CacheResult) -> str:
    rows = [
        (
            r.policy,
            _pct(r.hit_rate),
            _pct(r.memo_hit_rate),
            _ms(r.p50_ms),
            _ms(r.latency_ms(50, "memo")),
            format_bytes(r.memo_bytes_peak),
        )
        for r in result.runs
    ]
    return md_table(
        ["policy", "item hit rate", "memo hit rate", "p50 ms", "memo hit p50 ms", "memo held"],
        rows,
    )


def explain_memo(memo: CacheResult, plain: CacheResult) -> str:
    """Memoization against the same trace without it (same policy, LRU)."""
    a, b = plain["lru"], memo["lru"]
    return (
        f"With memoization, {_pct(b.memo_hit_rate)} of the requests were answered from the memo "
        f"(same item, same input: {len(set(memo.inputs))} distinct inputs per item), in "
        f"{_ms(b.latency_ms(50, 'memo'))} ms at the median, without touching the item cache or "
        f"running the model. LRU's p50 went from {_ms(a.p50_ms)} to {_ms(b.p50_ms)} ms; the "
        f"memo held up to {format_bytes(b.memo_bytes_peak)} of outputs."
    )


# -- scheduling --------------------------------------------------------------------------------


def tasks_table(tasks: Sequence[Task], predicted: Sequence[int]) -> str:
    rows = [
        (
            t.name,
            t.workload,
            t.batch_size,
            t.requests,
            t.priority,
            f"{t.arrival_s:.2f}",
            f"{t.deadline_s:.2f}",
            _mib(p),
        )
        for t, p in zip(tasks, predicted, strict=True)
    ]
    return md_table(
        [
            "task",
            "model",
            "batch",
            "requests",
            "priority",
            "arrives s",
            "deadline s",
            "predicted peak MiB",
        ],
        rows,
    )


def policies_table(results: Mapping[str, ScheduleResult]) -> str:
    rows = []
    for policy, r in results.items():
        rows.append(
            (
                policy,
                f"{r.deadline_misses}/{len(r.tasks)}",
                r.oom_count,
                "–" if r.p50_latency_s is None else f"{r.p50_latency_s:.2f}",
                "–" if r.p99_latency_s is None else f"{r.p99_latency_s:.2f}",
                "–" if r.makespan_s is None else f"{r.makespan_s:.2f}",
                _mib(r.peak_bytes),
                _mib(r.budget_bytes),
                r.enforcement,
            )
        )
    return md_table(
        [
            "policy",
            "deadline misses",
            "oom",
            "p50 latency s",
            "p99 latency s",
            "makespan s",
            "peak MiB (exact)",
            "budget MiB",
            "enforced by",
        ],
        rows,
    )


def explain_policies(results: Mapping[str, ScheduleResult]) -> str:
    """Which policy ran out of memory, which missed fewest deadlines, from the results."""
    out = []
    blind = [p for p in results if p != "memory-aware"]
    oomed = [p for p in blind if results[p].oom_count]
    if oomed:
        names = ", ".join(
            f"{p} ({', '.join(t.name for t in results[p].tasks if t.status == 'oom')})"
            for p in oomed
        )
        out.append(
            f"- **Out of memory** without admission: {names}. These policies pick *which* task "
            "runs next but never ask whether it fits beside the one running: two large tasks "
            "met, and the allocation that did not fit failed, as on a full device."
        )
    elif blind:
        out.append(
            f"- No policy ran out of memory at {_mib(next(iter(results.values())).budget_bytes)}"
            " MiB: the large tasks never ran at the same time under this budget."
        )
    if "memory-aware" in results:
        m = results["memory-aware"]
        out.append(
            f"- **Memory-aware admission**: {m.oom_count} oom, peak {_mib(m.peak_bytes)} MiB "
            f"of {_mib(m.budget_bytes)} (exact, every allocation counted), "
            f"{m.deadline_misses} deadline misses. A task that does not fit waits (a smaller "
            "one may pass it); waiting costs latency, not a failed task."
        )
    out.append(
        "- A task that ran out of memory counts as a deadline miss: it never answered. Which "
        "policy did best is exercise 1."
    )
    disturbed = sorted({n for r in results.values() for n in r.notes if "disturb" in n})
    if disturbed:
        out.append("\n_" + " ".join(disturbed) + "_")
    return "\n".join(out)


# -- contention --------------------------------------------------------------------------------


def contention_table(c: ContentionResult) -> str:
    rows = []
    for r in c.runs:
        rows.append(
            (
                r.label,
                _ms(None if r.alone_step_s is None else 1e3 * r.alone_step_s),
                _ms(None if r.together_step_s is None else 1e3 * r.together_step_s),
                "–" if r.inflation is None else f"{r.inflation:.2f}x",
                _mib(r.alone_peak_bytes),
                _mib(r.together_peak_bytes),
                _verdict(r.alone_steady),
                _verdict(r.together_steady),
            )
        )
    return md_table(
        [
            "run",
            "step ms alone",
            "step ms together",
            "inflation",
            "peak MiB alone",
            "peak MiB together",
            "timing alone",
            "timing together",
        ],
        rows,
    )


def _verdict(steady: bool | None) -> str:
    return "steady" if steady else ("disturbed" if steady is False else "–")


def explain_contention(c: ContentionResult) -> str:
    ratio = c.throughput_ratio
    out = [
        f"Together, the two runs served {'–' if ratio is None else f'{ratio:.2f}x'} the samples "
        "per second of the two one after the other. Each run's own tensors did not change "
        f"(peaks {_mib(c.summed_peak_alone_bytes)} MiB summed alone, "
        f"{_mib(c.summed_peak_together_bytes)} together), but the machine held both processes "
        f"at once: {_mib(c.combined_rss_peak_bytes)} MiB of RSS at the peak, each with its own "
        "Python and torch. On 2 cores, two runs share the cores, the caches and the memory "
        "bandwidth: each step takes longer, and each run's timing verdict says it was disturbed "
        "(the other run is the 'other process' it measures)."
    ]
    out += [f"\n_{n}_" for n in c.notes]
    return "\n".join(out)


# -- leaks --------------------------------------------------------------------------------------

LEAK_EXAMPLES = ("loss_history", "reference_cycle", "forward_hook")


def run_leaks(
    steps: int = 6,
    examples: Sequence[str] = LEAK_EXAMPLES,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, LeakResult]]:
    """Each example leaky and fixed, in the service worker: ``{example: {"leaky", "fixed"}}``."""
    from memlab.leaks import leak_check

    out: dict[str, dict[str, LeakResult]] = {}
    for ex in examples:
        if progress is not None:
            progress(f"measuring {ex}")
        out[ex] = {
            "leaky": leak_check(ex, steps=steps, fixed=False),
            "fixed": leak_check(ex, steps=steps, fixed=True),
        }
    return out


def leaks_table(leaks: Mapping[str, Mapping[str, LeakResult]]) -> str:
    rows = []
    for ex, pair in leaks.items():
        a, b = pair["leaky"], pair["fixed"]
        site = _top_growing_site(a.alive)
        rows.append(
            (
                ex,
                _bytes(a.alive.entry_by_category.get("parameters", 0)),
                _bytes(a.growth_per_step_bytes),
                _bytes(b.growth_per_step_bytes),
                format_bytes(a.gc_freed_bytes),
                site,
            )
        )
    return md_table(
        [
            "example",
            "parameters",
            "growth/step leaky",
            "growth/step fixed",
            "freed by gc.collect()",
            "where the leaked bytes were allocated",
        ],
        rows,
    )


def _bytes(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} B"


def _top_growing_site(report: AliveReport) -> str:
    """The site whose bytes grew most from the first step to the last."""
    if len(report.steps) < 2:
        return "–"
    first = {(s.where, s.category): s.bytes for s in report.steps[0].sites}
    last = report.steps[-1].sites
    grown = sorted(last, key=lambda s: s.bytes - first.get((s.where, s.category), 0), reverse=True)
    if not grown or grown[0].bytes - first.get((grown[0].where, grown[0].category), 0) <= 0:
        return "–"
    s = grown[0]
    return f"{s.where}: {s.category}, {s.count} blocks"


def explain_leaks(leaks: Mapping[str, Mapping[str, LeakResult]]) -> str:
    out = []
    for ex, pair in leaks.items():
        a, b = pair["leaky"], pair["fixed"]
        out.append(
            f"- **{ex}**: {_bytes(a.growth_per_step_bytes)} more alive after each step; "
            f"fixed: {_bytes(b.growth_per_step_bytes)}. The leak: {_sentence(a.leak)} "
            f"The fix: {_sentence(a.fix)}"
        )
    return "\n".join(out)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith(".") else text + "."


def alive_table(report: AliveReport, top: int = 6) -> str:
    """The last step's alive bytes by site (largest first) and the growth per step."""
    if not report.steps:
        return "_no step was marked: call `rec.step()` at the end of each step_"
    last = report.steps[-1]
    rows = [
        (s.where, s.category, s.count, format_bytes(s.bytes))
        for s in sorted(last.sites, key=lambda s: -s.bytes)[:top]
    ]
    g = report.growth_per_step_bytes
    return (
        md_table(["allocated at", "category", "blocks", "alive"], rows)
        + f"\n\nAlive after the last step: {format_bytes(last.total_bytes)}; growth per step "
        f"(least squares after the first): {_bytes(g)}."
    )


# -- exercises -------------------------------------------------------------------------------


def exercise_policy(results: Mapping[str, ScheduleResult], id: str = "1") -> Exercise:
    """Which policy ran the mix without an oom and with the fewest deadline misses?"""
    clean = [r for r in results.values() if r.oom_count == 0 and r.status == "ok"]
    if not clean:
        raise ValueError("no policy ran without oom: raise the budget")
    fewest = min(r.deadline_misses for r in clean)
    truth = {r.policy for r in clean if r.deadline_misses == fewest}

    def grade(answer: Any) -> Check:
        if len(truth) > 1 and isinstance(answer, str) and answer in truth:  # a tie: any of them
            return Check(True, f"Yes: {answer} (tied with {sorted(truth - {answer})}).")
        want: Any = next(iter(truth)) if len(truth) == 1 else truth
        return check_choice(
            answer,
            want,
            options=list(results),
            what="a policy's name",
            explain=f"{fewest} deadline misses and no oom.",
        )

    return Exercise(
        id,
        "The policy with no oom and the fewest deadline misses",
        grade,
        hints=[
            "Read the oom column first: a task that ran out of memory never answered.",
            "Among the rows with 0 oom, take the fewest deadline misses.",
        ],
        solution=lambda: f"**{', '.join(sorted(truth))}**.\n\n" + policies_table(results),
    )


def exercise_admission_floor(predicted: Sequence[int], id: str = "2") -> Exercise:
    """The smallest budget (MiB) memory-aware admission accepts the mix under."""
    truth = admission_floor(predicted) / MIB
    big = max(predicted) / MIB

    def grade(answer: Any) -> Check:
        return check_number(
            answer,
            truth,
            rel_tol=0.02,
            unit="MiB",
            what="a number of MiB",
            explain="Below it the largest task could never start: memlab refuses the mix.",
        )

    return Exercise(
        id,
        "The smallest budget memory-aware admission accepts",
        grade,
        hints=[
            "Admission charges each task its predicted peak; which task is the hardest to fit?",
            "The largest predicted peak, plus the estimator's 3% tolerance.",
        ],
        solution=lambda: (
            f"**{truth:.2f} MiB**: the largest predicted peak, {big:.2f} MiB, times 1.03."
        ),
    )


def exercise_leak_growth(
    leaks: Mapping[str, Mapping[str, LeakResult]], example: str = "forward_hook", id: str = "3"
) -> Exercise:
    """After how many steps has ``example`` kept as many bytes as the model's parameters?"""
    r = leaks[example]["leaky"]
    growth = r.growth_per_step_bytes or 0.0
    if growth <= 0:
        raise ValueError(f"{example} did not grow: no leak to measure")
    params = r.alive.entry_by_category.get("parameters", 0)
    truth = params / growth

    def grade(answer: Any) -> Check:
        return check_number(answer, truth, abs_tol=1.0, unit="steps", what="a number of steps")

    return Exercise(
        id,
        f"Steps until {example} keeps the model's size",
        grade,
        hints=[
            "The leaks table has the parameters' bytes and the growth per step.",
            "Divide the parameters' bytes by the bytes kept per step.",
        ],
        solution=lambda: (
            f"**{truth:.1f} steps**: {params:,} parameter bytes / {growth:,.0f} "
            f"bytes kept per step. {_sentence(r.leak)}"
        ),
    )


def exercise_scan_capacity(results: Mapping[str, CacheResult], id: str = "4") -> Exercise:
    """The smallest capacity (MiB) at which LRU gets any hit on the scan trace."""
    truth = scan_capacity(results["scan"]) / MIB

    def grade(answer: Any) -> Check:
        return check_number(answer, truth, rel_tol=0.02, unit="MiB", what="a number of MiB")

    return Exercise(
        id,
        "The capacity that ends LRU's scan misses",
        grade,
        hints=[
            "In a cyclic scan, which item does LRU evict, and which is asked next?",
            "Only when nothing has to be evicted does the next item stay: every item the "
            "cache takes must fit at once (an item larger than the whole cache is served "
            "without being cached). The unbounded row shows the bytes of all of them.",
        ],
        solution=lambda: (
            f"**{truth:.2f} MiB**: the bytes of every item the cache takes at that capacity. "
            "With any less, LRU evicts the item asked longest ago, which is the next one the "
            "scan asks, and every request misses; with all of them held, every request after "
            "the first pass hits."
        ),
    )


def scan_capacity(scan: CacheResult) -> int:
    """The smallest capacity at which LRU hits on a cyclic scan: the least ``C`` with ``C >=``
    the bytes of the scanned items no larger than ``C`` (cachetools serves an item larger than
    the cache without caching it, so it evicts nothing); with equal items, all of them."""
    sizes = sorted(scan.item_bytes[i] for i in set(scan.trace))
    total = 0
    for k, size in enumerate(sizes):
        total += size
        if k + 1 == len(sizes) or total < sizes[k + 1]:
            return total
    return total
