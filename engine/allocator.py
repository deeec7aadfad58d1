"""Keep freed memory for reuse instead of handing it back to the OS after every tensor (glibc only).

By default glibc serves large blocks with fresh mmap pages and returns them on free; Dask workers are
even started with MALLOC_TRIM_THRESHOLD_=65536. Every layer's activations then fault in new pages:
on this VM the system time matched the user time. Raising the mmap threshold to its maximum (32 MiB)
and the trim threshold to 256 MiB lets the heap recycle those blocks. Measured, EfficientNet-Lite0
at 224, 4 images a forward, 1 thread: 142 ms per image in a Dask worker's environment, 61 in a plain
process, 37-47 with these settings in either.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's upper limit on 64-bit
TRIM_THRESHOLD_BYTES = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings once per process; False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
