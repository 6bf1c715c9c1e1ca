"""The torch.profiler fallback source against the native recorder, on the same steps, and the
choice of source. Both sources watch the same c10 CPU allocator in this process, so each model
runs once per source after a warm-up, with the same state at entry."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import memlab  # noqa: E402
from memlab.tracking import sources  # noqa: E402
from memlab.tracking.sources import ProfilerSource, _paired_frees  # noqa: E402
from memlab.tracking.tracker import Tracker  # noqa: E402

from .test_track import MODELS, Odd, mlp, train_step  # noqa: E402

TOLERANCE = 0.01  # the bar: the fallback within 1% of the native recorder


def both(model: Any, step: Any, **kw: Any) -> tuple[Any, Any]:
    """The results of ``step`` tracked by the native recorder, then by the fallback."""
    out = []
    for source in (None, ProfilerSource()):
        with Tracker(model, _source=source, **kw) as rec:
            step()
        assert rec.result is not None
        out.append(rec.result)
    return out[0], out[1]


def close(a: int, b: int, scale: int) -> bool:
    return abs(a - b) <= TOLERANCE * scale


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fallback_matches_native_on_a_train_step(name: str) -> None:
    model, (x, y) = MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        train_step(model, opt, x, y)
    native, prof = both(model, lambda: train_step(model, opt, x, y), optimizer=opt, inputs=(x, y))
    assert native.timeline.source == "cpu-allocator" and prof.timeline.source == "cpu-profiler"
    assert close(prof.peak_bytes, native.peak_bytes, native.peak_bytes), (prof, native)
    for c, v in native.peak_by_category.items():
        assert close(prof.peak_by_category[c], v, native.peak_bytes), (c, prof, native)
        assert close(prof.end_by_category[c], native.end_by_category[c], native.peak_bytes), c
    assert prof.entry_by_category == native.entry_by_category
    assert set(prof.peak_by_phase) == set(native.peak_by_phase)
    for p, v in native.peak_by_phase.items():
        assert close(prof.peak_by_phase[p], v, native.peak_bytes), p
    assert prof.peak_phase == native.peak_phase
    # module tags come from the time of each event: the same modules saved the same bytes
    assert prof.activations_by_module == native.activations_by_module
    assert sources.FALLBACK_NOTE in prof.notes and sources.FALLBACK_NOTE not in native.notes


@pytest.mark.parametrize("checkpointed", [False, True])
def test_fallback_matches_native_with_checkpoint_recompute(checkpointed: bool) -> None:
    model = Odd(checkpointed)
    x, y = torch.randn(256, 128), torch.randint(0, 10, (256,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt, x, y)
    native, prof = both(model, lambda: train_step(model, opt, x, y), optimizer=opt, inputs=(x, y))
    assert close(prof.peak_bytes, native.peak_bytes, native.peak_bytes)
    for c, v in native.peak_by_category.items():
        assert close(prof.peak_by_category[c], v, native.peak_bytes), c


def test_fallback_exact_bytes_and_entry_frees() -> None:
    """Known sizes, and the free of a storage allocated before profiling began (the profiler
    itself drops it: c10's ProfiledCPUMemoryReporter has no size for it)."""
    keep = torch.empty(1000, dtype=torch.float32)
    gone = torch.empty(10_000, dtype=torch.float32)
    with Tracker(inputs=(keep, gone), _source=ProfilerSource()) as rec:
        del gone
        a = torch.empty(250_000, dtype=torch.float64)
        del a
        b = torch.empty(3000, dtype=torch.int16)
    r = rec.result
    assert r is not None
    assert r.entry_by_category["inputs"] == 44_000
    # the 40 kB free was seen first, before the 2 MB tensor came and went
    assert r.timeline.total.tolist() == [44_000, 4000, 2_004_000, 4000, 10_000]
    assert r.peak_bytes == 2_004_000
    assert r.peak_by_category["inputs"] == 4000
    assert r.peak_by_category["temporaries"] == 2_000_000
    assert r.end_by_category["inputs"] == 4000 and r.end_by_category["other"] == 6000
    del b


def test_fallback_nested_and_repeated_blocks_agree() -> None:
    """An inner block ends while the outer one records: the profiler is read and restarted."""
    model, (x, y) = MODELS["cnn"]()
    opt = torch.optim.Adam(model.parameters())
    train_step(model, opt, x, y)
    src = ProfilerSource()
    peaks = []
    for _ in range(2):
        with Tracker(model, optimizer=opt, inputs=(x, y), _source=src) as rec:
            train_step(model, opt, x, y)
        assert rec.result is not None
        peaks.append(rec.result.peak_bytes)
    with Tracker(model, optimizer=opt, inputs=(x, y), _source=src) as outer:
        with Tracker(model, optimizer=opt, inputs=(x, y), _source=src) as inner:
            train_step(model, opt, x, y)
        train_step(model, opt, x, y)  # after the restart, still seen by the outer block
    assert inner.result is not None and outer.result is not None
    assert peaks[0] == peaks[1] == inner.result.peak_bytes
    assert outer.result.peak_bytes == peaks[0]
    assert outer.result.peak_by_category == inner.result.peak_by_category
    assert [m for _, m in outer.result.timeline.marks].count("forward") == 2


def test_fallback_live_view_counts_outputs() -> None:
    seen: list[int] = []
    with Tracker(
        sample_interval_s=0.002,
        on_sample=lambda t, s: seen.append(s["tensor_bytes"]),
        _source=ProfilerSource(),
    ) as rec:
        a = torch.ones(2**20)
        import time

        time.sleep(0.05)
        del a
        time.sleep(0.01)
    assert max(seen) == 4 * 2**20
    assert seen[-1] == 0
    assert rec.result is not None and rec.result.peak_bytes == 4 * 2**20


def test_fallback_budget() -> None:
    """At the dispatch level, the op whose outputs pass the budget raises (after it ran); a
    budget passed only by op-internal buffers is found in the exact events at exit."""
    model, (x, y) = mlp()
    opt = torch.optim.Adam(model.parameters())
    train_step(model, opt, x, y)
    src = ProfilerSource()
    with Tracker(model, optimizer=opt, inputs=(x, y), _source=src) as rec:
        train_step(model, opt, x, y)
    assert rec.result is not None
    peak = rec.result.peak_bytes
    with pytest.raises(torch.OutOfMemoryError, match="memlab budget exceeded"):
        with Tracker(
            model, optimizer=opt, inputs=(x, y), budget_bytes=int(peak * 0.9), _source=src
        ) as r2:
            train_step(model, opt, x, y)
    assert r2.result is not None and r2.result.status == "oom"
    opt.zero_grad()
    with Tracker(model, optimizer=opt, inputs=(x, y), budget_bytes=peak, _source=src) as r3:
        train_step(model, opt, x, y)
    assert r3.result is not None and r3.result.status == "ok" and r3.result.peak_bytes == peak
    assert src.limit == 0  # no limit left behind
    torch.ones(10_000_000)


def test_fallback_budget_passed_by_internal_buffers_only() -> None:
    """Convolution backward's column buffers are invisible at dispatch: the exact events, read
    at exit, still stop the block."""
    model = nn.Sequential(nn.Conv2d(8, 16, 5), nn.ReLU(), nn.Conv2d(16, 16, 5))
    x = torch.randn(4, 8, 40, 40)
    model(x).sum().backward()
    src = ProfilerSource()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    with Tracker(model, inputs=(x,), _source=src) as rec:
        step()
    assert rec.result is not None
    exact = rec.result.peak_bytes
    assert rec.result.peak_by_category["temporaries"] > 0
    # a budget under the exact peak but above everything the dispatch level sees at once
    budget = exact - 1
    with pytest.raises(torch.OutOfMemoryError, match="seen in the exact events after the block"):
        with Tracker(model, inputs=(x,), budget_bytes=budget, _source=src) as r2:
            step()
    assert r2.result is not None and r2.result.status == "oom"
    assert r2.result.peak_bytes == exact  # the step ran to its end


def test_paired_frees_drop_frees_of_blocks_from_before() -> None:
    ev = np.array(
        [
            (1, 0xA, -8, 0),  # freed, never allocated in the session: dropped
            (2, 0xB, 16, 0),
            (3, 0xB, -16, 0),  # paired: kept
            (4, 0xB, -16, 0),  # a second free of the same block (stale size table): dropped
            (5, 0xA, 4, 0),
            (6, 0xA, -4, 0),  # paired with the new allocation: kept
        ],
        dtype=np.int64,
    )
    assert _paired_frees(ev).tolist() == [False, True, True, False, True, True]


# -- choosing a source ---------------------------------------------------------------------
@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Any:
    sources.default_source.cache_clear()
    yield monkeypatch
    sources.default_source.cache_clear()


def test_env_var_forces_a_source(fresh_default: pytest.MonkeyPatch) -> None:
    fresh_default.setenv(sources.ENV_VAR, "profiler")
    assert isinstance(sources.default_source(), ProfilerSource)
    sources.default_source.cache_clear()
    fresh_default.setenv(sources.ENV_VAR, "native")
    assert isinstance(sources.default_source(), sources.NativeSource)
    sources.default_source.cache_clear()
    fresh_default.setenv(sources.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match="auto, native or profiler"):
        sources.default_source()


def test_auto_falls_back_with_a_notice_when_the_build_fails(
    fresh_default: pytest.MonkeyPatch,
) -> None:
    from memlab.tracking import _native

    def fail() -> Any:
        raise _native.NativeBuildError("memlab could not compile its allocation recorder: boom")

    fresh_default.delenv(sources.ENV_VAR, raising=False)
    fresh_default.setattr(_native, "recorder", fail)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        src = sources.default_source()
    assert isinstance(src, ProfilerSource)
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1 and "boom" in msgs[0] and "op-internal buffers" in msgs[0]
    assert "\n" not in msgs[0]


def test_track_uses_the_default_source(fresh_default: pytest.MonkeyPatch) -> None:
    fresh_default.setenv(sources.ENV_VAR, "profiler")
    with memlab.track() as rec:
        a = torch.empty(1000)
    assert rec.result is not None and rec.result.timeline.source == "cpu-profiler"
    assert rec.result.peak_bytes == 4000
    del a


def test_a_stamped_build_loads_without_cpp_extension(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker loads the library a build stamped for its key, without cpp_extension.load (which
    runs the compiler and ninja in every process); a changed key or a missing library rebuilds,
    and the rebuild is stamped."""
    from memlab.tracking import _native

    builds: list[Any] = []

    def build() -> Any:
        lib = tmp_path / f"memlab_alloc_v{len(builds)}.so"
        lib.write_bytes(b"")
        builds.append(lib)
        return lib

    monkeypatch.setattr(_native, "_build_dir", lambda: tmp_path)
    monkeypatch.setattr(_native, "_build", build)
    first = _native._library()  # no stamp yet: built, and stamped
    assert builds == [first] and len(list(tmp_path.glob("*.stamp"))) == 1
    assert _native._library() == first and len(builds) == 1  # the stamp is enough
    key = _native._build_key()
    monkeypatch.setattr(_native, "_build_key", lambda: "another torch or source")
    second = _native._library()  # the key changed: built again, and stamped for that key
    assert builds == [first, second] and _native._library() == second
    monkeypatch.setattr(_native, "_build_key", lambda: key)  # the first key keeps its stamp
    assert _native._library() == first and len(builds) == 2
    first.unlink()  # the library is gone: built again
    assert _native._library() == tmp_path / "memlab_alloc_v2.so" and len(builds) == 3


def test_the_build_key_follows_the_source(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from memlab.tracking import _native

    src = tmp_path / "_alloc.cpp"
    src.write_text("int a;")
    monkeypatch.setattr(_native, "_SOURCE", src)
    k1 = _native._build_key()
    src.write_text("int b;")
    assert _native._build_key() != k1
