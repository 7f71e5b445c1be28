"""User events: PublishEvents (client streaming) and StreamUserEvents (server streaming).

Every event is appended to the ``events`` log (key = user id, kind = type
name); readers filter on those two without parsing payloads.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import LogRecord, LogStore, NewRecord
from streamcli.services import wire
from streamcli.services.checks import has_control
from streamcli.services.logs import Context, LogService, LogSettings, timestamp

STREAM = "events"
#: Events accepted in one PublishEventsRequest.
MAX_EVENTS_PER_REQUEST = 10_000
#: Longest user id, in characters.
MAX_USER_ID = 256
#: Publish messages received and not yet appended, at most (the stream waits beyond that). Few: a
#: message may hold thousands of events, and what queues up here is what a publisher costs in memory
#: (64 held a bulk publish's server at 100-110 MB, 8 at 70; the publish rate is the same).
PUBLISH_QUEUE = 8
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

    def __init__(self, log: LogStore, settings: LogSettings, stopping: asyncio.Event) -> None:
        super().__init__(log, settings, stopping)
        self._framer = Framer()

    async def PublishEvents(
        self, request_iterator: AsyncIterator[pb.PublishEventsRequest], context: Context
    ) -> pb.PublishEventsResponse:
        # Group commit: requests that arrive while an append is in flight are appended together,
        # in one transaction, so a publisher sending one event per message is not held to one
        # append (and one wake-up of every reader) per event.
        queue: asyncio.Queue[pb.PublishEventsRequest | None] = asyncio.Queue(PUBLISH_QUEUE)
        receiver = asyncio.create_task(_drain_into(request_iterator, queue))
        count = first_id = last_id = 0
        try:
            finished = False
            while not finished:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                finished = items[-1] is None  # the end of the stream is always the last item
                batch = [item for item in items if item is not None]
                now = Timestamp()
                now.GetCurrentTime()  # the server's time for events sent without one
                records: list[NewRecord] = []
                for request in batch:
                    if len(request.events) > MAX_EVENTS_PER_REQUEST:
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"{len(request.events)} events in one message; at most {MAX_EVENTS_PER_REQUEST}",
                        )
                    for event in request.events:
                        problem = _check_event(event)
                        if problem:
                            await context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"event {count + len(records)}: {problem} ({count} earlier events were appended)",
                            )
                        records.append(_stored(event, now))
                try:
                    appended = await self._log.append(STREAM, records)
                except Exception as exc:  # the store failed (a full disk, say): nothing of this batch is in
                    # INTERNAL, not UNAVAILABLE: retrying a partly appended publish would append twice.
                    await context.abort(
                        grpc.StatusCode.INTERNAL,
                        f"could not append events: {exc} ({count} earlier events were appended)",
                    )
                if appended:
                    first_id = first_id or appended[0].id
                    last_id = appended[-1].id
                    count += len(appended)
        finally:
            receiver.cancel()
        return pb.PublishEventsResponse(count=count, first_id=first_id, last_id=last_id)

    async def StreamUserEvents(self, request: pb.StreamUserEventsRequest, context: Context) -> AsyncIterator[bytes]:
        if request.all_users and request.user_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give user_id or all_users, not both")
        if not request.all_users and not request.user_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "user_id is required (or set all_users to stream every user)"
            )
        types = set()
        for value in request.event_types:
            if value not in TYPE_NAMES:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown event type {value}")
            types.add(TYPE_NAMES[value])
        user = request.user_id

        def match(record: LogRecord) -> bool:
            return (not user or record.key == user) and (not types or record.kind in types)

        async for records, position in self.follow(STREAM, request, match, context):
            yield self._framer.response(records, position)


async def _drain_into(
    requests: AsyncIterator[pb.PublishEventsRequest], queue: asyncio.Queue[pb.PublishEventsRequest | None]
) -> None:
    try:
        async for request in requests:
            await queue.put(request)
    finally:
        await queue.put(None)


def _stored(event: pb.UserEvent, now: Timestamp) -> NewRecord:
    """The record of a published event: the event without its id, stamped ``now`` if it had no time."""
    stored = pb.UserEvent()
    stored.CopyFrom(event)
    stored.ClearField("id")
    if not stored.HasField("timestamp"):
        stored.timestamp.CopyFrom(now)
    return NewRecord(event.user_id, TYPE_NAMES[event.type], stored.SerializeToString())


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
    return ""
