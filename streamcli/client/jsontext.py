"""JSON text straight from serialized ``google.protobuf.Struct`` / ``Value`` bytes.

``tail events --json`` prints the JSON data of every event, which travels as a
Struct inside an Any. Parsing the Struct into messages and walking them into a
dict costs several microseconds per event in Python; reading the few wire
fields of Struct, ListValue and Value directly and writing the JSON text as
they go is about twice as fast (bench/README.md), which is what lets a tail
keep up with a fast replay.

The text is exactly what ``ENCODER.encode`` gives for the dict the message
would parse into (numbers that are integers as integers, NaN and the
infinities as the strings "NaN", "Infinity" and "-Infinity", as
``streamcli.client.events.unpack_data`` does), keys in wire order. Anything
unusual -- a field twice where the parsers would merge, an unknown wire type,
truncated or invalid bytes -- raises ``Unusual``; the caller then takes the
slow, general path.
"""

from __future__ import annotations

import json
import struct
from math import isfinite

from streamcli.protowire import read_varint as _varint  # (ValueError: truncated, or longer than ten bytes)

#: How streamcli writes JSON: compact, UTF-8 as is.
ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

_quote = json.encoder.encode_basestring  # the C version where available, as ENCODER uses
_double = struct.Struct("<d").unpack_from
_float_text = float.__repr__  # as json writes finite floats
_INTEGRAL = float(2**53)

# Tags (field number << 3 | wire type) of the fields read here; all fit one byte.
_ENTRY = _KEY = _VALUES = 0x0A  # Struct.fields, map entry key, ListValue.values
_ENTRY_VALUE = 0x12
_NULL, _NUMBER, _STRING, _BOOL, _STRUCT, _LIST = 0x08, 0x11, 0x1A, 0x20, 0x2A, 0x32


class Unusual(Exception):
    """The bytes are not of the plain shape this module reads; parse them the general way."""


def struct_json(data: bytes) -> str:
    """The JSON object a serialized Struct holds."""
    try:
        return _struct(data, 0, len(data))
    except (IndexError, ValueError, UnicodeDecodeError, struct.error):
        raise Unusual from None


def value_json(data: bytes) -> str:
    """The JSON value a serialized Value holds."""
    try:
        return _value(data, 0, len(data))
    except (IndexError, ValueError, UnicodeDecodeError, struct.error):
        raise Unusual from None


def number_json(number: float) -> str:
    """A Value's number as JSON: integers without a fraction, as ENCODER writes floats otherwise; NaN and
    the infinities, which JSON has not, as the strings of protobuf's JSON mapping (``non_finite_name``)."""
    if number.is_integer() and abs(number) < _INTEGRAL:
        return str(int(number))
    if isfinite(number):
        return _float_text(number)  # what ENCODER writes for a finite float, without its set-up per call
    return '"' + non_finite_name(number) + '"'


def non_finite_name(number: float) -> str:
    """How protobuf's JSON mapping writes a double that is not finite: ``NaN``, ``Infinity`` or ``-Infinity``
    (as a string: a tail of ``--json`` prints JSON that strict parsers read, whatever a publisher stored)."""
    if number != number:
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def _length(data: bytes, i: int, end: int) -> tuple[int, int]:
    """A length prefix at ``i``: (start of the payload, its end), checked against ``end``."""
    n = data[i]
    if n < 0x80:
        i += 1
    else:
        n, i = _varint(data, i)
    if i + n > end:
        raise Unusual
    return i, i + n


def _skip(data: bytes, i: int, tag: int, end: int) -> int:
    """Past an unknown field whose tag's first byte was ``tag`` (``i`` just after that byte)."""
    if tag >= 0x80:
        _, i = _varint(data, i)  # the rest of a multi-byte tag; the wire type is in the first byte
    wire = tag & 7
    if wire == 0:
        _, i = _varint(data, i)
    elif wire == 1:
        i += 8
    elif wire == 2:
        i = _length(data, i, end)[1]
    elif wire == 5:
        i += 4
    else:
        raise Unusual  # groups: not in these messages
    if i > end:
        raise Unusual
    return i


def _key(raw: bytes) -> str:
    """A map key as JSON text; keys repeat from record to record, so their text is kept."""
    text = _KEYS.get(raw)
    if text is None:
        if len(_KEYS) >= _KEYS_KEPT:
            _KEYS.clear()
        text = _KEYS[raw] = _quote(raw.decode())
    return text


_KEYS: dict[bytes, str] = {}
_KEYS_KEPT = 4096


def _struct(data: bytes, i: int, end: int) -> str:
    fields: dict[str, str] = {}  # JSON text of the key -> of the value
    while i < end:
        # The usual entry, as every serializer writes it: key then value, short lengths.
        if data[i] == _ENTRY and data[i + 2] == _KEY and data[i + 1] < 0x80 and data[i + 3] < 0x80:
            entry_end = i + 2 + data[i + 1]
            k = i + 4 + data[i + 3]
            if (
                k + 2 <= entry_end <= end
                and data[k] == _ENTRY_VALUE
                and data[k + 1] < 0x80
                and k + 2 + data[k + 1] == entry_end
            ):
                fields[_KEYS.get(data[i + 4 : k]) or _key(data[i + 4 : k])] = _value(data, k + 2, entry_end)
                i = entry_end
                continue
        tag = data[i]
        i += 1
        if tag != _ENTRY:
            i = _skip(data, i, tag, end)
            continue
        i, entry_end = _length(data, i, end)
        key = '""'
        value = "null"
        seen_key = seen_value = False
        while i < entry_end:
            tag = data[i]
            i += 1
            if tag == _KEY and not seen_key:
                start, i = _length(data, i, entry_end)
                key = _key(data[start:i])
                seen_key = True
            elif tag == _ENTRY_VALUE and not seen_value:
                start, i = _length(data, i, entry_end)
                value = _value(data, start, i)
                seen_value = True
            elif tag in (_KEY, _ENTRY_VALUE):
                raise Unusual  # a field twice: parsers merge values
            else:
                i = _skip(data, i, tag, entry_end)
        fields[key] = value  # a key twice: the last entry wins, as in a parsed map
    if i != end:
        raise Unusual
    return "{" + ",".join([key + ":" + value for key, value in fields.items()]) + "}"


def _list(data: bytes, i: int, end: int) -> str:
    items: list[str] = []
    while i < end:
        tag = data[i]
        i += 1
        if tag == _VALUES:
            start, i = _length(data, i, end)
            items.append(_value(data, start, i))
        else:
            i = _skip(data, i, tag, end)
    if i != end:
        raise Unusual
    return "[" + ",".join(items) + "]"


def _value(data: bytes, i: int, end: int) -> str:
    if i < end and data[i] == _STRING and data[i + 1] < 0x80 and i + 2 + data[i + 1] == end:  # a short string
        return _quote(data[i + 2 : end].decode())
    text = "null"  # a Value with no kind set
    kinds = 0
    while i < end:
        tag = data[i]
        i += 1
        if tag == _STRING:
            start, i = _length(data, i, end)
            text = _quote(data[start:i].decode())
        elif tag == _NUMBER:
            if i + 8 > end:
                raise Unusual
            text = number_json(_double(data, i)[0])
            i += 8
        elif tag == _BOOL:
            flag, i = _varint(data, i)
            text = "true" if flag else "false"
        elif tag == _NULL:
            _, i = _varint(data, i)
            text = "null"
        elif tag == _STRUCT:
            start, i = _length(data, i, end)
            text = _struct(data, start, i)
        elif tag == _LIST:
            start, i = _length(data, i, end)
            text = _list(data, start, i)
        else:
            i = _skip(data, i, tag, end)
            continue
        kinds += 1
    if kinds > 1 or i != end:
        raise Unusual  # several kinds (or one twice): parsers keep the last, merging messages
    return text
