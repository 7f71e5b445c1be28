"""``Environment``: what a command needs from the outside world.

It carries the streams, the global options and the rich consoles (created on
first use, so commands that print nothing never import rich). Tests build their
own ``Environment`` with string buffers and pass it to ``main``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, Any, TypeVar

from streamcli.client.jsontext import ENCODER
from streamcli.client.settings import ConnectionSettings
from streamcli.terminal_text import visible

if TYPE_CHECKING:
    import typer
    from rich.console import Console

    from streamcli.client.connection import Connection

T = TypeVar("T")


@dataclasses.dataclass
class Environment:
    """Streams, global options and consoles for one invocation."""

    stdin: IO[str] = dataclasses.field(default_factory=lambda: sys.stdin)
    stdout: IO[str] = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = dataclasses.field(default_factory=lambda: sys.stderr)
    connection: ConnectionSettings = dataclasses.field(default_factory=ConnectionSettings)
    json: bool = False  # machine output: one JSON object per line on stdout
    traceback: bool = False  # show tracebacks for expected failures too
    no_color: bool = dataclasses.field(default_factory=lambda: "NO_COLOR" in os.environ)  # https://no-color.org
    _console: Console | None = None
    _err_console: Console | None = None

    @property
    def stdout_isatty(self) -> bool:
        return self.stdout.isatty()

    @property
    def stderr_isatty(self) -> bool:
        return self.stderr.isatty()

    def _make_console(self, file: IO[str]) -> Console:
        from rich.console import Console

        no_color = self.no_color or not file.isatty()
        return Console(file=file, no_color=no_color, highlight=False, soft_wrap=True)

    @property
    def progress_console(self) -> Console | None:
        """The console progress bars are drawn on: stderr's when it is a terminal, else none."""
        return self.err_console if self.stderr_isatty else None

    @property
    def console(self) -> Console:
        """Rich console on stdout, for results."""
        if self._console is None:
            self._console = self._make_console(self.stdout)
        return self._console

    @property
    def err_console(self) -> Console:
        """Rich console on stderr, for progress and diagnostics."""
        if self._err_console is None:
            self._err_console = self._make_console(self.stderr)
        return self._err_console

    def run(self, core: Callable[[Connection], Awaitable[T]]) -> T:
        """Open a connection with the global options and run ``core`` on it to completion."""
        import asyncio

        from streamcli.client.connection import connect
        from streamcli.errors import Interrupted

        async def main() -> T:
            async with connect(self.connection) as conn:
                return await core(conn)

        try:
            return asyncio.run(main())
        except KeyboardInterrupt:
            # Raised here, where typer does not swallow it, so the boundary can say so.
            raise Interrupted("interrupted") from None

    def emit_json(self, record: dict[str, Any]) -> None:
        """Write one NDJSON line to stdout."""
        self.stdout.write(ENCODER.encode(record) + "\n")
        self.stdout.flush()

    def error(self, message: str) -> None:
        """Write one diagnostic line to stderr."""
        self.notice(f"error: {message}")

    def notice(self, message: str) -> None:
        """Write one line about the command's progress to stderr (``streamcli: MESSAGE``).

        Messages quote what servers and files said (names, status details): escaped, so
        that it can neither act on the terminal nor break the line.
        """
        self.stderr.write(f"streamcli: {visible(message)}\n")
        self.stderr.flush()


def get_env(ctx: typer.Context) -> Environment:
    """The invocation's Environment (``main`` passes one; tests may too)."""
    return ctx.ensure_object(Environment)
