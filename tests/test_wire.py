"""The responses framed from stored bytes (services/wire.py) against the library's own serialization."""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import LogRecord
from streamcli.client import metric_records, records
from streamcli.client.batches import _Pending
from streamcli.client.events import pack_data
from streamcli.client.metrics import _Message
from streamcli.services import wire
from streamcli.services.events import Framer
from streamcli.services.logs import timestamp


def test_framed_events_parse_as_the_message_the_library_would_build() -> None:
    events = []
    for number, user in enumerate(("alice", "bob", "carol"), 1):
        event = pb.UserEvent(user_id=user, type=pb.USER_EVENT_TYPE_LOGIN, timestamp=timestamp(1_800_000_000 + number))
        event.data.CopyFrom(pack_data({"n": number, "tags": ["a", "b"], "nested": {"x": None}}))
        events.append(event)
    records = [
        LogRecord(number, time.time(), e.user_id, "USER_EVENT_TYPE_LOGIN", e.SerializeToString())
        for number, e in enumerate(events, 1)
    ]
    framed = Framer().response(records, position=7)
    parsed = pb.StreamUserEventsResponse.FromString(framed)
    built = pb.StreamUserEventsResponse(position=7, server_time=parsed.server_time)
    for number, event in enumerate(events, 1):
        built.events.add().CopyFrom(event)
        built.events[-1].id = number
    assert parsed == pb.StreamUserEventsResponse.FromString(built.SerializeToString())
    assert [e.id for e in parsed.events] == [1, 2, 3]


def test_wire_fields_are_the_librarys() -> None:
    message = pb.PublishEventsResponse(count=300, first_id=1)
    assert wire.varint_field(1, 300) + wire.varint_field(2, 1) + wire.varint_field(3, 0) == message.SerializeToString()
    notice = pb.ChatNotice(code="X", message="é" * 200)
    assert wire.bytes_field(1, b"X") + wire.bytes_field(2, ("é" * 200).encode()) == notice.SerializeToString()
    messages = [pb.ChatMessage(id=1, content="a"), pb.ChatMessage(id=2, content="b" * 300)]
    framed = wire.repeated_messages(1, (m.SerializeToString() for m in messages))
    assert framed == pb.ChatResponse(messages=messages).SerializeToString()


def test_live_results_parse_as_the_messages_the_library_would_build() -> None:
    from streamcli.services.live_inputs import message_inputs
    from streamcli.services.processing import LiveStream, Options

    stream = LiveStream(Options(window=10, duration=0, z=1.0, max_keys=10))
    inputs = [pb.DataInput(sequence=n, key="é", value=v) for n, v in ((1, 1.0), (2, 3.0), (70_000, 8.0))]
    inputs.append(pb.DataInput(sequence=4, key="", value=1.0))
    framed = stream.process(message_inputs(inputs))
    parsed = pb.ProcessLiveDataResponse.FromString(framed)
    # Hand-computed: the window before 8.0 is [1, 3] (mean 2, population deviation 1): z = 6.
    third = pb.ProcessingResult(
        sequence=70_000, key="é", value=8.0, moving_average=4.0, count=3, anomaly=True, min=1.0, max=8.0,
        stddev=(26 / 3) ** 0.5, z_score=6.0, window_count=3,
    )  # fmt: skip
    first = pb.ProcessingResult(sequence=1, key="é", value=1.0, moving_average=1.0, count=1, min=1.0, max=1.0)
    first.window_count = 1
    assert parsed.results[0] == first
    assert parsed.results[2].key == third.key and parsed.results[2].sequence == third.sequence
    assert abs(parsed.results[2].stddev - third.stddev) < 1e-12
    parsed.results[2].stddev = third.stddev
    assert parsed.results[2] == third
    assert parsed.results[3].error and parsed.results[3].sequence == 4
    # Same message once the library has written it (it leaves out the zeros the framer writes).
    assert pb.ProcessLiveDataResponse.FromString(parsed.SerializeToString()) == parsed


def library_record(key: str, value: float, time: tuple[int, int] | None, payload: dict[str, Any]) -> pb.DataRecord:
    record = pb.DataRecord(key=key, value=value)
    if time is not None:
        record.timestamp.seconds, record.timestamp.nanos = time
    if payload:
        record.payload.update(payload)
    return record


@pytest.mark.parametrize(
    ("key", "value", "time", "payload"),
    [
        ("sensor-17", 4.25, (1_795_000_000, 17_000_000), {"site": "north-3", "seq": 17}),
        ("", 0.0, None, {}),
        ("k", -0.0, (0, 0), {"n": 0, "t": True, "f": False, "none": None, "empty": ""}),
        ("ключ" * 40, 1e300, (-62_135_596_800, 999_999_999), {"list": [1, "a", None, [2]], "obj": {"x": {"y": 1.5}}}),
        (
            "k" * 300,
            2.5,
            (4_102_444_799, 0),
            {"big": 2**70, "long": "x" * 70_000, "é" * 200: "v", "n" * 300: 1.5, "i" * 300: 7},
        ),
    ],
)
def test_encoded_records_are_the_librarys_bytes(
    key: str, value: float, time: tuple[int, int] | None, payload: dict[str, Any]
) -> None:
    encoded = records.encode_record(key, value, time, dict(payload))
    expected = library_record(key, value, time, payload)
    assert pb.DataRecord.FromString(encoded) == expected
    assert math.copysign(1, pb.DataRecord.FromString(encoded).value) == math.copysign(1, value)
    if len(payload) <= 1:  # (a map's entries may come in another order)
        assert encoded == expected.SerializeToString()


def test_a_record_the_library_refuses_is_refused_as_it_says() -> None:
    with pytest.raises(ValueError) as library:
        library_record("k\ud800", 1.0, None, {})
    with pytest.raises(ValueError) as ours:
        records.encode_record("k\ud800", 1.0, None, {})
    assert str(ours.value) == str(library.value)


def test_a_batch_message_is_the_librarys_bytes() -> None:
    parsed = [records.Parsed(n, f"line {n}", records.encode_record(f"k{n}", n, None, {"n": n})) for n in range(3)]
    pending = _Pending(250, [p.record for p in parsed if p.record is not None], parsed)
    built = pb.ProcessDataBatchRequest(
        first_index=250, records=[library_record(f"k{n}", n, None, {"n": n}) for n in range(3)]
    )
    assert pending.request == built.SerializeToString()


#: Times in the form the record encoder reads by slicing (``records.time_field``) and near misses of it.
RECORD_TIMES = [
    "2026-11-18T17:17:17.017Z", "2026-11-18T17:17:17Z", "2026-11-18T17:17:59.000Z", "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00.000000000Z", "1969-12-31T23:59:59.5Z", "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "2024-02-29T12:34:56.000001Z", "2026-11-24T10:00:00.1234567891Z", "2026-11-24T10:00:00.1234567891234Z",
    "0000-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-24T24:00:00Z", "2026-11-24T23:60:00Z",
    "2026-11-24T23:59:60Z", "2026-11-24T23:59:6Z", "2026-11-24T23:59:5\u0661Z", "2026-11-24T23:59:59.Z",
    "2026-11-24T23:59:59..5Z", "2026-W47-1T00:00:00Z", "\uff12026-11-24T10:00:00Z", "2026-11-24T1a:00:00Z",
    "2026-11-24T10:00:00.12a3Z", "2026-11-24T10:00:00.\u0661Z", "2026-11-24T10:00:00+Z", "2026-11-24T10:00:00z",
    "2026-11-24t10:00:00Z", "2026-11-24 10:00:00Z", "2026-11-24T10:00:00+05:30", "2026-11-24T10:00:00.5-0100",
    "2026-11-24T10:00Z", "2026-11-24", " 2026-11-24T10:00:00Z ", "2026-11-24T10:00:00.Z0", "2026-11-24T10:00:00 Z",
]  # fmt: skip


def library_time_field(text: str) -> bytes | str:
    """A DataRecord's timestamp field as protobuf writes it, of the time ``parse_time`` reads (or its refusal)."""
    from streamcli.client.events import parse_time
    from streamcli.errors import UsageError

    try:
        seconds, nanos = parse_time(text)
    except UsageError as exc:
        return f"{type(exc).__name__}: {exc.message}"
    return pb.DataRecord(timestamp=Timestamp(seconds=seconds, nanos=nanos)).SerializeToString()


def time_field(text: str) -> bytes | str:
    from streamcli.errors import UsageError

    try:
        return records.time_field(text)
    except UsageError as exc:
        return f"{type(exc).__name__}: {exc.message}"


def test_record_times_are_the_librarys_bytes() -> None:
    for _ in range(2):  # the second time from what the first kept
        for text in RECORD_TIMES:
            assert time_field(text) == library_time_field(text), text
    assert (
        time_field("2026-11-18T17:17:17.017Z")
        == pb.DataRecord(timestamp=Timestamp(seconds=1_795_022_237, nanos=17_000_000)).SerializeToString()
    )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    seconds=st.integers(-62_135_596_800, 253_402_300_799),
    fraction=st.text("0123456789", max_size=11),
    second=st.one_of(st.none(), st.text("0123456789\u0661", min_size=1, max_size=3)),
)
def test_machine_written_times_are_the_librarys_bytes(seconds: int, fraction: str, second: str | None) -> None:
    written = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if second is not None:  # (a second that may be no second at all)
        written = written[:17] + second
    text = f"{written}.{fraction}Z" if fraction else f"{written}Z"
    assert time_field(text) == library_time_field(text), text
    assert time_field(text) == library_time_field(text), text  # (again, from what was kept)


def library_sample(name: str, value: float, time: tuple[int, int] | None, labels: dict[str, str]) -> pb.MetricData:
    sample = pb.MetricData(name=name, value=value, labels=labels)
    if time is not None:
        sample.timestamp.CopyFrom(Timestamp(seconds=time[0], nanos=time[1]))
    return sample


@pytest.mark.parametrize(
    ("name", "value", "time", "labels"),
    [
        ("bench.latency", 1.00123091030648, None, {"route": "/r0"}),
        ("", 0.0, (0, 0), {}),
        ("m", -0.0, (1_795_000_000, 5), {"": "", "k": ""}),
        ("n" * 200, -1e-300, (4_102_444_799, 999_999_999), {"a": "é" * 1024, "b" * 100: "v", "c": "\n\t"}),
    ],
)
def test_encoded_samples_are_the_librarys_bytes(
    name: str, value: float, time: tuple[int, int] | None, labels: dict[str, str]
) -> None:
    encoded = metric_records.encode_sample(name, value, time, labels)
    expected = library_sample(name, value, time, labels)
    assert pb.MetricData.FromString(encoded) == expected
    assert math.copysign(1, pb.MetricData.FromString(encoded).value) == math.copysign(1, value)
    if len(labels) <= 1:  # (a map's entries may come in another order)
        assert encoded == expected.SerializeToString()


def test_a_metrics_message_is_the_librarys_bytes() -> None:
    parsed = [records.Parsed(n, "", metric_records.encode_sample("m", n, None, {"n": str(n)})) for n in range(3)]
    message = _Message("push-1", 40, [p.record for p in parsed if p.record is not None], parsed)
    built = pb.CollectMetricsRequest(
        push_id="push-1", first_index=40, metrics=[library_sample("m", n, None, {"n": str(n)}) for n in range(3)]
    )
    assert message.request == built.SerializeToString()
    assert _Message("", 0, [], []).request == pb.CollectMetricsRequest().SerializeToString() == b""


def test_varints_are_the_librarys() -> None:
    for value in (0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**35 - 1, 2**35, 2**64 - 1):
        assert wire.varint_field(3, value) == pb.ProcessDataBatchRequest(first_index=value).SerializeToString()


CHUNKS = [b"x", bytes(range(256)) * 4, b"\0" * 127, b"y" * 128, b"z" * (1 << 20)]


@pytest.mark.parametrize("chunk", CHUNKS, ids=len)
def test_an_upload_chunk_written_by_hand_is_the_librarys_and_the_server_picks_it_out(chunk: bytes) -> None:
    from streamcli.client.transfer import _CHUNK_KEY
    from streamcli.services.uploads import decode_upload_request

    written = _CHUNK_KEY + wire.varint(len(chunk)) + chunk
    assert written == pb.UploadFileRequest(chunk=chunk).SerializeToString()
    picked = decode_upload_request(written)
    assert isinstance(picked, memoryview) and picked == chunk


@pytest.mark.parametrize(
    "message",
    [
        pb.UploadFileRequest(metadata=pb.FileMetadata(filename="a", total_size=3)),
        pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=3, checksum="0" * 64)),
        pb.UploadFileRequest(chunk=b"abc", upload_id="u1"),  # a chunk with another field: parsed by protobuf
        pb.UploadFileRequest(chunk=b""),
        pb.UploadFileRequest(),
    ],
)
def test_other_upload_messages_are_parsed_by_protobuf(message: pb.UploadFileRequest) -> None:
    from streamcli.services.uploads import decode_upload_request

    decoded = decode_upload_request(message.SerializeToString())
    if isinstance(decoded, memoryview):  # only a chunk alone is picked: here the empty one
        assert message.WhichOneof("payload") == "chunk" and decoded == message.chunk
    else:
        assert decoded == message


@pytest.mark.parametrize("data", [b"\x1a\x05abc", b"\x1a\x80", b"\x1a\x03abcd\xff"])
def test_a_chunk_message_that_does_not_parse_is_refused_by_protobuf(data: bytes) -> None:
    from google.protobuf.message import DecodeError

    from streamcli.services.uploads import decode_upload_request

    with pytest.raises(DecodeError):
        decode_upload_request(data)


@pytest.mark.parametrize("offset", [0, 5, 1 << 20, 1 << 40])
@pytest.mark.parametrize("chunk", [b"q", b"r" * 300], ids=len)
def test_download_responses_written_by_hand_are_the_librarys_and_the_client_picks_them_out(
    offset: int, chunk: bytes
) -> None:
    from streamcli.client.transfer import _pick_data
    from streamcli.services.files import _DATA_KEY, _OFFSET_FIELD

    written = wire.varint_field(_OFFSET_FIELD, offset) + _DATA_KEY + wire.varint(len(chunk)) + chunk
    assert written == pb.DownloadFileResponse(offset=offset, data=chunk).SerializeToString()
    picked = _pick_data(written)
    assert picked is not None and picked[0] == offset and picked[1] == chunk


def test_the_first_download_response_and_odd_ones_are_left_to_protobuf() -> None:
    from streamcli.client.transfer import _pick_data

    first = pb.DownloadFileResponse(file=pb.FileInfo(file_id="f", size=1), offset=0, data=b"a")
    assert _pick_data(first.SerializeToString()) is None
    assert _pick_data(pb.DownloadFileResponse(offset=7).SerializeToString()) is None  # no bytes
    assert _pick_data(b"\x10\x80") is None  # a truncated offset
    negative = pb.DownloadFileResponse(offset=-2, data=b"a").SerializeToString()  # as a hostile server may send
    assert _pick_data(negative) == (-2, memoryview(b"a"))


def live_input(sequence: int, key: str, value: float, stamp: tuple[int, int] | None = None) -> pb.DataInput:
    item = pb.DataInput(sequence=sequence, key=key, value=value)
    if stamp is not None:
        item.timestamp.seconds, item.timestamp.nanos = stamp
    return item


#: Inputs protobuf writes as ``sliced_inputs`` takes them: the server slices each out of the wire bytes.
SLICED_INPUTS = [
    [live_input(1, "k", 1.5)],
    [live_input(n, f"k{n % 3}", float(n % 5)) for n in range(1, 200)],  # 0.0 left out by protobuf
    [live_input(1, "é", -0.0), live_input(2**63 - 1, "ключ", 1e300), live_input(16_384, "x" * 100, -2.5)],
    [live_input(7, "k", math.nan), live_input(8, "k", math.inf), live_input(9, "k", 5e-324)],  # refused in band
    [
        live_input(1, "t", 1.0, (1_800_000_000, 5)),
        live_input(2, "t", 2.0, (1_799_999_999, 0)),  # late
        live_input(3, "t", 0.0, (0, 0)),
    ],
    [],
]  # fmt: skip


@pytest.mark.parametrize("inputs", SLICED_INPUTS, ids=range(len(SLICED_INPUTS)))
@pytest.mark.parametrize("duration", [0, 10 * 1_000_000_000], ids=["count", "time"])
def test_inputs_sliced_from_the_wire_give_the_results_protobufs_parse_gives(
    inputs: list[pb.DataInput], duration: int
) -> None:
    from streamcli.services.live_inputs import decode_live_request, message_inputs
    from streamcli.services.processing import LiveStream, Options

    data = pb.ProcessLiveDataRequest(inputs=inputs).SerializeToString()
    sliced = decode_live_request(data)
    assert isinstance(sliced, list) and len(sliced) == len(inputs)
    for (head, key, value, at), item in zip(sliced, inputs, strict=True):
        without_time = pb.DataInput(sequence=item.sequence, key=item.key, value=item.value)
        assert pb.DataInput.FromString(head) == without_time and key == item.key.encode()
        assert value == item.value or math.isnan(item.value)
        stamp = item.timestamp
        assert at == (stamp.seconds * 1_000_000_000 + stamp.nanos if item.HasField("timestamp") else None)
    if duration and not all(item.HasField("timestamp") for item in inputs):
        return  # (an input without a time takes the time it is processed: the two streams' would differ)
    options = Options(window=2 if not duration else 10_000, duration=duration, z=3.0, max_keys=2)
    by_slices = LiveStream(options).process(sliced)
    by_protobuf = LiveStream(options).process(message_inputs(pb.ProcessLiveDataRequest.FromString(data).inputs))
    assert by_slices == by_protobuf  # byte for byte


def one_input(body: bytes) -> bytes:
    """A ProcessLiveDataRequest of one input written by hand (``body``: its fields)."""
    return b"\x0a" + wire.varint(len(body)) + body


@pytest.mark.parametrize(
    "data",
    [
        pb.ProcessLiveDataRequest(inputs=[live_input(1, "k", 1.0)], window=5).SerializeToString(),  # options
        pb.ProcessLiveDataRequest(inputs=[live_input(1, "k" * 128, 1.0)]).SerializeToString(),  # a key of 128 bytes
        pb.ProcessLiveDataRequest(inputs=[live_input(1, "", 1.0)]).SerializeToString(),  # no key
        pb.ProcessLiveDataRequest(inputs=[live_input(0, "k", 1.0)]).SerializeToString(),  # no sequence
        pb.ProcessLiveDataRequest(inputs=[live_input(1, "k", 1.0, (-62_135_596_801, 0))]).SerializeToString(),
        one_input(b"\x12\x01k\x08\x01\x19" + bytes(8)),  # key before sequence
        one_input(b"\x08\x81\x00\x12\x01k\x19" + bytes(8)),  # a varint longer than it needs to be
        one_input(b"\x08\x01\x12\x01k\x19" + bytes(8) + b"\x28\x01"),  # a field DataInput does not have
    ],
    ids=["options", "long-key", "no-key", "no-sequence", "unwritable-time", "order", "long-varint", "unknown"],
)
def test_other_live_messages_are_parsed_by_protobuf(data: bytes) -> None:
    from streamcli.services.live_inputs import decode_live_request

    assert decode_live_request(data) == pb.ProcessLiveDataRequest.FromString(data)


@pytest.mark.parametrize(
    "data",
    [one_input(b"\x08\x01\x12\x01\xff\x19" + bytes(8)), one_input(b"\x08\x01\x12\x02k\x19" + bytes(8)), b"\x0a\x80"],
    ids=["not-utf8", "truncated", "truncated-length"],
)
def test_a_live_message_that_does_not_parse_is_refused_by_protobuf(data: bytes) -> None:
    from google.protobuf.message import DecodeError

    from streamcli.services.live_inputs import decode_live_request

    with pytest.raises(DecodeError):
        decode_live_request(data)


@pytest.mark.parametrize(
    "item",
    [
        live_input(1, "k", 1.5),
        live_input(300, "default", 0.0),  # value 0: left out
        live_input(2**40, "é" * 70, -0.0),  # an input of 128 bytes or more: a longer length
        live_input(5, "k" * 300, math.inf, (1_800_000_000, 999_999_999)),
        live_input(6, "t", math.nan, (0, 0)),
        live_input(7, "t", 2.0, (-62_135_596_800, 5)),
    ],
    ids=range(6),
)
def test_inputs_the_client_writes_by_hand_are_the_librarys(item: pb.DataInput) -> None:
    from streamcli.client.processing import encode_input

    stamp = (item.timestamp.seconds, item.timestamp.nanos) if item.HasField("timestamp") else None
    written = encode_input(item.sequence, item.key, item.value, stamp)
    assert written == pb.ProcessLiveDataRequest(inputs=[item]).SerializeToString()
    options = pb.ProcessLiveDataRequest(window=3).SerializeToString()
    assert pb.ProcessLiveDataRequest.FromString(options + written + written) == pb.ProcessLiveDataRequest(
        window=3, inputs=[item, item]
    )


def _batch_records() -> list[pb.DataRecord]:
    stamped = library_record("é" * 100, -2.5, (1_795_000_000, 5), {"site": "north", "n": 1, "deep": {"a": [1, None]}})
    return [library_record("k", 0.0, None, {}), stamped, library_record("x" * 300, 1e300, (0, 0), {"t": "y" * 200})]


@pytest.mark.parametrize("first_index", [0, 250, 2**64 - 1])
def test_a_batch_message_comes_with_its_records_bytes_as_they_arrived(first_index: int) -> None:
    from streamcli.services.batches import ReceivedBatch, decode_batch_request

    built = pb.ProcessDataBatchRequest(records=_batch_records(), first_index=first_index, complete=True)
    decoded = decode_batch_request(built.SerializeToString())
    assert isinstance(decoded, ReceivedBatch)
    assert decoded.message == built
    assert decoded.record_bytes == [record.SerializeToString() for record in built.records]
    # The client's own bytes (records written by hand, framed) are taken apart the same way.
    parsed = [records.Parsed(n, "", records.encode_record(f"k{n}", n, None, {"n": n})) for n in range(3)]
    written = _Pending(first_index, [p.record for p in parsed if p.record is not None], parsed).request
    mine = decode_batch_request(written)
    assert isinstance(mine, ReceivedBatch) and mine.record_bytes == [p.record for p in parsed]
    assert mine.message == pb.ProcessDataBatchRequest.FromString(written)


def test_a_records_bytes_keep_what_protobuf_would_keep() -> None:
    from streamcli.services.batches import ReceivedBatch, decode_batch_request

    # A record with an unknown field (99) and its key twice (the last wins), then the batch's fields, then a
    # record again: each record's bytes parse to the record protobuf parsed, unknown field included.
    odd = wire.bytes_field(1, b"first") + wire.varint_field(99, 7) + wire.bytes_field(1, b"last")
    data = wire.bytes_field(1, odd) + wire.bytes_field(2, b"b1") + wire.bytes_field(1, b"\x0a\x01z")
    decoded = decode_batch_request(data)
    assert isinstance(decoded, ReceivedBatch) and decoded.record_bytes is not None
    message = pb.ProcessDataBatchRequest.FromString(data)
    assert decoded.message == message and message.batch_id == "b1"
    assert [pb.DataRecord.FromString(b) for b in decoded.record_bytes] == list(message.records)
    # (Stored, read back and sent on, a record says what protobuf's own record would: the unknown field too.)
    again = pb.DataRecord.FromString(decoded.record_bytes[0]).SerializeToString()
    assert again == message.records[0].SerializeToString() and wire.varint_field(99, 7) in again
    assert message.records[0].key == "last"


@pytest.mark.parametrize(
    "message",
    [
        pb.ProcessDataBatchRequest(batch_id="b1", max_errors=100_000, source="in.ndjson"),
        pb.ProcessDataBatchRequest(complete=True),
        pb.ProcessDataBatchRequest(),
    ],
)
def test_batch_messages_without_records_are_parsed_by_protobuf(message: pb.ProcessDataBatchRequest) -> None:
    from streamcli.services.batches import decode_batch_request

    decoded = decode_batch_request(message.SerializeToString())
    assert isinstance(decoded, pb.ProcessDataBatchRequest) and decoded == message


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # a record cut short
        b"\x0a\x80",  # its length cut short
        b"\x0a\x02\x0a\xff",  # a key that is not UTF-8... cut short too
        b"\x0a\x03\x0a\x01\xff",  # a key that is not UTF-8
        b"\x0a\x00\x13",  # a group that never ends
    ],
)
def test_a_batch_message_that_does_not_parse_is_refused_by_protobuf(data: bytes) -> None:
    from google.protobuf.message import DecodeError

    from streamcli.services.batches import decode_batch_request

    with pytest.raises(DecodeError):
        decode_batch_request(data)


def test_repeated_payloads_steps_over_every_wire_type_and_gives_up_on_what_is_not_fields() -> None:
    from streamcli.protowire import repeated_payloads

    fields = (
        wire.varint_field(3, 2**63)
        + b"\x09"
        + bytes(8)  # field 1, 64-bit
        + b"\x15"
        + bytes(4)  # field 2, 32-bit
        + wire.bytes_field(1, b"a")
        + wire.bytes_field(2, b"\x0a\x01b")
        + wire.bytes_field(1, b"c" * 200)
    )
    assert repeated_payloads(fields, 1) == [b"a", b"c" * 200]
    assert repeated_payloads(fields, 2) == [b"\x0a\x01b"]
    assert repeated_payloads(b"", 1) == []
    for broken in (b"\x0a\x05abc", b"\x0a", b"\x08", b"\x09\x00", b"\x0b\x0c", b"\x0e", b"\x8a"):
        assert repeated_payloads(broken, 1) is None, broken
