"""Build (once per machine, ~2 s) and load the allocation recorder in ``_alloc.cpp``.

torch.utils.cpp_extension compiles it against the installed torch and caches it under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), with a file lock so that
several worker processes can ask at once. The library is a plain C ABI called through ctypes.

Every worker process loads the recorder, and ``cpp_extension.load`` is slow even when nothing
needs building: it asks the compiler its version and runs ninja to check the build (16 compiler
and 12 ninja processes in one smoke run of lab 03, strace), 1-2 s per worker on an idle 2-core
machine and 9 s under load. So after a build the library's name is written to a stamp file
beside it, under a key of everything the build depends on (the source's bytes, the flags,
torch's version and location, Python's version); a process whose key matches the stamp loads
that library directly, and any other goes through ``cpp_extension.load``, which rebuilds.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

__all__ = ["recorder", "NativeBuildError"]

_SOURCE = Path(__file__).with_name("_alloc.cpp")
_NAME = "memlab_alloc"
_CFLAGS = ["-O2"]


class NativeBuildError(RuntimeError):
    """The allocation recorder could not be compiled or loaded on this machine."""


def _build() -> Path:
    try:
        from torch.utils import cpp_extension
    except ImportError as e:  # pragma: no cover - torch is a dependency
        raise NativeBuildError("memlab.track needs torch: pip install torch") from e
    try:
        cpp_extension.load(
            _NAME,
            [str(_SOURCE)],
            extra_cflags=_CFLAGS,
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:  # compiler missing, ninja missing, headers missing...
        raise NativeBuildError(
            "memlab could not compile its allocation recorder (memlab/tracking/_alloc.cpp): "
            f"{e}. It needs a C++ compiler (Linux: apt-get install g++; macOS: "
            "xcode-select --install) and the `ninja` package (pip install ninja)."
        ) from e
    lib = cached_library()
    if lib is None:
        raise NativeBuildError(f"built {_NAME} but found no shared library in {_build_dir()}")
    return lib


def _build_key() -> str:
    """What the built library depends on (see the module docstring)."""
    import hashlib
    import sys

    import torch

    h = hashlib.sha256(_SOURCE.read_bytes())
    h.update(repr((_CFLAGS, torch.__version__, torch.__file__, sys.version)).encode())
    return h.hexdigest()


def _stamp_path(key: str) -> Path:
    # One stamp per key: two environments sharing the cache (two venvs of the same torch) each
    # keep theirs instead of overwriting one stamp back and forth.
    return _build_dir() / f"{_NAME}-{key[:16]}.stamp"


def _stamped_library(key: str) -> Path | None:
    """The library a previous build stamped for ``key``, if it is still there."""
    try:
        stamped_key, name = _stamp_path(key).read_text().splitlines()
    except (OSError, ValueError):
        return None
    lib = _build_dir() / name
    return lib if stamped_key == key and lib.is_file() else None


def _stamp(lib: Path, key: str) -> None:
    """Write the stamp atomically (another worker may be reading it)."""
    path = _stamp_path(key)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        tmp.write_text(f"{key}\n{lib.name}\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache: the next process checks the build again


def _library() -> Path:
    """The library to load: the stamped one, or a (re)build's."""
    key = _build_key()
    lib = _stamped_library(key)
    if lib is None:
        lib = _build()
        _stamp(lib, key)
    return lib


def _build_dir() -> Path:
    from torch.utils import cpp_extension

    # Under $TORCH_EXTENSIONS_DIR (or torch's default root); creates the folder if missing.
    return Path(cpp_extension._get_build_directory(_NAME, False))


def cached_library() -> Path | None:
    """The newest library built before on this machine (for this Python and torch's
    accelerator), or None: whether the recorder may load without a compiler."""
    suffix = ".pyd" if os.name == "nt" else ".so"
    candidates = sorted(_build_dir().glob(f"{_NAME}*{suffix}"), key=os.path.getmtime)
    return candidates[-1] if candidates else None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    sigs: dict[str, tuple[list[type], type | None]] = {
        "memlab_install": ([], ctypes.c_int),
        "memlab_adopt": ([i64, i64], ctypes.c_int),
        "memlab_live": ([], i64),
        "memlab_peak": ([], i64),
        "memlab_reset_peak": ([], None),
        "memlab_set_tag": ([i64], None),
        "memlab_set_limit": ([i64], None),
        "memlab_set_recording": ([ctypes.c_int], None),
        "memlab_event_count": ([], i64),
        "memlab_copy_events": ([vp, i64, i64], i64),
        "memlab_clear_events": ([], None),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    return lib


@functools.lru_cache(maxsize=1)
def recorder() -> ctypes.CDLL:
    """The loaded recorder, installed as PyTorch's CPU allocator. Built on first use."""
    import torch  # noqa: F401  (libc10 must be loaded before the library that links it)

    lib = _declare(ctypes.CDLL(str(_library())))
    if lib.memlab_install() != 1:
        raise NativeBuildError(
            "PyTorch's CPU allocator on this build cannot be wrapped (it has no raw deleter); "
            "memlab.track cannot count CPU allocations here."
        )
    return lib
