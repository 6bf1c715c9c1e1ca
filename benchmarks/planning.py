"""memlab's memory plans beside eager PyTorch, ExecuTorch and ONNX Runtime, per architecture.

    python benchmarks/planning.py [--no-ort] [--only cnn,gru]

For each model, one inference pass:
  eager       what PyTorch's CPU allocator held at its peak (memlab's native recorder; inputs
              in, parameters out) and its scratch part (buffers made and freed inside one op);
  memlab      memlab.plan over eager's graph tensors: the lower bound (most bytes alive at
              once), the best plan and its planner (64-byte alignment);
  ExecuTorch  to_edge(export(model)).to_executorch() with only greedy / only naive planning
              (non_const_buffer_sizes, 16-byte alignment), and memlab's best plan over *the
              same specs* ExecuTorch planned ("mlab@ET", at ExecuTorch's 16 bytes);
  ORT         ONNX Runtime's RSS high-water mark added by the first run and by steady runs,
              mem pattern + CPU arena on ("pat") vs both off ("off"), a fresh process each
              (RSS: includes what the runtime maps for itself, so it is an anchor, not a twin).
Goals (issue 11): memlab's best within 5% of its lower bound; memlab no larger than ExecuTorch
wherever both plan the same graph (memlab's planners over ExecuTorch's own specs). The last
column names the ops only one of the two graphs has (eager's aten ops vs ExecuTorch's edge ops).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memlab import planning  # noqa: E402
from memlab.config import MIB  # noqa: E402
from memlab.planning_anchors import executorch_plan, onnxruntime_rss  # noqa: E402
from memlab.workloads.builtin import SPECS  # noqa: E402

BATCH = 32


class DepthwiseCNN(nn.Module):
    """MobileNet-style: a stem, then depthwise 3x3 + pointwise 1x1 blocks, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU6()]
        for cin, cout, stride in ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2)):
            layers += [
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin),
                nn.BatchNorm2d(cin),
                nn.ReLU6(),
                nn.Conv2d(cin, cout, 1),
                nn.BatchNorm2d(cout),
                nn.ReLU6(),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class GRUClassifier(nn.Module):
    """A 2-layer GRU over a sequence, classified from its last state."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(32, 128, num_layers=2, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Seq2Seq(nn.Module):
    """An encoder-decoder transformer (nn.Transformer, 2+2 layers) on continuous tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.t = nn.Transformer(96, 4, 2, 2, 384, dropout=0.0, batch_first=True)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.t(src, tgt)


def _builtin(name: str) -> tuple[Callable[[], nn.Module], Callable[[], Any]]:
    spec = SPECS[name]
    return spec.make_model, lambda: torch.randn(BATCH, *spec.input_shape)


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any]]] = {
    "mlp": _builtin("mlp"),
    "cnn": _builtin("cnn"),
    "transformer": _builtin("transformer"),
    "depthwise": (DepthwiseCNN, lambda: torch.randn(8, 3, 64, 64)),
    "gru": (GRUClassifier, lambda: torch.randn(BATCH, 64, 32)),
    "enc-dec": (Seq2Seq, lambda: (torch.randn(8, 64, 96), torch.randn(8, 48, 96))),
}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.2f}"


def _graph_diff(eager_ops: Counter[str], et_ops: Counter[str]) -> str:
    only_et = sorted(set(et_ops) - set(eager_ops), key=lambda o: -et_ops[o])
    only_eager = sorted(set(eager_ops) - set(et_ops), key=lambda o: -eager_ops[o])
    parts = []
    if only_et:
        parts.append("ET+ " + ",".join(only_et[:4]))
    if only_eager:
        parts.append("eager+ " + ",".join(only_eager[:4]))
    return "; ".join(parts) or "same ops"


def _reason(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:100]}"


def _timed_best(lives: list[planning.TensorLife], alignment: int) -> tuple[planning.Plan, float]:
    """memlab's whole suite (``planning.best``) over ``lives`` and the seconds it took (the
    median of 3 runs: the machine is shared, one timing means little)."""
    times, chosen = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        chosen = planning.best(lives, alignment)
        times.append(time.perf_counter() - t0)
    assert chosen is not None
    return chosen, statistics.median(times)


def row(name: str, ort: bool) -> dict[str, Any]:
    model_fn, inputs_fn = CASES[name]
    p = planning.plan(model_fn, inputs_fn, in_worker=False)
    graph = [t for t in p.tensors if t.kind == "graph"]
    _, plan_s = _timed_best(graph, p.alignment)
    torch.manual_seed(0)
    model = model_fn().eval()
    raw = inputs_fn()
    inputs = raw if isinstance(raw, tuple) else (raw,)
    r: dict[str, Any] = {
        "name": name,
        "plan": p,
        "n": len(graph),
        "plan_s": plan_s,
        "et": None,
        "et_err": "",
        "ort": None,
        "ort_err": "",
        "why": "",
    }
    try:
        et = executorch_plan(model, inputs)
        same, same_s = _timed_best(et["lives"], 16)
        r["et"] = {**et, "memlab_same": same, "same_s": same_s}
        r["why"] = _graph_diff(Counter(p.ops), et["ops"])
    except Exception as e:  # noqa: BLE001 - a model ExecuTorch cannot export: say why
        r["et_err"] = _reason(e)
        r["why"] = f"ExecuTorch failed: {r['et_err']}"
    if ort:
        try:
            with tempfile.TemporaryDirectory() as d:
                r["ort"] = onnxruntime_rss(model, inputs, str(Path(d) / "m.onnx"))
        except Exception as e:  # noqa: BLE001 - a model ONNX Runtime cannot run: say why
            r["ort_err"] = _reason(e)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime (slowest part)")
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated case names")
    ns = ap.parse_args()
    names = [n for n in ns.only.split(",") if n]
    for n in names:
        if n not in CASES:
            ap.error(f"unknown case {n!r}; choose from {', '.join(CASES)}")
    head = (
        f"{'model':<12}{'eager':>8}{'scratch':>8}{'LB':>8}{'best':>8} {'planner':<25}"
        f"{'best/LB':>8}{'n':>6}{'ms':>7}{'ET grd':>8}{'ET nv':>8}{'mlab@ET':>8}{'ET n':>6}"
        f"{'ms':>7}{'ORT pat':>13}{'ORT off':>13}  graphs differ"
    )
    print(
        "MiB; n: graph tensors planned, ms: memlab's whole suite (planning.best) over them, "
        "median of 3;\nORT columns: first run / steady runs (RSS high-water mark added)"
    )
    print(head)
    verdicts: list[str] = []
    for n in names:
        r = row(n, not ns.no_ort)
        p, et, ort = r["plan"], r["et"], r["ort"]
        ratio = p.best_bytes / p.lower_bound_bytes if p.lower_bound_bytes else 1.0
        same = et["memlab_same"].arena_bytes if et else None

        def o(k: str, ort: Any = ort, err: str = r["ort_err"]) -> str:
            if not ort:
                return "failed" if err else "n/a"
            return f"{_mib(ort[k]['first_run_bytes'])}/{_mib(ort[k]['steady_run_bytes'])}"

        et_ms = f"{et['same_s'] * 1e3:.1f}" if et else "n/a"
        print(
            f"{n:<12}{_mib(p.eager_peak_bytes):>8}{_mib(p.scratch_bytes):>8}"
            f"{_mib(p.lower_bound_bytes):>8}{_mib(p.best_bytes):>8} {p.best_planner:<25}"
            f"{ratio:>8.3f}{r['n']:>6}{r['plan_s'] * 1e3:>7.1f}"
            f"{_mib(et and et['greedy_bytes']):>8}{_mib(et and et['naive_bytes']):>8}"
            f"{_mib(same):>8}{len(et['lives']) if et else 'n/a':>6}"
            f"{et_ms:>7}{o('pattern'):>13}{o('plain'):>13}"
            f"  {r['why']}"
        )
        ok_lb = ratio <= 1.05
        verdicts.append(
            f"{n}: goal 1, memlab's best within 5% of its lower bound: "
            f"{'yes' if ok_lb else 'NO'} ({ratio:.3f}x, {p.best_planner})"
        )
        if et:
            ok = same is not None and same <= et["greedy_bytes"]
            verdicts.append(
                f"{n}: goal 2, memlab <= ExecuTorch greedy on ExecuTorch's own graph: "
                f"{'yes' if ok else 'NO'} ({_mib(same)} vs {_mib(et['greedy_bytes'])} MiB, "
                f"memlab by {et['memlab_same'].planner}, lower bound of ExecuTorch's specs "
                f"{_mib(planning.lower_bound(et['lives'], 16))}; ExecuTorch greedy = "
                f"{et['greedy_bytes'] / max(1, et['largest_bytes']):.2f}x its largest tensor "
                f"of {_mib(et['largest_bytes'])} MiB)"
            )
        else:
            verdicts.append(
                f"{n}: goal 2, memlab <= ExecuTorch: not checked, ExecuTorch could not plan "
                f"this model: {r['et_err']}"
            )
        if r["ort_err"]:
            verdicts.append(f"{n}: ONNX Runtime anchor failed: {r['ort_err']}")
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
