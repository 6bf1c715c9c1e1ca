"""memlab.zero_copy: what each path allocates, checked against the tensor's own size.

Independent truths: the tensor's bytes (``size_bytes``) for a copy, zero for a view of existing
memory; sharing is checked by address in the worker; file-backed RSS on Linux."""

from __future__ import annotations

import sys

import pytest

from memlab.zerocopy import PATHS, ZeroCopyResult, zero_copy, zero_copy_job

SIZE = 16 * 2**20  # the worker fixes glibc's mmap threshold, so a copy this size is a fresh mmap
LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def result() -> ZeroCopyResult:
    return zero_copy(SIZE)


def test_every_path_measured_and_round_trips(result: ZeroCopyResult) -> None:
    assert [r.path for r in result.rows] == list(PATHS)
    again = ZeroCopyResult.from_dict(result.to_dict())
    assert again == result
    assert all(r.nbytes == SIZE for r in result.rows)


@pytest.mark.parametrize("path", ["from_numpy", "numpy", "frombuffer", "memmap", "from_file"])
def test_views_allocate_nothing_and_share(result: ZeroCopyResult, path: str) -> None:
    row = result[path]
    assert row.allocator_bytes == 0, row
    assert row.shares_memory is True, row


def test_load_mmap_allocates_only_the_archive_record(result: ZeroCopyResult) -> None:
    # torch.load reads the archive's pickle (data.pkl, a few hundred bytes) through the CPU
    # allocator; the tensor's storage is the file's mapping.
    mm, full = result["load_mmap"], result["load"]
    assert mm.allocator_bytes < 4096, mm
    assert mm.shares_memory is True
    # The plain load allocates exactly the tensor's bytes more: the copy.
    assert full.allocator_bytes - mm.allocator_bytes == SIZE
    assert full.shares_memory is False


def test_torch_tensor_copies_exactly(result: ZeroCopyResult) -> None:
    row = result["tensor"]
    assert row.allocator_bytes == SIZE
    assert row.shares_memory is False


@pytest.mark.skipif(not LINUX, reason="RSS parts are Linux only")
def test_rss_parts(result: ZeroCopyResult) -> None:
    tol = 2 * 2**20  # the allocator's and the sampler's noise; the figures are 16 MiB apart
    for path in ("memmap", "load_mmap", "from_file", "from_file_private"):
        row = result[path]
        assert row.rss_file_delta_bytes is not None
        assert row.rss_file_delta_bytes >= SIZE - tol, row  # touched pages: file-backed
        assert abs(row.rss_anon_delta_bytes or 0) < tol, row
    for path in ("tensor", "load"):
        row = result[path]
        assert (row.rss_anon_delta_bytes or 0) >= SIZE - tol, row  # the copy: anonymous
        assert abs(row.rss_file_delta_bytes or 0) < tol, row
    for path in ("from_numpy", "numpy", "frombuffer"):
        row = result[path]
        assert abs(row.rss_anon_delta_bytes or 0) < tol and abs(row.rss_file_delta_bytes or 0) < tol


def test_private_mapping_does_not_write_through(result: ZeroCopyResult) -> None:
    assert "does not reach the file" in result["from_file_private"].how_checked
    assert "reaches the file" in result["from_file"].how_checked
    assert "does not" not in result["from_file"].how_checked


@pytest.mark.parametrize("bad", [0, 4095, 4097 * 4 + 1, -8, 1.5, True, "64MiB", 2**40])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="size_bytes must be an int"):
        zero_copy(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size_bytes must be an int"):
        zero_copy_job(bad)  # type: ignore[arg-type]


def test_bad_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        zero_copy(SIZE, timeout_s=0)


def test_kernel_side_imports_no_torch() -> None:
    import subprocess

    code = (
        "import sys; import memlab.zerocopy, memlab.partitioning; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_figure(result: ZeroCopyResult) -> None:
    from memlab.plots_partition import zero_copy_figure

    fig = zero_copy_figure(result)
    alloc = next(t for t in fig.data if t.name == "PyTorch allocator")
    assert alloc.y[0] == "from_numpy (shares)" and alloc.y[-1] == "tensor (copy)"
    assert alloc.x[-1] == pytest.approx(SIZE / 2**20)
    assert alloc.x[0] == 0
