"""Allocation strategies for inference, measured: dynamic vs preallocated vs lazy, in place,
conv + batch-norm folding and torch.compile, per request.

    python benchmarks/inference.py [--workloads mlp,cnn,transformer] [--rounds 3] [--steps 40]
                                   [--configs dynamic,preallocated,...] [--batch cnn=32]
                                   [--json test-artifacts/inference.json]

Each configuration is one ``mode="inference"`` run of a built-in workload in a fresh worker
process, through ``memlab.runner`` (``start`` + ``wait``: what ``memlab.runner.run`` and
``memlab run --mode inference ... --json`` do, with the handle kept so that Ctrl-C stops the
worker). The configurations (``memlab/knobs/inference.py``):

  dynamic       eager PyTorch, a fresh allocation per tensor per request (the anchor)
  preallocated  the traced ATen graph planned into one arena, allocated once
  lazy          a buffer per tensor, allocated on the first request and kept
  inplace       in-place activations and residual adds (``inplace=True``)
  fold          conv + batch norm folded (``fuse="fold"``; only where the model has batch norms)
  compile       ``torch.compile`` with inductor (``fuse="compile"``); its compile time is
                printed on its own line, it is in no latency

Rounds interleave: each round runs every configuration of every workload once, in an order
rotated by one each round, so a slow drift of the machine hits all alike. Per configuration the
table prints the median over rounds of

  peak         tensor bytes at the run's peak (``RunResult.peak_bytes``: parameters, and the
               arena or lazy buffers, which the model holds, included)
  allocs/req   allocator calls per request in the tracked pass (``Latency.allocs_per_request``)
  first        the fresh worker's very first request, before any warm-up
  p50, p99     latency of the untracked timed requests; req/s = requests / their summed time

and each as a ratio to ``dynamic`` *of the same workload in the same round*: the median of the
per-round ratios, with their min-max. ``timing`` is the runs' verdict (``RunResult.timing``):
how many rounds were steady, and the median share of the machine's CPU that other processes
took during the timed requests. A ratio from a round where the configuration or its dynamic
anchor was disturbed is marked ``!``: on a shared machine read those as noise.

Under each table, one line compares the ``preallocated`` run's arena with ``memlab.plan``'s
best plan and lower bound for the same experiment. They plan different graphs: ``memlab.plan``
places the graph tensors of one eager pass (op-internal scratch such as oneDNN's buffers stays
outside), ``preallocated`` plans the ``make_fx`` ATen graph it executes, where a convolution is
im2col + batched matmul, so its column buffers are in the arena too.

Figures only; no target is asserted. Every worker (runs, the service worker ``memlab.plan``
uses) is stopped on success, on an error and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memlab.config import MIB, WORKLOADS  # noqa: E402

#: The configurations: label -> the Experiment fields it changes from the dynamic anchor.
CONFIGS: dict[str, dict[str, Any]] = {
    "dynamic": {},
    "preallocated": {"allocation": "preallocated"},
    "lazy": {"allocation": "lazy"},
    "inplace": {"inplace": True},
    "fold": {"fuse": "fold"},
    "compile": {"fuse": "compile"},
}
ANCHOR = "dynamic"
T = TypeVar("T")
#: Batch sizes that make one request a few ms to a few tens of ms on 2 shared cores (measured
#: while writing this: mlp 128 ~20 ms, cnn 32 ~20 ms, transformer 16 ~12 ms, each +-3x noise).
DEFAULT_BATCH: dict[str, int] = {"mlp": 128, "cnn": 32, "transformer": 16}
DEFAULT_JSON = ROOT / "test-artifacts" / "inference.json"
#: The figures of a run the table compares, in its column order.
FIGURES = ("peak_bytes", "allocs_per_request", "first_s", "p50_s", "p99_s", "requests_per_s")


# -- options ----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad options: one line on stderr, exit 2 (argparse prints its usage too)."""
        print(f"inference.py: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _names(value: str, allowed: Sequence[str], what: str, ap: _Parser) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        ap.error(
            f"--{what}: {', '.join(repr(b) for b in bad) or 'nothing given'} "
            f"{'is' if len(bad) == 1 else 'are'} not allowed; choose among {', '.join(allowed)}"
        )
    return list(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = _Parser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--workloads", default="mlp,cnn,transformer", help="comma-separated")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--steps", type=int, default=40, help="requests per pass (default 40)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up requests (default 2)")
    ap.add_argument(
        "--batch",
        action="append",
        default=[],
        metavar="WORKLOAD=N",
        help="batch size of a workload (default mlp=128, cnn=32, transformer=16)",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default 600)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the figures go")
    a = ap.parse_args(argv)
    a.workloads = _names(a.workloads, list(WORKLOADS), "workloads", ap)
    a.configs = _names(a.configs, list(CONFIGS), "configs", ap)
    if ANCHOR not in a.configs:
        ap.error(f"--configs must include {ANCHOR!r}: every ratio is to it")
    for name in ("rounds", "steps"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.timeout <= 0:
        ap.error(f"--timeout must be > 0 seconds, got {a.timeout}")
    batch = dict(DEFAULT_BATCH)
    for item in a.batch:
        wl, _, n = item.partition("=")
        if wl not in WORKLOADS or not n.isdigit() or int(n) < 1:
            ap.error(
                f"--batch: expected WORKLOAD=N with N >= 1 and WORKLOAD in "
                f"{', '.join(WORKLOADS)}, got {item!r}"
            )
        batch[wl] = int(n)
    a.batch = batch
    return a


# -- one run's figures (pure) -----------------------------------------------------------------
def figures(result: Any) -> dict[str, Any]:
    """What the table needs from one ``RunResult``: ``None`` where the run did not measure it."""
    lat = result.latency
    t = result.timing
    ok = result.status == "ok"
    return {
        "status": result.status,
        "error": _error_line(result.error),
        "error_detail": result.error,
        "peak_bytes": result.peak_bytes if ok else None,
        "allocs_per_request": None if lat is None else lat.allocs_per_request,
        "first_s": None if lat is None else lat.first_s,
        "p50_s": None if lat is None else lat.p50_s,
        "p95_s": None if lat is None else lat.p95_s,
        "p99_s": None if lat is None else lat.p99_s,
        "requests_per_s": None if lat is None else lat.requests_per_s,
        "compile_s": None if lat is None else lat.compile_s,
        "requests_timed": 0 if lat is None else len(lat.request_times_s),
        "steady": None if t is None else bool(t.steady),
        "others_share": None if t is None else t.others_share,
        "disturbed_steps": None if t is None else t.disturbed_steps,
        "timing_note": None if t is None else t.note,
        "plan_arena_bytes": result.metrics.get("plan_arena_bytes"),
        "plan_naive_bytes": result.metrics.get("plan_naive_bytes"),
        "plan_lower_bound_bytes": result.metrics.get("plan_lower_bound_bytes"),
        "eager_fallback_ops": result.metrics.get("eager_fallback_ops"),
    }


def _error_line(error: str | None) -> str | None:
    """The error's first line; an exception without a message (a bare ``assert``) gets the
    innermost ``File ..., line ...`` of its traceback, which says where it failed."""
    lines = [ln.strip() for ln in (error or "").strip().splitlines() if ln.strip()]
    if not lines:
        return None
    first = lines[0]
    if first.endswith(":"):
        where = [ln for ln in lines if ln.startswith("File ")]
        if where:
            first += " at " + where[-1]
    return first


def _ratio(v: float | None, base: float | None) -> float | None:
    if v is None or base is None:
        return None
    if base == 0:
        return 1.0 if v == 0 else None  # 0 / 0: the same; x / 0: no ratio
    return v / base


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (workload, config): the median of each figure over the rounds, and of its per-round
    ratio to the anchor run of the same workload and round (with min and max), the steady count
    and the median others' share. ``runs``: dicts with ``workload``, ``config``, ``round`` and
    the keys of :func:`figures`."""
    anchors = {(r["workload"], r["round"]): r for r in runs if r["config"] == ANCHOR}
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["workload"], r["config"]), []).append(r)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        s: dict[str, Any] = {
            "rounds": len(rs),
            "ok": len(ok),
            "errors": sorted({f"{r['status']}: {r['error']}" for r in rs if r["status"] != "ok"}),
            "steady": sum(1 for r in ok if r.get("steady")),
            "others_share": _median(r.get("others_share") for r in ok),
            "compile_s": [r["compile_s"] for r in ok if r.get("compile_s") is not None],
        }
        for f in FIGURES:
            s[f] = _median(r.get(f) for r in ok)
            ratios: list[float] = []
            steady: list[float] = []  # the rounds where both runs were steady
            for r in ok:
                a = anchors.get((r["workload"], r["round"]))
                if a is None or a["status"] != "ok":
                    continue
                q = _ratio(r.get(f), a.get(f))
                if q is None:
                    continue
                ratios.append(q)
                if r.get("steady") and a.get("steady"):
                    steady.append(q)
            s[f"{f}_ratio"] = _median(ratios)
            s[f"{f}_ratio_range"] = (min(ratios), max(ratios)) if ratios else None
            s[f"{f}_ratio_disturbed"] = len(steady) < len(ratios)
            s[f"{f}_ratio_steady"] = _median(steady)
            s[f"{f}_ratio_steady_rounds"] = len(steady)
        out[key] = s
    return out


# -- formatting (pure) ------------------------------------------------------------------------
def _num(v: float | None, scale: float, digits: int) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _ratio_text(s: Mapping[str, Any], f: str) -> str:
    q = s.get(f"{f}_ratio")
    if q is None:
        return "-"
    lo, hi = s[f"{f}_ratio_range"]
    timed = f not in ("peak_bytes", "allocs_per_request")  # memory figures need no clock
    flagged = timed and s[f"{f}_ratio_disturbed"]
    text = f"{q:.2f}{'!' if flagged else ''}"
    if s["ok"] > 1 and (round(lo, 2), round(hi, 2)) != (round(q, 2), round(q, 2)):
        text += f" ({lo:.2f}-{hi:.2f})"
    n = s.get(f"{f}_ratio_steady_rounds", 0)
    if flagged and n:  # what the steady rounds alone say
        text += f" [steady {s[f'{f}_ratio_steady']:.2f} n={n}]"
    return text


COLS = (
    ("peak MiB", "peak_bytes", 1 / MIB, 2),
    ("allocs/req", "allocs_per_request", 1.0, 1),
    ("first ms", "first_s", 1e3, 1),
    ("p50 ms", "p50_s", 1e3, 2),
    ("p99 ms", "p99_s", 1e3, 2),
    ("req/s", "requests_per_s", 1.0, 1),
)


def format_table(
    workload: str,
    batch: int,
    summary: Mapping[tuple[str, str], Mapping[str, Any]],
    configs: Sequence[str],
) -> list[str]:
    """The workload's two tables (figures, then ratios to dynamic) and the timing verdicts."""
    lines = [f"{workload} (batch {batch}): medians over rounds"]
    head = f"  {'config':<13}" + "".join(f"{c[0]:>11}" for c in COLS) + "   timing"
    lines += [head, "  " + "-" * (len(head) - 2)]
    shown = [c for c in configs if (workload, c) in summary]
    for c in shown:
        s = summary[(workload, c)]
        if s["ok"] == 0:
            lines.append(f"  {c:<13} {'; '.join(s['errors'])[:110]}")
            continue
        cells = "".join(f"{_num(s[f], k, d):>11}" for _, f, k, d in COLS)
        verdict = f"{s['steady']}/{s['ok']} steady"
        if s["steady"] < s["ok"]:
            verdict = "DISTURBED " + verdict
        share = s["others_share"]
        verdict += "" if share is None else f", others {share:.0%} of CPU"
        fail = f"; {s['rounds'] - s['ok']} failed: {s['errors'][0][:60]}" if s["errors"] else ""
        lines.append(f"  {c:<13}{cells}   {verdict}{fail}")
    lines.append(
        f"  x {ANCHOR} (same round; median, min-max over rounds; ! = a disturbed round; "
        "[steady: the median over the rounds where both runs were steady])"
    )
    for c in shown:
        s = summary[(workload, c)]
        if c == ANCHOR or s["ok"] == 0:
            continue
        lines.append(
            f"  {c:<13} "
            + " ".join(f"{name.split()[0]} {_ratio_text(s, f)}" for name, f, _, _ in COLS)
        )
    comp = summary.get((workload, "compile"))
    if comp and comp["compile_s"]:
        v = comp["compile_s"]
        rng = f" ({min(v):.1f}-{max(v):.1f})" if len(v) > 1 else ""
        lines.append(
            f"  compile: inductor took {statistics.median(v):.1f} s{rng} to compile, before the "
            "first request (in no latency above)"
        )
    return lines


def plan_line(
    workload: str, arena: Mapping[str, Any] | None, plan: Mapping[str, Any] | None
) -> str:
    """The preallocated run's arena beside ``memlab.plan``'s best plan and lower bound."""
    mib = lambda b: "-" if b is None else f"{b / MIB:.2f} MiB"  # noqa: E731
    has_conv = any("convolution" in op for op in (plan or {}).get("ops") or ())
    if arena and arena.get("plan_arena_bytes") is not None:
        a = (
            f"preallocated arena {mib(arena['plan_arena_bytes'])} (naive "
            f"{mib(arena.get('plan_naive_bytes'))}, lower bound "
            f"{mib(arena.get('plan_lower_bound_bytes'))}; the make_fx ATen graph it runs"
            + (", convs as im2col + bmm, column buffers planned" if has_conv else "")
            + ")"
        )
    else:
        a = "preallocated arena: not measured"
    if plan and plan.get("best_bytes") is not None:
        p = (
            f"memlab.plan best {mib(plan['best_bytes'])} ({plan['best_planner']}), lower bound "
            f"{mib(plan['lower_bound_bytes'])} (the eager pass's graph tensors; eager's peak "
            f"{mib(plan['eager_peak_bytes'])}, {mib(plan['scratch_bytes'])} op-internal scratch "
            "outside the plan)"
        )
    else:
        p = f"memlab.plan: {(plan or {}).get('error') or 'not run'}"
    return f"  plan {workload}: {a}; {p}"


# -- measuring --------------------------------------------------------------------------------
def _plan(exp: Any) -> dict[str, Any]:
    import memlab

    try:
        p = memlab.plan(exp)
    except Exception as e:  # noqa: BLE001 - a failed plan is a line in the table, not a crash
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100]}"}
    return {
        "best_bytes": p.best_bytes,
        "best_planner": p.best_planner,
        "lower_bound_bytes": p.lower_bound_bytes,
        "naive_bytes": p.naive_bytes,
        "eager_peak_bytes": p.eager_peak_bytes,
        "scratch_bytes": p.scratch_bytes,
        "ops": list(p.ops),
    }


def _run(exp: Any, timeout_s: float) -> Any:
    """One run in a fresh worker: ``memlab.runner.run``'s path, with the handle kept so that
    an interrupt (Ctrl-C, SIGTERM) cancels it and its worker is killed before we go on."""
    from memlab import runner

    handle = runner.start(exp, timeout_s=timeout_s)
    try:
        return handle.wait()
    except BaseException:
        handle.cancel()  # the reader thread kills the worker after a 0.5 s grace
        try:
            handle.wait(5)
        except TimeoutError:
            pass
        raise


def rotated(names: Sequence[T], k: int) -> list[T]:
    """Round ``k``'s order: ``names`` rotated by ``k``."""
    k %= max(1, len(names))
    return list(names[k:]) + list(names[:k])


def _has_batch_norm(plan: Mapping[str, Any]) -> bool | None:
    ops = plan.get("ops")
    return None if ops is None else any("batch_norm" in op for op in ops)


def measure(a: argparse.Namespace) -> dict[str, Any]:
    from memlab import runner
    from memlab.config import Experiment

    bases = {
        w: Experiment(
            workload=w,
            mode="inference",
            batch_size=a.batch[w],
            data_size=max(256, a.batch[w]),
            steps=a.steps,
            warmup=a.warmup,
            device="cpu",
        )
        for w in a.workloads
    }
    plans: dict[str, dict[str, Any]] = {}
    configs: dict[str, list[str]] = {}
    try:
        for w, exp in bases.items():
            t0 = time.perf_counter()
            plans[w] = _plan(exp)
            bn = _has_batch_norm(plans[w])
            # fold only where there is a batch norm to fold (unknown: run it, its note says).
            configs[w] = [c for c in a.configs if c != "fold" or bn is not False]
            print(f"plan {w}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        runner.shutdown_service()  # not running while the runs are timed
    # One list of every (workload, config) pair, rotated each round.
    pairs = [(w, c) for w in a.workloads for c in configs[w]]
    runs: list[dict[str, Any]] = []
    for k in range(a.rounds):
        for i, (w, c) in enumerate(rotated(pairs, k)):
            exp = bases[w].replace(**CONFIGS[c])
            t0 = time.perf_counter()
            r = _run(exp, a.timeout)
            row = {"workload": w, "config": c, "round": k, "position": i, **figures(r)}
            row["wall_s"] = time.perf_counter() - t0
            row["experiment"] = exp.to_dict()
            row["notes"] = list(r.notes)
            runs.append(row)
            p50 = row["p50_s"]
            print(
                f"round {k + 1}/{a.rounds} {w:<11} {c:<13} {row['status']:<9} "
                f"{row['wall_s']:5.1f} s  p50 {_num(p50, 1e3, 2)} ms  "
                + ("steady" if row["steady"] else "DISTURBED" if row["steady"] is False else "-")
                + ("" if row["others_share"] is None else f" (others {row['others_share']:.0%})")
                + ("" if row["status"] == "ok" else f"  {row['error']}"),
                file=sys.stderr,
                flush=True,
            )
    return {"bases": bases, "plans": plans, "configs": configs, "runs": runs}


def report(a: argparse.Namespace, m: Mapping[str, Any]) -> list[str]:
    summary = summarize(m["runs"])
    lines: list[str] = []
    for w in a.workloads:
        lines += format_table(w, a.batch[w], summary, m["configs"][w])
        pre = [r for r in m["runs"] if r["workload"] == w and r["config"] == "preallocated"]
        arena = next((r for r in pre if r.get("plan_arena_bytes") is not None), None)
        lines.append(plan_line(w, arena, m["plans"].get(w)))
        if "fold" in a.configs and "fold" not in m["configs"][w]:
            lines.append(f"  fold: not run ({w} has no batch norm in its graph)")
        lines.append("")
    return lines


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: every `finally` runs


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    # A shell starts a background job (`... &`) with SIGINT ignored, and Python keeps it so:
    # restore the KeyboardInterrupt handler, so that `kill -INT` stops it like Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import torch  # only for the header: the runs import torch in their workers

    from memlab import runner

    t_all = time.perf_counter()
    try:
        m = measure(a)
    except KeyboardInterrupt:
        print("inference.py: interrupted; workers stopped", file=sys.stderr)
        return 130
    finally:
        runner.shutdown_service()
        runner.shutdown_warm_worker()
    print(
        f"memlab inference strategies: torch {torch.__version__}, cpu, {a.rounds} round(s), "
        f"{a.steps} tracked + {a.steps} timed requests per run after {a.warmup} warm-up, one "
        f"fresh worker per run ({time.perf_counter() - t_all:.0f} s in all)\n"
    )
    lines = report(a, m)
    print("\n".join(lines))
    runs = m["runs"]
    steady = sum(1 for r in runs if r.get("steady"))
    others = _num(_median(r.get("others_share") for r in runs), 100, 0)
    print(
        f"timing: {steady} of {len(runs)} runs steady; median share of the CPU other processes "
        f"took during the timed requests: {others}%"
    )
    a.json.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    a.json.write_text(
        json.dumps(
            {
                "torch": torch.__version__,
                "rounds": a.rounds,
                "steps": a.steps,
                "warmup": a.warmup,
                "batch": {w: a.batch[w] for w in a.workloads},
                "configs": m["configs"],
                "plans": {
                    w: {k: v for k, v in p.items() if k != "ops"} for w, p in m["plans"].items()
                },
                "summary": [{"workload": w, "config": c, **s} for (w, c), s in summary.items()],
                "runs": runs,
                "table": lines,
            },
            indent=1,
            default=str,
        )
    )
    print(f"figures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
