"""Memory planning: the pure planners (memlab/planning.py), memlab.plan on a real model, the
ExecuTorch / ONNX Runtime anchors and the CLI."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memlab import planning
from memlab.planning import ALIGNMENT, PLANNERS, TensorLife, align, best, lower_bound, naive


@st.composite
def lifetimes(draw: st.DrawFn) -> list[TensorLife]:
    n = draw(st.integers(min_value=0, max_value=30))
    out = []
    for i in range(n):
        start = draw(st.integers(min_value=0, max_value=20))
        length = draw(st.integers(min_value=0, max_value=8))
        size = draw(st.integers(min_value=0, max_value=5000))
        kind = draw(st.sampled_from(planning.KINDS))
        out.append(TensorLife(i, size, start, start + length, f"m{i % 3}", kind))
    return out


@settings(max_examples=150, deadline=None)
@given(lifetimes(), st.sampled_from([1, 16, 64]))
def test_every_planner_is_valid_bounded_and_deterministic(
    lives: list[TensorLife], alignment: int
) -> None:
    lb_all = lower_bound(lives, alignment, kinds=planning.KINDS)
    lb_graph = lower_bound(lives, alignment)
    nv = naive(lives, alignment).arena_bytes
    assert lb_graph <= lb_all <= nv
    for name, fn in PLANNERS.items():
        plan = fn(lives, alignment)
        assert plan.planner == name
        assert set(plan.offsets) == {t.id for t in lives}
        # No two tensors alive at a common op share a byte (checked pairwise here, by hand,
        # not only through planning.conflicts).
        for a in lives:
            assert plan.offsets[a.id] % alignment == 0
            assert plan.offsets[a.id] + align(a.size, alignment) <= plan.arena_bytes
            for b in lives:
                if a.id < b.id and a.size and b.size and a.start <= b.end and b.start <= a.end:
                    a0, b0 = plan.offsets[a.id], plan.offsets[b.id]
                    assert (
                        a0 + align(a.size, alignment) <= b0 or b0 + align(b.size, alignment) <= a0
                    )
        assert planning.conflicts(lives, plan) == []
        assert lb_all <= plan.arena_bytes <= nv
        again = fn(list(lives), alignment)
        assert dict(again.offsets) == dict(plan.offsets) and again.arena_bytes == plan.arena_bytes
    chosen = best(lives, alignment)
    assert chosen.arena_bytes == min(fn(lives, alignment).arena_bytes for fn in PLANNERS.values())
    # The reordering search starts from greedy by size's plan and only keeps orders that do
    # not grow the arena, so it is never worse than greedy by size.
    reordered = planning.greedy_by_size_reordered(lives, alignment).arena_bytes
    assert reordered <= planning.greedy_by_size(lives, alignment).arena_bytes


def _residual_mlp(blocks: int) -> list[TensorLife]:
    """The graph tensors of memlab's ``mlp`` workload (a stem, then pre-norm residual blocks
    x + fc2(gelu(fc1(norm(x))))), in units of 64 bytes and with its op indices as measured by
    memlab.plan at batch 32 (fc1 and gelu outputs 4 units, the rest 1 unit; layer norm's 128-byte
    statistics left out): block b starts at op 7b+2; its residual input is alive until the
    block's add at 7b+8, where the block's output (the next residual) is born, so the two
    residuals overlap by one op."""
    u = ALIGNMENT
    spans = [(u, 1, 8)]  # residual 0: the stem's output, read by block 0's norm and its add
    for b in range(blocks):
        s = 7 * b + 2
        last = s + 13 if b < blocks - 1 else s + 7  # read by the next block's add, or the head
        spans += [
            (u, s, s + 2),  # norm(x)
            (4 * u, s + 2, s + 3),  # fc1
            (4 * u, s + 3, s + 5),  # gelu
            (u, s + 5, s + 6),  # fc2
            (u, s + 6, last),  # x + fc2(...): the next residual
        ]
    return [TensorLife(i, size, a, b) for i, (size, a, b) in enumerate(spans)]


def test_reordering_reaches_the_bound_where_greedy_by_size_does_not() -> None:
    # Two blocks. The bound: at ops 4 and 11, fc1's and gelu's outputs (4 + 4 units) and the
    # residual (1) are alive: 9 units. Greedy by size puts both blocks' fc1 at 0 and gelu at 4
    # (the four wide tensors do not meet across blocks); then residual 0 (ops 1-8) must go at 8
    # (it meets block 0's wide tensors), and residual 1 (ops 8-15) meets residual 0 at op 8 and
    # block 1's wide tensors: the first free byte is 9 units up, so 10 units. The optimum
    # shifts block 1's wide tensors up one unit and puts residual 1 under them: 9 units.
    u = ALIGNMENT
    lives = _residual_mlp(2)
    assert lower_bound(lives) == 9 * u
    g = planning.greedy_by_size(lives)
    assert g.arena_bytes == 10 * u
    assert g.offsets[0] == 8 * u and g.offsets[5] == 9 * u  # the two residuals, as argued
    r = planning.greedy_by_size_reordered(lives)
    assert r.arena_bytes == 9 * u and planning.conflicts(lives, r) == []
    assert best(lives).planner == "greedy_by_size_reordered"
    # Deeper stacks of the same block: greedy by size stays one unit over, the search does not.
    deep = _residual_mlp(4)
    assert planning.greedy_by_size(deep).arena_bytes == 10 * u
    assert planning.greedy_by_size_reordered(deep).arena_bytes == lower_bound(deep) == 9 * u
    # With one placement allowed it *is* greedy by size.
    one = planning.greedy_by_size_reordered(lives, max_evals=1)
    assert dict(one.offsets) == dict(g.offsets) and one.arena_bytes == g.arena_bytes
    with pytest.raises(ValueError, match="max_evals"):
        planning.greedy_by_size_reordered(lives, max_evals=0)


def test_conflicts_finds_an_overlap() -> None:
    lives = [TensorLife(0, 64, 0, 2), TensorLife(1, 64, 2, 3), TensorLife(2, 64, 3, 4)]
    bad = planning.Plan("hand", {0: 0, 1: 0, 2: 64}, 128)
    assert planning.conflicts(lives, bad) == [(0, 1)]


def test_hand_made_set_with_known_optimum() -> None:
    # a (1 unit, ops 0-1), b (1 unit, ops 0-3), c (2 units, ops 2-3); unit = 64 B.
    # Lower bound: ops 2-3 hold b + c = 3 units, so no plan beats 3 units, and
    # c@0, a@0, b@2 reaches it. In allocation order a@0, b@1 leaves c only the top: 4 units.
    u = ALIGNMENT
    lives = [TensorLife(0, u, 0, 1), TensorLife(1, u, 0, 3), TensorLife(2, 2 * u, 2, 3)]
    assert lower_bound(lives) == 3 * u
    assert naive(lives).arena_bytes == 4 * u
    ff = planning.first_fit(lives)
    assert dict(ff.offsets) == {0: 0, 1: u, 2: 2 * u} and ff.arena_bytes == 4 * u
    g = planning.greedy_by_size(lives)
    assert dict(g.offsets) == {2: 0, 0: 0, 1: 2 * u} and g.arena_bytes == 3 * u
    chosen = best(lives)
    assert chosen.planner == "greedy_by_size" and chosen.arena_bytes == 3 * u


def test_alignment_rounds_sizes() -> None:
    lives = [TensorLife(0, 1, 0, 0), TensorLife(1, 65, 0, 0)]
    assert naive(lives).arena_bytes == 64 + 128
    assert naive(lives, alignment=16).arena_bytes == 16 + 80
    assert lower_bound(lives, alignment=1) == 66


@pytest.mark.parametrize(
    ("lives", "alignment", "needle"),
    [
        ([TensorLife(0, 1, 0, 0), TensorLife(0, 1, 1, 1)], 64, "appears twice"),
        ([TensorLife(0, -1, 0, 0)], 64, "size must be >= 0"),
        ([TensorLife(0, 1, 3, 2)], 64, "start <= end"),
        ([TensorLife(0, 1, 0, 0, kind="weights")], 64, "kind must be one of"),
        ([TensorLife(0, 1, 0, 0)], 0, "alignment must be"),
    ],
)
def test_bad_lifetimes_are_named(lives: list[TensorLife], alignment: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        best(lives, alignment)


# --- memlab.plan on a real model ----------------------------------------------------------------

BATCH, WIDTHS = 64, (256, 1024, 512, 10)


def _mlp() -> object:
    from torch import nn

    w = WIDTHS
    return nn.Sequential(
        nn.Linear(w[0], w[1]), nn.ReLU(), nn.Linear(w[1], w[2]), nn.ReLU(), nn.Linear(w[2], w[3])
    )


def _mlp_input() -> object:
    import torch

    return torch.randn(BATCH, WIDTHS[0])


def _hand_lower_bound() -> int:
    # The activations in order: input, then each Linear's and ReLU's output (float32). Each op
    # reads the one before and writes the next, and nothing else is alive between them, so the
    # most bytes alive at once is the largest sum of two neighbours.
    acts = [WIDTHS[0], WIDTHS[1], WIDTHS[1], WIDTHS[2], WIDTHS[2], WIDTHS[3]]
    sizes = [BATCH * n * 4 for n in acts]
    return max(a + b for a, b in zip(sizes, sizes[1:], strict=False))


def _recorder_peak() -> int:
    """The native recorder's own peak for the same pass (memlab.track), parameters taken out."""
    import torch

    import memlab

    torch.manual_seed(0)
    model = _mlp().eval()  # type: ignore[attr-defined]
    x = _mlp_input()
    with torch.no_grad():
        model(x)
    with memlab.track(model, inputs=(x,)) as rec, torch.no_grad():
        model(x)
    r = rec.result
    return int(r.peak_bytes - r.peak_by_category["parameters"])


def test_plan_of_an_mlp_against_the_recorder_and_the_shapes() -> None:
    import memlab

    p = memlab.plan(_mlp, _mlp_input)  # in memlab's service worker
    assert isinstance(p, memlab.MemoryPlan) and not p.predicted
    # Tolerance: 1% (the same allocations in two processes; seen equal to the byte here).
    truth = _recorder_peak()
    assert abs(p.eager_peak_bytes - truth) <= 0.01 * truth, (p.eager_peak_bytes, truth)
    assert p.lower_bound_bytes == _hand_lower_bound()  # every size is a multiple of 64
    assert p.inputs_bytes == BATCH * WIDTHS[0] * 4
    assert p.scratch_bytes == 0  # addmm and relu on contiguous float32: no op-internal buffer
    assert p.lower_bound_bytes <= p.best_bytes <= p.naive_bytes
    assert p.best_bytes == p.lower_bound_bytes  # a chain: greedy by size reaches the bound
    assert p.reuse_factor == p.naive_bytes / p.best_bytes > 1
    graph = [t for t in p.tensors if t.kind == "graph"]
    plan = planning.Plan(p.best_planner, p.offsets, p.best_bytes, p.alignment)
    assert planning.conflicts(graph, plan) == []
    # Fake tensors see the same graph tensors (prediction: nothing allocated).
    f = memlab.plan(_mlp, _mlp_input, fake=True, in_worker=False)
    assert f.predicted and f.lower_bound_bytes == p.lower_bound_bytes
    assert f.eager_peak_bytes == p.eager_peak_bytes


def test_plan_of_a_conv_sees_scratch() -> None:
    import torch
    from torch import nn

    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())

    p = planning.plan(model, lambda: torch.randn(4, 8, 32, 32), in_worker=False)
    # The conv's im2col/oneDNN buffers live inside one op: scratch, outside the planned arena.
    assert p.scratch_max_bytes > 0
    assert any(t.kind == "scratch" for t in p.tensors)
    assert p.lower_bound_bytes <= p.best_bytes


def test_plan_rejects_bad_input() -> None:
    import memlab

    with pytest.raises(TypeError, match="model_fn"):
        memlab.plan(42)
    with pytest.raises(TypeError, match="inputs_fn"):
        memlab.plan(_mlp)
    with pytest.raises(ValueError, match="alignment"):
        memlab.plan(_mlp, _mlp_input, alignment=0)


def test_arena_figure_draws_every_graph_tensor_at_its_offset() -> None:
    import torch

    from memlab.config import MIB
    from memlab.plots import arena_figure

    p = planning.plan(_mlp, lambda: torch.randn(BATCH, WIDTHS[0]), in_worker=False)
    fig = arena_figure(p)
    bars = [
        (b, w, x, y)
        for tr in fig.data
        for b, w, x, y in zip(tr.base, tr.width, tr.x, tr.y, strict=True)
    ]
    graph = [t for t in p.tensors if t.kind == "graph"]
    assert len(bars) == len(graph)
    want = sorted(
        (p.offsets[t.id] / MIB, t.end - t.start + 1, (t.start + t.end) / 2, t.size / MIB)
        for t in graph
    )
    assert sorted(bars) == want  # dividing by 2**20 is exact in binary floating point
    lines = sorted(s.y0 for s in fig.layout.shapes)
    assert lines == pytest.approx(sorted([p.lower_bound_bytes / MIB, p.best_bytes / MIB]))
    assert {tr.name for tr in fig.data} == {t.module for t in graph}


def test_cli_plan_json_keys_and_bad_input() -> None:
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "memlab", "plan", "--workload", "mlp", "--batch-size", "8"]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in (
        "eager_peak_bytes",
        "scratch_bytes",
        "lower_bound_bytes",
        "naive_bytes",
        "greedy_bytes",
        "planner_bytes",
        "best_planner",
        "best_bytes",
        "reuse_factor",
    ):
        assert key in d, key
    assert d["lower_bound_bytes"] <= d["best_bytes"] <= d["naive_bytes"]
    assert d["best_bytes"] == d["planner_bytes"][d["best_planner"]]
    # The mlp's residual stream (see _residual_mlp): greedy by size is over the bound, the
    # reordering search reaches it, so the best plan is the bound.
    assert d["greedy_bytes"] > d["lower_bound_bytes"]
    assert d["planner_bytes"]["greedy_by_size_reordered"] == d["lower_bound_bytes"]
    assert d["best_bytes"] == d["lower_bound_bytes"]
    # The CLI's default mode is train; a plan is of an inference pass, and says so.
    assert any("mode 'train' ignored" in n for n in d["notes"]), d["notes"]
    bad = subprocess.run([*cmd[:-2], "--batch-size", "-3"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "batch_size" in bad.stderr


# --- the ExecuTorch and ONNX Runtime anchors on a tiny model --------------------------------


def _tiny() -> tuple[object, tuple[object, ...]]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    return m, (torch.randn(4, 16),)


def test_executorch_anchor_plans_the_specs_memlab_replans() -> None:
    pytest.importorskip("executorch", reason="executorch not installed: pip install 'memlab[edge]'")
    from memlab.planning_anchors import executorch_plan

    model, inputs = _tiny()
    et = executorch_plan(model, inputs)
    lives = et["lives"]
    # Independent truth for the lifetimes: ExecuTorch's naive arena is the sum of its specs'
    # sizes at its 16-byte alignment, which memlab's naive must give to the byte.
    assert planning.naive(lives, 16).arena_bytes == et["naive_bytes"]
    # Its greedy is a valid plan of the same specs, so no smaller than their lower bound; and
    # memlab's best over them is no larger than ExecuTorch's greedy.
    assert planning.lower_bound(lives, 16) <= et["greedy_bytes"] <= et["naive_bytes"]
    assert planning.best(lives, 16).arena_bytes <= et["greedy_bytes"]
    assert et["ops"]["addmm"] == 2 and et["ops"]["relu"] == 1


def test_onnxruntime_anchor_measures_both_settings(tmp_path: object) -> None:
    pytest.importorskip(
        "onnxruntime", reason="onnxruntime not installed: pip install 'memlab[edge]'"
    )
    pytest.importorskip("onnxscript", reason="onnxscript not installed: pip install 'memlab[edge]'")
    from pathlib import Path

    from memlab.planning_anchors import onnxruntime_rss

    model, inputs = _tiny()
    got = onnxruntime_rss(model, inputs, str(Path(str(tmp_path)) / "tiny.onnx"))
    assert set(got) == {"pattern", "plain"}
    for figures in got.values():
        # RSS high-water marks added by runs: never negative, and for a tiny model far under
        # 64 MiB (a unit slip, kB for bytes, would show as 1024x).
        for v in figures.values():
            assert 0 <= v < 64 * 2**20
