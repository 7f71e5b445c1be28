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
from streamcli.transport import client_addresses, client_target
from tests.support.certs import make_pki
from tests.support.inprocess import cli
from tests.support.servers import free_port
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


@pytest.mark.parametrize(
    ("address", "target", "tls"),
    [
        ("127.0.0.1", "127.0.0.1:50051", None),  # the server's default port, not gRPC's 443
        ("localhost:7000", "localhost:7000", None),
        ("[::1]", "[::1]:50051", None),
        ("::1", "[::1]:50051", None),
        ("http://host:50051", "host:50051", False),
        ("grpc://host:50051/", "host:50051", False),
        ("https://host", "host:443", True),
        ("https://host:8443", "host:8443", True),
        ("grpcs://host", "host:50051", True),
        ("unix:/run/streamcli.sock", "unix:/run/streamcli.sock", None),
    ],
)
def test_client_addresses(address: str, target: str, tls: bool | None) -> None:
    assert client_target(address) == (target, tls)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ftp://host:1", "unknown scheme ftp://; write HOST:PORT (plaintext), https://HOST:PORT (TLS)"),
        ("http://host:1/api", "a gRPC address has no path; write http://HOST:PORT"),
        ("host:http", "the port must be a number of 1-65535"),
        ("host:70000", "the port must be a number of 1-65535"),
        (":50051", "no host; write HOST:PORT"),
        ("  ", "the server address is empty"),
    ],
)
def test_bad_addresses_are_usage_errors(address: str, message: str) -> None:
    result = cli(address, "health")
    assert result.code == ExitStatus.USAGE
    assert len(result.error_lines) == 1 and message in result.err, result.err


@pytest.mark.parametrize(
    ("address", "addresses"),
    [
        ("127.0.0.1:1", ["127.0.0.1:1"]),
        ("a:1,b:2", ["a:1", "b:2"]),
        (" a:1 , https://b ,[::1]:3", ["a:1", "https://b", "[::1]:3"]),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", ["ipv4:10.0.0.1:1,10.0.0.2:1"]),  # gRPC's own list, as written
    ],
)
def test_several_addresses_are_separated_by_commas(address: str, addresses: list[str]) -> None:
    assert client_addresses(address) == addresses


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:1,,127.0.0.1:2", "an empty address in the list; write HOST:PORT,HOST:PORT"),
        ("127.0.0.1:1,", "an empty address in the list"),
        ("127.0.0.1:1,ftp://b:2", "--address ftp://b:2: unknown scheme ftp://"),
        ("127.0.0.1:1,host:http", "--address host:http: the port must be a number of 1-65535"),
    ],
)
def test_a_bad_address_in_a_list_is_a_usage_error(address: str, message: str) -> None:
    result = cli(address, "health")
    assert result.code == ExitStatus.USAGE
    assert len(result.error_lines) == 1 and message in result.err, result.err


def test_of_several_addresses_the_client_uses_the_first_that_answers(tmp_path: pathlib.Path) -> None:
    dead, also_dead = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with threaded_server(tmp_path / "data") as address:
        checked = cli(f"{dead},{address}", "--json", "health")
        listed = cli(f"{dead}, {address}", "files", "ls")
    none_answers = cli(f"{dead},{also_dead}", "--json", "health", "--timeout", "3")
    assert checked.code == 0, checked.err
    assert json.loads(checked.out) == {"address": address, "service": "", "status": "SERVING"}
    assert (listed.code, listed.err) == (0, "")
    # None answers: the first is used, and the failure names it, as for a lone server.
    assert none_answers.code == ExitStatus.UNAVAILABLE
    assert json.loads(none_answers.out)["address"] == dead
    assert f"cannot reach the server at {dead}" in none_answers.err


def test_serve_refuses_a_global_address_naming_several_servers(tmp_path: pathlib.Path) -> None:
    result = cli("127.0.0.1:1,127.0.0.1:2", "serve", "--data-dir", str(tmp_path / "data"))
    assert result.code == ExitStatus.USAGE
    assert result.err == (
        "streamcli: error: the global --address (or STREAMCLI_ADDRESS) 127.0.0.1:1,127.0.0.1:2 names several "
        "servers, and serve listens on one: give serve --address HOST:PORT\n"
    )


def test_an_address_without_a_port_or_with_a_scheme_reaches_the_server(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        port = address.rpartition(":")[2]
        as_url = cli(f"http://127.0.0.1:{port}", "health")
        as_grpc = cli(f"grpc://127.0.0.1:{port}/", "health")
        mixed = cli(f"http://127.0.0.1:{port}", "--tls", "health")
    no_port = cli("127.0.0.1", "health", "--timeout", "1")  # the default port: nothing listens there here
    assert (as_url.code, as_url.out.strip()) == (0, "SERVING"), as_url.err
    assert (as_grpc.code, as_grpc.out.strip()) == (0, "SERVING"), as_grpc.err
    assert mixed.code == ExitStatus.USAGE and "write https:// or drop the TLS options" in mixed.err
    assert no_port.code == ExitStatus.UNAVAILABLE
    assert "cannot reach the server at 127.0.0.1:50051" in no_port.err


def test_a_ca_cert_that_is_not_a_certificate_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    binary = tmp_path / "ca.der"
    binary.write_bytes(bytes(range(256)))
    for path in (not_pem, binary):
        result = cli("127.0.0.1:1", "--ca-cert", str(path), "health")
        assert result.code == ExitStatus.USAGE
        assert result.err == f"streamcli: error: CA certificate {path} is not a PEM certificate: " + (
            "give a file that starts -----BEGIN CERTIFICATE-----\n"
        )


def test_tls_and_plaintext_mismatches_say_so(tmp_path: pathlib.Path) -> None:
    ca, server, _ = make_pki(tmp_path)
    tls = {"tls_cert": server.cert, "tls_key": server.key}
    with threaded_server(tmp_path / "tls", **tls) as address:
        address = address.replace("127.0.0.1", "localhost")
        plaintext = cli(address, "health", "--timeout", "3")
        https = cli(f"https://{address}", "--ca-cert", str(ca.cert), "health")
    with threaded_server(tmp_path / "mtls", tls_client_ca=ca.cert, **tls) as address:
        address = address.replace("127.0.0.1", "localhost")
        no_client_cert = cli(address, "--ca-cert", str(ca.cert), "files", "ls")
        plaintext_at_mtls = cli(address, "files", "ls")
        # Of several addresses none answers a plaintext client: the first is used, and diagnosed.
        plaintext_at_several = cli(f"{address},127.0.0.1:{free_port()}", "files", "ls")
    with threaded_server(tmp_path / "plain") as address:
        tls_at_plaintext = cli(address, "--ca-cert", str(ca.cert), "health", "--timeout", "3")
    assert plaintext.code == ExitStatus.USAGE
    assert "TLS/plaintext mismatch: the server at localhost:" in plaintext.err
    assert "add --tls (with --ca-cert CA.pem for a private CA), or write https://localhost:" in plaintext.err
    assert (https.code, https.out.strip()) == (0, "SERVING"), https.err
    assert no_client_cert.code == ExitStatus.USAGE
    assert "requires a client certificate (mTLS): give --client-cert and --client-key" in no_client_cert.err
    assert plaintext_at_mtls.code == ExitStatus.USAGE
    assert "TLS/plaintext mismatch" in plaintext_at_mtls.err and "--client-cert" in plaintext_at_mtls.err
    assert tls_at_plaintext.code == ExitStatus.USAGE
    assert "does not use TLS (it answered in plaintext)" in tls_at_plaintext.err
    assert plaintext_at_several.code == ExitStatus.USAGE
    assert "TLS/plaintext mismatch" in plaintext_at_several.err and "--client-cert" in plaintext_at_several.err
    for run in (plaintext, no_client_cert, plaintext_at_mtls, tls_at_plaintext, plaintext_at_several):
        assert len(run.error_lines) == 1, run.err


def test_commands_that_retry_say_a_tls_mismatch_at_once(tmp_path: pathlib.Path) -> None:
    """Retrying cannot mend a configuration: the first failure is diagnosed, and no retry is made."""
    _, server, _ = make_pki(tmp_path)
    payload = tmp_path / "a.bin"
    payload.write_bytes(b"bytes")
    with threaded_server(tmp_path / "tls", tls_cert=server.cert, tls_key=server.key) as address:
        address = address.replace("127.0.0.1", "localhost")
        runs = [
            cli(address, "upload", str(payload)),
            cli(address, "tail", "events", "--user", "alice"),
            cli(address, "events", "publish", "--user", "alice", "--type", "login"),
            cli(address, "download", "0" * 32, "-o", str(tmp_path / "out")),
        ]
    for run in runs:
        assert run.code == ExitStatus.USAGE, run.err
        assert len(run.error_lines) == 1, run.err  # no "retry 1 of 25" before it
        assert "TLS/plaintext mismatch: the server at localhost:" in run.err
