"""``streamcli.pagecache``: the pages written back behind a writer leave the page cache, none other
(``DropBehind``); the bytes behind a durable writer are synced as it goes, and a failed sync is not lost
(``SyncBehind``)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pathlib
import sys

import pytest

from streamcli.pagecache import BEHIND, EVERY, SYNC_EVERY, DropBehind, SyncBehind, WriteBehind

MIB = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and fadvise as on Linux")


def cached(path: pathlib.Path) -> list[bool]:
    """For each MiB of ``path``: whether any of its pages is in the page cache (``mincore`` of a mapping)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        flags = ctypes.create_string_buffer(pages)
        try:
            assert libc.mincore(address, size, flags) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    per_mib = MIB // mmap.PAGESIZE
    return [any(flags.raw[i] & 1 for i in range(n * per_mib, (n + 1) * per_mib)) for n in range(size // MIB)]


def file_system(path: pathlib.Path) -> str:
    """The type of the file system ``path`` is on (the mount point that is its longest prefix)."""
    best, kind = "", ""
    for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if str(path.resolve()).startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fstype
    return kind


def test_the_pages_behind_the_writer_are_dropped_and_those_near_its_end_and_before_its_start_are_kept(
    tmp_path: pathlib.Path,
) -> None:
    if file_system(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("a file in memory has no page cache to drop")
    path = tmp_path / "file.part"
    block = os.urandom(MIB)
    head = 4  # MiB an earlier run wrote (a resumed download): not this writer's to drop
    with open(path, "wb") as handle:
        for _ in range(head):
            handle.write(block)
        handle.flush()
        drop = DropBehind(handle.fileno(), handle.tell())
        for _ in range(48):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())  # (every page clean: the kernel drops each page it is asked to)
        before = cached(path)
        drop.reached(handle.tell())
        after = cached(path)
    assert drop.drops == 1
    end = head + 48
    behind = end - BEHIND // MIB
    assert all(before), "the file was not in the page cache to begin with"
    assert after[:head] == [True] * head  # before the writer's start
    assert after[head:behind] == [False] * (behind - head)
    assert after[behind:] == [True] * (end - behind)  # near the end: kept
    with open(path, "rb") as check:  # advice only: the bytes are all there
        assert check.read() == block * end


def test_it_waits_for_a_window_and_gives_up_quietly_on_a_pipe(tmp_path: pathlib.Path) -> None:
    with open(tmp_path / "file", "wb") as handle:
        drop = DropBehind(handle.fileno(), 0)
        drop.reached(BEHIND + EVERY - 1)
        assert drop.drops == 0  # not a whole window behind yet
        drop.reached(BEHIND + EVERY)
        assert drop.drops == 1
    read, write = os.pipe()
    try:
        drop = DropBehind(write, 0)
        drop.reached(BEHIND + 4 * EVERY)  # ESPIPE: off from now on, nothing raised
        drop.reached(BEHIND + 8 * EVERY)
        assert drop.drops == 0
    finally:
        os.close(read)
        os.close(write)
    off = DropBehind(-1, 0, enabled=False)
    off.reached(1 << 40)
    assert off.drops == 0


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_bytes_behind_a_durable_writer_are_synced_as_it_writes(tmp_path: pathlib.Path) -> None:
    if file_system(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("a file in memory is never written back")
    path = tmp_path / "file.part"
    block = os.urandom(MIB)
    windows = 2
    descriptors = open_descriptors()
    with open(path, "wb", buffering=0) as handle:
        sync = SyncBehind(handle.fileno(), 0)
        for _ in range(windows * SYNC_EVERY // MIB):
            handle.write(block)
            sync.wrote(handle.tell())
        assert 1 <= sync.syncs <= windows  # one a window at most: the first, and the second unless one still ran
        sync.finish()
        # Synced pages are clean, and the kernel drops every clean page it is asked to (a dirty one it keeps):
        # without the syncs, the file's pages would still be dirty here, and cached after the advice.
        os.posix_fadvise(handle.fileno(), 0, SYNC_EVERY, os.POSIX_FADV_DONTNEED)
        assert cached(path)[: SYNC_EVERY // MIB] == [False] * (SYNC_EVERY // MIB)
    assert open_descriptors() == descriptors  # each sync's duplicate of the descriptor was closed
    with open(path, "rb") as check:
        assert check.read() == block * (windows * SYNC_EVERY // MIB)


def test_a_failed_sync_behind_the_writer_is_raised_by_finish_and_ends_the_syncs() -> None:
    # The kernel refuses to sync a pipe (EINVAL): a real failure of the sync thread's fdatasync.
    read, write = os.pipe()
    try:
        sync = SyncBehind(write, 0)
        sync.wrote(SYNC_EVERY - 1)
        assert sync.syncs == 0  # not a whole window yet
        sync.wrote(SYNC_EVERY)
        assert sync.syncs == 1
        with pytest.raises(OSError) as raised:
            sync.finish()
        assert raised.value.errno == errno.EINVAL
        sync.wrote(4 * SYNC_EVERY)
        assert sync.syncs == 1  # none after a failure
        with pytest.raises(OSError):
            sync.finish()  # and it is raised again: the final fsync must not go ahead
    finally:
        os.close(read)
        os.close(write)


def test_a_writer_that_is_not_durable_does_not_sync(tmp_path: pathlib.Path) -> None:
    with open(tmp_path / "file", "wb") as handle:
        behind = WriteBehind(handle.fileno(), 0)
        behind.wrote(4 * SYNC_EVERY)
        behind.finish()
        assert behind.sync.syncs == 0
        durable = WriteBehind(handle.fileno(), 0, durable=True)
        durable.wrote(SYNC_EVERY)
        durable.finish()
        assert durable.sync.syncs == 1
