"""Notifications: SubscribeToNotifications, SendNotification, and notifications the server raises.

The ``notifications`` log is keyed by recipient ("*" = everyone) with the
topic as kind; it is read exactly like the event log.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import ClassVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import LogRecord, NewRecord
from streamcli.services.checks import has_control
from streamcli.services.logs import LogService, timestamp
from streamcli.services.rpc import Context, abort

STREAM = "notifications"
EVERYONE = "*"
MAX_FIELD = 256  # characters of recipient, topic and title
MAX_BODY = 16 * 1024  # characters


def notification_from_record(record: LogRecord) -> pb.Notification:
    """The stored notification with its log id and append time."""
    notification = pb.Notification.FromString(record.payload)
    notification.id = record.id
    notification.timestamp.CopyFrom(timestamp(record.timestamp))
    return notification


class NotificationService(LogService):
    """The notification RPCs of ``StreamingService``, and ``raise_`` for the server's own."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("SendNotification", "SubscribeToNotifications")

    async def raise_(
        self,
        recipient: str,
        topic: str,
        title: str,
        body: str = "",
        severity: pb.NotificationSeverity.ValueType = pb.NOTIFICATION_SEVERITY_INFO,
        attributes: Mapping[str, str] | None = None,
    ) -> pb.Notification:
        """Append a notification and return it with its id and time."""
        notification = pb.Notification(
            recipient=recipient,
            topic=topic,
            title=title,
            body=body,
            severity=severity or pb.NOTIFICATION_SEVERITY_INFO,
            attributes=dict(attributes or {}),
        )
        [raised] = await self.raise_many([notification])
        return raised

    async def raise_many(self, notifications: Sequence[pb.Notification]) -> list[pb.Notification]:
        """Append ``notifications`` (each with its recipient, topic, title...) in one append; returns them with
        their ids and times."""
        records = await self._log.append(
            STREAM, [NewRecord(n.recipient, n.topic, n.SerializeToString()) for n in notifications]
        )
        return [notification_from_record(record) for record in records]

    async def SendNotification(
        self, request: pb.SendNotificationRequest, context: Context
    ) -> pb.SendNotificationResponse:
        for field in ("recipient", "topic", "title"):
            value = getattr(request, field)
            if not value.strip():
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{field} is required")
            if len(value) > MAX_FIELD:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{field} is longer than {MAX_FIELD} characters")
            if has_control(value):
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{field} has a control character")
        if len(request.body) > MAX_BODY:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"body is longer than {MAX_BODY} characters")
        if has_control(request.body, multiline=True):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "body has a control character (other than newline, tab)"
            )
        if request.severity not in pb.NotificationSeverity.values():
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown severity {request.severity}")
        # A user token notifies its own user only (a reminder); the service token anyone, "*" included.
        await self.check_acting_as(request.recipient, context, "sending a notification")
        notification = await self.raise_(
            request.recipient, request.topic, request.title, request.body, request.severity, request.attributes
        )
        return pb.SendNotificationResponse(notification=notification)

    async def SubscribeToNotifications(
        self, request: pb.SubscribeToNotificationsRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeToNotificationsResponse]:
        if not request.recipient:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "recipient is required")
        if len(request.recipient) > MAX_FIELD:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"recipient is longer than {MAX_FIELD} characters")
        await self.check_acting_as(request.recipient, context, "reading notifications")
        recipient, topics = request.recipient, set(request.topics)

        def match(record: LogRecord) -> bool:
            return (record.key == recipient or record.key == EVERYONE) and (not topics or record.kind in topics)

        async for records, position in self.follow(STREAM, request, match, context):
            yield pb.SubscribeToNotificationsResponse(
                notifications=[notification_from_record(r) for r in records],
                position=position,
                server_time=timestamp(time.time()),
            )
