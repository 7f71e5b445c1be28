"""The pure OT core and the two ends of the protocol, property-based: TP1, compose, cursors, convergence.

The simulation runs one :class:`Sequencer` and several :class:`Replica` s over in-memory queues delivered in a
random interleaving (the delays), with random local edits and random reconnects that lose whatever was in
transit; every replica must end with the sequencer's text, which must equal replaying the committed log.
Examples are derandomized, as everywhere in the suite.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from streamcli.collab_sync import Committed, Outgoing, Replica, Sequencer, TrimmedHistory, change_of
from streamcli.ot import (
    Edit,
    InvalidEdit,
    Operation,
    apply_edits,
    compose,
    transform,
    transform_cursor,
    transform_edit,
)

# Code points of every width: ASCII, Latin with a combining accent, CJK, an emoji outside the BMP.
ALPHABET = st.sampled_from(["a", "b", "é", "\u0301", "字", "😀", " ", "\n"])
TEXT = st.text(ALPHABET, max_size=12)
DERANDOMIZED = settings(derandomize=True, database=None, max_examples=300, deadline=None)


@st.composite
def edit_on(draw: st.DrawFn, text: str) -> Edit:
    position = draw(st.integers(0, len(text)))
    delete_count = draw(st.integers(0, len(text) - position))
    return Edit(position, delete_count, draw(TEXT))


@st.composite
def doc_and_ops(draw: st.DrawFn, count: int) -> tuple[str, list[Operation]]:
    doc = draw(TEXT)
    ops = []
    for _ in range(count):
        # a multi-edit operation: a few edits made one after another, composed
        edits, text = [], doc
        for _ in range(draw(st.integers(1, 3))):
            edit = draw(edit_on(text))
            edits.append(edit)
            text = edit.apply(text)
        ops.append(change_of(len(doc), edits))
    return doc, ops


def test_edits_are_code_points() -> None:
    doc = "a😀字e\u0301"
    assert len(doc) == 5
    op = Operation.from_edit(len(doc), Edit(1, 2, "ß"))
    assert op.apply(doc) == "aße\u0301"
    assert op.edits() == [Edit(1, 2, "ß")]


def test_a_deletion_around_a_concurrent_insertion_splits_in_two() -> None:
    doc = "abcdef"
    deletion = Operation.from_edit(6, Edit(1, 4, ""))  # removes "bcde"
    insertion = Operation.from_edit(6, Edit(3, 0, "XY"))  # between c and d
    _, deletion_after = transform(insertion, deletion)
    assert deletion_after.edits() == [Edit(5, 2, ""), Edit(1, 2, "")]  # from the end back: "de", then "bc"
    assert apply_edits(insertion.apply(doc), deletion_after.edits()) == "aXYf"


def test_ties_put_the_first_operation_first() -> None:
    a = Operation.from_edit(2, Edit(1, 0, "A"))
    b = Operation.from_edit(2, Edit(1, 0, "B"))
    a2, b2 = transform(a, b)
    assert b2.apply(a.apply("xy")) == a2.apply(b.apply("xy")) == "xABy"


def test_the_constant_time_edit_transform_agrees_with_the_operations_on_every_small_case() -> None:
    """Every pair of single edits on documents of up to 5 code points: transform_edit gives the operation
    transform's result (or says it splits, exactly when it does); transform_cursor moves cursors as
    transform_position does."""
    splits = 0
    for length in range(6):
        edits = [Edit(p, d, t) for p in range(length + 1) for d in range(length - p + 1) for t in ("", "x", "yz")]
        for a in edits:
            after = length + len(a.insert_text) - a.delete_count
            for b in edits:
                expected = transform(Operation.from_edit(length, a), Operation.from_edit(length, b))[1]
                moved = transform_edit(a, b)
                if moved is None:
                    splits += 1
                    assert len(expected.edits()) == 2, (a, b)
                else:
                    assert Operation.from_edit(after, moved) == expected, (a, b, moved)
            for cursor in range(length + 1):
                assert transform_cursor(a, cursor) == Operation.from_edit(length, a).transform_position(cursor)
    assert splits > 0  # the split case was met


def test_a_rebase_through_a_split_goes_on_with_the_operations() -> None:
    seq = Sequencer("abcdef")
    seq.commit(seq.rebase(0, [Edit(3, 0, "XY")]), "a", 1)  # abcXYdef
    seq.commit(seq.rebase(1, [Edit(0, 1, "")]), "a", 2)  # bcXYdef
    # Made on revision 0: delete "bcde" (around the insertion), then insert "!" at 0 (typed after).
    op = seq.rebase(0, [Edit(1, 4, "!")])
    assert op.apply(seq.text) == "!XYf"


def test_invalid_edits_are_refused() -> None:
    for edit in (Edit(3, 0, "x"), Edit(1, 2, ""), Edit(-1, 0, "")):
        try:
            Operation.from_edit(2, edit)
        except InvalidEdit:
            continue
        raise AssertionError(f"{edit} accepted on a document of 2")


@DERANDOMIZED
@given(doc_and_ops(2))
def test_tp1(case: tuple[str, list[Operation]]) -> None:
    doc, (a, b) = case
    a2, b2 = transform(a, b)
    assert b2.apply(a.apply(doc)) == a2.apply(b.apply(doc))


@DERANDOMIZED
@given(doc_and_ops(1), st.data())
def test_compose_is_one_then_the_other(case: tuple[str, list[Operation]], data: st.DataObject) -> None:
    doc, (a,) = case
    after = a.apply(doc)
    b = Operation.from_edit(len(after), data.draw(edit_on(after)))
    assert compose(a, b).apply(doc) == b.apply(after)


@DERANDOMIZED
@given(doc_and_ops(1))
def test_edits_made_in_turn_are_the_operation(case: tuple[str, list[Operation]]) -> None:
    doc, (op,) = case
    assert apply_edits(doc, op.edits()) == op.apply(doc)
    assert change_of(len(doc), op.edits()) == op


@DERANDOMIZED
@given(doc_and_ops(1), st.data())
def test_a_cursor_moves_as_a_marker_in_the_text_would(case: tuple[str, list[Operation]], data: st.DataObject) -> None:
    doc, (op,) = case
    cursor = data.draw(st.integers(0, len(doc)))
    marker = Operation.from_edit(len(doc), Edit(cursor, 0, "\x00"))  # a character no edit touches
    for before_insert in (True, False):
        # the marker wins a tie (stays before an insertion at the cursor) when it is transform's first operand
        op_after_marker = transform(marker, op)[1] if before_insert else transform(op, marker)[0]
        after = op_after_marker.apply(marker.apply(doc))
        assert op.transform_position(cursor, before_insert=before_insert) == after.index("\x00")


def test_cursors_by_hand() -> None:
    op = Operation.from_edit(6, Edit(2, 2, "XYZ"))  # "abcdef" -> "abXYZef"
    assert [op.transform_position(p) for p in range(7)] == [0, 1, 5, 5, 5, 6, 7]
    assert op.transform_position(2, before_insert=True) == 2


@dataclasses.dataclass
class Editor:
    replica: Replica
    up: list[Outgoing] = dataclasses.field(default_factory=list)  # to the sequencer, in order
    down: list[Committed] = dataclasses.field(default_factory=list)  # to the editor, in order
    connected: bool = True


def _submit(server: Sequencer, editor: Editor, out: Outgoing, broadcast: list[Editor]) -> None:
    if server.is_duplicate(editor.replica.client_id, out.client_seq):
        return
    op = server.rebase(out.base_revision, out.edits)
    for c in server.commit(op, editor.replica.client_id, out.client_seq):
        for e in broadcast:
            if e.connected:
                e.down.append(c)


def _rejoin(server: Sequencer, editor: Editor) -> None:
    """Reconnect with the last revision seen: the edits since, then the change in flight re-sent."""
    editor.connected = True
    editor.down = list(server.since(editor.replica.revision))
    if editor.replica.in_flight is not None:
        editor.up = [editor.replica.outgoing()]


@DERANDOMIZED
@given(st.integers(3, 4), TEXT, st.data())
def test_editors_with_delays_and_reconnects_converge(count: int, start: str, data: st.DataObject) -> None:
    server = Sequencer(start)
    editors = [Editor(Replica(f"c{i}", start)) for i in range(count)]
    for _ in range(data.draw(st.integers(10, 60))):
        editor = data.draw(st.sampled_from(editors))
        action = data.draw(st.sampled_from(["edit", "edit", "send", "deliver", "deliver", "drop"]))
        if action == "edit":
            op = Operation.from_edit(len(editor.replica.text), data.draw(edit_on(editor.replica.text)))
            out = editor.replica.local(op)
            if out is not None and editor.connected:
                editor.up.append(out)
        elif action == "send" and editor.up:
            _submit(server, editor, editor.up.pop(0), editors)
        elif action == "deliver" and editor.down:
            _, out = editor.replica.received(editor.down.pop(0))
            if out is not None:
                editor.up.append(out)
        elif action == "drop":
            editor.connected, editor.up, editor.down = False, [], []
            _rejoin(server, editor)
    # quiesce: everyone connected, everything delivered
    for editor in editors:
        if not editor.connected:
            _rejoin(server, editor)
    while any(e.up or e.down for e in editors):
        for editor in editors:
            while editor.up:
                _submit(server, editor, editor.up.pop(0), editors)
            while editor.down:
                _, out = editor.replica.received(editor.down.pop(0))
                if out is not None:
                    editor.up.append(out)
    replayed = apply_edits(start, [c.edit for c in server.history])
    assert server.text == replayed
    for editor in editors:
        assert editor.replica.in_flight is None and editor.replica.waiting is None
        assert editor.replica.text == server.text
        assert editor.replica.revision == server.revision


def test_a_resent_change_is_committed_once() -> None:
    server = Sequencer("ab")
    replica = Replica("c1", "ab")
    out = replica.local(Operation.from_edit(2, Edit(2, 0, "c")))
    assert out is not None
    server.commit(server.rebase(out.base_revision, out.edits), "c1", out.client_seq)
    assert server.is_duplicate("c1", replica.outgoing().client_seq)
    assert server.text == "abc" and server.revision == 1


def test_history_before_the_trim_is_refused() -> None:
    server = Sequencer("")
    for n in range(5):
        server.commit(server.rebase(n, [Edit(n, 0, "x")]), "c1", n + 1)
    server.trim(2)
    assert [c.revision for c in server.since(3)] == [4, 5]
    try:
        server.rebase(2, [Edit(0, 0, "y")])
    except TrimmedHistory:
        pass
    else:
        raise AssertionError("a change based on trimmed history was rebased")


def test_a_future_base_revision_and_an_oversized_document_are_invalid() -> None:
    server = Sequencer("abc", max_length=4)
    for base, edit in ((1, Edit(0, 0, "x")), (0, Edit(0, 0, "xy")), (0, Edit(4, 0, ""))):
        try:
            server.rebase(base, [edit])
        except InvalidEdit:
            continue
        raise AssertionError(f"{edit} on revision {base} accepted")
