"""What the peak drill-down's op names and source lines cost: a tracked train step's time with
neither, with op names (``memlab.track(ops=True)``) and with source lines
(``source_lines=True``, which names the op too), on the tests' MLP and CNN, in one process.

    python benchmarks/drilldown.py [--rounds 40]

Each round runs one step of every variant, each inside its own tracked block, in a rotating
order, so slow drifts of the machine hit every variant alike; the step is timed inside the block
(the block's exit, where the reports are computed, is not in it). We report the median step
time of each variant and the median of the per-round ratio to the tracked step without ops.
Decision rule (issue 15): op names on by default if they cost < ~5% of a tracked step. This
script prints; no test times anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import memlab  # noqa: E402
from tests.test_track import MODELS, train_step  # noqa: E402  (the tests' small models)

VARIANTS = {
    "plain (untracked)": None,
    "tracked": {"ops": False},
    "tracked + op names": {"ops": True},
    "tracked + source lines": {"ops": True, "source_lines": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--models", default="mlp,cnn")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for name in args.models.split(","):
        model, (x, y) = MODELS[name]()
        opt = torch.optim.Adam(model.parameters())
        for _ in range(3):
            train_step(model, opt, x, y)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        names = list(VARIANTS)
        for r in range(args.rounds):
            for v in names[r % len(names) :] + names[: r % len(names)]:
                kw = VARIANTS[v]
                if kw is None:
                    t0 = time.perf_counter()
                    train_step(model, opt, x, y)
                    times[v].append(time.perf_counter() - t0)
                    continue
                with memlab.track(
                    model, optimizer=opt, inputs=(x, y), sample_interval_s=None, **kw
                ):
                    t0 = time.perf_counter()
                    train_step(model, opt, x, y)
                    times[v].append(time.perf_counter() - t0)
        base = times["tracked"]
        print(f"\n{name}: median step time (ms), ratio to 'tracked' (median of per-round ratios)")
        for v in names:
            ratio = statistics.median(a / b for a, b in zip(times[v], base, strict=True))
            med = statistics.median(times[v]) * 1e3
            low = min(times[v]) * 1e3
            print(f"  {v:<24} {med:8.3f} ms (min {low:7.3f})   x{ratio:.3f}")
        n_ops = count_ops(model, opt, x, y)
        print(f"  ops dispatched per step: {n_ops}")
    per_op()


def count_ops(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        train_step(model, opt, x, y)
    return Count.n


def per_op(n: int = 2000, repeats: int = 15) -> None:
    """The fixed cost per op of each variant: a loop of tiny ops (best of ``repeats``)."""
    a = torch.ones(4)
    best: dict[str, float] = {}
    for _ in range(repeats):
        for v, kw in VARIANTS.items():
            ctx = memlab.track(inputs=(a,), sample_interval_s=None, **kw) if kw else None
            if ctx is not None:
                ctx.__enter__()
            t0 = time.perf_counter()
            for _ in range(n):
                a.add(1.0)
            dt = (time.perf_counter() - t0) / n
            if ctx is not None:
                ctx.__exit__(None, None, None)
            best[v] = min(best.get(v, dt), dt)
    print(f"\nper op (a loop of {n} tiny ops, best of {repeats}), extra over 'tracked':")
    for v in VARIANTS:
        print(
            f"  {v:<24} {best[v] * 1e6:7.2f} us/op   +{(best[v] - best['tracked']) * 1e6:6.2f} us"
        )


if __name__ == "__main__":
    main()
