"""Where allocation events come from: the ``EventSource`` protocol and its implementations.

The native recorder (``_alloc.cpp``, wrapping PyTorch's CPU allocator) is the default on CPU;
``memlab.estimate`` plugs in a dispatch-level source over fake tensors.
``default_source()`` is the one process-wide source that ``memlab.track`` and the runner's
worker read (the runner reads its live counter through it, never through the C library).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Protocol

import numpy as np

__all__ = ["EventSource", "NativeSource", "default_source"]


class EventSource(Protocol):
    """Where allocation events come from. The native recorder on CPU; memlab.estimate plugs
    in a dispatch-level source over fake tensors. ``addr`` keys a tensor's storage the way the
    source's events do."""

    def event_count(self) -> int: ...
    def set_tag(self, tag: int) -> None: ...
    def live(self) -> int: ...
    def adopt(self, t: Any, nbytes: int) -> None: ...
    def set_limit(self, limit: int) -> None: ...
    def set_recording(self, on: bool) -> None: ...
    def clear(self) -> None: ...
    def events(self, start: int, end: int) -> np.ndarray: ...
    def addr(self, t: Any) -> int: ...


class NativeSource:
    """The C++ recorder that wraps PyTorch's CPU allocator (``_alloc.cpp``)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def event_count(self) -> int:
        return int(self.lib.memlab_event_count())

    def set_tag(self, tag: int) -> None:
        self.lib.memlab_set_tag(tag)

    def live(self) -> int:
        return int(self.lib.memlab_live())

    def adopt(self, t: Any, nbytes: int) -> None:
        self.lib.memlab_adopt(t.untyped_storage()._cdata, nbytes)

    def set_limit(self, limit: int) -> None:
        self.lib.memlab_set_limit(limit)

    def set_recording(self, on: bool) -> None:
        self.lib.memlab_set_recording(1 if on else 0)

    def clear(self) -> None:
        self.lib.memlab_clear_events()

    def events(self, start: int, end: int) -> np.ndarray:
        out = np.empty((max(0, end - start), 4), dtype=np.int64)
        if len(out):
            got = self.lib.memlab_copy_events(out.ctypes.data_as(ctypes.c_void_p), start, len(out))
            out = out[:got]
        return out

    def addr(self, t: Any) -> int:
        return int(t.untyped_storage().data_ptr())


@functools.lru_cache(maxsize=1)
def default_source() -> NativeSource:
    """The process's allocation recorder, built and installed on first use."""
    from memlab.tracking import _native

    return NativeSource(_native.recorder())
