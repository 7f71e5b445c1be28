"""The ``streamcli chat`` REPL: prompt-toolkit input with incoming messages printed above it.

``prompt_async`` runs under ``patch_stdout``, so a message that arrives while
the user is typing is printed above the input line without garbling it. The
bottom toolbar shows the connection state and who is typing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import pathlib
import shlex
import time
from collections import deque
from typing import Any

import grpc
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import HTML, FormattedText
from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import print_formatted_text

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.chat import ChatClient, ChatHandlers, ChatState
from streamcli.client.connection import Connection, connect
from streamcli.client.events import invalid_time
from streamcli.client.retry import RetryPolicy
from streamcli.errors import StreamcliError
from streamcli.terminal_text import visible

COMMANDS = {
    "/join": "ROOM      leave this room and join another",
    "/leave": "          leave the room (stay in streamcli)",
    "/who": "          who is in the room",
    "/me": "ACTION    say what you are doing",
    "/send": "PATH      upload a file and share it",
    "/get": "ID [PATH] download a shared file",
    "/history": "[N]       show the last N messages again (default 20)",
    "/quit": "          leave and exit (also Ctrl-D)",
    "/help": "          this list",
}
USER_COLOURS = ["ansicyan", "ansigreen", "ansiyellow", "ansimagenta", "ansiblue", "ansired", "ansibrightcyan"]
#: How often the client tells the room the user is typing, at most (seconds).
TYPING_EVERY = 2.0
#: How long a "typing" indicator stays on the toolbar without a new one (seconds).
TYPING_SHOWN_FOR = 3.0


def user_colour(user: str) -> str:
    """A stable colour per user name."""
    return USER_COLOURS[hashlib.sha256(user.encode()).digest()[0] % len(USER_COLOURS)]


def message_text(message: pb.ChatMessage) -> FormattedText:
    """One message as a formatted line: time, author, content."""
    # What the server sent is shown, never obeyed (a foreign server may send what ours refuses).
    invalid = invalid_time(message.timestamp)
    when = invalid or datetime.datetime.fromtimestamp(message.timestamp.ToNanoseconds() / 1e9).strftime("%H:%M:%S")
    user, content = visible(message.user_id), visible(message.content, multiline=True)
    parts: list[tuple[str, str]] = [("ansibrightblack", f"{when} ")]
    if message.type == pb.CHAT_MESSAGE_TYPE_SYSTEM:
        parts.append(("ansibrightblack italic", f"-- {content}"))
    elif content.startswith("/me "):
        parts.append((user_colour(message.user_id), f"* {user} {content[4:]}"))
    elif message.type in (pb.CHAT_MESSAGE_TYPE_FILE, pb.CHAT_MESSAGE_TYPE_IMAGE):
        parts.append((f"{user_colour(message.user_id)} bold", f"<{user}> "))
        parts.append(("", f"shared {content or 'a file'} "))
        parts.append(("ansibrightblack", f"(/get {visible(message.file_id)})"))
    else:
        parts.append((f"{user_colour(message.user_id)} bold", f"<{user}> "))
        parts.append(("", content))
    return FormattedText(parts)


class SlashCompleter(Completer):
    """Completes slash commands, then paths after /send."""

    def __init__(self) -> None:
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: Any) -> Any:
        text = document.text_before_cursor
        if not text.startswith("/"):
            return
        if " " not in text:
            for command, help_text in COMMANDS.items():
                if command.startswith(text):
                    yield Completion(command, start_position=-len(text), display_meta=help_text.strip())
        elif text.startswith("/send "):
            sub = Document(text[len("/send ") :], cursor_position=len(text) - len("/send "))
            yield from self._paths.get_completions(sub, complete_event)


class ChatRepl:
    """The interactive chat: one prompt, one room at a time."""

    def __init__(
        self,
        conn: Connection,
        user: str,
        room: str | None,
        *,
        backlog: int = 0,
        allow_duplicate: bool = False,
        retry: RetryPolicy | None = None,
        history: History | None = None,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.conn = conn
        self.user = user
        self.room = room
        self.backlog = backlog
        self.allow_duplicate = allow_duplicate  # for every join, /join included
        self.retry = retry  # how each room's client reconnects (None: its default)
        self.client: ChatClient | None = None
        self._reconnected = contextlib.AsyncExitStack()  # the connection _join opened, if it did
        self._runner: asyncio.Task[None] | None = None
        self.state = "disconnected"
        self.typing: dict[str, float] = {}
        self.seen: deque[pb.ChatMessage] = deque(maxlen=1000)
        self._last_typing_sent = 0.0
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        self.session: PromptSession[str] = PromptSession(
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
        self.session.default_buffer.on_text_changed += self._on_text_changed

    # --- display ---------------------------------------------------------------------

    def _print(self, text: FormattedText | str) -> None:
        # Under patch_stdout this lands above the prompt, never inside what the user is typing.
        print_formatted_text(text)

    def _toolbar(self) -> HTML:
        now = time.monotonic()
        typing = sorted(u for u, at in self.typing.items() if now - at < TYPING_SHOWN_FOR)
        where = f"#{self.room}" if self.room else "no room"
        line = f" {where} as <b>{self.user}</b> · {self.state}"
        if typing:
            line += f" · <i>{', '.join(typing)} {'is' if len(typing) == 1 else 'are'} typing…</i>"
        return HTML(line + " · Alt-Enter: new line · /help")

    def _prompt(self) -> str:
        return f"{self.room or '-'}> "

    # --- handlers from the chat client ----------------------------------------------------

    def _on_message(self, message: pb.ChatMessage) -> None:
        self.seen.append(message)
        self.typing.pop(message.user_id, None)
        self._print(message_text(message))

    def _on_typing(self, user: str) -> None:
        self.typing[user] = time.monotonic()
        self.session.app.invalidate()

    def _on_presence(self, presence: pb.ChatPresence) -> None:
        users = ", ".join(visible(user) for user in presence.users)
        self._print(FormattedText([("ansibrightblack", f"-- in #{visible(presence.room_id)}: {users}")]))

    def _on_notice(self, notice: pb.ChatNotice) -> None:
        self._print(FormattedText([("ansired", f"!! {visible(notice.message)} ({visible(notice.code)})")]))

    def _on_state(self, state: ChatState, detail: str) -> None:
        self.state = state.value if state != ChatState.RECONNECTING else f"reconnecting ({detail})"
        self.session.app.invalidate()

    def _on_text_changed(self, _: object) -> None:
        text = self.session.default_buffer.text
        now = time.monotonic()
        if self.client and text and not text.startswith("/") and now - self._last_typing_sent >= TYPING_EVERY:
            self._last_typing_sent = now
            self.client.send_typing()

    # --- rooms ------------------------------------------------------------------------------

    async def _fresh_connection(self) -> None:
        """Open a new channel if the current one is not connected.

        A channel that lost its server backs off between connection attempts for ever longer; a room
        joined on it could fail at once with the old error although the server is back.
        """
        if self.conn.channel.get_state() == grpc.ChannelConnectivity.READY:
            return
        previous, self._reconnected = self._reconnected, contextlib.AsyncExitStack()
        self.conn = await self._reconnected.enter_async_context(connect(self.conn.settings))
        await previous.aclose()  # no client uses it any more (the room was left first)

    def _join(self, room: str) -> None:
        handlers = ChatHandlers(
            message=self._on_message,
            typing=self._on_typing,
            presence=self._on_presence,
            notice=self._on_notice,
            state=self._on_state,
        )
        self.room = room
        self.client = ChatClient(
            self.conn, room, self.user, handlers, backlog=self.backlog, allow_duplicate=self.allow_duplicate,
            retry=self.retry,
        )  # fmt: skip
        self._runner = asyncio.create_task(self._run_client(self.client))

    async def _run_client(self, client: ChatClient) -> None:
        try:
            await client.run()
        except StreamcliError as exc:
            self._print(FormattedText([("ansired", f"!! cannot stay in #{client.room}: {exc}")]))
            self.state = "disconnected"
            if self.client is client:
                self.client = None
                self.room = None

    async def _leave(self) -> None:
        client, runner = self.client, self._runner
        self.client, self._runner, self.room = None, None, None
        if client is not None and runner is not None:
            client.leave()
            if self.state != ChatState.CONNECTED.value:
                runner.cancel()  # no stream to say goodbye on: do not wait for one
                await asyncio.gather(runner, return_exceptions=True)
            else:
                try:
                    await asyncio.wait_for(runner, 5)
                except (TimeoutError, StreamcliError):
                    runner.cancel()
        self.state = "disconnected"

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Prompt until /quit or Ctrl-D; Ctrl-C clears the line."""
        with patch_stdout(raw=True):
            if self.room:
                self._join(self.room)
            try:
                while True:
                    try:
                        text = await self.session.prompt_async(self._prompt)
                    except KeyboardInterrupt:
                        continue
                    except EOFError:
                        break
                    if not await self.handle(text):
                        break
            finally:
                await self._leave()
                await self._reconnected.aclose()

    async def handle(self, text: str) -> bool:
        """Act on one line of input; False means quit."""
        if not text.strip():
            return True
        if not text.startswith("/") or text.startswith("//"):
            return self._say(text[1:] if text.startswith("//") else text)
        try:
            command, *args = shlex.split(text)
        except ValueError as exc:
            self._on_notice(pb.ChatNotice(code="USAGE", message=str(exc)))
            return True
        if command == "/quit":
            return False
        if command == "/help":
            for name, help_text in COMMANDS.items():
                self._print(f"  {name} {help_text}")
        elif command == "/join" and len(args) == 1:
            await self._leave()
            await self._fresh_connection()
            self._join(args[0])
        elif command == "/leave":
            await self._leave()
        elif command == "/who" and self.client:
            self.client.ask_who()
        elif command == "/me" and args:
            self._say("/me " + text.split(" ", 1)[1])
        elif command == "/history":
            count = int(args[0]) if args and args[0].isdigit() else 20
            for message in list(self.seen)[-count:]:
                self._print(message_text(message))
        elif command == "/send" and len(args) == 1:
            await self._send_file(pathlib.Path(os.path.expanduser(args[0])))
        elif command == "/get" and 1 <= len(args) <= 2:
            await self._get_file(args[0], pathlib.Path(os.path.expanduser(args[1])) if len(args) == 2 else None)
        elif command == "/who":
            self._on_notice(pb.ChatNotice(code="USAGE", message="join a room first: /join ROOM"))
        else:
            self._on_notice(pb.ChatNotice(code="USAGE", message=f"{command}: see /help"))
        return True

    def _say(self, text: str) -> bool:
        if self.client is None:
            self._on_notice(pb.ChatNotice(code="USAGE", message="join a room first: /join ROOM"))
        else:
            self.client.send_text(text)
        return True

    async def _send_file(self, path: pathlib.Path) -> None:
        from streamcli.client.progress import NullProgress
        from streamcli.client.transfer import upload_path

        if self.client is None:
            self._on_notice(pb.ChatNotice(code="USAGE", message="join a room first: /join ROOM"))
            return
        self._print(FormattedText([("ansibrightblack", f"-- uploading {path.name}…")]))
        try:
            result = await upload_path(self.conn, path, NullProgress())
        except StreamcliError as exc:
            self._on_notice(pb.ChatNotice(code="UPLOAD", message=str(exc)))
            return
        image = path.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".webp")
        self.client.send_file(result.file_id, path.name, image=image)

    async def _get_file(self, file_id: str, target: pathlib.Path | None) -> None:
        from streamcli.client.progress import NullProgress
        from streamcli.client.transfer import download_file

        try:
            result = await download_file(self.conn, file_id, target, NullProgress())
        except StreamcliError as exc:
            self._on_notice(pb.ChatNotice(code="DOWNLOAD", message=str(exc)))
            return
        self._print(FormattedText([("ansibrightblack", f"-- saved {result.path} ({result.size} bytes, verified)")]))
