"""``streamcli chat``: the terminal chat client (a REPL, or line mode for scripts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.cli.parsing import UserOption, user_name

if TYPE_CHECKING:
    import pathlib

    from streamcli.client.chat_records import ChatMessage
    from streamcli.client.connection import Connection


def chat(
    ctx: typer.Context,
    room: Annotated[str, typer.Option("--room", "-r", help="Room to join (letters, digits, - _ .).")] = "general",
    user: UserOption = None,
    backlog: Annotated[
        int | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Recent messages to show on joining (0: none); without it, the server's default "
            "(serve --chat-backlog).",
        ),
    ] = None,
    allow_duplicate: Annotated[
        bool, typer.Option("--allow-duplicate", help="Join even if this user is already in the room elsewhere.")
    ] = False,
) -> None:
    """Chat in a room: incoming messages print above your input line.

    Enter sends, Alt-Enter starts a new line, Tab completes /commands; Ctrl-C
    clears the line, Ctrl-D or /quit leaves. Commands: /join ROOM, /leave, /who,
    /me ACTION, /send PATH, /get ID [PATH], /history N, /help. Reconnects by itself
    and shows nothing twice. Input history is kept across sessions.

    When stdin is not a terminal each input line is sent as a message, incoming
    messages print as lines ([cyan]--json[/cyan]: NDJSON), and the end of input leaves.
    Lines go out in order, each once the previous one is stored, paced to the
    server's rate limit and re-sent after a reconnect unless it was stored; blank
    lines are skipped. A line the server refuses (over 16 KiB, control
    characters) is named on stderr, the rest are sent, and the command then exits
    non-zero (5 for such lines).

    Examples:

      streamcli chat --room dev --user alice

      echo 'deploy finished' | streamcli chat --room ops --user ci-bot

      streamcli --json chat --room ops --user logger < /dev/null
    """
    env = get_env(ctx)
    name = user_name(user, env.environ)
    if env.stdin_isatty and env.stdout_isatty and not env.json:
        import pathlib

        import platformdirs

        from streamcli.private_files import private_dir, private_file

        state = private_dir(pathlib.Path(platformdirs.user_state_dir("streamcli")))
        history = private_file(state / "chat_history")  # what was typed: 0600 in a 0700 dir
        env.run(lambda conn: _interactive(conn, name, room, backlog, allow_duplicate, history))
    else:
        env.run(lambda conn: _line_mode(env, conn, name, room, backlog, allow_duplicate))


async def _interactive(
    conn: Connection, user: str, room: str, backlog: int | None, duplicate: bool, history: pathlib.Path
) -> None:
    from streamcli.ui.chat import ChatRepl

    repl = ChatRepl(conn, user, room, backlog=backlog, allow_duplicate=duplicate, history=history)
    await repl.run()


async def _line_mode(
    env: Environment, conn: Connection, user: str, room: str, backlog: int | None, duplicate: bool
) -> None:
    """Each stdin line becomes a message, delivered in order; incoming messages print as lines; EOF leaves.

    Raises:
        StreamcliError: lines were refused (after the rest were sent; the first refusal's status decides
            the class), or the room could not be joined or rejoined (naming the first line not confirmed).
    """
    import asyncio

    from streamcli.client.chat import ChatClient, ChatHandlers
    from streamcli.client.chat_records import ChatNotice
    from streamcli.errors import StreamcliError

    def show(message: ChatMessage) -> None:
        if env.json:
            env.emit_json(message.to_json())
        else:
            env.stdout.write(message_line(message))
            env.stdout.flush()

    def notice(item: ChatNotice) -> None:
        env.error(item.text())

    client = ChatClient(conn, room, user, ChatHandlers(message=show, notice=notice), backlog=backlog,
                        allow_duplicate=duplicate)  # fmt: skip
    runner = asyncio.create_task(client.run())
    refused: list[tuple[int, ChatNotice]] = []
    confirmed = 0  # lines up to this one are stored or refused

    async def pump() -> None:
        nonlocal confirmed
        number = 0
        while line := await asyncio.to_thread(env.stdin.readline):
            number += 1
            if line.strip():
                outcome = await client.post_text(line.removesuffix("\n"))
                if isinstance(outcome, ChatNotice):
                    refused.append((number, outcome))
                    env.notice(f"line {number} not sent: {outcome.text()}")
            confirmed = number
        client.leave()

    feeder = asyncio.create_task(pump())
    try:
        await asyncio.wait({runner, feeder}, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in (runner, feeder):
            if not task.done():
                task.cancel()
    if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
        feeder.result()  # reading stdin failed: that is the error
    try:
        runner.result()
    except StreamcliError as exc:
        raise type(exc)(f"{exc}; lines from {confirmed + 1} on were not sent (or not confirmed)") from exc
    if refused:
        numbers = ", ".join(str(number) for number, _ in refused)
        count = f"{len(refused)} line{'s' if len(refused) > 1 else ''}"
        raise refused[0][1].error(f"{count} not sent: {numbers} (the others were)")  # the first refusal's status


def message_line(message: ChatMessage) -> str:
    """A message as line mode prints it: time, author, content; one line, whatever the server sent."""
    from streamcli.terminal_text import visible

    author = "--" if message.user_id == "system" else f"<{visible(message.user_id)}>"
    return f"{message.timestamp} {author} {visible(message.content)}\n"


def register(app: typer.Typer) -> None:
    """Add ``chat`` to the tree."""
    app.command()(chat)
