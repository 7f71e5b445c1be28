"""Reading data records from NDJSON or CSV, line by line, with the line number of each.

NDJSON is parsed with msgspec and CSV with the csv module (bench/parsers.py
measured the candidates). Each input record becomes either a ``DataRecord`` or
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
import io
import math
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

import msgspec
from google.protobuf import struct_pb2

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import parse_time
from streamcli.errors import UsageError

FORMATS = ("ndjson", "csv")


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


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed(Generic[R]):
    """One input record: where it starts, its text, and the record (a DataRecord, a MetricData) or why there is
    none."""

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


def to_record(fields: dict[str, Any], mapping: FieldMap, *, from_text: bool) -> pb.DataRecord:
    """The DataRecord of one input record's fields (``from_text``: CSV, where every field is a string).

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
    record = pb.DataRecord(key=key, value=number)
    stamp = fields.pop(mapping.time, None)
    if stamp not in (None, ""):
        if not isinstance(stamp, str):
            raise RecordError(f"{mapping.time!r} is not an RFC 3339 string")
        try:
            seconds, nanos = parse_time(stamp)
        except UsageError as exc:
            raise RecordError(f"{mapping.time!r}: {exc.message}") from None
        # Set in place: a Timestamp made and copied costs twice the parsing.
        record.timestamp.seconds = seconds
        record.timestamp.nanos = nanos
    if fields:
        _fill(record.payload, fields)
    return record


def _fill(payload: struct_pb2.Struct, fields: dict[str, Any]) -> None:
    """``payload.update(fields)``, with scalars set in place (``Struct.update`` costs some 4 us a field, most
    of an ingested record's parsing); lists and objects go through ``update``, as before."""
    slots = payload.fields
    for name, value in fields.items():
        if isinstance(value, str):
            slots[name].string_value = value
        elif isinstance(value, bool):
            slots[name].bool_value = value
        elif isinstance(value, (int, float)):
            slots[name].number_value = value
        elif value is None:
            slots[name].null_value = struct_pb2.NULL_VALUE
        else:
            payload.update({name: value})


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
        if not line.strip():
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


def read_ndjson(stream: IO[bytes], mapping: FieldMap) -> Iterator[Parsed[pb.DataRecord]]:
    """The records of NDJSON lines (``json_lines``)."""
    return json_lines(
        stream,
        lambda fields: to_record(fields, mapping, from_text=False),
        errors=(RecordError, ValueError, TypeError, OverflowError),
    )


def read_csv(stream: IO[bytes], mapping: FieldMap) -> Iterator[Parsed[pb.DataRecord]]:
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


def read_records(stream: IO[bytes], file_format: str, mapping: FieldMap) -> Iterator[Parsed[pb.DataRecord]]:
    """The records of ``stream`` in ``file_format`` (``ndjson`` or ``csv``)."""
    return read_csv(stream, mapping) if file_format == "csv" else read_ndjson(stream, mapping)
