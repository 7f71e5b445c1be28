"""A chat session that survives reconnects: join, send, receive, resume after the last id seen.

``ChatClient.run`` keeps one Chat stream open, reopening it with backoff after
the server or network goes away and resuming after the last message id it
delivered, so the caller sees every message once. Outgoing messages wait in a
bounded queue while the stream is down and go out once it is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Callable
from typing import Any

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.enums import ShortNames
from streamcli.client.events import rfc3339
from streamcli.client.retry import Attempts, RetryPolicy

#: Messages typed while disconnected that are kept for sending on reconnect.
OUTGOING_LIMIT = 1000


MESSAGE_TYPES = ShortNames(pb.ChatMessageType, "CHAT_MESSAGE_TYPE_", "message type")


def message_to_json(message: pb.ChatMessage) -> dict[str, Any]:
    """The NDJSON form printed by ``chat --json`` (like ``event_to_json`` for events)."""
    return {
        "id": message.id,
        "room_id": message.room_id,
        "user_id": message.user_id,
        "type": MESSAGE_TYPES.name(message.type),
        "content": message.content,
        "file_id": message.file_id,
        "timestamp": rfc3339(message.timestamp),
    }


class ChatState(enum.Enum):
    """Where the session stands, for a status display."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclasses.dataclass
class ChatHandlers:
    """What to do with what arrives; every callback runs on the event loop."""

    message: Callable[[pb.ChatMessage], None]
    typing: Callable[[str], None] = lambda user: None
    presence: Callable[[pb.ChatPresence], None] = lambda presence: None
    notice: Callable[[pb.ChatNotice], None] = lambda notice: None
    state: Callable[[ChatState, str], None] = lambda state, detail: None


class ChatClient:
    """One user in one room, over as many streams as it takes."""

    def __init__(
        self,
        conn: Connection,
        room: str,
        user: str,
        handlers: ChatHandlers,
        *,
        backlog: int = 0,
        allow_duplicate: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.conn = conn
        self.room = room
        self.user = user
        self.handlers = handlers
        self.backlog = backlog
        self.allow_duplicate = allow_duplicate
        self.retry = retry or RetryPolicy(retries=25)
        self.last_id = 0  # the newest room message delivered to the handlers
        self._outgoing: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue(OUTGOING_LIMIT)
        self._joined = asyncio.Event()
        self._ever_joined = False

    # --- sending ----------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Queue a TEXT message."""
        self._put(pb.ChatRequest(send=pb.ChatSend(type=pb.CHAT_MESSAGE_TYPE_TEXT, content=text)))

    def send_file(self, file_id: str, caption: str, image: bool = False) -> None:
        """Queue a FILE (or IMAGE) message referencing an uploaded file."""
        kind = pb.CHAT_MESSAGE_TYPE_IMAGE if image else pb.CHAT_MESSAGE_TYPE_FILE
        self._put(pb.ChatRequest(send=pb.ChatSend(type=kind, content=caption, file_id=file_id)))

    def send_typing(self) -> None:
        """Tell the room the user is typing (dropped when the stream is down: it is ephemeral)."""
        if self._joined.is_set() and not self._outgoing.full():
            self._outgoing.put_nowait(pb.ChatRequest(send=pb.ChatSend(type=pb.CHAT_MESSAGE_TYPE_TYPING)))

    def ask_who(self) -> None:
        """Ask who is in the room; the answer arrives through ``handlers.presence``."""
        self._put(pb.ChatRequest(who=True))

    def leave(self) -> None:
        """Leave the room once everything queued before has been sent."""
        self._outgoing.put_nowait(None)

    def _put(self, request: pb.ChatRequest) -> None:
        try:
            self._outgoing.put_nowait(request)
        except asyncio.QueueFull:
            self.handlers.notice(pb.ChatNotice(code="RESOURCE_EXHAUSTED", message="too many unsent messages"))

    # --- the stream -----------------------------------------------------------------

    async def run(self) -> None:
        """Join and stay joined until ``leave``; raises StreamcliError when the room cannot be joined."""
        attempts = Attempts(self.retry, f"chat in {self.room}")
        self.handlers.state(ChatState.CONNECTING, self.conn.settings.address)
        with rpc_errors(self.conn.settings.address):
            while True:
                try:
                    if await self._one_stream():
                        self.handlers.state(ChatState.CLOSED, "left")
                        return
                except grpc.aio.AioRpcError as exc:
                    if not self._ever_joined:
                        raise  # never got in: a wrong address, name or room is not worth retrying
                    if self._joined.is_set():
                        attempts.failures = 0  # that stream worked: start the backoff afresh
                    self._joined.clear()
                    self.handlers.state(ChatState.RECONNECTING, exc.code().name)
                    # RESOURCE_EXHAUSTED: disconnected for reading too slowly; resuming is the cure.
                    await attempts.backoff(exc, also=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}))

    async def _one_stream(self) -> bool:
        """One Chat stream; True when the user left, False if the server ended it without an error."""
        call = self.conn.stub.Chat(metadata=self.conn.metadata)
        join = pb.ChatJoin(
            room_id=self.room,
            user_id=self.user,
            backlog=self.backlog,
            resume_after_id=self.last_id,
            allow_duplicate=self.allow_duplicate,
        )
        await call.write(pb.ChatRequest(join=join))
        sender = asyncio.create_task(self._send_loop(call))
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return sender.done() and sender.result()
                if not self._joined.is_set():
                    self._joined.set()
                    self._ever_joined = True
                    self.handlers.state(ChatState.CONNECTED, self.room)
                self._dispatch(response)
        finally:
            sender.cancel()

    async def _send_loop(self, call: grpc.aio.StreamStreamCall) -> bool:
        while True:
            request = await self._outgoing.get()
            if request is None:
                await call.done_writing()
                return True
            await call.write(request)

    def _dispatch(self, response: pb.ChatResponse) -> None:
        for message in response.messages:
            if message.type == pb.CHAT_MESSAGE_TYPE_TYPING:
                self.handlers.typing(message.user_id)
            elif message.id > self.last_id:  # never show a message twice, whatever the server resends
                self.last_id = message.id
                self.handlers.message(message)
        if response.HasField("presence"):
            self.handlers.presence(response.presence)
        if response.HasField("notice"):
            self.handlers.notice(response.notice)
