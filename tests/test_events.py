"""Events and notifications against the real server: hand-over, filters, trimming, heartbeats, slow readers."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.sqlite import SqliteStore
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.events import event_from_json, publish_events, tail_events
from streamcli.client.notifications import send_notification, tail_notifications
from streamcli.client.tail import TailOptions
from streamcli.errors import ConflictError, InvalidArgumentError
from streamcli.server.app import RunningServer
from streamcli.services.logs import Retention
from tests.support.servers import client, running_server

#: The tests that use ``server`` run on every backend (tests/conftest.py).
ON_EACH_BACKEND = True

R = TypeVar("R")

LOGIN, LOGOUT = pb.USER_EVENT_TYPE_LOGIN, pb.USER_EVENT_TYPE_LOGOUT


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


def event(user: str, kind: int = LOGIN, **data: object) -> pb.UserEvent:
    message = pb.UserEvent(user_id=user, type=kind)  # type: ignore[arg-type]
    if data:
        message.data.CopyFrom(event_from_json({"user_id": user, "type": "login", "data": data}).data)
    return message


def epoch() -> Timestamp:
    return Timestamp(seconds=1)


async def collect(stream: AsyncIterator[Sequence[R]]) -> list[R]:
    return [record async for batch in stream for record in batch]


async def test_publish_acknowledges_ids_and_tail_replays_with_data(conn: Connection) -> None:
    reply = await publish_events(conn, [event("alice", ip="10.0.0.1"), event("bob", LOGOUT)])
    assert (reply.count, reply.first_id, reply.last_id) == (2, 1, 2)
    history = await collect(
        tail_events(conn, user_id="", all_users=True, types=[], since=epoch(), options=TailOptions(follow=False))
    )
    assert [e.to_json()["type"] for e in history] == ["login", "logout"]
    assert history[0].to_json()["data"] == {"ip": "10.0.0.1"}
    assert history[0].timestamp.seconds > 0 and history[0].id == 1  # the server stamped it


async def test_history_then_live_has_no_gap_or_duplicate_at_the_hand_over(conn: Connection) -> None:
    await publish_events(conn, [event(f"user{n % 3}") for n in range(2000)])
    total = 4000

    async def publisher() -> None:
        # Keep appending while the reader replays, so appends land during the hand-over.
        for start in range(2000, total, 100):
            await publish_events(conn, [event(f"user{n % 3}") for n in range(start, start + 100)])
            await asyncio.sleep(0)

    reader = tail_events(
        conn, user_id="", all_users=True, types=[], since=epoch(), options=TailOptions(max_records=total)
    )
    task = asyncio.create_task(publisher())
    ids = [e.id for e in await asyncio.wait_for(collect(reader), 60)]
    await task
    assert ids == list(range(1, total + 1))


async def test_filters_by_user_and_type(conn: Connection) -> None:
    await publish_events(conn, [event("alice"), event("bob"), event("alice", LOGOUT), event("carol", LOGOUT)])

    async def tail(**kwargs: object) -> list[int]:
        options = TailOptions(follow=False)
        found = tail_events(conn, since=epoch(), options=options, **kwargs)  # type: ignore[arg-type]
        return [e.id for e in await collect(found)]

    assert await tail(user_id="alice", all_users=False, types=[]) == [1, 3]
    assert await tail(user_id="alice", all_users=False, types=[LOGOUT]) == [3]
    assert await tail(user_id="", all_users=True, types=[LOGOUT]) == [3, 4]


async def test_since_replays_from_that_time(conn: Connection) -> None:
    await publish_events(conn, [event("alice"), event("alice")])
    await asyncio.sleep(0.05)
    middle = Timestamp()
    middle.GetCurrentTime()
    await asyncio.sleep(0.05)
    await publish_events(conn, [event("alice", LOGOUT)])
    found = tail_events(
        conn, user_id="alice", all_users=False, types=[], since=middle, options=TailOptions(follow=False)
    )
    assert [e.id for e in await collect(found)] == [3]


async def test_resume_after_an_id_continues_exactly(conn: Connection) -> None:
    await publish_events(conn, [event("alice") for _ in range(5)])
    request = pb.StreamUserEventsRequest(user_id="alice", resume_after_id=3, no_follow=True)
    responses = [r async for r in conn.stub.StreamUserEvents(request)]
    assert [e.id for r in responses for e in r.events] == [4, 5]
    assert responses[-1].position == 5


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (pb.StreamUserEventsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "user_id is required"),
        (pb.StreamUserEventsRequest(user_id="a", all_users=True), grpc.StatusCode.INVALID_ARGUMENT, "not both"),
        (pb.StreamUserEventsRequest(user_id="a", event_types=[99]), grpc.StatusCode.INVALID_ARGUMENT, "type 99"),
        (
            pb.StreamUserEventsRequest(user_id="a", start_time=Timestamp(seconds=int(time.time()) + 3600)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "start_time is in the future",
        ),
        (pb.StreamUserEventsRequest(user_id="a", resume_after_id=50), grpc.StatusCode.OUT_OF_RANGE, "beyond the end"),
    ],
    ids=["no-user", "user-and-all", "unknown-type", "future-start", "resume-beyond-end"],
)
async def test_bad_tail_requests_get_precise_codes(
    conn: Connection, request_: pb.StreamUserEventsRequest, code: grpc.StatusCode, detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        _ = [r async for r in conn.stub.StreamUserEvents(request_)]
    assert failure.value.code() == code
    assert detail in failure.value.details()


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (pb.UserEvent(type=LOGIN), "user_id is required"),
        (pb.UserEvent(user_id="a"), "unknown event type 0"),
        (pb.UserEvent(user_id="mal\x1b[31mlory", type=LOGIN), "user_id has a control character"),
        (pb.UserEvent(user_id="two\nlines", type=LOGIN), "user_id has a control character"),
    ],
)
async def test_bad_events_are_refused_on_publish(conn: Connection, bad: pb.UserEvent, detail: str) -> None:
    with pytest.raises(InvalidArgumentError, match=detail):
        await publish_events(conn, [event("fine"), bad])


async def test_a_failed_append_is_internal_and_says_what_was_appended(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path) as server, client(server.address) as conn:
        await publish_events(conn, [event("alice")])
        store = server.backend.log
        assert isinstance(store, SqliteStore)

        async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
            yield pb.PublishEventsRequest(events=[event("alice"), event("alice")])
            while (await store.bounds("events")).last_id < 3:  # appended
                await asyncio.sleep(0.01)
            # The database may not grow any more: the next append fails as on a full disk.
            await store._run(lambda db: db.execute("PRAGMA max_page_count = 1"))
            yield pb.PublishEventsRequest(events=[event("alice", blob="x" * 100_000)])

        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await conn.stub.PublishEvents(requests())
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert failure.value.details() == (
            "could not append events: database or disk is full; "
            "the first 2 events of this stream were stored (ids 2-3), none after them"
        )
        assert failure.value.trailing_metadata() == (("stored-count", "2"), ("last-stored-id", "3"))
        history = tail_events(conn, user_id="alice", all_users=False, types=[], since=epoch(),
                              options=TailOptions(follow=False))  # fmt: skip
        assert [e.id for e in await collect(history)] == [1, 2, 3]


async def publish_raw(conn: Connection, *requests: pb.PublishEventsRequest) -> pb.PublishEventsResponse:
    """One PublishEvents stream of exactly ``requests``, through the generated stub."""

    async def stream() -> AsyncIterator[pb.PublishEventsRequest]:
        for request in requests:
            yield request

    response: pb.PublishEventsResponse = await conn.stub.PublishEvents(stream())
    return response


def numbered(producer: str, first: int, *users: str) -> pb.PublishEventsRequest:
    """A message of ``producer`` holding one event per user, numbered from ``first``."""
    return pb.PublishEventsRequest(producer_id=producer, first_sequence=first, events=[event(u) for u in users])


async def stored_users(conn: Connection) -> list[str]:
    history = tail_events(conn, user_id="", all_users=True, types=[], since=epoch(), options=TailOptions(follow=False))
    return [e.user_id for e in await collect(history)]


async def test_a_producers_re_sent_events_are_acknowledged_and_not_stored_twice(conn: Connection) -> None:
    first = await publish_raw(conn, numbered("p-1", 1, "e1", "e2"), numbered("p-1", 3, "e3"))
    # Re-sent after a lost acknowledgement: 2 and 3 again, then 4 and 5 for the first time.
    overlap = await publish_raw(conn, numbered("p-1", 2, "e2", "e3", "e4"), pb.PublishEventsRequest(
        first_sequence=5, events=[event("e5")]))  # fmt: skip
    again = await publish_raw(conn, numbered("p-1", 1, "e1", "e2", "e3", "e4", "e5"))
    assert (first.count, first.duplicates, first.last_sequence, first.first_id, first.last_id) == (3, 0, 3, 1, 3)
    assert (overlap.count, overlap.duplicates, overlap.last_sequence, overlap.first_id, overlap.last_id) == (
        2, 2, 5, 4, 5)  # fmt: skip
    assert (again.count, again.duplicates, again.last_sequence, again.first_id, again.last_id) == (0, 5, 5, 0, 0)
    # Whichever stream stored them, the producer's events are ids 1-5.
    assert (again.producer_first_id, again.producer_last_id) == (1, 5)
    assert await stored_users(conn) == ["e1", "e2", "e3", "e4", "e5"]


async def test_concurrent_streams_of_one_producer_store_each_event_once(conn: Connection) -> None:
    messages = [numbered("twice", 1 + 10 * n, *(f"u{10 * n + i}" for i in range(10))) for n in range(50)]
    replies = await asyncio.gather(publish_raw(conn, *messages), publish_raw(conn, *messages))
    assert sum(r.count for r in replies) == 500
    assert sum(r.duplicates for r in replies) == 500
    assert await stored_users(conn) == [f"u{n}" for n in range(500)]


async def test_a_stream_of_a_producer_without_events_says_how_far_it_is_stored(conn: Connection) -> None:
    unknown = await publish_raw(conn, pb.PublishEventsRequest(producer_id="asked"))
    await publish_raw(conn, numbered("asked", 1, "a", "b"))
    known = await publish_raw(conn, pb.PublishEventsRequest(producer_id="asked"))
    assert unknown.HasField("last_sequence") and unknown.last_sequence == 0
    assert (known.last_sequence, known.count, known.producer_first_id, known.producer_last_id) == (2, 0, 1, 2)


async def test_a_gap_in_a_producers_sequence_is_refused_with_the_next_expected(conn: Connection) -> None:
    await publish_raw(conn, numbered("gappy", 1, "a"))
    with pytest.raises(grpc.aio.AioRpcError) as gap:
        await publish_raw(conn, numbered("gappy", 2, "b", "c"), numbered("gappy", 5, "e"), numbered("gappy", 6, "f"))
    with pytest.raises(grpc.aio.AioRpcError) as new:
        await publish_raw(conn, numbered("fresh", 2, "x"))
    assert gap.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert gap.value.details() == (
        "event 2 (message 1): sequence 5 of producer 'gappy' skips ahead; the next the server expects is 4; "
        "the first 2 events of this stream were stored (ids 2-3), none after them"
    )
    assert gap.value.trailing_metadata() == (
        ("stored-count", "2"), ("last-stored-id", "3"), ("last-sequence", "3"), ("expected-sequence", "4"))  # fmt: skip
    assert new.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sequence 2 of producer 'fresh' skips ahead; the next the server expects is 1" in new.value.details()
    assert await stored_users(conn) == ["a", "b", "c"]


async def test_without_a_producer_every_event_is_stored_as_before(conn: Connection) -> None:
    message = pb.PublishEventsRequest(events=[event("same")])
    replies = [await publish_raw(conn, message, message), await publish_raw(conn, message)]
    assert [(r.count, r.first_id, r.last_id, r.duplicates) for r in replies] == [(2, 1, 2, 0), (1, 3, 3, 0)]
    assert not any(r.HasField("last_sequence") for r in replies)
    assert await stored_users(conn) == ["same"] * 3


@pytest.mark.parametrize(
    ("messages", "detail"),
    [
        ([numbered("a b", 1, "x")], "producer_id must be 1 to 128 characters among ASCII letters"),
        ([numbered("é", 1, "x")], "producer_id must be 1 to 128 characters"),
        ([numbered("p" * 129, 1, "x")], "producer_id must be 1 to 128 characters"),
        ([numbered("p", 0, "x")], "message 0 has events and a producer_id but no first_sequence"),
        ([pb.PublishEventsRequest(first_sequence=1, events=[event("x")])], "first_sequence without a producer_id"),
        ([numbered("p", 1, "x"), numbered("q", 2, "y")], "message 1 names another producer_id"),
        ([pb.PublishEventsRequest(events=[event("x")]), numbered("p", 1, "y")], "message 1 names a producer_id, but"),
        ([numbered("p", 2**63 - 1, "x", "y")], "beyond the highest sequence, 9223372036854775807"),
    ],
)
async def test_bad_producer_fields_are_invalid_argument(
    conn: Connection, messages: list[pb.PublishEventsRequest], detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await publish_raw(conn, *messages)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in refused.value.details()
    stored = 1 if len(messages) == 2 else 0  # the first of two messages is fine: it is stored
    assert len(await stored_users(conn)) == stored


async def test_a_server_that_does_not_deduplicate_gets_one_stream_without_a_producer() -> None:
    """A server of the contract before producer ids (its PublishEvents ignores the fields it does not
    know, and answers without last_sequence): the client publishes as before."""
    received: list[pb.PublishEventsRequest] = []

    async def publish(requests: AsyncIterator[bytes], context: object) -> bytes:
        count = 0
        async for raw in requests:
            request = pb.PublishEventsRequest.FromString(raw)
            received.append(request)
            count += len(request.events)
        return pb.PublishEventsResponse(count=count, first_id=1 if count else 0, last_id=count).SerializeToString()

    old_server = grpc.aio.server()
    handler = grpc.stream_unary_rpc_method_handler(publish)
    old_server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("streaming.v1.StreamingService", {"PublishEvents": handler})]
    )
    port = old_server.add_insecure_port("127.0.0.1:0")
    await old_server.start()
    try:
        async with client(f"127.0.0.1:{port}") as conn:
            reply = await publish_events(conn, [event(f"u{n}") for n in range(3)])
    finally:
        await old_server.stop(0)
    assert (reply.count, reply.first_id, reply.last_id) == (3, 1, 3)
    # The question (a producer stream without events), then the events as before: no producer, no numbers.
    assert [(r.producer_id != "", r.first_sequence, len(r.events)) for r in received] == [(True, 0, 0), (False, 0, 3)]


async def test_a_trimmed_resume_point_is_out_of_range(tmp_path: pathlib.Path) -> None:
    retention = Retention(max_age=None, max_count=3)
    async with (
        running_server(tmp_path, retention=retention, housekeeping_interval=0.05) as server,
        client(server.address) as conn,
    ):
        await publish_events(conn, [event("alice") for _ in range(10)])
        for _ in range(100):
            if (await server.backend.log.bounds("events")).trimmed_through == 7:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            _ = [
                r
                async for r in conn.stub.StreamUserEvents(
                    pb.StreamUserEventsRequest(user_id="alice", resume_after_id=2)
                )
            ]
        assert failure.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "trimmed by retention" in failure.value.details()
        kept = pb.StreamUserEventsRequest(user_id="alice", resume_after_id=7, no_follow=True)
        assert [e.id for r in [r async for r in conn.stub.StreamUserEvents(kept)] for e in r.events] == [8, 9, 10]
        with pytest.raises(ConflictError), rpc_errors(conn.settings):  # the CLI's exit code 9
            await conn.stub.StreamUserEvents(pb.StreamUserEventsRequest(user_id="alice", resume_after_id=1)).read()


async def test_producers_idle_for_longer_than_retention_are_forgotten(tmp_path: pathlib.Path) -> None:
    retention = Retention(max_age=0.5, max_count=None)
    async with (
        running_server(tmp_path, retention=retention, housekeeping_interval=0.05) as server,
        client(server.address) as conn,
    ):
        await publish_raw(conn, numbered("idle", 1, "a", "b"))
        for _ in range(200):
            if not (await server.backend.log.producer("events", "idle")).last_sequence:
                break
            await asyncio.sleep(0.02)
        asked = await publish_raw(conn, pb.PublishEventsRequest(producer_id="idle"))
        anew = await publish_raw(conn, numbered("idle", 1, "c"))  # forgotten: it starts at 1 again
    assert asked.HasField("last_sequence") and asked.last_sequence == 0
    assert (anew.count, anew.last_sequence) == (1, 1)


async def test_idle_streams_get_heartbeats_with_the_position(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, heartbeat=0.1) as server, client(server.address) as conn:
        await publish_events(conn, [event("someone-else")])
        call = conn.stub.StreamUserEvents(pb.StreamUserEventsRequest(user_id="alice"))
        # Nothing matches: without heartbeats these reads would wait for ever.
        beats = [await asyncio.wait_for(call.read(), 10) for _ in range(4)]
        call.cancel()
    assert all(not b.events for b in beats)
    assert all(b.position == 1 for b in beats)
    assert all(b.HasField("server_time") for b in beats)


async def test_live_responses_are_paced_but_the_first_after_a_quiet_spell_goes_at_once(
    tmp_path: pathlib.Path,
) -> None:
    async with running_server(tmp_path, live_interval=1.0) as server, client(server.address) as conn:
        call = conn.stub.StreamUserEvents(pb.StreamUserEventsRequest(all_users=True))
        await call.read()  # the start position
        loop = asyncio.get_running_loop()
        published = loop.time()
        await publish_events(conn, [event("a")])
        first = await asyncio.wait_for(call.read(), 10)
        waited = loop.time() - published
        for _ in range(5):  # one append each, well within the interval
            await publish_events(conn, [event("a")])
        paced: list[list[int]] = []
        while sum(len(ids) for ids in paced) < 5:
            response = await asyncio.wait_for(call.read(), 10)
            if response.events:
                paced.append([e.id for e in response.events])
        call.cancel()
    assert [e.id for e in first.events] == [1]
    assert waited < 0.8  # not held back by the interval
    # What came meanwhile rides in one response, or two when the appends straddle a tick of the clock the
    # readers share (a reader woken by each append would have sent five).
    assert [i for ids in paced for i in ids] == [2, 3, 4, 5, 6]
    assert len(paced) <= 2, paced


async def test_the_idle_timeout_counts_from_the_last_record_not_from_the_start(conn: Connection) -> None:
    idle = 0.4
    options = TailOptions(idle_timeout=idle)
    tail = tail_events(conn, user_id="alice", all_users=False, types=[], since=epoch(), options=options)
    received: list[tuple[float, int]] = []

    async def read() -> None:
        async for batch in tail:
            received.extend((time.monotonic(), e.id) for e in batch)
            if batch[0].id == 3:
                await asyncio.sleep(2 * idle)  # a slow consumer: its time with the records is not idle time

    reader = asyncio.create_task(read())
    for _ in range(6):  # records for twice the idle timeout, each well within it of the one before
        await publish_events(conn, [event("alice")])
        await asyncio.sleep(idle / 3)
    await asyncio.wait_for(reader, 10)
    ended = time.monotonic()
    assert [id_ for _, id_ in received] == [1, 2, 3, 4, 5, 6]
    assert idle * 0.9 <= ended - received[-1][0] < idle + 1.0


async def test_the_idle_timeout_ends_a_tail_that_is_reconnecting(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path) as server, client(server.address) as conn:
        await publish_events(conn, [event("alice")])
        options = TailOptions(idle_timeout=0.5)
        tail = tail_events(conn, user_id="alice", all_users=False, types=[], since=epoch(), options=options)
        first = await anext(tail)
        assert [e.id for e in first] == [1]
        await server.stop(0)  # the tail now retries with backoff (for minutes) against a server that is gone
        started = time.monotonic()
        with pytest.raises(StopAsyncIteration):  # ends quietly, as an idle tail does
            await asyncio.wait_for(anext(tail), 10)
        assert time.monotonic() - started < 9


async def test_a_stalled_reader_slows_neither_the_publisher_nor_other_readers(conn: Connection) -> None:
    stalled = conn.stub.StreamUserEvents(pb.StreamUserEventsRequest(all_users=True, start_time=epoch()))
    await stalled.read()  # connected, then never reads again
    total = 20_000
    payload = "x" * 500

    reader = asyncio.create_task(
        collect(
            tail_events(
                conn, user_id="", all_users=True, types=[], since=epoch(), options=TailOptions(max_records=total)
            )
        )
    )

    async def publish_all() -> None:
        for start in range(0, total, 1000):
            await publish_events(conn, [event("u", pad=payload) for _ in range(start, start + 1000)])

    # ~10 MB of events: a publisher or reader held back by the stalled reader would never finish.
    await asyncio.wait_for(publish_all(), 120)
    received = await asyncio.wait_for(reader, 120)
    stalled.cancel()
    assert [e.id for e in received] == list(range(1, total + 1))


async def test_shutdown_ends_tails_with_a_resume_point(tmp_path: pathlib.Path) -> None:
    server_cm = running_server(tmp_path)
    server = await server_cm.__aenter__()
    try:
        async with client(server.address) as conn:
            await publish_events(conn, [event("alice")])
            call = conn.stub.StreamUserEvents(pb.StreamUserEventsRequest(user_id="alice", start_time=epoch()))
            first = await call.read()
            replay = await call.read()
            assert first.position == 0 and [e.id for e in replay.events] == [1]
            stopping = asyncio.create_task(server.stop(5))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await asyncio.wait_for(call.read(), 3)
            await stopping
    finally:
        if not server.stopping.is_set():
            await server_cm.__aexit__(None, None, None)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "resume after id 1" in failure.value.details()


async def test_notifications_by_recipient_topic_and_for_everyone(conn: Connection, tmp_path: pathlib.Path) -> None:
    await send_notification(conn, recipient="alice", topic="deploy", title="v2 is live")
    await send_notification(conn, recipient="bob", topic="deploy", title="not for alice")
    await send_notification(conn, recipient="*", topic="maintenance", title="restart at 22:00")
    source = tmp_path / "hello.txt"
    source.write_text("hello")
    from streamcli.client.progress import NullProgress
    from streamcli.client.transfer import upload_path

    uploaded = await upload_path(conn, source, NullProgress())

    async def titles(topics: list[str]) -> list[str]:
        found = tail_notifications(
            conn, recipient="alice", topics=topics, since=epoch(), options=TailOptions(follow=False)
        )
        return [n.title for n in await collect(found)]

    assert await titles([]) == ["v2 is live", "restart at 22:00", "upload completed: hello.txt"]
    assert await titles(["files"]) == ["upload completed: hello.txt"]
    files = tail_notifications(conn, recipient="x", topics=["files"], since=epoch(), options=TailOptions(follow=False))
    assert [n.attributes["file_id"] for n in await collect(files)] == [uploaded.file_id]


async def test_bad_notifications_are_refused(conn: Connection) -> None:
    with pytest.raises(InvalidArgumentError, match="title is required"):
        await send_notification(conn, recipient="alice", topic="deploy", title=" ")
    with pytest.raises(InvalidArgumentError, match="title has a control character"):
        await send_notification(conn, recipient="alice", topic="deploy", title="\x1b]0;pwned\x07")
    with pytest.raises(InvalidArgumentError, match="recipient has a control character"):
        await send_notification(conn, recipient="al\nice", topic="deploy", title="hi")
    with pytest.raises(InvalidArgumentError, match="body has a control character"):
        await send_notification(conn, recipient="alice", topic="deploy", title="hi", body="a\x1b[2Jb")
    sent = await send_notification(conn, recipient="alice", topic="deploy", title="hi", body="line 1\n\tline 2")
    assert sent.body == "line 1\n\tline 2"  # newline and tab are text in a body
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        _ = [r async for r in conn.stub.SubscribeToNotifications(pb.SubscribeToNotificationsRequest())]
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("nanos", [0, 5_000_000, 123_456_000, 987_654_321, 1])
def test_rfc3339_text_is_what_protobuf_prints(nanos: int) -> None:
    from streamcli.times import rfc3339

    for seconds in (0, 1_700_000_000, 1_700_000_001, 4_000_000_000):
        stamp = Timestamp(seconds=seconds, nanos=nanos)
        assert rfc3339(stamp) == stamp.ToJsonString()


async def test_tail_starts_with_the_last_n_matching_events_found_backwards(conn: Connection) -> None:
    # 1,200 events, alice's every third: the last 4 of hers lie beyond one backward read step (500).
    await publish_events(conn, [event("alice" if i % 3 == 0 else "bob") for i in range(1200)])
    last = tail_events(conn, user_id="alice", all_users=False, types=[], since=None, options=TailOptions(False, tail=4))
    assert [e.id for e in await collect(last)] == [1189, 1192, 1195, 1198]
    more_than_kept = pb.StreamUserEventsRequest(user_id="alice", tail=10_000, no_follow=True)
    ids = [e.id async for r in conn.stub.StreamUserEvents(more_than_kept) for e in r.events]
    assert len(ids) == 400 and ids[0] == 1
    # With a start time too: the last N after it, here fewer than N.
    now = Timestamp()
    now.GetCurrentTime()
    await asyncio.sleep(0.01)
    await publish_events(conn, [event("alice"), event("bob"), event("alice")])
    after = pb.StreamUserEventsRequest(user_id="alice", tail=5, start_time=now, no_follow=True)
    assert [e.id async for r in conn.stub.StreamUserEvents(after) for e in r.events] == [1201, 1203]


async def test_end_time_ends_the_stream_at_the_first_record_after_it(conn: Connection) -> None:
    await publish_events(conn, [event("alice"), event("alice")])
    await asyncio.sleep(0.01)
    middle = Timestamp()
    middle.GetCurrentTime()
    await asyncio.sleep(0.01)
    await publish_events(conn, [event("alice", LOGOUT)])
    # Following live, it still ends (OK) at the event after end_time, which it does not send.
    following = pb.StreamUserEventsRequest(user_id="alice", start_time=epoch(), end_time=middle)
    assert [e.id async for r in conn.stub.StreamUserEvents(following) for e in r.events] == [1, 2]
    # A live tail whose end_time passes with nothing after it ends too; so does one with an end in the past.
    soon = Timestamp()
    soon.FromNanoseconds(time.time_ns() + 200_000_000)
    live = pb.SubscribeToNotificationsRequest(recipient="alice", end_time=soon)
    assert [n async for r in conn.stub.SubscribeToNotifications(live) for n in r.notifications] == []
    bad = pb.StreamUserEventsRequest(user_id="alice", end_time=Timestamp(seconds=253_402_300_800))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in conn.stub.StreamUserEvents(bad):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end_time is not a valid time" in (refused.value.details() or "")
