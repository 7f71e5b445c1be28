"""What a writer of a large file does behind itself in the page cache (``WriteBehind``, both of these):
``Writeback`` starts the kernel writing the new bytes to disk every MiB, and ``DropBehind`` drops the pages
written back, so that a file written from start to end reuses a few MiB of the page cache, not all of it.

A large file written through the page cache (a download the client writes, an upload the server writes)
leaves every page it wrote cached once it is written back: ``Writeback``'s ``POSIX_FADV_DONTNEED`` starts the writing of
each new range, but drops nothing, for those pages are then still being written (measured: 512 MiB
written, 512 MiB cached after the fsync). Each new page of the file is then memory the kernel had not
used for a while; on a virtual machine whose free memory goes back to the host (a balloon's free page
reporting, as on this project's test machine), touching it costs a fault in the host, which shows up as
a slow copy in ``write``: 2.1-2.4 ms of CPU per MiB written, against 0.5-0.6 when the pages written back
are dropped behind the writer, so that the kernel hands the same pages out again while they are warm
(bench/README.md, "File transfer"). The cost to the user: the file's pages are not cached after it is
written, as ``Writeback`` meant already (a later read of them goes to the disk).

A large file read from start to end through the page cache (a download the server sends) fills it
alike, with pages the kernel takes from memory it had not used for a while: the server drops the pages
behind its reads too (measured: 1 GiB downloads of files whose pages its upload had dropped, 200-241
MB/s without, 241-270 with). The cost: a file read by two downloads at once is read from the disk twice.

Called on the thread that writes (or reads), after each write (read). It is advice: where it is not available (another
system, a pipe), nothing happens.
"""

from __future__ import annotations

import os

#: How often (bytes written) the pages behind the writer are dropped.
EVERY = 8 << 20
#: How far behind the end of the file (bytes) pages are dropped: the writing of those pages started at least
#: 15 MiB before (``Writeback`` starts it every MiB), so most are clean by then; a page still
#: being written is left cached by the kernel.
BEHIND = 16 << 20
#: How far before the last range dropped (bytes) each drop starts again, for the pages that were still being
#: written then.
AGAIN = 32 << 20


class DropBehind:
    """Drops the pages of a growing file that lie ``BEHIND`` bytes or more behind its end, every ``EVERY`` bytes."""

    def __init__(self, fd: int, start: int, *, enabled: bool = True) -> None:
        self._fd = fd
        self._start = start  # the first byte this writer wrote: earlier ones are none of its business
        self._dropped = start  # pages before this were dropped (but for those then still being written)
        self._enabled = enabled and hasattr(os, "posix_fadvise")
        self.drops = 0  # ranges handed to the kernel (for the tests)

    def reached(self, end: int) -> None:
        """The writer (or reader) is done with the file's bytes up to ``end``."""
        upto = end - BEHIND
        if not self._enabled or upto - self._dropped < EVERY:
            return
        start = max(self._start, self._dropped - AGAIN)
        try:
            os.posix_fadvise(self._fd, start, upto - start, os.POSIX_FADV_DONTNEED)
        except OSError:
            self._enabled = False  # (ESPIPE: standard output is a pipe)
            return
        self._dropped = upto
        self.drops += 1


class Writeback:
    """Starts the kernel writing a growing file's new bytes to disk every ``EVERY`` bytes, without waiting.

    A durable transfer ends with an fsync, and Linux starts writing dirty pages back only after seconds,
    or gigabytes: without this the fsync would write the whole file after the last byte arrived, and the
    transfer would take the network's time plus the disk's. ``POSIX_FADV_DONTNEED`` on a range makes Linux
    start writing its dirty pages (and drop those of it already written back: a later read of them goes to
    the disk), so that the disk works while bytes still arrive and the final fsync has little left. It is
    advice: where it is not available (another system, a pipe), nothing happens. Called on the worker
    thread, after each write.

    Every 1 MiB, not more: the kernel queues each window's writes on the disk at once, and every other fsync
    on the disk waits behind them (a chat's log, another transfer's commit). Measured with three writers at
    8 MB/s each (what paced transfers move while a chat is open) and a 4 KiB write + fdatasync every 50 ms:
    p99 45-49 ms with 8 MiB windows, 9-10 ms with 1 MiB; 1 GiB written and fsynced at the same rate either
    way.
    """

    EVERY = 1 << 20

    def __init__(self, fd: int, start: int, *, enabled: bool = True) -> None:
        self._fd = fd
        self._from = start  # the first byte not yet handed to the kernel for writing
        self._enabled = enabled and hasattr(os, "posix_fadvise")

    def wrote(self, end: int) -> None:
        """The file now has bytes up to ``end``."""
        if not self._enabled or end - self._from < self.EVERY:
            return
        try:
            os.posix_fadvise(self._fd, self._from, end - self._from, os.POSIX_FADV_DONTNEED)
        except OSError:
            self._enabled = False  # (ESPIPE: standard output is a pipe)
        self._from = end


class WriteBehind:
    """What a writer of a large file does behind itself after each write: starts the kernel writing the new
    bytes back (``Writeback``) and drops the pages written back (``DropBehind``). ``enabled=False`` (or a
    file without a descriptor: a pipe, a test's buffer): nothing."""

    def __init__(self, fd: int, start: int, *, enabled: bool = True) -> None:
        self.writeback = Writeback(fd, start, enabled=enabled)
        self.drop = DropBehind(fd, start, enabled=enabled)

    def wrote(self, end: int) -> None:
        """The file now has bytes up to ``end``."""
        self.writeback.wrote(end)
        self.drop.reached(end)
