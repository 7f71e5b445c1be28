"""Shared documents from the client: read one, apply edits to one, list them (the Collaborate RPC and ListDocuments).

``DocumentSession`` is one editor of one document over a Collaborate stream: it joins (a snapshot), keeps
a ``collab_sync.Replica`` in step with what the server broadcasts, sends its changes one at a time and,
when the stream is lost, rejoins with the last revision it saw and re-sends the change in flight under
the same number (the server applies it once). The typed results are ``DocumentText``, ``AppliedEdits``
and ``DocumentEntry``; the one conversion from protobuf is here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.retry import DEFAULT_RETRY, Attempts, RetryPolicy
from streamcli.collab_sync import Committed, Outgoing, Replica
from streamcli.errors import InvalidArgumentError, UnavailableError, UsageError
from streamcli.ot import Edit, InvalidEdit, Operation, compose
from streamcli.times import Instant, rfc3339

#: The fields of an edit in ``collab --apply``'s NDJSON (the contract's TextEdit).
EDIT_FIELDS = frozenset({"position", "delete_count", "insert_text"})
#: Documents asked for per ListDocuments page.
PAGE = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class DocumentText:
    """A document's text at a revision (``collab DOC --print``)."""

    document_id: str
    revision: int
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"document": self.document_id, "revision": self.revision, "text": self.text}


@dataclasses.dataclass(frozen=True, slots=True)
class AppliedEdits:
    """What ``collab DOC --apply`` did: its edits committed, and the document's revision once they were."""

    document_id: str
    revision: int
    edits: int

    def to_json(self) -> dict[str, Any]:
        return {"document": self.document_id, "revision": self.revision, "edits": self.edits}


@dataclasses.dataclass(frozen=True, slots=True)
class DocumentEntry:
    """A shared document, as ``collab ls`` lists it."""

    document_id: str
    revision: int
    updated_at: Instant

    @classmethod
    def from_message(cls, info: pb.DocumentInfo) -> DocumentEntry:
        return cls(info.document_id, info.revision, Instant(info.updated_at.seconds, info.updated_at.nanos))

    def to_json(self) -> dict[str, Any]:
        return {"document": self.document_id, "revision": self.revision, "updated_at": rfc3339(self.updated_at)}


async def list_documents(conn: Connection) -> list[DocumentEntry]:
    """Every shared document, by id (paging through the server's pages)."""
    entries: list[DocumentEntry] = []
    after = ""
    with rpc_errors(conn):
        while True:
            request = pb.ListDocumentsRequest(page_size=PAGE, after_document_id=after)
            page = await conn.stub.ListDocuments(request, metadata=conn.metadata)
            entries.extend(DocumentEntry.from_message(info) for info in page.documents)
            if not page.more or not page.documents:
                return entries
            after = page.documents[-1].document_id


def _committed(event: pb.CollaborationEvent) -> Committed:
    edit = Edit(event.edit.position, event.edit.delete_count, event.edit.insert_text)
    return Committed(event.revision, edit, event.client_id, event.client_seq, event.parts_after)


def _requests(out: Outgoing) -> list[pb.CollaborateRequest]:
    """A change as consecutive CollaborateEdits, ``parts_after`` counting down."""
    last = len(out.edits) - 1
    return [
        pb.CollaborateRequest(
            edit=pb.CollaborateEdit(
                base_revision=out.base_revision,
                edit=pb.TextEdit(position=e.position, delete_count=e.delete_count, insert_text=e.insert_text),
                client_seq=out.client_seq,
                parts_after=last - n,
            )
        )
        for n, e in enumerate(out.edits)
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteCursor:
    """Another editor's cursor, at a position of the text this session shows."""

    user_id: str
    client_id: str
    position: int


@dataclasses.dataclass(frozen=True, slots=True)
class Participant:
    """Another editor joined the document (``present``) or left it."""

    user_id: str
    client_id: str
    present: bool


@dataclasses.dataclass
class SessionHandlers:
    """What a view of the session is told (all optional): remote changes, a fresh text, cursors, who is here, the
    connection. While the state is not "connected" the view cannot know who is here: after a reconnect the
    server tells again who is."""

    remote: Callable[[Operation], None] | None = None  # a change by others, made on ``replica.text``
    reset: Callable[[str], None] | None = None  # a snapshot replaced the text
    cursor: Callable[[RemoteCursor], None] | None = None
    presence: Callable[[Participant], None] | None = None
    cursor_at: Callable[[], int] | None = None  # where the view's cursor is now: sent once a change is acknowledged
    state: Callable[[str], None] | None = None  # "connecting", "connected", "reconnecting (CODE)"


class DocumentSession:
    """One editor of one document: joins, follows, sends its changes and rejoins by revision when the stream is lost.

    ``run(work)`` joins, then awaits ``work(self)`` while the session follows the document; it returns
    ``work``'s result. ``local(op)`` makes a change (sent at once or when the change in flight is acknowledged),
    ``settled`` is set when nothing is waiting for the server.
    """

    def __init__(
        self,
        conn: Connection,
        document_id: str,
        user_id: str,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        announce: Callable[[str], None] | None = None,
        handlers: SessionHandlers | None = None,
    ) -> None:
        self.handlers = handlers or SessionHandlers()
        self.conn = conn
        self.document_id = document_id
        self.user_id = user_id
        self.retry = retry
        self.announce = announce
        self.replica = Replica(f"{user_id}-{secrets.token_hex(4)}")
        self.joined = asyncio.Event()  # a snapshot (or the edits since the last revision) arrived
        self.settled = asyncio.Event()
        self.settled.set()
        self.refusal: pb.CollaborateRefusal | None = None  # of this session's change, which is then dropped
        self._ever_joined = False
        self._fresh_join = True  # join for a snapshot (not by revision)
        self._writing = asyncio.Lock()  # one change's edits go out together
        self._tasks: set[asyncio.Future[None]] = set()
        self._cursor_owed = False  # a cursor move could not be sent (a change was unacknowledged)
        self._call: grpc.aio.StreamStreamCall[pb.CollaborateRequest, pb.CollaborateResponse] | None = None

    async def run(self, work: Callable[[DocumentSession], Any]) -> Any:
        """Join and follow the document while ``work(self)`` runs; its result."""
        task = asyncio.ensure_future(work(self))
        follower = asyncio.ensure_future(self._follow())
        try:
            done, _ = await asyncio.wait({task, follower}, return_when=asyncio.FIRST_COMPLETED)
            if follower in done:
                follower.result()  # raises what ended it
            return await task
        finally:
            task.cancel()
            follower.cancel()
            if self._call is not None:
                self._call.cancel()

    async def local(self, op: Operation) -> None:
        """Make a change on the text as this session shows it, and send it (or let it wait for the one in flight)."""
        out = self.replica.local(op)
        self.settled.clear()
        if out is not None:
            await self._send(out)

    def change(self, op: Operation) -> None:
        """``local`` from code that cannot await (a view's callback): the text changes now, the sending follows."""
        out = self.replica.local(op)
        self.settled.clear()
        if out is not None:
            self._spawn(self._send(out))

    def cursor_moved(self, position: int) -> None:
        """``move_cursor`` from code that cannot await."""
        self._spawn(self.move_cursor(position))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def move_cursor(self, position: int) -> None:
        """Show others where this session's cursor is (only while no change of its own is unacknowledged:
        the server places a cursor on a revision it has, and the session's own text is ahead of it)."""
        call = self._call
        if call is None or self.replica.pending() is not None or not self.joined.is_set():
            self._cursor_owed = True  # sent (where the view says it is then) once nothing is unacknowledged
            return
        self._cursor_owed = False
        request = pb.CollaborateRequest(
            cursor=pb.CollaborateCursor(position=position, base_revision=self.replica.revision)
        )
        async with self._writing:
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return

    def _state(self, state: str) -> None:
        if self.handlers.state is not None:
            self.handlers.state(state)

    async def _send(self, out: Outgoing) -> None:
        call = self._call
        if call is None:
            return  # re-sent on rejoin
        async with self._writing:
            for request in _requests(out):
                try:
                    await call.write(request)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    return  # the stream is gone: the follower rejoins and re-sends

    async def _follow(self) -> None:
        attempts = Attempts(self.retry, f"document {self.document_id}", announce=self.announce, connection=self.conn)
        with rpc_errors(self.conn):
            while True:
                try:
                    await self._one_stream()
                    raise UnavailableError(f"the server ended the stream of document {self.document_id}")
                except grpc.aio.AioRpcError as exc:
                    if not self._ever_joined:
                        raise
                    self._state(f"reconnecting ({exc.code().name})")
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        self._rejoin_from_snapshot(exc)
                        continue
                    await attempts.failed(exc, progressed=self.joined.is_set())
                    if self.joined.is_set():
                        attempts.recovered()
                finally:
                    self.joined.clear()

    def _rejoin_from_snapshot(self, exc: grpc.aio.AioRpcError) -> None:
        """The server no longer keeps the edits after our revision: join for a snapshot, and merge the changes
        not acknowledged onto it (``Replica.rebase_onto``)."""
        self._fresh_join = True
        if self.announce is not None:
            kept = "; the changes not yet acknowledged are merged onto it" if self.replica.pending() else ""
            self.announce(f"{exc.details()}: joining again from a snapshot{kept}")

    async def _one_stream(self) -> None:
        call = self.conn.stub.Collaborate(metadata=self.conn.metadata)
        self._call = call
        join = pb.CollaborateJoin(document_id=self.document_id, user_id=self.user_id, client_id=self.replica.client_id)
        if not self._fresh_join:
            join.last_revision = self.replica.revision
        async with self._writing:
            await call.write(pb.CollaborateRequest(join=join))
            if not self._fresh_join and self.replica.in_flight is not None:
                for request in _requests(self.replica.outgoing()):
                    await call.write(request)
        async for response in self._responses(call):
            for event in response.events:
                await self._take(event)

    def _joined(self) -> None:
        if not self.joined.is_set():
            self.joined.set()
            self._state("connected")

    @staticmethod
    async def _responses(
        call: grpc.aio.StreamStreamCall[pb.CollaborateRequest, pb.CollaborateResponse],
    ) -> AsyncIterator[pb.CollaborateResponse]:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, pb.CollaborateResponse)
            yield response

    async def _take(self, event: pb.CollaborationEvent) -> None:
        change = event.WhichOneof("change")
        if change == "snapshot":
            out = None
            if self.replica.pending() is not None:
                # A rejoin the server answered with a snapshot (the edits since our revision are no longer
                # kept): what was not acknowledged is merged onto it and sent as a new change.
                kept = self.replica.rebase_onto(event.snapshot, event.revision, event.client_seq)
                out = self.replica.local(kept) if kept is not None else None
            else:
                self.replica.reset(event.snapshot, event.revision)
            self._ever_joined = True
            self._fresh_join = False
            self._joined()
            if self.handlers.reset is not None:
                self.handlers.reset(self.replica.text)
            if out is not None:
                await self._send(out)
        elif change == "edit":
            self._joined()
            remote, out = self.replica.received(_committed(event))
            if remote is not None and self.handlers.remote is not None:
                self.handlers.remote(remote)
            if out is not None:
                await self._send(out)
        elif change == "cursor" and event.client_id != self.replica.client_id and self.handlers.cursor is not None:
            position = event.cursor.position
            pending = self.replica.pending()
            shown = pending.base_length if pending is not None else len(self.replica.text)
            if event.revision != self.replica.revision or position > shown:
                return  # (a cursor always follows the edits it refers to; one from elsewhere is ignored)
            if pending is not None:
                position = pending.transform_position(position)
            self.handlers.cursor(RemoteCursor(event.user_id, event.client_id, position))
        elif change == "presence" and event.client_id != self.replica.client_id and self.handlers.presence:
            self.handlers.presence(Participant(event.user_id, event.client_id, event.presence.present))
        elif (
            change == "refusal"
            and self.replica.in_flight is not None
            and event.refusal.client_seq == self.replica.in_flight_seq
        ):
            self.refusal = event.refusal
            self.replica.in_flight = None  # never committed: drop it (and what waited on it)
            self.replica.waiting = None
        if self.replica.in_flight is None and self.replica.waiting is None:
            self.settled.set()
            if self._cursor_owed and self.handlers.cursor_at is not None:
                self._cursor_owed = False
                self._spawn(self.move_cursor(self.handlers.cursor_at()))


async def read_document(conn: Connection, document_id: str, user_id: str, retry: RetryPolicy) -> DocumentText:
    """The document's text now."""
    session = DocumentSession(conn, document_id, user_id, retry=retry)

    async def snapshot(session: DocumentSession) -> DocumentText:
        await session.joined.wait()
        return DocumentText(document_id, session.replica.revision, session.replica.text)

    result: DocumentText = await session.run(snapshot)
    return result


def edits_from_lines(lines: Iterable[bytes | str]) -> list[tuple[int, Edit]]:
    """NDJSON edits, ``{"position", "delete_count"?, "insert_text"?}`` a line (blank lines skipped), with their lines.

    Raises:
        UsageError: a line that is not such an object; names its line.
    """
    edits: list[tuple[int, Edit]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(item, dict) or set(item) - EDIT_FIELDS:
            raise UsageError(f"line {number}: an edit is an object with {', '.join(sorted(EDIT_FIELDS))}")
        position, count, text = item.get("position"), item.get("delete_count", 0), item.get("insert_text", "")
        if not (isinstance(position, int) and _count(position) and _count(count) and isinstance(text, str)):
            raise UsageError(
                f"line {number}: position and delete_count must be whole numbers from 0, insert_text a string"
            )
        edits.append((number, Edit(position, count, text)))
    return edits


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def change_from(text: str, edits: Sequence[tuple[int, Edit]]) -> Operation:
    """Edits made one after another on ``text`` (each with the line it was read from) as one change.

    Raises:
        InvalidArgumentError: an edit does not fit the text the previous ones made; names its line.
    """
    op = Operation.identity(len(text))
    for line, edit in edits:
        try:
            op = compose(op, Operation.from_edit(op.target_length, edit))
        except InvalidEdit as exc:
            raise InvalidArgumentError(f"line {line}: {exc}") from None
    return op


async def apply_edits(
    conn: Connection,
    document_id: str,
    user_id: str,
    edits: Sequence[tuple[int, Edit]],
    retry: RetryPolicy,
    announce: Callable[[str], None] | None = None,
) -> AppliedEdits:
    """Apply ``edits`` (one after another, on the text at joining) as one change; the revision once it is committed."""
    session = DocumentSession(conn, document_id, user_id, retry=retry, announce=announce)

    async def apply(session: DocumentSession) -> AppliedEdits:
        await session.joined.wait()
        await session.local(change_from(session.replica.text, edits))
        await session.settled.wait()
        if session.refusal is not None:
            raise InvalidArgumentError(f"the server refused the edits: {session.refusal.reason}")
        return AppliedEdits(document_id, session.replica.revision, len(edits))

    result: AppliedEdits = await session.run(apply)
    return result
