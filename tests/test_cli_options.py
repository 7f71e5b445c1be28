"""Global options anywhere on the command line (cli/argv.py), as kubectl and gh take them."""

from __future__ import annotations

import io
import json
import pathlib
import re

import pytest

from streamcli import __version__
from streamcli.cli.app import command_tree
from streamcli.cli.argv import global_options_first
from streamcli.cli.environment import Environment
from streamcli.cli.main import main
from streamcli.errors import ExitStatus
from tests.support.certs import make_pki
from tests.support.inprocess import cli
from tests.support.threaded import threaded_server


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Moved to the front, with their values, in order.
        (["files", "ls", "--json"], ["--json", "files", "ls"]),
        (["files", "ls", "-a", "h:1", "--json"], ["-a", "h:1", "--json", "files", "ls"]),
        (["files", "ls", "-ah:1"], ["-ah:1", "files", "ls"]),
        (["files", "ls", "--address=h:1"], ["--address=h:1", "files", "ls"]),
        (["--json", "tail", "--token", "t", "events"], ["--json", "--token", "t", "tail", "events"]),
        (["files", "ls", "--no-tls", "--tls"], ["--no-tls", "--tls", "files", "ls"]),
        # A command's own option of the same name stays, with its value.
        (["serve", "--address", "h:1", "--token", "t"], ["serve", "--address", "h:1", "--token", "t"]),
        # A value that looks like a global option is a value.
        (["notify", "send", "--title", "--json"], ["notify", "send", "--title", "--json"]),
        (["tail", "events", "-n", "--json"], ["tail", "events", "-n", "--json"]),
        # After --, everything is an argument.
        (["upload", "--", "--json", "-a"], ["upload", "--", "--json", "-a"]),
        (["upload", "-", "--json"], ["--json", "upload", "-"]),
        # An unknown command: left for click to report.
        (["nosuch", "--json"], ["nosuch", "--json"]),
        (["--bogus", "files", "--json"], ["--bogus", "files", "--json"]),
    ],
)
def test_global_options_move_before_the_command(argv: list[str], expected: list[str]) -> None:
    assert global_options_first(command_tree(), argv) == expected


def test_json_and_address_after_the_command(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        result = cli(None, "health", "--json", "--address", address)
        short = cli(None, "health", "-a", address, "--json")
        equals = cli(None, "files", "ls", f"--address={address}", "--json")
    assert (result.code, json.loads(result.out)["status"]) == (0, "SERVING"), result.err
    assert (short.code, json.loads(short.out)["status"]) == (0, "SERVING"), short.err
    assert (equals.code, equals.out, equals.err) == (0, "", "")


def test_token_after_the_command(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data", token="s3cret") as address:
        without = cli(address, "files", "ls")
        after = cli(address, "files", "ls", "--token", "s3cret")
    assert without.code == ExitStatus.AUTH
    assert (after.code, after.err) == (0, "")


def test_tls_options_after_the_command(tmp_path: pathlib.Path) -> None:
    ca, server, client = make_pki(tmp_path)
    config = {"tls_cert": server.cert, "tls_key": server.key, "tls_client_ca": ca.cert}
    with threaded_server(tmp_path / "data", **config) as address:
        address = address.replace("127.0.0.1", "localhost")
        mtls = ("--ca-cert", str(ca.cert), "--client-cert", str(client.cert), "--client-key", str(client.key))
        ok = cli(None, "health", "--address", address, *mtls)
        # --tls with --no-tls after it: the last one counts, as before the command; --ca-cert implies TLS.
        flags = cli(None, "health", "--address", address, "--tls", "--no-tls", *mtls)
    assert (ok.code, ok.out.strip(), ok.err) == (0, "SERVING", "")
    assert (flags.code, flags.err) == (0, "")


def test_tls_flag_after_the_command(tmp_path: pathlib.Path) -> None:
    _, server, _ = make_pki(tmp_path)
    with threaded_server(tmp_path / "data", tls_cert=server.cert, tls_key=server.key) as address:
        # The client does not trust the test CA: a handshake was tried, so --tls was taken.
        result = cli(None, "health", "--timeout", "3", "--address", address, "--tls")
    assert result.code == ExitStatus.UNAVAILABLE
    assert "cannot reach the server" in result.err


def test_traceback_after_the_command() -> None:
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO())
    assert main(["health", "--address", "127.0.0.1:1", "--traceback"], env) == ExitStatus.UNAVAILABLE
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert "Traceback (most recent call last)" in err


def test_version_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["files", "ls", "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"streamcli {__version__}"


def test_the_last_of_a_repeated_global_option_counts(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        result = cli("127.0.0.1:1", "health", "--address", address)
    assert (result.code, result.out.strip()) == (0, "SERVING"), result.err


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, child in sorted(getattr(command, "commands", {}).items()):
            walk(child, [*path, name])

    walk(command_tree(), [])
    return paths


#: What typer would show instead of a man page's metavars: Python types, ranges as types, {ARG}.
_TYPE_NAMES = re.compile(r"<(bool|str|int|float|file|dir|path|list\[[^\]]*\]|[a-z]+ range)>", re.IGNORECASE)


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "streamcli")
def test_help_reads_as_a_man_page(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert _TYPE_NAMES.search(out) is None, out
    assert "range>" not in out
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    # Every option that takes a value shows a metavar in capitals (or its choices); flags show none.
    command = command_tree()
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    for param in command.params:
        if param.param_type_name != "option":
            continue
        if getattr(param, "is_flag", False):
            assert param.metavar == "", param.opts
        else:
            assert param.metavar and (param.metavar.isupper() or "|" in param.metavar), (param.opts, param.metavar)


def test_usage_lines_name_arguments_as_a_man_page_does(capsys: pytest.CaptureFixture[str]) -> None:
    usages = {}
    for path in (["upload"], ["download"], ["files", "rm"], ["health"], ["process"], ["batch", "ingest"]):
        main([*path, "--help"])
        out = capsys.readouterr().out
        usage = next(line for line in out.splitlines() if "Usage:" in line)
        usages[" ".join(path)] = usage.split("[OPTIONS]")[1].strip()
    assert usages == {
        "upload": "PATH...",
        "download": "ID",
        "files rm": "ID...",
        "health": "[SERVICE]",
        "process": "[FILE|-]",
        "batch ingest": "FILE...",
    }
