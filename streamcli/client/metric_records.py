"""Reading metric samples from NDJSON or the Prometheus text exposition format, line by line.

NDJSON: one ``{"name", "value", "labels"?, "timestamp"?}`` object a line (the
lines read by ``records.json_lines``); ``timestamp`` is RFC 3339 or seconds
since the epoch. Prometheus text: each sample line is parsed by
``prometheus_client.parser`` (comments, escapes, histograms' ``_bucket``/
``_sum``/``_count`` samples, millisecond timestamps as it reads them); a line
at a time, so one that does not parse is refused by its number and the rest
are read on. Each sample becomes a ``Parsed[bytes]``: its line, its text, and
the sample (a MetricData written as the bytes of the serialized message,
``encode_sample``) or why there is none.
"""

from __future__ import annotations

import codecs
import functools
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import IO

import msgspec
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import parse_time
from streamcli.client.records import CACHED, CACHED_CHARS, Parsed, json_lines
from streamcli.errors import UsageError
from streamcli.protowire import bytes_field, pack_double, string_field, timestamp_parts

FORMATS = ("ndjson", "prometheus")
_ZERO = bytes(8)


def detect(stream: IO[bytes], given: str | None) -> tuple[str, Iterable[bytes]]:
    """The input's format (``given``, else NDJSON when its first non-blank line starts with ``{``, else
    Prometheus text) and its lines, the ones read to decide included."""
    if given is not None:
        if given not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given, stream
    seen: list[bytes] = []
    for line in stream:
        seen.append(line)
        start = line.removeprefix(codecs.BOM_UTF8).strip()
        if start:
            return ("ndjson" if start.startswith(b"{") else "prometheus"), itertools.chain(seen, stream)
    return "ndjson", seen


def read_samples(lines: Iterable[bytes], file_format: str) -> Iterator[Parsed[bytes]]:
    """The samples of ``lines`` in ``file_format`` (``ndjson`` or ``prometheus``)."""
    return read_prometheus(lines) if file_format == "prometheus" else read_ndjson(lines)


class SampleLine(msgspec.Struct, forbid_unknown_fields=True):
    """One NDJSON sample as it is written (msgspec checks the types as it decodes)."""

    name: str
    value: float
    labels: dict[str, str] = {}
    timestamp: str | float | None = None


def read_ndjson(lines: Iterable[bytes]) -> Iterator[Parsed[bytes]]:
    """The samples of NDJSON lines."""
    return json_lines(lines, _sample, shape=SampleLine)


def _sample(line: SampleLine) -> bytes:
    stamp = line.timestamp
    time: tuple[int, int] | None = None
    if isinstance(stamp, str):
        try:
            time = parse_time(stamp)
        except UsageError as exc:
            raise ValueError(f"'timestamp': {exc.message}") from None
    elif stamp is not None:
        time = _seconds(stamp)
    return encode_sample(line.name, line.value, time, line.labels)


def encode_sample(name: str, value: float, time: tuple[int, int] | None, labels: dict[str, str]) -> bytes:
    """The serialized MetricData of a name, a value, a time (seconds, nanoseconds) and labels, written directly
    (building the message costs several times as much). What the library cannot encode either (a string that is
    not Unicode text) gets the library's own error, from the message built."""
    try:
        return _sample_bytes(name, value, time, labels)
    except (ValueError, TypeError, OverflowError):  # (a UnicodeEncodeError is a ValueError)
        sample = pb.MetricData(name=name, value=value, labels=labels)
        if time is not None:
            sample.timestamp.CopyFrom(Timestamp(seconds=time[0], nanos=time[1]))
        return sample.SerializeToString()


def _sample_bytes(name: str, value: float, time: tuple[int, int] | None, labels: dict[str, str]) -> bytes:
    parts = [_name_field(name) if len(name) <= CACHED_CHARS else string_field(1, name)]
    number = pack_double(value)
    if number != _ZERO:
        parts += (b"\x11", number)
    if time is not None:
        parts += timestamp_parts(b"\x1a", *time)
    for key, label in labels.items():
        parts.append(_label_field(key, label) if len(label) <= CACHED_CHARS else _label_entry(key, label))
    return b"".join(parts)


# Names and labels repeat from sample to sample (a series is the point of them): each short one is encoded
# once and kept (up to CACHED of them).
@functools.lru_cache(maxsize=CACHED)
def _name_field(name: str) -> bytes:
    return string_field(1, name)


def _label_entry(key: str, label: str) -> bytes:
    """A label: a map entry (labels = 4) of its key (1) and value (2)."""
    return bytes_field(4, string_field(1, key) + string_field(2, label))


_label_field = functools.lru_cache(maxsize=CACHED)(_label_entry)


def read_prometheus(lines: Iterable[bytes]) -> Iterator[Parsed[bytes]]:
    """The samples of Prometheus text exposition lines (comments and blank lines skipped)."""
    from prometheus_client.parser import text_string_to_metric_families

    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            samples = [s for family in text_string_to_metric_families(text + "\n") for s in family.samples]
        except (ValueError, IndexError, KeyError) as exc:
            yield Parsed(number, text, None, f"not Prometheus text: {exc}")
            continue
        for found in samples:
            try:
                time = None if found.timestamp is None else _seconds(float(found.timestamp))
            except ValueError as exc:
                yield Parsed(number, text, None, str(exc))
                continue
            yield Parsed(number, text, encode_sample(found.name, found.value, time, found.labels))


def _seconds(value: float) -> tuple[int, int]:
    if not math.isfinite(value) or not 0 <= value < 4_102_444_800:
        raise ValueError("'timestamp' is outside 1970-2099")
    return int(value), round((value % 1) * 1e9) % 1_000_000_000
