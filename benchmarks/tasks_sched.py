"""Many tasks in one memory (lab 09): scheduling policies and contention.

    python benchmarks/tasks_sched.py [--n 8] [--seed 0] [--budget-mib 64] [--slots 2]
                                     [--slack 1.5,4] [--contention cnn] [--steps 20]
                                     [--json PATH]

Part 1, scheduling: ``memlab.scheduling.mixed_tasks(n, seed)`` (a seeded mix of inference
tasks over the three built-in models) under the four policies, one after another on the same
warm workers and the same predictions (``compare_policies``); per policy: deadline misses,
p50/p99 latency (arrival to end, completed tasks), makespan, exact combined peak (and the
shared pool's own counter) against the budget, ``oom`` count, the enforcement used.

Part 2, contention: ``memlab.contention`` of one inference experiment with itself: both runs
alone one after the other, then both at once; per run the median request time alone and
together (inflation), each run's timing verdict (together they are expected to be disturbed:
the other run is the other process), and the throughput of both together over one after the
other (the ratio, measured in the same call; on 2 cores two 1-thread-per-core runs can gain,
two runs each wanting every core cannot).

Speed on a shared machine is disturbed: never read one run's figures as the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memlab.config import MIB, Experiment  # noqa: E402
from memlab.contending import contention  # noqa: E402
from memlab.scheduling import (  # noqa: E402  # noqa: E402
    compare_policies,
    mixed_tasks,
    predict_peaks,
    run_alone,
    service_times,
    with_deadlines,
)


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def scheduling(
    n: int, seed: int, budget: int, slots: int, slack: tuple[float, float] | None = None
) -> dict[str, Any]:
    tasks = mixed_tasks(n=n, seed=seed)
    predicted = predict_peaks(tasks)
    how = "the mix's deadlines"
    if slack is not None:  # as lab 09: deadlines from each task's service time, run alone first
        alone = run_alone(tasks, predicted)
        tasks = with_deadlines(tasks, service_times(alone), slack=slack, seed=seed)
        how = f"deadlines {slack[0]:g}-{slack[1]:g} x each task's service time alone"
    results = compare_policies(tasks, budget, slots=slots, predicted=predicted)
    print(
        f"\n== scheduling: mixed_tasks(n={n}, seed={seed}), budget {budget / MIB:.0f} MiB, "
        f"{slots} slots, {how} =="
    )
    print(
        f"{'policy':<14}{'misses':>8}{'oom':>5}{'p50 s':>8}{'p99 s':>8}{'makespan':>10}"
        f"{'peak MiB':>10}{'pool MiB':>10}  enforcement"
    )
    out = {}
    for p, r in results.items():
        print(
            f"{p:<14}{r.deadline_misses:>5}/{len(r.tasks):<2}{r.oom_count:>5}"
            f"{_fmt(r.p50_latency_s, '.2f'):>8}{_fmt(r.p99_latency_s, '.2f'):>8}"
            f"{_fmt(r.makespan_s, '.2f'):>10}{r.peak_bytes / MIB:>10.1f}"
            f"{_fmt(None if r.pool_peak_bytes is None else r.pool_peak_bytes / MIB, '.1f'):>10}"
            f"  {r.enforcement}"
        )
        for note in r.notes:
            print(f"    note: {note}")
        out[p] = r.to_dict()
    return out


def contention_part(workload: str, steps: int) -> dict[str, Any]:
    exp = Experiment(workload=workload, mode="inference", batch_size=32, steps=steps, warmup=2)
    r = contention(exp)
    print(f"\n== contention: two {workload} inference runs (batch 32, {steps} requests) ==")
    for run in r.runs:
        print(
            f"{run.label:<32} alone {_fmt(run.alone_step_s and run.alone_step_s * 1e3, '.1f')} ms"
            f" ({'steady' if run.alone_steady else 'disturbed'}), together "
            f"{_fmt(run.together_step_s and run.together_step_s * 1e3, '.1f')} ms "
            f"({'steady' if run.together_steady else 'disturbed'}): "
            f"x{_fmt(run.inflation, '.2f')}"
        )
    print(
        f"throughput alone {_fmt(r.throughput_alone, '.0f')} samples/s, together "
        f"{_fmt(r.throughput_together, '.0f')} samples/s: x{_fmt(r.throughput_ratio, '.2f')} "
        f"(timed passes overlapped {_fmt(r.overlap, '.0%')}); combined RSS peak "
        f"{_fmt(r.combined_rss_peak_bytes and r.combined_rss_peak_bytes / MIB, '.0f')} MiB"
    )
    for note in r.notes:
        print(f"    note: {note}")
    return r.to_dict()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-mib", type=int, default=64)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--contention", default="cnn", choices=["mlp", "cnn", "transformer"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--slack",
        default=None,
        metavar="LO,HI",
        help="deadlines as LO..HI x each task's service time alone (lab 09's; default: the mix's)",
    )
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    slack = None if a.slack is None else tuple(float(v) for v in a.slack.split(","))
    out = {
        "scheduling": scheduling(a.n, a.seed, a.budget_mib * MIB, a.slots, slack),  # type: ignore[arg-type]
        "contention": contention_part(a.contention, a.steps),
    }
    if a.json is not None:
        a.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
