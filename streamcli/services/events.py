"""User events: PublishEvents (client streaming) and StreamUserEvents (server streaming).

Every event is appended to the ``events`` log (key = user id, kind = type
name); readers filter on those two without parsing payloads. A publish stream
that names its producer has its events numbered: the log stores each
(producer, sequence) once (``LogStore.append``), so a client may re-send what
it has no acknowledgement for.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import LogRecord, LogStore, NewRecord, SequenceGapError
from streamcli.credentials import Caller, Credentials
from streamcli.services import wire
from streamcli.services.checks import MalformedRequest, has_control
from streamcli.services.logs import LogService, LogSettings, timestamp
from streamcli.services.rpc import Context, abort
from streamcli.times import writable

STREAM = "events"
#: Events accepted in one PublishEventsRequest.
MAX_EVENTS_PER_REQUEST = 10_000
#: Longest user id, in characters.
MAX_USER_ID = 256
#: Publish messages received and not yet appended, at most (the stream waits beyond that). Few: a
#: message may hold thousands of events, and what queues up here is what a publisher costs in memory
#: (64 held a bulk publish's server at 100-110 MB, 8 at 70; the publish rate is the same).
PUBLISH_QUEUE = 8
#: A producer id: 1 to 128 ASCII letters, digits, ``.``, ``_``, ``:`` and ``-`` (a UUID fits).
PRODUCER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Highest sequence number of a producer's event (SQLite's INTEGER is signed 64-bit).
MAX_SEQUENCE = 2**63 - 1
#: Valid event types (UNSPECIFIED excluded) and their enum names, the log's record kinds.
TYPE_NAMES = {value: pb.UserEventType.Name(value) for value in pb.UserEventType.values() if value}


#: Framed events kept for other readers: live readers all send the newest ones.
FRAMED_CACHE = 4096


class Framer:
    """Frames stored events into StreamUserEventsResponses without parsing them, each event once.

    A stored payload is a UserEvent without its id; appending the id field to it
    gives the event as the client sees it (later fields merge in). A hundred live
    tails send the same new events: the framed bytes of the newest are kept, so
    each is framed once, not once per reader.
    """

    def __init__(self) -> None:
        # OrderedDict: dropping the oldest is O(1) (on a dict, next(iter(d)) scans the deleted slots).
        self._framed: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def response(self, records: list[LogRecord], position: int) -> bytes:
        """A serialized StreamUserEventsResponse of ``records``, read up to ``position``."""
        framed = self._framed
        parts = []
        for record in records:
            event = framed.get(record.id)
            if event is None:
                event = framed[record.id] = wire.bytes_field(1, record.payload + wire.varint_field(1, record.id))
                if len(framed) > FRAMED_CACHE:
                    framed.popitem(last=False)  # the oldest
            parts.append(event)
        parts.append(wire.varint_field(2, position))
        parts.append(wire.bytes_field(3, timestamp(time.time()).SerializeToString()))
        return b"".join(parts)


class EventService(LogService):
    """The event RPCs of ``StreamingService`` on a log store."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("PublishEvents", "StreamUserEvents")

    def __init__(
        self, log: LogStore, settings: LogSettings, stopping: asyncio.Event, credentials: Credentials | None = None
    ) -> None:
        super().__init__(log, settings, stopping, credentials)
        self._framer = Framer()

    async def PublishEvents(
        self, request_iterator: AsyncIterator[pb.PublishEventsRequest], context: Context
    ) -> pb.PublishEventsResponse:
        # Group commit: requests that arrive while an append is in flight are appended together,
        # in one transaction, so a publisher sending one event per message is not held to one
        # append (and one wake-up of every reader) per event.
        queue: asyncio.Queue[pb.PublishEventsRequest | _End] = asyncio.Queue(PUBLISH_QUEUE)
        receiver = asyncio.create_task(_drain_into(request_iterator, queue))
        publication = _Publication(self._credentials.caller(context.invocation_metadata()))
        try:
            while True:
                end = publication.take(_queued(queue, await queue.get()))
                if publication.records:
                    await self._append(publication, context)
                if publication.refusal:
                    stored = publication.stored
                    await abort(
                        context,
                        publication.code,
                        f"{publication.refusal}; {stored.summary()}",
                        await self._trailer(stored, publication.stored_as) + publication.extra_trailer,
                    )
                if end is not None:
                    return await self._response(publication, end)
        finally:
            receiver.cancel()

    async def _append(self, publication: _Publication, context: Context) -> None:
        """Append the events ``publication`` took and count them as stored; at a gap in the producer's
        sequence, append those before it and make the gap the publication's refusal."""
        records, stored = publication.records, publication.stored
        while records:
            try:
                appended = await self._log.append(STREAM, records)
            except SequenceGapError as gap:
                records = records[: gap.index]
                publication.skipped_ahead(gap)
                continue
            except Exception as exc:  # the store failed (a full disk, say): nothing of this batch is in
                # INTERNAL, not UNAVAILABLE: retrying a partly appended publish would append twice. (A store
                # that cannot be reached is UNAVAILABLE all the same: server/service.py's store_boundary.)
                await abort(
                    context,
                    grpc.StatusCode.INTERNAL,
                    f"could not append events: {exc}; {stored.summary()}",
                    await self._trailer(stored, publication.stored_as),
                )
            stored.add(appended, len(records))
            break

    async def _response(self, publication: _Publication, end: _End) -> pb.PublishEventsResponse:
        """The answer to a stream that ended with ``end`` and had every event it sent stored."""
        if end.error is not None:
            raise end.error  # the request stream broke: the client is gone
        response = publication.stored.response()
        if publication.producer:
            state = await self._log.producer(STREAM, publication.stored_as)
            response.last_sequence = state.last_sequence
            response.producer_first_id = state.first_id
            response.producer_last_id = state.last_id
        return response

    async def _trailer(self, stored: _Stored, producer: str) -> tuple[tuple[str, str], ...]:
        """The trailing metadata of a failed stream: what it stored, and with a producer, how far the
        producer's events are stored (when the store can still say)."""
        trailer = stored.trailer()
        if producer:
            try:
                state = await self._log.producer(STREAM, producer)
            except Exception:  # the store is failing: the count and last id say what this stream stored
                return trailer
            trailer += (("last-sequence", str(state.last_sequence)),)
        return trailer

    async def StreamUserEvents(self, request: pb.StreamUserEventsRequest, context: Context) -> AsyncIterator[bytes]:
        if request.all_users and request.user_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "give user_id or all_users, not both")
        if not request.all_users and not request.user_id:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "user_id is required (or set all_users to stream every user)"
            )
        if request.all_users and not self._credentials.caller(context.invocation_metadata()).is_service:
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "all_users needs the service token: a user token reads its own events",
            )
        if len(request.user_id) > MAX_USER_ID:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"user_id is longer than {MAX_USER_ID} characters")
        if request.user_id:
            await self.check_acting_as(request.user_id, context, "reading events")
        types = set()
        for value in request.event_types:
            if value not in TYPE_NAMES:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown event type {value}")
            types.add(TYPE_NAMES[value])
        user = request.user_id

        def match(record: LogRecord) -> bool:
            return (not user or record.key == user) and (not types or record.kind in types)

        async for records, position in self.follow(STREAM, request, match, context):
            yield self._framer.response(records, position)


class _Publication:
    """One publish stream: its producer, what it stored, and the events of the messages taken last.

    ``take`` turns what was queued into ``records`` (the events to append, as far as they are valid)
    and, at the first message or event that may not be stored, a ``refusal`` with its status ``code``.
    """

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.stored = _Stored()
        self.received = 0  # messages taken so far
        self.producer = ""  # the stream's producer (from its first message): its events are stored once each
        self.stored_as = ""  # the producer in the log: a user token's producers are its own, whatever they are called
        self.records: list[NewRecord] = []
        self.starts: list[tuple[int, int]] = []  # (index in records, message number) of each message taken
        self.refusal = ""  # why the stream ends here, with what came before it stored
        self.code = grpc.StatusCode.INVALID_ARGUMENT
        self.extra_trailer: tuple[tuple[str, str], ...] = ()

    def take(self, items: list[pb.PublishEventsRequest | _End]) -> _End | None:
        """Take queued messages up to the end of the stream or a refusal; returns the end if it was reached."""
        now = Timestamp()
        now.GetCurrentTime()  # the server's time for events sent without one
        self.records = []
        self.starts = []
        for item in items:
            if isinstance(item, _End):
                if isinstance(item.error, MalformedRequest):
                    self.refusal = item.error.detail
                return item
            if not self.received:
                self.producer = producer = item.producer_id
                # ('/' is in no producer id: a user's "x" is never the service token's "alice/x")
                caller = self.caller
                self.stored_as = producer if caller.is_service or not producer else f"{caller.user}/{producer}"
            self.refusal = _message_problem(item, self.received, self.producer)
            if self.refusal:
                return None
            self.starts.append((len(self.records), self.received))
            self._take_events(item, now)
            if self.refusal:
                return None
            self.received += 1
        return None

    def _take_events(self, message: pb.PublishEventsRequest, now: Timestamp) -> None:
        """The events of ``message`` into ``records``; the valid events before an invalid one are stored."""
        records, caller, producer, stored_as = self.records, self.caller, self.producer, self.stored_as
        sequence = message.first_sequence
        for event in message.events:
            problem = _check_event(event)
            if not problem and not caller.may_act_as(event.user_id):
                problem = f"this token is {caller.user}'s: it publishes {caller.user}'s events only"
                self.code = grpc.StatusCode.PERMISSION_DENIED
            if problem:
                self.refusal = f"event {self.stored.acknowledged + len(records)} (message {self.received}): {problem}"
                return
            records.append(_stored(event, now, stored_as, sequence))
            if producer:
                sequence += 1

    def skipped_ahead(self, gap: SequenceGapError) -> None:
        """The producer's event at ``gap.index`` of ``records`` is numbered beyond the next one expected."""
        message = max(number for start, number in self.starts if start <= gap.index)
        self.refusal = (
            f"event {self.stored.acknowledged} (message {message}): sequence {gap.sequence} of producer "
            f"{self.producer!r} skips ahead; the next the server expects is {gap.expected}"
        )
        self.code = grpc.StatusCode.FAILED_PRECONDITION
        self.extra_trailer = (("expected-sequence", str(gap.expected)),)


def _queued(
    queue: asyncio.Queue[pb.PublishEventsRequest | _End], first: pb.PublishEventsRequest | _End
) -> list[pb.PublishEventsRequest | _End]:
    """``first`` and whatever else is queued already."""
    items = [first]
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class _End:
    """The end of a request stream, as queued for the appending loop: normal, or the error that ended it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error


class _Stored:
    """What one publish stream has appended so far."""

    def __init__(self) -> None:
        self.count = self.first_id = self.last_id = 0
        self.duplicates = 0  # events acknowledged without being stored again (a producer's re-sent events)

    @property
    def acknowledged(self) -> int:
        """Events of the stream taken care of: stored now, or before (duplicates)."""
        return self.count + self.duplicates

    def add(self, appended: list[LogRecord], sent: int) -> None:
        """Count an append of ``sent`` records of which ``appended`` were stored (the rest were duplicates)."""
        self.duplicates += sent - len(appended)
        if appended:
            self.first_id = self.first_id or appended[0].id
            self.last_id = appended[-1].id
            self.count += len(appended)

    def summary(self) -> str:
        """What a failed stream stored, for the status detail: exactly the events sent before the failure."""
        if not self.acknowledged:
            return "no event of this stream was stored"
        if self.duplicates:
            stored = f"ids {self.first_id}-{self.last_id}" if self.count else "none of them by this stream"
            return (
                f"the first {self.acknowledged} events of this stream are stored ({self.duplicates} of them were "
                f"already; {stored}), none after them"
            )
        if self.count == 1:
            return f"the first event of this stream was stored (id {self.last_id}), none after it"
        return (
            f"the first {self.count} events of this stream were stored (ids {self.first_id}-{self.last_id}), "
            "none after them"
        )

    def response(self) -> pb.PublishEventsResponse:
        return pb.PublishEventsResponse(
            count=self.count, first_id=self.first_id, last_id=self.last_id, duplicates=self.duplicates
        )

    def trailer(self) -> tuple[tuple[str, str], ...]:
        """The same as trailing metadata, for programs: resume with event number ``stored-count``."""
        return (("stored-count", str(self.acknowledged)), ("last-stored-id", str(self.last_id)))


async def _drain_into(
    requests: AsyncIterator[pb.PublishEventsRequest], queue: asyncio.Queue[pb.PublishEventsRequest | _End]
) -> None:
    end = _End()
    try:
        async for request in requests:
            await queue.put(request)
    except Exception as exc:  # a message that does not decode, or a broken stream: what came before counts
        end = _End(exc)
    await queue.put(end)


def _stored(event: pb.UserEvent, now: Timestamp, producer: str, sequence: int) -> NewRecord:
    """The record of a published event: the event without its id, stamped ``now`` if it had no time."""
    stored = pb.UserEvent()
    stored.CopyFrom(event)
    stored.ClearField("id")
    if not stored.HasField("timestamp"):
        stored.timestamp.CopyFrom(now)
    return NewRecord(event.user_id, TYPE_NAMES[event.type], stored.SerializeToString(), producer, sequence)


def _message_problem(request: pb.PublishEventsRequest, number: int, producer: str) -> str:
    """Why message ``number`` of a stream whose producer is ``producer`` cannot be used, or ""."""
    if len(request.events) > MAX_EVENTS_PER_REQUEST:
        return f"message {number} holds {len(request.events)} events; at most {MAX_EVENTS_PER_REQUEST} per message"
    if not producer:
        if request.producer_id:
            return f"message {number} names a producer_id, but the stream's first message did not"
        if request.first_sequence:
            return f"message {number} has a first_sequence without a producer_id"
        return ""
    if not number and not PRODUCER_ID.fullmatch(producer):
        return "producer_id must be 1 to 128 characters among ASCII letters, digits, '.', '_', ':' and '-'"
    if request.producer_id and request.producer_id != producer:
        return f"message {number} names another producer_id than the stream's first message"
    if request.events and not request.first_sequence:
        return f"message {number} has events and a producer_id but no first_sequence (events are numbered from 1)"
    if request.first_sequence + len(request.events) - 1 > MAX_SEQUENCE:
        return f"message {number} numbers events beyond the highest sequence, {MAX_SEQUENCE}"
    return ""


def _check_event(event: pb.UserEvent) -> str:
    """Why ``event`` cannot be published, or "" when it can."""
    if not event.user_id:
        return "user_id is required"
    if len(event.user_id) > MAX_USER_ID:
        return f"user_id is longer than {MAX_USER_ID} characters"
    if has_control(event.user_id):
        return "user_id has a control character"
    if event.type not in TYPE_NAMES:
        return f"unknown event type {event.type}"
    if event.HasField("timestamp") and not writable(event.timestamp):
        return "timestamp is outside what RFC 3339 can write (years 0001-9999, nanos 0-999999999)"
    if event.HasField("data"):
        return _data_problem(event.data)
    return ""


def _data_types() -> dict[str, type[Message]]:
    """The message types ``data`` may hold: those of the contract's file and its imports, which is what the
    server's reflection describes (so that any client can render them), except types holding an Any
    (whose own content could again be anything)."""
    found: dict[str, Descriptor] = {}
    files = [pb.DESCRIPTOR]
    while files:
        file = files.pop()
        files.extend(file.dependencies)
        pending = list(file.message_types_by_name.values())
        while pending:
            message = pending.pop()
            if not message.GetOptions().map_entry:
                found[message.full_name] = message
            pending.extend(message.nested_types)

    def holds_any(message: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
        if message.full_name == ANY_TYPE:
            return True
        return any(
            field.message_type is not None
            and field.message_type.full_name not in seen
            and holds_any(field.message_type, seen | {message.full_name})
            for field in message.fields
        )

    return {name: GetMessageClass(message) for name, message in found.items() if not holds_any(message)}


ANY_TYPE = "google.protobuf.Any"
#: Type name -> message class of what an event's ``data`` may hold.
DATA_TYPES = _data_types()


def _data_problem(data: AnyMessage) -> str:
    """Why an event's ``data`` cannot be stored ("" when it can): its type must be one the server
    describes, and its value must decode as that type."""
    url = data.type_url
    message_class = _DATA_TYPE_BY_URL.get(url)  # every event of a bulk publish has the same URL: one look-up
    if message_class is None:
        value = data.value
        if not url and not value:
            return ""  # an empty Any: no data
        prefix, _, name = url.rpartition("/")
        message_class = DATA_TYPES.get(name) if prefix else None
        if message_class is None:
            shown = url if len(url) <= 200 else url[:200] + "..."
            return (
                f"data holds type {shown!r}, which this server does not describe; use a type of the contract or "
                "its imports (the CLI sends JSON as google.protobuf.Struct or Value)"
            )
        if len(_DATA_TYPE_BY_URL) < 64:  # (bounded: a client may spell a type's URL in any number of ways)
            _DATA_TYPE_BY_URL[url] = message_class
    try:
        message_class.FromString(data.value)
    except DecodeError:
        return (
            f"data is not a valid {message_class.DESCRIPTOR.full_name} (or it is nested deeper than protobuf's "
            "limit of 100 messages: about 33 levels of JSON objects or arrays)"
        )
    return ""


#: Type URLs seen and found in DATA_TYPES.
_DATA_TYPE_BY_URL: dict[str, type[Message]] = {}
