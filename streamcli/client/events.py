"""Publishing and tailing user events: the Event and PublishResult records, and the JSON of event data."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import json
import math
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from json.encoder import encode_basestring as _quote
from typing import Any, NoReturn, overload

from google.protobuf import json_format, struct_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.client.enums import ShortNames
from streamcli.client.jsontext import ENCODER, Unusual, non_finite_name, struct_json, value_json
from streamcli.client.publish import PUBLISH_BATCH, IdempotentPublisher, PublishOptions, PublishProgress
from streamcli.client.tail import TailOptions, set_start, tail_log
from streamcli.errors import StreamcliError, UsageError
from streamcli.times import FIRST_SECOND, LAST_SECOND, Instant, rfc3339

EVENT_TYPES = ShortNames(pb.UserEventType, "USER_EVENT_TYPE_", "event type")


class NonFiniteNumber(ValueError):
    """JSON text holds NaN, Infinity or -Infinity, or a number beyond the range of a double (which
    Python reads as infinite). ``json.loads`` accepts them, but that is not JSON: strict parsers
    refuse it, and a tail would print it back as it came. Also an integer beyond 2^53 in magnitude,
    which the double it becomes in a Struct would silently round."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


def _refuse_constant(name: str) -> NoReturn:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # (text is a JSON number: never NaN)
        raise NonFiniteNumber(f"{text} is beyond the range of a double")
    return number


#: The largest integer magnitude a double holds exactly along with every integer below it (JavaScript's
#: Number.MAX_SAFE_INTEGER + 1): a Struct's numbers are doubles, so 2^53 + 1 would come back as 2^53.
EXACT_INTEGERS = 2**53


def _exact_int(text: str) -> int:
    number = int(text)
    if len(text) >= 16 and abs(number) > EXACT_INTEGERS:  # (15 digits are always below it)
        raise NonFiniteNumber(
            f"{text} is beyond 2^53: event data numbers are doubles, which would round it (send it as a string)"
        )
    return number


# One decoder: json.loads with hooks would build a decoder and its scanner for every line.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_exact_int)


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` of what is JSON proper: the one parser of published events and their data.

    Numbers with a fraction or an exponent pass through a check for infinity, integers through one for
    their magnitude; everything else is parsed as fast as by ``json.loads``.

    Raises:
        json.JSONDecodeError: the text is not JSON.
        NonFiniteNumber: it holds NaN, Infinity, -Infinity, a number too large for a double or an integer
            beyond 2^53 (which a double would round).
        UnicodeDecodeError: bytes that are not UTF-8.
    """
    try:
        if isinstance(text, bytes):  # decoded, and a BOM refused, as by json.loads
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        elif text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except ValueError as exc:
        if isinstance(exc, (json.JSONDecodeError, NonFiniteNumber, UnicodeDecodeError)):
            raise
        # Python refuses to convert an integer of over 4300 digits: far beyond a double anyway.
        raise NonFiniteNumber("an integer is beyond the range of a double") from None


def pack_data(data: Any) -> AnyMessage:
    """JSON data as a google.protobuf.Any holding a Struct (objects) or a Value (anything else)."""
    packed = AnyMessage()
    try:
        if isinstance(data, dict):
            struct = struct_pb2.Struct()
            struct.update(data)
            packed.Pack(struct)
        else:
            value = struct_pb2.Value()
            json_format.ParseDict(data, value)
            packed.Pack(value)
    except OverflowError:  # an integer too large for a double (a number's only type in a Struct)
        raise UsageError("data holds an integer beyond the range of a double") from None
    return packed


STRUCT_URL = "type.googleapis.com/google.protobuf.Struct"
VALUE_URL = "type.googleapis.com/google.protobuf.Value"


def unpack_data(data: AnyMessage) -> Any:
    """The JSON a packed Any carries (None when empty; foreign types as @type + base64)."""
    if not data.type_url:
        return None
    if data.type_url == STRUCT_URL:
        return _struct_to_python(struct_pb2.Struct.FromString(data.value))
    if data.type_url == VALUE_URL:
        return _value_to_python(struct_pb2.Value.FromString(data.value))
    return {"@type": data.type_url, "base64": base64.b64encode(data.value).decode()}


def _struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    # Direct field access: several times faster than json_format.MessageToDict, which matters
    # when a tail prints a hundred thousand events a second.
    return {key: _value_to_python(value) for key, value in struct.fields.items()}


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # JSON has one number type; give integers back as integers.
        if number.is_integer() and abs(number) < 2**53:
            return int(number)
        # NaN and the infinities as protobuf's JSON mapping writes them: strings, as JSON has no such numbers.
        return number if math.isfinite(number) else non_finite_name(number)
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct_to_python(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    return None


def event_from_json(record: dict[str, Any]) -> pb.UserEvent:
    """An event from ``{"user_id", "type", "timestamp"?, "data"?}``."""
    if not isinstance(record, dict):
        raise UsageError("an event must be a JSON object")
    unknown = set(record) - {"user_id", "type", "timestamp", "data"}
    if unknown:
        raise UsageError(f"unknown field(s) {', '.join(sorted(unknown))}")
    user = record.get("user_id")
    if not isinstance(user, str) or not user:
        raise UsageError("user_id must be a non-empty string")
    kind = record.get("type")
    if not isinstance(kind, str):
        raise UsageError("type must be a string")
    event = pb.UserEvent(user_id=user, type=EVENT_TYPES.parse(kind))  # type: ignore[arg-type]
    if record.get("timestamp") is not None:
        event.timestamp.CopyFrom(parse_timestamp(str(record["timestamp"])))
    if record.get("data") is not None:
        event.data.CopyFrom(pack_data(record["data"]))
    return event


def data_json(data: AnyMessage) -> str:
    """The JSON text of a packed Any: ``ENCODER.encode(unpack_data(data))``, read from the wire when it can be."""
    try:
        if data.type_url == STRUCT_URL:
            return struct_json(data.value)
        if data.type_url == VALUE_URL:
            return value_json(data.value)
    except Unusual:
        pass
    return ENCODER.encode(unpack_data(data))


class Event:
    """One event of the log, as ``tail_events`` hands it on: a read-only view over the message received.

    A wrapper rather than a dataclass of the fields, because a replay runs tens of thousands of events
    a second through the CLI. ``bench/records.py`` (100,000 received events, CPU time, four runs on a
    shared 2-core machine): copying every field into a frozen dataclass costs 4.1-5.5 us per event,
    and the ``--json`` line then comes to 10.9-14.7 us per event against 8.7-11.2 us straight from
    the message (15-40% more); wrapping costs 0.15-0.3 us, within the noise of the line's cost.
    Fields are read when asked for, and ``json_line`` builds the text straight from the message.
    Only client/ builds one (``Event(message)``, the one conversion from the message; ``EventBatch``
    for a response's events); callers read the properties.
    """

    __slots__ = ("_message",)

    def __init__(self, message: pb.UserEvent) -> None:
        self._message = message

    @property
    def id(self) -> int:
        """The event's id in the server's log."""
        return self._message.id

    @property
    def user_id(self) -> str:
        return self._message.user_id

    @property
    def type(self) -> str:
        """The short name (``login``), ``unspecified``, or the number of a type this client does not know."""
        return EVENT_TYPES.name(self._message.type)

    @property
    def timestamp(self) -> Instant:
        """When it happened, as the publisher (or the server's append) said."""
        stamp = self._message.timestamp
        return Instant(stamp.seconds, stamp.nanos)

    @property
    def has_data(self) -> bool:
        """Whether the event carries data (which may be JSON ``null``)."""
        return bool(self._message.data.type_url)

    @property
    def data(self) -> Any:
        """The data as JSON values (None without data; a foreign type as ``{"@type", "base64"}``)."""
        return unpack_data(self._message.data)

    @property
    def data_text(self) -> str:
        """The data as JSON text, as ``--json`` prints it (``null`` without data)."""
        return data_json(self._message.data)

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record printed by ``tail events --json``: id, user_id, type, timestamp, data."""
        message = self._message
        return {
            "id": message.id,
            "user_id": message.user_id,
            "type": EVENT_TYPES.name(message.type),
            "timestamp": rfc3339(message.timestamp),
            "data": unpack_data(message.data),
        }

    def json_line(self) -> str:
        """``ENCODER.encode(self.to_json())``, built directly: a replay prints a hundred thousand a second.

        (Type names are lowercase letters and underscores, or a number: nothing to escape.)
        """
        message = self._message
        return (
            f'{{"id":{message.id},"user_id":{_quote(message.user_id)},"type":"{EVENT_TYPES.name(message.type)}",'
            f'"timestamp":"{rfc3339(message.timestamp)}","data":{data_json(message.data)}}}'
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other._message == self._message

    __hash__ = None  # type: ignore[assignment]  # (as the message it wraps)

    def __repr__(self) -> str:
        return f"Event(id={self.id}, user_id={self.user_id!r}, type={self.type!r}, timestamp={self.timestamp})"


class EventBatch(Sequence[Event]):
    """The events of one response, each wrapped as it is read.

    Not a list of 500 wrappers: kept alive together, they and the messages under them made the
    garbage collector run three times as often in a replay (full collections included), which cost
    the CLI about as much again as wrapping; wrapped one at a time, each is gone before the next.
    """

    __slots__ = ("_messages",)

    def __init__(self, messages: Sequence[pb.UserEvent]) -> None:
        self._messages = messages

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> EventBatch: ...

    def __getitem__(self, index: int | slice) -> Event | EventBatch:
        if isinstance(index, slice):
            return EventBatch(self._messages[index])
        return Event(self._messages[index])

    def __iter__(self) -> Iterator[Event]:
        return map(Event, self._messages)


@dataclasses.dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish stored: how many events, and the ids of the first and the last (0 and 0 for none)."""

    count: int
    first_id: int
    last_id: int

    @classmethod
    def from_response(cls, response: pb.PublishEventsResponse) -> PublishResult:
        return cls(response.count, response.first_id, response.last_id)

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record printed by ``events publish --json``."""
        return {"count": self.count, "first_id": self.first_id, "last_id": self.last_id}


#: Days from 0001-01-01 to 1970-01-01.
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()


class TimeOutOfRange(UsageError):
    """A well-formed time that falls outside the years 0001-9999 once in UTC (what a Timestamp can hold)."""


#: The times the client reads: RFC 3339 (``T``/``Z`` in either case, section 5.6), plus what people type: a
#: space for the ``T``, no zone (UTC), no seconds, a bare date (midnight UTC), an offset without its colon
#: (``date +%Y-%m-%dT%H:%M:%S%z`` writes ``+0530``).
_TIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[Tt ](?P<clock>\d{2}:\d{2})(?P<seconds>:\d{2})?(?:\.(?P<fraction>\d+))?"
    r"(?:(?P<utc>[Zz])|(?P<offset>[+-](?:[01]\d|2[0-3])):?(?P<offset_minutes>[0-5]\d))?)?"
)


def parse_timestamp(text: str) -> Timestamp:
    """An RFC 3339 time (``2026-11-24T10:00:00.123456789+05:30``), to the nanosecond; without a zone it is UTC.

    Raises:
        UsageError: the text is not such a time.
        TimeOutOfRange: it is one, outside the years 0001-9999 in UTC.
    """
    seconds, nanos = parse_time(text)
    return Timestamp(seconds=seconds, nanos=nanos)


def parse_time(text: str) -> tuple[int, int]:
    """``parse_timestamp``'s seconds and nanoseconds, without making a Timestamp (a message costs several times
    the parsing: batch ingest sets a record's fields instead).

    What protobuf's ``Timestamp.FromJsonString`` gives for the RFC 3339 forms it reads (a test holds the two
    together), computed directly: that function costs four times as much, which an NDJSON publish of a
    hundred thousand timestamped lines would feel.

    Raises:
        UsageError: the text is not such a time.
        TimeOutOfRange: it is one, outside the years 0001-9999 in UTC.
    """
    # The form machines write, ``2026-11-24T10:00:00.123Z``, read by slicing (a third of the regex's cost);
    # anything else, or a value out of range, is left to the general reading below, which says what is wrong.
    # The date and the minute (``2026-11-24T10:00:``) are read once per minute met (times in a file come close
    # together): a record's time costs a lookup and its seconds.
    if len(text) >= 20 and text[-1] == "Z" and text.isascii() and (minute := minute_seconds(text[:17])) is not None:
        ss, rest = text[17:19], text[19:-1]
        if ss.isdigit() and (second := int(ss)) < 60:
            if not rest:
                return minute + second, 0
            if rest[0] == "." and rest[1:].isdigit():
                return minute + second, int(rest[1:10].ljust(9, "0"))
    text = text.strip()
    match = _TIME.fullmatch(text)
    if match is None:
        raise UsageError(f"{text!r} is not a time like 2026-11-24T10:00:00Z")
    clock = match["clock"]
    hours, minutes = (int(clock[:2]), int(clock[3:])) if clock else (0, 0)
    seconds = int(match["seconds"][1:]) if match["seconds"] else 0
    try:
        day = datetime.date.fromisoformat(match["date"]).toordinal()
    except ValueError:
        day = None
    if day is None or hours > 23 or minutes > 59 or seconds > 59:
        raise UsageError(f"{text!r} is not a time like 2026-11-24T10:00:00Z")
    total = (day - _EPOCH_DAY) * 86_400 + hours * 3600 + minutes * 60 + seconds
    if match["offset"]:
        offset = int(match["offset"][1:]) * 3600 + int(match["offset_minutes"]) * 60
        total -= offset if match["offset"][0] == "+" else -offset
    if not FIRST_SECOND <= total <= LAST_SECOND:
        raise TimeOutOfRange(f"{text!r} is out of range (years 0001-9999 in UTC)")
    # A Timestamp holds nanoseconds: digits beyond them are cut, as the fraction of a datetime cuts them.
    fraction = match["fraction"]
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return total, nanos


@functools.lru_cache(maxsize=4096)
def minute_seconds(start: str) -> int | None:
    """Seconds from the epoch to the start of the minute ``start`` (``YYYY-MM-DDTHH:MM:``, ASCII) names, or None
    when it names none (a 30 February, hour 24): ``parse_time``'s fast reading, once per minute (batch ingest
    reads a record's time with it too: ``records.time_field``)."""
    hh, mm = start[11:13], start[14:16]
    if start[10] != "T" or start[13] != ":" or start[16] != ":" or not (hh + mm).isdigit():
        return None
    day = _day_seconds(start[:10])
    if day is None or (hour := int(hh)) > 23 or (minute := int(mm)) > 59:
        return None
    return day + hour * 3600 + minute * 60


@functools.lru_cache(maxsize=1024)
def _day_seconds(date: str) -> int | None:
    """Seconds from the epoch to the start of ``date`` (``YYYY-MM-DD``, ASCII), or None when it is not such a
    date (a year 0000, a 30 February): ``parse_time``'s fast reading, once per date."""
    if date[4] != "-" or date[7] != "-" or not (date[:4] + date[5:7] + date[8:]).isdigit():
        return None
    try:
        return (datetime.date.fromisoformat(date).toordinal() - _EPOCH_DAY) * 86_400
    except ValueError:
        return None


async def publish_events(
    conn: Connection, events: Iterable[pb.UserEvent], options: PublishOptions | None = None
) -> PublishResult:
    """Publish events in messages of up to PUBLISH_BATCH; returns how many, with the first and last id.

    ``events`` is iterated in the event loop: an in-memory source. For one that blocks (a pipe),
    see ``publish_batches``.
    """

    async def chunks() -> AsyncIterator[list[pb.UserEvent]]:
        batch: list[pb.UserEvent] = []
        try:
            for event in events:
                batch.append(event)
                if len(batch) == PUBLISH_BATCH:
                    yield batch
                    batch = []
        except StreamcliError:
            if batch:  # what came before a bad input is published, and acknowledged
                yield batch
            raise
        if batch:
            yield batch

    return await publish_batches(conn, chunks(), options)


async def publish_batches(
    conn: Connection,
    batches: AsyncIterable[Sequence[pb.UserEvent]],
    options: PublishOptions | None = None,
    progress: PublishProgress | None = None,
) -> PublishResult:
    """Publish each batch of events as soon as ``batches`` yields it, idempotently: a lost connection is
    retried, and what has no acknowledgement re-sent, with no gap and no duplicate
    (``streamcli.client.publish``).

    A source that yields what it has when it has it gets its events published at once: one
    at a time from a trickle, in full messages (PUBLISH_BATCH events) from a flood.

    If ``batches`` raises a StreamcliError (a malformed input line, say), publishing ends
    there, once the server has acknowledged what came before, and the error is raised
    with that count added. ``progress`` (if given) follows how far it got.
    """
    publisher = IdempotentPublisher(conn, batches, options or PublishOptions())
    if progress is not None:
        publisher.progress = progress
    return PublishResult.from_response(await publisher.run())


def tail_events(
    conn: Connection,
    *,
    user_id: str,
    all_users: bool,
    types: Sequence[pb.UserEventType.ValueType],
    since: Timestamp | None,
    options: TailOptions,
) -> AsyncIterator[Sequence[Event]]:
    """Events from the server in batches (one per response), history (``since``) then live, resuming across
    reconnects."""

    def open_stream(resume_after: int | None) -> Any:
        request = pb.StreamUserEventsRequest(
            user_id=user_id, all_users=all_users, event_types=types, no_follow=not options.follow
        )
        set_start(request, resume_after, since, options)
        return conn.stub.StreamUserEvents(request, metadata=conn.metadata)

    return tail_log(conn, open_stream, lambda response: EventBatch(response.events), options)
