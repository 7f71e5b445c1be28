"""A chat session that survives reconnects: join, send, receive, resume after the last id seen.

``ChatClient.run`` keeps one Chat stream open, reopening it with backoff after
the server or network goes away and resuming after the last message id it
delivered, so the caller sees every message once.

Messages are delivered in order, one at a time, and each waits for its outcome:
the client numbers them (``ChatSend.client_seq`` under a ``client_id`` chosen
per run) and the server echoes the number in the stored message (the
acknowledgement) or in the notice refusing it. A refusal for the rate limit is
waited out (``retry_after_ms``) and the message sent again. After a reconnect
the client waits for ``caught_up``: a message it sent before that was stored is
in the replay and counts as delivered; one that is not is sent again with the
same number. So nothing acknowledged is lost and nothing is stored twice.

What arrives reaches ``ChatHandlers`` as the typed values of ``chat_records``.
``ChatSession`` (``chat_session``) builds the REPL's commands on this client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.chat_records import (
    ChatMessage,
    ChatNotice,
    ChatPresence,
    message_from_pb,
    notice_from_pb,
    presence_from_pb,
)
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.retry import Attempts, RetryPolicy
from streamcli.client.tail import TailOptions, set_start, tail_log

#: Messages typed while disconnected that are kept for sending on reconnect.
OUTGOING_LIMIT = 1000
#: Longest pause a rate-limit refusal may ask for before the message is sent again (seconds).
MAX_RETRY_AFTER = 60.0


class ChatState(enum.Enum):
    """Where the session stands, for a status display."""

    DISCONNECTED = "disconnected"  # in no room (``ChatSession``; a ChatClient never reports it)
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclasses.dataclass
class ChatHandlers:
    """What to do with what arrives; every callback runs on the event loop."""

    message: Callable[[ChatMessage], None]
    typing: Callable[[str], None] = lambda user: None
    presence: Callable[[ChatPresence], None] = lambda presence: None
    notice: Callable[[ChatNotice], None] = lambda notice: None
    state: Callable[[ChatState, str], None] = lambda state, detail: None


@dataclasses.dataclass
class _Outgoing:
    """A request waiting for the stream; sends of room messages also wait for their outcome."""

    request: pb.ChatRequest
    outcome: asyncio.Future[ChatMessage | ChatNotice] | None = None


#: Outcome of a send whose stream ended before it was acknowledged or refused, and that was not in the replay.
_LOST = ChatNotice(code="UNAVAILABLE", message="not acknowledged before the stream ended")


class ChatClient:
    """One user in one room, over as many streams as it takes."""

    def __init__(
        self,
        conn: Connection,
        room: str,
        user: str,
        handlers: ChatHandlers,
        *,
        backlog: int | None = None,  # recent messages to get on joining; 0: none; None: the server's default
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
        self.client_id = uuid.uuid4().hex  # names this run's messages in the room's log
        self.last_id = 0  # the newest room message delivered to the handlers
        self._outgoing: asyncio.Queue[_Outgoing | None] = asyncio.Queue(OUTGOING_LIMIT)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._ready = asyncio.Event()  # a stream is open and has caught up: sending may go on
        self._write_lock = asyncio.Lock()  # one write at a time on a stream
        self._next_seq = 1
        self._waiting: dict[int, asyncio.Future[ChatMessage | ChatNotice]] = {}  # client_seq -> outcome
        self._leaving = False
        self._ever_joined = False

    # --- sending ----------------------------------------------------------------

    def send_text(self, text: str) -> asyncio.Future[ChatMessage | ChatNotice]:
        """Queue a TEXT message; a refusal goes to ``handlers.notice``. Returns its outcome, for those who wait."""
        return self._send(pb.ChatSend(type=pb.CHAT_MESSAGE_TYPE_TEXT, content=text), report=True)

    def send_file(self, file_id: str, caption: str, image: bool = False) -> asyncio.Future[ChatMessage | ChatNotice]:
        """Queue a FILE (or IMAGE) message referencing an uploaded file (a refusal goes to ``handlers.notice``)."""
        kind = pb.CHAT_MESSAGE_TYPE_IMAGE if image else pb.CHAT_MESSAGE_TYPE_FILE
        return self._send(pb.ChatSend(type=kind, content=caption, file_id=file_id), report=True)

    async def post_text(self, text: str) -> ChatMessage | ChatNotice:
        """Send a TEXT message after those queued before and wait for it to be stored or refused.

        Returns:
            The stored message (with its id), or the notice that refused it (not passed to ``handlers.notice``).
        """
        return await self._send(pb.ChatSend(type=pb.CHAT_MESSAGE_TYPE_TEXT, content=text), report=False)

    def send_typing(self) -> None:
        """Tell the room the user is typing (dropped when the stream is down: it is ephemeral)."""
        if self._ready.is_set() and not self._outgoing.full():
            self._outgoing.put_nowait(_Outgoing(pb.ChatRequest(send=pb.ChatSend(type=pb.CHAT_MESSAGE_TYPE_TYPING))))

    def ask_who(self) -> None:
        """Ask who is in the room; the answer arrives through ``handlers.presence``."""
        try:
            self._outgoing.put_nowait(_Outgoing(pb.ChatRequest(who=True)))
        except asyncio.QueueFull:
            self.handlers.notice(ChatNotice(code="RESOURCE_EXHAUSTED", message="too many unsent messages"))

    def leave(self) -> None:
        """Leave the room once everything queued before has been delivered."""
        self._outgoing.put_nowait(None)

    def _send(self, send: pb.ChatSend, *, report: bool) -> asyncio.Future[ChatMessage | ChatNotice]:
        outcome: asyncio.Future[ChatMessage | ChatNotice] = asyncio.get_running_loop().create_future()
        send.client_seq = self._next_seq
        self._next_seq += 1
        try:
            self._outgoing.put_nowait(_Outgoing(pb.ChatRequest(send=send), outcome))
        except asyncio.QueueFull:
            outcome.set_result(ChatNotice(code="RESOURCE_EXHAUSTED", message="too many unsent messages"))
        if report:
            outcome.add_done_callback(self._report)
        return outcome

    def _report(self, outcome: asyncio.Future[ChatMessage | ChatNotice]) -> None:
        if not outcome.cancelled() and isinstance(result := outcome.result(), ChatNotice):
            self.handlers.notice(result)

    async def _deliver_all(self) -> None:
        """Send what is queued, in order, each room message once it has an outcome; then leave."""
        while True:
            item = await self._outgoing.get()
            if item is None:
                self._leaving = True
                await self._ready.wait()
                await self._half_close()
                return
            if item.outcome is None:  # typing, who: ephemeral, not acknowledged
                await self._write(item.request)
                continue
            if item.outcome.done():
                continue  # refused while queued (too many unsent messages)
            outcome = await self._deliver(item.request)
            if not item.outcome.done():
                item.outcome.set_result(outcome)

    async def _deliver(self, request: pb.ChatRequest) -> ChatMessage | ChatNotice:
        """Send one room message until it is stored or refused for a reason other than the rate limit."""
        seq = request.send.client_seq
        while True:
            # Waiting is registered only once a caught-up stream is there to write on: the next caught_up
            # (after a reconnect) then decides whether this write was stored.
            await self._ready.wait()
            waiting: asyncio.Future[ChatMessage | ChatNotice] = asyncio.get_running_loop().create_future()
            self._waiting[seq] = waiting
            await self._write(request)
            outcome = await waiting
            if outcome is _LOST:
                continue  # not in the new stream's replay: send it again, with the same number
            if isinstance(outcome, ChatNotice) and outcome.code == "RESOURCE_EXHAUSTED" and outcome.retry_after_ms:
                await asyncio.sleep(min(outcome.retry_after_ms / 1000, MAX_RETRY_AFTER))
                continue
            return outcome

    async def _write(self, request: pb.ChatRequest) -> None:
        """Write on the current stream once it has caught up; a stream that breaks meanwhile is the reader's to mend."""
        await self._ready.wait()
        call = self._call
        assert call is not None
        async with self._write_lock:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                await call.write(request)

    async def _half_close(self) -> None:
        call = self._call
        assert call is not None
        async with self._write_lock:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                await call.done_writing()

    # --- the stream -----------------------------------------------------------------

    async def run(self) -> None:
        """Join and stay joined until ``leave``; raises StreamcliError when the room cannot be joined."""
        # RESOURCE_EXHAUSTED: disconnected for reading too slowly; resuming is the cure. ALREADY_EXISTS (only
        # ever retried after the first join): the session this client lost still holds its place, e.g. on
        # a replica that died, until its lease runs out (seconds).
        attempts = Attempts(
            self.retry,
            f"chat in {self.room}",
            also=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS}),
            connection=self.conn,
        )
        self.handlers.state(ChatState.CONNECTING, self.conn.settings.address)
        sender = asyncio.create_task(self._deliver_all())
        try:
            with rpc_errors(self.conn):
                while True:
                    try:
                        if await self._one_stream():
                            self.handlers.state(ChatState.CLOSED, "left")
                            return
                    except grpc.aio.AioRpcError as exc:
                        if not self._ever_joined:
                            raise  # never got in: a wrong address, name or room is not worth retrying
                        stream_worked = self._ready.is_set()
                        self._ready.clear()
                        self.handlers.state(ChatState.RECONNECTING, exc.code().name)
                        await attempts.failed(exc, progressed=stream_worked)
                    self._ready.clear()
        finally:
            sender.cancel()
            self._ready.clear()
            for waiting in self._waiting.values():
                waiting.cancel()

    async def _one_stream(self) -> bool:
        """One Chat stream; True when the user left, False if the server ended it without an error."""
        call = self.conn.stub.Chat(metadata=self.conn.metadata)
        join = pb.ChatJoin(
            room_id=self.room,
            user_id=self.user,
            backlog=self.backlog or 0,
            no_backlog=self.backlog == 0,
            resume_after_id=self.last_id,
            allow_duplicate=self.allow_duplicate,
            client_id=self.client_id,
        )
        await call.write(pb.ChatRequest(join=join))
        self._call = call
        joined = False
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return self._leaving
            if not joined:
                joined = self._ever_joined = True
                self.handlers.state(ChatState.CONNECTED, self.room)
            self._dispatch(response)
            if response.caught_up:
                # What was sent on an earlier stream and not in the replay was not stored: send it again.
                for seq in list(self._waiting):
                    self._resolve(seq, _LOST)
                self._ready.set()
                if self._leaving:
                    await self._half_close()  # left while the stream was down: leave this one too

    def _resolve(self, seq: int, outcome: ChatMessage | ChatNotice) -> None:
        waiting = self._waiting.pop(seq, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(outcome)

    def _dispatch(self, response: pb.ChatResponse) -> None:
        for message in response.messages:
            if message.type == pb.CHAT_MESSAGE_TYPE_TYPING:
                self.handlers.typing(message.user_id)
            elif message.id > self.last_id:  # never show a message twice, whatever the server resends
                self.last_id = message.id
                typed = message_from_pb(message)
                self.handlers.message(typed)
                if message.client_id == self.client_id and message.client_seq:
                    self._resolve(message.client_seq, typed)  # our own, stored: acknowledged
        if response.HasField("presence"):
            self.handlers.presence(presence_from_pb(response.presence))
        if response.HasField("notice"):
            notice = notice_from_pb(response.notice)
            if notice.client_seq and notice.client_seq in self._waiting:
                self._resolve(notice.client_seq, notice)
            else:
                self.handlers.notice(notice)


def tail_room(
    conn: Connection, *, room_id: str, since: Timestamp | None, options: TailOptions
) -> AsyncIterator[Sequence[ChatMessage]]:
    """A room's stored messages in batches, read without joining it (no presence, no join message): history
    (``since``, ``options.tail``) then live, resuming across reconnects."""

    def open_stream(resume_after: int | None) -> Any:
        request = pb.StreamRoomMessagesRequest(room_id=room_id, no_follow=not options.follow)
        set_start(request, resume_after, since, options)
        return conn.stub.StreamRoomMessages(request, metadata=conn.metadata)

    return tail_log(conn, open_stream, lambda response: [message_from_pb(m) for m in response.messages], options)
