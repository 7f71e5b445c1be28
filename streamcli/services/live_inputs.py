"""ProcessLiveData's inputs as slices of the received wire bytes: no protobuf object per input.

A ProcessingResult begins with its input's sequence, key and value, under the
numbers and types DataInput gives them (1, 2 and 3), and the server writes them
first, in that order. So an input written as protobuf writes one (fields in
order, each once, minimal varints) carries the first bytes of its result: the
request deserializer (``decode_live_request``) slices each input out of the
message, keeps those bytes as the result's head, and reads the value; the
statistics are then written after the head (``services/processing.py``).

Anything else (options, a timestamp that does not parse, a key over 127 bytes,
fields out of order, bytes that are not a request at all) is left to protobuf,
and the decoding boundary (``server/decoding.py``) refuses what protobuf cannot
parse, as for every other RPC. A message protobuf parsed is turned into the
same form by ``message_inputs``, so one loop processes both.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.protowire import Picking, bytes_field, pack_double, varint
from streamcli.times import writable

MAX_KEY_LENGTH = 256  # characters
_NANOS = 1_000_000_000

#: One input as ``LiveStream.process`` takes it: (head, key, value, time). ``head`` is the result's fields 1-3
#: as wire bytes; ``key`` the key's UTF-8 bytes; ``time`` the input's timestamp in nanoseconds since the epoch,
#: or None. An input that cannot be processed has an empty ``key`` and its whole result (the error) as ``head``.
Input = tuple[bytes, bytes, float, int | None]

#: The start of an input as protobuf writes it: the input's key (field 1 of the request, length under 128),
#: its sequence (a minimal varint of at most 9 bytes) and the key's tag and length (1-127 bytes).
_START = re.compile(rb"\x0a[\x00-\x7f]\x08(?:[\x80-\xff]{1,8}[\x01-\x7f]|[\x00-\x7f])\x12[\x01-\x7f]")
_VALUE_TAG, _TIMESTAMP_TAG = 0x19, 0x22
#: Field 3 (value) as the result writes a value of 0, which protobuf leaves out of an input.
_ZERO_VALUE = b"\x19" + bytes(8)
_read_double = struct.Struct("<d").unpack_from


def sliced_inputs(data: bytes) -> list[Input] | None:
    """The inputs of a ProcessLiveDataRequest's wire bytes that hold nothing but inputs written as protobuf
    writes them (see the module's docstring); None for any other bytes (protobuf then parses them)."""
    inputs: list[Input] = []
    append = inputs.append
    start = _START.match
    position, size = 0, len(data)
    while position < size:
        found = start(data, position)
        if found is None:
            return None
        end = position + 2 + data[position + 1]
        key_start = found.end()
        key_end = key_start + data[key_start - 1]
        if end > size or key_end > end:
            return None
        key = data[key_start:key_end]
        if not key.isascii():
            try:
                key.decode()
            except UnicodeDecodeError:
                return None
        if key_end + 9 <= end and data[key_end] == _VALUE_TAG:
            value_end = key_end + 9
            head = data[position + 2 : value_end]
            value: float = _read_double(data, key_end + 1)[0]
        else:  # value 0, left out
            value_end = key_end
            head = data[position + 2 : key_end] + _ZERO_VALUE
            value = 0.0
        at = None
        if value_end < end:
            at = _time(data, value_end, end)
            if at is None:
                return None
        append((head, key, value, at))
        position = end
    return inputs


def _time(data: bytes, position: int, end: int) -> int | None:
    """The nanoseconds of the timestamp field at ``position`` that ends the input at ``end``, when it is
    one RFC 3339 can write; else None (the message is left to protobuf, whose input then says why)."""
    if data[position] != _TIMESTAMP_TAG or position + 2 + data[position + 1] != end:
        return None
    try:
        stamp = Timestamp.FromString(data[position + 2 : end])
    except DecodeError:
        return None
    return stamp.seconds * _NANOS + stamp.nanos if writable(stamp) else None


#: ProcessLiveData's request deserializer: a message of inputs alone becomes the list of its inputs
#: (``sliced_inputs``); any other is parsed by protobuf.
decode_live_request = Picking(pb.ProcessLiveDataRequest, sliced_inputs)


def input_problem(item: pb.DataInput) -> str:
    """Why an input cannot be processed, or ``""``."""
    if not item.key:
        return "key is empty"
    if len(item.key) > MAX_KEY_LENGTH:
        return f"key is {len(item.key)} characters; at most {MAX_KEY_LENGTH}"
    if not math.isfinite(item.value):
        return f"value is {item.value} (not a finite number)"
    if item.HasField("timestamp") and not writable(item.timestamp):
        return "timestamp is outside the years 0001-9999"
    return ""


def message_inputs(items: Iterable[pb.DataInput]) -> list[Input]:
    """The inputs of a request protobuf parsed, as ``sliced_inputs`` makes them."""
    inputs: list[Input] = []
    for item in items:
        problem = input_problem(item)
        if problem:
            inputs.append((refusal(item, problem), b"", item.value, None))
            continue
        key = item.key.encode()
        head = b"\x08" + varint(item.sequence) + bytes_field(2, key) + b"\x19" + pack_double(item.value)
        at = item.timestamp.seconds * _NANOS + item.timestamp.nanos if item.HasField("timestamp") else None
        inputs.append((head, key, item.value, at))
    return inputs


def refusal(item: pb.DataInput, problem: str) -> bytes:
    """The serialized result of an input that cannot be processed: its sequence, key, value and ``problem``."""
    return pb.ProcessingResult(
        sequence=item.sequence, key=item.key, value=item.value, error=problem
    ).SerializeToString()


def head_refusal(head: bytes) -> bytes:
    """``refusal`` of the input whose result's head is ``head`` (a sliced input whose value is not finite)."""
    item = pb.DataInput.FromString(head)
    return refusal(item, input_problem(item))
