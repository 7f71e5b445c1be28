"""User events: PublishEvents (client streaming) and StreamUserEvents (server streaming).

Every event is appended to the ``events`` log (key = user id, kind = type
name); readers filter on those two without parsing payloads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import LogRecord, NewRecord
from streamcli.services import wire
from streamcli.services.logs import Context, LogService, timestamp

STREAM = "events"
#: Events accepted in one PublishEventsRequest.
MAX_EVENTS_PER_REQUEST = 10_000
#: Longest user id, in characters.
MAX_USER_ID = 256


def encode_response(records: list[LogRecord], position: int) -> bytes:
    """A serialized StreamUserEventsResponse, assembled from the stored events without parsing them.

    Each stored payload is a UserEvent without its id; appending the id field
    to it gives the event as the client sees it (later fields merge in).
    """
    events = (record.payload + wire.varint_field(1, record.id) for record in records)
    return (
        wire.repeated_messages(1, events)
        + wire.varint_field(2, position)
        + wire.bytes_field(3, timestamp(time.time()).SerializeToString())
    )


class EventService(LogService):
    """The event RPCs of ``StreamingService`` on a log store."""

    async def PublishEvents(
        self, request_iterator: AsyncIterator[pb.PublishEventsRequest], context: Context
    ) -> pb.PublishEventsResponse:
        count = first_id = last_id = 0
        async for request in request_iterator:
            if len(request.events) > MAX_EVENTS_PER_REQUEST:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{len(request.events)} events in one message; at most {MAX_EVENTS_PER_REQUEST}",
                )
            records = []
            for index, event in enumerate(request.events, start=count):
                problem = _check_event(event)
                if problem:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"event {index}: {problem} ({count} earlier events were appended)",
                    )
                stored = pb.UserEvent()
                stored.CopyFrom(event)
                stored.ClearField("id")
                if not stored.HasField("timestamp"):
                    stored.timestamp.GetCurrentTime()  # the server's time, as the contract says
                records.append(NewRecord(event.user_id, pb.UserEventType.Name(event.type), stored.SerializeToString()))
            appended = await self._log.append(STREAM, records)
            if appended:
                first_id = first_id or appended[0].id
                last_id = appended[-1].id
                count += len(appended)
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
            if value == pb.USER_EVENT_TYPE_UNSPECIFIED or value not in pb.UserEventType.values():
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown event type {value}")
            types.add(pb.UserEventType.Name(value))
        user = request.user_id

        def match(record: LogRecord) -> bool:
            return (not user or record.key == user) and (not types or record.kind in types)

        async for records, position in self.follow(STREAM, request, match, context):
            yield encode_response(records, position)


def _check_event(event: pb.UserEvent) -> str:
    """Why ``event`` cannot be published, or "" when it can."""
    if not event.user_id:
        return "user_id is required"
    if len(event.user_id) > MAX_USER_ID:
        return f"user_id is longer than {MAX_USER_ID} characters"
    if event.type == pb.USER_EVENT_TYPE_UNSPECIFIED or event.type not in pb.UserEventType.values():
        return f"unknown event type {event.type}"
    return ""
