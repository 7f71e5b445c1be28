"""Shared documents on this server: each a log of committed edits plus snapshots, sequenced by one ``Sequencer``.

A document ``D`` is the log ``doc:D`` (record id = revision: record 1 makes revision 1; key = user, kind
``edit``, payload a ``CollaborationEvent``) and the log ``docsnap:D`` of snapshots (JSON: revision, text
and each client's last committed change number), one every ``snapshot_every`` revisions. A revision is
committed by a conditional append ("append if the log still ends at the revision I transformed onto"):
a writer that lost the race (another replica on a shared backend) reads what was appended and transforms
again. Opening a document reads its newest snapshot and the edits after it (the kept edits before the snapshot
only when a rejoin or a change asks for them); the log and the history kept
in memory are trimmed to the last ``kept_revisions`` once a snapshot covers what is removed.

On a backend that replicas share, each document open here has a follower task (``Document.follow``) that
waits on the document's log and takes in the revisions committed through other replicas, waking this
server's editors, so they see those edits live.

An ``Editor`` is one Collaborate stream on a document: what it has been sent (``position``), its
ephemeral events (cursors and presence of others, its own refusals) and a wake-up; a document's editors
here, and their presence and cursors on every replica, are its ``DocumentEditors`` (``services/editors.py``).
The RPC is ``services/collab.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import ConditionFailedError, LogStore, NewRecord, Presence, Signals
from streamcli.backends.ephemeral import LocalPresence, LocalSignals
from streamcli.collab_sync import Committed, Sequencer
from streamcli.ot import Edit, Operation
from streamcli.services.editors import DocumentEditors, Editor
from streamcli.services.logs import timestamp

log = logging.getLogger("streamcli.server")

#: The log of document D is DOCUMENT_STREAM + D.
DOCUMENT_STREAM = "doc:"
#: Log records read per step when opening a document.
READ_RECORDS = 5000
#: Seconds one wait of a follower lasts (one blocking read of the backend) before it waits again.
FOLLOW_WAIT = 30.0
#: Seconds a follower pauses after a failure (the store away, say) before it waits again.
FOLLOW_RETRY = 1.0


@dataclasses.dataclass(frozen=True)
class DocumentSettings:
    """Limits of shared documents."""

    max_length: int = 1_000_000  # code points
    kept_revisions: int = 10_000  # edits kept for rejoins (at least, since the newest snapshot)
    snapshot_every: int = 1000  # revisions between snapshots


class Document:
    """One shared document, open on this server while it has editors."""

    def __init__(
        self,
        document_id: str,
        log: LogStore,
        settings: DocumentSettings,
        presence: Presence | None = None,
        signals: Signals | None = None,
    ) -> None:
        """``presence``, ``signals``: the backend's (in this process when not given)."""
        self.id = document_id
        self.stream = DOCUMENT_STREAM + document_id
        self.snapshots = f"docsnap:{document_id}"
        self.log = log
        self.settings = settings
        self.sequencer = Sequencer(max_length=settings.max_length)
        self.events: list[bytes] = []  # each revision of sequencer.history: its CollaborationEvent, serialized
        self.here = DocumentEditors(
            document_id, lambda: self.revision, presence or LocalPresence(), signals or LocalSignals()
        )
        self.lock = asyncio.Lock()  # one commit at a time
        self.snapshot_revision = 0
        self._log_start = 0  # where the log began when last looked at (it only moves on)

    async def open(self) -> None:
        """Read the newest snapshot and the edits after it (the kept edits before it are read when asked for)."""
        bounds = await self.log.bounds(self.snapshots)
        if bounds.last_id:
            (record,) = await self.log.read(self.snapshots, bounds.last_id - 1, 1)
            saved = json.loads(record.payload)
            self.sequencer = Sequencer(saved["text"], saved["revision"], self.settings.max_length)
            self.sequencer.last_seq.update(saved["last_seq"])
            self.snapshot_revision = saved["revision"]
        await self._read_on()

    async def keep_from(self, revision: int) -> None:
        """Have the history reach back to ``revision`` as far as the log keeps it (a rejoin, or a change or a
        cursor based on a revision before the newest snapshot read on opening)."""
        if revision < self.sequencer.first_kept:
            async with self.lock:
                await self._read_back(revision)

    async def _read_back(self, revision: int) -> None:
        """Put the logged edits after ``revision`` that the history lacks before it; nothing if trimmed away."""
        first = self.sequencer.first_kept
        if revision >= first or first <= self._log_start:
            return
        self._log_start = (await self.log.bounds(self.stream)).trimmed_through
        start = max(revision, self._log_start)
        earlier: list[bytes] = []
        while start + len(earlier) < first:
            after = start + len(earlier)
            records = await self.log.read(self.stream, after, min(READ_RECORDS, first - after))
            if not records:
                return
            earlier.extend(r.payload for r in records)
        self.sequencer.keep_earlier([_committed(pb.CollaborationEvent.FromString(e)) for e in earlier])
        self.events[:0] = earlier

    async def _read_on(self) -> None:
        """Take in what the log holds after the sequencer's revision."""
        while records := await self.log.read(self.stream, self.sequencer.revision, READ_RECORDS):
            self.sequencer.record(_committed(pb.CollaborationEvent.FromString(r.payload)) for r in records)
            self.events.extend(r.payload for r in records)

    async def follow(self, stopping: asyncio.Event) -> None:
        """Take in the revisions other writers (replicas on a shared backend) append to the log, waking the
        editors, until ``stopping`` is set (or the task is cancelled: the document closed)."""
        failing = False
        while not stopping.is_set():
            try:
                if not await self.log.wait_for(self.stream, self.revision, FOLLOW_WAIT):
                    continue  # (a released wait returns at once: stopping is set by then)
                async with self.lock:
                    before = self.revision
                    await self._read_on()
                    if self.revision > before:
                        for editor in self.editors:
                            editor.wake.set()
                failing = False
            except Exception as exc:  # the store away: the editors' own calls say so; try again
                if not failing:
                    log.warning(
                        "document %r: cannot follow its log (trying again every %s s): %s", self.id, FOLLOW_RETRY, exc
                    )
                failing = True
                await asyncio.sleep(FOLLOW_RETRY)

    @property
    def editors(self) -> set[Editor]:
        """Its editors on this server."""
        return self.here.editors

    @property
    def revision(self) -> int:
        return self.sequencer.revision

    def events_after(self, revision: int, limit: int) -> list[bytes]:
        """Up to ``limit`` edit events after ``revision``, serialized, one a revision (:class:`TrimmedHistory` if
        they are no longer kept). Serialized once when committed: every editor is sent the same bytes."""
        first = self.sequencer.first_kept
        self.sequencer.since(revision)  # raises when trimmed
        return self.events[revision - first : revision - first + limit]

    async def commit(self, user: str, client_id: str, client_seq: int, base: int, edits: list[Edit]) -> int:
        """Transform a change onto the current revision and commit it; returns the revisions it made (0: a re-send).

        A commit that has begun runs to its end (the editors woken, a snapshot written) even when the author's
        stream ends meanwhile and its caller is cancelled.

        Raises:
            InvalidEdit, TrimmedHistory: from ``Sequencer.rebase``.
        """
        return await asyncio.shield(self._commit(user, client_id, client_seq, base, edits))

    async def _commit(self, user: str, client_id: str, client_seq: int, base: int, edits: list[Edit]) -> int:
        async with self.lock:
            await self._read_back(base)
            while True:
                if self.sequencer.is_duplicate(client_id, client_seq):
                    return 0
                op = self.sequencer.rebase(base, edits)
                now = time.time()
                events = [
                    pb.CollaborationEvent(
                        document_id=self.id,
                        user_id=user,
                        revision=c.revision,
                        timestamp=timestamp(now),
                        edit=pb.TextEdit(
                            position=c.edit.position, delete_count=c.edit.delete_count, insert_text=c.edit.insert_text
                        ),
                        client_id=client_id,
                        client_seq=client_seq,
                        parts_after=c.parts_after,
                    )
                    for c in _pieces(self.sequencer, op, client_id, client_seq)
                ]
                records = [NewRecord(key=user, kind="edit", payload=e.SerializeToString()) for e in events]
                try:
                    await self.log.append(self.stream, records, if_last_id=self.revision)
                except ConditionFailedError:
                    await self._read_on()  # another writer committed first: transform again
                    continue
                self.sequencer.record(_committed(e) for e in events)
                self.events.extend(r.payload for r in records)
                break
            for editor in self.editors:
                editor.wake.set()
            if self.revision - self.snapshot_revision >= self.settings.snapshot_every:
                await self._snapshot()  # after the wake-ups: the editors are sent the edit meanwhile
        return len(events)

    async def _snapshot(self) -> None:
        """Save the text at this revision, then trim what the snapshot makes unnecessary beyond the kept edits."""
        seq = self.sequencer
        saved = {"revision": seq.revision, "text": seq.text, "last_seq": seq.last_seq}
        await self.log.append(self.snapshots, [NewRecord(key="", kind="snapshot", payload=json.dumps(saved).encode())])
        await self.log.trim(self.snapshots, keep_last=2)
        self.snapshot_revision = seq.revision
        keep = self.settings.kept_revisions
        before = seq.first_kept
        seq.trim(keep)
        del self.events[: seq.first_kept - before]
        await self.log.trim(self.stream, keep_last=keep)


def _pieces(seq: Sequencer, op: Operation, client_id: str, client_seq: int) -> list[Committed]:
    """The revisions ``op`` would make, without taking them in (the log append may fail)."""
    pieces = op.edits() or [Edit(0, 0, "")]
    return [
        Committed(seq.revision + 1 + n, edit, client_id, client_seq, len(pieces) - 1 - n)
        for n, edit in enumerate(pieces)
    ]


def _committed(event: pb.CollaborationEvent) -> Committed:
    edit = Edit(event.edit.position, event.edit.delete_count, event.edit.insert_text)
    return Committed(event.revision, edit, event.client_id, event.client_seq, event.parts_after)


class Documents:
    """The documents open on this server, by id."""

    def __init__(
        self,
        log: LogStore,
        settings: DocumentSettings,
        follow_until: asyncio.Event | None = None,
        presence: Presence | None = None,
        signals: Signals | None = None,
    ) -> None:
        """``follow_until``: each open document follows its log (``Document.follow``) and watches for the editors
        of replicas that died until it is set; None on a backend no one else writes to. ``presence``,
        ``signals``: the backend's (in this process when not given)."""
        self.log = log
        self.settings = settings
        self.presence = presence or LocalPresence()
        self.signals = signals or LocalSignals()
        self._follow_until = follow_until
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._open: dict[str, Document] = {}
        self._opening = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()

    async def get(self, document_id: str) -> Document:
        """The document, opened (read from its log) if it is not open yet."""
        async with self._opening:
            document = self._open.get(document_id)
            if document is None:
                document = Document(document_id, self.log, self.settings, self.presence, self.signals)
                await document.open()
                self._open[document_id] = document
                document.here.start(watch_departures=self._follow_until is not None)
                if self._follow_until is not None:
                    self._followers[document_id] = asyncio.create_task(document.follow(self._follow_until))
            return document

    async def left(self, document: Document, editor: Editor) -> None:
        """``editor`` is gone: the others are told; the document is closed when it was the last (once a commit
        or a read in progress has ended)."""
        await document.here.leave(editor)
        if document.editors:
            return
        if not document.lock.locked():
            self._close(document)
            return
        closing = asyncio.ensure_future(self._close_when_idle(document))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close_when_idle(self, document: Document) -> None:
        async with document.lock:
            pass
        self._close(document)

    def _close(self, document: Document) -> None:
        if not document.editors and self._open.get(document.id) is document:
            del self._open[document.id]
            document.here.stop()
            follower = self._followers.pop(document.id, None)
            if follower is not None:
                follower.cancel()

    def wake_all(self) -> None:
        for document in self._open.values():
            for editor in document.editors:
                editor.wake.set()
