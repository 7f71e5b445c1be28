"""The two ends of a shared document, with no I/O: the server's :class:`Sequencer` and an editor's :class:`Replica`.

The protocol (Jupiter, Wave, ot.js): the sequencer alone orders changes. An editor has at most one change
in flight; it is based on the last revision the editor has seen, and the sequencer transforms it against
whatever was committed since, commits it as one revision per edit (a transformed change may be two edits,
or none: then one empty edit, so every change is acknowledged) and broadcasts those revisions to everyone,
its author included. Each committed edit carries its author's client id and change number and how many
edits of the same change follow, so an author knows its own change and when it is whole.

Local edits made while a change is in flight wait, composed into one, and go out when it is acknowledged.
A change re-sent after a reconnect (same client id and number) is committed once: the sequencer remembers
the last number it committed for each client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from streamcli.ot import (
    Edit,
    InvalidEdit,
    Operation,
    compose,
    edit_between,
    transform,
    transform_cursor,
    transform_edit,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Committed:
    """One revision: the edit that made it and who sent it."""

    revision: int
    edit: Edit
    client_id: str
    client_seq: int
    parts_after: int


class TrimmedHistory(Exception):
    """A change based on a revision whose following edits are no longer kept."""


def change_of(base_length: int, edits: Iterable[Edit]) -> Operation:
    """Edits made one after another, from a document of ``base_length``, as one operation."""
    op = Operation.identity(base_length)
    for edit in edits:
        op = compose(op, Operation.from_edit(op.target_length, edit))
    return op


class Sequencer:
    """The authority's copy of one document: its text, its revision and the edits since ``first_kept``."""

    def __init__(self, text: str = "", revision: int = 0, max_length: int | None = None) -> None:
        self.text = text
        self.revision = revision
        self.first_kept = revision  # the history holds the edits making revisions first_kept+1 .. revision
        self.history: list[Committed] = []
        self.max_length = max_length
        self.last_seq: dict[str, int] = {}

    def since(self, revision: int) -> list[Committed]:
        """The edits after ``revision``; :class:`TrimmedHistory` if some are gone."""
        if revision < self.first_kept:
            raise TrimmedHistory(f"revision {revision} is before the kept history (from {self.first_kept})")
        return self.history[revision - self.first_kept :]

    def rebase(self, base_revision: int, edits: Sequence[Edit]) -> Operation:
        """The change ``edits`` (made one after another on revision ``base_revision``) onto the current text.

        :class:`InvalidEdit` for a future revision, a span outside the document or a document over the limit;
        :class:`TrimmedHistory` when the edits since the base are no longer kept.
        """
        if base_revision > self.revision:
            raise InvalidEdit(f"base revision {base_revision} is beyond the document's revision {self.revision}")
        later = self.since(base_revision)
        length = _length_at(self.text, later)
        op = change_of(length, edits)
        single = op.edits()
        if len(single) == 1:  # typing: one edit through each edit since, in constant time while it stays one
            edit = single[0]
            for done, committed in enumerate(later):
                moved = transform_edit(committed.edit, edit)
                if moved is None:
                    op = Operation.from_edit(length, edit)
                    later = later[done:]
                    break
                length += len(committed.edit.insert_text) - committed.edit.delete_count
                edit = moved
            else:
                later = []
                op = Operation.from_edit(length, edit)
        for committed in later:
            theirs = Operation.from_edit(op.base_length, committed.edit)
            _, op = transform(theirs, op)
        if self.max_length is not None and op.target_length > self.max_length > 0:
            raise InvalidEdit(
                f"the document would be {op.target_length} code points, over the limit of {self.max_length}"
            )
        return op

    def cursor(self, base_revision: int, position: int) -> int:
        """A cursor at ``position`` of revision ``base_revision``, moved through the edits since to the current text.

        :class:`InvalidEdit` for a future revision or a position outside that revision's text;
        :class:`TrimmedHistory` when the edits since are no longer kept.
        """
        if base_revision > self.revision:
            raise InvalidEdit(f"base revision {base_revision} is beyond the document's revision {self.revision}")
        later = self.since(base_revision)
        length = _length_at(self.text, later)
        if position > length:
            raise InvalidEdit(f"cursor at {position} is outside a document of {length} code points")
        for committed in later:
            position = transform_cursor(committed.edit, position)
        return position

    def is_duplicate(self, client_id: str, client_seq: int) -> bool:
        """Whether that change was committed already (a re-send after a reconnect)."""
        return bool(client_id) and client_seq > 0 and client_seq <= self.last_seq.get(client_id, 0)

    def commit(self, op: Operation, client_id: str, client_seq: int) -> list[Committed]:
        """Commit a rebased change: one revision per edit (one empty edit for a change that became a no-op)."""
        pieces = op.edits() or [Edit(0, 0, "")]
        out = []
        for n, edit in enumerate(pieces):
            out.append(Committed(self.revision + 1 + n, edit, client_id, client_seq, len(pieces) - 1 - n))
        self.record(out)
        return out

    def record(self, committed: Iterable[Committed]) -> None:
        """Take committed edits (new ones, or read back from a log) into the text and history."""
        for c in committed:
            if c.revision != self.revision + 1:
                raise ValueError(f"revision {c.revision} after {self.revision}")
            self.text = c.edit.apply(self.text)
            self.revision = c.revision
            self.history.append(c)
            if c.client_id:
                self.last_seq[c.client_id] = max(self.last_seq.get(c.client_id, 0), c.client_seq)

    def keep_earlier(self, committed: Sequence[Committed]) -> None:
        """Put the edits that made revisions ``first_kept - len(committed) + 1 .. first_kept`` before the history
        (read back from a log after a snapshot: the text is the snapshot's, the edits before it serve rejoins)."""
        if committed and committed[-1].revision != self.first_kept:
            raise ValueError(f"edits up to revision {committed[-1].revision} before revision {self.first_kept}")
        self.history[:0] = committed
        self.first_kept -= len(committed)

    def trim(self, keep: int) -> None:
        """Keep only the last ``keep`` edits of the history."""
        drop = max(0, len(self.history) - keep)
        if drop:
            del self.history[:drop]
            self.first_kept += drop


def _length_at(text: str, later: Sequence[Committed]) -> int:
    """The length of the document before ``later`` (edits that made ``text``), undoing them by length alone."""
    length = len(text)
    for c in reversed(later):
        length += c.edit.delete_count - len(c.edit.insert_text)
    return length


@dataclasses.dataclass
class Outgoing:
    """A change to send: ``edits`` made one after another on ``base_revision``."""

    client_seq: int
    base_revision: int
    edits: list[Edit]


class Replica:
    """An editor's copy of a document, kept in step with the sequencer's broadcasts.

    ``text`` is what the editor shows (the server's text plus its own changes not yet acknowledged).
    """

    def __init__(self, client_id: str, text: str = "", revision: int = 0, next_seq: int = 1) -> None:
        self.client_id = client_id
        self.text = text
        self.revision = revision
        self.next_seq = next_seq
        self.confirmed = text  # the server's text at ``revision`` (without the changes not acknowledged)
        self.in_flight: Operation | None = None
        self.in_flight_seq = 0
        self.waiting: Operation | None = None

    def reset(self, text: str, revision: int) -> None:
        """Start again from a snapshot (changes not acknowledged are dropped: ``rebase_onto`` keeps them)."""
        self.text = self.confirmed = text
        self.revision = revision
        self.in_flight = None
        self.waiting = None

    def rebase_onto(self, text: str, revision: int, committed_seq: int) -> Operation | None:
        """Start again from a snapshot, keeping the local changes not acknowledged; returns them as one operation
        on the snapshot's text (to make with ``local``, which sends it as a new change), or None.

        Used when the server no longer keeps the edits since the last revision seen, so they cannot be replayed:
        what the snapshot changed since is taken as one edit (the texts' common start and end kept) and the
        changes are transformed over it. ``committed_seq`` is this client's last change the server committed:
        the change in flight may be one of them, and is then in the snapshot already.
        """
        base, rest = self.confirmed, self.pending()
        if self.in_flight is not None and self.in_flight_seq <= committed_seq:
            base, rest = self.in_flight.apply(base), self.waiting
        self.reset(text, revision)
        if rest is None:
            return None
        theirs = Operation.from_edit(len(base), edit_between(base, text))
        _, mine = transform(theirs, rest)
        return None if mine.is_noop else mine

    def pending(self) -> Operation | None:
        """Everything not acknowledged, as one operation on the last revision seen."""
        if self.in_flight is None:
            return self.waiting
        return self.in_flight if self.waiting is None else compose(self.in_flight, self.waiting)

    def local(self, op: Operation) -> Outgoing | None:
        """Apply a local change; returns what to send now (nothing while another change is in flight)."""
        self.text = op.apply(self.text)
        if self.in_flight is not None:
            self.waiting = op if self.waiting is None else compose(self.waiting, op)
            return None
        return self._send(op)

    def _send(self, op: Operation) -> Outgoing:
        self.in_flight = op
        self.in_flight_seq = self.next_seq
        self.next_seq += 1
        return self.outgoing()

    def outgoing(self) -> Outgoing:
        """The change in flight, to send (again, after a reconnect: with the same number)."""
        assert self.in_flight is not None
        return Outgoing(self.in_flight_seq, self.revision, self.in_flight.edits() or [Edit(0, 0, "")])

    def received(self, committed: Committed) -> tuple[Operation | None, Outgoing | None]:
        """Take one broadcast revision; returns the operation it made on ``text`` and what to send next."""
        if committed.revision <= self.revision:
            return None, None  # seen already (a replay overlapping what was delivered)
        if committed.revision != self.revision + 1:
            raise ValueError(f"revision {committed.revision} after {self.revision}: a gap")
        mine = committed.client_id == self.client_id and committed.client_seq == self.in_flight_seq
        self.revision = committed.revision
        if mine and self.in_flight is not None:
            if committed.parts_after == 0:
                self.confirmed = self.in_flight.apply(self.confirmed)  # its parts, made in turn, are this
                self.in_flight = None
                if self.waiting is not None:
                    waiting, self.waiting = self.waiting, None
                    return None, self._send(waiting)
            return None, None
        remote = Operation.from_edit(len(self.text) - _pending_growth(self), committed.edit)
        self.confirmed = committed.edit.apply(self.confirmed)
        if self.in_flight is not None:
            remote, self.in_flight = transform(remote, self.in_flight)
        if self.waiting is not None:
            remote, self.waiting = transform(remote, self.waiting)
        self.text = remote.apply(self.text)
        return remote, None


def _pending_growth(replica: Replica) -> int:
    pending = replica.pending()
    return 0 if pending is None else pending.target_length - pending.base_length
