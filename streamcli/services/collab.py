"""Collaborate: shared text documents over the bidirectional Collaborate RPC.

The first request joins a document (``services/documents.py``); the answer is a snapshot, or on a rejoin
by revision the edits since it while they are kept. Then two tasks run until the client leaves: one
commits what the client sends (``_receive``: changes of one or more edits, cursors), the handler's own
delivers the committed edits, the cursors of others and this stream's refusals (``_deliver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Backend
from streamcli.collab_sync import TrimmedHistory
from streamcli.credentials import REVOKED, Credentials, TokenWatch
from streamcli.ot import Edit, InvalidEdit
from streamcli.services.checks import CLIENT_ID, CLIENT_ID_RULE, USER_ID, MalformedRequest, has_control
from streamcli.services.documents import DOCUMENT_STREAM, Document, Documents, DocumentSettings
from streamcli.services.editors import Editor
from streamcli.services.logs import BATCH_RECORDS, LogSettings, timestamp
from streamcli.services.rpc import Context, abort
from streamcli.services.wire import repeated_messages

DOCUMENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DOCUMENT_ID_RULE = "document_id must be 1-64 letters, digits, '-', '_' or '.'"
#: Documents per ListDocuments page: by default, at most.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Edits one change may have (a transformed change has at most a few; a client composing its waiting edits more).
MAX_PARTS = 1000


class _Rejoin(Exception):
    """The stream needs history that is no longer kept: the client must join again for a snapshot."""


class CollabService:
    """The Collaborate RPC of ``StreamingService``."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("Collaborate", "ListDocuments")

    def __init__(
        self,
        backend: Backend,
        log_settings: LogSettings,
        stopping: asyncio.Event,
        credentials: Credentials | None = None,
        settings: DocumentSettings | None = None,
    ) -> None:
        self.credentials = credentials or Credentials()
        self.log_settings = log_settings
        self.stopping = stopping
        self.log = backend.log
        # On a backend replicas share, each open document follows its log: edits committed elsewhere reach
        # this server's editors as they are committed (and the editors of replicas that died are noticed).
        follow_until = stopping if backend.shared else None
        self.documents = Documents(
            backend.log, settings or DocumentSettings(), follow_until, backend.presence, backend.signals
        )
        self._stop_watch: asyncio.Task[None] | None = None

    async def Collaborate(self, request_iterator: AsyncIterator[pb.CollaborateRequest], context: Context) -> None:
        join = await self._join_request(request_iterator, context)
        if self._stop_watch is None:
            self._stop_watch = asyncio.create_task(self._wake_on_stop())
        document = await self.documents.get(join.document_id)
        first: list[pb.CollaborationEvent] = []
        position = join.last_revision if join.HasField("last_revision") else None
        if position is not None:
            await document.keep_from(position)
        if position is not None and position > document.revision:
            await abort(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                f"last_revision {position} is beyond the document's revision {document.revision}",
            )
        if position is None or position < document.sequencer.first_kept:
            position = document.revision
            first.append(
                pb.CollaborationEvent(
                    document_id=document.id,
                    revision=position,
                    snapshot=document.sequencer.text,
                    timestamp=timestamp(time.time()),
                    # The joining client's last committed change: is its change in flight in the snapshot?
                    client_seq=document.sequencer.last_seq.get(join.client_id, 0) if join.client_id else 0,
                )
            )
        editor = Editor(join.user_id, join.client_id, position)
        await document.here.arrive(editor)
        try:
            if first:
                await context.write(pb.CollaborateResponse(events=first))
            async with self._receiving(document, editor, request_iterator) as receiver:
                await self._serve(document, editor, receiver, context)
        finally:
            await asyncio.shield(self.documents.left(document, editor))  # (also when the client went away)

    async def ListDocuments(self, request: pb.ListDocumentsRequest, context: Context) -> pb.ListDocumentsResponse:
        if request.page_size > MAX_PAGE:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be at most {MAX_PAGE}")
        size = request.page_size or DEFAULT_PAGE
        heads = await self.log.heads(DOCUMENT_STREAM, DOCUMENT_STREAM + request.after_document_id, size + 1)
        return pb.ListDocumentsResponse(
            documents=[
                pb.DocumentInfo(
                    document_id=head.stream.removeprefix(DOCUMENT_STREAM),
                    revision=head.bounds.last_id,
                    updated_at=timestamp(head.updated_at),
                )
                for head in heads[:size]
            ],
            more=len(heads) > size,
        )

    async def _wake_on_stop(self) -> None:
        await self.stopping.wait()
        self.documents.wake_all()

    async def _join_request(
        self, requests: AsyncIterator[pb.CollaborateRequest], context: Context
    ) -> pb.CollaborateJoin:
        """The stream's join, checked; a user token's name replaces the ``user_id`` it claims."""
        first = await anext(requests, None)
        if first is None or first.WhichOneof("action") != "join":
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "the first message of a Collaborate stream must be a join"
            )
        join = first.join
        named = self.credentials.user_of(context.invocation_metadata())
        if named is not None:
            join.user_id = named
        if not DOCUMENT_ID.fullmatch(join.document_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, DOCUMENT_ID_RULE)
        if not USER_ID.fullmatch(join.user_id):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "user_id must be 1-32 letters, digits, '-', '_' or '.'"
            )
        if not CLIENT_ID.fullmatch(join.client_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, CLIENT_ID_RULE)
        if named is None and self.credentials.names_a_user(join.user_id):
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the name {join.user_id} is a user's who has a token: only its holder may edit as them",
            )
        return join

    @contextlib.asynccontextmanager
    async def _receiving(
        self, document: Document, editor: Editor, requests: AsyncIterator[pb.CollaborateRequest]
    ) -> AsyncIterator[asyncio.Task[None]]:
        receiver = asyncio.create_task(self._receive(document, editor, requests))
        receiver.add_done_callback(lambda _: editor.wake.set())
        try:
            yield receiver
        finally:
            receiver.cancel()
            if receiver.done() and not receiver.cancelled():
                receiver.exception()

    async def _serve(self, document: Document, editor: Editor, receiver: asyncio.Task[None], context: Context) -> None:
        try:
            await self._deliver(document, editor, receiver, context)
        except _Rejoin as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{exc}; join again without last_revision")
        failed = receiver.exception()
        if isinstance(failed, TrimmedHistory):
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"an edit is based on {failed}; join again without last_revision for a snapshot",
            )
        if isinstance(failed, MalformedRequest):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{failed.detail}; every change before it was committed or refused; delivered up to revision "
                f"{editor.position}",
            )

    async def _deliver(
        self, document: Document, editor: Editor, receiver: asyncio.Task[None], context: Context
    ) -> None:
        """Committed edits, then ephemeral events once caught up, until the client leaves."""
        token = TokenWatch(self.credentials, context.invocation_metadata())
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while True:
            editor.wake.clear()
            if token.revoked():
                await abort(context, grpc.StatusCode.UNAUTHENTICATED, REVOKED)
            response: bytes | pb.CollaborateResponse | None = None
            if editor.position < document.revision:
                try:
                    edits = document.events_after(editor.position, BATCH_RECORDS)
                except TrimmedHistory as exc:
                    raise _Rejoin(f"this stream fell behind: {exc}") from None
                editor.position += len(edits)  # one a revision
                response = repeated_messages(1, edits)  # CollaborateResponse.events, from the committed bytes
            elif editor.outbox:
                # Cursors refer to a revision already sent: only now, when the stream has every edit.
                response = pb.CollaborateResponse(events=editor.outbox)
                editor.outbox.clear()
            if response is not None:
                await context.write(response)
                last_sent = loop.time()
                continue
            if receiver.done():
                return
            if self.stopping.is_set():
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"the server is shutting down; rejoin with last_revision {editor.position}",
                )
            heartbeat = self.log_settings.heartbeat
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(last_sent + heartbeat):  # (no task per wait, as wait_for makes)
                    await editor.wake.wait()
            if not editor.wake.is_set() and loop.time() >= last_sent + heartbeat:
                await context.write(pb.CollaborateResponse())  # heartbeat: proxies keep an idle stream
                last_sent = loop.time()

    async def _receive(
        self, document: Document, editor: Editor, requests: AsyncIterator[pb.CollaborateRequest]
    ) -> None:
        """Commit what the client sends; refuse what cannot be used, in-band.

        Raises:
            TrimmedHistory: a change is based on history no longer kept.
            MalformedRequest: a message did not decode.
        """
        parts: list[pb.CollaborateEdit] = []
        async for request in requests:
            action = request.WhichOneof("action")
            if action == "edit":
                parts.append(request.edit)
                if request.edit.parts_after and len(parts) < MAX_PARTS:
                    continue
                change, parts = parts, []
                await self._commit(document, editor, change)
            elif action == "cursor":
                await document.keep_from(request.cursor.base_revision)
                await self._cursor(document, editor, request.cursor)
            else:
                self._refuse(document, editor, 0, f"unexpected {action or 'empty message'} after the join")

    async def _commit(self, document: Document, editor: Editor, change: list[pb.CollaborateEdit]) -> None:
        head = change[0]
        reason = _change_problem(change)
        if reason is None:
            edits = [Edit(p.edit.position, p.edit.delete_count, p.edit.insert_text) for p in change]
            try:
                await document.commit(editor.user, editor.client_id, head.client_seq, head.base_revision, edits)
            except InvalidEdit as exc:
                reason = str(exc)
        if reason is not None:
            self._refuse(document, editor, head.client_seq, reason)

    async def _cursor(self, document: Document, editor: Editor, cursor: pb.CollaborateCursor) -> None:
        try:
            position = document.sequencer.cursor(cursor.base_revision, cursor.position)
        except (InvalidEdit, TrimmedHistory) as exc:
            self._refuse(document, editor, 0, f"cursor: {exc}")
            return
        event = pb.CollaborationEvent(
            document_id=document.id,
            user_id=editor.user,
            revision=document.revision,
            timestamp=timestamp(time.time()),
            cursor=pb.CollaborateCursor(position=position),
            client_id=editor.client_id,
        )
        await document.here.broadcast(editor, event)

    @staticmethod
    def _refuse(document: Document, editor: Editor, client_seq: int, reason: str) -> None:
        refusal = pb.CollaborateRefusal(client_seq=client_seq, code="INVALID_ARGUMENT", reason=reason)
        editor.push(
            pb.CollaborationEvent(
                document_id=document.id,
                user_id=editor.user,
                revision=document.revision,
                timestamp=timestamp(time.time()),
                refusal=refusal,
                client_id=editor.client_id,
            )
        )


def _change_problem(change: list[pb.CollaborateEdit]) -> str | None:
    """Why a change is refused for what it is, before it meets the document, or None."""
    head = change[0]
    if len(change) >= MAX_PARTS and change[-1].parts_after:
        return f"a change of more than {MAX_PARTS} edits"
    for n, part in enumerate(change):
        if part.base_revision != head.base_revision or part.client_seq != head.client_seq:
            return "the edits of one change must share base_revision and client_seq"
        if part.parts_after != len(change) - 1 - n:
            return "parts_after must count down to 0 along a change"
        if has_control(part.edit.insert_text, multiline=True):
            return "inserted text contains control characters"
    return None
