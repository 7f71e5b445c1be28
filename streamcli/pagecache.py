"""What a writer of a large file does behind itself in the page cache (``WriteBehind``, all of these):
``Writeback`` starts the kernel writing the new bytes to disk every MiB, ``SyncBehind`` makes them durable
every few MiB on a thread of its own (for a file that ends with an fsync), and ``DropBehind`` drops the pages
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

import concurrent.futures
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
    the disk), so that the disk works while bytes still arrive and the final fsync has little left (of this
    system's writing: a virtual machine's host may still hold them, ``SyncBehind``). It is advice: where it
    is not available (another system, a pipe), nothing happens. Called on the worker thread, after each
    write.

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


#: Bytes written between two syncs behind a writer (``SyncBehind``).
SYNC_EVERY = 16 << 20

#: The threads that run the syncs behind writers: each file has one sync running at most, so this many files
#: are synced at once (the syncs of more wait their turn). They wait for the disk, using little CPU.
_SYNCS = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="streamcli-sync")


def _sync_and_close(fd: int) -> None:
    """(On a sync thread.) ``fdatasync`` of ``fd``, a duplicate made for it, then closed."""
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class SyncBehind:
    """Makes a growing file durable as it grows: an ``fdatasync`` every ``SYNC_EVERY`` bytes, on a thread of its
    own, while the writer goes on; ``finish`` before the file's final fsync.

    ``Writeback`` has the kernel write the pages out as they come, but on a virtual machine that only moves
    them to the host: a disk's cache flush, which every fsync ends with, is when the host writes them to its
    own disk, and a file synced only at its end waits that long after its last byte (measured on this
    project's test machine: 1 GiB written at 300 MB/s, then 1.0-1.4 s of fsync; with a sync behind every
    16 MiB, 0.00-0.02 s). Synced as it grows, the disk works while the bytes still arrive; every other fsync
    on the disk meanwhile (a chat's log) has at most a few MiB to wait for, not the whole file.

    The sync runs on a duplicate of the descriptor, closed by the sync itself, so the writer may close the
    file at any time. A failed sync is kept and raised by ``finish`` (Linux reports a write-back failure to
    one sync of a file, not to the next: the final fsync would not know of it); no sync is started after it.
    """

    def __init__(self, fd: int, start: int, *, enabled: bool = True) -> None:
        self._fd = fd
        self._from = start  # the end of the file when the last sync was started
        self._enabled = enabled
        self._running: concurrent.futures.Future[None] | None = None
        self._failure: BaseException | None = None  # (what ``_sync_and_close`` raises: an OSError)
        self.syncs = 0  # syncs started (for the tests)

    def wrote(self, end: int) -> None:
        """The file now has bytes up to ``end``."""
        if not self._enabled or end - self._from < SYNC_EVERY or not self._ended():
            return  # (a sync still running: the next write starts the next one)
        try:
            fd = os.dup(self._fd)
        except OSError:  # (out of descriptors, say: the final fsync will do it all)
            return
        self._from = end
        self._running = _SYNCS.submit(_sync_and_close, fd)
        self.syncs += 1

    def _ended(self) -> bool:
        """Whether no sync is running; keeps the failure of the one that ran last (and then syncs no more)."""
        running = self._running
        if running is None:
            return True
        if not running.done():
            return False
        self._running = None
        self._failure = running.exception()
        if self._failure is not None:
            self._enabled = False
        return self._failure is None

    def finish(self) -> None:
        """(Blocking: on a thread.) Wait for the sync running, if any, before the file's final fsync.

        Raises:
            OSError: a sync behind the writer failed: bytes written before it may not be on the disk.
        """
        if self._running is not None:
            concurrent.futures.wait([self._running])
            self._ended()
        if self._failure is not None:
            raise self._failure


class WriteBehind:
    """What a writer of a large file does behind itself after each write: starts the kernel writing the new
    bytes back (``Writeback``), syncs them every few MiB if ``durable`` (``SyncBehind``: the file ends with an
    fsync, after ``finish``) and drops the pages written back (``DropBehind``). ``enabled=False`` (or a file
    without a descriptor: a pipe, a test's buffer): nothing."""

    def __init__(self, fd: int, start: int, *, enabled: bool = True, durable: bool = False) -> None:
        self.writeback = Writeback(fd, start, enabled=enabled)
        self.sync = SyncBehind(fd, start, enabled=enabled and durable)
        self.drop = DropBehind(fd, start, enabled=enabled)

    def wrote(self, end: int) -> None:
        """The file now has bytes up to ``end``."""
        self.writeback.wrote(end)
        self.sync.wrote(end)
        self.drop.reached(end)

    def finish(self) -> None:
        """(Blocking: on a thread.) Before the file's final fsync: ``SyncBehind.finish``."""
        self.sync.finish()
