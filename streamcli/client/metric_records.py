"""Reading metric samples from NDJSON or the Prometheus text exposition format, line by line.

NDJSON: one ``{"name", "value", "labels"?, "timestamp"?}`` object a line (the
lines read by ``records.json_lines``); ``timestamp`` is RFC 3339 or seconds
since the epoch. Prometheus text: each sample line is parsed by
``prometheus_client.parser`` (comments, escapes, histograms' ``_bucket``/
``_sum``/``_count`` samples, millisecond timestamps as it reads them); a line
at a time, so one that does not parse is refused by its number and the rest
are read on. Each sample becomes a ``Parsed[pb.MetricData]``: its line, its
text, and the sample or why there is none.
"""

from __future__ import annotations

import codecs
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import IO

import msgspec
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import parse_timestamp
from streamcli.client.records import Parsed, json_lines
from streamcli.errors import UsageError

FORMATS = ("ndjson", "prometheus")


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


def read_samples(lines: Iterable[bytes], file_format: str) -> Iterator[Parsed[pb.MetricData]]:
    """The samples of ``lines`` in ``file_format`` (``ndjson`` or ``prometheus``)."""
    return read_prometheus(lines) if file_format == "prometheus" else read_ndjson(lines)


class SampleLine(msgspec.Struct, forbid_unknown_fields=True):
    """One NDJSON sample as it is written (msgspec checks the types as it decodes)."""

    name: str
    value: float
    labels: dict[str, str] = {}
    timestamp: str | float | None = None


def read_ndjson(lines: Iterable[bytes]) -> Iterator[Parsed[pb.MetricData]]:
    """The samples of NDJSON lines."""
    return json_lines(lines, _sample, shape=SampleLine)


def _sample(line: SampleLine) -> pb.MetricData:
    sample = pb.MetricData(name=line.name, value=line.value)
    labels = sample.labels
    for key, value in line.labels.items():  # (item by item: twice as fast as update() here)
        labels[key] = value
    stamp = line.timestamp
    if isinstance(stamp, str):
        try:
            sample.timestamp.CopyFrom(parse_timestamp(stamp))
        except UsageError as exc:
            raise ValueError(f"'timestamp': {exc.message}") from None
    elif stamp is not None:
        sample.timestamp.CopyFrom(_seconds(stamp))
    return sample


def read_prometheus(lines: Iterable[bytes]) -> Iterator[Parsed[pb.MetricData]]:
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
            sample = pb.MetricData(name=found.name, value=found.value, labels=found.labels)
            try:
                if found.timestamp is not None:
                    sample.timestamp.CopyFrom(_seconds(float(found.timestamp)))
            except ValueError as exc:
                yield Parsed(number, text, None, str(exc))
                continue
            yield Parsed(number, text, sample)


def _seconds(value: float) -> Timestamp:
    if not math.isfinite(value) or not 0 <= value < 4_102_444_800:
        raise ValueError("'timestamp' is outside 1970-2099")
    return Timestamp(seconds=int(value), nanos=round((value % 1) * 1e9) % 1_000_000_000)
