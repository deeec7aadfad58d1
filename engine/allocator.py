"""Keep freed memory for reuse within a shard, and hand it back to the OS between shards (glibc only).

By default glibc serves large blocks with fresh mmap pages and returns them on free; Dask workers are
even started with MALLOC_TRIM_THRESHOLD_=65536. Every layer's activations then fault in new pages, and
the kernel's page-fault time rivals the compute. Raising the mmap threshold to its maximum (32 MiB)
and the trim threshold to 256 MiB lets the heap recycle those blocks.

What the heap keeps, though, fragments into free holes that would make peak memory creep with the
number of images. `release_freed_memory` after each shard (`malloc_trim`, which also returns whole
free pages inside the heap) starts every shard from the live memory alone, so peak memory stays flat
with N (bench/run.py's growth section measures both effects; bench/README.md has the figures).
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
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both or neither
    except (OSError, AttributeError):
        return None
    return libc


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings once per process; False where the C library is not glibc (nothing changes)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) \
        and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS (call between shards); True when glibc released any."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
