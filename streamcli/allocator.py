"""``keep_freed_buffers``: the C allocator told to reuse the memory of freed 1 MiB transfer buffers.

Every chunk of a transfer is a few new 1 MiB buffers on its way: gRPC's received or sent message, the
bytes read or written. With glibc's default thresholds, freeing one of them often hands its memory
back to the kernel (the top of a heap trimmed, a large block unmapped), and the next one is faulted in
again page by page, the kernel zeroing each: measured at 170-220 minor page faults per MiB uploaded in
the server and per MiB downloaded in the client, CPU spent on the event loop's thread among others
(bench/README.md, "File transfer"). A fixed mmap threshold above the chunk size keeps such buffers in
the heap, and a trim threshold of a few chunks keeps the freed ones there for the next: 30-60 faults
per MiB, 0-15 with the heaps capped at two. Peak RSS does not grow (the cap on heaps offsets the
freed memory each keeps): a server moving 512 MiB up and down peaked at 94 MB against 113 MB.

It changes the whole process's allocator, so only the processes that move files' bytes call it:
``streamcli serve`` (``server/app.py`` ``serve``, before its threads start) and the ``upload`` and
``download`` commands (``cli/transfer.py``). An operator's own ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_ARENA_MAX`` (or ``glibc.malloc`` tunables) wins: then nothing is set.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Blocks this large or larger are mapped on their own (glibc's default starts at 128 KiB and adapts): above
#: the largest chunk plus its message's framing, so that transfer buffers come from the heap and are reused.
MMAP_THRESHOLD = 4 << 20
#: Freed memory at the top of a heap beyond this goes back to the kernel: a few chunks of every transfer.
TRIM_THRESHOLD = 16 << 20
#: Heaps (arenas) at most: glibc makes up to eight per core for threads that allocate at once, each keeping
#: up to ``TRIM_THRESHOLD`` of freed memory; two keep a server's peak RSS below what glibc's defaults reach.
ARENA_MAX = 2
#: The variables by which an operator sets these thresholds at start-up (glibc reads them itself; also
#: ``GLIBC_TUNABLES`` naming ``glibc.malloc`` tunables).
OPERATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")


def keep_freed_buffers(environ: Mapping[str, str]) -> bool:
    """Set glibc's thresholds as above, unless ``environ`` (the process's) sets its own; whether it did.

    Nothing happens on another system or C library.
    """
    if not sys.platform.startswith("linux") or any(name in environ for name in OPERATOR_SETTINGS):
        return False
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # (mallopt returns 1 on success.)
    settings = ((M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])
