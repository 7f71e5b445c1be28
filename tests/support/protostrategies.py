"""Hypothesis strategies for protobuf messages of any type, built from the type's descriptor.

``messages(descriptor)`` draws messages field by field: every scalar type with
its edge values (empty, ~100 KB strings, control characters, names that look
like paths or ids but are not, NaN and infinities, the extremes of each integer
width, enum numbers the contract does not define), nested messages down to a
bounded depth, at most one field of each oneof, repeated fields of a few items
and maps. Well-known types get values of their own: Timestamps out of range,
Structs nested past protobuf's limit of 100, Anys with unknown type URLs or
values that are not their type.

``undecodable(descriptor)`` draws bytes that are *not* a valid message of the
type (truncated varints, a string field that is not UTF-8, a bad wire type), and
``frame`` / ``decodes`` turn messages into what goes on the wire and back.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from google.protobuf import any_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from streamcli.services import wire

#: Strings of about 100 KB, built once: hypothesis cannot draw texts this long itself (its choice
#: sequence is bounded), and what matters is the length and the kind of character, not the content.
HUGE_STRINGS = (
    ("a", 100_000),
    ("é", 50_000),  # 100 KB of UTF-8, 50k code points: byte and character limits differ
    ("\U0001f4a5", 25_000),  # 4-byte characters
    ("\x1b[2J", 25_000),  # terminal escapes
    ("x", 256),
    ("x", 257),  # around the 255-byte / 256-character limits
)  # (text, repeat): the strategies' reprs stay short

#: Values that look like names or ids and are not quite: paths, reserved words, invisible or
#: look-alike characters, numbers that str.isdigit() accepts but int() does not, huge numbers.
NAME_LIKE = (
    "",
    " ",
    ".",
    "..",
    "../../etc/passwd",
    "a/b",
    "a\\b",
    "*",
    "system",
    "-",
    "_",
    "x" * 64,
    "x" * 65,
    "\u202eevil",  # right-to-left override
    "\x1b[31mred",
    "nul\x00byte",
    "line\nbreak",
    "tab\there",
    "\ufeffbom",
    "ok-name_1.2",
    "\uff11\uff12",  # fullwidth digits: isdigit() and int() both accept them
    "\u00b2",  # superscript two: isdigit() accepts it, int() does not
    "99999999999999999999999",  # beyond int64
    "-1",
    "0",
    "streaming.v1.StreamingService",
    "grpc.health.v1.Health",
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

_T = FieldDescriptor
_INTEGER_RANGES = {
    _T.TYPE_INT32: INT32,
    _T.TYPE_SINT32: INT32,
    _T.TYPE_SFIXED32: INT32,
    _T.TYPE_INT64: INT64,
    _T.TYPE_SINT64: INT64,
    _T.TYPE_SFIXED64: INT64,
    _T.TYPE_UINT32: UINT32,
    _T.TYPE_FIXED32: UINT32,
    _T.TYPE_UINT64: UINT64,
    _T.TYPE_FIXED64: UINT64,
}

#: Nesting of generated messages below the top one (a bound, so that drawing terminates).
DEFAULT_DEPTH = 3
#: Most items drawn for a repeated field or a map.
MAX_ITEMS = 3


def integers(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    """Integers of one protobuf width, with its extremes and the small values near zero often."""
    low, high = bounds
    edges = sorted({low, high, 0, 1, max(low, -1), high // 2})
    return st.one_of(st.sampled_from(edges), st.integers(max(low, -1000), min(high, 1000)), st.integers(low, high))


def texts() -> st.SearchStrategy[str]:
    """Short random text, control characters, name-like traps and ~100 KB strings."""
    return st.one_of(
        st.text(max_size=12),
        st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=4),
        st.sampled_from(NAME_LIKE),
        st.sampled_from(HUGE_STRINGS).map(_repeat),
    )


def _repeat(spec: tuple[str, int]) -> str:
    text, times = spec
    return text * times


def doubles(width: int = 64) -> st.SearchStrategy[float]:
    """Any double (or float), NaN and the infinities included."""
    specials = [math.nan, math.inf, -math.inf, -0.0, 0.0]
    if width == 64:
        specials += [1.7976931348623157e308, -1.7976931348623157e308, 5e-324]
    return st.one_of(st.sampled_from(specials), st.floats(width=width))


def byte_strings() -> st.SearchStrategy[bytes]:
    """Short random bytes, and a few long ones."""
    return st.one_of(
        st.binary(max_size=48),
        st.sampled_from([(b"\x00", 70_000), (bytes(range(256)), 40)]).map(lambda spec: spec[0] * spec[1]),
    )


def enum_numbers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    """The enum's numbers, and numbers it does not define (proto3 enums are open: they go on the wire)."""
    known = [value.number for value in field.enum_type.values]
    return st.one_of(st.sampled_from(known), st.sampled_from([max(known) + 1, -1, INT32[0], INT32[1]]))


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    """Timestamps, valid or not: seconds before year 1 or after 9999, nanos beyond a second or negative."""
    return st.builds(timestamp_pb2.Timestamp, seconds=integers(INT64), nanos=integers(INT32))


def json_values(depth: int) -> st.SearchStrategy[struct_pb2.Value]:
    """google.protobuf.Value: every kind of JSON value (and NaN, which JSON lacks), nested ``depth`` deep."""
    leaves = st.one_of(
        st.builds(lambda: struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
        st.builds(lambda n: struct_pb2.Value(number_value=n), doubles()),
        st.builds(lambda s: struct_pb2.Value(string_value=s), texts()),
        st.builds(lambda b: struct_pb2.Value(bool_value=b), st.booleans()),
        st.just(struct_pb2.Value()),  # no kind set at all
    )
    if depth <= 0:
        return leaves

    def in_struct(fields: dict[str, struct_pb2.Value]) -> struct_pb2.Value:
        value = struct_pb2.Value()
        value.struct_value.SetInParent()
        for key, item in fields.items():
            value.struct_value.fields[key].CopyFrom(item)
        return value

    def in_list(items: list[struct_pb2.Value]) -> struct_pb2.Value:
        value = struct_pb2.Value()
        value.list_value.SetInParent()
        for item in items:
            value.list_value.values.add().CopyFrom(item)
        return value

    inner = json_values(depth - 1)
    return st.one_of(
        leaves,
        st.builds(in_struct, st.dictionaries(texts(), inner, max_size=MAX_ITEMS)),
        st.builds(in_list, st.lists(inner, max_size=MAX_ITEMS)),
    )


def deep_struct_bytes(levels: int) -> bytes:
    """The wire form of a Struct nested ``levels`` deep ({"k": {"k": ...}}), built without protobuf.

    Built by hand because past protobuf's nesting limit (100) the runtime refuses to build or
    parse it, which is exactly what a hostile client would send.
    """
    value = b""  # the innermost Value: no kind set
    for _ in range(levels):
        entry = wire.bytes_field(1, b"k") + wire.bytes_field(2, value)  # Struct.FieldsEntry {key, value}
        struct = wire.bytes_field(1, entry)  # Struct.fields
        value = wire.bytes_field(5, struct)  # Value.struct_value
    return struct if levels else b""


#: Nesting levels of the deep Structs: around protobuf's limit of 100 and well past it.
DEEP_LEVELS = (1, 20, 98, 99, 100, 101, 150, 400)


def anys() -> st.SearchStrategy[any_pb2.Any]:
    """google.protobuf.Any: empty, a deep Struct, an unknown or malformed type URL, a value not of its type."""
    struct_url = "type.googleapis.com/google.protobuf.Struct"
    return st.one_of(
        st.just(any_pb2.Any()),
        st.builds(lambda n: any_pb2.Any(type_url=struct_url, value=deep_struct_bytes(n)), st.sampled_from(DEEP_LEVELS)),
        st.builds(lambda v: _packed(struct_pb2.Value, v), json_values(2)),
        st.builds(
            lambda url, value: any_pb2.Any(type_url=url, value=value),
            st.sampled_from(
                [
                    struct_url,
                    "type.googleapis.com/google.protobuf.Value",
                    "type.googleapis.com/streaming.v1.ChatMessage",
                    "type.googleapis.com/streaming.v1.UserEvent",  # holds an Any itself
                    "type.googleapis.com/no.such.Type",
                    "google.protobuf.Struct",  # no slash
                    "/",
                    "",
                ]
            )
            | texts(),
            byte_strings(),
        ),
    )


def _packed(cls: type[Message], value: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(value)
    return packed


def _well_known(descriptor: Descriptor, depth: int) -> st.SearchStrategy[Any] | None:
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return timestamps()
    if name == "google.protobuf.Any":
        return anys()
    if name == "google.protobuf.Value":
        return json_values(min(depth, 2))
    if name == "google.protobuf.Struct":
        return st.one_of(
            st.builds(
                lambda v: v.struct_value, json_values(min(depth, 2)).filter(lambda v: v.HasField("struct_value"))
            ),
            # Deeper ones only inside an Any (as bytes): within a request, protobuf refuses to build them.
            st.sampled_from([1, 5, 20]).map(lambda n: struct_pb2.Struct.FromString(deep_struct_bytes(n))),
        )
    return None


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@functools.cache
def _single_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """One value of ``field``'s type (not a list or map)."""
    if field.type == _T.TYPE_MESSAGE:
        return messages(field.message_type, depth - 1)
    if field.type == _T.TYPE_STRING:
        return texts()
    if field.type == _T.TYPE_BYTES:
        return byte_strings()
    if field.type == _T.TYPE_BOOL:
        return st.booleans()
    if field.type == _T.TYPE_DOUBLE:
        return doubles()
    if field.type == _T.TYPE_FLOAT:
        return doubles(32)
    if field.type == _T.TYPE_ENUM:
        return enum_numbers(field)
    return integers(_INTEGER_RANGES[field.type])


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        entry = field.message_type
        keys = _single_values(entry.fields_by_name["key"], depth)
        return st.dictionaries(keys, _single_values(entry.fields_by_name["value"], depth), max_size=MAX_ITEMS)
    if field.is_repeated:
        return st.lists(_single_values(field, depth), max_size=MAX_ITEMS)
    return _single_values(field, depth)


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name) if field.is_repeated or field.message_type else None
    if _is_map(field):
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        for item in value:
            if isinstance(item, Message):
                target.add().CopyFrom(item)
            else:
                target.append(item)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


@functools.cache
def messages(descriptor: Descriptor, depth: int = DEFAULT_DEPTH) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type: each field set or not, at most one field of each oneof."""
    special = _well_known(descriptor, depth)
    if special is not None:
        return special
    cls = GetMessageClass(descriptor)
    if depth < 0:
        return st.just(cls())
    plain = [field for field in descriptor.fields if field.containing_oneof is None]
    strategies = {field.name: _field_values(field, depth) for field in plain}
    choices = [
        st.none()
        | st.sampled_from(list(oneof.fields)).flatmap(lambda f: st.tuples(st.just(f), _field_values(f, depth)))
        for oneof in descriptor.oneofs
    ]

    def build(values: dict[str, Any], chosen: list[tuple[FieldDescriptor, Any] | None]) -> Message:
        message = cls()
        for name, value in values.items():
            _assign(message, descriptor.fields_by_name[name], value)
        for pair in chosen:
            if pair is not None:
                _assign(message, *pair)
        return message

    return st.builds(build, st.fixed_dictionaries({}, optional=strategies), st.tuples(*choices).map(list))


def undecodable(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes that do not decode as ``descriptor``'s type."""
    strings = [f.number for f in descriptor.fields if f.type == _T.TYPE_STRING and not f.is_repeated]
    known_bad = [
        b"\x08",  # a varint field whose value is missing
        b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
        b"\x0a\x05ab",  # a length beyond the end
        b"\x0f",  # wire type 7 does not exist
        b"\x00",  # field number 0
        b"\xff\xff\xff\xff\x0f",  # a field number beyond 2**29
    ]
    # A string field that is not UTF-8 (upb refuses it on parse).
    known_bad += [wire.varint((n << 3) | 2) + b"\x02\xff\xfe" for n in strings]
    return st.one_of(
        st.sampled_from(known_bad), st.binary(min_size=1, max_size=32).filter(lambda b: not decodes(descriptor, b))
    )


def decodes(descriptor: Descriptor, data: bytes) -> bool:
    """Whether ``data`` is a valid message of ``descriptor``'s type (the same runtime the server uses)."""
    try:
        GetMessageClass(descriptor).FromString(data)
    except DecodeError:
        return False
    return True


def frame(item: Message | bytes) -> bytes:
    """The wire bytes of a message (bytes pass as they are: a frame drawn raw)."""
    return item if isinstance(item, bytes) else item.SerializeToString()
