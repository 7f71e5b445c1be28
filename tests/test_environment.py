"""What commands take from their ``Environment``, not from the process: variables, terminals, streams.

Each case injects one thing (``tests.support.inprocess.cli``) and checks that a command decided by it.
"""

from __future__ import annotations

import io
import json
import pathlib
import re
from collections.abc import Iterator

import pytest

from streamcli.errors import ExitStatus
from tests.support.inprocess import clean_environ, cli
from tests.support.threaded import threaded_server

ESCAPE = "\x1b["  # the start of a CSI sequence (a style, a cursor movement)


def colours(text: str) -> list[str]:
    """The colour parameters (foreground 30-38 and 90-97, background 40-48 and 100-107) of SGR sequences in
    ``text``; bold and dim are not colours (NO_COLOR keeps them)."""
    params = [param for group in re.findall(r"\x1b\[([0-9;]*)m", text) for param in group.split(";")]
    return [param for param in params if re.fullmatch(r"[34][0-8]|9[0-7]|10[0-7]", param)]


@pytest.fixture
def address(tmp_path: pathlib.Path) -> Iterator[str]:
    with threaded_server(tmp_path / "data") as served:
        yield served


def test_no_color_in_environ_turns_colour_off_on_a_terminal(address: str) -> None:
    assert cli(address, "events", "publish", "-u", "alice", "-t", "login").code == 0
    history = ("tail", "events", "--all-users", "--since", "1h", "--no-follow")
    coloured = cli(address, *history, stdout_tty=True, environ=clean_environ(TERM="xterm-256color"))
    plain = cli(address, *history, stdout_tty=True, environ=clean_environ(TERM="xterm-256color", NO_COLOR="1"))
    piped = cli(address, *history, environ=clean_environ(TERM="xterm-256color"))
    assert (coloured.code, plain.code, piped.code) == (0, 0, 0), coloured.err + plain.err + piped.err
    assert colours(coloured.out) and "alice" in coloured.out
    assert not colours(plain.out) and "alice" in plain.out
    assert ESCAPE not in piped.out and "alice" in piped.out  # not a terminal: no colour, no style


def test_progress_is_drawn_only_on_a_stderr_that_is_a_terminal(address: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "report.bin"
    source.write_bytes(b"x" * 100_000)
    drawn = cli(address, "upload", str(source), stderr_tty=True, environ=clean_environ(TERM="xterm-256color"))
    quiet = cli(address, "upload", str(source))
    assert (drawn.code, quiet.code) == (0, 0), drawn.err + quiet.err
    assert "report.bin" in drawn.err and ESCAPE in drawn.err
    assert quiet.err == ""
    assert drawn.out.split("  ")[1] == "report.bin\n"  # the result line, on stdout either way


def test_binary_output_to_what_counts_as_a_terminal_is_refused(address: str) -> None:
    sink = io.TextIOWrapper(io.BytesIO())
    refused = cli(address, "download", "0123abcd", "-o", "-", stdout=sink, stdout_tty=True)
    asked = cli(address, "download", "0123abcd", "-o", "-", stdout=sink)  # not a terminal: it asks the server
    assert refused.code == ExitStatus.USAGE
    assert refused.error_lines[0].startswith("streamcli: error: binary output can mess up your terminal;")
    assert (asked.code, asked.err) == (ExitStatus.NOT_FOUND, "streamcli: error: no file '0123abcd'\n")


def test_publish_from_a_terminal_asks_for_options_or_a_pipe(address: str) -> None:
    run = cli(address, "events", "publish", stdin_tty=True)
    assert (run.code, run.err) == (
        ExitStatus.USAGE,
        "streamcli: error: give --user and --type, or pipe NDJSON events to stdin\n",
    )


def test_chat_takes_its_default_name_from_user(address: str) -> None:
    run = cli(address, "--json", "chat", "--room", "r", stdin="hello\n", environ=clean_environ(USER="dora"))
    assert run.code == 0, run.err
    messages = [json.loads(line) for line in run.out.splitlines()]
    assert ("dora", "hello") in [(m["user_id"], m["content"]) for m in messages]


def test_serve_logs_to_the_environments_stderr(address: str, tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("erin=erin-1\n")
    tokens.chmod(0o644)  # readable by everyone: serve warns in its log, then finds the port taken
    run = cli(None, "serve", "--address", address, "--data-dir", str(tmp_path / "other"), "--user-tokens", str(tokens))
    assert run.code == ExitStatus.UNAVAILABLE
    warning, error = run.error_lines
    assert f"--user-tokens {tokens} is readable by every user of this machine" in warning
    assert error == f"streamcli: error: cannot listen on {address}: the address is in use or not available"


def test_batch_ingest_reads_the_environments_stdin(address: str) -> None:
    lines = "".join(json.dumps({"key": "k", "value": n}) + "\n" for n in range(3))
    piped = cli(address, "--json", "batch", "ingest", "-", stdin=lines)
    textual = cli(address, "batch", "ingest", "-", stdin=io.StringIO(lines))  # no bytes under it
    assert piped.code == 0, piped.err
    assert (json.loads(piped.out)["received"], json.loads(piped.out)["stored"]) == (3, 3)
    assert (textual.code, textual.err) == (
        ExitStatus.USAGE,
        "streamcli: error: standard input is not readable as bytes\n",
    )
