"""glibc's allocator, told to give memory back (Linux with glibc; a no-op elsewhere).

A 30-minute soak (benchmarks/soak.py) showed the daemon's live allocations flat while RSS
crept up by ~10 MiB/h: free memory kept by glibc becoming resident again, which one
``malloc_trim(0)`` handed back. Two things are done about it. glibc raises its mmap
threshold to the size of the largest block freed so far, so after the first multi-MB
`/metrics` page every later one is carved from the heap of whichever thread joined it and
stays there when freed; a fixed threshold keeps such blocks in their own mappings, returned
to the kernel on free (tests/test_malloc.py shows the difference). And ``trim()`` hands back
what the heaps hold free after a burst of garbage (a reload).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's default; fixing it stops the dynamic increase


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def configure() -> bool:
    """Fix the mmap threshold. True if glibc took it."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> bool:
    """Return free heap memory to the kernel. True if some was."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
