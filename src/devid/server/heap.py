"""Handing freed native memory back to the kernel after the status publisher's bursts."""

from __future__ import annotations

import ctypes
import sys

_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def release_freed_memory() -> None:
    """glibc keeps what a thread frees in that thread's arena for reuse. Rebuilding CRLs and filters
    (a few times a second under revocations) allocates and frees many small native objects in the
    worker threads, and the arenas' leftover fragments showed as a rising RSS in `devid bench soak`
    (the publishing worker grew twice as fast as the others); malloc_trim(0) returns every arena's
    free pages. A no-op where the C library has no malloc_trim (musl, other systems)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
