"""Just enough of the protobuf wire format to write messages as bytes, on either side of the wire.

The server frames responses from stored bytes (services/wire.py); the client writes the records of
batch ingest and metric pushes as bytes (client/records.py, client/metric_records.py) instead of
building a protobuf object per record, which costs several times the encoding. Bytes written here
parse to the message the library would build (tests/test_wire.py holds them together); a field the
library would omit (a proto3 default) is omitted here too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (not imported at run time: the CLI's help, which reads JSON text with this, imports no protobuf)
    from google.protobuf.message import Message

_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5
_SMALL = [bytes((n,)) for n in range(0x80)]
#: The varints of 0-127, one byte each (the length of most strings: ``SMALL[n] if n < 128 else varint(n)``).
SMALL = _SMALL
#: A double's 8 bytes, little-endian, as protobuf writes them.
pack_double = struct.Struct("<d").pack


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _SMALL[value]
    # (Up to five bytes spelt out, the loop being slow: lengths, nanoseconds, seconds since 1970.)
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x20_0000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if value < 0x1000_0000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21))
    if value < 0x8_0000_0000:
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21 & 0x7F | 0x80,
                value >> 28,
            )
        )
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def int64(value: int) -> bytes:
    """Varint of an int64 (a negative one as its two's complement, ten bytes, as protobuf writes it)."""
    return varint(value & 0xFFFF_FFFF_FFFF_FFFF)


def tag(number: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type."""
    return varint(number << 3 | wire_type)


def varint_field(number: int, value: int) -> bytes:
    """A varint field (omitted when 0, as proto3 does)."""
    return tag(number, _VARINT) + varint(value) if value else b""


def double_field(number: int, value: float) -> bytes:
    """A double field (omitted when +0.0, as proto3 does)."""
    data = pack_double(value)
    return tag(number, _I64) + data if data != b"\0\0\0\0\0\0\0\0" else b""


def bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message."""
    return tag(number, _LEN) + varint(len(payload)) + payload


def string_field(number: int, text: str) -> bytes:
    """A string field (omitted when empty, as proto3 does)."""
    return bytes_field(number, text.encode()) if text else b""


def timestamp_parts(key: bytes, seconds: int, nanos: int) -> tuple[bytes, bytes, bytes]:
    """A google.protobuf.Timestamp field after its ``key``: (key, length, body), to be joined with the other
    parts of a message (the body is at most 16 bytes)."""
    stamp = seconds_field(seconds) + nanos_field(nanos)
    return key, _SMALL[len(stamp)], stamp


def seconds_field(seconds: int) -> bytes:
    """A Timestamp's ``seconds`` (field 1, an int64; omitted when 0): at most 11 bytes."""
    return b"\x08" + (varint(seconds) if seconds > 0 else int64(seconds)) if seconds else b""


def nanos_field(nanos: int) -> bytes:
    """A Timestamp's ``nanos`` (field 2, an int32 of 0-999,999,999; omitted when 0): at most 6 bytes."""
    return b"\x10" + varint(nanos) if nanos else b""


def repeated_messages(number: int, payloads: Iterable[bytes]) -> bytes:
    """A repeated message field from already serialized messages."""
    key = tag(number, _LEN)
    parts: list[bytes] = []
    for payload in payloads:  # (a loop of one list: a record's framing is most of a message's cost)
        size = len(payload)
        parts += (key, _SMALL[size] if size < 0x80 else varint(size), payload)
    return b"".join(parts)


def bytes_key(number: int) -> bytes:
    """The key of a length-delimited field (bytes, string, message): ``bytes_key(n) + varint(len(p)) + p``."""
    return tag(number, _LEN)


def read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it.

    Raises:
        ValueError: the bytes end inside it, or it is longer than ten bytes.
    """
    value = shift = 0
    end = min(len(data), position + 10)
    while position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise ValueError("truncated varint")


def trailing_bytes(data: bytes, key: int, position: int = 0) -> memoryview | None:
    """The payload of the length-delimited field whose one-byte ``key`` is at ``position``, when that field
    runs to the end of ``data`` exactly (the message's last field); else None.

    A view of ``data``, not a copy: a deserializer picks a large payload (a file's chunk) out of a message
    with it, and leaves every other message to protobuf.
    """
    if len(data) <= position or data[position] != key:
        return None
    try:
        length, start = read_varint(data, position + 1)
    except ValueError:
        return None
    if start + length != len(data):
        return None
    return memoryview(data)[start:]


def repeated_payloads(data: bytes, number: int) -> list[bytes] | None:
    """The payloads of every length-delimited field ``number`` at the top level of the message ``data``, in
    order (the elements of a repeated message field as they arrived: no parse, no re-serialization), the other
    fields stepped over; None when the bytes are not a run of well-formed fields (a group, a field cut short):
    what is wrong with them is protobuf's to say.
    """
    wanted = number << 3 | _LEN
    found: list[bytes] = []
    position, end = 0, len(data)
    try:
        while position < end:
            key = data[position]
            if key < 0x80:
                position += 1
            else:
                key, position = read_varint(data, position)
            wire_type = key & 7
            if wire_type == _LEN:
                length = data[position]
                if length < 0x80:
                    position += 1
                else:
                    length, position = read_varint(data, position)
                stop = position + length
                if stop > end:
                    return None
                if key == wanted:
                    found.append(data[position:stop])
                position = stop
            elif wire_type == _VARINT:
                _, position = read_varint(data, position)
            elif wire_type == _I64:
                position += 8
            elif wire_type == _I32:
                position += 4
            else:  # a group (deprecated) or no wire type at all
                return None
    except (IndexError, ValueError):  # cut short inside a key or a length
        return None
    return found if position == end else None


class Picking:
    """A gRPC deserializer: what ``pick`` makes of a message's wire bytes when it recognises them (the common
    message of a stream, e.g. a view of a file's chunk: no copy, no protobuf object), else the message parsed
    by protobuf (which raises on bytes that are not one)."""

    def __init__(self, message_class: type[Message], pick: Callable[[bytes], Any]) -> None:
        self.message_class = message_class  # (the server's decoding boundary names it in refusals)
        self._pick = pick

    def __call__(self, data: bytes) -> Any:
        picked = self._pick(data)
        return picked if picked is not None else self.message_class.FromString(data)


def serialize(message: Message | bytes) -> bytes:
    """A serializer for gRPC: messages are serialized, pre-assembled bytes pass."""
    return message if isinstance(message, bytes) else message.SerializeToString()
