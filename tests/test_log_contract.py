"""The storage contract, the same tests on every backend: the embedded store (SQLite) and Redis.

``store`` is each backend opened afresh (``open_backend``): its log and its metadata. What only one
backend does is tested in ``test_backend_embedded.py`` and ``test_backend_redis.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import time
from collections.abc import AsyncIterator

import pytest

from streamcli.backends.base import (
    BatchRecord,
    ConditionFailedError,
    FileRecord,
    LogBounds,
    LogRecord,
    NewRecord,
    ProducerState,
    SequenceGapError,
    TrimmedError,
    UploadRecord,
)
from streamcli.services.logs import Appender
from tests.support.stores import Store, open_store


def new(n: int, key: str = "k", kind: str = "event") -> NewRecord:
    return NewRecord(key=key, kind=kind, payload=f"payload-{n}".encode())


def batch(start: int, count: int) -> list[NewRecord]:
    return [new(n) for n in range(start, start + count)]


@pytest.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Store]:
    """Each backend, empty."""
    async with open_store(request, tmp_path) as opened:
        yield opened


# --- the log -------------------------------------------------------


async def test_ids_start_at_one_per_stream_and_are_contiguous(store: Store) -> None:
    first = await store.append("a", batch(1, 3))
    other = await store.append("b", batch(1, 2))
    second = await store.append("a", batch(4, 1))
    third = await store.append("a", batch(5, 4))
    assert [r.id for r in first] == [1, 2, 3]
    assert [r.id for r in other] == [1, 2]
    assert [r.id for r in second] == [4]
    assert [r.id for r in third] == [5, 6, 7, 8]
    stored = await store.read("a", 0, 100)
    assert [r.id for r in stored] == list(range(1, 9))
    assert [r.payload for r in stored] == [f"payload-{n}".encode() for n in range(1, 9)]
    assert await store.bounds("a") == LogBounds(0, 8)
    assert await store.bounds("b") == LogBounds(0, 2)


async def test_append_returns_what_read_returns(store: Store) -> None:
    records = [NewRecord("alice", "joined", b""), NewRecord("bob", "said", b"\x00\xffbinary")]
    appended = await store.append("room", records)
    assert await store.read("room", 0, 10) == appended
    assert [(r.key, r.kind, r.payload) for r in appended] == [
        ("alice", "joined", b""),
        ("bob", "said", b"\x00\xffbinary"),
    ]


async def test_a_conditional_append_happens_only_if_the_last_id_is_still_the_one_named(store: Store) -> None:
    assert [r.id for r in await store.append("doc", batch(1, 2), if_last_id=0)] == [1, 2]
    with pytest.raises(ConditionFailedError) as failed:
        await store.append("doc", batch(3, 1), if_last_id=1)  # a writer that had not seen record 2
    assert (failed.value.expected, failed.value.last_id) == (1, 2)
    assert (await store.bounds("doc")).last_id == 2
    assert [r.payload for r in await store.read("doc", 0, 10)] == [b"payload-1", b"payload-2"]
    assert [r.id for r in await store.append("doc", batch(3, 1), if_last_id=2)] == [3]


async def test_append_nothing_changes_nothing(store: Store) -> None:
    assert await store.append("s", []) == []
    assert await store.bounds("s") == LogBounds(0, 0)
    assert [r.id for r in await store.append("s", [new(1)])] == [1]


async def test_read_is_by_position_with_limit(store: Store) -> None:
    await store.append("s", batch(1, 10))
    assert [r.id for r in await store.read("s", 0, 3)] == [1, 2, 3]
    assert [r.id for r in await store.read("s", 3, 3)] == [4, 5, 6]
    assert [r.id for r in await store.read("s", 8, 100)] == [9, 10]
    assert await store.read("s", 10, 100) == []
    assert await store.read("s", 50, 100) == []
    assert await store.read("unknown", 0, 100) == []


async def test_read_before_reads_backwards_from_a_position(store: Store) -> None:
    await store.append("s", batch(1, 10))
    assert [r.id for r in await store.read_before("s", 11, 3)] == [10, 9, 8]
    assert [r.id for r in await store.read_before("s", 8, 3)] == [7, 6, 5]
    assert [r.id for r in await store.read_before("s", 3, 100)] == [2, 1]
    assert [r.id for r in await store.read_before("s", 10**12, 2)] == [10, 9]
    assert [r.payload for r in await store.read_before("s", 2, 5)] == [b"payload-1"]
    for before, limit in ((1, 5), (0, 5), (5, 0)):
        assert await store.read_before("s", before, limit) == []
    assert await store.read_before("unknown", 100, 5) == []
    # Trimmed records are not read: only what is kept.
    await store.trim("s", keep_last=4)
    assert [r.id for r in await store.read_before("s", 11, 100)] == [10, 9, 8, 7]
    assert await store.read_before("s", 7, 100) == []


async def test_bounds_of_an_unknown_stream_are_empty(store: Store) -> None:
    assert await store.bounds("nothing") == LogBounds(trimmed_through=0, last_id=0)


async def test_timestamps_are_server_time_and_never_decrease(store: Store) -> None:
    before = time.time()
    stamps: list[float] = []
    for n in range(30):
        stamps.extend(r.timestamp for r in await store.append("s", batch(n, 1 + n % 3)))
    after = time.time()
    assert stamps == sorted(stamps)
    assert before <= stamps[0] <= stamps[-1] <= after
    assert [r.timestamp for r in await store.read("s", 0, 1000)] == stamps


async def test_position_before_a_time(store: Store) -> None:
    early = await store.append("s", batch(1, 3))
    await asyncio.sleep(0.01)
    late = await store.append("s", batch(4, 2))
    assert early[-1].timestamp < late[0].timestamp  # precondition of the lookups below
    assert await store.position_before("s", early[0].timestamp) == 0
    assert await store.position_before("s", late[0].timestamp) == 3
    assert await store.position_before("s", late[-1].timestamp + 60) == 5
    assert await store.position_before("unknown", time.time()) == 0
    # Records appended at or after the time come after the returned position.
    position = await store.position_before("s", late[0].timestamp)
    assert [r.id for r in await store.read("s", position, 10)] == [4, 5]


async def test_position_before_a_trimmed_time_is_the_trim_point(store: Store) -> None:
    early = await store.append("s", batch(1, 3))
    await asyncio.sleep(0.01)
    late = await store.append("s", batch(4, 2))
    assert await store.trim("s", keep_last=2) == 3
    assert await store.position_before("s", early[0].timestamp) == 3
    assert await store.position_before("s", late[0].timestamp) == 3
    assert await store.position_before("s", late[0].timestamp + 60) == 5
    # The returned position is readable, not trimmed.
    assert [r.id for r in await store.read("s", 3, 10)] == [4, 5]


async def test_trim_keep_last_and_reading_a_trimmed_position(store: Store) -> None:
    await store.append("s", batch(1, 10))
    assert await store.trim("s", keep_last=3) == 7
    assert await store.bounds("s") == LogBounds(trimmed_through=7, last_id=10)
    assert [r.id for r in await store.read("s", 7, 100)] == [8, 9, 10]
    assert [r.id for r in await store.read("s", 8, 100)] == [9, 10]
    for position in (0, 3, 6):
        with pytest.raises(TrimmedError) as caught:
            await store.read("s", position, 100)
        assert caught.value.trimmed_through == 7
    # Keeping more than the stream holds removes nothing more.
    assert await store.trim("s", keep_last=3) == 0
    assert await store.trim("s", keep_last=100) == 0
    assert await store.bounds("s") == LogBounds(7, 10)


async def test_trim_older_than(store: Store) -> None:
    old = await store.append("s", batch(1, 4))
    await asyncio.sleep(0.01)
    young = await store.append("s", batch(5, 2))
    assert old[-1].timestamp < young[0].timestamp
    assert await store.trim("s", older_than=old[0].timestamp) == 0  # strictly before
    assert await store.trim("s", older_than=young[0].timestamp) == 4
    assert await store.bounds("s") == LogBounds(4, 6)
    assert await store.read("s", 4, 100) == young
    with pytest.raises(TrimmedError) as caught:
        await store.read("s", 0, 100)
    assert caught.value.trimmed_through == 4
    assert await store.trim("s", older_than=young[0].timestamp) == 0
    assert await store.trim("s", older_than=young[-1].timestamp + 1) == 2
    assert await store.bounds("s") == LogBounds(6, 6)
    assert await store.read("s", 6, 100) == []


async def test_trim_with_both_rules_cuts_at_the_further_one(store: Store) -> None:
    old = await store.append("s", batch(1, 2))
    await asyncio.sleep(0.01)
    await store.append("s", batch(3, 6))
    assert await store.trim("s", older_than=old[-1].timestamp + 0.001, keep_last=3) == 5
    assert await store.bounds("s") == LogBounds(5, 8)
    assert await store.trim("s", older_than=time.time() + 60, keep_last=2) == 3
    assert await store.bounds("s") == LogBounds(8, 8)


async def test_trim_only_touches_its_stream(store: Store) -> None:
    await store.append("a", batch(1, 5))
    await store.append("b", batch(1, 5))
    assert await store.trim("a", keep_last=1) == 4
    assert await store.bounds("b") == LogBounds(0, 5)
    assert [r.id for r in await store.read("b", 0, 100)] == [1, 2, 3, 4, 5]


async def test_trim_unknown_stream_or_no_rule_removes_nothing(store: Store) -> None:
    assert await store.trim("unknown", keep_last=0) == 0
    assert await store.bounds("unknown") == LogBounds(0, 0)
    await store.append("s", batch(1, 3))
    assert await store.trim("s") == 0
    assert [r.id for r in await store.read("s", 0, 100)] == [1, 2, 3]


async def test_ids_continue_after_trimming_everything(store: Store) -> None:
    before = await store.append("s", batch(1, 4))
    assert await store.trim("s", keep_last=0) == 4
    assert await store.bounds("s") == LogBounds(4, 4)
    assert await store.read("s", 4, 100) == []
    after = await store.append("s", [new(5)])
    assert [r.id for r in after] == [5]
    assert after[0].timestamp >= before[-1].timestamp
    assert await store.bounds("s") == LogBounds(4, 5)
    assert await store.read("s", 4, 100) == after


async def test_wait_for_returns_at_once_when_a_record_is_there(store: Store) -> None:
    await store.append("s", batch(1, 2))
    started = time.monotonic()
    assert await store.wait_for("s", 1, timeout=30) is True
    assert await store.wait_for("s", 0, timeout=0) is True
    assert time.monotonic() - started < 10  # not the 30 s timeout


async def test_wait_for_times_out_with_false(store: Store) -> None:
    await store.append("s", batch(1, 2))
    started = time.monotonic()
    assert await store.wait_for("s", 2, timeout=0.05) is False
    assert await store.wait_for("empty", 0, timeout=0.05) is False
    assert await store.wait_for("s", 2, timeout=0) is False
    assert time.monotonic() - started >= 0.08


async def test_wait_for_wakes_on_append_from_another_task(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for("s", 0, timeout=30))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # it is really waiting
    started = time.monotonic()
    await store.append("s", [new(1)])
    assert await asyncio.wait_for(waiter, 20) is True
    assert time.monotonic() - started < 10  # woken by the append, not the 30 s timeout


async def test_wait_for_wakes_every_waiter_of_the_stream(store: Store) -> None:
    waiters = [asyncio.create_task(store.wait_for("s", 0, timeout=5)) for _ in range(3)]
    await asyncio.sleep(0.02)
    assert not any(w.done() for w in waiters)
    await store.append("s", [new(1)])
    assert await asyncio.wait_for(asyncio.gather(*waiters), 2) == [True, True, True]


async def test_wait_for_keeps_waiting_until_past_its_position(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for("s", 2, timeout=5))
    await asyncio.sleep(0.02)
    await store.append("s", batch(1, 2))  # ids 1 and 2: not past position 2
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await store.append("s", [new(3)])
    assert await asyncio.wait_for(waiter, 2) is True


async def test_wait_for_is_not_satisfied_by_another_stream(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for("s", 0, timeout=0.2))
    await asyncio.sleep(0.02)
    await store.append("other", batch(1, 3))
    assert await asyncio.wait_for(waiter, 2) is False
    assert await store.bounds("s") == LogBounds(0, 0)


# --- idempotent appends (producers) -------------------------------------


def produced(producer: str, first: int, count: int) -> list[NewRecord]:
    """Records ``first`` .. ``first + count - 1`` of ``producer``'s sequence."""
    return [
        NewRecord("k", "event", f"{producer}-{n}".encode(), producer=producer, sequence=n)
        for n in range(first, first + count)
    ]


async def test_a_producers_records_are_stored_once_per_sequence(store: Store) -> None:
    first = await store.append("s", produced("p", 1, 3))
    again = await store.append("s", produced("p", 2, 4))  # 2 and 3 again, then 4 and 5
    only_old = await store.append("s", produced("p", 1, 5))
    assert [r.payload for r in first] == [b"p-1", b"p-2", b"p-3"]
    assert [(r.id, r.payload) for r in again] == [(4, b"p-4"), (5, b"p-5")]
    assert only_old == []
    assert [r.payload for r in await store.read("s", 0, 100)] == [f"p-{n}".encode() for n in range(1, 6)]
    state = await store.producer("s", "p")
    assert (state.last_sequence, state.first_id, state.last_id) == (5, 1, 5)
    assert (await store.bounds("s")).last_id == 5


async def test_a_gap_in_a_sequence_appends_nothing_and_says_where(store: Store) -> None:
    await store.append("s", produced("p", 1, 2))
    mixed = [new(0), *produced("p", 3, 2), *produced("p", 6, 1)]  # 3 and 4 follow 2; 6 skips 5
    with pytest.raises(SequenceGapError) as caught:
        await store.append("s", mixed)
    assert (caught.value.producer, caught.value.sequence, caught.value.expected, caught.value.index) == ("p", 6, 5, 3)
    assert (await store.producer("s", "p")).last_sequence == 2
    assert [r.payload for r in await store.read("s", 0, 100)] == [b"p-1", b"p-2"]
    # What came before the gap can be appended on its own.
    assert [r.id for r in await store.append("s", mixed[: caught.value.index])] == [3, 4, 5]


async def test_an_unknown_producer_starts_at_one(store: Store) -> None:
    with pytest.raises(SequenceGapError) as caught:
        await store.append("s", produced("new", 2, 1))
    assert caught.value.expected == 1
    assert await store.read("s", 0, 10) == []
    assert await store.producer("s", "new") == ProducerState(0, 0, 0, 0.0)


async def test_producers_are_per_stream_and_independent_of_records_without_one(store: Store) -> None:
    await store.append("a", produced("p", 1, 2))
    on_b = await store.append("b", produced("p", 1, 2))  # another stream: not duplicates
    plain = await store.append("a", [new(1), new(1)])  # no producer: always stored
    other = await store.append("a", [*produced("q", 1, 1), *produced("p", 3, 1), *produced("q", 1, 1)])
    assert len(on_b) == 2 and len(plain) == 2
    assert [r.payload for r in other] == [b"q-1", b"p-3"]
    assert [(await store.producer("a", name)).last_sequence for name in ("p", "q")] == [3, 1]


# --- Appender: batched appends on the real store -----------------------------------


class Recorder:
    """The appender's callbacks, noting what each append stored and what failed."""

    def __init__(self) -> None:
        self.appends: list[list[tuple[int, int]]] = []  # per append: (id, tag)
        self.failed: list[tuple[str, list[int]]] = []

    async def stored(self, records: list[LogRecord], tags: list[int]) -> None:
        self.appends.append([(r.id, tag) for r, tag in zip(records, tags, strict=True)])

    def on_failed(self, exc: BaseException, tags: list[int]) -> None:
        self.failed.append((str(exc), tags))


async def test_appender_posts_without_waiting_and_batches_what_queued(store: Store) -> None:
    seen = Recorder()
    appender: Appender[int] = Appender(store.log, "s", seen.stored, seen.on_failed)
    for n in range(300):
        await appender.post(new(n), n)
    assert await store.bounds("s") == LogBounds(0, 0)  # nothing waited for the disk yet
    await appender.stored()
    stored = [pair for append in seen.appends for pair in append]
    assert stored == [(n + 1, n) for n in range(300)]  # posting order, ids contiguous, tags matched
    assert len(seen.appends) < 10  # batched, not one append per record
    records = await store.read("s", 0, 1000)
    assert [r.payload for r in records] == [new(n).payload for n in range(300)]


async def test_appender_makes_posters_wait_beyond_its_limit(store: Store) -> None:
    seen = Recorder()
    appender: Appender[int] = Appender(store.log, "s", seen.stored, seen.on_failed, limit=10)
    for n in range(25):  # the 11th post waits until a batch has been taken
        await appender.post(new(n), n)
    assert (await store.bounds("s")).last_id >= 10
    await appender.stored()
    assert [tag for append in seen.appends for _, tag in append] == list(range(25))


# --- metadata --------------------------------------------------------


def file_record(file_id: str, created_at: float, size: int = 10) -> FileRecord:
    return FileRecord(file_id, f"{file_id}.txt", size, "text/plain", "a" * 64, created_at)


async def test_files_put_get_and_replace(store: Store) -> None:
    assert await store.get_file("nope") is None
    record = file_record("f1", 1000.5)
    await store.put_file(record)
    assert await store.get_file("f1") == record
    replaced = FileRecord("f1", "renamed.bin", 99, "application/octet-stream", "b" * 64, 2000.0)
    await store.put_file(replaced)
    assert await store.get_file("f1") == replaced
    assert await store.list_files(10) == [replaced]


async def test_list_files_newest_first_with_limit_and_offset(store: Store) -> None:
    for file_id, created_at in [("b", 20.0), ("d", 40.0), ("a", 10.0), ("c", 30.0)]:
        await store.put_file(file_record(file_id, created_at))
    assert [f.file_id for f in await store.list_files(10)] == ["d", "c", "b", "a"]
    assert [f.file_id for f in await store.list_files(2)] == ["d", "c"]
    assert [f.file_id for f in await store.list_files(2, offset=2)] == ["b", "a"]
    assert [f.file_id for f in await store.list_files(10, offset=3)] == ["a"]
    assert await store.list_files(10, offset=4) == []
    assert await store.list_files(0) == []


async def test_delete_file_returns_the_record_once(store: Store) -> None:
    keep = file_record("keep", 1.0)
    gone = file_record("gone", 2.0)
    await store.put_file(keep)
    await store.put_file(gone)
    assert await store.delete_file("gone") == gone
    assert await store.get_file("gone") is None
    assert await store.delete_file("gone") is None
    assert await store.delete_file("never") is None
    assert await store.list_files(10) == [keep]


async def test_uploads_put_get_replace_delete(store: Store) -> None:
    assert await store.get_upload("u1") is None
    upload = UploadRecord("u1", "big.iso", 1 << 40, "application/x-iso9660-image", "c" * 64, 0, 5000.0)
    await store.put_upload(upload)
    assert await store.get_upload("u1") == upload
    progressed = UploadRecord("u1", "big.iso", 1 << 40, "application/x-iso9660-image", "c" * 64, 4096, 6000.0)
    await store.put_upload(progressed)
    assert await store.get_upload("u1") == progressed
    await store.delete_upload("u1")
    assert await store.get_upload("u1") is None
    await store.delete_upload("u1")  # idempotent
    await store.delete_upload("never")


async def test_expired_uploads_are_those_expiring_before_now(store: Store) -> None:
    for upload_id, expires_at in [("early", 100.0), ("edge", 200.0), ("late", 300.0)]:
        await store.put_upload(UploadRecord(upload_id, "x", -1, "", "", 0, expires_at))
    assert await store.expired_uploads(50.0) == []
    assert {u.upload_id for u in await store.expired_uploads(200.0)} == {"early"}
    assert {u.upload_id for u in await store.expired_uploads(200.5)} == {"early", "edge"}
    assert {u.upload_id for u in await store.expired_uploads(1e12)} == {"early", "edge", "late"}
    await store.delete_upload("early")
    assert {u.upload_id for u in await store.expired_uploads(1e12)} == {"edge", "late"}
    assert await store.expired_uploads(250.0) == [UploadRecord("edge", "x", -1, "", "", 0, 200.0)]


async def test_an_upload_starts_once_under_its_id(store: Store) -> None:
    upload = UploadRecord("u1", "a.txt", 10, "text/plain", "", 1.5, 5000.25, "alice")
    assert await store.start_upload(upload) is True
    assert await store.get_upload("u1") == upload
    other = UploadRecord("u1", "b.txt", 20, "", "", 2.0, 6000.0, "bob")
    assert await store.start_upload(other) is False  # the first one stays as it was
    assert await store.get_upload("u1") == upload
    assert await store.expired_uploads(5000.5) == [upload]
    starts = await asyncio.gather(*(store.start_upload(dataclasses.replace(upload, upload_id="u2")) for _ in range(5)))
    assert sorted(starts) == [False, False, False, False, True]


async def test_finishing_an_upload_stores_its_file_and_forgets_the_upload(store: Store) -> None:
    await store.start_upload(UploadRecord("u1", "a.txt", 10, "text/plain", "", 1.0, 5000.0, "alice"))
    record = FileRecord("f1", "a.txt", 10, "text/plain", "a" * 64, 2.0, "alice")
    assert await store.finish_upload(record, "u1") == record
    assert await store.get_file("f1") == record
    assert await store.get_upload("u1") is None
    assert await store.find_file("a.txt", "a" * 64, 10, "alice") == record
    assert [f.file_id for f in await store.list_files(10)] == ["f1"]


async def test_finishing_an_upload_of_a_file_stored_already_answers_that_file(store: Store) -> None:
    first = FileRecord("f1", "a.txt", 10, "text/plain", "a" * 64, 2.0, "alice")
    await store.put_file(first)
    for upload_id, owner, name in [("u1", "alice", "a.txt"), ("u2", "bob", "a.txt"), ("u3", "alice", "b.txt")]:
        await store.start_upload(UploadRecord(upload_id, name, 10, "", "", 1.0, 5000.0, owner))
    again = FileRecord("f2", "a.txt", 10, "text/plain", "a" * 64, 3.0, "alice")
    assert await store.finish_upload(again, "u1") == first  # same owner, name and content: nothing stored
    assert await store.get_file("f2") is None and await store.get_upload("u1") is None
    bobs = FileRecord("f3", "a.txt", 10, "text/plain", "a" * 64, 4.0, "bob")
    assert await store.finish_upload(bobs, "u2") == bobs  # another owner's
    renamed = FileRecord("f4", "b.txt", 10, "text/plain", "a" * 64, 5.0, "alice")
    assert await store.finish_upload(renamed, "u3") == renamed  # another name
    assert sorted(f.file_id for f in await store.list_files(10)) == ["f1", "f3", "f4"]
    assert await store.expired_uploads(1e12) == []


async def test_of_identical_uploads_finishing_at_once_one_file_is_stored(store: Store) -> None:
    records = [FileRecord(f"f{n}", "a.txt", 10, "", "a" * 64, 1.0 + n, "alice") for n in range(4)]
    for n in range(4):
        await store.start_upload(UploadRecord(f"u{n}", "a.txt", 10, "", "", 1.0, 5000.0, "alice"))
    answers = await asyncio.gather(*(store.finish_upload(r, f"u{n}") for n, r in enumerate(records)))
    stored = await store.list_files(10)
    assert len(stored) == 1 and answers == [stored[0]] * 4
    assert await store.expired_uploads(1e12) == []


async def test_files_visible_to_a_user_are_theirs_and_those_posted_in_their_rooms(store: Store) -> None:
    def owned(file_id: str, created_at: float, owner: str) -> FileRecord:
        return FileRecord(file_id, f"{file_id}.txt", 10, "text/plain", "a" * 64, created_at, owner)

    for record in [
        owned("a1", 1.0, "alice"),
        owned("b1", 2.0, "bob"),
        owned("b2", 3.0, "bob"),
        owned("a2", 4.0, "alice"),
    ]:
        await store.put_file(record)
    await store.add_room_member("room", "alice")
    await store.share_file("b1", "room")
    await store.share_file("b2", "elsewhere")
    assert [f.file_id for f in await store.list_files(10, visible_to="alice")] == ["a2", "b1", "a1"]
    assert [f.file_id for f in await store.list_files(1, offset=1, visible_to="alice")] == ["b1"]
    assert [f.file_id for f in await store.list_files(10, visible_to="bob")] == ["b2", "b1"]
    assert await store.file_visible_to(owned("b1", 2.0, "bob"), "alice") is True
    assert await store.file_visible_to(owned("b2", 3.0, "bob"), "alice") is False
    found = await store.find_file("b1.txt", "a" * 64, 10, "bob")
    assert found is not None and found.file_id == "b1"
    assert await store.find_file("b1.txt", "a" * 64, 10, "alice") is None


async def test_batches_newest_first_by_owner_and_idle_ones(store: Store) -> None:
    for batch_id, owner, created in [("x", "alice", 1.0), ("y", "bob", 2.0), ("z", "alice", 3.0)]:
        await store.put_batch(BatchRecord(batch_id, owner, "src", created, created + 10, 0.0, b"\x00summary"))
    assert [b.batch_id for b in await store.list_batches(10)] == ["z", "y", "x"]
    assert [b.batch_id for b in await store.list_batches(10, owner="alice")] == ["z", "x"]
    assert [b.batch_id for b in await store.list_batches(1, 1, owner="alice")] == ["x"]
    assert {b.batch_id for b in await store.batches_idle_since(12.5)} == {"x", "y"}
    got = await store.get_batch("y")
    assert got == BatchRecord("y", "bob", "src", 2.0, 12.0, 0.0, b"\x00summary")
    await store.delete_batch("y")
    assert await store.get_batch("y") is None
    assert [b.batch_id for b in await store.list_batches(10)] == ["z", "x"]


async def test_file_ids_with_a_prefix_ascending_counted_and_access_filtered(store: Store) -> None:
    for file_id, owner in [("abcd2", "bob"), ("abcd0", "alice"), ("abce0", "alice"), ("abcd1", "bob"), ("ab", "bob")]:
        await store.put_file(FileRecord(file_id, f"{file_id}.txt", 1, "text/plain", "a" * 64, 1.0, owner))
    await store.add_room_member("room", "alice")
    await store.share_file("abcd2", "room")
    assert await store.file_ids_with_prefix("abcd", 10) == (["abcd0", "abcd1", "abcd2"], 3)
    assert await store.file_ids_with_prefix("abcd", 2) == (["abcd0", "abcd1"], 3)
    assert await store.file_ids_with_prefix("ab", 10) == (["ab", "abcd0", "abcd1", "abcd2", "abce0"], 5)
    assert await store.file_ids_with_prefix("abcd1", 10) == (["abcd1"], 1)
    assert await store.file_ids_with_prefix("ABCD", 10) == ([], 0)
    assert await store.file_ids_with_prefix("abcd0x", 10) == ([], 0)
    # A user's: their own and those posted in rooms they joined (alice: not bob's abcd1).
    assert await store.file_ids_with_prefix("abcd", 10, visible_to="alice") == (["abcd0", "abcd2"], 2)
    assert await store.file_ids_with_prefix("abcd", 1, visible_to="alice") == (["abcd0"], 2)
    assert await store.file_ids_with_prefix("abcd", 10, visible_to="bob") == (["abcd1", "abcd2"], 2)
    assert await store.file_ids_with_prefix("abcd", 10, visible_to="carol") == ([], 0)
    await store.delete_file("abcd0")
    assert await store.file_ids_with_prefix("abcd", 10, visible_to="alice") == (["abcd2"], 1)
    assert await store.file_ids_with_prefix("abcd", 10) == (["abcd1", "abcd2"], 2)


async def test_batch_ids_with_a_prefix_ascending_counted_and_by_owner(store: Store) -> None:
    for batch_id, owner in [("bob/r2", "bob"), ("alice/r1", "alice"), ("alice/r2", "alice"), ("alice/s", "alice")]:
        await store.put_batch(BatchRecord(batch_id, owner, "src", 1.0, 1.0, 0.0, b""))
    assert await store.batch_ids_with_prefix("alice/r", 10) == (["alice/r1", "alice/r2"], 2)
    assert await store.batch_ids_with_prefix("alice/", 1) == (["alice/r1"], 3)
    assert await store.batch_ids_with_prefix("alice/", 10, owner="alice") == (["alice/r1", "alice/r2", "alice/s"], 3)
    assert await store.batch_ids_with_prefix("alice/", 10, owner="bob") == ([], 0)
    assert await store.batch_ids_with_prefix("bob/", 10, owner="bob") == (["bob/r2"], 1)
    await store.delete_batch("alice/r1")
    assert await store.batch_ids_with_prefix("alice/r", 10, owner="alice") == (["alice/r2"], 1)
