"""The decoding boundary, over real gRPC with raw bytes: what a foreign client with a bug would send."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import FirstStatus
from streamcli.client.events import tail_events
from streamcli.client.tail import TailOptions
from streamcli.server.app import RunningServer
from tests.support.rpc import METHODS
from tests.support.servers import client

SERVICE = "/streaming.v1.StreamingService/"
#: Not protobuf: field 31, wire type 7 (there is no wire type 7).
CORRUPT = b"\xff\xff\xff\xff"
#: Field 1 (a string in GetFileInfoRequest; in ChatRequest the join, whose field 1 is the room id) holding a
#: byte that is not UTF-8. ``not_utf8`` builds the same for any request type.
NOT_UTF8 = b"\x0a\x01\xff"
#: A length that runs past the end of the message.
TRUNCATED = b"\x0a\x10ab"
#: The RPCs not built yet, written out (tests/test_server.py holds the server to the same list).
UNBUILT: set[str] = set()  # every RPC is built


def not_utf8(message: Descriptor, depth: int = 3) -> bytes | None:
    """``message`` with its first string field (searched through nested messages) set to a byte that is not UTF-8."""
    for field in message.fields:
        tag = bytes([field.number << 3 | 2]) if field.number < 16 else None
        if tag is None:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            return tag + b"\x01\xff"
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth:
            inner = not_utf8(field.message_type, depth - 1)
            if inner is not None and len(inner) < 128:
                return tag + bytes([len(inner)]) + inner
    return None


def implemented(method: MethodDescriptor) -> bool:
    return method.name not in UNBUILT


async def raw_call(
    channel: grpc.aio.Channel, method: MethodDescriptor, messages: Sequence[bytes], timeout: float = 10
) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """Call ``method`` with ``messages`` as they are; returns the status, its detail and the responses."""
    path = SERVICE + method.name
    responses: list[bytes] = []
    if method.client_streaming:
        factory = channel.stream_stream if method.server_streaming else channel.stream_unary
        call = factory(path)(iter(messages), timeout=timeout)
    else:
        factory = channel.unary_stream if method.server_streaming else channel.unary_unary
        call = factory(path)(messages[0], timeout=timeout)
    # A server that ends the call before reading everything races the client's writes: grpc.aio may then
    # report INTERNAL instead of the server's status (grpc/grpc#36066). The server's own status is kept.
    first_status = FirstStatus(call)
    try:
        if method.server_streaming:
            async for response in call:
                responses.append(response)
        else:
            responses = [await call]
    except grpc.aio.AioRpcError as exc:
        exc = first_status.unmask(exc)
        return exc.code(), exc.details() or "", responses
    return grpc.StatusCode.OK, "", responses


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as open_channel:
        yield open_channel


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
@pytest.mark.parametrize("payload", [CORRUPT, NOT_UTF8, TRUNCATED], ids=["corrupt", "not-utf8", "truncated"])
async def test_a_first_message_that_does_not_decode_is_invalid_argument_naming_the_type(
    channel: grpc.aio.Channel, method: MethodDescriptor, payload: bytes
) -> None:
    if payload == NOT_UTF8:
        found = not_utf8(method.input_type)
        assert found is not None, f"{method.input_type.full_name} has no string field"
        assert method.input_type._concrete_class.FromString(found.replace(b"\xff", b"x")) is not None  # valid as UTF-8
        payload = found
    code, detail, _ = await raw_call(channel, method, [payload])
    if not implemented(method):
        assert code == grpc.StatusCode.UNIMPLEMENTED
        return
    assert code == grpc.StatusCode.INVALID_ARGUMENT, detail
    assert f"not a valid {method.input_type.full_name}" in detail
    if method.client_streaming:
        assert detail.startswith("message 0 of the request stream")


async def test_health_and_reflection_are_behind_the_boundary(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as check:
        await channel.unary_unary("/grpc.health.v1.Health/Check")(CORRUPT, timeout=10)
    assert check.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc.health.v1.HealthCheckRequest" in (check.value.details() or "")
    reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    call = reflect(iter([CORRUPT]), timeout=10)
    first_status = FirstStatus(call)
    with pytest.raises(grpc.aio.AioRpcError) as listing:
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            raise first_status.unmask(exc) from exc
    assert listing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 0" in (listing.value.details() or "")


def publish(*events: pb.UserEvent) -> bytes:
    return pb.PublishEventsRequest(events=list(events)).SerializeToString()


def login(user: str, data: AnyMessage | None = None) -> pb.UserEvent:
    event = pb.UserEvent(user_id=user, type=pb.USER_EVENT_TYPE_LOGIN)
    if data is not None:
        event.data.CopyFrom(data)
    return event


async def stored_users(server: RunningServer) -> list[str]:
    async with client(server.address) as conn:
        history = tail_events(
            conn, user_id="", all_users=True, types=[], since=Timestamp(seconds=1), options=TailOptions(follow=False)
        )
        return [event.user_id async for batch in history for event in batch]


PUBLISH = pb.DESCRIPTOR.services_by_name["StreamingService"].methods_by_name["PublishEvents"]


async def test_publish_after_a_message_that_does_not_decode_ends_with_what_was_stored(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    # This stream was answered OK with count 1, and the third message was lost without a word.
    call = channel.stream_unary(SERVICE + "PublishEvents")(
        iter([publish(login("a1"), login("a2")), CORRUPT, publish(login("lost"))]), timeout=10
    )
    first_status = FirstStatus(call)  # the server's status and trailers, whatever the client was writing
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            raise first_status.unmask(exc) from exc
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == (
        "message 1 of the request stream is not a valid streaming.v1.PublishEventsRequest: the bytes are not "
        "protobuf wire format of that type (or a string field is not UTF-8); "
        "the first 2 events of this stream were stored (ids 1-2), none after them"
    )
    assert dict(failure.value.trailing_metadata() or ()) == {"stored-count": "2", "last-stored-id": "2"}
    assert await stored_users(server) == ["a1", "a2"]


async def test_publish_stores_the_valid_events_before_an_invalid_one_in_the_same_message(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    code, detail, _ = await raw_call(
        channel, PUBLISH, [publish(login("b0")), publish(login("b1"), login(""), login("b3"))]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.startswith("event 2 (message 1): user_id is required; the first 2 events of this stream")
    assert await stored_users(server) == ["b0", "b1"]


def nested_struct(depth: int) -> struct_pb2.Struct:
    """``{"x": {"x": ...}}``, ``depth`` objects deep: each costs three levels of protobuf nesting."""
    inner = struct_pb2.Struct()
    for _ in range(depth):
        outer = struct_pb2.Struct()
        outer.fields["x"].struct_value.CopyFrom(inner)
        inner = outer
    return inner


STRUCT = "type.googleapis.com/google.protobuf.Struct"


def packed(type_url: str, value: bytes) -> AnyMessage:
    return AnyMessage(type_url=type_url, value=value)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (packed("type.googleapis.com/acme.v1.Custom", b"\x08\x01"), "data holds type 'type.googleapis.com/acme"),
        (packed("", b"\x08\x01"), "data holds type ''"),
        (packed("google.protobuf.Struct", b""), "data holds type 'google.protobuf.Struct'"),  # no '/': not a type URL
        (packed(STRUCT, CORRUPT), "data is not a valid google.protobuf.Struct"),
        # An Any inside an Any could again be anything: types that hold one are refused.
        (packed("type.googleapis.com/streaming.v1.UserEvent", b""), "streaming.v1.UserEvent"),
        (packed(STRUCT, nested_struct(34).SerializeToString()), "nested deeper than protobuf's limit"),
    ],
    ids=["unknown-type", "no-type", "not-a-url", "corrupt-struct", "holds-any", "too-deep"],
)  # fmt: skip
async def test_event_data_must_be_a_type_the_server_describes(
    server: RunningServer, channel: grpc.aio.Channel, data: AnyMessage, problem: str
) -> None:
    code, detail, _ = await raw_call(channel, PUBLISH, [publish(login("ok"), login("bad", data))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.startswith("event 1 (message 0): ") and problem in detail, detail
    assert await stored_users(server) == ["ok"]


async def test_event_data_of_described_types_is_stored(server: RunningServer, channel: grpc.aio.Channel) -> None:
    stamp = Timestamp(seconds=1_800_000_000)
    accepted = [
        packed("type.googleapis.com/google.protobuf.Struct", nested_struct(30).SerializeToString()),
        packed("type.googleapis.com/google.protobuf.Timestamp", stamp.SerializeToString()),
        packed("type.example/google.protobuf.Value", struct_pb2.Value(number_value=1.5).SerializeToString()),
    ]
    code, detail, _ = await raw_call(channel, PUBLISH, [publish(*(login(f"u{i}", d) for i, d in enumerate(accepted)))])
    assert code == grpc.StatusCode.OK, detail
    assert await stored_users(server) == ["u0", "u1", "u2"]


CHAT = pb.DESCRIPTOR.services_by_name["StreamingService"].methods_by_name["Chat"]


async def test_chat_after_a_message_that_does_not_decode_is_invalid_argument_and_keeps_what_came_before(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    join = pb.ChatRequest(join=pb.ChatJoin(room_id="r1", user_id="ann")).SerializeToString()
    send = pb.ChatRequest(send=pb.ChatSend(content="kept", type=pb.CHAT_MESSAGE_TYPE_TEXT)).SerializeToString()
    lost = pb.ChatRequest(send=pb.ChatSend(content="lost", type=pb.CHAT_MESSAGE_TYPE_TEXT)).SerializeToString()
    code, detail, responses = await raw_call(channel, CHAT, [join, send, NOT_UTF8, lost])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.startswith("message 2 of the request stream is not a valid streaming.v1.ChatRequest")
    assert "delivered up to id 2; resume after it" in detail
    delivered = [m.content for r in responses for m in pb.ChatResponse.FromString(r).messages]
    assert delivered == ["ann joined", "kept"]
    # What the room stored: a later session's backlog.
    again = pb.ChatRequest(join=pb.ChatJoin(room_id="r1", user_id="bob")).SerializeToString()
    code, _, responses = await raw_call(channel, CHAT, [again])
    backlog = [m.content for r in responses for m in pb.ChatResponse.FromString(r).messages]
    assert backlog[:4] == ["ann joined", "kept", "ann left", "bob joined"]
    assert "lost" not in backlog


UPLOAD = pb.DESCRIPTOR.services_by_name["StreamingService"].methods_by_name["UploadFile"]


def upload_request(**fields: object) -> bytes:
    return pb.UploadFileRequest(**fields).SerializeToString()  # type: ignore[arg-type]


async def test_an_upload_cut_by_a_bad_message_keeps_what_came_before_for_resuming(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    data = b"0123456789" * 10
    meta = pb.FileMetadata(filename="kept.bin", total_size=len(data))
    first = upload_request(upload_id="u1", metadata=meta)
    code, detail, _ = await raw_call(channel, UPLOAD, [first, upload_request(chunk=data[:40]), CORRUPT])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail == (
        "message 2 of the request stream is not a valid streaming.v1.UploadFileRequest: the bytes are not protobuf "
        "wire format of that type (or a string field is not UTF-8); upload u1 keeps the 40 bytes received before "
        "it: resume from offset 40"
    )
    async with client(server.address) as conn:
        assert (await conn.stub.ListFiles(pb.ListFilesRequest())).files == []  # nothing partial is listed
        status = await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="u1"))
        assert status.committed_offset == 40
    digest = hashlib.sha256(data).hexdigest()
    resume = upload_request(resume=pb.UploadResume(upload_id="u1", offset=40))
    trailer = upload_request(trailer=pb.UploadTrailer(total_size=len(data), checksum=digest))
    code, detail, responses = await raw_call(channel, UPLOAD, [resume, upload_request(chunk=data[40:]), trailer])
    assert code == grpc.StatusCode.OK, detail
    assert pb.UploadFileResponse.FromString(responses[0]).checksum == digest


async def test_an_upload_of_unknown_size_cut_by_a_bad_message_stores_nothing(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    first = upload_request(upload_id="u2", metadata=pb.FileMetadata(filename="stdin.bin", total_size=-1))
    code, detail, _ = await raw_call(channel, UPLOAD, [first, upload_request(chunk=b"abc"), TRUNCATED])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.startswith("message 2 of the request stream") and detail.endswith("; nothing was stored")
    assert not server.backend.blobs.partial_path("u2").exists()


@pytest.mark.parametrize(("seconds", "nanos"), [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 10**9)])
async def test_an_event_time_rfc_3339_cannot_write_is_refused(
    server: RunningServer, channel: grpc.aio.Channel, seconds: int, nanos: int
) -> None:
    # Stored, such a time made every tail of that user fail (the CLI) or abort (buf curl).
    late = login("late")
    late.timestamp.seconds, late.timestamp.nanos = seconds, nanos
    code, detail, _ = await raw_call(channel, PUBLISH, [publish(login("ok"), late)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.startswith("event 1 (message 0): timestamp is outside what RFC 3339 can write")
    assert await stored_users(server) == ["ok"]


PROCESS = pb.DESCRIPTOR.services_by_name["StreamingService"].methods_by_name["ProcessLiveData"]


async def test_live_inputs_sliced_from_the_wire_still_refuse_a_key_that_is_not_utf8(channel: grpc.aio.Channel) -> None:
    # Both messages are inputs alone, as protobuf writes them: the server slices them out of the wire bytes
    # (services/live_inputs.py), and the second's key is not UTF-8.
    good = pb.ProcessLiveDataRequest(inputs=[pb.DataInput(sequence=1, key="k", value=2.0)]).SerializeToString()
    bad = good.replace(b"\x12\x01k", b"\x12\x01\xff")
    code, detail, responses = await raw_call(channel, PROCESS, [good, bad, good])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.startswith("message 1 of the request stream is not a valid streaming.v1.ProcessLiveDataRequest")
    assert [r.key for r in pb.ProcessLiveDataResponse.FromString(responses[0]).results] == ["k"]
    assert len(responses) == 1


BATCH = pb.DESCRIPTOR.services_by_name["StreamingService"].methods_by_name["ProcessDataBatch"]


async def test_a_batch_cut_by_a_bad_message_of_records_holds_what_came_before(channel: grpc.aio.Channel) -> None:
    # The records' bytes are taken out of a message only once protobuf has parsed it: a record whose key is not
    # UTF-8 makes its message undecodable, as any other bad bytes do.
    records = [pb.DataRecord(key="k", value=float(n)) for n in range(3)]
    first = pb.ProcessDataBatchRequest(batch_id="cut", records=records).SerializeToString()
    code, detail, _ = await raw_call(channel, BATCH, [first, b"\x0a\x03\x0a\x01\xff"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail == (
        "message 1 of the request stream is not a valid streaming.v1.ProcessDataBatchRequest: the bytes are not "
        "protobuf wire format of that type (or a string field is not UTF-8); the batch holds records 0-2 (resume at "
        "index 3)"
    )
    query = pb.ProcessDataBatchRequest(batch_id="cut", complete=True).SerializeToString()
    code, detail, responses = await raw_call(channel, BATCH, [query])
    assert code == grpc.StatusCode.OK, detail
    response = pb.ProcessDataBatchResponse.FromString(responses[0])
    assert response.next_index == 3 and response.batch.records_stored == 3
    assert [(a.key, a.count, a.sum) for a in response.batch.aggregates] == [("k", 3, 3.0)]
