"""Sending and tailing notifications; the Notification record."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.enums import ShortNames
from streamcli.client.tail import TailOptions, set_start, tail_log
from streamcli.times import Instant, rfc3339

SEVERITIES = ShortNames(pb.NotificationSeverity, "NOTIFICATION_SEVERITY_", "severity")


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    """One notification of the log, as the client hands it on."""

    id: int  # its id in the server's log
    recipient: str  # a user, or "*" for everyone
    topic: str
    severity: str  # the short name (info, warning, error), unspecified, or the number of one this client does not know
    title: str
    body: str
    timestamp: Instant  # when the server raised it
    attributes: Mapping[str, str]  # details for machines (read-only)

    @classmethod
    def from_message(cls, message: pb.Notification) -> Notification:
        stamp = message.timestamp
        return cls(
            id=message.id,
            recipient=message.recipient,
            topic=message.topic,
            severity=SEVERITIES.name(message.severity),
            title=message.title,
            body=message.body,
            timestamp=Instant(stamp.seconds, stamp.nanos),
            attributes=types.MappingProxyType(dict(message.attributes)),
        )

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record printed by ``tail notifications --json`` and ``notify send --json``."""
        return {
            "id": self.id,
            "recipient": self.recipient,
            "topic": self.topic,
            "severity": self.severity,
            "title": self.title,
            "body": self.body,
            "timestamp": rfc3339(self.timestamp),
            "attributes": dict(self.attributes),
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
) -> Notification:
    """Raise one notification; returns it with its id and time."""
    request = pb.SendNotificationRequest(
        recipient=recipient, topic=topic, title=title, body=body, severity=severity, attributes=attributes or {}
    )
    with rpc_errors(conn):
        response = await conn.stub.SendNotification(request, metadata=conn.metadata, timeout=30)
    return Notification.from_message(response.notification)


def tail_notifications(
    conn: Connection, *, recipient: str, topics: Sequence[str], since: Timestamp | None, options: TailOptions
) -> AsyncIterator[Sequence[Notification]]:
    """Notifications for ``recipient`` (and everyone) in batches, history then live, resuming across reconnects."""

    def open_stream(resume_after: int | None) -> Any:
        request = pb.SubscribeToNotificationsRequest(recipient=recipient, topics=topics, no_follow=not options.follow)
        set_start(request, resume_after, since, options)
        return conn.stub.SubscribeToNotifications(request, metadata=conn.metadata)

    return tail_log(
        conn, open_stream, lambda response: [Notification.from_message(n) for n in response.notifications], options
    )
