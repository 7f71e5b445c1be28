"""Reading data records from NDJSON or CSV, line by line, with the line number of each.

NDJSON is parsed with msgspec and CSV with the csv module (bench/parsers.py
measured the candidates). Each input record becomes either a ``DataRecord``,
written as the bytes of the serialized message (``encode_record``), or
the reason it cannot be one (a line that does not parse, a value that is not a
number): ``Parsed`` carries the line number where the record starts and its
original text, so a refusal is named ``FILE:LINE: reason`` and written to a
dead-letter file as it was. Reading is streaming: memory does not grow with
the input.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import functools
import io
import math
from collections.abc import Callable, Iterable, Iterator
from math import isfinite
from typing import IO, Any, Generic, NamedTuple, TypeVar

import msgspec
from google.protobuf import struct_pb2

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import minute_seconds, parse_time
from streamcli.errors import UsageError
from streamcli.protowire import (
    SMALL,
    bytes_field,
    nanos_field,
    pack_double,
    seconds_field,
    string_field,
    timestamp_parts,
    varint,
)

FORMATS = ("ndjson", "csv")
_ZERO = bytes(8)
_MISSING = object()
#: Encoded keys, names and texts kept (``_key_field``), and the longest kept: memory stays bounded.
CACHED = 4096
CACHED_CHARS = 256


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Which input fields are the record's key, value and timestamp; the others go into its payload."""

    key: str = "key"
    value: str = "value"
    time: str = "timestamp"

    def describe(self) -> str:
        """The mapping as text: part of a batch's identity (another mapping makes other records)."""
        return f"{self.key}\0{self.value}\0{self.time}"


R = TypeVar("R")


class Parsed(NamedTuple, Generic[R]):
    """One input record: where it starts, its text, and the record (a serialized DataRecord or MetricData) or
    why there is none. (A tuple: one is made per input line, and a frozen dataclass costs twice as much.)"""

    line: int  # 1-based number of its first line
    text: str  # the original line(s), without the final newline
    record: R | None
    problem: str = ""


class RecordError(ValueError):
    """A field of an input record cannot make a DataRecord."""


def format_of(name: str, given: str | None) -> str:
    """The input format: ``given``, else from the name's extension (``.csv``: CSV, else NDJSON)."""
    if given is not None:
        if given not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given
    return "csv" if name.lower().endswith(".csv") else "ndjson"


def record_converter(mapping: FieldMap, *, from_text: bool) -> Callable[[dict[str, Any]], bytes]:
    """What makes the DataRecord of one input record's fields (``from_text``: CSV, where every field is a string),
    as the bytes of its serialized message: the mapped fields are taken out of the dict, the others are its
    payload. (A function of the dict alone, the mapping's names bound: a reader calls it once per line.)

    It raises ``RecordError`` when the value is missing or not a finite number, the key or time is not text,
    or the time is not RFC 3339.
    """
    key_name, value_name, time_name = mapping.key, mapping.value, mapping.time

    def to_record(fields: dict[str, Any]) -> bytes:
        key = fields.pop(key_name, "")
        if not isinstance(key, str):
            key = msgspec.json.encode(key).decode() if from_text else _refuse(f"{key_name!r} is not a string")
        value = fields.pop(value_name, _MISSING)
        kind = type(value)
        if kind is float:  # (the JSON reader's own types, checked first by identity)
            number = value
        elif value is _MISSING:
            raise RecordError(f"no {value_name!r} field")
        else:
            number = _number(value, value_name, from_text=from_text)
        if not isfinite(number):
            raise RecordError(f"{value_name!r} is {value} (not a finite number)")
        stamp = fields.pop(time_name, None)
        time = b""
        if stamp is not None and stamp != "":
            if not isinstance(stamp, str):
                raise RecordError(f"{time_name!r} is not an RFC 3339 string")
            try:
                time = time_field(stamp)
            except UsageError as exc:
                raise RecordError(f"{time_name!r}: {exc.message}") from None
        try:
            return _record_bytes(key, number, time, fields)
        except (ValueError, TypeError, OverflowError):  # (a UnicodeEncodeError is a ValueError)
            return _record_message(key, number, parse_time(stamp) if time else None, fields).SerializeToString()

    return to_record


def _number(value: Any, name: str, *, from_text: bool) -> float:
    """A record's value other than a float (an int, or the text of a CSV field) as a float."""
    if from_text:
        try:
            value = float(value)
        except ValueError:
            raise RecordError(f"{name!r} is not a number: {value[:50]!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{name!r} is not a number")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def time_field(stamp: str) -> bytes:
    """A DataRecord's ``timestamp`` field (3) of an RFC 3339 time, as ``parse_time`` reads it, ready to be joined
    into the record's bytes.

    The form machines write (``2026-11-18T17:17:17.017Z``, up to nanoseconds) is read by slicing, its parts'
    bytes kept: each minute's (``_minute``: the seconds of each second met in it) and each fraction's
    (``_fraction``); anything else is ``parse_time``'s to read (a test holds the two together).

    Raises:
        UsageError: the text is not such a time (``parse_time``'s reason).
    """
    if 20 <= len(stamp) <= 30 and stamp[-1] == "Z" and (minute := _minute(stamp[:17])) is not None:
        seconds = minute[stamp[17:19]]
        nanos = _fraction(stamp[19:-1])
        if seconds is not None and nanos is not None:
            return b"".join((b"\x1a", SMALL[len(seconds) + len(nanos)], seconds, nanos))
    return b"".join(timestamp_parts(b"\x1a", *parse_time(stamp)))


class _Seconds(dict[str, "bytes | None"]):
    """The encoded ``seconds`` of a Timestamp in one minute, by the two digits of each second met (filled in as
    they are: data a minute apart costs no more than one second); None for digits that name no second."""

    __slots__ = ("start",)

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start  # the minute's seconds from the epoch

    def __missing__(self, digits: str) -> bytes | None:
        if not (digits.isascii() and digits.isdigit()) or int(digits) > 59:
            return None
        encoded = self[digits] = seconds_field(self.start + int(digits))
        return encoded


@functools.lru_cache(maxsize=CACHED)
def _minute(start: str) -> _Seconds | None:
    """The minute ``start`` (``YYYY-MM-DDTHH:MM:``) names, or None when it names none."""
    base = minute_seconds(start) if start.isascii() else None
    return None if base is None else _Seconds(base)


@functools.lru_cache(maxsize=CACHED)
def _fraction(text: str) -> bytes | None:
    """A Timestamp's encoded ``nanos`` of a second's fraction as written (``.017``, up to nine digits; "": none),
    or None when it is not one."""
    if not text:
        return b""
    digits = text[1:]
    if text[0] != "." or not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
        return None
    return nanos_field(int(digits.ljust(9, "0")))


def encode_record(key: str, value: float, time: tuple[int, int] | None, payload: dict[str, Any]) -> bytes:
    """The serialized DataRecord of a key, a value, a time (seconds, nanoseconds) and payload fields (none: no
    payload), written directly: building the message costs some 15 us a record, several times this.

    What the library cannot encode either (a string that is not Unicode text) gets the library's own error:
    such a record is built as a message, the one way to say what it said before.
    """
    try:
        return _record_bytes(key, value, b"".join(timestamp_parts(b"\x1a", *time)) if time else b"", payload)
    except (ValueError, TypeError, OverflowError):  # (a UnicodeEncodeError is a ValueError)
        return _record_message(key, value, time, payload).SerializeToString()


def _record_bytes(key: str, value: float, time: bytes, payload: dict[str, Any]) -> bytes:
    """A DataRecord's bytes: its key, value, ``time`` (its timestamp field, ready; b"": none) and payload."""
    # (Lengths below 128 are one byte, looked up: a call per varint would cost as much as the rest.)
    number = pack_double(value)
    if payload:
        fields = _struct_bytes(payload)
        size = len(fields)
        return b"".join(
            (
                _key_field(key) if len(key) <= CACHED_CHARS else string_field(1, key),
                b"\x11" + number if number != _ZERO else b"",
                time,
                b"\x22",
                SMALL[size] if size < 128 else varint(size),
                fields,
            )
        )
    return b"".join(
        (
            _key_field(key) if len(key) <= CACHED_CHARS else string_field(1, key),
            b"\x11" + number if number != _ZERO else b"",
            time,
        )
    )


def _struct_bytes(payload: dict[str, Any]) -> bytes:
    """A google.protobuf.Struct's fields (map entries of name and Value); lists and objects as the library
    writes them."""
    parts: list[bytes] = []
    for name, value in payload.items():
        kind = type(value)  # (the JSON reader's own types, checked first by identity: a check costs as much)
        if kind is float or kind is int:
            if len(name) <= CACHED_CHARS:  # (the entry's bytes before the number, kept per name)
                parts += (_number_entry_start(name), pack_double(value))
                continue
        elif kind is str or isinstance(value, str):
            parts.append(_text_entry(name, value) if len(value) <= CACHED_CHARS else _entry(name, _text_value(value)))
            continue
        if isinstance(value, bool):
            slot = b"\x20\x01" if value else b"\x20\x00"
        elif isinstance(value, (int, float)):
            if len(name) <= CACHED_CHARS:  # (the entry's bytes before the number, kept per name)
                parts += (_number_entry_start(name), pack_double(value))
                continue
            slot = b"\x11" + pack_double(value)
        elif value is None:
            slot = b"\x08\x00"
        else:
            whole = struct_pb2.Struct()
            whole.update({name: value})
            parts.append(whole.SerializeToString())
            continue
        # (A scalar Value is at most 9 bytes: the entry's lengths are one byte each.)
        entry = b"".join(
            (_name_field(name) if len(name) <= CACHED_CHARS else string_field(1, name), b"\x12", SMALL[len(slot)], slot)
        )
        size = len(entry)
        parts += (b"\x0a", SMALL[size] if size < 128 else varint(size), entry)
    return b"".join(parts)


def _entry(name: str, value: bytes) -> bytes:
    """A Struct's field: a map entry of its name (key = 1) and serialized Value (value = 2)."""
    entry = (_name_field(name) if len(name) <= CACHED_CHARS else string_field(1, name)) + bytes_field(2, value)
    size = len(entry)
    return b"".join((b"\x0a", SMALL[size] if size < 128 else varint(size), entry))


def _text_value(text: str) -> bytes:
    return bytes_field(3, text.encode())  # (Value.string_value = 3; written when empty: a oneof's member)


# Keys repeat from record to record, and so do the names of a payload's fields and many of its texts: each
# short one is encoded once and kept (up to CACHED of them).
@functools.lru_cache(maxsize=CACHED)
def _key_field(key: str) -> bytes:
    return string_field(1, key)


@functools.lru_cache(maxsize=CACHED)
def _name_field(name: str) -> bytes:
    return string_field(1, name)


@functools.lru_cache(maxsize=CACHED)
def _number_entry_start(name: str) -> bytes:
    """A Struct's field holding a number, up to the number's 8 bytes (Value.number_value = 2: key 0x11)."""
    return _entry(name, b"\x11" + _ZERO)[:-8]


@functools.lru_cache(maxsize=CACHED)
def _text_entry(name: str, text: str) -> bytes:
    return _entry(name, _text_value(text))


def _record_message(key: str, value: float, time: tuple[int, int] | None, payload: dict[str, Any]) -> pb.DataRecord:
    record = pb.DataRecord(key=key, value=value)
    if time is not None:
        record.timestamp.seconds, record.timestamp.nanos = time
    if payload:
        record.payload.update(payload)
    return record


def _refuse(reason: str) -> str:
    raise RecordError(reason)


#: A NamedTuple made from its fields' tuple in C (its own ``__new__`` is Python: about twice the cost, per line).
_new = tuple.__new__


def json_lines(
    lines: Iterable[bytes],
    convert: Callable[[Any], R],
    *,
    shape: type[Any] | None = None,
    errors: tuple[type[Exception], ...] = (ValueError,),
) -> Iterator[Parsed[R]]:
    """What ``convert`` makes of each JSON object of NDJSON lines, by line number (blank lines skipped).

    A line that is not a JSON object, or whose object ``convert`` refuses (raising one of ``errors``), is
    refused with the reason. With ``shape`` (a msgspec Struct), each line is decoded to it, and one that does not
    fit is refused with msgspec's reason.
    """
    decode = msgspec.json.Decoder(shape).decode if shape is not None else msgspec.json.Decoder().decode
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\r\n")
        if not line or line.isspace():
            continue
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8) :]
        text = line.decode("utf-8", "replace")
        try:
            fields = decode(line)
        except msgspec.DecodeError as exc:
            # (A ValidationError is a DecodeError too: with a shape, it says the line does not fit it.)
            fits = shape is None or not isinstance(exc, msgspec.ValidationError)
            yield Parsed(number, text, None, f"not JSON: {exc}" if fits else str(exc))
            continue
        if shape is None and not isinstance(fields, dict):
            yield Parsed(number, text, None, "not a JSON object")
            continue
        try:
            yield _new(Parsed, (number, text, convert(fields), ""))
        except errors as exc:
            yield Parsed(number, text, None, str(exc))


def read_ndjson(stream: IO[bytes], mapping: FieldMap) -> Iterator[Parsed[bytes]]:
    """The records of NDJSON lines (``json_lines``)."""
    return json_lines(
        stream,
        record_converter(mapping, from_text=False),
        errors=(RecordError, ValueError, TypeError, OverflowError),
    )


def read_csv(stream: IO[bytes], mapping: FieldMap) -> Iterator[Parsed[bytes]]:
    """The records of CSV with a header line (quoting and embedded newlines as the csv module reads them; a
    UTF-8 BOM is dropped); a row with more fields than the header is refused."""
    text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    lines = _Lines(text_stream)
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield Parsed(1, lines.taken(), None, f"not CSV: {exc}")
        return
    lines.taken()  # the header's
    to_record = record_converter(mapping, from_text=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Parsed(start, lines.taken(), None, f"not CSV: {exc}")
            continue
        text = lines.taken()
        if not row or row == [""]:
            continue
        if len(row) > len(header):
            yield Parsed(start, text, None, f"{len(row)} fields; the header has {len(header)}")
            continue
        try:
            yield Parsed(start, text, to_record(dict(zip(header, row, strict=False))))
        except RecordError as exc:
            yield Parsed(start, text, None, str(exc))


class _Lines:
    """The lines of a text stream for csv.reader, keeping those of the current row (its original text)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._row: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._stream.readline()
        if not line:
            raise StopIteration
        self._row.append(line)
        return line

    def taken(self) -> str:
        """The text read since the last call, without its final newline."""
        text, self._row = "".join(self._row), []
        return text.removesuffix("\n").removesuffix("\r")


def read_records(stream: IO[bytes], file_format: str, mapping: FieldMap) -> Iterator[Parsed[bytes]]:
    """The records of ``stream`` in ``file_format`` (``ndjson`` or ``csv``)."""
    return read_csv(stream, mapping) if file_format == "csv" else read_ndjson(stream, mapping)
