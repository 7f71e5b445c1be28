"""The chat REPL's controller: rooms, commands, file sharing and reconnects, reported to a view as typed events.

``ChatSession`` takes what the user entered (``handle``) and the draft being
typed (``typing``), runs one ``ChatClient`` for the room it is in, and reports
everything a view shows through one callback, as the frozen values of
``ChatEvent``: messages as they arrive, presence lists, notices (the server's,
and its own for usage errors and failed transfers), typing indicators, the
connection state, and the progress of ``/send`` and ``/get``. It never prints.

Usage::

    async with ChatSession(conn, "alice", "dev", report=view.show) as session:  # joins dev
        while await session.handle(await read_a_line()):
            pass
    # left the room, and closed the connection it opened to rejoin, if it did
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import shlex
import time
from collections import deque
from collections.abc import Callable

import grpc

from streamcli.client.chat import ChatClient, ChatHandlers, ChatState
from streamcli.client.chat_records import ChatMessage, ChatNotice, ChatPresence
from streamcli.client.connection import Connection, connect
from streamcli.client.retry import RetryPolicy
from streamcli.errors import StreamcliError

#: The commands ``handle`` understands: name -> (its arguments, what it does) (``/help`` lists them).
COMMANDS = {
    "/join": ("ROOM", "leave this room and join another"),
    "/leave": ("", "leave the room (stay in streamcli)"),
    "/who": ("", "who is in the room"),
    "/me": ("ACTION", "say what you are doing"),
    "/send": ("PATH", "upload a file and share it"),
    "/get": ("ID [PATH] [--force]", "download a shared file (--force: replace an existing file)"),
    "/history": ("[N]", "show the last N messages again (default 20)"),
    "/quit": ("", "leave and exit (also Ctrl-D)"),
    "/help": ("", "this list"),
}
#: How often the client tells the room the user is typing, at most (seconds).
TYPING_EVERY = 2.0
#: Messages kept for ``/history``, and how many it shows without a count.
HISTORY_KEPT, HISTORY_SHOWN = 1000, 20
#: How long leaving waits for the room to see the goodbye (seconds).
LEAVE_WAIT = 5.0
#: Files that ``/send`` shares as IMAGE messages; others are FILE messages.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
#: Told when there is no room to talk to.
NOT_IN_A_ROOM = "join a room first: /join ROOM"


@dataclasses.dataclass(frozen=True, slots=True)
class Typing:
    """``user`` is typing in the room (live only; a view shows it for a few seconds)."""

    user: str


@dataclasses.dataclass(frozen=True, slots=True)
class StateChanged:
    """Where the session stands now; ``detail`` is the status code while reconnecting."""

    state: ChatState
    detail: str = ""

    def text(self) -> str:
        """For a status line: ``connected``, ``reconnecting (UNAVAILABLE)``, ``disconnected``..."""
        return f"reconnecting ({self.detail})" if self.state == ChatState.RECONNECTING else self.state.value


@dataclasses.dataclass(frozen=True, slots=True)
class RoomLost:
    """The room could not be joined, or rejoined within the retries; the session is in no room now."""

    room: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Uploading:
    """``/send`` started uploading the file called ``name``; the room's FILE message follows when it is stored."""

    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Downloaded:
    """``/get`` wrote ``size`` bytes to ``path``, verified against the stored SHA-256."""

    path: str
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class Replay:
    """``/history``: messages already reported, to show again (oldest first)."""

    messages: tuple[ChatMessage, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Help:
    """``/help``: each command with its arguments (``/get ID [PATH]``), and what it does."""

    commands: tuple[tuple[str, str], ...]


#: Everything a ChatSession reports to its view.
ChatEvent = (
    ChatMessage | ChatPresence | ChatNotice | Typing | StateChanged | RoomLost | Uploading | Downloaded | Replay | Help
)


class ChatSession:
    """One user's chat: one room at a time, entered lines acted upon, what happens reported as ``ChatEvent``.

    Args:
        conn: the connection to chat over (replaced by a fresh one when a room is joined after it failed).
        user: the name to chat as.
        room: the room to join on entering ``async with``; None for none.
        report: called on the event loop with each event, in order.
        backlog: recent messages to get on joining (0: none; None: the server's default).
        allow_duplicate: join even if the user is in the room in another session (every join).
        retry: how each room's client reconnects (None: its default).
    """

    def __init__(
        self,
        conn: Connection,
        user: str,
        room: str | None,
        *,
        report: Callable[[ChatEvent], None],
        backlog: int | None = None,
        allow_duplicate: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.conn = conn
        self.user = user
        self.room = room  # the room joined (or being joined); None when in none
        self.report = report
        self.backlog = backlog
        self.allow_duplicate = allow_duplicate
        self.retry = retry
        self.status = StateChanged(ChatState.DISCONNECTED)
        self.seen: deque[ChatMessage] = deque(maxlen=HISTORY_KEPT)  # for /history
        self._client: ChatClient | None = None
        self._runner: asyncio.Task[None] | None = None
        self._reconnected = contextlib.AsyncExitStack()  # the connection join() opened, if it did
        self._last_typing_sent = 0.0

    async def __aenter__(self) -> ChatSession:
        if self.room:
            self._join(self.room)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave the room (the room sees it) and close the connection this session opened, if it did."""
        try:
            await self.leave()
        finally:
            await self._reconnected.aclose()

    # --- input ------------------------------------------------------------------------------------

    async def handle(self, text: str) -> bool:
        """Act on one line the user entered: a message (``//`` starts one with a ``/``) or a command.

        Returns:
            False for ``/quit``; True otherwise.
        """
        if not text.strip():
            return True
        if not text.startswith("/") or text.startswith("//"):
            self.say(text[1:] if text.startswith("//") else text)
            return True
        try:
            command, *args = shlex.split(text)
        except ValueError as exc:
            self._usage(str(exc))
            return True
        if command == "/quit":
            return False
        if command == "/help":
            self.report(Help(tuple((f"{name} {usage}".rstrip(), does) for name, (usage, does) in COMMANDS.items())))
        elif command == "/join" and len(args) == 1:
            await self.join(args[0])
        elif command == "/leave":
            await self.leave()
        elif command == "/who":
            self.who()
        elif command == "/me" and args:
            self.say("/me " + text.split(" ", 1)[1])
        elif command == "/history":
            self.history(int(args[0]) if args and args[0].isdigit() else HISTORY_SHOWN)
        elif command == "/send" and len(args) == 1:
            await self.send_file(pathlib.Path(os.path.expanduser(args[0])))
        elif command == "/get" and 1 <= len([a for a in args if a != "--force"]) <= 2:
            force, (file_id, *path) = "--force" in args, [a for a in args if a != "--force"]
            await self.get_file(file_id, pathlib.Path(os.path.expanduser(path[0])) if path else None, force=force)
        else:
            self._usage(f"{command}: see /help")
        return True

    def typing(self, draft: str) -> None:
        """The draft being typed changed: tell the room the user is typing (not for commands; throttled)."""
        now = time.monotonic()
        if self._client and draft and not draft.startswith("/") and now - self._last_typing_sent >= TYPING_EVERY:
            self._last_typing_sent = now
            self._client.send_typing()

    # --- commands ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Send a TEXT message to the room; a refusal is reported as a ChatNotice."""
        if self._client is None:
            self._usage(NOT_IN_A_ROOM)
        else:
            self._client.send_text(text)

    def who(self) -> None:
        """Ask who is in the room; the answer is reported as a ChatPresence."""
        if self._client is None:
            self._usage(NOT_IN_A_ROOM)
        else:
            self._client.ask_who()

    def history(self, count: int) -> None:
        """Report the last ``count`` messages again, as a Replay."""
        self.report(Replay(tuple(list(self.seen)[-count:])))

    async def join(self, room: str) -> None:
        """Leave the room the session is in, if any, and join ``room``."""
        await self.leave()
        await self._fresh_connection()
        self._join(room)

    async def leave(self) -> None:
        """Leave the room once what was sent before is delivered (at most ``LEAVE_WAIT`` s); stay in the session."""
        client, runner = self._client, self._runner
        self._client, self._runner, self.room = None, None, None
        if client is not None and runner is not None:
            client.leave()
            if self.status.state != ChatState.CONNECTED:
                runner.cancel()  # no stream to say goodbye on: do not wait for one
                await asyncio.gather(runner, return_exceptions=True)
            else:
                try:
                    await asyncio.wait_for(runner, LEAVE_WAIT)
                except (TimeoutError, StreamcliError):
                    runner.cancel()
        self._set_state(ChatState.DISCONNECTED)

    async def send_file(self, path: pathlib.Path) -> None:
        """Upload ``path`` (verified, resumable) and share it in the room as a FILE or IMAGE message."""
        from streamcli.client.progress import NullProgress
        from streamcli.client.transfer import upload_path

        if self._client is None:
            self._usage(NOT_IN_A_ROOM)
            return
        self.report(Uploading(path.name))
        try:
            result = await upload_path(self.conn, path, NullProgress())
        except StreamcliError as exc:
            self.report(ChatNotice(code="UPLOAD", message=str(exc)))
            return
        if self._client is None:  # the room was lost while the file travelled
            unshared = f"{path.name} is stored as {result.file_id} but not shared: {NOT_IN_A_ROOM}"
            self.report(ChatNotice(code="UPLOAD", message=unshared))
            return
        self._client.send_file(result.file_id, path.name, image=path.suffix.lower() in IMAGE_SUFFIXES)

    async def get_file(self, file_id: str, target: pathlib.Path | None, *, force: bool = False) -> None:
        """Download a shared file to ``target`` (None: its own name, here), reported as Downloaded; ``force``
        replaces a file there."""
        from streamcli.client.progress import NullProgress
        from streamcli.client.transfer import download_file

        try:
            result = await download_file(self.conn, file_id, target, NullProgress(), force=force)
        except StreamcliError as exc:
            self.report(ChatNotice(code="DOWNLOAD", message=str(exc)))
            return
        self.report(Downloaded(result.path, result.size))

    # --- the room's client ----------------------------------------------------------------------------

    def _join(self, room: str) -> None:
        handlers = ChatHandlers(
            message=self._on_message,
            typing=lambda user: self.report(Typing(user)),
            presence=self.report,
            notice=self.report,
            state=self._set_state,
        )
        self.room = room
        self._client = ChatClient(
            self.conn, room, self.user, handlers, backlog=self.backlog, allow_duplicate=self.allow_duplicate,
            retry=self.retry,
        )  # fmt: skip
        self._runner = asyncio.create_task(self._run_client(self._client))

    async def _run_client(self, client: ChatClient) -> None:
        try:
            await client.run()
        except StreamcliError as exc:
            self.report(RoomLost(client.room, str(exc)))
            self._set_state(ChatState.DISCONNECTED)
            if self._client is client:
                self._client = None
                self.room = None

    async def _fresh_connection(self) -> None:
        """Open a new channel if the current one is not connected.

        A channel that lost its server backs off between connection attempts for ever longer; a room
        joined on it could fail at once with the old error although the server is back.
        """
        if self.conn.channel.get_state() == grpc.ChannelConnectivity.READY:
            return
        previous, self._reconnected = self._reconnected, contextlib.AsyncExitStack()
        self.conn = await self._reconnected.enter_async_context(connect(self.conn.requested))
        await previous.aclose()  # no client uses it any more (the room was left first)

    def _on_message(self, message: ChatMessage) -> None:
        self.seen.append(message)
        self.report(message)

    def _set_state(self, state: ChatState, detail: str = "") -> None:
        self.status = StateChanged(state, detail)
        self.report(self.status)

    def _usage(self, message: str) -> None:
        self.report(ChatNotice(code="USAGE", message=message))
