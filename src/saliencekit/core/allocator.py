"""CPU allocator tuning for the duration of a call (glibc only; a no-op elsewhere).

glibc malloc serves blocks above its mmap threshold with fresh mmap'd pages and returns the top of
the heap to the OS once more than the trim threshold is free there. The threshold starts at
128 KiB and rises with the blocks freed (to at most 32 MiB), so the first forward+backward passes
of a process, and every new chunk size, page-fault their activations afresh. Inside
:func:`retained_memory` the mmap threshold is at its maximum and nothing is trimmed, so every chunk
size is warm from its second chunk; afterwards the trim threshold goes back to glibc's own steady
value and glibc returns the free top of the heap at its next large free, as it normally does.
The measurements behind this choice are in docs/benchmarks.md ("retained memory").
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import sys
import threading
from typing import Any

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * 8     # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_RETAIN_TRIM = (1 << 31) - 1
_libc: Any = None
_depth = 0
_lock = threading.Lock()


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                lib = ctypes.CDLL(None)
                if hasattr(lib, "mallopt"):
                    _libc = lib
            except OSError:
                pass
    return _libc


@contextlib.contextmanager
def retained_memory(enabled: bool = True):
    """Keep freed heap memory for reuse inside the block (glibc only; nested blocks share one)."""
    global _depth
    lib = _glibc() if enabled else False
    if not lib:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            lib.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            lib.mallopt(_M_TRIM_THRESHOLD, _RETAIN_TRIM)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                lib.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)


__all__ = ["retained_memory"]
