"""What memlab.track costs: step time tracked vs plain, vs torch.profiler and vs MemTracker;
and whether that cost stays out of the step time memlab reports.

    python benchmarks/overhead.py [--rounds 15] [--run-rounds 5]

Each round runs one step of every variant, in a rotating order, so slow drifts of the machine
(thermal, other processes) hit every variant alike; we report medians with min-max and the
median of the per-round ratio to plain. The per-op fixed cost comes from a loop of tiny ops,
where the op itself costs a few microseconds. Targets (issue 2): <= 1.03x step time on the three
models, <= 5 us per op. This script prints; no test times anything.

The last table (issue 10) compares the step time memlab reports (a run's untracked timed pass,
the same function the run worker uses) with the same workload's plain step, in one process,
and shows the tracked steps' time beside it: the reported/plain ratio must stay within 3%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import memlab  # noqa: E402
from tests.test_track import MODELS, train_step  # noqa: E402  (the three models of the tests)


def profiler_variant(step: Callable[[], None]) -> Callable[[], None]:
    from torch.profiler import ProfilerActivity, profile

    def run() -> None:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            step()

    return run


def memtracker_variant(
    model: torch.nn.Module, opt: torch.optim.Optimizer, step: Callable[[], None]
) -> Callable[[], None] | None:
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception:  # noqa: BLE001 - not in every build
        return None

    def run() -> None:
        mt = MemTracker()
        mt.track_external(model, opt)
        with mt:
            step()

    return run


def memlab_variant(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    inputs: tuple,  # type: ignore[type-arg]
    step: Callable[[], None],
) -> Callable[[], None]:
    def run() -> None:
        with memlab.track(model, optimizer=opt, inputs=inputs):
            step()

    return run


def interleave(variants: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t)
    return times


def summarize(times: dict[str, list[float]]) -> list[tuple[str, float, float, float, float]]:
    rows = []
    plain = times["plain"]
    for k, v in times.items():
        ratio = statistics.median(a / b for a, b in zip(v, plain, strict=True))
        rows.append((k, statistics.median(v) * 1e3, min(v) * 1e3, max(v) * 1e3, ratio))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--ops", type=int, default=20_000, help="tiny ops in the per-op loop")
    ap.add_argument("--run-rounds", type=int, default=9, help="rounds of the reported-time table")
    ap.add_argument("--only-reported", action="store_true", help="print only the last table")
    args = ap.parse_args()
    if args.only_reported:
        reported_vs_plain(args.run_rounds)
        return
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds\n")
    print(f"{'model':<18} {'variant':<11} {'median ms':>10} {'min-max ms':>16} {'x plain':>8}")
    cases: list[tuple[str, Any, Any, tuple, Callable[[], None]]] = []  # type: ignore[type-arg]
    for name in sorted(MODELS):  # the tests' small models: a step of a few ms
        model, (x, y) = MODELS[name]()
        opt = torch.optim.Adam(model.parameters())

        def step(model=model, opt=opt, x=x, y=y) -> None:  # type: ignore[no-untyped-def]
            train_step(model, opt, x, y)

        cases.append((f"test {name}", model, opt, (x, y), step))
    from memlab.config import Experiment
    from memlab.knobs import build_experiment

    for name in ("mlp", "cnn", "transformer"):  # memlab's workloads at their default sizes
        w = build_experiment(Experiment(workload=name), "cpu")
        x, y = next(w.make_batches(1))
        cases.append(
            (f"memlab {name}", w.model, w.optimizer, (x, y), lambda w=w, x=x, y=y: w.step(x, y))
        )

    for name, model, opt, inputs, step in cases:
        for _ in range(3):
            step()
        variants: dict[str, Callable[[], None]] = {
            "plain": step,
            "memlab": memlab_variant(model, opt, inputs, step),
            "profiler": profiler_variant(step),
        }
        mt = memtracker_variant(model, opt, step)
        if mt is not None:
            variants["MemTracker"] = mt
        for v in variants.values():  # warm each variant once (lazy imports, JIT build)
            v()
        for k, med, lo, hi, ratio in summarize(interleave(variants, args.rounds)):
            print(f"{name:<18} {k:<11} {med:>10.2f} {lo:>7.2f}-{hi:<8.2f} {ratio:>8.3f}")
        print()

    # the fixed cost of a block: entering and leaving around nothing
    model, opt, inputs = cases[-1][1], cases[-1][2], cases[-1][3]

    def empty() -> None:
        with memlab.track(model, optimizer=opt, inputs=inputs):
            pass

    times = interleave({"empty": empty}, 50)["empty"]
    print(
        f"fixed cost of one block (memlab transformer, nothing inside): "
        f"{statistics.median(times) * 1e3:.2f} ms median\n"
    )

    # per-op fixed cost: a loop of tiny ops, each allocating a 40-byte result
    def tiny() -> None:
        x = torch.ones(10)
        for _ in range(args.ops):
            x = x + 1

    def tiny_tracked() -> None:
        with memlab.track(sample_interval_s=None):
            tiny()

    def tiny_tracked_sampled() -> None:
        with memlab.track():
            tiny()

    tiny_variants = {
        "plain": tiny,
        "memlab": tiny_tracked,
        "memlab+rss": tiny_tracked_sampled,
        "profiler": profiler_variant(tiny),
    }
    for v in tiny_variants.values():
        v()
    times = interleave(tiny_variants, max(5, args.rounds // 3))
    plain = statistics.median(times["plain"])
    print(f"per-op cost on a loop of {args.ops} tiny ops (x = x + 1 on 10 floats):")
    print(f"  plain op: {plain / args.ops * 1e6:.2f} us")
    for k in ("memlab", "memlab+rss", "profiler"):
        extra = (statistics.median(times[k]) - plain) / args.ops * 1e6
        print(f"  {k:<11} adds {extra:6.2f} us per op")
    print()
    reported_vs_plain(args.run_rounds)


def reported_vs_plain(rounds: int, steps: int = 10) -> None:
    """The step time memlab reports against the plain step, in this one process.

    Each workload is built once; each round times ``steps`` steps three ways, in a rotating
    order: a plain loop (``perf_counter`` around the step), the run worker's own timed pass
    (``memlab.runner.runs.timed_steps`` with its ``StepClock``: what ``RunResult.step_times_s``
    holds), and the tracked pass (the steps inside ``memlab.track`` with the live sampler, as
    a run's memory pass). One process, so the comparison is not blurred by the differences
    between fresh processes (on a 2-core VM the same workload's median step varied by 30%
    from one fresh worker to the next)."""
    from benchmarks._workloads import TEST_WORKLOADS
    from memlab.config import Experiment
    from memlab.knobs import build_experiment
    from memlab.runner.runs import timed_steps
    from memlab.timing import StepClock

    cases: list[tuple[str, Any]] = [
        (name, fn(Experiment(workload=fn), "cpu")) for name, fn in TEST_WORKLOADS.items()
    ]
    for name in ("mlp", "cnn", "transformer"):
        cases.append((f"memlab {name}", build_experiment(Experiment(workload=name), "cpu")))
    print(
        f"step time memlab reports vs the plain step, one process ({rounds} rounds of {steps} "
        "steps; medians; ratios are medians of per-round ratios):"
    )
    print(
        f"{'workload':<18} {'plain ms':>9} {'reported ms':>12} {'x plain':>8} "
        f"{'tracked ms':>11} {'x plain':>8}"
    )
    for name, w in cases:
        batches = w.make_batches(10_000)
        for _ in range(3):
            w.step(*next(batches))

        def plain(w: Any = w, batches: Any = batches) -> float:
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                x, y = next(batches)
                w.step(x, y)
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        def reported(w: Any = w, batches: Any = batches) -> float:
            readings = timed_steps(w, batches, steps, StepClock())
            return statistics.median(r.wall_s for r in readings)

        def tracked(w: Any = w, batches: Any = batches) -> float:
            times = []
            with memlab.track(w.model, optimizer=w.optimizer, on_sample=lambda t, s: None) as rec:
                for _ in range(steps):
                    t = time.perf_counter()
                    with rec.phase("data"):
                        x, y = next(batches)
                    w.step(x, y)
                    times.append(time.perf_counter() - t)
                    rec.step()
                    del x, y
            return statistics.median(times)

        res = interleave_results({"plain": plain, "reported": reported, "tracked": tracked}, rounds)
        rr = statistics.median(a / b for a, b in zip(res["reported"], res["plain"], strict=True))
        tr = statistics.median(a / b for a, b in zip(res["tracked"], res["plain"], strict=True))
        print(
            f"{name:<18} {statistics.median(res['plain']) * 1e3:>9.2f} "
            f"{statistics.median(res['reported']) * 1e3:>12.2f} {rr:>8.3f} "
            f"{statistics.median(res['tracked']) * 1e3:>11.2f} {tr:>8.3f}"
        )


def interleave_results(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each round calls every function once, in a rotating order; their results by name."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            out[k].append(fns[k]())
    return out


if __name__ == "__main__":
    main()
