"""Activation offload: where a training step keeps the tensors autograd saves for backward.

- ``off``: in memory, as autograd does by default.
- ``cpu``: ``torch.autograd.graph.save_on_cpu``. It moves saved tensors from a GPU to host
  memory (pinned on CUDA, so the copies can be asynchronous). On a CPU run it changes nothing:
  ``pack_to_cpu`` calls ``tensor.cpu()``, which returns the tensor itself when it is already on
  the CPU (torch/autograd/graph.py, ``save_on_cpu.__init__``; its docstring: "If the graph was
  already on CPU, no tensor copy is performed"). memlab passes ``pin_memory=True`` on CUDA only:
  with ``pin_memory=True`` the same ``pack_to_cpu`` allocates a fresh ``torch.empty`` and copies
  *every* saved tensor, even a CPU one (pinning is skipped when CUDA is unavailable, the copy is
  not), which on a CPU run would add a copy of each saved weight and no saving
  (``tests/test_offload.py`` checks that copy on the pack function itself).
- ``disk``: a ``torch.autograd.graph.saved_tensors_hooks`` pair (``OffloadStore``). ``pack``
  writes each saved tensor of at least ``threshold_bytes`` to its own file in the run's
  temporary folder and returns a small handle, so the tensor's memory is freed as soon as the
  forward code drops it; ``unpack`` reads it back in backward. Leaves and views of leaves
  (parameters, buffers, the batch) are already alive outside autograd: writing them would
  free nothing, so they are kept as they are.
- ``disk-compressed``: the same through zstandard (level 1, its fastest standard level), the
  maintained Python binding of the zstd library.

Why files written by hand rather than ``torch.save``/``numpy.memmap``: the bytes read back must
be allocated by PyTorch's allocator, so that the tracker counts them (a memmap or
``np.fromfile`` would be numpy memory that ``torch.from_numpy`` wraps, invisible to the tensor
account, as data=memmap's batches are). So ``pack`` writes the tensor's raw bytes from a zero-copy
numpy view (``ndarray.tofile``-like ``file.write`` of the buffer), and ``unpack`` allocates
``torch.empty`` and ``readinto``s it (the PyTorch tutorial "Hooks for saved tensors" offloads
with ``torch.save``/``torch.load``; this is the same round trip without pickling).

Honest caveats, also in the run's notes: a write goes to the OS page cache first, so the machine's
RAM may still hold the bytes until the kernel writes them back and evicts them under pressure
(they are no longer this process's RSS, nor its tensor bytes); and a checkpointed block's
saved tensors are handled by checkpoint's own (inner) hooks, so what it keeps (its inputs,
which checkpoint holds directly) is not offloaded.

Figures (``workload.measures``, so the run's metrics), per step (mean over every step run):
``offload_bytes_written``, ``offload_bytes_read``, ``offload_raw_bytes`` (before compression),
``offload_compression_ratio`` (raw / written), ``offload_files``, ``offload_pack_s``,
``offload_unpack_s`` and ``offload_tensors_kept`` (saved tensors left in memory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from memlab.config import OFFLOADS
from memlab.knobs.errors import KnobUnsupported
from memlab.workloads.base import Workload

__all__ = ["apply_offload", "OffloadStore", "use_folder", "DEFAULT_THRESHOLD_BYTES"]

#: Saved tensors smaller than this stay in memory: a file per tiny tensor (biases' inputs,
#: normalisation statistics) costs a system call or two and saves next to nothing.
DEFAULT_THRESHOLD_BYTES = 64 * 1024
#: zstd level: 1 is the fastest standard level (zstd's manual); activations compress little
#: (floats), so a slower level buys few bytes for much time.
ZSTD_LEVEL = 1
_CHUNK = 1 << 20  # readinto in 1 MiB pieces: a stream reader may return fewer bytes per call


@dataclass(eq=False)
class _Handle:
    """What autograd keeps instead of the tensor: where its bytes are, and how to rebuild it.
    ``path`` is ``None`` for a dry handle (fake tensors, the estimator: nothing to write)."""

    path: str | None
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    nbytes: int


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return bool(is_fake(t)) or t.device.type == "meta"


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one run of memory without gaps or overlaps, in some order
    of its dimensions (a transpose of a contiguous tensor is): then its bytes can be written as
    they lie, and read back into a tensor with the same strides. Keeping the layout matters:
    backward kernels given a transposed operand instead of a contiguous copy can sum in another
    order (bf16 gradients then differ in the last bit)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _kept_in_memory(t: torch.Tensor, threshold: int) -> bool:
    """Leaves (parameters, buffers, the batch, tensors made without grad) and views of them are
    alive outside autograd anyway: writing them frees nothing. Small tensors are not worth a
    file. ``Tensor._base`` is the tensor a view was taken of (``weight.t()``'s base is the
    weight, which ``F.linear`` saves for backward)."""
    if t.numel() * t.element_size() < threshold:
        return True
    if t.is_leaf:
        return True
    base = t._base
    return base is not None and base.is_leaf


class OffloadStore:
    """The ``disk`` / ``disk-compressed`` hooks and their counters.

    Calling the store returns the ``saved_tensors_hooks`` context that ``Workload.step`` wraps
    forward and loss in (``workload.saved_tensors``). Files go in a folder made on the first
    write under ``root`` (the run's temporary folder; the system's otherwise) and are deleted as
    soon as autograd drops their handle (after backward); ``close()`` removes the folder, and so
    does garbage collection of the store or the interpreter's exit."""

    def __init__(
        self,
        compress: bool = False,
        *,
        root: str | None = None,
        threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
    ) -> None:
        if compress:
            try:
                import zstandard
            except ImportError as e:
                raise ImportError(
                    "offload_activations 'disk-compressed' needs the zstandard package: "
                    "pip install 'memlab[offload]'"
                ) from e
            self._cctx: Any = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            self._dctx: Any = zstandard.ZstdDecompressor()
        self.compress = compress
        self.root = root
        self.threshold_bytes = threshold_bytes
        self.folder: str | None = None
        self._finalizer: Any = None
        self._n = 0
        self.steps = 0
        self.raw_bytes = 0
        self.bytes_written = 0
        self.bytes_read = 0
        self.files = 0
        self.kept = 0
        self.pack_s = 0.0
        self.unpack_s = 0.0
        self.measures: dict[str, float] | None = None

    # -- the context -------------------------------------------------------------------------
    def __call__(self) -> AbstractContextManager[Any]:
        return self._context()

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        self.steps += 1
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                yield
        finally:
            self.publish()

    # -- the hooks ---------------------------------------------------------------------------
    def pack(self, t: torch.Tensor) -> torch.Tensor | _Handle:
        if _kept_in_memory(t, self.threshold_bytes):
            self.kept += 1
            return t
        t0 = time.perf_counter()
        # One run of bytes to write: the tensor's memory as it lies when it is dense (its
        # layout is kept), else a contiguous copy.
        src = t.detach() if _dense(t) else t.detach().contiguous()
        nbytes = src.numel() * src.element_size()
        handle = _Handle(None, tuple(src.shape), src.stride(), src.dtype, src.device, nbytes)
        if _is_fake(t):  # the estimator: the same allocations, nothing written
            return handle
        flat = src.as_strided((src.numel(),), (1,))  # its memory, in memory order
        if flat.device.type != "cpu":
            flat = flat.cpu()
        # Bytes, whatever the dtype (numpy has no bfloat16): a zero-copy uint8 view.
        buf = flat.view(torch.uint8).numpy()
        path = os.path.join(self._folder(), f"{self._n:07d}.bin")
        self._n += 1
        with open(path, "wb") as f:
            if self.compress:
                with self._cctx.stream_writer(f, size=nbytes, closefd=False) as z:
                    z.write(buf.data)
            else:
                f.write(buf.data)
            written = f.tell()
        handle.path = path
        # The file lives as long as autograd holds the handle (until backward frees the graph).
        weakref.finalize(handle, _unlink, path)
        self.files += 1
        self.raw_bytes += nbytes
        self.bytes_written += written
        self.pack_s += time.perf_counter() - t0
        return handle

    def unpack(self, packed: torch.Tensor | _Handle) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        t0 = time.perf_counter()
        # Allocated by torch's allocator, so the tensor account sees the bytes come back, with
        # the saved tensor's strides.
        t = torch.empty_strided(packed.shape, packed.stride, dtype=packed.dtype)
        if packed.path is not None:
            flat = t.as_strided((t.numel(),), (1,)).view(torch.uint8)
            view = flat.numpy().data  # a writable memoryview of the tensor's bytes
            with open(packed.path, "rb") as f:
                reader = self._dctx.stream_reader(f) if self.compress else f
                got = 0
                while got < packed.nbytes:
                    n = reader.readinto(view[got : got + _CHUNK])
                    if not n:
                        raise RuntimeError(
                            f"offloaded activation {packed.path} is truncated: read {got} of "
                            f"{packed.nbytes} bytes"
                        )
                    got += n
                self.bytes_read += os.fstat(f.fileno()).st_size
        if packed.device.type != "cpu":
            t = t.to(packed.device)
        if packed.path is not None:
            self.unpack_s += time.perf_counter() - t0
            self.publish()
        return t

    # -- files ---------------------------------------------------------------------------------
    def _folder(self) -> str:
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="memlab-offload-", dir=self.root)
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)
        return self.folder

    def close(self) -> None:
        """Remove the folder and every file in it (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        self.folder = None
        self._finalizer = None

    # -- figures -------------------------------------------------------------------------------
    def figures(self) -> dict[str, float]:
        """Per step (mean over the steps run so far); ``offload_compression_ratio``: raw bytes
        over bytes written (1.0 uncompressed)."""
        n = max(self.steps, 1)
        return {
            "offload_bytes_written": self.bytes_written / n,
            "offload_bytes_read": self.bytes_read / n,
            "offload_raw_bytes": self.raw_bytes / n,
            "offload_compression_ratio": (
                self.raw_bytes / self.bytes_written if self.bytes_written else 1.0
            ),
            "offload_files": self.files / n,
            "offload_tensors_kept": self.kept / n,
            "offload_pack_s": self.pack_s / n,
            "offload_unpack_s": self.unpack_s / n,
        }

    def publish(self) -> None:
        if self.measures is not None:
            self.measures.update(self.figures())


def _save_on_cpu(pin: bool) -> Any:
    def make() -> AbstractContextManager[Any]:
        return torch.autograd.graph.save_on_cpu(pin_memory=pin)

    make._memlab_offload = True  # type: ignore[attr-defined]
    return make


def apply_offload(
    workload: Workload,
    mode: str,
    *,
    folder: str | None = None,
    threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
) -> Workload:
    """Keep ``workload``'s saved activations as ``mode`` says (see the module docstring):
    sets ``workload.saved_tensors``, the context ``Workload.step`` wraps forward and loss in.
    ``folder``: where the offload folder is made (default: the system's temporary folder; a
    run uses its own, which the runner removes whatever the run's end). Returns ``workload``."""
    if mode not in OFFLOADS:
        raise ValueError(f"offload_activations must be one of {list(OFFLOADS)}, got {mode!r}")
    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int):
        raise ValueError(f"threshold_bytes must be an int >= 0, got {threshold_bytes!r}")
    if threshold_bytes < 0:
        raise ValueError(f"threshold_bytes must be an int >= 0, got {threshold_bytes}")
    old = workload.saved_tensors
    ours = isinstance(old, OffloadStore) or getattr(old, "_memlab_offload", False)
    if isinstance(old, OffloadStore):
        old.close()
    if mode == "off":
        # Nothing to do, unless an earlier call set hooks: undo them (a user workload's own
        # context is left alone).
        if ours:
            workload.saved_tensors = contextlib.nullcontext
            workload.applied["offload_activations"] = mode
        return workload
    if workload.mode != "train" or workload.optimizer is None:
        raise KnobUnsupported(
            f"offload_activations {mode!r} works for training only (mode 'train'): an "
            "inference step saves no activations for backward"
        )
    on_cuda = torch.device(workload.device).type == "cuda"
    if mode == "cpu":
        workload.saved_tensors = _save_on_cpu(on_cuda)
        workload.notes.append(
            "offload cpu: saved activations go to pinned CPU memory (save_on_cpu)"
            if on_cuda
            else "offload cpu on a CPU run changes nothing: save_on_cpu keeps a tensor already "
            "on the CPU where it is (torch/autograd/graph.py, save_on_cpu: tensor.cpu() "
            "returns the tensor itself); compare its activations with 'off'"
        )
    else:
        store = OffloadStore(
            mode == "disk-compressed", root=folder, threshold_bytes=threshold_bytes
        )
        store.measures = workload.measures
        store.publish()
        workload.saved_tensors = store
        how = f"zstd level {ZSTD_LEVEL}" if store.compress else "raw bytes"
        workload.notes.append(
            f"offload {mode}: saved tensors of at least {threshold_bytes} bytes are written to "
            f"a temporary folder ({how}) in forward and read back in backward; leaves "
            "(parameters, the batch) stay in memory. Written bytes pass through the OS page "
            "cache, which is neither this process's RSS nor its tensor bytes"
        )
    workload.applied["offload_activations"] = mode
    return workload


def use_folder(workload: Workload, folder: str) -> None:
    """Make ``workload``'s offload files (if any) in ``folder`` from now on: the runner passes
    the run's temporary folder, which its parent process removes whatever the run's end (also a
    killed worker, which runs no cleanup of its own)."""
    store = workload.saved_tensors
    if isinstance(store, OffloadStore):
        store.close()
        store.root = folder
