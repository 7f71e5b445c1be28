"""Chat: the bidirectional Chat RPC and ListRoomMembers.

A Chat stream joins a room (``streamcli.services.rooms``: membership, fan-out,
presence, typing, the rate limit) with its first message, then two tasks run
until the client leaves: one appends what the client sends (``_receive``), the
handler's own delivers the room's backlog, its live messages and the session's
notices (``_deliver``). How the stream ended is then turned into its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Backend, LogBounds, StoreUnavailableError, TrimmedError
from streamcli.credentials import REVOKED, Credentials, TokenWatch
from streamcli.services import wire
from streamcli.services.checks import CLIENT_ID, CLIENT_ID_RULE, USER_ID, MalformedRequest, has_control, quoted
from streamcli.services.logs import LogCursor, LogService, LogSettings, ServerStopping, timestamp
from streamcli.services.notifications import NotificationService
from streamcli.services.rooms import (
    SYSTEM_USER,
    Refusal,
    Room,
    Rooms,
    Session,
    encode_message,
    room_presence,
    room_stream,
)
from streamcli.services.rooms import ChatSettings as ChatSettings  # where the server and its CLI find it
from streamcli.services.rpc import Context, abort

ROOM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ROOM_ID_RULE = "room_id must be 1-64 letters, digits, '-', '_' or '.'"
MAX_CONTENT_BYTES = 16 * 1024
#: The message types a client may send to be stored.
STORED_TYPES = (pb.CHAT_MESSAGE_TYPE_TEXT, pb.CHAT_MESSAGE_TYPE_IMAGE, pb.CHAT_MESSAGE_TYPE_FILE)


class ChatService:
    """The chat RPCs of ``StreamingService``."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("Chat", "ListRoomMembers", "StreamRoomMessages")

    def __init__(
        self,
        backend: Backend,
        log_settings: LogSettings,
        settings: ChatSettings,
        stopping: asyncio.Event,
        notifications: NotificationService | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.credentials = credentials or Credentials()
        self.backend = backend
        self.settings = settings
        self.stopping = stopping
        self.rooms = Rooms(backend, log_settings, settings, stopping, notifications)
        self.reader = LogService(backend.log, log_settings, stopping, self.credentials)

    async def close(self) -> None:
        """Wait until the leave messages of ended sessions are stored (before the store closes)."""
        await self.rooms.close()

    async def ListRoomMembers(self, request: pb.ListRoomMembersRequest, context: Context) -> pb.ListRoomMembersResponse:
        # A room id that Chat refuses names no room: say so, rather than list nobody in it.
        if not ROOM_ID.fullmatch(request.room_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, ROOM_ID_RULE)
        return pb.ListRoomMembersResponse(presence=await room_presence(self.backend, request.room_id))

    async def StreamRoomMessages(self, request: pb.StreamRoomMessagesRequest, context: Context) -> AsyncIterator[bytes]:
        # Read-only: the room's log, never its Room (no membership, presence or join message). Rooms are
        # open (anyone may join one), so any caller may read any room.
        if not ROOM_ID.fullmatch(request.room_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, ROOM_ID_RULE)
        async for records, position in self.reader.follow(
            room_stream(request.room_id), request, _every_record, context
        ):
            yield b"".join(
                [
                    wire.repeated_messages(1, (encode_message(r) for r in records)),
                    wire.varint_field(2, position),
                    wire.bytes_field(3, timestamp(time.time()).SerializeToString()),
                ]
            )

    async def Chat(self, request_iterator: AsyncIterator[pb.ChatRequest], context: Context) -> None:
        join, named = await self._join_request(request_iterator, context)
        room = self.rooms.room(join.room_id)
        # The user's lease in the room's presence, on every replica: one session per user unless allow_duplicate.
        lease = await self.backend.presence.join(room.stream, join.user_id, exclusive=not join.allow_duplicate)
        if lease is None:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"{join.user_id} is already in room {join.room_id} in another session",
            )
        try:
            bounds = await room.catch_up()
            start = await self._start(join, room, bounds, context)
            handler = asyncio.current_task()
            assert handler is not None  # grpc.aio runs each handler in a task
            session = Session(room, join.user_id, handler, join.client_id, token_user=named)
            cursor = LogCursor(self.backend.log, room.stream, start, _every_record)
            async with room.membership(session), self._receiving(session, request_iterator) as receiver:
                await self._serve(session, cursor, bounds.last_id, receiver, context)
        finally:
            await asyncio.shield(lease.leave())  # (even when the handler is cancelled: its client went away)

    async def _join_request(
        self, requests: AsyncIterator[pb.ChatRequest], context: Context
    ) -> tuple[pb.ChatJoin, str | None]:
        """The stream's join, checked, with the user its token names (None: the service token, or none).

        A per-user token says who the caller is, whatever name it claims: ``user_id`` is set to it.
        """
        first = await anext(requests, None)
        if first is None or first.WhichOneof("action") != "join":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the first message of a chat stream must be a join")
        join = first.join
        named = self.credentials.user_of(context.invocation_metadata())
        if named is not None:
            join.user_id = named
        if not ROOM_ID.fullmatch(join.room_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, ROOM_ID_RULE)
        if not USER_ID.fullmatch(join.user_id) or join.user_id == SYSTEM_USER:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "user_id must be 1-32 letters, digits, '-', '_' or '.' (not 'system')",
            )
        if not CLIENT_ID.fullmatch(join.client_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, CLIENT_ID_RULE)
        if named is None and self.credentials.names_a_user(join.user_id):
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the name {join.user_id} is a user's who has a token: only its holder may chat as them",
            )
        return join, named

    async def _start(self, join: pb.ChatJoin, room: Room, bounds: LogBounds, context: Context) -> int:
        """The position the session reads after: its resume point, else its backlog's start."""
        if not join.resume_after_id:
            return bounds.last_id if join.no_backlog else room.backlog_start(bounds, join.backlog)
        if join.resume_after_id > bounds.last_id:
            await abort(
                context, grpc.StatusCode.OUT_OF_RANGE, f"resume id {join.resume_after_id} is beyond the end of the room"
            )
        return join.resume_after_id

    @contextlib.asynccontextmanager
    async def _receiving(
        self, session: Session, requests: AsyncIterator[pb.ChatRequest]
    ) -> AsyncIterator[asyncio.Task[None]]:
        """A task appending what the client sends (``_receive``) for the block; it wakes the session when it ends."""
        receiver = asyncio.create_task(self._receive(session, requests))
        receiver.add_done_callback(lambda _: session.wake.set())
        try:
            yield receiver
        finally:
            receiver.cancel()
            if receiver.done() and not receiver.cancelled():
                receiver.exception()  # a broken request stream just ends the session

    async def _serve(
        self, session: Session, cursor: LogCursor, replay_end: int, receiver: asyncio.Task[None], context: Context
    ) -> None:
        """Deliver until the client leaves, then end the call with what ended it."""
        start = cursor.position
        try:
            await self._deliver(session, cursor, replay_end, receiver, context)
        except asyncio.CancelledError:
            if not session.kicked:
                raise
            # The room's watcher cancelled a write the client left pending for too long. That
            # cancellation is handled here: withdraw it, or the task would still count as being
            # cancelled (cancelling() > 0) for asyncio.timeout and TaskGroup in what follows.
            session.task.uncancel()
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"disconnected: the client did not read for {self.settings.stall_limit:g} s; "
                f"resume after id {cursor.position}",
            )
        except TrimmedError:
            await abort(context, grpc.StatusCode.OUT_OF_RANGE, f"messages after {start} were trimmed")
        except ServerStopping as exc:
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, f"the server is shutting down; resume after id {exc.position}"
            )
        malformed = receiver.exception()  # (done: _deliver returns when the client's half ends)
        if isinstance(malformed, MalformedRequest):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{malformed.detail}; every message before it was handled (stored, or refused with a "
                f"notice) and delivered up to id {cursor.position}; resume after it",
            )

    async def _deliver(
        self, session: Session, cursor: LogCursor, replay_end: int, receiver: asyncio.Task[None], context: Context
    ) -> None:
        """Backlog, then live messages and this session's ephemeral responses, until the client leaves.

        Once the messages up to ``replay_end`` (the last one stored before the join) are delivered, a
        response with ``caught_up`` says so.
        """
        room = session.room
        loop = asyncio.get_running_loop()
        caught_up = False
        token = TokenWatch(self.credentials, context.invocation_metadata())
        while True:
            session.wake.clear()
            if token.revoked():  # nothing more for a token taken away
                await abort(context, grpc.StatusCode.UNAUTHENTICATED, REVOKED)
            responses: list[pb.ChatResponse | bytes] = []
            if not caught_up and cursor.position >= replay_end:  # before what was stored after the join
                caught_up = True
                responses.append(pb.ChatResponse(caught_up=True))
            if cursor.position < room.last_id:
                # What a caught-up session needs is framed once for all; one that is behind reads on.
                framed = room.recent(cursor.position) or await room.read_after(cursor.position)
                if framed is not None:
                    responses.append(framed[0])
                    cursor.position = framed[1]
            session.take_ephemeral(responses)
            for response in responses:
                session.writing_since = loop.time()
                await context.write(response)
                session.writing_since = None
            if responses:
                continue
            if receiver.done():
                return  # the client half-closed (left) and everything up to now was delivered
            if self.stopping.is_set():
                raise ServerStopping(cursor.position)
            # Woken by the room (new messages, heartbeat, shutdown), a push, or the receiver ending:
            # no task or timer per session and message.
            await session.wake.wait()

    async def _receive(self, session: Session, requests: AsyncIterator[pb.ChatRequest]) -> None:
        """Append what the client sends; answer bad messages with an in-band notice.

        Raises:
            MalformedRequest: a message did not decode; what came before it is stored first.
        """
        try:
            await self._receive_all(session, requests)
        except MalformedRequest:
            await session.room.appender.stored()
            raise
        await session.room.appender.stored()  # what the client sent is in the log before it counts as gone

    async def _receive_all(self, session: Session, requests: AsyncIterator[pb.ChatRequest]) -> None:
        room = session.room
        async for request in requests:
            action = request.WhichOneof("action")
            if action == "send":
                send = request.send
                if send.type == pb.CHAT_MESSAGE_TYPE_TYPING:
                    await room.relay_typing(session)
                    continue
                refusal = _content_problem(send)
                if refusal is None and send.type != pb.CHAT_MESSAGE_TYPE_TEXT:
                    refusal = await self._unshareable(session, send.file_id)
                if refusal is None:
                    refusal = await room.post(session, send)
                if refusal is not None:
                    notice = pb.ChatNotice(
                        code=refusal.code, message=refusal.message, client_seq=send.client_seq,
                        retry_after_ms=math.ceil(refusal.retry_after * 1000),
                    )  # fmt: skip
                    session.push(pb.ChatResponse(notice=notice))
            elif action == "who":
                try:
                    session.push(pb.ChatResponse(presence=await room.presence()))
                except StoreUnavailableError as exc:
                    session.push(pb.ChatResponse(notice=pb.ChatNotice(code="UNAVAILABLE", message=str(exc))))
            else:
                notice = pb.ChatNotice(code="INVALID_ARGUMENT", message=f"unexpected {action or 'empty message'}")
                session.push(pb.ChatResponse(notice=notice))

    async def _unshareable(self, session: Session, file_id: str) -> Refusal | None:
        """Why ``file_id`` cannot be posted by this session, or None when it can."""
        record = await self.backend.metadata.get_file(file_id)
        if record is None:
            return Refusal("NOT_FOUND", f"no file {quoted(file_id)} to share")
        user = session.token_user
        if user is not None and record.owner != user and not await self.backend.metadata.file_visible_to(record, user):
            return Refusal(
                "PERMISSION_DENIED", f"file {record.file_id} is not yours, nor posted in a room you have joined"
            )
        return None


def _content_problem(send: pb.ChatSend) -> Refusal | None:
    """Why a message to be stored (not TYPING) is refused for what it is, or None."""
    if send.type not in STORED_TYPES:
        return Refusal("INVALID_ARGUMENT", f"message type {send.type} cannot be sent (use TEXT, IMAGE, FILE or TYPING)")
    if len(send.content.encode()) > MAX_CONTENT_BYTES:
        return Refusal("INVALID_ARGUMENT", f"message longer than {MAX_CONTENT_BYTES} bytes")
    if has_control(send.content, multiline=True):
        return Refusal("INVALID_ARGUMENT", "message contains control characters")
    if send.type == pb.CHAT_MESSAGE_TYPE_TEXT and not send.content.strip():
        return Refusal("INVALID_ARGUMENT", "empty message")
    return None


def _every_record(record: object) -> bool:
    return True
