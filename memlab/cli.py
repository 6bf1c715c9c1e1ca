"""The command line: ``memlab run ...`` and ``memlab estimate ...`` (also ``python -m memlab``).

Exit codes: 0 the run was ``ok``; 3 ``oom``; 1 ``error`` or ``cancelled`` (or a model that
cannot be estimated); 2 a bad argument (one line naming it, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from memlab.timeline import CATEGORIES, RunResult, format_bytes

__all__ = ["main"]

EXIT = {"ok": 0, "oom": 3, "error": 1, "cancelled": 1}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, no usage block: ``memlab: error: ...``."""
        self.exit(2, f"memlab: error: {message}\n")


def _experiment_args(p: argparse.ArgumentParser) -> None:
    from memlab.config import Experiment

    d = Experiment()
    p.add_argument(
        "--workload",
        default=d.workload_name,
        help="mlp, cnn, transformer, or module:function returning a Workload",
    )
    p.add_argument("--mode", default=d.mode, help="train or inference")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--precision", default=d.precision, help="fp32, amp-bf16, amp-fp16, bf16, int8 (inference)"
    )
    p.add_argument(
        "--checkpointing", default=d.checkpointing, help="off, every-block, every-other-block"
    )
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="0 to 0.99")
    p.add_argument("--sparse-storage", default=d.sparse_storage, help="mask or sparse")
    p.add_argument("--data", default=d.data, help="ram or memmap")
    p.add_argument("--data-size", type=int, default=d.data_size, help="synthetic samples")
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--pin-memory", action="store_true", default=d.pin_memory)
    p.add_argument("--prefetch-factor", type=int, default=d.prefetch_factor)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--budget", default=None, help="simulated device limit, e.g. 512MB, 2GiB")
    p.add_argument("--seed", type=int, default=d.seed)
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
    return p


def experiment_from_args(ns: argparse.Namespace) -> Any:
    """The validated ``Experiment`` the arguments describe (raises ConfigError)."""
    from memlab.config import Experiment, parse_bytes

    workload: Any = ns.workload
    if ":" in str(workload):
        import importlib

        mod, _, fn = str(workload).partition(":")
        workload = getattr(importlib.import_module(mod), fn)
    return Experiment(
        workload=workload,
        mode=ns.mode,
        batch_size=ns.batch_size,
        precision=ns.precision,
        checkpointing=ns.checkpointing,
        sparsity=ns.sparsity,
        sparse_storage=ns.sparse_storage,
        data=ns.data,
        data_size=ns.data_size,
        num_workers=ns.num_workers,
        pin_memory=ns.pin_memory,
        prefetch_factor=ns.prefetch_factor,
        steps=ns.steps,
        warmup=ns.warmup,
        device=ns.device,
        seed=ns.seed,
        budget_bytes=None if ns.budget is None else parse_bytes(ns.budget, name="budget"),
    )


def result_json(r: RunResult) -> dict[str, Any]:
    """The JSON the CLI prints: every scalar figure of the result, no timeline arrays."""
    d = r.to_dict(timeline=False)
    d["peak_by_category"] = {c: r.peak_by_category.get(c, 0) for c in CATEGORIES}
    return d


def result_table(r: RunResult) -> str:
    exp = r.experiment or {}
    head = ", ".join(
        f"{k}={v}"
        for k, v in exp.items()
        if k
        in (
            "workload",
            "mode",
            "batch_size",
            "precision",
            "checkpointing",
            "sparsity",
            "sparse_storage",
            "data",
            "device",
        )
    )
    lines = [f"memlab run: {head}", ""]
    width = max(len(k) for k, _ in r._summary_rows())
    lines += [f"  {k:<{width}}  {v}" for k, v in r._summary_rows()]
    for k, v in r.metrics.items():
        lines.append(f"  {k:<{width}}  {format_bytes(v) if k.endswith('bytes') else v}")
    for n in r.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def _estimate(ns: argparse.Namespace, exp: Any) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    from memlab.config import ConfigError

    try:
        exp = experiment_from_args(ns)
    except (ConfigError, ImportError, AttributeError) as e:
        print(f"memlab: error: {e}", file=sys.stderr)
        return 2
    if ns.command == "estimate":
        return _estimate(ns, exp)
    from memlab.runner import run

    result = run(exp, timeout_s=ns.timeout)
    if ns.json:
        print(json.dumps(result_json(result), indent=2))
    else:
        print(result_table(result))
        if result.error:
            print(f"\n{result.status}: {result.error}", file=sys.stderr)
    return EXIT[result.status]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
