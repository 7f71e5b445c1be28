"""Operational transformation of plain text: the pure core under Collaborate, used by the server and the client.

No I/O. Positions and lengths are Unicode code points (Python ``str`` indices), as in the contract's
``TextEdit``: an emoji, a CJK character or a combining accent is one position each.

An :class:`Operation` walks a whole document from start to end as components, as in ot.js and ShareDB's
text type: ``Retain(n)`` keeps n code points, ``Delete(n)`` removes n, ``Insert(text)`` adds text. Its
``base_length`` is the length of the document it applies to, ``target_length`` that of the result. The wire
carries :class:`Edit` (one span replaced); :meth:`Operation.from_edit` and :meth:`Operation.edits` convert.

With one server ordering every edit (Jupiter, Wave), only TP1 is needed::

    apply(apply(doc, a), b2) == apply(apply(doc, b), a2)   where  (a2, b2) = transform(a, b)

``transform(a, b)`` breaks ties (two insertions at one position) by putting ``a``'s text first: the
server passes the edit committed first as ``a``, and so must a client transforming its pending edits
against what the server broadcast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator


class InvalidEdit(ValueError):
    """An edit that does not fit the document it is applied to (a span outside it, lengths that disagree)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Retain:
    """Keep ``count`` code points."""

    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``count`` code points."""

    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Insert:
    """Add ``text``."""

    text: str


Component = Retain | Delete | Insert


@dataclasses.dataclass(frozen=True, slots=True)
class Edit:
    """One span replaced (the wire's TextEdit): ``delete_count`` code points at ``position`` become ``insert_text``."""

    position: int
    delete_count: int
    insert_text: str

    @property
    def is_noop(self) -> bool:
        return self.delete_count == 0 and not self.insert_text

    def apply(self, text: str) -> str:
        """``text`` with this edit made; :class:`InvalidEdit` if the span is not inside it."""
        if self.position < 0 or self.delete_count < 0 or self.position + self.delete_count > len(text):
            raise InvalidEdit(
                f"edit of {self.delete_count} code point(s) at {self.position} is outside a document of {len(text)}"
            )
        return text[: self.position] + self.insert_text + text[self.position + self.delete_count :]


def _normalized(components: Iterable[Component]) -> tuple[Component, ...]:
    """Merge neighbours of one kind, drop empty ones and a trailing retain, put an insertion before a deletion."""
    out: list[Component] = []
    for c in components:
        if isinstance(c, Insert):
            if not c.text:
                continue
            if out and isinstance(out[-1], Delete):
                # Delete then insert and insert then delete are the same edit: keep one form so equal
                # operations compare equal.
                deleted = out.pop()
                if out and isinstance(out[-1], Insert):
                    out[-1] = Insert(out[-1].text + c.text)
                else:
                    out.append(c)
                out.append(deleted)
                continue
            if out and isinstance(out[-1], Insert):
                out[-1] = Insert(out[-1].text + c.text)
                continue
        elif c.count <= 0:
            if c.count < 0:
                raise InvalidEdit(f"negative length in {c}")
            continue
        elif out and type(out[-1]) is type(c):
            last = out[-1]
            assert isinstance(last, Retain | Delete)
            out[-1] = type(c)(last.count + c.count)
            continue
        out.append(c)
    while out and isinstance(out[-1], Retain):
        out.pop()
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Operation:
    """A change of a whole document of ``base_length`` code points; build with :meth:`of`, :meth:`from_edit`."""

    base_length: int
    components: tuple[Component, ...]

    @classmethod
    def of(cls, base_length: int, components: Iterable[Component]) -> Operation:
        """The operation doing ``components`` then keeping the rest of a document of ``base_length``."""
        normal = _normalized(components)
        consumed = sum(c.count for c in normal if not isinstance(c, Insert))
        if consumed > base_length:
            raise InvalidEdit(f"operation spans {consumed} code point(s) of a document of {base_length}")
        return cls(base_length, normal)

    @classmethod
    def identity(cls, base_length: int) -> Operation:
        return cls(base_length, ())

    @classmethod
    def from_edit(cls, base_length: int, edit: Edit) -> Operation:
        """``edit`` as an operation on a document of ``base_length``; :class:`InvalidEdit` if it does not fit."""
        if edit.position < 0 or edit.delete_count < 0 or edit.position + edit.delete_count > base_length:
            raise InvalidEdit(
                f"edit of {edit.delete_count} code point(s) at {edit.position} is outside a document of {base_length}"
            )
        return cls.of(base_length, (Retain(edit.position), Delete(edit.delete_count), Insert(edit.insert_text)))

    @property
    def target_length(self) -> int:
        length = self.base_length
        for c in self.components:
            length += len(c.text) if isinstance(c, Insert) else -c.count if isinstance(c, Delete) else 0
        return length

    @property
    def is_noop(self) -> bool:
        return not self.components

    def _full(self) -> Iterator[Component]:
        """The components, then a retain of what they leave of the document."""
        yield from self.components
        consumed = sum(c.count for c in self.components if not isinstance(c, Insert))
        if self.base_length > consumed:
            yield Retain(self.base_length - consumed)

    def apply(self, text: str) -> str:
        """The document after this operation; :class:`InvalidEdit` if ``text`` is not ``base_length`` long."""
        if len(text) != self.base_length:
            raise InvalidEdit(f"operation on {self.base_length} code point(s) applied to {len(text)}")
        parts: list[str] = []
        at = 0
        for c in self._full():
            if isinstance(c, Retain):
                parts.append(text[at : at + c.count])
                at += c.count
            elif isinstance(c, Delete):
                at += c.count
            else:
                parts.append(c.text)
        return "".join(parts)

    def edits(self) -> list[Edit]:
        """The operation as edits to make one after another (from the end of the document back, so each position holds).

        An operation from one edit gives that edit back (or none for a no-op); a transformed one may give two.
        """
        spans: list[Edit] = []
        at = 0
        pending: Edit | None = None
        for c in self.components:
            if isinstance(c, Retain):
                if pending is not None:
                    spans.append(pending)
                    pending = None
                at += c.count
                continue
            if pending is None:
                pending = Edit(at, 0, "")
            if isinstance(c, Delete):
                pending = Edit(pending.position, pending.delete_count + c.count, pending.insert_text)
                at += c.count
            else:
                pending = Edit(pending.position, pending.delete_count, pending.insert_text + c.text)
        if pending is not None:
            spans.append(pending)
        return spans[::-1]

    def transform_position(self, position: int, *, before_insert: bool = False) -> int:
        """Where ``position`` (a cursor) lands after this operation.

        An insertion at the cursor pushes it right unless ``before_insert``; a deleted span around it pulls it
        to the span's start.
        """
        at = 0  # position in the base document
        shift = 0  # target position minus base position so far
        for c in self.components:
            if at > position or (at == position and (before_insert or not isinstance(c, Insert))):
                break
            if isinstance(c, Retain):
                at += c.count
            elif isinstance(c, Insert):
                shift += len(c.text)
            else:
                removed = min(c.count, position - at)
                shift -= removed
                at += c.count
                if at > position:
                    break
        return max(0, position + shift)


class _Reader:
    """Walks an operation's components, splitting one when the other operation's component is shorter."""

    def __init__(self, op: Operation) -> None:
        self._items = list(op._full())
        self._index = 0
        self._head: Component | None = None

    def peek(self) -> Component | None:
        if self._head is None and self._index < len(self._items):
            self._head = self._items[self._index]
            self._index += 1
        return self._head

    def take(self, count: int | None = None) -> Component:
        """The next component, or its first ``count`` code points."""
        head = self.peek()
        assert head is not None
        if count is None or _length(head) <= count:
            self._head = None
            return head
        if isinstance(head, Insert):
            self._head = Insert(head.text[count:])
            return Insert(head.text[:count])
        self._head = type(head)(head.count - count)
        return type(head)(count)


def _length(c: Component) -> int:
    return len(c.text) if isinstance(c, Insert) else c.count


def transform(a: Operation, b: Operation) -> tuple[Operation, Operation]:
    """``(a2, b2)`` such that ``b2`` applies after ``a``, ``a2`` after ``b``, and both orders give one document.

    Both must apply to the same document. At one position ``a``'s insertion comes first.
    """
    if a.base_length != b.base_length:
        raise InvalidEdit(f"cannot transform operations on {a.base_length} and {b.base_length} code point(s)")
    ra, rb = _Reader(a), _Reader(b)
    a2: list[Component] = []
    b2: list[Component] = []
    while True:
        ca, cb = ra.peek(), rb.peek()
        if ca is None and cb is None:
            break
        if isinstance(ca, Insert):
            ra.take()
            a2.append(ca)
            b2.append(Retain(len(ca.text)))
            continue
        if isinstance(cb, Insert):
            rb.take()
            a2.append(Retain(len(cb.text)))
            b2.append(cb)
            continue
        assert ca is not None and cb is not None  # both consume the same base length
        n = min(_length(ca), _length(cb))
        ca, cb = ra.take(n), rb.take(n)
        if isinstance(ca, Retain) and isinstance(cb, Retain):
            a2.append(ca)
            b2.append(cb)
        elif isinstance(ca, Delete) and isinstance(cb, Retain):
            a2.append(ca)
        elif isinstance(ca, Retain) and isinstance(cb, Delete):
            b2.append(cb)
        # both delete the same span: neither needs to
    return Operation.of(b.target_length, a2), Operation.of(a.target_length, b2)


def transform_edit(a: Edit, b: Edit) -> Edit | None:
    """``transform(a, b)[1]`` for two single edits, as one edit, in constant time; ``None`` when the result is two
    edits (``b`` deletes around the place where ``a`` inserts): transform the operations then.

    The server rebases each typed character through every edit committed since its base revision: the general
    transform walks both operations component by component, which was most of a commit's cost.
    """
    start, deleted, inserted = a.position, a.delete_count, len(a.insert_text)
    end = start + deleted  # a's deleted span is [start, end); its insertion sits at start
    position, stop = b.position, b.position + b.delete_count
    if position < start < stop and stop > end and inserted:
        return None  # a's insertion lands inside what b deletes, with b's deletion going on after a's span
    # b's insertion and the start of its deletion: after a's insertion at one position (a's comes first).
    if position < start:
        new_position = position
    elif position <= end:
        new_position = start + inserted
    else:
        new_position = position + inserted - deleted
    # The end of b's deletion: before a's insertion when it reaches start or falls in a's span.
    if stop <= start:
        new_stop = stop
    elif stop <= end:
        new_stop = start if position < start else start + inserted
    else:
        new_stop = stop + inserted - deleted
    return Edit(new_position, max(0, new_stop - new_position), b.insert_text)


def transform_cursor(edit: Edit, position: int) -> int:
    """``Operation.from_edit(n, edit).transform_position(position)``, in constant time."""
    if position < edit.position:
        return position
    if position <= edit.position + edit.delete_count:
        return edit.position + len(edit.insert_text)
    return position + len(edit.insert_text) - edit.delete_count


def compose(a: Operation, b: Operation) -> Operation:
    """The one operation doing ``a`` then ``b`` (``b`` applies to what ``a`` produces)."""
    if a.target_length != b.base_length:
        raise InvalidEdit(f"cannot compose an operation giving {a.target_length} with one on {b.base_length}")
    ra, rb = _Reader(a), _Reader(b)
    out: list[Component] = []
    while True:
        ca, cb = ra.peek(), rb.peek()
        if ca is None and cb is None:
            break
        if isinstance(ca, Delete):
            out.append(ra.take())
            continue
        if isinstance(cb, Insert):
            out.append(rb.take())
            continue
        assert ca is not None and cb is not None
        n = min(_length(ca), _length(cb))
        ca, cb = ra.take(n), rb.take(n)
        if isinstance(cb, Delete):
            if isinstance(ca, Retain):
                out.append(cb)  # a kept it, b deletes it
            # an insertion of a that b deletes leaves nothing
        else:
            out.append(ca)
    return Operation.of(a.base_length, out)


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """``text`` with each edit made in turn."""
    for edit in edits:
        text = edit.apply(text)
    return text
