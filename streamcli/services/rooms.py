"""Chat rooms on this server: membership, fan-out, presence, typing, the rate limit and the backlog.

A room is a log (``room:<id>``, key = user, kind = message type). A ``Session``
is one client's stream in a room; it holds a lease on its user in the room's
presence (``Backend.presence``, scope ``room:<id>``: what ChatPresence and
ListRoomMembers list, on every replica) and ``Room.membership`` makes it a
member (a SYSTEM message on entry and exit) for as long as the stream lasts.
Messages are appended by the room's ``Appender`` and every session is woken to
read them; TYPING is a signal (``Backend.signals``, channel ``typing:<id>``),
relayed live to the sessions of every replica and never stored. A session whose
client stops reading for ``stall_limit`` seconds is disconnected (its task
cancelled, ``Session.kicked`` set) and can resume where it stopped. The Chat
RPC that reads and writes a session's stream is ``services/chat.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

from google.protobuf.message import DecodeError

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Backend, LogBounds, LogRecord, NewRecord, StoreUnavailableError, Subscription
from streamcli.services import wire
from streamcli.services.logs import Appender, LogSettings, timestamp
from streamcli.services.notifications import NotificationService

log = logging.getLogger("streamcli.chat")

#: Seconds between a room's tries to follow its log while the store cannot be reached.
STORE_RETRY = 0.5

#: The author of the messages the server writes (joins and leaves); no client may chat as it.
SYSTEM_USER = "system"
MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_.-]{1,32})")
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


class Refusal(NamedTuple):
    """Why a message was not accepted, as the in-band notice tells its sender."""

    code: str  # a gRPC status code's name
    message: str
    retry_after: float = 0.0  # seconds until a retry may succeed (the rate limit); 0: it will not


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

    def take_ephemeral(self, responses: list[pb.ChatResponse | bytes]) -> None:
        """Move the queued ephemeral responses to ``responses``; with none to send, a heartbeat if one is due."""
        while self.outbox:
            responses.append(self.outbox.popleft())
        if not responses and self.heartbeat_due:
            responses.append(pb.ChatResponse())  # heartbeat
        self.heartbeat_due = False

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


class Rooms:
    """The rooms that have sessions on this server, by id, and what they share."""

    def __init__(
        self,
        backend: Backend,
        log_settings: LogSettings,
        settings: ChatSettings,
        stopping: asyncio.Event,
        notifications: NotificationService | None = None,
    ) -> None:
        self.backend = backend
        self.log_settings = log_settings
        self.settings = settings
        self.stopping = stopping
        self.notifications = notifications
        self._rooms: dict[str, Room] = {}
        self._leaving: set[asyncio.Future[None]] = set()

    def room(self, room_id: str) -> Room:
        """The room ``room_id``, created if it has no sessions here yet."""
        return self._rooms.get(room_id) or self._rooms.setdefault(room_id, Room(room_id, self))

    def emptied(self, room: Room) -> None:
        """``room``'s last session left: a new one starts afresh."""
        if self._rooms.get(room.room_id) is room:
            del self._rooms[room.room_id]

    def leaving(self, leave: asyncio.Future[None]) -> None:
        """Keep ``leave`` (a leave message being stored) until it is done, for ``close``."""
        self._leaving.add(leave)
        leave.add_done_callback(self._leaving.discard)

    async def close(self) -> None:
        """Wait until the leave messages of ended sessions are stored (before the store closes)."""
        await asyncio.gather(*self._leaving, return_exceptions=True)


class Room:
    """The sessions of one room on this server, its appender and the task that wakes them.

    Messages are appended in batches by the room's ``Appender``: a sender never
    waits for the disk, and what a burst queued up is stored (and delivered) in
    one go. Each append is framed once as a response for every session that was
    caught up, which is nearly all of them.
    """

    def __init__(self, room_id: str, rooms: Rooms) -> None:
        self.room_id = room_id
        self.stream = room_stream(room_id)
        self.rooms = rooms
        self.settings = rooms.settings
        self.sessions: set[Session] = set()
        self.last_typing: dict[str, float] = {}
        self.last_id = 0  # the newest message the sessions have been woken for
        self.appender: Appender[_Post] = Appender(rooms.backend.log, self.stream, self._stored, self._failed)
        self._watcher: asyncio.Task[None] | None = None
        self._typing: Subscription | None = None  # the room's TYPING signals, while it has sessions here
        self._relay: asyncio.Task[None] | None = None
        # Serialized messages by id: every session of the room sends the same bytes, encoded once.
        # (OrderedDict: dropping the oldest is O(1); on a dict, next(iter(d)) scans the deleted slots.)
        self._encoded: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        # The newest appends, framed: position before them -> (response bytes, their last id).
        self._recent: collections.OrderedDict[int, tuple[bytes, int]] = collections.OrderedDict()

    # --- membership and presence -----------------------------------------------

    @contextlib.asynccontextmanager
    async def membership(self, session: Session) -> AsyncIterator[Session]:
        """``session`` a member of the room for the block: present, announced on entry and on exit.

        The leave message is said however the block ends, even when the client vanished without a
        goodbye, and stored before the server closes (``Rooms.close``).
        """
        # A member from now on: the files posted in this room become visible to this user's token.
        await self.rooms.backend.metadata.add_room_member(self.room_id, session.user)
        self.sessions.add(session)  # joining comes first: presence, then the join message, then reading
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name=f"room {self.room_id}")
            self._typing = self.rooms.backend.signals.subscribe(typing_channel(self.room_id))
            self._relay = asyncio.create_task(self._relay_typing(self._typing), name=f"room {self.room_id} typing")
        try:
            await self.say(f"{session.user} joined", session.user)
            yield session
        finally:
            self.sessions.discard(session)
            if not self.sessions and self._watcher is not None:
                self._watcher.cancel()
                self._watcher = None
                if self._typing is not None and self._relay is not None:
                    self._typing.close()
                    self._relay.cancel()
                    self._typing = self._relay = None
                self.rooms.emptied(self)
            leave = asyncio.ensure_future(self.say(f"{session.user} left", session.user))
            self.rooms.leaving(leave)
            await asyncio.shield(leave)

    async def presence(self) -> pb.ChatPresence:
        """Who is in the room, on every replica."""
        return await room_presence(self.rooms.backend, self.room_id)

    # --- the backlog and reading -----------------------------------------------

    async def catch_up(self) -> LogBounds:
        """The bounds of the room's log once what was posted so far is stored.

        What an earlier stream of a client left with the appender is so in the replay before the client
        is told it caught up, and it does not send it again.
        """
        await self.appender.stored()
        bounds = await self.rooms.backend.log.bounds(self.stream)
        self.advance(bounds.last_id)
        return bounds

    def backlog_start(self, bounds: LogBounds, backlog: int) -> int:
        """Where a session that asks for ``backlog`` messages (0: the server's default) starts reading."""
        return max(bounds.trimmed_through, bounds.last_id - (backlog or self.settings.backlog))

    def encoded(self, record: LogRecord) -> bytes:
        """The wire form of a room message, cached for the other sessions."""
        cached = self._encoded.get(record.id)
        if cached is None:
            cached = self._encoded[record.id] = encode_message(record)
            if len(self._encoded) > ENCODED_CACHE:
                self._encoded.popitem(last=False)  # the oldest
        return cached

    def framed(self, records: list[LogRecord]) -> tuple[bytes, int]:
        """A response carrying ``records``, and the last one's id."""
        return wire.repeated_messages(1, (self.encoded(r) for r in records)), records[-1].id

    async def read_after(self, position: int) -> tuple[bytes, int] | None:
        """The framed messages after ``position`` read from the log (at most ``READ_MESSAGES``), and the last
        one's id; None when there are none."""
        records = await self.rooms.backend.log.read(self.stream, position, READ_MESSAGES)
        return self.framed(records) if records else None

    def recent(self, position: int) -> tuple[bytes, int] | None:
        """The framed messages right after ``position`` and the last one's id, if they were appended lately."""
        return self._recent.get(position)

    def advance(self, last_id: int) -> None:
        """The log holds messages up to ``last_id``: wake the sessions if that is news."""
        if last_id > self.last_id:
            self.last_id = last_id
            for session in self.sessions:
                session.wake.set()

    # --- writing -----------------------------------------------------------------

    async def relay_typing(self, session: Session) -> None:
        """Pass ``session``'s TYPING on to the room's other users, on every replica, at most once per
        ``TYPING_INTERVAL`` (per user and replica)."""
        now = time.monotonic()
        if now - self.last_typing.get(session.user, 0.0) < TYPING_INTERVAL:
            return
        self.last_typing[session.user] = now
        typing = pb.ChatMessage(
            user_id=session.user, room_id=self.room_id, type=pb.CHAT_MESSAGE_TYPE_TYPING,
            timestamp=timestamp(time.time()),
        )  # fmt: skip
        await self.rooms.backend.signals.publish(typing_channel(self.room_id), typing.SerializeToString())

    async def _relay_typing(self, signals: Subscription) -> None:
        """Give each TYPING signal of the room to the sessions here of the other users (a session that does
        not read keeps the newest ``OUTBOX_SIZE`` of its ephemeral responses)."""
        async for payload in signals:
            try:
                typing = pb.ChatMessage.FromString(payload)
            except DecodeError:
                log.warning("room %s: a TYPING signal that does not decode, dropped", self.room_id)
                continue
            for other in self.sessions:
                if other.user != typing.user_id:
                    other.push(pb.ChatResponse(messages=[typing]))

    async def post(self, session: Session, send: pb.ChatSend) -> Refusal | None:
        """Append a message ``session`` sent (checked already), unless it is over the rate limit."""
        wait = session.take_token()
        if wait:
            return Refusal("RESOURCE_EXHAUSTED", f"slow down: at most {self.settings.rate:g} messages per second", wait)
        message = pb.ChatMessage(user_id=session.user, room_id=self.room_id, content=send.content, type=send.type,
                                 file_id=send.file_id, client_id=session.client_id,
                                 client_seq=send.client_seq)  # fmt: skip
        mentions = tuple(set(MENTION.findall(send.content)) - {session.user}) if "@" in send.content else ()
        if send.file_id:  # the room's members may see the file from now on
            await self.rooms.backend.metadata.share_file(send.file_id, self.room_id)
        await self.appender.post(
            NewRecord(session.user, pb.ChatMessageType.Name(send.type), message.SerializeToString()),
            _Post(session, mentions, send.content, send.client_seq),
        )
        return None

    async def say(self, text: str, about: str) -> None:
        """Store a SYSTEM message (``about``: the user it is about, its record's key)."""
        message = pb.ChatMessage(user_id=SYSTEM_USER, room_id=self.room_id, content=text,
                                 type=pb.CHAT_MESSAGE_TYPE_SYSTEM)  # fmt: skip
        await self.appender.post(NewRecord(about, "CHAT_MESSAGE_TYPE_SYSTEM", message.SerializeToString()), _Post(None))
        await self.appender.stored()

    async def _stored(self, records: list[LogRecord], posts: list[_Post]) -> None:
        self._remember(records)
        self.advance(records[-1].id)
        notifications = self.rooms.notifications
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

    # --- the watcher ---------------------------------------------------------------

    async def _watch(self) -> None:
        """Wake every session when the log grows by other hands; beat the heartbeat; disconnect stalled sessions."""
        store = self.rooms.backend.log
        loop = asyncio.get_running_loop()
        heartbeat = self.rooms.log_settings.heartbeat
        next_check = loop.time() + 1.0
        next_beat = loop.time() + heartbeat
        away = False  # the store cannot be reached: the room keeps its timers and tries again
        while True:
            timeout = max(0.0, min(next_check, next_beat) - loop.time())
            try:
                grew = await store.wait_for(self.stream, self.last_id, STORE_RETRY if away else timeout)
                if grew:
                    await self._take_in()
                if away:
                    log.info("room %s: following its log again", self.room_id)
                away = False
            except StoreUnavailableError as exc:  # (Redis restarting): its sessions' own calls say so
                if not away:
                    log.warning("room %s: cannot follow its log (trying again every %s s): %s", self.room_id,
                                STORE_RETRY, exc)  # fmt: skip
                away = True
                await asyncio.sleep(STORE_RETRY)
                grew = False
            if not grew and self.rooms.stopping.is_set():
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
                self._kick_stalled(now)

    async def _take_in(self) -> None:
        """Read what other hands appended (another replica's sessions) once for the room, and wake the sessions:
        they find it framed in ``recent`` instead of each reading it from the store."""
        records = await self.rooms.backend.log.read(self.stream, self.last_id, READ_MESSAGES)
        if records:
            self._remember(records)
            self.advance(records[-1].id)  # (a no-op when they are this room's own appends, taken in already)

    def _remember(self, records: list[LogRecord]) -> None:
        """Keep ``records`` framed for the sessions caught up to the position before them."""
        self._recent[records[0].id - 1] = self.framed(records)
        if len(self._recent) > RECENT_RESPONSES:
            self._recent.popitem(last=False)  # the oldest

    def _kick_stalled(self, now: float) -> None:
        """Cancel the handler of each session whose client has left a write pending for too long."""
        for session in list(self.sessions):
            stalled = session.writing_since is not None and now - session.writing_since > self.settings.stall_limit
            if stalled and not session.kicked:
                session.kicked = True
                session.task.cancel()


def room_stream(room_id: str) -> str:
    """The name of a room's log, and the scope of its presence."""
    return f"room:{room_id}"


def typing_channel(room_id: str) -> str:
    """The signal channel of a room's TYPING indicators."""
    return f"typing:{room_id}"


async def room_presence(backend: Backend, room_id: str) -> pb.ChatPresence:
    """Who is in room ``room_id``, on every replica of ``backend``."""
    return pb.ChatPresence(room_id=room_id, users=await backend.presence.members(room_stream(room_id)))


def encode_message(record: LogRecord) -> bytes:
    """The serialized ChatMessage of a stored record: its payload plus id and server time fields."""
    stamp = timestamp(record.timestamp).SerializeToString()
    return record.payload + wire.varint_field(1, record.id) + wire.bytes_field(5, stamp)
