"""Give freed memory back to the system: big buffers in their own mappings, not glibc's heaps.

glibc serves an allocation from its heaps unless it is larger than ``M_MMAP_THRESHOLD``, and
that threshold *rises* to the size of each mapped buffer freed (up to 32 MiB on 64-bit): after
one large photo, every later decoded picture, resize buffer and Pillow row block of up to 32 MiB
lands in a heap, and a heap only shrinks from its top, so the process keeps gigabytes it no
longer uses (docs/hardening.md: 2.2 GB resident after the thin-image attacks). A fixed threshold
stops the rise: buffers of :data:`MMAP_THRESHOLD` and more are mapped and unmapped on free.

Fixing it also fixes ``M_TRIM_THRESHOLD`` (the free space a heap keeps at its top), which glibc
otherwise keeps at twice the mmap threshold, at its default of 128 KiB: every request would then
give its buffers back to the kernel and fault them in again. :data:`TRIM_THRESHOLD` keeps a
few requests' worth. Both are set just above a decoded photo's size (a 640x480 picture is 1.2 MB
in Pillow's four bytes per pixel): with 1 MiB and glibc's trim threshold, decoding and resizing
one cost 40% more CPU; docs/hardening.md has the command and the figures.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger("convserve.memory")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers, glibc's malloc.h
MMAP_THRESHOLD = 2 * 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None  # glibc, not musl


def fix_mmap_threshold(size: int = MMAP_THRESHOLD, trim: int | None = TRIM_THRESHOLD) -> bool:
    """Map every allocation of ``size`` bytes or more on its own, and let a heap keep ``trim``
    bytes free at its top (None: as glibc then leaves it, 128 KiB); glibc only; whether it
    took.

    Call once at start-up, before any model loads.
    """
    libc = _libc()
    if libc is None:
        return False
    done = bool(libc.mallopt(M_MMAP_THRESHOLD, size)) and (
        trim is None or bool(libc.mallopt(M_TRIM_THRESHOLD, trim)))
    if not done:
        logger.warning("mallopt(M_MMAP_THRESHOLD, %d) or (M_TRIM_THRESHOLD, %d) failed: "
                       "freed image buffers may stay resident", size, trim)
    return done

