"""JSON text read straight from Struct/Value wire bytes agrees with parsing them the general way."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import Event, data_json, pack_data, unpack_data
from streamcli.client.jsontext import ENCODER, Unusual, number_json, struct_json, value_json
from streamcli.times import rfc3339

ODD_STRINGS = [
    "",
    "plain",
    'quote " and \\ backslash',
    "tab\tnew\nline\x00\x1f",
    "é ü ß 日本語 🙂",
    "a" * 300,
    "\u2028\u2029",
]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return rng.choice(ODD_STRINGS) + str(rng.random())
    if choice == 1:
        return rng.choice([0, 1, -1, 42, 2**31, -(2**52), 2**53 - 1, 2**60])
    if choice == 2:
        return rng.choice([0.5, -1.25, 1e-7, 3.141592653589793, 1e300, -0.0, 1e22])
    if choice == 3:
        return rng.choice([True, False])
    if choice == 4:
        return None
    if choice == 5:
        return rng.choice(ODD_STRINGS)
    if choice in (6, 7):
        return {rng.choice(ODD_STRINGS) + str(n): random_json(rng, depth + 1) for n in range(rng.randrange(5))}
    return [random_json(rng, depth + 1) for _ in range(rng.randrange(5))]


def check(fast: str, packed: AnyMessage) -> None:
    """Same JSON as the general path, and written exactly as ENCODER writes it (keys in wire order)."""
    assert json.loads(fast) == json.loads(ENCODER.encode(unpack_data(packed)))
    assert ENCODER.encode(json.loads(fast)) == fast


@pytest.mark.parametrize("seed", range(300))
def test_random_json_reads_the_same_from_the_wire(seed: int) -> None:
    rng = random.Random(seed)
    data = {f"k{n}": random_json(rng) for n in range(rng.randrange(6))} if seed % 3 else random_json(rng)
    packed = pack_data(data)
    fast = struct_json(packed.value) if isinstance(data, dict) else value_json(packed.value)  # no fallback here
    check(fast, packed)
    assert data_json(packed) == fast


def test_numbers_are_written_as_the_general_path_writes_them() -> None:
    for number in [0.0, -0.0, 1.0, 2.0**53, 2.0**53 - 1, 1e300, 0.1, -2.5, math.inf, -math.inf]:
        packed = pack_data({"n": number})
        assert data_json(packed) == ENCODER.encode(unpack_data(packed))


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN and the infinities (as strict parsers do)."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_protobufs_json_mapping_strings() -> None:
    assert number_json(math.nan) == '"NaN"'
    assert number_json(math.inf) == '"Infinity"'
    assert number_json(-math.inf) == '"-Infinity"'
    data = {"nan": math.nan, "inf": math.inf, "list": [1.5, -math.inf, {"deep": math.nan}]}
    packed = pack_data(data)
    fast = struct_json(packed.value)  # no fallback here
    expected = {"nan": "NaN", "inf": "Infinity", "list": [1.5, "-Infinity", {"deep": "NaN"}]}
    assert strict_loads(fast) == expected == unpack_data(packed)  # the general path gives the same strings
    assert data_json(packed) == fast
    assert strict_loads(ENCODER.encode(unpack_data(packed))) == expected
    for number, text in [(math.nan, '"NaN"'), (math.inf, '"Infinity"'), (-math.inf, '"-Infinity"')]:
        value = AnyMessage()
        value.Pack(struct_pb2.Value(number_value=number))
        assert value_json(value.value) == text == ENCODER.encode(unpack_data(value))


def test_the_general_path_writes_non_finite_numbers_as_strings_too() -> None:
    # Two kinds in one Value: the fast path leaves it to the general parser, which keeps the last.
    two = (
        struct_pb2.Value(string_value="x").SerializeToString()
        + struct_pb2.Value(number_value=math.nan).SerializeToString()
    )
    with pytest.raises(Unusual):
        value_json(two)
    packed = AnyMessage(type_url="type.googleapis.com/google.protobuf.Value", value=two)
    assert data_json(packed) == '"NaN"'
    listed = struct_pb2.Value()
    listed.list_value.values.add().number_value = -math.inf
    packed = AnyMessage(type_url="type.googleapis.com/google.protobuf.Value", value=listed.SerializeToString() * 2)
    assert data_json(packed) == '["-Infinity","-Infinity"]'  # repeated list items: merged by the general parser


def test_finite_floats_are_written_as_json_writes_them() -> None:
    for number in [0.1, -2.5, 1e-7, 1e300, -1e300, 5e-324, 2.0**53 + 2, 1.7976931348623157e308, 3.141592653589793]:
        assert number_json(number) == json.dumps(number)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-62135596800, "0001-01-01T00:00:00Z"),  # the first second a Timestamp can hold
        (-59042995201, "0098-12-31T23:59:59Z"),
        (-30610224000, "1000-01-01T00:00:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        (253402300799, "9999-12-31T23:59:59Z"),  # the last
    ],
)
def test_rfc3339_years_have_four_digits(seconds: int, text: str) -> None:
    stamp = Timestamp(seconds=seconds)
    assert rfc3339(stamp) == text == stamp.ToJsonString()
    stamp.nanos = 5_000
    assert rfc3339(stamp) == text[:-1] + ".000005Z" == stamp.ToJsonString()


def test_events_as_json_lines_match_the_dict_form() -> None:
    for n, data in enumerate([None, {"ip": "10.0.0.1"}, {"fields": ["email"], "mfa": True}, [1, "two"], "text"]):
        event = pb.UserEvent(id=n + 1, user_id='odd "user" é', type=pb.USER_EVENT_TYPE_LOGIN)
        event.timestamp.FromNanoseconds(1_764_000_000_123_456_789 + n)
        if data is not None:
            event.data.CopyFrom(pack_data(data))
        line = Event(event).json_line()
        assert json.loads(line) == Event(event).to_json()
        assert ENCODER.encode(json.loads(line)) == line


def test_a_foreign_any_falls_back_to_the_general_form() -> None:
    packed = AnyMessage()
    packed.Pack(pb.ChatJoin(room_id="r"))
    assert json.loads(data_json(packed)) == unpack_data(packed)
    assert data_json(AnyMessage()) == "null"


def test_unknown_fields_are_skipped() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": 1})
    extra = bytes([0x48, 0x96, 0x01]) + bytes([0x55]) + b"\0\0\0\0"  # field 9 varint 150, field 10 fixed32
    assert struct_json(struct.SerializeToString() + extra) == '{"a":1}'


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05\x0a\x01a",  # entry longer than the bytes left
        b"\x0a\x03\x0a\x01",  # key cut short
        b"\x0a\x05\x0a\x01a\x12\x09\x11\x00",  # double cut short
        b"\x0a\x06\x0a\x02\xff\xfe\x12\x00",  # key not UTF-8
        b"\x0b",  # a group
    ],
)
def test_broken_struct_bytes_are_unusual(data: bytes) -> None:
    with pytest.raises(Unusual):
        struct_json(data)


def test_a_value_with_two_kinds_is_left_to_the_general_parser() -> None:
    two = struct_pb2.Value(string_value="x").SerializeToString() + struct_pb2.Value(bool_value=True).SerializeToString()
    with pytest.raises(Unusual):
        value_json(two)
    packed = AnyMessage(type_url="type.googleapis.com/google.protobuf.Value", value=two)
    assert data_json(packed) == "true"  # the general parser keeps the last kind
