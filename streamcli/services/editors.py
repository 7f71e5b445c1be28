"""Who edits a shared document, on every replica: each editor's presence and cursor, told to the others.

An ``Editor`` is one Collaborate stream on a document. Its presence is a lease in the backend's presence
(scope ``doc:<id>``, member ``<user>/<client id>``), held while the stream lasts; its arrival, its cursor
moves and its departure are signals (channel ``collab:<id>``: the author's token, then the serialized
``CollaborationEvent``), given by each replica to its own editors of the document except the author.
``DocumentEditors`` is what one replica does for one open document:

* an editor that arrives is told who is here (every member held before it came, on any replica);
  the others are told it came;
* one that leaves is announced gone unless its client is still here on another stream (a rejoin that
  came before the old stream's end was noticed), on this replica or another;
* on a backend replicas share, the members are looked at every ``DEPARTURES_EVERY`` seconds: those
  announced here that no lease holds any more (their replica died without saying goodbye) are
  announced gone too, once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from google.protobuf.message import DecodeError

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Lease, Presence, Signals, StoreUnavailableError, Subscription
from streamcli.services.logs import timestamp

log = logging.getLogger("streamcli.server")

#: Ephemeral events (cursors, refusals) kept per editor until sent; the oldest go first.
OUTBOX_SIZE = 256
#: Seconds between two looks for the editors of replicas that died (on a backend replicas share).
DEPARTURES_EVERY = 2.0
#: Length of an editor's token, which starts each signal it is the author of.
TOKEN_LENGTH = 32


class Editor:
    """One Collaborate stream on a document."""

    def __init__(self, user: str, client_id: str, position: int) -> None:
        self.user = user
        self.client_id = client_id
        self.position = position  # the last revision this stream has been sent
        self.wake = asyncio.Event()
        self.outbox: collections.deque[pb.CollaborationEvent] = collections.deque(maxlen=OUTBOX_SIZE)
        self.token = uuid.uuid4().hex.encode()  # names it as the author of its signals
        self.lease: Lease | None = None  # its presence, while it is here

    @property
    def member(self) -> str:
        return member_of(self.user, self.client_id)

    def push(self, event: pb.CollaborationEvent) -> None:
        self.outbox.append(event)
        self.wake.set()


def member_of(user: str, client_id: str) -> str:
    """An editor's member in its document's presence (neither a user nor a client id has a '/')."""
    return f"{user}/{client_id}"


class DocumentEditors:
    """The editors of one document on this replica, and their presence and cursors on every replica."""

    def __init__(self, document_id: str, revision: Callable[[], int], presence: Presence, signals: Signals) -> None:
        self.document_id = document_id
        self.editors: set[Editor] = set()
        self._revision = revision
        self._presence = presence
        self._signals = signals
        self._scope = f"doc:{document_id}"
        self._channel = f"collab:{document_id}"
        self._announced: set[str] = set()  # members the editors here were told are present
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, *, watch_departures: bool) -> None:
        """Hear the signals of the document's editors (on every replica), until ``stop``; with ``watch_departures``
        also notice the editors of replicas that died."""
        self._subscription = self._signals.subscribe(self._channel)
        self._tasks.append(asyncio.create_task(self._relay(self._subscription), name=f"{self._scope} signals"))
        if watch_departures:
            self._tasks.append(asyncio.create_task(self._watch_departures(), name=f"{self._scope} departures"))

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        for task in self._tasks:
            task.cancel()

    async def arrive(self, editor: Editor) -> None:
        """Take ``editor`` in: it is told who is here, the others that it came."""
        here = await self._presence.members(self._scope)
        for member in here:
            editor.push(self.presence_event(*member.split("/", 1), present=True))
        self._announced.update(here)
        editor.lease = await self._presence.join(self._scope, editor.member)
        self.editors.add(editor)
        await self.broadcast(editor, self.presence_event(editor.user, editor.client_id, present=True))

    async def leave(self, editor: Editor) -> None:
        """``editor``'s stream ended: the others are told, unless the same client is here on another stream."""
        self.editors.discard(editor)
        if editor.lease is not None:
            await editor.lease.leave()
        if editor.client_id:
            try:
                if editor.member in await self._presence.members(self._scope):
                    return
            except StoreUnavailableError:
                pass  # say it left: were it still here, its other stream's presence is said again on its rejoin
        await self.broadcast(editor, self.presence_event(editor.user, editor.client_id, present=False))

    async def broadcast(self, author: Editor, event: pb.CollaborationEvent) -> None:
        """Pass an ephemeral event (a cursor, a presence) to the other editors, on every replica."""
        await self._signals.publish(self._channel, author.token + event.SerializeToString())

    def presence_event(self, user: str, client_id: str, *, present: bool) -> pb.CollaborationEvent:
        return pb.CollaborationEvent(
            document_id=self.document_id,
            user_id=user,
            revision=self._revision(),
            timestamp=timestamp(time.time()),
            client_id=client_id,
            presence=pb.CollaboratePresence(present=present),
        )

    async def _relay(self, signals: Subscription) -> None:
        async for payload in signals:
            author = payload[:TOKEN_LENGTH]
            try:
                event = pb.CollaborationEvent.FromString(payload[TOKEN_LENGTH:])
            except DecodeError:
                log.warning("document %r: a signal that does not decode, dropped", self.document_id)
                continue
            if event.WhichOneof("change") == "presence":
                member = member_of(event.user_id, event.client_id)
                if event.presence.present:
                    self._announced.add(member)
                elif member in self._announced or not event.client_id:
                    self._announced.discard(member)
                else:
                    continue  # announced gone already (its replica died: _watch_departures)
            for editor in self.editors:
                if editor.token != author:
                    editor.push(event)

    async def _watch_departures(self) -> None:
        while True:
            await asyncio.sleep(DEPARTURES_EVERY)
            with contextlib.suppress(StoreUnavailableError):  # (the editors' own calls say so)
                here = set(await self._presence.members(self._scope))
                for member in sorted(self._announced - here):
                    self._announced.discard(member)
                    gone = self.presence_event(*member.split("/", 1), present=False)
                    for editor in self.editors:
                        editor.push(gone)
