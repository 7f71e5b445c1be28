"""Just enough of the protobuf wire format to assemble responses from stored bytes.

A response carrying stored records is their serialized bytes framed as a
repeated field: no parse and no re-serialize per record. For the events log
that is about twice as fast as building messages (bench/README.md). The bytes
parse to the same message as ``SerializeToString`` of the built message would
(tests/test_wire.py holds them together), though not byte for byte: a record's
id is appended after its other fields, where the library writes fields in
number order; protobuf parsers accept fields in any order.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

_LEN = 2  # wire type of length-delimited fields
_VARINT = 0


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    """A varint field (omitted when 0, as proto3 does)."""
    return varint(number << 3 | _VARINT) + varint(value) if value else b""


def bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message."""
    return varint(number << 3 | _LEN) + varint(len(payload)) + payload


def repeated_messages(number: int, payloads: Iterable[bytes]) -> bytes:
    """A repeated message field from already serialized messages."""
    tag = varint(number << 3 | _LEN)
    return b"".join(tag + varint(len(p)) + p for p in payloads)


def serialize(message: Message | bytes) -> bytes:
    """The response serializer of the server: messages are serialized, pre-assembled bytes pass."""
    return message if isinstance(message, bytes) else message.SerializeToString()
