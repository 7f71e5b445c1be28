"""Sending and tailing notifications."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.enums import ShortNames
from streamcli.client.events import rfc3339
from streamcli.client.tail import TailOptions, set_start, tail_log

SEVERITIES = ShortNames(pb.NotificationSeverity, "NOTIFICATION_SEVERITY_", "severity")


def notification_to_json(notification: pb.Notification) -> dict[str, Any]:
    """The NDJSON form printed by ``tail notifications --json``."""
    return {
        "id": notification.id,
        "recipient": notification.recipient,
        "topic": notification.topic,
        "severity": SEVERITIES.name(notification.severity),
        "title": notification.title,
        "body": notification.body,
        "timestamp": rfc3339(notification.timestamp),
        "attributes": dict(notification.attributes),
    }


async def send_notification(
    conn: Connection,
    *,
    recipient: str,
    topic: str,
    title: str,
    body: str = "",
    severity: pb.NotificationSeverity.ValueType = pb.NOTIFICATION_SEVERITY_INFO,
    attributes: Mapping[str, str] | None = None,
) -> pb.Notification:
    """Raise one notification; returns it with its id and time."""
    request = pb.SendNotificationRequest(
        recipient=recipient, topic=topic, title=title, body=body, severity=severity, attributes=attributes or {}
    )
    with rpc_errors(conn.settings.address):
        response = await conn.stub.SendNotification(request, metadata=conn.metadata, timeout=30)
    notification: pb.Notification = response.notification
    return notification


def tail_notifications(
    conn: Connection, *, recipient: str, topics: Sequence[str], since: Timestamp | None, options: TailOptions
) -> AsyncIterator[Sequence[pb.Notification]]:
    """Notifications for ``recipient`` (and everyone) in batches, history then live, resuming across reconnects."""

    def open_stream(resume_after: int | None) -> Any:
        request = pb.SubscribeToNotificationsRequest(recipient=recipient, topics=topics, no_follow=not options.follow)
        set_start(request, resume_after, since)
        return conn.stub.SubscribeToNotifications(request, metadata=conn.metadata)

    return tail_log(conn, open_stream, lambda response: response.notifications, options)
