"""The ``streamcli chat`` REPL: a view over ``ChatSession``, with incoming messages printed above the input.

``prompt_async`` runs under ``patch_stdout``, so a message that arrives while
the user is typing is printed above the input line without garbling it. The
bottom toolbar shows the connection state and who is typing. What the user
enters goes to the session (``client/chat_session.py``), which owns rooms,
commands, transfers and reconnects; this module only renders what it reports.
"""

from __future__ import annotations

import datetime
import hashlib
import pathlib
import time
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import HTML, FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import print_formatted_text

from streamcli.client.chat_records import ChatMessage, ChatNotice, ChatPresence
from streamcli.client.chat_session import (
    COMMANDS,
    ChatEvent,
    ChatSession,
    Downloaded,
    Help,
    Replay,
    RoomLost,
    StateChanged,
    Typing,
    Uploading,
)
from streamcli.client.connection import Connection
from streamcli.client.retry import RetryPolicy
from streamcli.terminal_text import visible

USER_COLOURS = ["ansicyan", "ansigreen", "ansiyellow", "ansimagenta", "ansiblue", "ansired", "ansibrightcyan"]
#: How long a "typing" indicator stays on the toolbar without a new one (seconds).
TYPING_SHOWN_FOR = 3.0
GREY, RED = "ansibrightblack", "ansired"


def user_colour(user: str) -> str:
    """A stable colour per user name."""
    return USER_COLOURS[hashlib.sha256(user.encode()).digest()[0] % len(USER_COLOURS)]


def message_text(message: ChatMessage) -> FormattedText:
    """One message as a formatted line: time, author, content."""
    # What the server sent is shown, never obeyed (a foreign server may send what ours refuses).
    if message.timestamp_ns is None:
        when = message.timestamp  # the invalid time, said as such
    else:
        when = datetime.datetime.fromtimestamp(message.timestamp_ns / 1e9).strftime("%H:%M:%S")
    user, content = visible(message.user_id), visible(message.content, multiline=True)
    parts: list[tuple[str, str]] = [(GREY, f"{when} ")]
    if message.type == "system":
        parts.append((f"{GREY} italic", f"-- {content}"))
    elif content.startswith("/me "):
        parts.append((user_colour(message.user_id), f"* {user} {content[4:]}"))
    elif message.shares_file:
        parts.append((f"{user_colour(message.user_id)} bold", f"<{user}> "))
        parts.append(("", f"shared {content or 'a file'} "))
        parts.append((GREY, f"(/get {visible(message.file_id)})"))
    else:
        parts.append((f"{user_colour(message.user_id)} bold", f"<{user}> "))
        parts.append(("", content))
    return FormattedText(parts)


def event_text(event: ChatEvent) -> list[FormattedText | str]:
    """The lines that show ``event`` above the prompt (none for what only the toolbar shows)."""
    match event:
        case ChatMessage():
            return [message_text(event)]
        case ChatPresence(room_id=room, users=users):
            return [FormattedText([(GREY, f"-- in #{visible(room)}: {', '.join(visible(u) for u in users)}")])]
        case ChatNotice(code=code, message=message):
            return [FormattedText([(RED, f"!! {visible(message)} ({visible(code)})")])]
        case RoomLost(room=room, reason=reason):
            return [FormattedText([(RED, f"!! cannot stay in #{room}: {reason}")])]
        case Uploading(name=name):
            return [FormattedText([(GREY, f"-- uploading {name}…")])]
        case Downloaded(path=path, size=size):
            return [FormattedText([(GREY, f"-- saved {path} ({size} bytes, verified)")])]
        case Replay(messages=messages):
            return [message_text(message) for message in messages]
        case Help(commands=commands):
            width = max(len(usage) for usage, _ in commands)
            return [f"  {usage:<{width}}  {does}" for usage, does in commands]
    return []  # Typing, StateChanged: the toolbar's


class SlashCompleter(Completer):
    """Completes slash commands, then paths after /send."""

    def __init__(self) -> None:
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: Any) -> Any:
        text = document.text_before_cursor
        if not text.startswith("/"):
            return
        if " " not in text:
            for command, (usage, does) in COMMANDS.items():
                if command.startswith(text):
                    yield Completion(command, start_position=-len(text), display_meta=f"{usage} {does}".strip())
        elif text.startswith("/send "):
            sub = Document(text[len("/send ") :], cursor_position=len(text) - len("/send "))
            yield from self._paths.get_completions(sub, complete_event)


class ChatRepl:
    """The interactive chat: one prompt over a ChatSession, which it shows as the session reports."""

    def __init__(
        self,
        conn: Connection,
        user: str,
        room: str | None,
        *,
        backlog: int | None = None,
        allow_duplicate: bool = False,
        retry: RetryPolicy | None = None,
        history: History | pathlib.Path | None = None,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.session = ChatSession(
            conn, user, room, report=self.show, backlog=backlog, allow_duplicate=allow_duplicate, retry=retry
        )
        if isinstance(history, pathlib.Path):  # input history kept across sessions
            history = FileHistory(str(history))
        self.typing: dict[str, float] = {}  # user -> when the room last said they were typing (monotonic)
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        self.prompt_session: PromptSession[str] = PromptSession(
            history=history or InMemoryHistory(),
            completer=SlashCompleter(),
            complete_while_typing=False,
            bottom_toolbar=self._toolbar,
            key_bindings=bindings,
            refresh_interval=0.5,
            # What was typed reappears as the room's copy of the message: do not show it twice.
            erase_when_done=True,
            input=input,
            output=output,
        )
        self.prompt_session.default_buffer.on_text_changed += lambda buffer: self.session.typing(buffer.text)

    @property
    def room(self) -> str | None:
        """The room the session is in (or joining); None when in none."""
        return self.session.room

    @property
    def state(self) -> str:
        """The connection state as the toolbar says it."""
        return self.session.status.text()

    # --- display ---------------------------------------------------------------------

    def show(self, event: ChatEvent) -> None:
        """Show what the session reports: lines above the prompt, or a change of the toolbar."""
        if isinstance(event, ChatMessage):
            self.typing.pop(event.user_id, None)
        elif isinstance(event, Typing):
            self.typing[event.user] = time.monotonic()
        if isinstance(event, Typing | StateChanged):
            self.prompt_session.app.invalidate()
        for line in event_text(event):
            # Under patch_stdout this lands above the prompt, never inside what the user is typing.
            print_formatted_text(line)

    def _toolbar(self) -> HTML:
        now = time.monotonic()
        typing = sorted(u for u, at in self.typing.items() if now - at < TYPING_SHOWN_FOR)
        where = f"#{self.room}" if self.room else "no room"
        line = f" {where} as <b>{self.session.user}</b> · {self.state}"
        if typing:
            line += f" · <i>{', '.join(typing)} {'is' if len(typing) == 1 else 'are'} typing…</i>"
        return HTML(line + " · Alt-Enter: new line · /help")

    def _prompt(self) -> str:
        return f"{self.room or '-'}> "

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Prompt until /quit or Ctrl-D; Ctrl-C clears the line."""
        with patch_stdout(raw=True):
            async with self.session:  # joins its room; leaves it at the end
                while True:
                    try:
                        text = await self.prompt_session.prompt_async(self._prompt)
                    except KeyboardInterrupt:
                        continue
                    except EOFError:
                        break
                    if not await self.session.handle(text):
                        break
