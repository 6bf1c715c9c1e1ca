"""memlab.bandwidth (memlab/locality.py): the cache sizes read from sysfs, STREAM's byte
counting, the result's shape, the CLI. No speed targets: the figures are only checked to be
measured (positive, finite), never against a speed."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import memlab
from memlab import locality
from memlab.locality import BandwidthPoint, BandwidthResult, CacheLevel

MIB = 2**20


def _fake_sys(root: Path, caches: list[tuple[int, str, str]]) -> Path:
    """A /sys/devices/system/cpu/cpu0/cache tree: (level, type, size) per index."""
    for i, (level, kind, size) in enumerate(caches):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return root


def test_cache_levels_from_a_fake_sys_tree(tmp_path: Path) -> None:
    root = _fake_sys(
        tmp_path / "cache",
        [
            (1, "Data", "48K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "1280K"),
            (3, "Unified", "12M"),
        ],
    )
    levels = locality.read_cache_levels(root)
    assert levels == (
        CacheLevel("L1d", 48 * 1024),
        CacheLevel("L2", 1280 * 1024),
        CacheLevel("L3", 12 * MIB),
    )


def test_no_sys_tree_gives_none(tmp_path: Path) -> None:
    assert locality.read_cache_levels(tmp_path / "missing") is None
    only_icache = _fake_sys(tmp_path / "i", [(1, "Instruction", "32K")])
    assert locality.read_cache_levels(only_icache) is None


def test_this_machines_levels_match_sysfs() -> None:
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    if not root.is_dir():
        pytest.skip("no sysfs cache directory here")
    levels = locality.read_cache_levels()
    assert levels is not None
    # Independent reading: the `size` files of the data/unified caches, by level.
    want = {}
    for d in root.glob("index*"):
        if (d / "type").read_text().strip() != "Instruction":
            size = (d / "size").read_text().strip()
            assert size.endswith("K")
            want[int((d / "level").read_text())] = int(size[:-1]) * 1024
    assert [lv.size_bytes for lv in levels] == [want[k] for k in sorted(want)]


def test_working_sets_span_and_include_half_of_each_level() -> None:
    levels = (CacheLevel("L1d", 48 * 1024), CacheLevel("L2", 1280 * 1024))
    sizes = locality.working_sets(8 * MIB, levels)
    assert sizes[0] == 4096 and sizes[-1] == 8 * MIB
    assert sizes == sorted(set(sizes))
    assert 24 * 1024 in sizes and 640 * 1024 in sizes
    with pytest.raises(ValueError, match="at least 4 KiB"):
        locality.working_sets(1024)


def test_stream_byte_counting_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each clock reading is 1 s after the previous one, so every timing is exactly 1 s and one
    # call long: the rate is then the bytes counted for one call, in GB.
    ticks = itertools.count()
    monkeypatch.setattr(locality, "_clock", lambda: float(next(ticks)))
    size = 3 * 2**16  # whole elements for both kernels
    copy = locality._copy_rate(size, min_time_s=0.5, repeats=3)
    triad = locality._triad_rate(size, min_time_s=0.5, repeats=3)
    n_copy, n_triad = size // 16, size // 24  # elements per array: 2 and 3 float64 arrays
    assert copy == pytest.approx(2 * 8 * n_copy / 1e9, rel=1e-12)  # read n + write n
    assert triad == pytest.approx(3 * 8 * n_triad / 1e9, rel=1e-12)  # read b, c + write a
    anchor = locality._anchor_rate(2**20, min_time_s=0.5, repeats=2)
    assert anchor == pytest.approx(2 * 2**20 / 1e9, rel=1e-12)


def test_the_triad_computes_a_equals_b_plus_s_c() -> None:
    import numpy as np

    a, b, c = locality._arrays(3 * locality.TRIAD_BLOCK + 5, 3)
    b[:] = np.arange(b.size)
    c[:] = 2.0
    n = b.size
    locality.triad(a, b, c, 3.0, np.empty(locality.TRIAD_BLOCK))
    assert np.array_equal(a, np.arange(n) + 6.0)
    # The arrays do not overlap and keep a 1 KiB page offset from one another.
    addrs = [x.ctypes.data for x in (a, b, c)]
    assert all(x % 64 == 0 for x in addrs)
    assert [(y - addrs[0]) % 4096 for y in addrs] == [0, 1024, 2048]
    assert addrs[1] >= addrs[0] + 8 * n and addrs[2] >= addrs[1] + 8 * n


def test_a_small_measurement_in_process(tmp_path: Path) -> None:
    root = _fake_sys(tmp_path / "cache", [(1, "Data", "32K"), (2, "Unified", "256K")])
    r = locality.measure(
        2 * MIB, anchor_bytes=MIB, min_time_s=0.005, repeats=2, per_octave=1, cache_dir=root
    )
    assert [p.size_bytes for p in r.points] == [2**k for k in range(12, 22)]
    for p in r.points:
        for v in (p.copy_gb_per_s, p.triad_gb_per_s):
            assert v > 0 and math.isfinite(v)
    assert r.levels is not None
    assert [(lv.name, lv.size_bytes) for lv in r.levels] == [("L1d", 32768), ("L2", 262144)]
    by_size = {p.size_bytes: p for p in r.points}
    for lv in r.levels:  # read at half the level's size
        assert lv.gb_per_s == by_size[lv.size_bytes // 2].copy_gb_per_s
    # 2 MiB is 8x the fake L2: the points from 4x (1 MiB) up are the plateau.
    plateau = sorted(p.copy_gb_per_s for p in r.points if p.size_bytes >= MIB)
    assert r.dram_gb_per_s == pytest.approx(sum(plateau) / 2)
    assert r.anchor_gb_per_s > 0 and r.anchor_bytes == MIB
    assert r.anchor_ratio == pytest.approx(r.dram_gb_per_s / r.anchor_gb_per_s)
    assert BandwidthResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_no_plateau_below_four_times_the_last_level() -> None:
    pts = [BandwidthPoint(2**k, 10.0, 5.0) for k in range(12, 24)]
    assert locality.dram_plateau(pts, (CacheLevel("L3", 32 * MIB),)) is None
    assert locality.dram_plateau(pts, (CacheLevel("L2", 2 * MIB),)) == 10.0
    assert locality.dram_plateau(pts, None) is None  # fallback floor is 256 MiB


def test_the_plateau_counts_only_copies_past_glibcs_non_temporal_threshold() -> None:
    # Two regimes, as measured here: 22 GB/s below the threshold (the read for ownership),
    # 33 GB/s from copies of the threshold up (working set = twice the copy).
    nt = 192 * MIB
    sizes = [m * MIB for m in (1, 64, 128, 160, 192, 256, 320, 512, 1024)]
    pts = [BandwidthPoint(s, 22.0 if s < 2 * nt else 33.0, 10.0) for s in sizes]
    levels = (CacheLevel("L3", 32 * MIB),)
    assert locality.dram_plateau(pts, levels) == 22.0  # 128 MiB..1 GiB: median of 7, 5 low
    assert locality.dram_plateau(pts, levels, nt) == 33.0
    # no copy that large: the plateau falls back to every DRAM point rather than to none
    assert locality.dram_plateau(pts[:-2], levels, nt) == 22.0


def test_glibc_threshold_is_read_where_the_loader_answers() -> None:
    import glob

    nt = locality.glibc_non_temporal_threshold()
    if not glob.glob("/lib64/ld-linux-x86-64.so.*"):
        assert nt is None
    else:  # glibc >= 2.33 lists its tunables; the threshold is at least its minimum, 0x4040
        assert nt is None or nt >= 0x4040


def test_public_name_runs_in_a_worker() -> None:
    r = memlab.bandwidth(max_bytes="64KiB", anchor_bytes="64KiB", repeats=1)
    assert isinstance(r, BandwidthResult)
    assert [p.size_bytes for p in r.points][0] == 4096
    # Importing the module did not shadow the public function (see memlab/locality.py).
    assert callable(memlab.bandwidth)
    with pytest.raises(ValueError, match="max_bytes"):
        memlab.bandwidth(max_bytes="lots", worker=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memlab", "bandwidth", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_json_keys() -> None:
    out = _cli("--json", "--max-bytes", "64KiB", "--smoke")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert {"levels", "dram_gb_per_s", "anchor_gb_per_s", "points"} <= set(d)
    for lv in d["levels"] or []:
        assert {"name", "size_bytes", "gb_per_s"} <= set(lv)
    assert d["points"][-1]["size_bytes"] == 64 * 1024
    assert d["dram_gb_per_s"] is None  # 64 KiB is no DRAM working set


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-bytes", "lots"], "max_bytes must be a byte size"),
        (["--max-bytes", "1KiB"], "4 KiB"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    out = _cli(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("memlab: error:")


def test_bandwidth_figure_draws_the_result() -> None:
    from memlab.plots import bandwidth_figure

    pts = tuple(BandwidthPoint(2**k, 40.0 - k, 20.0 - k / 2) for k in range(12, 30))
    levels = (CacheLevel("L1d", 32 * 1024, 28.0), CacheLevel("L3", 32 * MIB, 20.0))
    r = BandwidthResult(pts, levels, dram_gb_per_s=12.0, anchor_gb_per_s=13.0, anchor_bytes=MIB)
    fig = bandwidth_figure(r)
    assert [tr.name for tr in fig.data] == ["copy", "triad"]
    assert list(fig.data[0].x) == [2**k for k in range(12, 30)]
    assert list(fig.data[1].y) == [p.triad_gb_per_s for p in pts]
    assert fig.layout.xaxis.type == "log"
    vlines = [s.x0 for s in fig.layout.shapes if s.x0 == s.x1 and s.xref == "x"]
    assert sorted(vlines) == [32 * 1024, 32 * MIB]
    texts = [a.text for a in fig.layout.annotations]
    assert any("DRAM plateau 12.0" in t for t in texts)
    assert any("numpy.copyto" in t for t in texts)
    no_cache = bandwidth_figure(BandwidthResult(pts, None, None, 13.0, MIB))
    assert "unknown" in no_cache.layout.title.text
