"""memlab.allocators: the allocator reaches the worker, the series are exact where they can be,
a missing library says what to install, and no worker outlives a call.

One comparison (4 fresh workers, 8 transformer requests) is shared by the tests that read a
measured run; the others spawn at most one short worker each. No test looks at speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from memlab import allocators as A
from memlab.allocators import (
    AllocatorComparison,
    AllocatorConfig,
    AllocatorRun,
    AllocatorUnavailable,
    Request,
)

MIB = 2**20
REQUESTS = 8
# A seed whose 8 requests have a large one (3072 tokens) between smaller ones.
SEED = 4


def _workers() -> list[psutil.Process]:
    """This process's children that are allocator workers."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any("memlab.allocators" in part for part in p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def cmp() -> AllocatorComparison:
    names = ["glibc", "glibc-arena2", "glibc-mmap", "jemalloc"]
    with pytest.MonkeyPatch.context() as mp:
        # Inherited allocator settings must not reach a worker (glibc must be the default).
        mp.setenv("MALLOC_ARENA_MAX", "7")
        mp.setenv("MALLOC_TOP_PAD_", "1048576")
        done: list[str] = []
        out = A.compare(
            "transformer",
            REQUESTS,
            names,
            seed=SEED,
            timeout_s=300,
            on_run=lambda r: done.append(r.config),
        )
    assert done == names  # on_run saw each run as it ended, in order
    return out


# -- the stream and bad input (no worker) --------------------------------------------------------
def test_stream_is_seeded_and_shapes_are_in_range() -> None:
    a = A.make_stream("transformer", 50, seed=1)
    assert a == A.make_stream("transformer", 50, seed=1)
    assert a != A.make_stream("transformer", 50, seed=2)
    max_b, max_s = A.WORKLOADS["transformer"]
    assert max_s is not None
    assert all(1 <= r.batch <= max_b and 8 <= r.seq <= max_s for r in a if r.seq is not None)
    assert len({(r.batch, r.seq) for r in a}) > 25  # variable shapes, not one repeated
    assert all(r.seq is None for r in A.make_stream("mlp", 5))
    s = A.make_stream("transformer", REQUESTS, seed=SEED)
    assert max(r.batch * (r.seq or 1) for r in s) >= 2000


def test_bad_input_names_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="unknown allocator configuration 'tcmalloc'.*glibc"):
        A.compare("transformer", 3, ["glibc", "tcmalloc"])
    with pytest.raises(ValueError, match="unknown workload 'resnet'.*transformer"):
        A.make_stream("resnet", 3)
    with pytest.raises(ValueError, match="requests must be a positive int"):
        A.make_stream("mlp", 0)
    assert _workers() == []  # nothing was started for a call that was refused


# -- unavailable -----------------------------------------------------------------------------------
def test_missing_library_is_unavailable_with_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The library directories are emptied: the real jemalloc configuration must say what to
    # install, and come back unavailable (no worker, no numbers), never measured as glibc.
    monkeypatch.setattr(A, "_library_dirs", lambda: [tmp_path])
    with pytest.raises(AllocatorUnavailable, match=r"apt-get install libjemalloc2"):
        A.resolve("jemalloc")
    out = A.compare("transformer", 3, ["mimalloc"])
    run = out["mimalloc"]
    assert run.status == "unavailable"
    assert run.reason is not None and "apt-get install libmimalloc2.0" in run.reason
    assert run.anon == [] and run.latency_s == []
    assert run.summary() == {"config": "mimalloc", "status": "unavailable", "reason": run.reason}
    assert "mimalloc: unavailable" in out.explain()
    assert _workers() == []


def test_library_found_through_memlab_library_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "libmine.so.1"
    fake.write_bytes(b"")
    cfg = AllocatorConfig("mine", "test", preload=("libmine.so.1",), package="libmine1")
    with pytest.raises(AllocatorUnavailable, match="libmine1"):
        A.resolve(cfg)
    monkeypatch.setenv("MEMLAB_LIBRARY_PATH", str(tmp_path))
    assert A.resolve(cfg)[1] == {"LD_PRELOAD": str(fake)}


# -- the environment reaches the worker ----------------------------------------------------------
def test_env_reaches_the_worker_and_inherited_settings_do_not(cmp: AllocatorComparison) -> None:
    for run in cmp.runs:
        assert run.status == "ok", (run.config, run.reason)
    assert cmp["glibc"].worker_env == {}  # MALLOC_ARENA_MAX=7 and MALLOC_TOP_PAD_ were cleared
    assert {"MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_"} <= set(cmp["glibc"].cleared)
    assert cmp["glibc-arena2"].worker_env == {"MALLOC_ARENA_MAX": "2"}
    assert cmp["glibc-mmap"].worker_env == {"MALLOC_MMAP_THRESHOLD_": "131072"}
    assert cmp["glibc"].worker_maps == []  # glibc's malloc lives in libc.so, no preload
    assert cmp["glibc"].malloc_free is not None  # mallinfo2 read under glibc ...
    assert cmp["jemalloc"].malloc_free is None  # ... and not where it would describe nothing


def test_preloaded_library_is_mapped_in_the_worker(cmp: AllocatorComparison) -> None:
    try:
        _, env = A.resolve("jemalloc")
    except AllocatorUnavailable as e:
        pytest.skip(str(e))
    run = cmp["jemalloc"]
    assert run.worker_env == {"LD_PRELOAD": env["LD_PRELOAD"]}
    # Read from the worker's own /proc/self/maps: the library is really loaded.
    assert os.path.realpath(env["LD_PRELOAD"]) in run.worker_maps


def test_preload_that_does_not_take_is_failed_not_measured() -> None:
    # What the parent does with a worker's report where ld.so ignored LD_PRELOAD (it only
    # warns): a failed run, with no series.
    cfg = A.CONFIGS["jemalloc"]
    got = {
        "env": {"LD_PRELOAD": "/x/libjemalloc.so.2"},
        "maps": [],
        "param_bytes": 1,
        "anon_base": 1,
        "live_base": 1,
        "threads": 1,
        "others_cores": 0.0,
        **{k: [] for k in A._SERIES},
    }
    run = A._run_from_worker(cfg, {"LD_PRELOAD": "/x/libjemalloc.so.2"}, [], got)
    assert run.status == "failed" and "did not take" in (run.reason or "")
    assert run.summary()["status"] == "failed" and "p50_s" not in run.summary()


# -- the series ----------------------------------------------------------------------------------
def _bounds(r: Request, threads: int) -> tuple[int, int]:
    """Tensor bytes a transformer request must and may hold at its peak, from its shape.

    Must: at a block's GELU, the request's input (b, s, 4), the block's input and its
    post-attention sum (b, s, dim) each, fc1's output and GELU's (b, s, hidden) each.
    May: the input, the embedding and its sum with the positions, and every tensor one block
    makes (norm1, qkv (3 dim), attention out, its transposed copy, proj, sum, norm2, fc1,
    GELU, fc2, sum: 10 dim + 2 hidden per token) alive at once, plus 1 MiB per thread for the
    CPU flash attention's scratch buffers (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp).
    """
    dim, hidden, feat = 96, 384, 4  # memlab.workloads.models.Transformer's defaults
    n = r.batch * (r.seq or 1)
    must = 4 * n * (feat + 2 * dim + 2 * hidden)
    may = 4 * n * (feat + 2 * dim + 10 * dim + 2 * hidden) + threads * MIB
    return must, may


def test_live_bytes_agree_with_the_request_shapes(cmp: AllocatorComparison) -> None:
    import torch

    from memlab.workloads.models import Transformer

    torch.manual_seed(0)
    model = Transformer(seq_len=A.WORKLOADS["transformer"][1] or 0)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    for run in cmp.runs:
        # Exact (0 bytes of tolerance): between requests only the parameters are alive, under
        # every malloc (the recorder wraps PyTorch's allocator, not malloc).
        assert run.param_bytes == params
        assert run.live_base == params
        assert run.live == [params] * REQUESTS, run.config
        for i, req in enumerate(run.requests):
            must, may = _bounds(req, run.threads)
            got = run.live_peak[i] - params
            assert must <= got <= may, (run.config, req, got, must, may)
    # Tensor bytes do not depend on the allocator: every run's peaks are the same.
    assert len({tuple(r.live_peak) for r in cmp.runs}) == 1


def test_rss_parts_are_consistent_and_come_from_proc(cmp: AllocatorComparison) -> None:
    total = psutil.virtual_memory().total
    for run in cmp.runs:
        assert run.live_base < run.anon_base < total
        for i in range(REQUESTS):
            # VmHWM (all RSS) >= its anonymous part >= the tensors at the request's peak
            # (written, so resident and anonymous); after the request anon >= live tensors.
            assert run.rss_peak[i] >= run.anon_peak[i] >= run.live_peak[i], run.config
            assert run.anon[i] >= run.live[i]
    # The high-water mark is reset before each request (/proc/self/clear_refs): under
    # glibc-mmap, which unmaps large blocks at free, a small request after the largest one
    # peaks lower than it did (without the reset, VmHWM would never come down).
    mm = cmp["glibc-mmap"]
    big = max(range(REQUESTS), key=lambda i: mm.live_peak[i])
    later = [i for i in range(big + 1, REQUESTS) if mm.live_peak[i] < mm.live_peak[big] / 4]
    if later:  # the seed has smaller requests after the largest: the reset is visible
        assert min(mm.rss_peak[i] for i in later) < mm.rss_peak[big]


def test_table_ratios_and_explanation(cmp: AllocatorComparison) -> None:
    rows = {r["config"]: r for r in cmp.table()}
    g = rows["glibc"]
    assert g["peak_anon_vs_glibc"] == 1.0 and g["p50_s_vs_glibc"] == 1.0
    j = rows["jemalloc"]
    assert j["p99_s_vs_glibc"] == pytest.approx(j["p99_s"] / g["p99_s"])
    assert j["final_fragmentation"] == cmp["jemalloc"].fragmentation[-1]
    text = cmp.explain()
    assert f"{g['final_fragmentation'] / MIB:.1f} MiB" in text
    again = AllocatorComparison.from_json(cmp.to_json())
    assert again.table() == cmp.table()


# -- no worker left behind -----------------------------------------------------------------------
def test_no_worker_left_after_a_run(cmp: AllocatorComparison) -> None:
    assert cmp.runs  # the fixture's four workers have ended
    assert _workers() == []


def test_worker_error_is_a_failed_run_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Forced to the profiler source, the worker refuses (it needs exact live bytes).
    monkeypatch.setenv("MEMLAB_EVENT_SOURCE", "profiler")
    run = A.run_config("glibc", A.make_stream("mlp", 2), workload="mlp", timeout_s=300)
    assert run.status == "failed"
    assert run.reason is not None and "native recorder" in run.reason
    assert _workers() == []


def test_timeout_and_interrupt_kill_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    run = A.run_config("glibc", A.make_stream("mlp", 2), workload="mlp", timeout_s=0.5)
    assert run.status == "failed" and "still running after 0.5 s" in (run.reason or "")
    assert _workers() == []

    seen: list[int] = []
    real = subprocess.Popen.communicate

    def interrupted(self: subprocess.Popen[bytes], *a: object, **k: object) -> object:
        seen.append(self.pid)
        assert psutil.Process(self.pid).is_running()  # the worker is alive when Ctrl-C comes
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        A.run_config("glibc", A.make_stream("mlp", 2), workload="mlp")
    monkeypatch.setattr(subprocess.Popen, "communicate", real)
    assert seen and not psutil.pid_exists(seen[0])
    assert _workers() == []


# -- torch-free at import, and the figure --------------------------------------------------------
def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys, memlab.allocators, memlab.plots_allocators; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _hand_made() -> AllocatorComparison:
    reqs = [Request(1, 8), Request(32, 256), Request(1, 8)]

    def run(name: str, anon: list[int], lat: list[float]) -> AllocatorRun:
        return AllocatorRun(
            name, name, "ok", anon_base=100 * MIB, live_base=2 * MIB, threads=2,
            requests=reqs, latency_s=lat, t_s=[0.1, 0.3, 0.4], live=[2 * MIB] * 3,
            live_peak=[3 * MIB, 40 * MIB, 3 * MIB], anon=anon,
            anon_peak=[a + MIB for a in anon], rss_peak=[a + 50 * MIB for a in anon],
        )  # fmt: skip

    runs = [
        run("glibc", [100 * MIB, 140 * MIB, 140 * MIB], [0.01, 0.1, 0.01]),
        run("jemalloc", [100 * MIB, 110 * MIB, 101 * MIB], [0.01, 0.12, 0.02]),
        AllocatorRun("mimalloc", "m", "unavailable", "mimalloc is unavailable: x; install it"),
    ]
    return AllocatorComparison("transformer", 0, reqs, runs)


def test_numbers_from_hand_made_runs() -> None:
    c = _hand_made()
    assert c["glibc"].fragmentation == [0, 40 * MIB, 40 * MIB]
    assert c["jemalloc"].fragmentation == [0, 10 * MIB, MIB]
    rows = {r["config"]: r for r in c.table()}
    assert rows["jemalloc"]["final_rss_minus_live"] == 99 * MIB
    assert rows["jemalloc"]["final_rss_minus_live_vs_glibc"] == pytest.approx(99 / 138)
    assert rows["jemalloc"]["p50_s"] == pytest.approx(0.02)
    assert rows["jemalloc"]["p99_s"] == pytest.approx(0.02 + 0.98 * 0.1)  # linear, as numpy
    assert "mimalloc" in rows and "p50_s" not in rows["mimalloc"]
    frame = c.to_frame()
    assert frame.loc["jemalloc", "final_fragmentation"] == MIB
    assert frame.loc["mimalloc", "status"] == "unavailable"
    text = c.explain()
    assert "glibc kept 40.0 MiB" in text and "jemalloc: 1.0 MiB kept at the end" in text


def test_figures_draw_the_runs_and_name_the_missing() -> None:
    from memlab.plots_allocators import comparison_figure, fragmentation_figure, summary_figure

    c = _hand_made()
    fig = fragmentation_figure(c)
    by = {t.name: t for t in fig.data}
    assert list(by["glibc"].y) == [0, 40, 40] and list(by["jemalloc"].y) == [0, 10, 1]
    assert list(by["tensor peak of the request"].y) == [1, 38, 1]
    assert "mimalloc" not in by
    assert "mimalloc: unavailable (install it)" in fig.layout.title.subtitle.text
    s = summary_figure(c)
    peak = next(t for t in s.data if t.name == "peak anon RSS")
    assert list(peak.x) == ["glibc", "jemalloc"] and list(peak.y) == [141, 111]
    p99 = next(t for t in s.data if t.name == "p99 latency")
    assert p99.y[0] == pytest.approx((0.01 + 0.98 * 0.09) * 1e3)
    full = comparison_figure(c)
    assert {t.name for t in full.data} >= {"glibc", "jemalloc", "peak anon RSS", "p50 latency"}
    assert "mimalloc" in full.layout.title.subtitle.text


def test_mmap_threshold_returns_memory_and_faults_it_back(cmp: AllocatorComparison) -> None:
    # mallopt(3), M_MMAP_THRESHOLD: a block at or above it is mmapped and unmapped at free, so
    # after the requests nothing large stays kept, and each large block is faulted in again.
    g, mm = cmp["glibc"], cmp["glibc-mmap"]
    assert all(f >= 0 for r in cmp.runs for f in r.minflt)
    assert sum(mm.minflt) > sum(g.minflt)
    assert mm.fragmentation[-1] < g.fragmentation[-1]


def test_worker_dies_with_its_parent(tmp_path: Path) -> None:
    # A parent killed with SIGKILL runs no finally and no atexit: the worker must go by itself
    # (prctl PR_SET_PDEATHSIG in the worker). The parent here is a plain Python process.
    code = (
        "from memlab import allocators as A\n"
        "A.run_config('glibc', A.make_stream('mlp', 5000), workload='mlp', timeout_s=300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        worker = None
        for _ in range(200):  # the worker appears within seconds
            kids = psutil.Process(parent.pid).children()
            if kids:
                worker = kids[0]
                break
            time.sleep(0.05)
        assert worker is not None, "the parent started no worker"
        time.sleep(1.0)  # past the worker's start, into its torch import or its stream
        parent.kill()
        parent.wait(timeout=10)
        gone, alive = psutil.wait_procs([worker], timeout=10)
        assert not alive, f"worker {worker.pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
