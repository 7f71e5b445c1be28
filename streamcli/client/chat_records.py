"""What a chat room sends, as typed values: the one place chat's protobuf messages become Python ones.

``ChatClient`` converts each message, presence list and notice as it arrives,
so line mode, the REPL and ``ChatSession`` never see a protobuf message.
Notices the client makes itself (a usage error, a failed upload) are the same
``ChatNotice``, with a code of their own (``USAGE``, ``UPLOAD``, ``DOWNLOAD``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.enums import ShortNames
from streamcli.errors import StreamcliError, error_for_status
from streamcli.times import invalid_time, rfc3339

MESSAGE_TYPES = ShortNames(pb.ChatMessageType, "CHAT_MESSAGE_TYPE_", "message type")


@dataclasses.dataclass(frozen=True, slots=True)
class ChatMessage:
    """A message stored in a room (TEXT, SYSTEM, FILE, IMAGE) or a live TYPING indicator (id 0).

    ``type`` is the short name (``text``, ``system``, ``file``, ``image``, ``typing``; the number for a
    type this client does not know). ``timestamp`` is RFC 3339 in UTC, or ``invalid time (S s, N ns)``
    for a time no RFC 3339 text can hold; ``timestamp_ns`` is then None.
    """

    id: int
    room_id: str
    user_id: str
    type: str
    content: str
    file_id: str
    timestamp: str
    timestamp_ns: int | None

    @property
    def shares_file(self) -> bool:
        """A FILE or IMAGE message: ``file_id`` names a file that ``/get`` downloads."""
        return self.type in ("file", "image")

    def to_json(self) -> dict[str, Any]:
        """The NDJSON form printed by ``chat --json`` (like ``event_to_json`` for events)."""
        return {
            "id": self.id,
            "room_id": self.room_id,
            "user_id": self.user_id,
            "type": self.type,
            "content": self.content,
            "file_id": self.file_id,
            "timestamp": self.timestamp,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ChatPresence:
    """Who is in a room (the answer to ``/who``)."""

    room_id: str
    users: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"room_id": ..., "users": [...]}``."""
        return {"room_id": self.room_id, "users": list(self.users)}


@dataclasses.dataclass(frozen=True, slots=True)
class ChatNotice:
    """Something said to this client alone: a refused message, or the client's own local notice.

    ``code`` is a gRPC status name for the server's notices (``RESOURCE_EXHAUSTED`` with
    ``retry_after_ms`` for the rate limit), or ``USAGE``, ``UPLOAD``, ``DOWNLOAD`` for the client's own.
    ``client_seq`` is the number of the refused message, 0 when the notice refuses none.
    """

    code: str
    message: str
    client_seq: int = 0
    retry_after_ms: int = 0

    def text(self) -> str:
        """``message (CODE)``, as line mode prints a notice on stderr."""
        return f"{self.message} ({self.code})"

    def to_json(self) -> dict[str, Any]:
        """``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}

    def error(self, detail: str) -> StreamcliError:
        """An error saying ``detail`` whose class (so exit status) follows this notice's status code."""
        return error_for_status(grpc.StatusCode.__members__.get(self.code, grpc.StatusCode.UNKNOWN), detail)


def message_from_pb(message: pb.ChatMessage) -> ChatMessage:
    """The typed form of a message the server sent."""
    stamp = message.timestamp
    return ChatMessage(
        id=message.id,
        room_id=message.room_id,
        user_id=message.user_id,
        type=MESSAGE_TYPES.name(message.type),
        content=message.content,
        file_id=message.file_id,
        timestamp=rfc3339(stamp),
        timestamp_ns=None if invalid_time(stamp) else stamp.ToNanoseconds(),
    )


def presence_from_pb(presence: pb.ChatPresence) -> ChatPresence:
    """The typed form of a presence list the server sent."""
    return ChatPresence(room_id=presence.room_id, users=tuple(presence.users))


def notice_from_pb(notice: pb.ChatNotice) -> ChatNotice:
    """The typed form of a notice the server sent."""
    return ChatNotice(
        code=notice.code,
        message=notice.message,
        client_seq=notice.client_seq,
        retry_after_ms=notice.retry_after_ms,
    )
