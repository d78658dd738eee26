"""glibc malloc settings for a long-lived node whose state is a large map.

Python keeps its small objects in arenas of its own, but every larger buffer (a snapshot image, the lists
that encode it, gRPC and sqlite buffers) comes from malloc, whose defaults suit short programs:
- each thread that allocates gets an arena of its own (up to 8 per core), and each arena keeps what was
  freed in it: the disk, snapshot and gRPC threads would each keep a heap. Behind the GIL two are plenty.
- after a large block is freed glibc raises its mmap threshold to that block's size (up to 32 MiB), so
  the next snapshot's lists and buffers come from a heap, which keeps their pages after they are freed.
  A fixed threshold keeps every block from 1 MiB up in a mapping of its own, returned to the system
  the moment it is freed.
- trim() hands the free pages left inside the heaps back to the system; the node calls it after a
  snapshot, when the encoding's buffers have just been freed.
Everything here does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 1 << 20


def _load_glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # this process's own C library, whichever it is
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


_glibc = _load_glibc()


def tune() -> bool:
    """Apply the settings above; True when they took effect. Call before the process starts threads."""
    if _glibc is None:
        return False
    arenas = _glibc.mallopt(M_ARENA_MAX, ARENA_MAX)
    threshold = _glibc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(arenas == 1 and threshold == 1)


def trim() -> bool:
    """Return free heap pages to the system; True when some were. Takes milliseconds on a large heap, and
    releases the GIL meanwhile (a ctypes call): meant for a worker thread."""
    return _glibc is not None and bool(_glibc.malloc_trim(0))
