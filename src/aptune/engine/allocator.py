"""Keep freed memory in the process instead of handing each large block back to the OS.

Why: glibc's malloc serves every block above 128 KiB (a decoded 320x240 frame, a layer's
activations, a (h, N, N+M) score tensor) with a fresh ``mmap`` and returns it with
``munmap`` when freed, so the next step touches new pages again: tens of thousands of
page faults per train step, counted as system time. Raising the mmap threshold to
glibc's maximum (32 MiB) and the trim threshold well above a step's working set lets the
freed blocks be reused (the same settings jemalloc/tcmalloc users get by default). Peak
memory is unchanged; the process simply does not shrink between steps.

Only glibc is tuned, and only when the user has not chosen an allocator already (an
``LD_PRELOAD``-ed jemalloc/tcmalloc, glibc's own ``MALLOC_*`` variables or malloc
tunables in ``GLIBC_TUNABLES``).
``--allocator system`` leaves everything as it is. Workers forked by the DataLoader
inherit the settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger("aptune")

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD = 32 << 20
#: freed memory kept before the heap top is returned to the OS
TRIM_THRESHOLD = 1 << 30
ALLOCATOR_CHOICES = ("keep", "system")


def _preloaded_allocator() -> str | None:
    for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        for name in ("jemalloc", "tcmalloc", "mimalloc"):
            if name in os.path.basename(lib):
                return name
    return None


def tune_allocator(choice: str = "keep") -> str:
    """Apply ``--allocator`` and return what was done, as one line for the log."""
    if choice not in ALLOCATOR_CHOICES:
        names = ", ".join(ALLOCATOR_CHOICES)
        raise ValueError(f"--allocator must be one of {names}; got {choice!r}")
    if choice == "system":
        return "allocator: left as the system set it (--allocator system)"
    preloaded = _preloaded_allocator()
    if preloaded:
        return f"allocator: {preloaded} (LD_PRELOAD), left alone"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "allocator: not glibc, left alone"
    if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "allocator: glibc tuned by MALLOC_* / GLIBC_TUNABLES, left alone"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        return "allocator: glibc refused mallopt, left as it was"
    return (f"allocator: glibc keeps freed blocks for reuse (mmap threshold "
            f"{MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 30} GiB)")  # fmt: skip


__all__ = ["ALLOCATOR_CHOICES", "tune_allocator"]
