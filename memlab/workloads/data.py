"""Data for the workloads: the real digits set (accuracy) and synthetic sets of any size (memory).

Two ways to hold the synthetic set, the ``data`` knob:

- ``ram``: the whole set is one tensor in anonymous memory, allocated when the workload is built;
- ``memmap``: a ``.npy`` file opened with ``numpy.load(mmap_mode="r")``. Only the pages a batch
  touches are read, and they count as *file-backed* RSS that the OS may drop again under memory
  pressure (proc(5), RssFile), so anonymous memory stays at about one batch.

Both are read through a ``torch.utils.data.DataLoader`` whose sampler yields whole batches of
indices (``batch_size=None``): one fancy-indexing read per batch instead of ``batch_size``
``__getitem__`` calls and a collate, so the loader itself does not dominate the step on a 2-core
laptop, and a memmap read touches the batch's rows in one sorted pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

__all__ = [
    "MemmapFiles",
    "prepare_memmap",
    "default_data_dir",
    "memmap_path",
    "synthetic_tensors",
    "RamBatches",
    "MemmapBatches",
    "make_loader",
    "iterate",
    "digits",
    "digits_as",
    "DIGITS_CLASSES",
]

DIGITS_CLASSES = 10
# Chunk size when writing a memmap file: big enough to be fast, small enough that generating a
# multi-GB file never holds more than this much anonymous memory at once.
_CHUNK_BYTES = 32 * 2**20


# -- memmap files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MemmapFiles:
    """A synthetic data set on disk: inputs ``x`` (``n`` x ``shape``) and int64 labels ``y``."""

    x_path: Path
    y_path: Path
    n: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def x_bytes(self) -> int:
        return int(self.n * int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize)


def default_data_dir() -> Path:
    """Where generated files go: ``$MEMLAB_DATA_DIR``, else the checkout's ``data/generated``.

    The checkout's folder is used when memlab runs from a source tree (an editable install, the
    usual case in a course); an installed package falls back to the user's cache folder.
    """
    env = os.environ.get("MEMLAB_DATA_DIR")
    if env:
        return Path(env)
    repo_data = Path(__file__).resolve().parents[2] / "data"
    if repo_data.is_dir() and os.access(repo_data, os.W_OK):
        return repo_data / "generated"
    return Path.home() / ".cache" / "memlab" / "data"


def memmap_path(
    name: str,
    n: int,
    shape: Sequence[int],
    dtype: str = "float32",
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The conventional file name of a synthetic set (one file per size, shape, dtype, seed)."""
    dims = "x".join(str(int(d)) for d in shape)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return root / f"{name}-n{n}-{dims}-{dtype}-s{seed}.npy"


def _labels_path(x_path: Path) -> Path:
    return x_path.with_name(x_path.stem + ".labels.npy")


def _matches(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    ok = tuple(arr.shape) == shape and arr.dtype == dtype
    del arr
    return ok


def prepare_memmap(
    path: str | os.PathLike[str],
    n: int,
    shape: Sequence[int],
    dtype: str = "float32",
    seed: int = 0,
    *,
    num_classes: int = DIGITS_CLASSES,
    overwrite: bool = False,
) -> MemmapFiles:
    """Write a synthetic data set of ``n`` samples of ``shape`` to ``path`` (a ``.npy`` file).

    Inputs are standard-normal values, labels uniform in ``[0, num_classes)``, both from
    ``seed``; labels go next to it as ``<stem>.labels.npy``. An existing file with the same
    shape and dtype is reused unless ``overwrite``. Written in chunks through a memmap, so the
    writer's anonymous memory stays at one chunk whatever ``n`` is, and renamed into place at
    the end, so a reader never sees a half-written file.
    """
    if int(n) <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    shape = tuple(int(d) for d in shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    x_path = Path(path)
    y_path = _labels_path(x_path)
    full = (int(n), *shape)
    files = MemmapFiles(x_path, y_path, int(n), shape, dt.name)
    if (
        not overwrite
        and _matches(x_path, full, dt)
        and _matches(y_path, (int(n),), np.dtype("int64"))
    ):
        return files
    x_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row = int(np.prod(shape)) * dt.itemsize
    chunk = max(1, _CHUNK_BYTES // row)
    # Temporary names unique to this process (not mkstemp: its files are mode 0600).
    tag = f".{os.getpid()}.{threading.get_ident()}.tmp"
    tmp_x, tmp_y = str(x_path) + tag, str(y_path) + tag
    try:
        xs = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=dt, shape=full)
        for start in range(0, int(n), chunk):
            stop = min(int(n), start + chunk)
            xs[start:stop] = rng.standard_normal((stop - start, *shape), dtype=np.float32)
        xs.flush()
        del xs
        ys = np.lib.format.open_memmap(tmp_y, mode="w+", dtype=np.int64, shape=(int(n),))
        ys[:] = rng.integers(0, num_classes, size=int(n), dtype=np.int64)
        ys.flush()
        del ys
        os.replace(tmp_y, y_path)
        os.replace(tmp_x, x_path)
    finally:
        for tmp in (tmp_x, tmp_y):
            if os.path.exists(tmp):
                os.unlink(tmp)
    return files


# -- synthetic data in RAM --------------------------------------------------------------------
def synthetic_tensors(
    n: int, shape: Sequence[int], seed: int = 0, num_classes: int = DIGITS_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` standard-normal samples of ``shape`` and uniform labels, as CPU tensors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y


# -- batch datasets: __getitem__ takes a whole batch of indices ---------------------------------
class RamBatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The whole set as tensors in RAM; one batch is one fancy-indexing copy."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        i = torch.as_tensor(sorted(idx), dtype=torch.long)
        return self.x[i], self.y[i]


class MemmapBatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A ``prepare_memmap`` set, opened lazily in each process that reads it.

    Lazily, because a DataLoader worker gets a pickled copy of the dataset: it reopens the file
    instead of receiving the mapping, and the pages it touches are its own file-backed RSS.
    """

    def __init__(self, files: MemmapFiles) -> None:
        self.files = files
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._x is None or self._y is None:
            self._x = np.load(self.files.x_path, mmap_mode="r")
            self._y = np.load(self.files.y_path, mmap_mode="r")
        return self._x, self._y

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "_x": None, "_y": None}

    def __len__(self) -> int:
        return self.files.n

    def __getitem__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x, y = self._open()
        # Sorted indices read the file front to back; the copy is the only anonymous memory.
        i = np.sort(np.asarray(idx, dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(x[i])), torch.from_numpy(np.asarray(y[i]))


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader[Any]:
    """A shuffling loader of full batches (the last partial batch is dropped: every step sees
    exactly ``batch_size`` samples, so samples per second is honest)."""
    n = len(dataset)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(RandomSampler(range(n), generator=g), batch_size, drop_last=True)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        # torch rejects prefetch_factor without workers; persistent workers survive epochs.
        kw = {"prefetch_factor": prefetch_factor, "persistent_workers": True}
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **kw,
    )


def iterate(loader: DataLoader[Any], num_batches: int | None) -> Iterator[Any]:
    """One pass over ``loader`` (``None``), or exactly ``num_batches``, epoch after epoch."""
    produced = 0
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            produced += 1
            if num_batches is not None and produced >= num_batches:
                return
        if num_batches is None or empty:
            return


# -- the real data set -------------------------------------------------------------------------
def digits(seed: int = 0, test_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), standardised
    and split: ``x_train, y_train, x_test, y_test`` with ``x`` of shape (n, 64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("accuracy needs scikit-learn: pip install scikit-learn") from e
    ds = load_digits()
    x = torch.as_tensor(ds.data, dtype=torch.float32)
    y = torch.as_tensor(ds.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = int(round(len(x) * test_fraction))
    x_train, x_test = x[n_test:], x[:n_test]
    # Pixel values are 0..16; standardise with the training split's statistics only.
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[n_test:], (x_test - mean) / std, y[:n_test]


def digits_as(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Reshape (n, 64) digits into a workload's input layout.

    ``flat``: (n, 64). ``image16``: (n, 1, 16, 16), upsampled 2x (bilinear) so conv blocks have
    room. ``patches16``: (n, 64, 4), the 16x16 image cut into 64 tokens of 2x2 pixels.
    """
    if layout == "flat":
        return x.reshape(len(x), 64)
    img = torch.nn.functional.interpolate(
        x.reshape(len(x), 1, 8, 8), size=(16, 16), mode="bilinear", align_corners=False
    )
    if layout == "image16":
        return img.contiguous()
    if layout == "patches16":
        # (n, 1, 16, 16) -> (n, 8, 2, 8, 2) -> (n, 8, 8, 2, 2) -> (n, 64, 4)
        p = img.reshape(len(x), 8, 2, 8, 2).permute(0, 1, 3, 2, 4)
        return p.reshape(len(x), 64, 4).contiguous()
    raise ValueError(f"layout must be 'flat', 'image16' or 'patches16', got {layout!r}")
