"""The per-step "still alive" report and the three leak examples, against independent truths.

Truths: the activation a hook keeps is the hidden layer's output (its nbytes from a forward of
the same model here); the batch a reference cycle keeps is the batch's nbytes; the graph a
logged validation loss keeps is the set of tensors autograd saved for it (collected with
``torch.autograd.graph.saved_tensors_hooks``, excluding the parameters and inputs that existed
before) plus the loss itself; the alive bytes at a step boundary are the tracker's own live
count read there; Adam's lazy state is two tensors the size of each parameter plus a scalar
step each.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import memlab  # noqa: E402
from memlab import leaks  # noqa: E402
from memlab.timeline import CATEGORIES, AliveReport, RunResult  # noqa: E402

STEPS = 5
# The fixed variants must grow by less than this share of the leak (the "~0").
FIXED_SHARE = 0.01
# The leaky growth must be within this share of the independent truth.
TOLERANCE = 0.01


def storage_bytes(t) -> int:  # type: ignore[no-untyped-def]
    return int(t.untyped_storage().nbytes())


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, bool], leaks.LeakResult]:
    """Every example, leaky and fixed, measured in this process (one run each)."""
    return {
        (ex, fixed): leaks.run_example(ex, steps=STEPS, fixed=fixed)
        for ex in leaks.EXAMPLES
        for fixed in (False, True)
    }


# -- independent truths ----------------------------------------------------------------------
def hook_truth() -> int:
    """The hidden layer's output of one training batch: what the leaky hook keeps per step."""
    s = leaks.build_setup(0)
    x, _ = s.batch(0)
    with torch.no_grad():
        return storage_bytes(s.model[1](s.model[0](x)))


def cycle_truth() -> int:
    """One training batch: what each leaked record keeps."""
    x, _ = leaks.build_setup(0).batch(0)
    return storage_bytes(x)


def graph_truth() -> int:
    """Storages autograd saves for one validation loss, less those that existed before the
    forward (parameters, the validation batch), plus the loss's own storage."""
    s = leaks.build_setup(0)
    before = {p.untyped_storage().data_ptr() for p in s.model.parameters()}
    before |= {t.untyped_storage().data_ptr() for t in (s.x_val, s.y_val)}
    saved: dict[int, int] = {}

    def pack(t):  # type: ignore[no-untyped-def]
        ptr = t.untyped_storage().data_ptr()
        if ptr not in before:
            saved[ptr] = storage_bytes(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(s.model(s.x_val), s.y_val)
    saved[loss.untyped_storage().data_ptr()] = storage_bytes(loss)
    return sum(saved.values())


TRUTHS = {"loss_history": graph_truth, "reference_cycle": cycle_truth, "forward_hook": hook_truth}


# -- the examples ----------------------------------------------------------------------------
@pytest.mark.parametrize("example", list(leaks.EXAMPLES))
def test_leak_grows_by_what_it_keeps_and_the_fix_by_nothing(results, example) -> None:  # type: ignore[no-untyped-def]
    truth = TRUTHS[example]()
    leaky, fixed = results[(example, False)], results[(example, True)]
    g = leaky.growth_per_step_bytes
    assert g is not None and g > 0
    assert abs(g - truth) <= TOLERANCE * truth, (example, g, truth)
    # every step, not only the fit: each step's end holds one more leaked block
    assert all(abs(d - truth) <= TOLERANCE * truth for d in leaky.alive.growth_bytes[1:])
    gf = fixed.growth_per_step_bytes
    assert gf is not None and abs(gf) < FIXED_SHARE * truth, (example, gf)
    # the sites allocated inside the block (the others are the entry's parameters and inputs)
    # hold the STEPS leaked blocks, and name lines of memlab/leaks.py
    inside = [s for s in leaky.alive.steps[-1].sites if s.phase != "entry"]
    assert abs(sum(s.bytes for s in inside) - STEPS * truth) <= TOLERANCE * STEPS * truth
    assert all(s.line is not None and s.line.startswith("memlab/leaks.py:") for s in inside)
    assert all(s.count % STEPS == 0 for s in inside)  # the same blocks, once per step


def test_leak_categories(results) -> None:  # type: ignore[no-untyped-def]
    """The hook and the loss keep activations (forward outputs); the cycle keeps a batch,
    made in the data phase: inputs. The growth is in that category, nowhere else."""
    want = {
        "loss_history": "activations",
        "forward_hook": "activations",
        "reference_cycle": "inputs",
    }
    for ex, cat in want.items():
        by_cat = results[(ex, False)].alive.growth_by_category
        assert (by_cat[cat] or 0) > 0
        assert all(abs(v or 0) < 1 for c, v in by_cat.items() if c != cat), (ex, by_cat)


def test_cycle_is_freed_by_gc_collect_only(results) -> None:  # type: ignore[no-untyped-def]
    leaky, fixed = results[("reference_cycle", False)], results[("reference_cycle", True)]
    truth = cycle_truth()
    assert leaky.gc_freed_bytes == STEPS * truth  # every record, every batch: exact
    assert leaky.gc_collected > 0
    assert fixed.gc_freed_bytes == 0
    # the other leaks are reachable (a list holds them): gc frees none of their bytes
    assert results[("forward_hook", False)].gc_freed_bytes == 0
    assert results[("loss_history", False)].gc_freed_bytes == 0


def test_leak_result_round_trips(results) -> None:  # type: ignore[no-untyped-def]
    r = results[("forward_hook", False)]
    back = leaks.LeakResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.to_dict() == r.to_dict()
    assert back.growth_per_step_bytes == r.growth_per_step_bytes
    assert "forward_hook (leaky)" in repr(back) and "<table>" in back._repr_html_()


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        leaks.leak_check("forward_hook", steps=1, in_worker=False)
    with pytest.raises(ValueError, match="example must be one of"):
        leaks.leak_check("nope", in_worker=False)
    with pytest.raises(ValueError, match="fixed must be True or False"):
        leaks.leak_check("forward_hook", fixed="yes", in_worker=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_sites"):
        memlab.track(top_sites=0)
    with pytest.raises(ValueError, match="source_lines"):
        memlab.track(source_lines=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup"):
        AliveReport(entry_bytes=0, entry_by_category={}, warmup=-1)


def test_leak_check_in_the_worker() -> None:
    """The kernel's path: the service worker runs it, a torch-free result comes back."""
    r = memlab.leaks.leak_check("forward_hook", steps=3)
    assert isinstance(r, leaks.LeakResult) and r.source
    truth = hook_truth()
    assert r.growth_per_step_bytes is not None
    assert abs(r.growth_per_step_bytes - truth) <= TOLERANCE * truth


# -- the report on any loop --------------------------------------------------------------------
def test_report_on_an_ordinary_loop() -> None:
    """A training loop with Adam that keeps nothing: the first step allocates Adam's state
    (the warm-up), then nothing grows. Each boundary's total is the tracker's live count read
    there, and its categories sum to it; the report survives RunResult's JSON."""
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 32), torch.randint(0, 4, (16,))
    live: list[int] = []
    with memlab.track(model, optimizer=opt, inputs=(x, y), sample_interval_s=None) as rec:
        for i in range(4):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            live.append(rec.live_bytes())
            rec.step(f"step {i + 1}")
    assert rec.result is not None
    report = rec.result.alive
    assert report is not None and len(report) == 4
    assert report.totals.tolist() == live
    for s in report.steps:
        assert sum(s.by_category.values()) == s.total_bytes
    assert [s.label for s in report.steps] == ["step 1", "step 2", "step 3", "step 4"]
    assert report.growth_per_step_bytes == 0.0
    params = list(model.parameters())
    adam_state = sum(2 * storage_bytes(p) + 4 for p in params)  # exp_avg, exp_avg_sq, step
    assert report.growth_bytes[0] == adam_state
    assert report.steps[-1].by_category["optimizer_state"] == adam_state
    # entry: parameters and inputs, as sites
    entry = {s.category: s.bytes for s in report.steps[0].sites if s.phase == "entry"}
    assert entry["parameters"] == sum(storage_bytes(p) for p in params)
    assert entry["inputs"] == storage_bytes(x) + storage_bytes(y)
    back = RunResult.from_json(rec.result.to_json())
    assert back.alive is not None and back.alive.to_dict() == report.to_dict()
    assert set(report.to_dataframe().columns) >= {"total", "growth", *CATEGORIES}


def test_no_steps_no_report() -> None:
    with memlab.track(sample_interval_s=None) as rec:
        torch.ones(8)
    assert rec.result is not None and rec.result.alive is None


# -- figures ---------------------------------------------------------------------------------
def test_figures_draw_the_report(results) -> None:  # type: ignore[no-untyped-def]
    from memlab import plots_leaks

    leaky, fixed = results[("forward_hook", False)], results[("forward_hook", True)]
    fig = plots_leaks.leak_pair_figure(leaky, fixed)
    # stacked bars per category: the sum of a step's bars is its alive total, in KiB
    for col, r in ((0, leaky), (1, fixed)):
        axis = "x" if col == 0 else "x2"
        bars = [t for t in fig.data if t.xaxis == axis]
        sums = [sum(t.y[i] for t in bars) for i in range(STEPS)]
        assert sums == pytest.approx([v / 1024 for v in r.alive.totals])
    assert len({t.name for t in fig.data if t.showlegend}) == len({t.name for t in fig.data})
    one = plots_leaks.alive_figure(leaky.alive)
    assert "growth 32.0 KiB/step" in one.layout.title.text
    g = plots_leaks.growth_figure(list(results.values()))
    by = {t.name: dict(zip(t.x, t.y, strict=True)) for t in g.data}
    for ex in leaks.EXAMPLES:
        assert by["leaky"][ex] * 1024 == pytest.approx(results[(ex, False)].growth_per_step_bytes)
        assert by["fixed"][ex] == pytest.approx(0.0)
    empty = plots_leaks.alive_figure(AliveReport(entry_bytes=0, entry_by_category={}))
    assert not empty.data and "no step" in empty.layout.annotations[0].text


def test_profiler_fallback_gives_the_same_report() -> None:
    """Without a compiler the profiler's events, placed by time, give the same report."""
    from memlab.tracking.sources import ProfilerSource
    from memlab.tracking.tracker import Tracker

    reports = []
    for source in (None, ProfilerSource()):
        s = leaks.build_setup(0)
        with Tracker(
            s.model,
            optimizer=s.optimizer,
            sample_interval_s=None,
            source_lines=True,
            _source=source,
        ) as rec:
            kept = leaks.forward_hook(s, 3, False, rec)
            with rec.phase("other"):
                del kept
        assert rec.result is not None and rec.result.alive is not None
        reports.append(rec.result.alive)
    native, profiler = reports
    assert profiler.totals.tolist() == native.totals.tolist()
    assert profiler.steps[-1].sites == native.steps[-1].sites
    assert native.growth_per_step_bytes == hook_truth()
