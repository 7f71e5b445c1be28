"""Chat: the bidirectional Chat RPC and ListRoomMembers.

A room is a log (``room:<id>``, key = user, kind = message type). A session
joins first (presence + a SYSTEM message), then reads the room's log from its
backlog or resume point while its requests are appended. TYPING is delivered
live to the sessions of this server and never stored. Each session writes at
its own pace; one whose client stops reading for ``stall_limit`` seconds is
disconnected with RESOURCE_EXHAUSTED and can resume where it stopped.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import ClassVar, NamedTuple

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Backend, LogRecord, NewRecord, TrimmedError
from streamcli.credentials import REVOKED, Credentials, TokenWatch
from streamcli.services import wire
from streamcli.services.checks import MalformedRequest, has_control, quoted
from streamcli.services.logs import Appender, LogCursor, LogSettings, ServerStopping, timestamp
from streamcli.services.notifications import NotificationService
from streamcli.services.rpc import Context, abort

log = logging.getLogger("streamcli.chat")

ROOM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ROOM_ID_RULE = "room_id must be 1-64 letters, digits, '-', '_' or '.'"
USER_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{0,64}")
CLIENT_ID_RULE = "client_id must be at most 64 letters, digits, '-', '_' or '.'"
MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_.-]{1,32})")
SYSTEM_USER = "system"
MAX_CONTENT_BYTES = 16 * 1024
#: TYPING indicators one user sends to a room are passed on at most this often (seconds).
TYPING_INTERVAL = 1.0
#: Serialized messages a room keeps for its sessions.
ENCODED_CACHE = 2048
#: Framed responses of its newest appends a room keeps for the sessions that were caught up.
RECENT_RESPONSES = 16
#: Messages read from the log per response by a session that is behind.
READ_MESSAGES = 200
#: Per-session undelivered notices, presence answers and typing indicators kept (oldest dropped: all ephemeral).
OUTBOX_SIZE = 64


@dataclasses.dataclass(frozen=True)
class ChatSettings:
    """Limits and defaults of chat rooms."""

    backlog: int = 50  # messages replayed on join when the client does not say
    rate: float = 5.0  # messages per second per user and room (sustained)
    burst: int = 20  # messages a user may send at once before the rate applies
    stall_limit: float = 30.0  # seconds a client may leave its stream unread before it is disconnected


class _Kicked(Exception):
    """The session's client stopped reading."""


class Session:
    """One client's stream in a room."""

    def __init__(
        self, room: Room, user: str, task: asyncio.Task[object], client_id: str = "", *, token_user: str | None = None
    ) -> None:
        self.room = room
        self.user = user
        self.token_user = token_user  # the user a user token names (None: the service token, or no tokens)
        self.client_id = client_id  # echoed in the messages it stores
        self.task = task  # the handler's task: cancelled when its client stops reading
        self.wake = asyncio.Event()
        self.outbox: collections.deque[pb.ChatResponse] = collections.deque(maxlen=OUTBOX_SIZE)
        self.writing_since: float | None = None  # loop time a pending write started
        self.kicked = False
        self.heartbeat_due = False  # set by the room's timer: send an empty response if idle
        self.tokens = float(room.settings.burst)
        self.refilled = time.monotonic()

    def push(self, response: pb.ChatResponse) -> None:
        """Queue an ephemeral, per-session response (notice, presence, typing)."""
        self.outbox.append(response)
        self.wake.set()

    def take_token(self) -> float:
        """Token bucket of the rate limit: 0 if one more message may be sent now, else seconds until it may."""
        now = time.monotonic()
        settings = self.room.settings
        self.tokens = min(settings.burst, self.tokens + (now - self.refilled) * settings.rate)
        self.refilled = now
        if self.tokens < 1:
            return (1 - self.tokens) / settings.rate
        self.tokens -= 1
        return 0.0


class _Post(NamedTuple):
    """What the room's appender needs to know about a message besides its record."""

    session: Session | None  # the sender (None: a SYSTEM message)
    mentions: tuple[str, ...] = ()  # users to notify once it is stored
    content: str = ""
    client_seq: int = 0  # the sender's number for it, named in a failure notice


class Room:
    """The sessions of one room on this server, its appender and the task that wakes them.

    Messages are appended in batches by the room's ``Appender``: a sender never
    waits for the disk, and what a burst queued up is stored (and delivered) in
    one go. Each append is framed once as a response for every session that was
    caught up, which is nearly all of them.
    """

    def __init__(self, room_id: str, service: ChatService) -> None:
        self.room_id = room_id
        self.stream = f"room:{room_id}"
        self.service = service
        self.settings = service.settings
        self.sessions: set[Session] = set()
        self.last_typing: dict[str, float] = {}
        self.last_id = 0  # the newest message the sessions have been woken for
        self.appender: Appender[_Post] = Appender(service.backend.log, self.stream, self._stored, self._failed)
        self._watcher: asyncio.Task[None] | None = None
        # Serialized messages by id: every session of the room sends the same bytes, encoded once.
        # (OrderedDict: dropping the oldest is O(1); on a dict, next(iter(d)) scans the deleted slots.)
        self._encoded: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        # The newest appends, framed: position before them -> (response bytes, their last id).
        self._recent: collections.OrderedDict[int, tuple[bytes, int]] = collections.OrderedDict()

    def encoded(self, record: LogRecord) -> bytes:
        """The wire form of a room message, cached for the other sessions."""
        cached = self._encoded.get(record.id)
        if cached is None:
            cached = self._encoded[record.id] = _encode(record)
            if len(self._encoded) > ENCODED_CACHE:
                self._encoded.popitem(last=False)  # the oldest
        return cached

    def recent(self, position: int) -> tuple[bytes, int] | None:
        """The framed messages right after ``position`` and the last one's id, if they were appended lately."""
        return self._recent.get(position)

    def members(self) -> list[str]:
        return sorted({s.user for s in self.sessions})

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name=f"room {self.room_id}")

    def remove(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
            self.service.rooms.pop(self.room_id, None)

    def advance(self, last_id: int) -> None:
        """The log holds messages up to ``last_id``: wake the sessions if that is news."""
        if last_id > self.last_id:
            self.last_id = last_id
            for session in self.sessions:
                session.wake.set()

    async def _stored(self, records: list[LogRecord], posts: list[_Post]) -> None:
        framed = wire.repeated_messages(1, (self.encoded(r) for r in records))
        self._recent[records[0].id - 1] = (framed, records[-1].id)
        if len(self._recent) > RECENT_RESPONSES:
            self._recent.popitem(last=False)  # the oldest
        self.advance(records[-1].id)
        notifications = self.service.notifications
        for post in posts:
            if post.session is not None and notifications is not None:
                for mentioned in post.mentions:
                    await notifications.raise_(
                        mentioned, "chat", f"{post.session.user} mentioned you in {self.room_id}", post.content[:200],
                        attributes={"room_id": self.room_id},
                    )  # fmt: skip

    def _failed(self, exc: BaseException, posts: list[_Post]) -> None:
        log.error("room %s: %d messages not stored: %s", self.room_id, len(posts), exc)
        for post in posts:
            if post.session is not None:
                notice = pb.ChatNotice(
                    code="UNAVAILABLE", message=f"message not stored: {exc}", client_seq=post.client_seq
                )
                post.session.push(pb.ChatResponse(notice=notice))

    async def _watch(self) -> None:
        """Wake every session when the log grows by other hands; disconnect sessions whose client stopped reading."""
        store = self.service.backend.log
        loop = asyncio.get_running_loop()
        heartbeat = self.service.log_settings.heartbeat
        next_check = loop.time() + 1.0
        next_beat = loop.time() + heartbeat
        while True:
            timeout = max(0.0, min(next_check, next_beat) - loop.time())
            if await store.wait_for(self.stream, self.last_id, timeout):
                self.advance((await store.bounds(self.stream)).last_id)  # a no-op after this room's own appends
            elif self.service.stopping.is_set():
                for session in self.sessions:
                    session.wake.set()  # each raises ServerStopping with its resume point
                return
            now = loop.time()
            if now >= next_beat:  # one timer for the room, instead of one per session
                next_beat = now + heartbeat
                for session in self.sessions:
                    session.heartbeat_due = True
                    session.wake.set()
            if now >= next_check:
                next_check = now + 1.0
                for session in list(self.sessions):
                    stalled = (
                        session.writing_since is not None and now - session.writing_since > self.settings.stall_limit
                    )
                    if stalled and not session.kicked:
                        session.kicked = True
                        session.task.cancel()


class ChatService:
    """The chat RPCs of ``StreamingService``."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("Chat", "ListRoomMembers")

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
        self.log_settings = log_settings
        self.settings = settings
        self.stopping = stopping
        self.notifications = notifications
        self.rooms: dict[str, Room] = {}
        self._leaving: set[asyncio.Future[None]] = set()

    async def close(self) -> None:
        """Wait until the leave messages of ended sessions are stored (before the store closes)."""
        await asyncio.gather(*self._leaving, return_exceptions=True)

    async def ListRoomMembers(self, request: pb.ListRoomMembersRequest, context: Context) -> pb.ListRoomMembersResponse:
        # A room id that Chat refuses names no room: say so, rather than list nobody in it.
        if not ROOM_ID.fullmatch(request.room_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, ROOM_ID_RULE)
        room = self.rooms.get(request.room_id)
        return pb.ListRoomMembersResponse(
            presence=pb.ChatPresence(room_id=request.room_id, users=room.members() if room else [])
        )

    async def Chat(self, request_iterator: AsyncIterator[pb.ChatRequest], context: Context) -> None:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("action") != "join":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the first message of a chat stream must be a join")
        join = first.join
        # A per-user token says who the caller is, whatever name it claims.
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
        room = self.rooms.get(join.room_id) or self.rooms.setdefault(join.room_id, Room(join.room_id, self))
        if not join.allow_duplicate and join.user_id in room.members():
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"{join.user_id} is already in room {join.room_id} in another session",
            )
        store = self.backend.log
        # What an earlier stream of this client left with the appender is stored (and so in the replay) before
        # the client is told it caught up, so that it does not send it again.
        await room.appender.stored()
        bounds = await store.bounds(room.stream)
        room.advance(bounds.last_id)
        if join.resume_after_id:
            if join.resume_after_id > bounds.last_id:
                await abort(
                    context,
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"resume id {join.resume_after_id} is beyond the end of the room",
                )
            start = join.resume_after_id
        else:
            start = max(bounds.trimmed_through, bounds.last_id - (join.backlog or self.settings.backlog))

        handler = asyncio.current_task()
        assert handler is not None  # grpc.aio runs each handler in a task
        session = Session(room, join.user_id, handler, join.client_id, token_user=named)
        # A member from now on: the files posted in this room become visible to this user's token.
        await self.backend.metadata.add_room_member(room.room_id, session.user)
        room.add(session)  # joining comes first: presence, then the join message, then reading
        await self._system(room, f"{session.user} joined", session.user)
        cursor = LogCursor(store, room.stream, start, lambda record: True)
        receiver = asyncio.create_task(self._receive(session, request_iterator))
        receiver.add_done_callback(lambda _: session.wake.set())
        try:
            try:
                await self._deliver(session, cursor, bounds.last_id, receiver, context)
                malformed = receiver.exception()  # (done: _deliver returns when the client's half ends)
                if isinstance(malformed, MalformedRequest):
                    await abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{malformed.detail}; every message before it was handled (stored, or refused with a "
                        f"notice) and delivered up to id {cursor.position}; resume after it",
                    )
            except asyncio.CancelledError:
                if not session.kicked:
                    raise
                # The room's watcher cancelled a write the client left pending for too long. That
                # cancellation is handled here: withdraw it, or the task would still count as being
                # cancelled (cancelling() > 0) for asyncio.timeout and TaskGroup in what follows.
                handler.uncancel()
                raise _Kicked from None
        except TrimmedError:
            await abort(context, grpc.StatusCode.OUT_OF_RANGE, f"messages after {start} were trimmed")
        except ServerStopping as exc:
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, f"the server is shutting down; resume after id {exc.position}"
            )
        except _Kicked:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"disconnected: the client did not read for {self.settings.stall_limit:g} s; "
                f"resume after id {cursor.position}",
            )
        finally:
            receiver.cancel()
            if receiver.done() and not receiver.cancelled():
                receiver.exception()  # a broken request stream just ends the session
            room.remove(session)
            # Said even when the client vanished without a goodbye, and stored before the server closes.
            leave = asyncio.ensure_future(self._system(room, f"{session.user} left", session.user))
            self._leaving.add(leave)
            leave.add_done_callback(self._leaving.discard)
            await asyncio.shield(leave)

    async def _deliver(
        self, session: Session, cursor: LogCursor, replay_end: int, receiver: asyncio.Task[None], context: Context
    ) -> None:
        """Backlog, then live messages and this session's ephemeral responses, until the client leaves.

        Once the messages up to ``replay_end`` (the last one stored before the join) are delivered, a
        response with ``caught_up`` says so.
        """
        store = self.backend.log
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
                framed = room.recent(cursor.position)  # what a caught-up session needs, framed once for all
                if framed is None:
                    records = await store.read(cursor.stream, cursor.position, READ_MESSAGES)
                    if records:
                        framed = wire.repeated_messages(1, (room.encoded(r) for r in records)), records[-1].id
                if framed is not None:
                    responses.append(framed[0])
                    cursor.position = framed[1]
            while session.outbox:
                responses.append(session.outbox.popleft())
            if not responses and session.heartbeat_due:
                responses.append(pb.ChatResponse())  # heartbeat
            session.heartbeat_due = False
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
        async for request in requests:
            action = request.WhichOneof("action")
            if action == "send":
                problem = await self._post(session, request.send)
                if problem:
                    code, text, retry_after = problem
                    notice = pb.ChatNotice(
                        code=code, message=text, client_seq=request.send.client_seq,
                        retry_after_ms=math.ceil(retry_after * 1000),
                    )  # fmt: skip
                    session.push(pb.ChatResponse(notice=notice))
            elif action == "who":
                room = session.room
                session.push(pb.ChatResponse(presence=pb.ChatPresence(room_id=room.room_id, users=room.members())))
            else:
                session.push(
                    pb.ChatResponse(
                        notice=pb.ChatNotice(code="INVALID_ARGUMENT", message=f"unexpected {action or 'empty message'}")
                    )
                )

    async def _post(self, session: Session, send: pb.ChatSend) -> tuple[str, str, float] | None:
        """Validate and append (or relay, for TYPING) one message.

        Returns:
            None when it was accepted, else (status code name, why, seconds until a retry may succeed or 0).
        """
        room = session.room
        if send.type == pb.CHAT_MESSAGE_TYPE_TYPING:
            now = time.monotonic()
            if now - room.last_typing.get(session.user, 0.0) >= TYPING_INTERVAL:
                room.last_typing[session.user] = now
                typing = pb.ChatMessage(
                    user_id=session.user, room_id=room.room_id, type=pb.CHAT_MESSAGE_TYPE_TYPING,
                    timestamp=timestamp(time.time()),
                )  # fmt: skip
                for other in room.sessions:
                    if other.user != session.user:
                        other.push(pb.ChatResponse(messages=[typing]))
            return None
        if send.type not in (pb.CHAT_MESSAGE_TYPE_TEXT, pb.CHAT_MESSAGE_TYPE_IMAGE, pb.CHAT_MESSAGE_TYPE_FILE):
            return "INVALID_ARGUMENT", f"message type {send.type} cannot be sent (use TEXT, IMAGE, FILE or TYPING)", 0.0
        if len(send.content.encode()) > MAX_CONTENT_BYTES:
            return "INVALID_ARGUMENT", f"message longer than {MAX_CONTENT_BYTES} bytes", 0.0
        if has_control(send.content, multiline=True):
            return "INVALID_ARGUMENT", "message contains control characters", 0.0
        if send.type == pb.CHAT_MESSAGE_TYPE_TEXT and not send.content.strip():
            return "INVALID_ARGUMENT", "empty message", 0.0
        if send.type != pb.CHAT_MESSAGE_TYPE_TEXT:
            problem = await self._unshareable(session, send.file_id)
            if problem:
                return problem
        wait = session.take_token()
        if wait:
            return "RESOURCE_EXHAUSTED", f"slow down: at most {self.settings.rate:g} messages per second", wait
        message = pb.ChatMessage(user_id=session.user, room_id=room.room_id, content=send.content, type=send.type,
                                 file_id=send.file_id, client_id=session.client_id,
                                 client_seq=send.client_seq)  # fmt: skip
        mentions = tuple(set(MENTION.findall(send.content)) - {session.user}) if "@" in send.content else ()
        if send.file_id:  # the room's members may see the file from now on
            await self.backend.metadata.share_file(send.file_id, room.room_id)
        await room.appender.post(
            NewRecord(session.user, pb.ChatMessageType.Name(send.type), message.SerializeToString()),
            _Post(session, mentions, send.content, send.client_seq),
        )
        return None

    async def _unshareable(self, session: Session, file_id: str) -> tuple[str, str, float] | None:
        """Why ``file_id`` cannot be posted by this session (code, why, 0), or None when it can."""
        record = await self.backend.metadata.get_file(file_id)
        if record is None:
            return "NOT_FOUND", f"no file {quoted(file_id)} to share", 0.0
        user = session.token_user
        if user is not None and record.owner != user and not await self.backend.metadata.file_visible_to(record, user):
            return "PERMISSION_DENIED", f"file {record.file_id} is not yours, nor posted in a room you have joined", 0.0
        return None

    async def _system(self, room: Room, text: str, about: str) -> None:
        message = pb.ChatMessage(user_id=SYSTEM_USER, room_id=room.room_id, content=text,
                                 type=pb.CHAT_MESSAGE_TYPE_SYSTEM)  # fmt: skip
        await room.appender.post(NewRecord(about, "CHAT_MESSAGE_TYPE_SYSTEM", message.SerializeToString()), _Post(None))
        await room.appender.stored()


def _encode(record: LogRecord) -> bytes:
    """The serialized ChatMessage of a stored record: its payload plus id and server time fields."""
    stamp = timestamp(record.timestamp).SerializeToString()
    return record.payload + wire.varint_field(1, record.id) + wire.bytes_field(5, stamp)
