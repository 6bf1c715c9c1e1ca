"""Weight streaming: an inference model whose weights need not fit the budget.

    apply_weights(workload, "streamed")   # weights saved once, then loaded layer by layer

``resident`` changes nothing. ``streamed`` saves the weights of every Linear and Conv layer
once to a safetensors file (``safetensors.torch.save_file``) in a temporary folder, drops them
from the model, and around each such layer's forward

1. a forward pre-hook takes the layer's weights: from the prefetch already made on the
   background thread (a *hit*), or, when it is not ready or there is none, it waits for it or
   loads them now (a *wait*, and the time spent blocked is counted);
2. it starts prefetching the NEXT layer's weights on a single background thread (a bounded
   prefetch of 1: at most one layer ahead is ever held);
3. a forward hook drops the layer's weights once its forward has run.

So the tensor memory of a request is about the largest layer (plus the one prefetched) plus the
activations, not the whole model. Nothing crosses from one request to the next: the first layer
of every request is loaded when it is needed (a prefetch held between requests would be a tensor
the next measured block did not count at entry).

Mapped, then copied (the lesson). ``safe_open(path, framework="pt")`` maps the file: the
installed safetensors (0.8) opens it as ``torch.UntypedStorage.from_file(path, shared=False,
nbytes=...)`` (a private, read-only ``mmap`` through torch's ``MapAllocator``) and
``get_tensor`` returns ``torch.asarray(storage[start:stop]).view(dtype).reshape(shape)``, a
view of that mapping (safetensors ``bindings/python/src/lib.rs``: ``Open::new`` and
``Open::get_tensor``, the ``Storage::Torch`` arm). It does not copy: the view costs 0 bytes of
the CPU allocator, and the pages it touches show as *file-backed* RSS (``rss_file``). Each layer
is then copied out of the mapping into a tensor of its own, which the allocator gives (and the
tensor account and its budget see) and which is *anonymous* RSS. The copy is the honest step:
the budget stands for the memory a device computes from, and on an accelerator weights must be
copied into it; computing straight from the mapped view on a CPU would make the weights vanish
from the tensor account while the same bytes sat in RAM as page cache. What the mapping keeps
is file-backed and clean: the OS may drop those pages under pressure and read them again from
the file, which it can never do for anonymous memory.

The file is unlinked as soon as it is mapped (POSIX): the mapping keeps its bytes readable, and
nothing is left on disk when the run ends, whatever its status, even if the worker is killed.
Where a mapped file cannot be unlinked (Windows), a finalizer removes the folder when the
workload goes, and ``close_weights(workload)`` does it at once.

``workload.measures`` reports, per request (mean over every request the workload ran, warm-up
included): ``stream_bytes_read_per_request`` (bytes copied out of the file),
``stream_layers_per_request``, ``stream_hits_per_request`` and ``stream_waits_per_request``,
and ``stream_wait_s_per_request``; the totals as ``stream_requests``, ``stream_prefetch_hits``,
``stream_prefetch_waits``, ``stream_wait_s``; and, as built, ``streamed_weight_bytes``,
``stream_file_bytes``, ``stream_largest_layer_bytes`` and ``stream_layers``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from memlab.config import WEIGHTS
from memlab.knobs.errors import KnobUnsupported
from memlab.workloads.base import Workload

__all__ = ["apply_weights", "close_weights", "WeightStreamer", "STREAMED_LAYERS"]

#: The layers whose weights are streamed (what holds a model's weight bytes); norms, batch
#: norms and learned positions are small and stay resident.
STREAMED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PRECISIONS = ("fp32", "bf16")
_ATTR = "_memlab_weight_streamer"


def apply_weights(workload: Workload, mode: str, *, prefetch: bool = True) -> Workload:
    """``resident`` (nothing changes) or ``streamed`` (see the module docstring); returns the
    workload. Inference only, after every other knob (it streams the layers they left).
    ``prefetch=False`` loads each layer when it is needed (the benchmark's comparison)."""
    if mode not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {mode!r}")
    workload.applied["weights"] = mode
    if mode == "resident":
        return workload
    _check_composes(workload)
    streamer = WeightStreamer(workload.model, workload.device, prefetch=prefetch)
    streamer.bind(workload)
    return workload


def close_weights(workload: Workload) -> None:
    """Stop streaming now: the prefetch thread ends, the mapping is released and the temporary
    folder removed (already gone on POSIX). Safe to call on any workload, and more than once."""
    streamer = getattr(workload.model, _ATTR, None)
    if isinstance(streamer, WeightStreamer):
        streamer.close()


def _check_composes(workload: Workload) -> None:
    """Streaming handles plain dense weights held by nn.Linear / nn.Conv layers; say clearly
    which other knob setting keeps weights where a pre-hook cannot swap them."""
    a = workload.applied
    if workload.mode != "inference":
        raise KnobUnsupported(
            f"weights 'streamed' works for mode 'inference' only, got mode {workload.mode!r}: "
            "training updates every weight each step, so they must stay resident"
        )
    precision = a.get("precision", "fp32")
    if precision not in _PRECISIONS:
        raise KnobUnsupported(
            f"weights 'streamed' supports precision {' or '.join(_PRECISIONS)}, got precision "
            f"{precision!r}: quantized precisions keep packed weights outside nn.Linear, and "
            "autocast would recast every streamed layer on every request; use 'bf16'"
        )
    if float(a.get("sparsity", 0.0)) > 0:
        raise KnobUnsupported(
            "weights 'streamed' cannot be combined with sparsity > 0: pruned layers hold a "
            "weight_orig and a mask (or CSR parts), not one dense weight to stream; use "
            "sparsity 0"
        )
    if a.get("compression", "none") != "none":
        raise KnobUnsupported(
            f"weights 'streamed' cannot be combined with compression {a['compression']!r}: its "
            "layers hold factors or codebook indices, not the dense weights streamed here; use "
            "compression 'none'"
        )
    if a.get("allocation", "dynamic") != "dynamic":
        raise KnobUnsupported(
            f"weights 'streamed' cannot be combined with allocation {a['allocation']!r}: the "
            "planned forward traces the weights into its graph once; use allocation 'dynamic'"
        )
    if a.get("fuse", "none") == "compile":
        raise KnobUnsupported(
            "weights 'streamed' cannot be combined with fuse 'compile': the compiled graph "
            "reads the weights it was compiled with, not the ones loaded per layer; use fuse "
            "'none' or 'fold'"
        )


def _cleanup(folder: str, pool: ThreadPoolExecutor) -> None:
    """The finalizer: it holds no reference to the streamer (weakref.finalize's rule)."""
    pool.shutdown(wait=True, cancel_futures=True)
    shutil.rmtree(folder, ignore_errors=True)


class WeightStreamer:
    """Streams ``model``'s Linear/Conv weights from a safetensors file (module docstring).

    ``load(i)`` is the one place a layer's weights are read (a test may slow it down to see
    the prefetch overlap the forward). The counters are plain attributes, updated on the thread
    that runs the model; the prefetch thread only runs ``load``."""

    def __init__(self, model: nn.Module, device: str = "cpu", *, prefetch: bool = True) -> None:
        try:
            from safetensors import safe_open
            from safetensors.torch import save_file
        except ImportError as e:  # pragma: no cover - the offload extra installs it
            raise ImportError(
                "weights 'streamed' needs safetensors: pip install 'memlab[offload]'"
            ) from e
        self.device = device
        self.prefetch = prefetch
        # The layers in the order they were registered: the built-in models register them in
        # the order forward calls them. The order actually seen replaces this guess after the
        # first request (``_next``).
        self.layers: list[tuple[str, nn.Module]] = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, STREAMED_LAYERS) and _dense(m)
        ]
        if not self.layers:
            raise KnobUnsupported(
                "weights 'streamed': this model has no nn.Linear or nn.Conv layer with dense "
                "weights to stream"
            )
        self.params: list[dict[str, str]] = []  # per layer: attribute -> key in the file
        tensors: dict[str, torch.Tensor] = {}
        for name, m in self.layers:
            keys = {}
            for attr, p in m._parameters.items():
                if p is not None:
                    key = f"{name}.{attr}"
                    keys[attr] = key
                    tensors[key] = p.detach().to("cpu").contiguous()
            self.params.append(keys)
        self.layer_bytes = [sum(tensors[k].nbytes for k in keys.values()) for keys in self.params]
        self.folder = tempfile.mkdtemp(prefix="memlab-weights-")
        self.path = os.path.join(self.folder, "weights.safetensors")
        try:
            save_file(tensors, self.path)
        except (RuntimeError, ValueError) as e:  # tied weights: safetensors refuses shared storage
            shutil.rmtree(self.folder, ignore_errors=True)
            raise KnobUnsupported(
                f"weights 'streamed' could not save this model's weights: {e}"
            ) from e
        self.file_bytes = os.path.getsize(self.path)
        del tensors
        self._file: Any = safe_open(self.path, framework="pt")  # maps the whole file, no copy
        try:
            # The mapping keeps the bytes; the name can go now (nothing left behind on any exit).
            os.unlink(self.path)
            os.rmdir(self.folder)
        except OSError:  # a mapped file cannot be unlinked on Windows: the finalizer does it
            pass
        # Drop the weights from the model: a small empty tensor stands in (a forward without
        # the pre-hook fails loudly rather than computing with a wrong weight).
        for (_, m), keys in zip(self.layers, self.params, strict=True):
            for attr in keys:
                p = m._parameters.pop(attr)
                assert p is not None
                setattr(m, attr, _placeholder(p))
        self._index = {id(m): i for i, (_, m) in enumerate(self.layers)}
        n = len(self.layers)
        self._next: dict[int, int | None] = {i: (i + 1 if i + 1 < n else None) for i in range(n)}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memlab-prefetch")
        self._pending: tuple[int, Future[dict[str, torch.Tensor]]] | None = None
        self._prev: int | None = None
        self.measures: dict[str, float] = {}  # ``bind`` makes it the workload's
        self.requests = 0
        self.layers_loaded = 0
        self.bytes_read = 0
        self.hits = 0
        self.waits = 0
        self.wait_s = 0.0
        self._finalizer = weakref.finalize(self, _cleanup, self.folder, self._pool)
        self._handles = [model.register_forward_pre_hook(self._begin_request)]
        self._handles.append(model.register_forward_hook(self._end_request))
        for _, m in self.layers:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))
        setattr(model, _ATTR, self)

    # -- reading one layer --------------------------------------------------------------------
    def load(self, i: int) -> dict[str, torch.Tensor]:
        """Layer ``i``'s weights, copied out of the mapping into tensors of their own (the
        allocator's, on ``device``): see the module docstring for why the copy."""
        out = {}
        for attr, key in self.params[i].items():
            view = self._file.get_tensor(key)  # a view of the mapped file: 0 bytes allocated
            out[attr] = view.to(self.device, copy=True)
        return out

    # -- the hooks ------------------------------------------------------------------------
    def _begin_request(self, module: nn.Module, args: Any) -> None:
        # A request that failed half-way (out of budget in a layer) may have left a prefetch
        # and a layer's weights behind: drop both, so nothing crosses into this request.
        self._drop_pending()
        for (_, m), keys in zip(self.layers, self.params, strict=True):
            for attr in keys:
                t = getattr(m, attr)
                if t.numel():
                    setattr(m, attr, _placeholder(t))
        self._prev = None

    def _end_request(self, module: nn.Module, args: Any, output: Any) -> None:
        self._drop_pending()  # a prefetch of a layer this request did not call after all
        self._prev = None
        self.requests += 1
        self._publish()

    def _pre(self, module: nn.Module, args: Any) -> None:
        i = self._index[id(module)]
        if self._prev is not None:
            self._next[self._prev] = i  # learn the order forward really calls the layers in
        self._prev = i
        t0 = time.perf_counter()
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == i and pending[1].done():
            self.hits += 1
            weights = pending[1].result()
        else:
            if pending is not None and pending[0] == i:
                weights = pending[1].result()  # started, not finished: wait for it
            else:
                if pending is not None:
                    _discard(pending[1])  # prefetched the wrong layer
                weights = self.load(i)
            self.waits += 1
            self.wait_s += time.perf_counter() - t0
        for attr, t in weights.items():
            setattr(module, attr, t)
        self.layers_loaded += 1
        self.bytes_read += self.layer_bytes[i]
        nxt = self._next[i]
        if self.prefetch and nxt is not None and nxt != i:
            self._pending = (nxt, self._pool.submit(self.load, nxt))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        i = self._index[id(module)]
        for attr in self.params[i]:
            t = getattr(module, attr)
            setattr(module, attr, _placeholder(t))  # the loaded weights are freed here

    def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            _discard(pending[1])

    def _publish(self) -> None:
        """The counters as figures: totals, and per request (means over every request)."""
        n = max(1, self.requests)
        self.measures.update(
            {
                "stream_requests": float(self.requests),
                "stream_prefetch_hits": float(self.hits),
                "stream_prefetch_waits": float(self.waits),
                "stream_wait_s": self.wait_s,
                "stream_bytes_read_per_request": self.bytes_read / n,
                "stream_layers_per_request": self.layers_loaded / n,
                "stream_hits_per_request": self.hits / n,
                "stream_waits_per_request": self.waits / n,
                "stream_wait_s_per_request": self.wait_s / n,
            }
        )

    # -- the workload -------------------------------------------------------------------------
    def bind(self, workload: Workload) -> None:
        """Report into ``workload.measures`` and explain in ``workload.notes``."""
        self.measures = workload.measures
        largest = max(self.layer_bytes)
        self.measures.update(
            {
                "streamed_weight_bytes": float(sum(self.layer_bytes)),
                "stream_file_bytes": float(self.file_bytes),
                "stream_largest_layer_bytes": float(largest),
                "stream_layers": float(len(self.layers)),
                "stream_prefetch": float(self.prefetch),
            }
        )
        self._publish()
        mib = 1 << 20
        workload.notes.append(
            f"weights streamed: {len(self.layers)} Linear/Conv layers "
            f"({sum(self.layer_bytes) / mib:.1f} MiB) saved to a safetensors file and mapped; "
            f"each layer copied out before its forward and freed after it (largest "
            f"{largest / mib:.2f} MiB), "
            + ("the next one prefetched on a thread" if self.prefetch else "no prefetch")
            + "; the mapped pages are file-backed RSS, the copies anonymous. The file "
            f"({self.path}) is removed once mapped"
        )

    def close(self) -> None:
        """End the prefetch thread, release the mapping, remove the folder (once)."""
        self._drop_pending()
        self._file = None
        self._finalizer()


def _dense(m: nn.Module) -> bool:
    w = m._parameters.get("weight")
    return isinstance(w, torch.Tensor) and w.layout == torch.strided and w.is_floating_point()


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=t.dtype, device=t.device)


def _discard(f: Future[dict[str, torch.Tensor]]) -> None:
    """Drop a prefetch: cancel it if it has not started, else let it end and free its result
    (an error in it belongs to a layer that was not needed)."""
    if not f.cancel():
        f.exception()
