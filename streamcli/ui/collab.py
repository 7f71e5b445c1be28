"""The ``streamcli collab DOC`` editor: a full-screen prompt-toolkit view over ``DocumentSession``.

What the user types is diffed against the text shown before (one edit: the span between the common start
and the common end) and handed to the session, which sends it; a change by others replaces the text with
the local cursor moved through that change, so it stays on the character it was on. Other editors'
cursors are drawn in the text (reverse video), their names and the connection state in the status bar.
The session (``client/collab.py``) owns the protocol, rejoins and re-sends; this module only renders.
"""

from __future__ import annotations

import asyncio
import contextlib

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.layout.processors import Processor, Transformation, TransformationInput
from prompt_toolkit.layout.utils import explode_text_fragments
from prompt_toolkit.output import Output

from streamcli.client.collab import DocumentSession, Participant, RemoteCursor, SessionHandlers
from streamcli.client.connection import Connection
from streamcli.client.retry import RetryPolicy
from streamcli.ot import Edit, Operation
from streamcli.terminal_text import visible

#: Seconds a pending change may take to be acknowledged after Ctrl-Q before the editor closes anyway.
LEAVE_WAIT = 5.0


def typed_edit(before: str, after: str) -> Edit:
    """The one edit that turns ``before`` into ``after``: the span between their common start and common end."""
    start = 0
    limit = min(len(before), len(after))
    while start < limit and before[start] == after[start]:
        start += 1
    end = 0
    while end < limit - start and before[len(before) - 1 - end] == after[len(after) - 1 - end]:
        end += 1
    return Edit(start, len(before) - start - end, after[start : len(after) - end])


class _Cursors(Processor):
    """Draws the other editors' cursors in the text."""

    def __init__(self, editor: CollabEditor) -> None:
        self.editor = editor

    def apply_transformation(self, ti: TransformationInput) -> Transformation:
        columns = []
        for cursor in self.editor.cursors.values():
            if cursor.position <= len(ti.document.text):
                row, column = ti.document.translate_index_to_position(cursor.position)
                if row == ti.lineno:
                    columns.append(column)
        if not columns:
            return Transformation(ti.fragments)
        fragments: StyleAndTextTuples = list(explode_text_fragments(ti.fragments))
        for column in columns:
            if column >= len(fragments):
                fragments.append(("", " "))  # a cursor at the end of the line
            if column < len(fragments):
                style, text = fragments[column][0], fragments[column][1]
                fragments[column] = (f"{style} reverse", text)
        return Transformation(fragments)


class CollabEditor:
    """The editor of one document; ``run`` until Ctrl-Q."""

    def __init__(
        self,
        conn: Connection,
        document_id: str,
        user: str,
        retry: RetryPolicy,
        *,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.document_id = document_id
        self.state = "connecting"
        self.cursors: dict[str, RemoteCursor] = {}
        self.present: dict[str, str] = {}  # the other editors on the document: client id -> user
        self.session = DocumentSession(
            conn,
            document_id,
            user,
            retry=retry,
            handlers=SessionHandlers(
                remote=self._remote,
                reset=self._reset,
                cursor=self._cursor,
                presence=self._presence,
                state=self._state,
                cursor_at=lambda: self.buffer.cursor_position,
            ),
        )
        self._shown = ""  # the text as the session has it, last time the buffer agreed with it
        self._updating = False
        self.buffer = Buffer(
            multiline=True,
            read_only=Condition(lambda: not self.session.joined.is_set()),
            on_text_changed=self._edited,
            on_cursor_position_changed=self._moved,
        )
        keys = KeyBindings()

        @keys.add("c-q")
        def _leave(event: KeyPressEvent) -> None:
            event.app.exit()

        body = Window(BufferControl(self.buffer, input_processors=[_Cursors(self)]), wrap_lines=True)
        status = Window(FormattedTextControl(self._status), height=1, style="reverse")
        self.app: Application[None] = Application(
            layout=Layout(HSplit([body, status]), focused_element=body),
            key_bindings=keys,
            full_screen=True,
            input=input,
            output=output,
        )

    async def run(self) -> None:
        async def edit(session: DocumentSession) -> None:
            await self.app.run_async()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.settled.wait(), LEAVE_WAIT)  # what was typed last goes out

        await self.session.run(edit)

    def _status(self) -> StyleAndTextTuples:
        others = sorted({visible(user) for user in self.present.values()})
        parts = [
            f" {visible(self.document_id)}",
            f"rev {self.session.replica.revision}",
            self.state,
            ("with " + ", ".join(others)) if others else "alone",
            "Ctrl-Q leaves",
        ]
        return [("", "  |  ".join(parts))]

    def _show(self, text: str, cursor: int) -> None:
        self._updating = True
        try:
            self.buffer.set_document(Document(text, min(cursor, len(text))), bypass_readonly=True)
        finally:
            self._updating = False
        self._shown = text
        self.app.invalidate()

    def _edited(self, _: Buffer) -> None:
        if self._updating:
            return
        edit = typed_edit(self._shown, self.buffer.text)
        if edit.is_noop:
            return
        op = Operation.from_edit(len(self._shown), edit)
        self._shown = self.buffer.text
        self._move_cursors(op)
        self.session.change(op)

    def _moved(self, _: Buffer) -> None:
        if not self._updating:
            self.session.cursor_moved(self.buffer.cursor_position)

    def _remote(self, op: Operation) -> None:
        self._move_cursors(op)
        self._show(self.session.replica.text, op.transform_position(self.buffer.cursor_position))

    def _reset(self, text: str) -> None:
        self.cursors.clear()
        self._show(text, self.buffer.cursor_position)
        self.session.cursor_moved(self.buffer.cursor_position)

    def _cursor(self, cursor: RemoteCursor) -> None:
        self.cursors[cursor.client_id] = cursor
        self.present.setdefault(cursor.client_id, cursor.user_id)
        self.app.invalidate()

    def _presence(self, participant: Participant) -> None:
        if participant.present:
            self.present[participant.client_id] = participant.user_id
        else:
            self.present.pop(participant.client_id, None)
            self.cursors.pop(participant.client_id, None)
        self.app.invalidate()

    def _state(self, state: str) -> None:
        self.state = state
        if state != "connected":  # who is here is told again on the rejoin
            self.present.clear()
            self.cursors.clear()
        self.app.invalidate()

    def _move_cursors(self, op: Operation) -> None:
        for key, cursor in self.cursors.items():
            self.cursors[key] = RemoteCursor(cursor.user_id, cursor.client_id, op.transform_position(cursor.position))
