"""Run the CLI in-process, through its real entry point (``streamcli.cli.main.main``) with an injected
``Environment``, as a user would call it from a shell.

- ``cli(address, *args, stdin=...)``: one run to its end; what it printed and its exit code (a ``Run``).
  Help and ``--version`` are printed by typer on ``sys.stdout`` itself: read them with ``capsys``.
- ``acli(...)``: the same, awaited from a test whose own event loop runs the server (``main`` calls
  ``asyncio.run``, which cannot nest: the run goes to a thread).
- ``Background(address, *args)``: a run in a thread of its own whose stdin and stdout are real pipes, like
  a subprocess started with ``stdin=PIPE, stdout=PIPE``: the test writes lines while it runs (a live
  pipe) and reads what it prints as it comes.

A subprocess is still the way to test what only a process has: signals (Ctrl-C), a reader that closes
the pipe (exit 141), start-up (imports, the console script), gRPC's C-core logs (written to fd 2), a
real terminal (tmux), ``streamcli serve`` running (signal handlers, a server killed or restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import IO

from streamcli.cli.environment import Environment
from streamcli.cli.main import main


class Run:
    """What one in-process ``streamcli`` run printed, and its exit code."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def error_lines(self) -> list[str]:
        return self.err.splitlines()


def clean_environ(**overrides: str) -> dict[str, str]:
    """The variables a run sees: the test process's, without ``STREAMCLI_*`` (as for a subprocess), plus
    ``overrides``."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("STREAMCLI_")}
    environ.update(overrides)
    return environ


def stdin_file(content: str | bytes) -> IO[str]:
    """A standard input holding ``content``, as ``< FILE`` gives it: a real descriptor (``fileno``, and
    ``buffer`` for bytes), at its end once it is read."""
    raw = tempfile.TemporaryFile()  # noqa: SIM115 (no name; closed with the wrapper)
    raw.write(content.encode() if isinstance(content, str) else content)
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding="utf-8")


def cli(
    address: str | None,
    *args: str,
    stdin: str | bytes | IO[str] | None = None,
    stdout: io.TextIOBase | None = None,
    environ: Mapping[str, str] | None = None,
    stdin_tty: bool | None = None,
    stdout_tty: bool | None = None,
    stderr_tty: bool | None = None,
) -> Run:
    """Run ``streamcli --address ADDRESS ARGS`` in-process and return what it printed.

    Args:
        address: the global ``--address``; ``None`` leaves it out (``streamcli serve --address ...``).
        stdin: text or bytes to read (see ``stdin_file``), or a stream; default empty.
        stdout: where results go (e.g. a ``TextIOWrapper`` over a ``BytesIO`` for binary output); by
            default a string buffer, returned as ``Run.out``.
        environ: the variables the command sees; default ``clean_environ()``.
        stdin_tty, stdout_tty, stderr_tty: make a stream count as a terminal (or not) for the command.
    """
    out = stdout if stdout is not None else io.StringIO()
    if stdin is None:
        source: IO[str] = io.StringIO()
    elif isinstance(stdin, str | bytes):
        source = stdin_file(stdin)
    else:
        source = stdin
    env = Environment(
        stdin=source,
        stdout=out,  # type: ignore[arg-type]
        stderr=io.StringIO(),
        environ=clean_environ() if environ is None else environ,
        stdin_tty=stdin_tty,
        stdout_tty=stdout_tty,
        stderr_tty=stderr_tty,
    )
    try:
        with _root_logger_kept():
            code = main([*(["--address", address] if address is not None else []), *args], env)
    finally:
        if isinstance(stdin, str | bytes):
            source.close()
    text = out.getvalue() if isinstance(out, io.StringIO) else ""
    return Run(code, text, env.stderr.getvalue())  # type: ignore[attr-defined]


async def acli(address: str, *args: str, stdin: str | bytes | IO[str] | None = None) -> Run:
    """``cli`` from a running event loop (one that serves the server, say): the run goes to a thread."""
    return await asyncio.to_thread(cli, address, *args, stdin=stdin)


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """Put back the root logger's handlers and level, which ``serve`` sets for its own process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class Background:
    """``streamcli --address ADDRESS ARGS`` running in-process in a thread, with pipes for stdin and stdout.

    Like ``subprocess.Popen(..., stdin=PIPE, stdout=PIPE)``: ``stdin`` is the writing end of the
    command's standard input (``write`` sends a line at once), ``stdout`` the reading end of its
    output, which ends when the command does. ``communicate`` ends the input and waits.
    """

    def __init__(self, address: str, *args: str, environ: Mapping[str, str] | None = None) -> None:
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        self.stdin = open(stdin_write, "w", encoding="utf-8")  # noqa: SIM115 (these four: closed by communicate)
        self.stdout = open(stdout_read, encoding="utf-8")  # noqa: SIM115
        self._env = Environment(
            stdin=open(stdin_read, encoding="utf-8"),  # noqa: SIM115
            stdout=open(stdout_write, "w", encoding="utf-8"),  # noqa: SIM115
            stderr=io.StringIO(),
            environ=clean_environ() if environ is None else environ,
        )
        self.code: int | None = None
        self._thread = threading.Thread(target=self._run, args=(["--address", address, *args],), daemon=True)
        self._thread.start()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.stdin.closed:  # the test failed before communicate: end the input, so the command ends
            self.stdin.close()

    def _run(self, argv: list[str]) -> None:
        try:
            self.code = main(argv, self._env)
        finally:
            self._env.stdout.close()  # its reader sees the end, as when a process exits

    def write(self, text: str) -> None:
        """Write ``text`` to the command's stdin now (not buffered)."""
        self.stdin.write(text)
        self.stdin.flush()

    def communicate(self, input: str = "", timeout: float = 60) -> Run:
        """Write ``input``, close stdin (the end of the input), wait for the command to end and return
        what it printed to stdout (after what the test read itself) and stderr."""
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.append(self.stdout.read()), daemon=True)
        reader.start()  # read meanwhile: a full pipe would stop the command
        if input:
            self.stdin.write(input)
        self.stdin.close()
        self._thread.join(timeout)
        reader.join(timeout)
        if self._thread.is_alive() or self.code is None:
            raise AssertionError(f"the command did not end within {timeout} s: {self._env.stderr.getvalue()}")  # type: ignore[attr-defined]
        # The input has ended and the command with it: nothing reads its stdin any more.
        self._env.stdin.close()
        self.stdout.close()
        return Run(self.code, "".join(rest), self._env.stderr.getvalue())  # type: ignore[attr-defined]
