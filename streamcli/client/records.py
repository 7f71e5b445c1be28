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
from typing import IO, Any, Generic, NamedTuple, TypeVar

import msgspec
from google.protobuf import struct_pb2

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import parse_time
from streamcli.errors import UsageError
from streamcli.protowire import SMALL, bytes_field, pack_double, string_field, timestamp_parts, varint

FORMATS = ("ndjson", "csv")
_ZERO = bytes(8)
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


def to_record(fields: dict[str, Any], mapping: FieldMap, *, from_text: bool) -> bytes:
    """The DataRecord of one input record's fields (``from_text``: CSV, where every field is a string), as the
    bytes of its serialized message (``encode_record``).

    Raises:
        RecordError: the value is missing or not a finite number, the key or time is not text, the time
            not RFC 3339.
    """
    key = fields.pop(mapping.key, "")
    if not isinstance(key, str):
        key = msgspec.json.encode(key).decode() if from_text else _refuse(f"{mapping.key!r} is not a string")
    if mapping.value not in fields:
        raise RecordError(f"no {mapping.value!r} field")
    value = fields.pop(mapping.value)
    if from_text:
        try:
            value = float(value)
        except ValueError:
            raise RecordError(f"{mapping.value!r} is not a number: {value[:50]!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{mapping.value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise RecordError(f"{mapping.value!r} is {value} (not a finite number)")
    stamp = fields.pop(mapping.time, None)
    time: tuple[int, int] | None = None
    if stamp not in (None, ""):
        if not isinstance(stamp, str):
            raise RecordError(f"{mapping.time!r} is not an RFC 3339 string")
        try:
            time = parse_time(stamp)
        except UsageError as exc:
            raise RecordError(f"{mapping.time!r}: {exc.message}") from None
    return encode_record(key, number, time, fields)


def encode_record(key: str, value: float, time: tuple[int, int] | None, payload: dict[str, Any]) -> bytes:
    """The serialized DataRecord of a key, a value, a time (seconds, nanoseconds) and payload fields (none: no
    payload), written directly: building the message costs some 15 us a record, several times this.

    What the library cannot encode either (a string that is not Unicode text) gets the library's own error:
    such a record is built as a message, the one way to say what it said before.
    """
    try:
        return _record_bytes(key, value, time, payload)
    except (ValueError, TypeError, OverflowError):  # (a UnicodeEncodeError is a ValueError)
        return _record_message(key, value, time, payload).SerializeToString()


def _record_bytes(key: str, value: float, time: tuple[int, int] | None, payload: dict[str, Any]) -> bytes:
    # (Lengths below 128 are one byte, looked up: a call per varint would cost as much as the rest.)
    parts = [_key_field(key) if len(key) <= CACHED_CHARS else string_field(1, key)]
    number = pack_double(value)
    if number != _ZERO:
        parts += (b"\x11", number)
    if time is not None:
        parts += timestamp_parts(b"\x1a", *time)
    if payload:
        fields = _struct_bytes(payload)
        size = len(fields)
        parts += (b"\x22", SMALL[size] if size < 128 else varint(size), fields)
    return b"".join(parts)


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
            yield Parsed(number, text, convert(fields))
        except errors as exc:
            yield Parsed(number, text, None, str(exc))


def read_ndjson(stream: IO[bytes], mapping: FieldMap) -> Iterator[Parsed[bytes]]:
    """The records of NDJSON lines (``json_lines``)."""
    return json_lines(
        stream,
        functools.partial(to_record, mapping=mapping, from_text=False),
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
            yield Parsed(start, text, to_record(dict(zip(header, row, strict=False)), mapping, from_text=True))
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
