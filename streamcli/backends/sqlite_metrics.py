"""The ``MetricStore`` of the embedded backend: tables of the SQLite database, mixed into ``SqliteStore``.

A series' row holds its all-time aggregate (kept for ever); ``metric_minutes``
holds one per minute it received samples in (for ``--since`` and trends; those
older than ``serve --metric-retention`` are deleted); ``metric_pushes`` how far
each resumable push is held. A flush merges into all three in one
transaction, so a push's position never runs ahead of (or behind) what it
added.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from streamcli.backends.base import MetricDelta, MetricSeries, PushMark, StoredMetric

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_series (
    series_id  INTEGER PRIMARY KEY,
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    overflow   INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    aggregate  BLOB,
    UNIQUE (owner, name, labels)
);
CREATE TABLE IF NOT EXISTS metric_minutes (
    series_id INTEGER NOT NULL,
    minute    INTEGER NOT NULL,
    aggregate BLOB NOT NULL,
    PRIMARY KEY (series_id, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_minutes_by_minute ON metric_minutes (minute);
CREATE TABLE IF NOT EXISTS metric_pushes (
    owner      TEXT NOT NULL,
    push_id    TEXT NOT NULL,
    next_index INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (owner, push_id)
) WITHOUT ROWID;
"""
#: Series ids per query (SQLite's limit of host parameters is 32,766 in recent versions, 999 in old ones).
_CHUNK = 900


class SqliteMetrics:
    """``MetricStore`` over the database of the ``SqliteStore`` it is mixed into (its ``_run``)."""

    _ordinary = -1  # ordinary series in the table (-1: not counted yet)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def metric_series(self, after_id: int = 0) -> list[MetricSeries]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT series_id, owner, name, labels, overflow FROM metric_series WHERE series_id > ? "
                "ORDER BY series_id",
                (after_id,),
            ).fetchall()
        )
        return [MetricSeries(i, owner, name, labels, bool(overflow)) for i, owner, name, labels, overflow in rows]

    async def add_metric_series(
        self, owner: str, name: str, labels: str, overflow: bool, max_ordinary: int
    ) -> MetricSeries | None:
        from streamcli.backends.sqlite import _transaction

        def add(db: sqlite3.Connection) -> MetricSeries | None:
            with _transaction(db):
                row = db.execute(
                    "SELECT series_id FROM metric_series WHERE owner = ? AND name = ? AND labels = ?",
                    (owner, name, labels),
                ).fetchone()
                if row is None:
                    if not overflow and self._ordinary_series(db) >= max_ordinary:
                        return None
                    # (An INTEGER PRIMARY KEY given NULL is one above the largest: ids increase.)
                    cursor = db.execute(
                        "INSERT INTO metric_series VALUES (NULL, ?, ?, ?, ?, ?, NULL)",
                        (owner, name, labels, int(overflow), time.time()),
                    )
                    row = (cursor.lastrowid,)
                    self._ordinary += not overflow
                return MetricSeries(int(row[0]), owner, name, labels, overflow)

        return await self._run(add)

    def _ordinary_series(self, db: sqlite3.Connection) -> int:
        """How many ordinary series the table holds (counted once: this process is the database's only
        writer, the data dir's lock sees to it)."""
        if self._ordinary < 0:
            self._ordinary = db.execute("SELECT COUNT(*) FROM metric_series WHERE overflow = 0").fetchone()[0]
        return self._ordinary

    async def merge_metrics(
        self,
        deltas: Sequence[MetricDelta],
        merge: Callable[[bytes, bytes], bytes],
        push: PushMark | None = None,
    ) -> None:
        from streamcli.backends.sqlite import _transaction

        def write(db: sqlite3.Connection) -> None:
            now = time.time()
            with _transaction(db):
                for delta in deltas:
                    row = db.execute(
                        "SELECT aggregate FROM metric_series WHERE series_id = ?", (delta.series_id,)
                    ).fetchone()
                    total = merge(row[0], delta.total) if row and row[0] is not None else delta.total
                    db.execute(
                        "UPDATE metric_series SET aggregate = ?, updated_at = ? WHERE series_id = ?",
                        (total, now, delta.series_id),
                    )
                    for minute, aggregate in delta.minutes:
                        row = db.execute(
                            "SELECT aggregate FROM metric_minutes WHERE series_id = ? AND minute = ?",
                            (delta.series_id, minute),
                        ).fetchone()
                        db.execute(
                            "INSERT OR REPLACE INTO metric_minutes VALUES (?, ?, ?)",
                            (delta.series_id, minute, merge(row[0], aggregate) if row else aggregate),
                        )
                if push is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO metric_pushes VALUES (?, ?, ?, ?)",
                        (push.owner, push.push_id, push.next_index, now),
                    )

        await self._run(write)

    async def stored_metrics(self, series_ids: Sequence[int], since_minute: int | None) -> dict[int, StoredMetric]:
        def read(db: sqlite3.Connection) -> dict[int, StoredMetric]:
            found: dict[int, StoredMetric] = {}
            for start in range(0, len(series_ids), _CHUNK):
                chunk = list(series_ids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT series_id, updated_at, aggregate FROM metric_series WHERE series_id IN ({marks})", chunk
                ).fetchall()
                if since_minute is None:
                    found.update({i: StoredMetric(at, (agg,)) for i, at, agg in rows if agg is not None})
                    continue
                minutes: dict[int, tuple[list[bytes], list[int]]] = {}
                for i, minute, agg in db.execute(
                    f"SELECT series_id, minute, aggregate FROM metric_minutes WHERE series_id IN ({marks}) "
                    "AND minute >= ? ORDER BY series_id, minute",
                    (*chunk, since_minute),
                ):
                    held = minutes.setdefault(i, ([], []))
                    held[0].append(agg)
                    held[1].append(minute)
                found.update(
                    {
                        i: StoredMetric(at, tuple(minutes[i][0]), tuple(minutes[i][1]))
                        for i, at, _ in rows
                        if i in minutes
                    }
                )
            return found

        return await self._run(read)

    async def push_position(self, owner: str, push_id: str) -> int:
        row = await self._run(
            lambda db: db.execute(
                "SELECT next_index FROM metric_pushes WHERE owner = ? AND push_id = ?", (owner, push_id)
            ).fetchone()
        )
        return int(row[0]) if row else 0

    async def forget_pushes(self, before: float) -> int:
        cursor = await self._run(lambda db: db.execute("DELETE FROM metric_pushes WHERE updated_at < ?", (before,)))
        return cursor.rowcount

    async def forget_metric_minutes(self, before_minute: int) -> int:
        cursor = await self._run(lambda db: db.execute("DELETE FROM metric_minutes WHERE minute < ?", (before_minute,)))
        return cursor.rowcount
