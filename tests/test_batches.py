"""ProcessDataBatch and the batch RPCs against the real server: validation, resume, aggregates, access."""

from __future__ import annotations

import math
import pathlib
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.server.app import RunningServer
from streamcli.services import batches
from tests.support.servers import client, running_server

#: The tests that use ``server`` run on every backend (tests/conftest.py).
ON_EACH_BACKEND = True


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


def rec(key: str, value: float, **payload: str) -> pb.DataRecord:
    record = pb.DataRecord(key=key, value=value)
    if payload:
        record.payload.update(payload)
    return record


async def ingest(
    conn: Connection, messages: Sequence[pb.ProcessDataBatchRequest], metadata: tuple[tuple[str, str], ...] = ()
) -> pb.ProcessDataBatchResponse:
    response: pb.ProcessDataBatchResponse = await conn.stub.ProcessDataBatch(
        list(messages), metadata=metadata or conn.metadata
    )
    return response


async def read_back(conn: Connection, batch_id: str, **kwargs: int) -> list[pb.BatchRecord]:
    call = conn.stub.ReadBatchRecords(pb.ReadBatchRecordsRequest(batch_id=batch_id, **kwargs))
    return [record async for response in call for record in response.records]


def bad_records() -> dict[int, tuple[pb.DataRecord, str]]:
    """Records the server refuses, by the index they are sent at, with a word of the reason."""
    huge = pb.DataRecord(key="k", value=1)
    huge.payload.update({"blob": "x" * (batches.MAX_PAYLOAD + 1)})
    return {
        3: (pb.DataRecord(key="", value=1), "key is required"),
        7: (pb.DataRecord(key="a\x1bb", value=1), "control character"),
        11: (pb.DataRecord(key="k", value=math.nan), "not a finite number"),
        12: (pb.DataRecord(key="k", value=math.inf), "not a finite number"),
        20: (pb.DataRecord(key="k" * 257, value=1), "longer than 256"),
        25: (pb.DataRecord(key="k", value=1, timestamp=Timestamp(seconds=-1)), "timestamp is outside"),
        26: (pb.DataRecord(key="k", value=1, timestamp=Timestamp(seconds=batches.END_TIME)), "timestamp is outside"),
        30: (huge, "payload is"),
    }


async def test_every_refused_record_is_named_and_the_others_stored_with_aggregates(conn: Connection) -> None:
    bad = bad_records()
    records = [bad[i][0] if i in bad else rec(f"k{i % 3}", float(i), n=str(i)) for i in range(40)]
    messages = [
        pb.ProcessDataBatchRequest(batch_id="b1", first_index=start, records=records[start : start + 15])
        for start in range(0, 40, 15)
    ]
    messages[-1].complete = True
    reply = await ingest(conn, messages)
    assert (reply.records_received, reply.records_processed, reply.records_failed) == (40, 32, 8)
    assert [e.index for e in reply.errors] == sorted(bad)
    for error in reply.errors:
        assert bad[error.index][1] in error.reason, error
    assert reply.next_index == 40 and reply.batch.complete
    assert (reply.batch.records_stored, reply.batch.records_refused) == (32, 8)
    good = {i: float(i) for i in range(40) if i not in bad}
    by_key = {a.key: a for a in reply.batch.aggregates}
    assert sorted(by_key) == ["k0", "k1", "k2"]
    for key, aggregate in by_key.items():
        values = [v for i, v in good.items() if f"k{i % 3}" == key]
        assert (aggregate.count, aggregate.min, aggregate.max) == (len(values), min(values), max(values))
        assert aggregate.sum == sum(values) and aggregate.mean == sum(values) / len(values)
    back = await read_back(conn, "b1")
    assert [r.index for r in back] == sorted(good)
    assert back[0].record == records[0]


async def test_a_resumed_batch_stores_each_record_once(conn: Connection) -> None:
    records = [rec("k", float(i)) for i in range(300)]
    first = await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="r", first_index=0, records=records[:120])])
    assert (first.records_processed, first.next_index, first.batch.complete) == (120, 120, False)
    query = await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="r")])
    assert (query.next_index, query.records_received) == (120, 0)
    # The re-run re-sends from index 100: the 20 held are acknowledged, not stored again.
    again = await ingest(
        conn, [pb.ProcessDataBatchRequest(batch_id="r", first_index=100, records=records[100:], complete=True)]
    )
    assert (again.duplicates, again.records_processed, again.next_index) == (20, 180, 300)
    assert again.batch.records_stored == 300 and again.batch.aggregates[0].sum == sum(range(300))
    assert [r.index for r in await read_back(conn, "r")] == list(range(300))
    assert [r.index for r in await read_back(conn, "r", after_index=297)] == [298, 299]


async def test_a_gap_is_refused_with_the_index_to_resume_at(conn: Connection) -> None:
    await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="g", records=[rec("k", 1)] * 5)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="g", first_index=9, records=[rec("k", 1)])])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("next-index", "5") in tuple(caught.value.trailing_metadata() or ())


async def test_a_query_lists_the_refusals_so_far(conn: Connection) -> None:
    await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="q", records=[rec("k", 1), rec("", 1), rec("k", 2)])])
    query = await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="q", max_errors=10)])
    assert [(e.index, e.reason) for e in query.errors] == [(1, "key is required")]
    assert (query.batch.records_stored, query.batch.records_refused) == (2, 1)


async def test_an_unnamed_batch_completes_with_its_stream_and_is_listed(conn: Connection) -> None:
    reply = await ingest(conn, [pb.ProcessDataBatchRequest(records=[rec("a", 1), rec("a", 3)], source="x.ndjson")])
    assert reply.batch.complete and reply.batch.aggregates[0].mean == 2.0
    listed = await conn.stub.ListBatches(pb.ListBatchesRequest())
    assert [b.batch_id for b in listed.batches] == [reply.batch_id]
    assert listed.batches[0].source == "x.ndjson" and not listed.batches[0].aggregates
    shown = await conn.stub.GetBatch(pb.GetBatchRequest(batch_id=reply.batch_id))
    assert shown.batch == reply.batch


async def test_aggregates_are_capped_and_the_overflow_counted(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "MAX_AGGREGATE_KEYS", 2)
    records = [rec(key, 1) for key in ("c", "a", "c", "b", "d", "d")]
    reply = await ingest(conn, [pb.ProcessDataBatchRequest(records=records)])
    assert [a.key for a in reply.batch.aggregates] == ["a", "c"]  # the first two keys met, in key order
    assert (reply.batch.overflow_keys, reply.batch.overflow_records) == (2, 3)


async def test_completion_notifies_once(conn: Connection) -> None:
    done = [pb.ProcessDataBatchRequest(batch_id="n", records=[rec("k", 1), rec("", 0)], complete=True)]
    await ingest(conn, done)
    await ingest(conn, done)  # re-run: all duplicates, already complete
    call = conn.stub.SubscribeToNotifications(
        pb.SubscribeToNotificationsRequest(
            recipient="*", topics=["batch"], start_time=Timestamp(seconds=1), no_follow=True
        )
    )
    notes = [n async for response in call for n in response.notifications]
    assert len(notes) == 1
    assert notes[0].attributes["batch_id"] == "n" and notes[0].attributes["refused"] == "1"


async def test_malformed_messages_and_fields_are_invalid_argument(conn: Connection) -> None:
    cases = [
        [pb.ProcessDataBatchRequest(batch_id="bad id")],
        [pb.ProcessDataBatchRequest(first_index=3)],
        [pb.ProcessDataBatchRequest(batch_id="a"), pb.ProcessDataBatchRequest(batch_id="b")],
        [pb.ProcessDataBatchRequest(records=[rec("k", 1)] * (batches.MAX_RECORDS_PER_REQUEST + 1))],
        [pb.ProcessDataBatchRequest(source="a\nb")],
    ]
    for messages in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest(conn, messages)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, messages[0]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await conn.stub.GetBatch(pb.GetBatchRequest(batch_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_user_token_reaches_its_own_batches_only(tmp_path: pathlib.Path) -> None:
    tokens = {"alice": "alice-token", "bob": "bob-token"}
    async with running_server(tmp_path / "data", token="service", user_tokens=tokens) as server:
        async with (
            client(server.address, token="alice-token") as alice,
            client(server.address, token="bob-token") as bob,
        ):
            mine = await ingest(alice, [pb.ProcessDataBatchRequest(batch_id="same", records=[rec("k", 1)])])
            theirs = await ingest(bob, [pb.ProcessDataBatchRequest(batch_id="same", records=[rec("k", 2)] * 2)])
            assert (mine.batch_id, theirs.batch_id) == ("alice/same", "bob/same")
            assert (mine.batch.records_stored, theirs.batch.records_stored) == (1, 2)  # two batches
            listed = await alice.stub.ListBatches(pb.ListBatchesRequest(), metadata=alice.metadata)
            assert [b.batch_id for b in listed.batches] == ["alice/same"]
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await alice.stub.GetBatch(pb.GetBatchRequest(batch_id="bob/same"), metadata=alice.metadata)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            own = await alice.stub.GetBatch(pb.GetBatchRequest(batch_id="same"), metadata=alice.metadata)
            assert own.batch.batch_id == "alice/same"
        async with client(server.address, token="service") as service:
            listed = await service.stub.ListBatches(pb.ListBatchesRequest(), metadata=service.metadata)
            assert sorted(b.batch_id for b in listed.batches) == ["alice/same", "bob/same"]


async def test_retention_removes_idle_batches_and_their_records(tmp_path: pathlib.Path) -> None:
    from streamcli.services.logs import Retention

    async with running_server(tmp_path / "data") as server, client(server.address) as conn:
        await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="old", records=[rec("k", 1)])])
        service = batches.BatchService(server.backend.log, server.backend.metadata)
        assert await service.expire(Retention(max_age=3600)) == 0
        assert await service.expire(Retention(max_age=-1)) == 1
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await conn.stub.GetBatch(pb.GetBatchRequest(batch_id="old"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        again = await ingest(conn, [pb.ProcessDataBatchRequest(batch_id="old")])
        assert again.next_index == 0  # its log went with it
