"""glibc's allocator, told to give memory back (Linux with glibc; a no-op elsewhere).

A 30-minute soak (benchmarks/soak.py) showed the daemon's live allocations flat while glibc
kept more and more freed memory (8 -> 55 MiB): glibc raises its mmap threshold to the size
of the largest block freed so far, so after the first multi-MB `/metrics` page every later
page is carved from the heap of whichever thread joined it, and stays there when freed.
A fixed threshold keeps big blocks in their own mappings, returned to the kernel on free;
``trim()`` hands back what the arenas hold free after a burst of garbage (a reload).
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
