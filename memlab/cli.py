"""The command line: ``memlab run ...``, ``memlab estimate ...``, ``memlab plan ...``,
``memlab bandwidth``, and the run store's ``memlab runs``, ``memlab show RUN``,
``memlab compare A B``, ``memlab report RUN [B]`` and ``memlab export RUN --format F -o PATH``,
``memlab sweep --grid FIELD=V1,V2 ...`` and ``memlab schedule`` (lab 09's task mix under the
scheduling policies) (also ``python -m memlab``).

Exit codes: 0 the run was ``ok``; 3 ``oom``; 1 ``error`` or ``cancelled`` (or a model that
cannot be estimated); 2 a bad argument (one line naming it, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from memlab.timeline import CATEGORIES, RunResult, format_bytes

if TYPE_CHECKING:
    from memlab.config import Experiment, FieldSpec

__all__ = ["main"]

EXIT = {"ok": 0, "oom": 3, "error": 1, "cancelled": 1}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, no usage block: ``memlab: error: ...``."""
        self.exit(2, f"memlab: error: {message}\n")


def _lenient(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert``, or the text unchanged when it does not convert: the Experiment then rejects
    it with the same message as from Python (``batch_size must be a positive int, got 'x'``)."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            return text

    return parse


def _flags(spec: FieldSpec) -> list[str]:
    """``--batch-size``; a field with a shorter alias also answers to its own name."""
    names = [spec.option] + ([spec.name] if spec.alias else [])
    return ["--" + n.replace("_", "-") for n in names]


def _experiment_args(p: argparse.ArgumentParser) -> None:
    """One option per ``config.FIELDS`` entry: its name, type, default, choices and help come
    from the declaration; the values are checked by ``Experiment`` itself, not by argparse, so
    a bad value reads as it does from Python."""
    from memlab.config import FIELDS, GROUPS

    groups = {g: p.add_argument_group(f"{g} options") for g in GROUPS}
    for spec in FIELDS.values():
        g = groups[spec.group]
        flags = _flags(spec)
        help = spec.help if spec.kind in ("workload", "choice") else f"{spec.help}; {spec.rule()}"
        if spec.kind == "bool":
            # Two plain flags rather than BooleanOptionalAction, whose help text differs
            # between Python versions.
            g.add_argument(
                *flags,
                dest=spec.name,
                action="store_true",
                default=spec.default,
                help=f"{help} (default: {spec.default})",
            )
            g.add_argument(
                *["--no-" + f[2:] for f in flags],
                dest=spec.name,
                action="store_false",
                default=spec.default,
                help=f"not {flags[0]}",
            )
            continue
        metavar = {"int": "N", "float": "X", "bytes": "SIZE"}.get(spec.kind)
        if spec.choices:
            metavar = "{" + ",".join(spec.choices) + "}"
            if spec.kind == "workload":
                metavar += "|MODULE:FUNCTION"
        convert = {"int": _lenient(int), "float": _lenient(float)}.get(spec.kind, str)
        g.add_argument(
            *flags,
            dest=spec.name,
            type=convert,
            default=spec.default,
            metavar=metavar,
            help=f"{help} (default: {spec.default})",
        )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _parser() -> _Parser:
    p = _Parser(prog="memlab", description="Measure how memory choices change PyTorch code.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run an experiment in a worker process and report it")
    _experiment_args(r)
    r.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    e = sub.add_parser("estimate", help="predict an experiment's peak without running it")
    _experiment_args(e)
    e.add_argument(
        "--max-batch",
        action="store_true",
        help="find the largest batch size predicted to fit --budget, then confirm it "
        "with one real run",
    )
    e.add_argument("--no-confirm", action="store_true", help="with --max-batch: skip the run")
    pl = sub.add_parser("plan", help="plan one inference pass into one arena (memlab.plan)")
    _experiment_args(pl)
    pl.add_argument("--fake", action="store_true", help="on fake tensors: nothing allocated")
    bw = sub.add_parser("bandwidth", help="measure copy/triad bandwidth per working set (numpy)")
    bw.add_argument("--json", action="store_true", help="print the result as JSON")
    bw.add_argument(
        "--max-bytes", default=None, metavar="SIZE", help="largest working set (default: 1GiB)"
    )
    bw.add_argument("--smoke", action="store_true", help="few sizes, up to 8MiB")
    rf = sub.add_parser("roofline", help="each op's FLOPs and bytes against measured roofs")
    _experiment_args(rf)
    rf.add_argument(
        "--bandwidth",
        type=_lenient(float),
        default=None,
        metavar="GBPS",
        help="DRAM bandwidth in GB/s (default: measured in the worker)",
    )
    rf.add_argument("--requests", type=_lenient(int), default=5, metavar="N", help="timed requests")
    rf.add_argument("--top", type=int, default=15, metavar="N", help="ops shown, slowest first")
    rs = sub.add_parser("runs", help="list the saved runs, newest first (the run store)")
    rs.add_argument("--json", action="store_true", help="print the runs as JSON")
    rs.add_argument("--limit", type=_lenient(int), default=20, metavar="N", help="runs shown")
    rs.add_argument("--status", default=None, help="only runs of this status (ok, oom, error)")
    rs.add_argument("--workload", default=None, help="only runs of this workload")
    sh = sub.add_parser("show", help="one saved run's figures (an id or a unique prefix)")
    sh.add_argument("run_id", metavar="RUN")
    sh.add_argument("--json", action="store_true", help="print the result as JSON")
    cp = sub.add_parser("compare", help="run B against run A: memory and speed deltas")
    cp.add_argument("a", metavar="A", help="a run id (or a unique prefix)")
    cp.add_argument("b", metavar="B", help="a run id (or a unique prefix)")
    cp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    rp = sub.add_parser("report", help="a standalone HTML page of a run, or of B against A")
    rp.add_argument("run_id", metavar="RUN", help="a run id (or a unique prefix)")
    rp.add_argument("other", metavar="B", nargs="?", default=None, help="compare B against RUN")
    rp.add_argument("-o", "--output", default=None, metavar="PATH", help="default: RUN.html")
    ex = sub.add_parser("export", help="a saved run in another tool's format")
    ex.add_argument("run_id", metavar="RUN", help="a run id (or a unique prefix)")
    ex.add_argument(
        "--format",
        required=True,
        dest="fmt",
        metavar="{html,memory_viz,chrome,tensorboard,parquet}",
        help="html: offline page; memory_viz: torch.cuda._memory_viz pickle; chrome: "
        "Trace Event JSON (Perfetto); tensorboard: a log directory; parquet: the timeline",
    )
    ex.add_argument("-o", "--output", required=True, metavar="PATH", help="file (or log dir)")
    _sweep_parser(sub)
    _schedule_parser(sub)
    _search_parser(sub)
    return p


def _search_parser(sub: Any) -> None:
    """``memlab search``: lab 11's memory-aware architecture search (memlab.nas), from a shell."""
    se = sub.add_parser("search", help="search small models for the digits under a device budget")
    se.add_argument("--device", required=True, metavar="PROFILE", help="a device profile")
    se.add_argument(
        "--budget",
        default=None,
        metavar="SIZE",
        help="the model's share, e.g. 16MB (default: the profile's budget)",
    )
    se.add_argument("--trials", type=_lenient(int), default=20, metavar="N", help="default 20")
    se.add_argument("--sampler", default="nsga2", metavar="{random,nsga2}", help="default nsga2")
    se.add_argument("--seed", type=_lenient(int), default=0, metavar="S")
    se.add_argument(
        "--train-steps", type=_lenient(int), default=100, metavar="N", help="per candidate"
    )
    se.add_argument("--no-verify", action="store_true", help="skip the chosen model's real run")
    se.add_argument("--json", action="store_true", help="the SearchResult as JSON")


def _search(ns: argparse.Namespace) -> int:
    """Exit 0 when the chosen model ran within its prediction's tolerance (or was not
    verified), 1 when nothing fitted or the verification failed, 2 for a bad argument."""
    from memlab.nas import search_architectures
    from memlab.timeline import format_bytes

    try:
        r = search_architectures(
            profile=ns.device,
            budget_bytes=ns.budget,
            trials=ns.trials,
            sampler=ns.sampler,
            seed=ns.seed,
            train_steps=ns.train_steps,
            verify=not ns.no_verify,
        )
    except ValueError as e:
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    v = r.verification
    ok = r.chosen is not None and (ns.no_verify or (v is not None and v.within_tolerance))
    if ns.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0 if ok else 1
    print(f"{r.sampler} search on {r.profile}, budget {format_bytes(r.budget_bytes)}:")
    for c in r.candidates:
        acc = "not trained (over budget)" if not c.trained else f"accuracy {c.accuracy:.3f}"
        lat = "" if c.latency_s is None else f", {c.latency_s * 1e3:.2f} ms"
        lat += " (disturbed)" if c.latency_steady is False else ""
        front = " *" if c.number in r.pareto else ""
        print(
            f"  {c.number:3d} {c.architecture:24s} predicted {format_bytes(c.predicted_peak_bytes)}"
            f"  {acc}{lat}{front}"
        )
    print("  (* on the Pareto front: accuracy, predicted peak, latency measured here)")
    disturbed = [c for c in r.trained if c.latency_steady is False]
    if disturbed:
        print(
            f"  {len(disturbed)} of {len(r.trained)} latencies were disturbed by other processes "
            f"(e.g. {disturbed[0].architecture}: {disturbed[0].latency_note})"
        )
    if r.chosen is None:
        print("no candidate fitted the budget", file=sys.stderr)
        return 1
    print(f"chosen: {r.chosen.architecture} (accuracy {r.chosen.accuracy:.3f})")
    if v is not None:
        measured = "-" if v.measured_peak_bytes is None else format_bytes(v.measured_peak_bytes)
        err = "" if v.relative_error is None else f" ({v.relative_error:+.1%})"
        print(
            f"verified: {v.status}, measured {measured} against predicted "
            f"{format_bytes(v.predicted_peak_bytes)}{err}"
        )
    return 0 if ok else 1


def _schedule_parser(sub: Any) -> None:
    """``memlab schedule``: lab 09's task mix under one policy or all four, from a shell."""
    sc = sub.add_parser("schedule", help="a seeded mix of inference tasks under a policy")
    sc.add_argument(
        "--policy",
        default="all",
        metavar="{fifo,priority,edf,memory-aware,all}",
        help="all: the four on the same mix and warm workers (default)",
    )
    sc.add_argument("--tasks", type=_lenient(int), default=8, metavar="N", help="tasks (8)")
    sc.add_argument("--seed", type=_lenient(int), default=0, metavar="S", help="the mix's seed")
    sc.add_argument(
        "--requests", default="4,10", metavar="LO,HI", help="requests per task, drawn in LO..HI"
    )
    sc.add_argument("--budget", default="64MiB", metavar="SIZE", help="the shared memory")
    sc.add_argument("--slots", type=_lenient(int), default=2, metavar="N", help="workers (2)")
    sc.add_argument(
        "--slack",
        default=None,
        metavar="LO,HI",
        help="deadlines as LO..HI x each task's service time measured alone first (as lab 09 "
        "does); default: the mix's own deadlines",
    )
    sc.add_argument("--json", action="store_true", help="print the results as JSON")


def _pair(text: str, name: str, kind: Callable[[str], Any]) -> tuple[Any, Any]:
    parts = text.split(",")
    try:
        lo, hi = (kind(v) for v in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None:
        raise ValueError(f"{name} must be two numbers LO,HI, got {text!r}")
    return lo, hi


def _schedule(ns: argparse.Namespace) -> int:
    """Run the mix; one row per policy (misses, oom, p50/p99, makespan, exact peak)."""
    from memlab.config import parse_bytes
    from memlab.scheduling import POLICIES, compare_policies, mixed_tasks, predict_peaks

    try:
        if ns.policy != "all" and ns.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {', '.join(POLICIES)} or all")
        requests = _pair(ns.requests, "--requests", int)
        slack = None if ns.slack is None else _pair(ns.slack, "--slack", float)
        budget = parse_bytes(ns.budget)
        tasks = mixed_tasks(n=ns.tasks, seed=ns.seed, requests=requests)
    except ValueError as e:
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    policies = list(POLICIES) if ns.policy == "all" else [ns.policy]
    try:
        predicted = predict_peaks(tasks)
        if slack is not None:
            from memlab.scheduling import run_alone, service_times, with_deadlines

            tasks = with_deadlines(
                tasks, service_times(run_alone(tasks, predicted)), slack=slack, seed=ns.seed
            )
        results = compare_policies(
            tasks, budget, policies=policies, slots=ns.slots, predicted=predicted
        )
    except ValueError as e:  # e.g. a task memory-aware admission could never admit
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps({p: r.summary() for p, r in results.items()}, indent=2))
        return 0
    print(f"{len(tasks)} tasks (seed {ns.seed}), budget {format_bytes(budget)}, {ns.slots} slots")
    head = f"{'policy':<14}{'misses':>8}{'oom':>5}{'p50 s':>8}{'p99 s':>8}{'makespan s':>12}"
    print(head + f"{'peak':>12}  enforced by")
    for p, r in results.items():

        def sec(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        print(
            f"{p:<14}{r.deadline_misses:>5}/{len(r.tasks):<2}{r.oom_count:>5}"
            f"{sec(r.p50_latency_s):>8}{sec(r.p99_latency_s):>8}{sec(r.makespan_s):>12}"
            f"{format_bytes(r.peak_bytes):>12}  {r.enforcement}"
        )
        for n in r.notes:
            print(f"  {p}: {n}")
        for t in r.tasks:
            if t.status == "error":
                print(f"  {p}: {t.name} failed: {t.error}")
    return 0


def _sweep_parser(sub: Any) -> None:
    """``memlab sweep``: the options of ``memlab run`` are the base experiment."""
    sw = sub.add_parser("sweep", help="run every combination of --grid values (cached runs)")
    _experiment_args(sw)
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="a field and its values, e.g. --grid batch_size=8,16 (repeatable)",
    )
    sw.add_argument("--repeat", type=_lenient(int), default=1, metavar="N", help="runs each")
    sw.add_argument("--rerun", action="store_true", help="run again what the store holds")
    sw.add_argument(
        "--backend",
        default=None,
        metavar="{local,ray}",
        help="default: ray if RAY_ADDRESS is set, else local",
    )
    sw.add_argument("--timeout", type=float, default=None, help="seconds per run before giving up")


def _grid_value(spec: FieldSpec, text: str) -> Any:
    """One ``--grid`` value as its field stores it; the sweep checks it (and names the field)."""
    if spec.kind == "int":
        return _lenient(int)(text)
    if spec.kind == "float":
        return _lenient(float)(text)
    if spec.kind == "bool":
        return {"true": True, "false": False}.get(text.lower(), text)
    if spec.optional and text.lower() == "none":
        return None
    return text


def _sweep(ns: argparse.Namespace, exp: Experiment) -> int:
    """Exit 0 when every run finished (ok or oom), 1 when one failed, 2 for a bad argument."""
    from memlab.config import FIELDS
    from memlab.sweeping import sweep

    grid: dict[str, list[Any]] = {}
    try:
        for item in ns.grid:
            name, sep, values = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or not values.strip():
                raise ValueError(f"--grid must be FIELD=V1,V2,..., got {item!r}")
            spec = next((s for s in FIELDS.values() if name in (s.name, s.alias)), None)
            vals = [v.strip() for v in values.split(",")]
            grid[name] = vals if spec is None else [_grid_value(spec, v) for v in vals]
        res = sweep(
            exp,
            grid,
            repeat=ns.repeat,
            rerun=ns.rerun,
            backend=ns.backend,
            progress=not ns.json,
            timeout_s=ns.timeout,
        )
    except (ValueError, TypeError, ImportError) as e:
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    if ns.json:
        rows = [{k: _json_safe(v) for k, v in r.items()} for r in res.table().to_dict("records")]
        out = {"backend": res.backend, "wall_s": res.wall_s, "rows": rows}
        print(json.dumps(out, indent=2))
    else:
        print(res.table().to_string(index=False))
        print(f"{res.n_run} run(s) measured, {res.n_cached} cached, {res.wall_s:.1f} s")
    return 1 if any(r.status not in ("ok", "oom") for r in res.rows) else 0


def _store_command(ns: argparse.Namespace) -> int:
    """``runs``, ``show`` and ``compare``: read the store; a missing run, an unreadable store
    or a bad filter is one line on stderr and exit code 2."""
    from memlab.store import StoreError

    try:
        if ns.command == "runs":
            return _runs(ns)
        if ns.command == "show":
            return _show(ns)
        if ns.command in ("report", "export"):
            return _export(ns)
        return _compare(ns)
    except KeyError as e:  # a run id that is not there (KeyError quotes its message)
        print(f"memlab: error: {e.args[0] if e.args else e}", file=sys.stderr)
    except (StoreError, ValueError, TypeError, ImportError, OSError) as e:
        # ImportError: an export's optional library; OSError: an -o path that cannot be written
        print(f"memlab: error: {e}", file=sys.stderr)
    return 2


def _json_safe(v: Any) -> Any:
    """NaN (pandas' missing number) as null, numpy scalars as Python's."""
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def _runs(ns: argparse.Namespace) -> int:
    from datetime import datetime

    from memlab.store import runs

    if not isinstance(ns.limit, int) or ns.limit < 1:
        raise ValueError(f"--limit must be a positive int, got {ns.limit!r}")
    df = runs(status=ns.status, workload=ns.workload, limit=ns.limit)
    if ns.json:
        rows = [
            {k: (v.isoformat() if k == "created" else _json_safe(v)) for k, v in row.items()}
            for row in df.to_dict(orient="records")
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if df.empty:
        print("no saved runs (memlab run ... saves one)")
        return 0
    print(
        f"  {'id':<12}  {'created':<16}  {'status':<9} {'workload':<11} {'mode':<9} "
        f"{'batch':>5} {'precision':<11} {'peak':>10} {'step':>10}  changes"
    )
    for row in df.itertuples(index=False):
        step = _json_safe(row.step_time_s)
        peak = format_bytes(row.peak_bytes) if row.status in ("ok", "oom") else "-"
        when = datetime.fromtimestamp(row.created.timestamp()).strftime("%Y-%m-%d %H:%M")
        print(
            f"  {row.id:<12}  {when:<16}  {row.status:<9} {str(row.workload)[:11]:<11} "
            f"{str(row.mode):<9} {_json_safe(row.batch_size) or '-':>5} "
            f"{str(row.precision):<11} {peak:>10} "
            f"{'-' if step is None else f'{step * 1e3:.1f} ms':>10}  {row.changes}"
        )
    return 0


def _show(ns: argparse.Namespace) -> int:
    from memlab.store import default_store

    store = default_store()
    rid = store.resolve(ns.run_id)
    r = store.load(rid)
    if ns.json:
        info = store.info(rid)
        print(
            json.dumps(
                {
                    **result_json(r),
                    "run_id": rid,
                    "created": info.created,
                    "source": info.source,
                    "label": info.label,
                    "machine": dict(info.machine),
                },
                indent=2,
            )
        )
        return 0
    print(f"run {rid}")
    print(result_table(r))
    return 0


def _compare(ns: argparse.Namespace) -> int:
    from memlab.comparing import compare

    c = compare(ns.a, ns.b)
    if ns.json:
        print(json.dumps(c.to_dict(), indent=2))
        return 0
    print(compare_table(c))
    return 0


def _export(ns: argparse.Namespace) -> int:
    """``report`` and ``export``: a saved run (or two) written by ``memlab.exports``."""
    from memlab import exports
    from memlab.store import default_store

    store = default_store()
    if ns.command == "export" and ns.fmt not in exports.FORMATS:
        raise ValueError(f"--format must be one of {', '.join(exports.FORMATS)}, got {ns.fmt!r}")
    rid = store.resolve(ns.run_id)
    if ns.command == "report":
        if ns.other is not None:
            from memlab.comparing import compare

            c = compare(rid, ns.other, store=store)
            out = exports.to_html(c, ns.output or f"{rid}-{c.b_id}.html")
        else:
            out = exports.to_html(store.load(rid), ns.output or f"{rid}.html")
    else:
        # This process is the CLI's own, short-lived: torch (TensorBoard) may load here.
        kw = {"in_worker": False} if ns.fmt == "tensorboard" else {}
        out = exports.export(store.load(rid), ns.fmt, ns.output, **kw)
    print(f"wrote {out}")
    return 0


def compare_table(c: Any) -> str:
    """A ``Comparison`` as text: what changed, then each figure of both runs and the delta."""
    from memlab.comparing import SECTIONS, changed_fields

    a, b = c.labels
    changed = changed_fields(c.a, c.b)
    lines = [
        f"memlab compare: {b} against {a} ({c.a.status} -> {c.b.status})",
        "  changed: "
        + (", ".join(f"{k} {va} -> {vb}" for k, (va, vb) in changed.items()) or "nothing"),
    ]
    for section in SECTIONS:
        rows = c.section(section)
        if not rows:
            continue
        lines.append(f"  {section}")
        for d in rows.values():
            ratio = "" if d.ratio is None else f"  x{d.ratio:.3g}"
            lines.append(
                f"    {d.name[:28]:<28} {d.text(d.a):>12} -> {d.text(d.b):>12}"
                f"  {d.text(d.delta, signed=True):>12}{ratio}"
            )
    return "\n".join(lines)


def _bandwidth(ns: argparse.Namespace) -> int:
    from memlab.locality import bandwidth

    try:
        r = bandwidth(max_bytes=ns.max_bytes, smoke=ns.smoke or None)
    except ValueError as e:  # ConfigError included: a bad --max-bytes
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    print("memlab bandwidth (measured here, numpy, GB/s = 1e9 bytes/s, STREAM byte counting)")
    print(bandwidth_table(r))
    dram = "none" if r.dram_gb_per_s is None else f"{r.dram_gb_per_s:.1f} GB/s"
    print(
        f"  DRAM plateau {dram}; numpy.copyto of {format_bytes(r.anchor_bytes)}: "
        f"{r.anchor_gb_per_s:.1f} GB/s"
    )
    for n in r.notes:
        print(f"  note: {n}")
    return 0


def bandwidth_table(r: Any) -> str:
    """A ``BandwidthResult``'s points and cache levels as text (the CLI and
    benchmarks/bandwidth.py print it)."""
    lines = [f"  {'working set':>12}  {'copy GB/s':>10}  {'triad GB/s':>10}"]
    for p in r.points:
        lines.append(
            f"  {format_bytes(p.size_bytes):>12}  {p.copy_gb_per_s:>10.1f}"
            f"  {p.triad_gb_per_s:>10.1f}"
        )
    for lv in r.levels or ():
        gb = (
            "not measured"
            if lv.gb_per_s is None
            else f"{lv.gb_per_s:.1f} GB/s copy at half its size"
        )
        lines.append(f"  {lv.name:<4} {format_bytes(lv.size_bytes):>10}  {gb}")
    if r.levels is None:
        lines.append("  cache sizes unknown on this machine")
    return "\n".join(lines)


def experiment_from_args(ns: argparse.Namespace) -> Experiment:
    """The validated ``Experiment`` the arguments describe (raises ConfigError); a
    ``module:function`` workload is imported as ``Experiment.from_dict`` does."""
    from memlab.config import FIELDS, Experiment

    return Experiment.from_dict({name: getattr(ns, name) for name in FIELDS})


def result_json(r: RunResult) -> dict[str, Any]:
    """The JSON the CLI prints: every scalar figure of the result, no timeline arrays."""
    d = r.to_dict(timeline=False)
    d["peak_by_category"] = {c: r.peak_by_category.get(c, 0) for c in CATEGORIES}
    return d


def result_table(r: RunResult) -> str:
    from memlab.config import FIELDS, MEMORY_FIELDS

    exp = r.experiment or {}
    # The fields that decide the memory, always; any other the run changed from its default.
    head = ", ".join(
        f"{k}={v}"
        for k, v in exp.items()
        if k in MEMORY_FIELDS or (k in FIELDS and v != FIELDS[k].default)
    )
    lines = [f"memlab run: {head}", ""]
    width = max(len(k) for k, _ in r._summary_rows())
    lines += [f"  {k:<{width}}  {v}" for k, v in r._summary_rows()]
    for k, v in r.metrics.items():
        lines.append(f"  {k:<{width}}  {format_bytes(v) if k.endswith('bytes') else v}")
    for n in r.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def _estimate(ns: argparse.Namespace, exp: Experiment) -> int:
    from memlab.config import ConfigError
    from memlab.estimator import EstimateError, estimate, max_batch_size

    try:
        if ns.max_batch:
            if exp.budget_bytes is None:
                raise ConfigError("--max-batch needs --budget (e.g. --budget 2GB)")
            mb = max_batch_size(
                exp.replace(budget_bytes=None),
                budget_bytes=exp.budget_bytes,
                confirm=not ns.no_confirm,
            )
        else:
            est = estimate(exp)
    except ConfigError as e:
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    except EstimateError as e:
        print(f"memlab: cannot estimate: {e}", file=sys.stderr)
        return 1
    if ns.max_batch:
        if ns.json:
            print(json.dumps(mb.to_dict(), indent=2))
        else:
            print(
                f"largest batch size predicted to fit {format_bytes(mb.budget_bytes)}: "
                f"{mb.batch_size} (predicted peak {format_bytes(mb.predicted_peak_bytes)}, "
                f"{mb.estimates} estimates)"
            )
            if mb.confirmed is not None:
                c = mb.confirmed
                print(
                    f"confirmed by a real run: {c.status}, measured peak "
                    f"{format_bytes(c.peak_bytes)}" + (f" ({c.error})" if c.error else "")
                )
        return 0 if mb.confirmed is None else EXIT[mb.confirmed.status]
    if ns.json:
        print(json.dumps({**est.to_dict(), "experiment": exp.to_dict()}, indent=2))
    else:
        print(
            f"memlab estimate (predicted, nothing run): peak {format_bytes(est.peak_bytes)} "
            f"(first step {format_bytes(est.first_step_peak_bytes)}, steady "
            f"{format_bytes(est.steady_peak_bytes)}), {est.elapsed_s * 1e3:.0f} ms"
        )
        for cat in CATEGORIES:
            v = est.peak_by_category.get(cat, 0)
            if v:
                print(f"  {cat:<16} {format_bytes(v)}")
    return 0


def _plan(ns: argparse.Namespace, exp: Experiment) -> int:
    from memlab.planning import plan

    p = plan(exp, fake=ns.fake)
    if ns.json:
        print(json.dumps({**p.to_dict(), "experiment": exp.to_dict()}, indent=2))
        return 0
    word = "predicted" if p.predicted else "measured"
    print(
        f"memlab plan (one inference pass): eager peak {format_bytes(p.eager_peak_bytes)} "
        f"({word}; scratch {format_bytes(p.scratch_bytes)}), lower bound "
        f"{format_bytes(p.lower_bound_bytes)}, best plan {format_bytes(p.best_bytes)} "
        f"({p.best_planner}), naive {format_bytes(p.naive_bytes)}, reuse x{p.reuse_factor:.2f}"
    )
    for name, n in p.planner_bytes.items():
        print(f"  {name:<24} {format_bytes(n)}")
    return 0


def _roofline(ns: argparse.Namespace, exp: Experiment) -> int:
    from memlab.rooflines import roofline

    bw = ns.bandwidth
    if bw is not None and (not isinstance(bw, float) or not bw > 0):
        print(
            f"memlab: error: --bandwidth must be a positive GB/s number, got {bw!r}",
            file=sys.stderr,
        )
        return 2
    try:
        r = roofline(exp, bandwidth=bw, requests=ns.requests)
    except (ValueError, TypeError) as e:
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    print(roofline_table(r, top=ns.top))
    return 0


def roofline_table(r: Any, top: int | None = 15) -> str:
    """A ``RooflineResult`` as text: the roofs, the slowest ops, the totals and the device
    estimates (the CLI and benchmarks/roofline.py print it)."""
    lines = [
        f"roofs (measured here): DRAM {r.dram_gb_per_s:.1f} GB/s ({r.bandwidth_source}); "
        f"peak {r.peak_gflop_per_s:.1f} GFLOP/s ({r.matmul_n}^2 fp32 matmul, {r.threads} "
        f"threads); ridge {r.ridge_flop_per_byte:.2f} FLOP/byte",
        f"  {'#':>3}  {'op':<34} {'module':<16} {'MFLOP':>9} {'moved':>10} {'FLOP/B':>8} "
        f"{'bound':<7} {'ms':>8} {'GFLOP/s':>8}",
    ]
    for row in r.table(top=top):
        flop = f"{row['flops'] / 1e6:.2f}" if row["flops_counted"] else "n/c"
        inten = "-" if row["intensity"] is None else f"{row['intensity']:.2f}"
        gf = row["gflop_per_s"]
        lines.append(
            f"  {row['index']:>3}  {row['op'][:34]:<34} {row['module'][:16]:<16} {flop:>9} "
            f"{format_bytes(row['bytes_moved']):>10} {inten:>8} {row['bound']:<7} "
            f"{row['time_s'] * 1e3:>8.3f} {'-' if not gf else f'{gf:.2f}':>8}"
        )
    shown = "" if top is None or top >= len(r.ops) else f" ({top} slowest of {len(r.ops)} shown)"
    by = r.time_by_bound()
    lines.append(
        f"  per request{shown}: {r.total_flops / 1e9:.3f} GFLOP, {format_bytes(r.total_bytes)} "
        f"moved (lower-bound model), request {r.request_s * 1e3:.2f} ms measured; op times sum "
        f"to {r.op_time_coverage:.0%} of it (memory-bound {by['memory'] * 1e3:.2f} ms, "
        f"compute-bound {by['compute'] * 1e3:.2f} ms)"
    )
    lines.append("  ESTIMATED device latency (bytes moved / peak DRAM bandwidth, a lower bound):")
    for name, s in r.device_estimates().items():
        lines.append(
            f"    {name:<22} {s * 1e3:>8.3f} ms   (measured here: {r.request_s * 1e3:.2f} ms)"
        )
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.command == "bandwidth":
        return _bandwidth(ns)
    if ns.command in ("runs", "show", "compare", "report", "export"):
        return _store_command(ns)
    if ns.command == "schedule":
        return _schedule(ns)
    if ns.command == "search":
        return _search(ns)
    from memlab.config import ConfigError

    try:
        exp = experiment_from_args(ns)
    except ConfigError as e:
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    if ns.command == "estimate":
        return _estimate(ns, exp)
    if ns.command == "plan":
        return _plan(ns, exp)
    if ns.command == "roofline":
        return _roofline(ns, exp)
    if ns.command == "sweep":
        return _sweep(ns, exp)
    t = ns.timeout  # -5 would start a worker only to fail it; nan would never time out
    if t is not None and not (isinstance(t, float) and 0 < t < float("inf")):
        print(
            f"memlab: error: --timeout must be a positive number of seconds, got {t}",
            file=sys.stderr,
        )
        return 2
    from memlab.runner import start

    handle = start(exp, timeout_s=ns.timeout)  # = memlab.run, keeping the handle's run id
    result = handle.wait()
    if ns.json:
        print(json.dumps({**result_json(result), "run_id": handle.run_id}, indent=2))
    else:
        print(result_table(result))
        if handle.run_id is not None:
            print(f"  saved as run {handle.run_id} (memlab show {handle.run_id})")
        if result.error:
            print(f"\n{result.status}: {result.error}", file=sys.stderr)
    return EXIT[result.status]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
