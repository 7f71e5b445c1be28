"""The responses framed from stored bytes (services/wire.py) against the library's own serialization."""

from __future__ import annotations

import time

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import LogRecord
from streamcli.client.events import pack_data
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
    from streamcli.services.processing import LiveStream, Options

    stream = LiveStream(Options(window=10, duration=0, z=1.0, max_keys=10))
    inputs = [pb.DataInput(sequence=n, key="é", value=v) for n, v in ((1, 1.0), (2, 3.0), (70_000, 8.0))]
    inputs.append(pb.DataInput(sequence=4, key="", value=1.0))
    framed = stream.process(inputs)
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
