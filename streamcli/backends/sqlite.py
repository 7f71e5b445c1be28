"""``SqliteStore``: the embedded log and metadata store (SQLite in WAL mode).

One connection, used from one worker thread, so the event loop never blocks on
disk and SQLite never sees concurrent use of a connection. WAL mode lets
readers proceed while a write commits. Ids are assigned per stream from
``log_head``; append times never decrease along ids, so a time lookup is an
index seek. ``log_producers`` holds, per stream and producer, the last sequence
stored: it moves in the transaction of the append that stores the records, so
a record is stored once per (producer, sequence) whatever fails when.

Readers that have caught up wait on an in-process wake-up set by ``append``
(this backend has one process by design; the Redis backend wakes across
replicas).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import os
import pathlib
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from streamcli.backends.base import (
    BatchRecord,
    ConditionFailedError,
    FileRecord,
    KindCount,
    LogBounds,
    LogRecord,
    NewRecord,
    ProducerState,
    SequenceGapError,
    StorageFullError,
    StreamHead,
    TrimmedError,
    UploadRecord,
)
from streamcli.backends.sqlite_metrics import SCHEMA as METRICS_SCHEMA
from streamcli.backends.sqlite_metrics import SqliteMetrics
from streamcli.private_files import open_private, private_file

T = TypeVar("T")

#: Records per stream kept in memory for readers that have caught up.
TAIL_RECORDS = 8192

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    stream  TEXT    NOT NULL,
    id      INTEGER NOT NULL,
    ts      REAL    NOT NULL,
    key     TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    PRIMARY KEY (stream, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS log_by_time ON log (stream, ts);
CREATE TABLE IF NOT EXISTS log_head (
    stream          TEXT PRIMARY KEY,
    last_id         INTEGER NOT NULL,
    last_ts         REAL    NOT NULL,
    trimmed_through INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log_producers (
    stream        TEXT    NOT NULL,
    producer      TEXT    NOT NULL,
    last_sequence INTEGER NOT NULL,
    first_id      INTEGER NOT NULL,
    last_id       INTEGER NOT NULL,
    updated_at    REAL    NOT NULL,
    PRIMARY KEY (stream, producer)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS log_producers_by_time ON log_producers (stream, updated_at);
CREATE TABLE IF NOT EXISTS files (
    file_id      TEXT PRIMARY KEY,
    filename     TEXT NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    created_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_time ON files (created_at DESC, file_id);
CREATE INDEX IF NOT EXISTS files_by_content ON files (sha256, filename);
CREATE TABLE IF NOT EXISTS room_members (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS file_shares (
    file_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (file_id, room_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    batch_id     TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    source       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    completed_at REAL NOT NULL,
    summary      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_time ON batches (created_at DESC, batch_id);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id        TEXT PRIMARY KEY,
    filename         TEXT NOT NULL,
    total_size       INTEGER NOT NULL,
    content_type     TEXT NOT NULL,
    sha256           TEXT NOT NULL,
    created_at       REAL NOT NULL,
    expires_at       REAL NOT NULL
);
"""


#: The files posted in the rooms a user (the one parameter) has joined.
_SHARED_WITH = (
    "SELECT file_shares.file_id FROM file_shares JOIN room_members USING (room_id) WHERE room_members.user_id = ?"
)


class DatabaseInUseError(Exception):
    """Another process has the database open."""


#: Seconds between the checkpointer's turns: each syncs the write-ahead log's new pages, and checkpoints when
#: ``CHECKPOINT_PAGES`` wait or the oldest has waited ``CHECKPOINT_MAX_AGE``.
CHECKPOINT_INTERVAL = 1.0
#: Pages of the write-ahead log not yet checkpointed beyond which a turn checkpoints (SQLite's own automatic
#: checkpoint's threshold).
CHECKPOINT_PAGES = 1000
#: Seconds a page may wait in the write-ahead log for a checkpoint, however few are waiting.
CHECKPOINT_MAX_AGE = 30.0
#: The write-ahead log's size beyond which the writer checkpoints once itself (see ``_Checkpointer``), and to
#: which the log file is cut back after a burst made it larger.
WAL_SIZE_LIMIT = 64 << 20


class _WalIndex:
    """How many pages of the write-ahead log no checkpoint has copied yet, read from the wal-index (``-shm``).

    The index's header (https://www.sqlite.org/walformat.html, "The WAL-Index Header") holds the last valid
    frame (``mxFrame``), twice, and the checkpoint's progress (``nBackfill``) right after; a writer changes
    them under SQLite's locks, which this reads without: two copies that differ, an unknown version or a
    file that cannot be read answer ``None`` ("cannot tell"), and the caller checkpoints as if it were due.
    """

    _HEADER = struct.Struct("=12xB3xI")  # isInit (byte 12), mxFrame (bytes 16-19)
    _WORD = struct.Struct("=I")  # iVersion (bytes 0-3: 3007000 since SQLite 3.7.0); nBackfill (after the copies)
    _SIZE = 48  # one copy of the header; the second copy follows, then the checkpoint's info (nBackfill first)

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path

    def pending(self) -> int | None:
        try:
            with open(self._path, "rb", buffering=0) as index:
                data = index.read(2 * self._SIZE + 4)
        except OSError:
            return None
        if len(data) < 2 * self._SIZE + 4 or data[: self._SIZE] != data[self._SIZE : 2 * self._SIZE]:
            return None
        if self._WORD.unpack_from(data)[0] != 3007000:
            return None
        initialised, last_frame = self._HEADER.unpack_from(data)
        if not initialised:
            return None
        (backfilled,) = self._WORD.unpack_from(data, 2 * self._SIZE)
        return max(0, int(last_frame) - int(backfilled))


class _Checkpointer(threading.Thread):
    """Checkpoints the write-ahead log on a connection and a thread of its own, when enough of it waits.

    SQLite's automatic checkpoint runs inside the commit that crosses its threshold (1,000 pages, about
    250 appends), on the writer's connection: that append waits for the pages to be copied and the database
    file to be fsynced, and every append queued behind it with it. Measured while another process wrote to
    the disk: appends taking 17-580 ms (once 1.9 s) at each checkpoint against a median of 0.3 ms, and
    half-second stalls in bench/collab.py's fan-out that the raw relay (no disk) did not have. So the
    writer's automatic checkpoint is off (``wal_autocheckpoint=0``) and this thread runs a PASSIVE
    checkpoint, which never blocks the writer, when ``pages`` wait or the oldest has waited ``max_age``.

    Not every second: after a complete checkpoint the writer's next commit starts the log again at its
    beginning, and SQLite syncs the log's new header there, on the writer (so that frames written after
    the restart cannot outlive the header they belong to); while a transfer writes to the same disk that
    sync waits for the file system's journal, and measured 24-65 ms on the chat's writer under bench/
    transfer.py's uploads when a checkpoint completed every second. Checkpointing by the log's size (as
    SQLite itself does) makes those restarts as rare as the writes allow. What a checkpoint a second also
    did is kept: each turn syncs the log's new pages from this thread, so NORMAL's commits still reach the
    disk within about a second, without the writer waiting.

    A writer that never pauses keeps a checkpoint from completing, and the log from starting again at its
    beginning: past ``WAL_SIZE_LIMIT`` the writer checkpoints once itself, between two transactions
    (``writer_turn``), with most pages copied already. Commits stay as durable as before (WAL,
    ``synchronous=NORMAL`` or, with ``sync_every_commit``, FULL).
    """

    def __init__(self, path: pathlib.Path, interval: float, *, pages: int, max_age: float) -> None:
        super().__init__(name="streamcli-sqlite-checkpoint", daemon=True)
        self._path = path
        self._wal = path.with_name(path.name + "-wal")
        self._index = _WalIndex(path.with_name(path.name + "-shm"))
        self._interval = interval
        self._pages = pages
        self._max_age = max_age
        self._stopping = threading.Event()
        self._waiting_since: float | None = None  # when the oldest page not checkpointed was first seen
        self._synced = 0  # the pages waiting when this thread last synced the log
        self.writer_must = False  # the log has outgrown WAL_SIZE_LIMIT: the writer's turn
        self.checkpoints = 0  # turns that ran a checkpoint (read by tests)
        self.syncs = 0  # turns that synced the log's new pages without one (read by tests)

    def run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping.wait(self._interval):
                self._turn(db)
                with contextlib.suppress(OSError):
                    if self._wal.stat().st_size > WAL_SIZE_LIMIT:
                        self.writer_must = True  # (until the writer has had its turn: it clears it)
        finally:
            db.close()

    def _turn(self, db: sqlite3.Connection) -> None:
        pending = self._index.pending()
        if pending == 0:  # (a checkpoint copied everything: this thread's, or the writer's)
            self._waiting_since = None
            return
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if pending is None or pending >= self._pages or now - self._waiting_since >= self._max_age:
            with contextlib.suppress(sqlite3.Error):  # (a full disk, a busy moment): the next turn tries again
                _, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.checkpoints += 1
                self._synced = pending or 0  # (a checkpoint syncs the log before it copies)
                if copied >= logged:
                    self._waiting_since = None
        elif pending != self._synced:
            with contextlib.suppress(OSError):
                self._sync_log()
                self.syncs += 1
                self._synced = pending

    def _sync_log(self) -> None:
        fd = os.open(self._wal, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def writer_turn(self, db: sqlite3.Connection) -> None:
        """On the writer's connection, between its transactions: checkpoint and cut the log back if asked."""
        if self.writer_must:
            self.writer_must = False
            try:
                busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error:
                busy = 1
            if busy:  # (this thread's checkpoint was running): the writer's next transaction tries again
                self.writer_must = True


class SqliteStore(SqliteMetrics):
    """A ``LogStore`` and ``MetadataStore`` in one SQLite database file."""

    def __init__(
        self,
        path: pathlib.Path,
        *,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        checkpoint_pages: int = CHECKPOINT_PAGES,
        checkpoint_max_age: float = CHECKPOINT_MAX_AGE,
        sync_every_commit: bool = False,
    ) -> None:
        # One process per database: wake-ups and the head cache live in this process.
        self._lock = open_private(path.with_name(path.name + ".lock"), "a+b")
        private_file(path)  # 0600 before SQLite opens it: its -wal and -shm files take the database's mode
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise DatabaseInUseError(f"{path} is in use by another process") from None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="streamcli-sqlite")
        try:
            self._db = self._executor.submit(self._connect, path, sync_every_commit).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            self._lock.close()
            raise
        self._checkpointer = _Checkpointer(
            path, checkpoint_interval, pages=checkpoint_pages, max_age=checkpoint_max_age
        )
        self._checkpointer.start()
        self._heads: dict[str, LogBounds] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        # The newest records of each stream appended by this process: readers that
        # have caught up are served from memory, not from disk.
        self._tails: dict[str, collections.deque[LogRecord]] = {}
        self._readers_released = False

    @staticmethod
    def _connect(path: pathlib.Path, sync_every_commit: bool) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives the process's crash (SIGKILL) at once, and power loss once the next
        # checkpoint has synced the log (about a second: _Checkpointer). FULL syncs the log at every commit.
        db.execute(f"PRAGMA synchronous={'FULL' if sync_every_commit else 'NORMAL'}")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run beside the writer: _Checkpointer
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        db.executescript(_SCHEMA)
        db.executescript(METRICS_SCHEMA)
        for table in ("files", "uploads"):  # databases from before files had owners
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if "owner" not in columns:
                db.execute(f"ALTER TABLE {table} ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call(db: sqlite3.Connection) -> T:
            self._checkpointer.writer_turn(db)
            return fn(db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call, self._db)
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                raise StorageFullError(str(exc)) from exc
            raise

    async def close(self) -> None:
        await asyncio.to_thread(self._checkpointer.stop)
        await self._run(lambda db: db.close())  # the last connection: SQLite checkpoints and removes the log
        self._executor.shutdown(wait=True)
        self._lock.close()  # releases the flock

    # --- LogStore -----------------------------------------------------------

    async def append(
        self, stream: str, records: Sequence[NewRecord], *, if_last_id: int | None = None
    ) -> list[LogRecord]:
        if not records:
            return []

        def write(db: sqlite3.Connection) -> tuple[list[LogRecord], LogBounds]:
            with _transaction(db):
                row = db.execute(
                    "SELECT last_id, last_ts, trimmed_through FROM log_head WHERE stream = ?", (stream,)
                ).fetchone()
                last_id, last_ts, trimmed = row if row else (0, 0.0, 0)
                if if_last_id is not None and last_id != if_last_id:
                    raise ConditionFailedError(stream, if_last_id, last_id)
                ts = max(time.time(), last_ts)
                producers = _Producers(db, stream) if any(r.producer for r in records) else None
                kept = records if producers is None else producers.new_records(records)
                stored = [LogRecord(last_id + n, ts, r.key, r.kind, r.payload) for n, r in enumerate(kept, start=1)]
                if stored:
                    db.executemany(
                        "INSERT INTO log (stream, id, ts, key, kind, payload) VALUES (?, ?, ?, ?, ?, ?)",
                        [(stream, r.id, r.timestamp, r.key, r.kind, r.payload) for r in stored],
                    )
                    db.execute(
                        "INSERT INTO log_head (stream, last_id, last_ts, trimmed_through) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id, last_ts = excluded.last_ts",
                        (stream, stored[-1].id, ts, trimmed),
                    )
                if producers is not None:
                    producers.save(kept, stored, time.time())
            return stored, LogBounds(trimmed, stored[-1].id if stored else last_id)

        # The write goes on in its thread if the caller is cancelled (a client that went away): once it has
        # committed, the head and the tail must say so, or readers served from the tail miss its records.
        writing = asyncio.ensure_future(self._run(write))
        try:
            stored, bounds = await asyncio.shield(writing)
        except asyncio.CancelledError:
            writing.add_done_callback(lambda done: self._after_cancelled(stream, done))
            raise
        return self._appended(stream, stored, bounds)

    def _after_cancelled(self, stream: str, writing: asyncio.Future[tuple[list[LogRecord], LogBounds]]) -> None:
        if not writing.cancelled() and writing.exception() is None:
            self._appended(stream, *writing.result())

    def _appended(self, stream: str, stored: list[LogRecord], bounds: LogBounds) -> list[LogRecord]:
        """Keep the head and the tail of ``stream`` after ``stored`` was committed, and wake its readers."""
        if not stored:
            return stored  # all duplicates
        self._heads[stream] = bounds
        tail = self._tails.setdefault(stream, collections.deque(maxlen=TAIL_RECORDS))
        if tail and tail[-1].id != stored[0].id - 1:
            tail.clear()  # never leave a hole in the cached run of ids
        tail.extend(stored)
        wakeup = self._wakeups.pop(stream, None)
        if wakeup is not None:
            wakeup.set()
        return stored

    async def producer(self, stream: str, producer: str) -> ProducerState:
        row = await self._run(
            lambda db: db.execute(
                "SELECT last_sequence, first_id, last_id, updated_at FROM log_producers "
                "WHERE stream = ? AND producer = ?",
                (stream, producer),
            ).fetchone()
        )
        return ProducerState(*row) if row else ProducerState(0, 0, 0, 0.0)

    async def forget_producers(self, stream: str, idle_since: float) -> int:
        return await self._run(
            lambda db: (
                db.execute(
                    "DELETE FROM log_producers WHERE stream = ? AND updated_at < ?", (stream, idle_since)
                ).rowcount
            )
        )

    async def read(self, stream: str, after_id: int, limit: int) -> list[LogRecord]:
        tail = self._tails.get(stream)
        if tail and after_id + 1 >= tail[0].id:
            bounds = self._heads[stream]
            if after_id < bounds.trimmed_through:
                raise TrimmedError(stream, after_id, bounds.trimmed_through)
            start = after_id + 1 - tail[0].id
            return [tail[i] for i in range(start, min(len(tail), start + limit))]

        def query(db: sqlite3.Connection) -> tuple[list[LogRecord], int]:
            # One read transaction, so the trim check and the rows agree.
            with _transaction(db, deferred=True):
                row = db.execute("SELECT trimmed_through FROM log_head WHERE stream = ?", (stream,)).fetchone()
                trimmed = row[0] if row else 0
                rows = db.execute(
                    "SELECT id, ts, key, kind, payload FROM log WHERE stream = ? AND id > ? ORDER BY id LIMIT ?",
                    (stream, after_id, limit),
                ).fetchall()
            return [LogRecord(*r) for r in rows], trimmed

        records, trimmed = await self._run(query)
        if after_id < trimmed:
            raise TrimmedError(stream, after_id, trimmed)
        return records

    async def read_before(self, stream: str, before_id: int, limit: int) -> list[LogRecord]:
        def query(db: sqlite3.Connection) -> list[LogRecord]:
            rows = db.execute(
                "SELECT id, ts, key, kind, payload FROM log WHERE stream = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (stream, before_id, limit),
            ).fetchall()
            return [LogRecord(*r) for r in rows]

        return await self._run(query)

    async def bounds(self, stream: str) -> LogBounds:
        cached = self._heads.get(stream)
        if cached is not None:
            return cached

        def query(db: sqlite3.Connection) -> LogBounds:
            row = db.execute("SELECT trimmed_through, last_id FROM log_head WHERE stream = ?", (stream,)).fetchone()
            return LogBounds(*row) if row else LogBounds(0, 0)

        bounds = await self._run(query)
        self._heads.setdefault(stream, bounds)
        return self._heads[stream]

    async def heads(self, prefix: str, after: str, limit: int) -> list[StreamHead]:
        def query(db: sqlite3.Connection) -> list[StreamHead]:
            rows = db.execute(
                "SELECT stream, trimmed_through, last_id, last_ts FROM log_head "
                "WHERE stream > ? AND substr(stream, 1, ?) = ? ORDER BY stream LIMIT ?",
                (max(after, prefix), len(prefix), prefix, limit),
            ).fetchall()
            return [StreamHead(name, LogBounds(trimmed, last), ts) for name, trimmed, last, ts in rows]

        return await self._run(query)

    async def position_before(self, stream: str, timestamp: float) -> int:
        def query(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT MAX(id) FROM log WHERE stream = ? AND ts < ?", (stream, timestamp)).fetchone()
            if row[0] is not None:
                return int(row[0])
            head = db.execute("SELECT trimmed_through FROM log_head WHERE stream = ?", (stream,)).fetchone()
            return int(head[0]) if head else 0

        return await self._run(query)

    async def wait_for(self, stream: str, after_id: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (await self.bounds(stream)).last_id <= after_id:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._readers_released:
                return False
            wakeup = self._wakeups.setdefault(stream, asyncio.Event())
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def release_readers(self) -> None:
        self._readers_released = True
        for wakeup in self._wakeups.values():
            wakeup.set()
        self._wakeups.clear()

    async def trim(self, stream: str, *, older_than: float | None = None, keep_last: int | None = None) -> int:
        def delete(db: sqlite3.Connection) -> tuple[int, LogBounds | None]:
            with _transaction(db):
                row = db.execute("SELECT last_id, trimmed_through FROM log_head WHERE stream = ?", (stream,)).fetchone()
                if row is None:
                    return 0, None
                last_id, trimmed = row
                cut = trimmed
                if keep_last is not None:
                    cut = max(cut, last_id - keep_last)
                if older_than is not None:
                    newest_old = db.execute(
                        "SELECT MAX(id) FROM log WHERE stream = ? AND ts < ?", (stream, older_than)
                    ).fetchone()[0]
                    cut = max(cut, newest_old or 0)
                if cut == trimmed:
                    return 0, LogBounds(trimmed, last_id)
                removed = db.execute("DELETE FROM log WHERE stream = ? AND id <= ?", (stream, cut)).rowcount
                db.execute("UPDATE log_head SET trimmed_through = ? WHERE stream = ?", (cut, stream))
                return removed, LogBounds(cut, last_id)

        removed, bounds = await self._run(delete)
        if bounds is not None:
            self._heads[stream] = bounds
            tail = self._tails.get(stream)
            while tail and tail[0].id <= bounds.trimmed_through:
                tail.popleft()
        return removed

    async def drop(self, stream: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            with _transaction(db):
                for table in ("log", "log_head", "log_producers"):
                    db.execute(f"DELETE FROM {table} WHERE stream = ?", (stream,))

        await self._run(delete)
        self._heads.pop(stream, None)
        self._tails.pop(stream, None)

    async def kind_counts(self, stream: str) -> dict[str, KindCount]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT kind, COUNT(*), COUNT(DISTINCT key) FROM log WHERE stream = ? GROUP BY kind", (stream,)
            ).fetchall()
        )
        return {kind: KindCount(records, keys) for kind, records, keys in rows}

    # --- MetadataStore --------------------------------------------------------

    async def put_batch(self, record: BatchRecord) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.batch_id,
                    record.owner,
                    record.source,
                    record.created_at,
                    record.updated_at,
                    record.completed_at,
                    record.summary,
                ),
            )
        )

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = await self._run(lambda db: db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone())
        return BatchRecord(*row) if row else None

    async def list_batches(self, limit: int, offset: int = 0, *, owner: str | None = None) -> list[BatchRecord]:
        where, args = ("WHERE owner = ? ", (owner,)) if owner is not None else ("", ())
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT * FROM batches {where}ORDER BY created_at DESC, batch_id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        )
        return [BatchRecord(*row) for row in rows]

    async def batch_ids_with_prefix(
        self, prefix: str, limit: int, *, owner: str | None = None
    ) -> tuple[list[str], int]:
        where, args = ("owner = ?", (owner,)) if owner is not None else ("1", ())
        return await self._ids_with_prefix("batches", "batch_id", prefix, limit, where, args)

    async def delete_batch(self, batch_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,)))

    async def batches_idle_since(self, before: float) -> list[BatchRecord]:
        rows = await self._run(
            lambda db: db.execute("SELECT * FROM batches WHERE updated_at < ?", (before,)).fetchall()
        )
        return [BatchRecord(*row) for row in rows]

    async def put_file(self, record: FileRecord) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.file_id,
                    record.filename,
                    record.size,
                    record.content_type,
                    record.sha256,
                    record.created_at,
                    record.owner,
                ),
            )
        )

    async def get_file(self, file_id: str) -> FileRecord | None:
        row = await self._run(lambda db: db.execute("SELECT * FROM files WHERE file_id = ?", (file_id,)).fetchone())
        return FileRecord(*row) if row else None

    async def list_files(self, limit: int, offset: int = 0, *, visible_to: str | None = None) -> list[FileRecord]:
        if visible_to is None:
            query, args = "SELECT * FROM files ORDER BY created_at DESC, file_id LIMIT ? OFFSET ?", (limit, offset)
        else:
            query = (
                f"SELECT * FROM files WHERE owner = ? OR file_id IN ({_SHARED_WITH}) "
                "ORDER BY created_at DESC, file_id LIMIT ? OFFSET ?"
            )
            args = (visible_to, visible_to, limit, offset)  # type: ignore[assignment]
        rows = await self._run(lambda db: db.execute(query, args).fetchall())
        return [FileRecord(*row) for row in rows]

    async def file_ids_with_prefix(
        self, prefix: str, limit: int, *, visible_to: str | None = None
    ) -> tuple[list[str], int]:
        where: str
        args: tuple[str, ...]
        if visible_to is None:
            where, args = "1", ()
        else:
            where, args = f"(owner = ? OR file_id IN ({_SHARED_WITH}))", (visible_to, visible_to)
        return await self._ids_with_prefix("files", "file_id", prefix, limit, where, args)

    async def _ids_with_prefix(
        self, table: str, column: str, prefix: str, limit: int, where: str, args: tuple[str, ...]
    ) -> tuple[list[str], int]:
        """``column``'s values in ``table`` that begin with ``prefix`` and pass ``where``: at most ``limit``,
        ascending, and their count."""
        # A range of the primary key's index (text compares by UTF-8 bytes, and U+10FFFF encodes highest);
        # substr() then keeps exactly the values that begin with the prefix.
        condition = f"{column} >= ? AND {column} < ? AND substr({column}, 1, ?) = ? AND {where}"
        bounds = (prefix, prefix + "\U0010ffff", len(prefix), prefix, *args)

        def query(db: sqlite3.Connection) -> tuple[list[str], int]:
            ids = db.execute(
                f"SELECT {column} FROM {table} WHERE {condition} ORDER BY {column} LIMIT ?", (*bounds, limit)
            ).fetchall()
            (total,) = db.execute(f"SELECT COUNT(*) FROM {table} WHERE {condition}", bounds).fetchone()
            return [row[0] for row in ids], int(total)

        return await self._run(query)

    async def file_visible_to(self, record: FileRecord, user: str) -> bool:
        if record.owner == user:
            return True
        row = await self._run(
            lambda db: db.execute(
                f"SELECT 1 FROM ({_SHARED_WITH}) WHERE file_id = ?", (user, record.file_id)
            ).fetchone()
        )
        return row is not None

    async def add_room_member(self, room_id: str, user: str) -> None:
        await self._run(lambda db: db.execute("INSERT OR IGNORE INTO room_members VALUES (?, ?)", (room_id, user)))

    async def share_file(self, file_id: str, room_id: str) -> None:
        await self._run(lambda db: db.execute("INSERT OR IGNORE INTO file_shares VALUES (?, ?)", (file_id, room_id)))

    async def find_file(self, filename: str, sha256: str, size: int, owner: str) -> FileRecord | None:
        return await self._run(lambda db: _find_file(db, filename, sha256, size, owner))

    async def delete_file(self, file_id: str) -> FileRecord | None:
        def delete(db: sqlite3.Connection) -> FileRecord | None:
            with _transaction(db):
                row = db.execute("SELECT * FROM files WHERE file_id = ?", (file_id,)).fetchone()
                db.execute("DELETE FROM files WHERE file_id = ?", (file_id,))
            return FileRecord(*row) if row else None

        return await self._run(delete)

    async def put_upload(self, record: UploadRecord) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.upload_id,
                    record.filename,
                    record.total_size,
                    record.content_type,
                    record.sha256,
                    record.created_at,
                    record.expires_at,
                    record.owner,
                ),
            )
        )

    async def start_upload(self, record: UploadRecord) -> bool:
        return await self._run(
            lambda db: (
                db.execute(
                    "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id) DO NOTHING",
                    dataclasses.astuple(record),
                ).rowcount
                == 1
            )
        )

    async def finish_upload(self, record: FileRecord, upload_id: str) -> FileRecord:
        def finish(db: sqlite3.Connection) -> FileRecord:
            with _transaction(db):
                stored = _store_file(db, record)
                db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
            return stored

        return await self._run(finish)

    async def store_files(self, records: Sequence[FileRecord]) -> list[FileRecord]:
        def store(db: sqlite3.Connection) -> list[FileRecord]:
            with _transaction(db):
                return [_store_file(db, record) for record in records]

        return await self._run(store)

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = await self._run(
            lambda db: db.execute("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
        )
        return UploadRecord(*row) if row else None

    async def delete_upload(self, upload_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,)))

    async def expired_uploads(self, now: float) -> list[UploadRecord]:
        rows = await self._run(lambda db: db.execute("SELECT * FROM uploads WHERE expires_at < ?", (now,)).fetchall())
        return [UploadRecord(*row) for row in rows]


def _store_file(db: sqlite3.Connection, record: FileRecord) -> FileRecord:
    """(In a transaction.) Insert ``record`` unless a file of its owner, name and content is stored already;
    returns what is stored."""
    existing = _find_file(db, record.filename, record.sha256, record.size, record.owner)
    if existing is None:
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", dataclasses.astuple(record))
    return existing or record


def _find_file(db: sqlite3.Connection, filename: str, sha256: str, size: int, owner: str) -> FileRecord | None:
    """The oldest stored file of this owner, name and content, or None."""
    row = db.execute(
        "SELECT * FROM files WHERE sha256 = ? AND filename = ? AND size = ? AND owner = ? ORDER BY created_at LIMIT 1",
        (sha256, filename, size, owner),
    ).fetchone()
    return FileRecord(*row) if row else None


#: SQLite's result code for a write that found the disk (or max_page_count) full.
_SQLITE_FULL = 13


def _is_full(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed because the disk is full."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; 3.10 has only the message
    return code == _SQLITE_FULL if code is not None else str(exc) == "database or disk is full"


class _Producers:
    """The producers of one append, inside its transaction: which records are new, then their new state."""

    def __init__(self, db: sqlite3.Connection, stream: str) -> None:
        self._db = db
        self._stream = stream
        self._states: dict[str, list[int]] = {}  # producer -> [last_sequence, first_id, last_id]

    def _state(self, producer: str) -> list[int]:
        state = self._states.get(producer)
        if state is None:
            row = self._db.execute(
                "SELECT last_sequence, first_id, last_id FROM log_producers WHERE stream = ? AND producer = ?",
                (self._stream, producer),
            ).fetchone()
            state = self._states[producer] = list(row) if row else [0, 0, 0]
        return state

    def new_records(self, records: Sequence[NewRecord]) -> list[NewRecord]:
        """``records`` without the duplicates.

        Raises:
            SequenceGapError: a record skips ahead of its producer's next sequence.
        """
        kept = []
        for index, record in enumerate(records):
            if record.producer:
                state = self._state(record.producer)
                if record.sequence <= state[0]:
                    continue  # stored already
                if record.sequence != state[0] + 1:
                    raise SequenceGapError(self._stream, record.producer, record.sequence, state[0] + 1, index)
                state[0] = record.sequence
            kept.append(record)
        return kept

    def save(self, kept: Sequence[NewRecord], stored: Sequence[LogRecord], now: float) -> None:
        """Write the producers' state after ``kept`` was stored as ``stored`` (also when all were duplicates:
        an active producer is not idle)."""
        for new, record in zip(kept, stored, strict=True):
            if new.producer:
                state = self._states[new.producer]
                state[1] = state[1] or record.id
                state[2] = record.id
        self._db.executemany(
            "INSERT INTO log_producers (stream, producer, last_sequence, first_id, last_id, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream, producer) DO UPDATE SET "
            "last_sequence = excluded.last_sequence, first_id = excluded.first_id, last_id = excluded.last_id, "
            "updated_at = excluded.updated_at",
            [(self._stream, producer, *state, now) for producer, state in self._states.items()],
        )


class _transaction:
    """``BEGIN IMMEDIATE`` (or deferred) ... ``COMMIT``/``ROLLBACK`` on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection, *, deferred: bool = False) -> None:
        self._db = db
        self._begin = "BEGIN" if deferred else "BEGIN IMMEDIATE"

    def __enter__(self) -> None:
        self._db.execute(self._begin)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite ends the transaction itself on some errors (a full disk): a ROLLBACK then would
        # fail and hide the error being raised.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
