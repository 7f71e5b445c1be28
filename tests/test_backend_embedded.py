"""The embedded backend on a real disk: ``open_backend``, ``SqliteStore`` and ``DirectoryBlobStore``."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from streamcli.backends import open_backend
from streamcli.backends.base import (
    FileRecord,
    LogBounds,
    NewRecord,
    TrimmedError,
    UploadRecord,
)
from streamcli.backends.blobs import DirectoryBlobStore
from streamcli.backends.sqlite import SqliteStore, _WalIndex
from streamcli.errors import UsageError
from streamcli.private_files import open_private, private_dir, private_file
from streamcli.services.logs import Appender
from tests.support.inprocess import cli
from tests.support.threaded import threaded_server
from tests.test_log_contract import Recorder, produced

UNSAFE_IDS = ["../x", "", "a/b", "a" * 65, "..", ".", "/etc/passwd", "x\n", "a b", "é"]


def new(n: int, key: str = "k", kind: str = "event") -> NewRecord:
    return NewRecord(key=key, kind=kind, payload=f"payload-{n}".encode())


def batch(start: int, count: int) -> list[NewRecord]:
    return [new(n) for n in range(start, start + count)]


def tree(root: pathlib.Path) -> set[pathlib.Path]:
    return set(root.rglob("*"))


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "store.db")
    try:
        yield opened
    finally:
        await opened.close()


# --- open_backend -------------------------------------------------------------


async def test_open_backend_embedded_creates_its_files_under_the_data_dir(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    backend = open_backend("embedded", data_dir)
    try:
        assert backend.name == "embedded"
        assert (data_dir / "streamcli.db").is_file()
        assert (data_dir / "blobs" / "files").is_dir()
        assert (data_dir / "blobs" / "partial").is_dir()
        # One SQLite store serves both the log and the metadata.
        assert backend.log is backend.metadata
        appended = await backend.log.append("s", [new(1)])
        assert [r.id for r in appended] == [1]
        assert backend.blobs.blob_path("f1") == data_dir / "blobs" / "files" / "f1"
    finally:
        await backend.close()


async def synchronous_setting(store: object) -> int:
    assert isinstance(store, SqliteStore)
    return await store._run(lambda db: int(db.execute("PRAGMA synchronous").fetchone()[0]))


@pytest.mark.parametrize(("sync_every_commit", "expected"), [(False, 1), (True, 2)])
async def test_open_backend_syncs_every_commit_only_when_asked(
    tmp_path: pathlib.Path, sync_every_commit: bool, expected: int
) -> None:
    # SQLite's synchronous levels: 1 = NORMAL (WAL synced at checkpoints), 2 = FULL (WAL synced at every commit).
    backend = open_backend("embedded", tmp_path, sync_every_commit=sync_every_commit)
    try:
        assert await synchronous_setting(backend.log) == expected
        assert [r.id for r in await backend.log.append("s", [new(1)])] == [1]
    finally:
        await backend.close()


async def test_open_backend_reopens_existing_data(tmp_path: pathlib.Path) -> None:
    backend = open_backend("embedded", tmp_path)
    try:
        await backend.log.append("s", batch(1, 2))
        await backend.metadata.put_file(FileRecord("f", "a.txt", 3, "text/plain", "ab" * 32, 10.0))
    finally:
        await backend.close()
    backend = open_backend("embedded", tmp_path)
    try:
        assert await backend.log.bounds("s") == LogBounds(0, 2)
        assert [r.payload for r in await backend.log.read("s", 0, 10)] == [b"payload-1", b"payload-2"]
        assert (await backend.metadata.get_file("f")) == FileRecord("f", "a.txt", 3, "text/plain", "ab" * 32, 10.0)
    finally:
        await backend.close()


def test_open_backend_unknown_name_is_usage_error_and_touches_nothing(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(UsageError, match=r"unknown backend 'redis'.*embedded"):
        open_backend("redis", data_dir)
    assert not data_dir.exists()


def test_open_backend_data_dir_under_a_regular_file_is_usage_error(tmp_path: pathlib.Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("not a directory")
    with pytest.raises(UsageError, match="cannot use data dir"):
        open_backend("embedded", regular / "data")
    assert regular.read_text() == "not a directory"


def test_open_backend_data_dir_that_is_a_regular_file_is_usage_error(tmp_path: pathlib.Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("not a directory")
    with pytest.raises(UsageError):
        open_backend("embedded", regular)
    assert regular.read_text() == "not a directory"


def test_open_backend_corrupt_database_is_usage_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "streamcli.db").write_bytes(b"this is definitely not an sqlite database" * 100)
    with pytest.raises(UsageError, match="cannot open the database"):
        open_backend("embedded", tmp_path)


def test_open_backend_blob_dir_blocked_by_a_file_is_usage_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "blobs").write_text("in the way")
    with pytest.raises(UsageError, match="cannot use data dir"):
        open_backend("embedded", tmp_path)


async def test_log_and_metadata_persist_after_close_and_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "store.db"
    first = SqliteStore(path)
    try:
        appended = await first.append("s", batch(1, 6))
        await first.append("other", batch(1, 1))
        assert await first.trim("s", keep_last=4) == 2
        await first.put_file(FileRecord("f", "a.bin", 5, "application/octet-stream", "0" * 64, 100.0))
        await first.put_upload(UploadRecord("u", "b.bin", -1, "", "", 42, 200.0))
    finally:
        await first.close()

    second = SqliteStore(path)
    try:
        assert await second.bounds("s") == LogBounds(2, 6)
        assert await second.bounds("other") == LogBounds(0, 1)
        assert await second.read("s", 2, 100) == appended[2:]
        with pytest.raises(TrimmedError):
            await second.read("s", 0, 100)
        more = await second.append("s", [new(7)])
        assert more[0].id == 7
        assert more[0].timestamp >= appended[-1].timestamp
        assert await second.get_file("f") == FileRecord("f", "a.bin", 5, "application/octet-stream", "0" * 64, 100.0)
        assert await second.get_upload("u") == UploadRecord("u", "b.bin", -1, "", "", 42, 200.0)
    finally:
        await second.close()


# --- SqliteStore: producers persist -------------------------------------------


async def test_producer_state_persists_and_idle_producers_are_forgotten(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.append("s", produced("old", 1, 2))
    await store.close()
    store = SqliteStore(path)
    try:
        assert await store.append("s", produced("old", 1, 2)) == []  # known after a restart
        cut = time.time()
        await store.append("s", produced("young", 1, 1))
        assert await store.forget_producers("s", cut) == 1
        assert (await store.producer("s", "old")).last_sequence == 0
        assert (await store.producer("s", "young")).last_sequence == 1
        assert [r.payload for r in await store.append("s", produced("old", 1, 1))] == [b"old-1"]  # anew
    finally:
        await store.close()


async def test_appender_reports_a_failed_append_and_carries_on(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    seen = Recorder()
    appender: Appender[int] = Appender(store, "s", seen.stored, seen.on_failed)
    await store.close()
    await appender.post(new(1), 1)
    await asyncio.wait_for(appender.stored(), 5)  # returns: the failure was handed over
    assert seen.appends == []
    assert [tags for _, tags in seen.failed] == [[1]]


# --- DirectoryBlobStore -----------------------------------------------------------


def test_blob_store_creates_its_layout(tmp_path: pathlib.Path) -> None:
    blobs = DirectoryBlobStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "files").is_dir()
    assert (tmp_path / "a" / "b" / "partial").is_dir()
    assert blobs.partial_path("up-1") == tmp_path / "a" / "b" / "partial" / "up-1"
    assert blobs.blob_path("file_1") == tmp_path / "a" / "b" / "files" / "file_1"
    assert blobs.usage() == 0


def test_commit_moves_the_partial_into_files(tmp_path: pathlib.Path) -> None:
    blobs = DirectoryBlobStore(tmp_path)
    blobs.partial_path("up").write_bytes(b"hello world")
    target = blobs.commit("up", "file")
    assert target == blobs.blob_path("file")
    assert target.read_bytes() == b"hello world"
    assert not blobs.partial_path("up").exists()
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["file"]


def test_commit_without_a_partial_fails_and_creates_nothing(tmp_path: pathlib.Path) -> None:
    blobs = DirectoryBlobStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        blobs.commit("missing", "file")
    assert not blobs.blob_path("file").exists()


def test_discard_partial_is_idempotent(tmp_path: pathlib.Path) -> None:
    blobs = DirectoryBlobStore(tmp_path)
    blobs.partial_path("up").write_bytes(b"half")
    blobs.partial_path("other").write_bytes(b"keep")
    blobs.discard_partial("up")
    assert not blobs.partial_path("up").exists()
    blobs.discard_partial("up")
    blobs.discard_partial("never")
    assert blobs.partial_path("other").read_bytes() == b"keep"


def test_delete_returns_the_bytes_freed(tmp_path: pathlib.Path) -> None:
    blobs = DirectoryBlobStore(tmp_path)
    blobs.partial_path("up").write_bytes(b"x" * 1234)
    blobs.commit("up", "f")
    assert blobs.delete("f") == 1234
    assert not blobs.blob_path("f").exists()
    assert blobs.delete("f") == 0
    assert blobs.delete("never") == 0


def test_usage_counts_stored_and_partial_files(tmp_path: pathlib.Path) -> None:
    blobs = DirectoryBlobStore(tmp_path)
    blobs.partial_path("done").write_bytes(b"a" * 100)
    blobs.commit("done", "stored")
    assert blobs.usage() == 100
    blobs.partial_path("busy").write_bytes(b"b" * 30)
    assert blobs.usage() == 130
    blobs.discard_partial("busy")
    assert blobs.usage() == 100
    assert blobs.delete("stored") == 100
    assert blobs.usage() == 0


def test_longest_safe_id_is_accepted(tmp_path: pathlib.Path) -> None:
    blobs = DirectoryBlobStore(tmp_path)
    longest = "A-z_9" * 12 + "abcd"
    assert len(longest) == 64
    blobs.partial_path(longest).write_bytes(b"ok")
    assert blobs.commit(longest, longest).read_bytes() == b"ok"


@pytest.mark.parametrize("bad", UNSAFE_IDS, ids=repr)
def test_unsafe_ids_are_refused_and_nothing_escapes_the_root(tmp_path: pathlib.Path, bad: str) -> None:
    root = tmp_path / "outer" / "root"
    blobs = DirectoryBlobStore(root)
    blobs.partial_path("good").write_bytes(b"data")
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="invalid id"):
        blobs.partial_path(bad)
    with pytest.raises(ValueError, match="invalid id"):
        blobs.blob_path(bad)
    with pytest.raises(ValueError, match="invalid id"):
        blobs.commit(bad, "good")
    with pytest.raises(ValueError, match="invalid id"):
        blobs.commit("good", bad)
    with pytest.raises(ValueError, match="invalid id"):
        blobs.discard_partial(bad)
    with pytest.raises(ValueError, match="invalid id"):
        blobs.delete(bad)
    assert tree(tmp_path) == before
    assert blobs.partial_path("good").read_bytes() == b"data"


async def test_an_append_whose_caller_is_cancelled_still_reaches_the_readers(store: SqliteStore) -> None:
    await store.append("s", batch(0, 1))  # readers of "s" are served from memory from now on
    appending = asyncio.ensure_future(store.append("s", batch(1, 2)))
    await asyncio.sleep(0)  # the write is under way in the store's thread
    appending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await appending
    await store.producer("s", "nobody")  # queued behind the write: it has committed
    await asyncio.sleep(0)
    assert [r.payload for r in await store.read("s", 0, 10)] == [b"payload-0", b"payload-1", b"payload-2"]
    assert (await store.bounds("s")).last_id == 3


def test_the_data_dir_is_private_to_its_owner(tmp_path: pathlib.Path) -> None:
    """Directories 0700, files 0600 (database, -wal, -shm, lock, blobs, partial uploads), whatever the umask."""
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)  # a data dir made before, world-readable: tightened
    previous = os.umask(0o022)
    try:
        for data_dir in (tmp_path / "new" / "data", loose):
            with threaded_server(data_dir) as address:
                (tmp_path / "a.txt").write_bytes(b"secret")
                uploaded = cli(address, "upload", str(tmp_path / "a.txt"))
                assert uploaded.code == 0, uploaded.err
                modes = {p.relative_to(data_dir).as_posix(): p.stat().st_mode & 0o777 for p in data_dir.rglob("*")}
                modes["."] = data_dir.stat().st_mode & 0o777
            file_id = uploaded.out.split()[0]
            assert modes == {
                ".": 0o700,
                "blobs": 0o700,
                "blobs/files": 0o700,
                "blobs/partial": 0o700,
                f"blobs/files/{file_id}": 0o600,  # renamed from blobs/partial, created there 0600
                "streamcli.db": 0o600,
                "streamcli.db-wal": 0o600,
                "streamcli.db-shm": 0o600,
                "streamcli.db.lock": 0o600,
            }
    finally:
        os.umask(previous)


def test_private_files_are_created_and_tightened_0600(tmp_path: pathlib.Path) -> None:
    history = tmp_path / "state" / "chat_history"
    private_dir(history.parent)
    private_file(history)
    assert (history.parent.stat().st_mode & 0o777, history.stat().st_mode & 0o777) == (0o700, 0o600)
    history.chmod(0o644)
    history.write_text("kept\n")
    private_file(history)  # an existing history: tightened, kept
    assert (history.stat().st_mode & 0o777, history.read_text()) == (0o600, "kept\n")
    with open_private(tmp_path / "part", "wb") as part:
        part.write(b"x")
    assert (tmp_path / "part").stat().st_mode & 0o777 == 0o600


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_the_wal_index_tells_the_pages_a_checkpoint_would_copy(tmp_path: pathlib.Path) -> None:
    """What the checkpointer reads from the -shm file, against what SQLite's own checkpoint reports."""
    path = tmp_path / "streamcli.db"
    store = SqliteStore(path, checkpoint_interval=3600)  # (no turn of the thread during the test)
    index = _WalIndex(path.with_name(path.name + "-shm"))
    try:
        for count in (1, 7, 60):
            for _ in range(count):
                await store.append("s", [NewRecord(key="k", kind="x", payload=os.urandom(3000))])
            pending = index.pending()
            _, logged, copied = await store._run(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            assert (pending, copied) == (logged, logged) and logged > count
            assert index.pending() == 0
    finally:
        await store.close()
    garbage = tmp_path / "garbage-shm"
    for content in (b"", b"\x01" * 200, bytes(200)):  # short; two copies that agree on nonsense; never set up
        garbage.write_bytes(content)
        assert _WalIndex(garbage).pending() is None
    assert _WalIndex(tmp_path / "missing-shm").pending() is None


async def test_few_pages_are_synced_each_turn_and_checkpointed_when_old(tmp_path: pathlib.Path) -> None:
    """Under the threshold a turn syncs the log's new pages and does not checkpoint (a complete checkpoint
    makes the writer's next commit restart the log and sync its header on the writer's path); pages that
    have waited the longest allowed are checkpointed however few."""
    path = tmp_path / "streamcli.db"
    store = SqliteStore(path, checkpoint_interval=0.05, checkpoint_pages=10_000, checkpoint_max_age=1.0)
    index = _WalIndex(path.with_name(path.name + "-shm"))
    checkpointer = store._checkpointer
    try:
        # (The thread's count, not the log alone: the log shows the pages copied a moment before the count
        # of the checkpoint that copied them goes up.)
        await _until(lambda: checkpointer.checkpoints > 0 and index.pending() == 0, "the schema's pages checkpointed")
        before = (checkpointer.checkpoints, checkpointer.syncs)
        await store.append("s", [new(1)])
        await _until(lambda: checkpointer.syncs > before[1], "a turn synced the new page")
        assert checkpointer.checkpoints == before[0] and index.pending()
        await _until(lambda: index.pending() == 0, "the old pages checkpointed")
        assert checkpointer.checkpoints > before[0]
        assert [r.payload for r in await store.read("s", 0, 10)] == [b"payload-1"]
    finally:
        await store.close()


async def test_checkpoints_run_beside_the_writer_and_a_log_past_its_limit_is_cut_back(tmp_path: pathlib.Path) -> None:
    """The writer's automatic checkpoint is off; a thread of the store's own copies the write-ahead log into
    the database file (which would otherwise stay at its schema's size while the store is open), and when
    told the log has outgrown its limit the writer checkpoints once itself and cuts the log file back."""
    path = tmp_path / "streamcli.db"
    store = SqliteStore(path, checkpoint_interval=0.05, checkpoint_pages=100)
    try:
        empty = path.stat().st_size
        for _ in range(40):  # about 1 MB: 250 pages, past the store's threshold (100 here), under SQLite's 1,000
            await store.append("s", [NewRecord(key="k", kind="x", payload=os.urandom(25_000))])
        deadline = time.monotonic() + 20
        while path.stat().st_size < empty + 1_000_000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert path.stat().st_size >= empty + 1_000_000  # the pages reached the database file
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > 1_000_000
        store._checkpointer.writer_must = True  # (what the thread sets past WAL_SIZE_LIMIT)
        appended = 0
        while wal.stat().st_size > 100_000 and appended < 100:  # (a turn that met the thread's checkpoint: again)
            await store.append("s", [NewRecord(key="k", kind="x", payload=b"after")])
            appended += 1
            await asyncio.sleep(0.01)
        assert wal.stat().st_size < 100_000  # truncated by the writer's checkpoint, then small appends
        assert [r.payload for r in await store.read("s", 40, 1)] == [b"after"]
    finally:
        await store.close()
