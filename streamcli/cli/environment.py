"""``Environment``: what a command needs from the outside world.

It carries the streams, the environment variables, whether each stream is a
terminal, the global options and the rich consoles (created on first use, so
commands that print nothing never import rich). Commands ask it, never ``os`` or
``sys``, so tests build their own ``Environment`` (string buffers, an ``environ``
of their choosing, a stream that counts as a terminal) and pass it to ``main``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, TypeVar

from streamcli.client.settings import ConnectionSettings
from streamcli.terminal_text import visible

if TYPE_CHECKING:
    import asyncio

    import typer
    from rich.console import Console

    from streamcli.client.connection import Connection
    from streamcli.errors import StreamcliError

T = TypeVar("T")


@dataclasses.dataclass
class Environment:
    """Streams, environment variables, terminal flags, global options and consoles for one invocation.

    The ``*_tty`` flags say whether a stream counts as a terminal; ``None`` (the default) asks the
    stream (``isatty()``). The global options' own variables (``STREAMCLI_ADDRESS``...) are read by
    the option parser from the process environment, not from ``environ``.
    """

    stdin: IO[str] = dataclasses.field(default_factory=lambda: sys.stdin)
    stdout: IO[str] = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = dataclasses.field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)
    stdin_tty: bool | None = None
    stdout_tty: bool | None = None
    stderr_tty: bool | None = None
    connection: ConnectionSettings = dataclasses.field(default_factory=ConnectionSettings)
    json: bool = False  # machine output: one JSON object per line on stdout
    traceback: bool = False  # show tracebacks for expected failures too
    _console: Console | None = None
    _err_console: Console | None = None

    @property
    def no_color(self) -> bool:
        """No colour anywhere: ``NO_COLOR`` is set (https://no-color.org)."""
        return "NO_COLOR" in self.environ

    @property
    def stdin_isatty(self) -> bool:
        return self.stdin.isatty() if self.stdin_tty is None else self.stdin_tty

    @property
    def stdout_isatty(self) -> bool:
        return self.stdout.isatty() if self.stdout_tty is None else self.stdout_tty

    @property
    def stderr_isatty(self) -> bool:
        return self.stderr.isatty() if self.stderr_tty is None else self.stderr_tty

    def _make_console(self, file: IO[str], isatty: bool, forced: bool | None) -> Console:
        from rich.console import Console

        # rich reads TERM, COLUMNS and the like from `environ` too; a terminal flag set by the caller
        # is passed on, so that rich draws for a terminal exactly when the command thinks it has one.
        return Console(
            file=file,
            no_color=self.no_color or not isatty,
            force_terminal=forced,
            highlight=False,
            soft_wrap=True,
            _environ=self.environ,
        )

    @property
    def progress_console(self) -> Console | None:
        """The console progress bars are drawn on: stderr's when it is a terminal, else none."""
        return self.err_console if self.stderr_isatty else None

    @property
    def console(self) -> Console:
        """Rich console on stdout, for results."""
        if self._console is None:
            self._console = self._make_console(self.stdout, self.stdout_isatty, self.stdout_tty)
        return self._console

    @property
    def err_console(self) -> Console:
        """Rich console on stderr, for progress and diagnostics."""
        if self._err_console is None:
            self._err_console = self._make_console(self.stderr, self.stderr_isatty, self.stderr_tty)
        return self._err_console

    def run(
        self,
        core: Callable[[Connection], Awaitable[T]],
        *,
        cut_short: Callable[[StreamcliError], StreamcliError | None] | None = None,
    ) -> T:
        """Open a connection with the global options and run ``core`` on it to completion.

        Args:
            core: the command's work.
            cut_short: asked, when Ctrl-C or a server gone for good (retries used up) ends the work
                early, for the error that also says what was done by then (None: the error as it is).
        """
        import asyncio

        from streamcli.client.connection import connect
        from streamcli.errors import Interrupted, UnavailableError

        async def main() -> T:
            async with connect(self.connection) as conn:
                return await core(conn)

        try:
            try:
                return asyncio.run(main())
            except KeyboardInterrupt:
                # Raised here, where typer does not swallow it, so the boundary can say so.
                raise Interrupted("interrupted") from None
        except (Interrupted, UnavailableError) as exc:
            told = cut_short(exc) if cut_short is not None else None
            if told is None:
                raise
            raise told from exc

    @contextlib.contextmanager
    def ctrl_c_ends(self, stop: asyncio.Event) -> Iterator[None]:
        """Within the block (inside ``run``), Ctrl-C sets ``stop`` instead of interrupting the command.

        For a command that runs until the user says enough (``metrics sample``) and then still has
        work to finish; anywhere else Ctrl-C interrupts (``run``), exit 130.
        """
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        handled = True
        try:
            loop.add_signal_handler(signal.SIGINT, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (in-process tests), or no signals
            handled = False
        try:
            yield
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGINT)

    def emit_json(self, record: dict[str, Any]) -> None:
        """Write one NDJSON line to stdout."""
        from streamcli.client.jsontext import ENCODER  # json: only for --json output

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
