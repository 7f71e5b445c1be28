"""The command tree: help, version, error boundary, exit codes, completions."""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys

import pytest
import typer.main

from streamcli import __version__
from streamcli.cli.app import app
from streamcli.cli.environment import Environment
from streamcli.cli.main import main
from streamcli.errors import ExitStatus
from tests.support.inprocess import cli
from tests.support.servers import clean_env, run_cli
from tests.support.threaded import threaded_server

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, child in sorted(getattr(command, "commands", {}).items()):
            walk(child, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "streamcli")
def test_every_command_has_help_with_examples(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: streamcli" in out
    assert "Examples" in out
    assert "--help" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"streamcli {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["tail", "events", "--all-users", "--since", "1h", "--max", "0"],
            "invalid value for '--max' / '-n': Input should be greater than or equal to 1"
            " (see streamcli tail events --help)",
        ),
        (
            ["tail", "events", "--all-users", "--idle-timeout", "nan"],
            "invalid value for '--idle-timeout': Input should be greater than or equal to 0"
            " (see streamcli tail events --help)",
        ),
        (
            ["events", "publish", "--linger", "-1"],
            "invalid value for '--linger': Input should be greater than or equal to 0"
            " (see streamcli events publish --help)",
        ),
        (["tail", "notifications"], "missing option '--user' / '-u' (see streamcli tail notifications --help)"),
        (["health", "--no-such-option"], "no such option: --no-such-option (see streamcli health --help)"),
        (["helth"], "no such command 'helth'. Did you mean 'health'? (see streamcli --help)"),
    ],
)
def test_usage_errors_print_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli(None, *args)
    printed = capsys.readouterr()  # (what typer would print itself)
    assert (result.code, result.err, result.out) == (ExitStatus.USAGE, f"streamcli: error: {message}\n", "")
    assert (printed.out, printed.err) == ("", "")


def test_a_group_without_its_command_still_shows_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    result = cli("127.0.0.1:1", "tail")
    printed = capsys.readouterr()  # typer prints help on sys.stdout itself
    assert result.code == ExitStatus.USAGE
    assert "Usage: streamcli tail [OPTIONS] COMMAND [ARGS]..." in printed.out
    assert (result.err, printed.err) == ("", "")


def test_unreachable_address_gives_one_line_and_exit_3() -> None:
    result = cli("127.0.0.1:1", "health")
    assert result.code == ExitStatus.UNAVAILABLE == 3
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("streamcli: error: cannot reach the server at 127.0.0.1:1")
    assert result.out == ""


def test_json_health_of_an_unreachable_server_prints_its_status_too() -> None:
    result = cli("127.0.0.1:1", "--json", "health")
    assert result.code == 3
    printed = json.loads(result.out)
    assert {k: printed[k] for k in ("address", "service", "status")} == {
        "address": "127.0.0.1:1",
        "service": "",
        "status": "UNREACHABLE",
    }
    assert printed["error"].startswith("cannot reach the server at 127.0.0.1:1")
    assert result.err.startswith("streamcli: error: cannot reach the server at 127.0.0.1:1")


def test_traceback_flag_shows_the_traceback() -> None:
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO())
    assert main(["--traceback", "--address", "127.0.0.1:1", "health"], env) == 3
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("streamcli: error: cannot reach the server")


def test_health_against_a_live_server(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        plain = cli(address, "health")
        as_json = cli(address, "--json", "health", "streaming.v1.StreamingService")
        unknown = cli(address, "health", "no.such.Service")
    assert (plain.code, plain.out) == (0, "SERVING\n")
    assert as_json.code == 0
    assert as_json.out == f'{{"address":"{address}","service":"streaming.v1.StreamingService","status":"SERVING"}}\n'
    assert unknown.code == ExitStatus.UNAVAILABLE
    assert unknown.out == "SERVICE_UNKNOWN\n"
    assert unknown.err.strip() == f"streamcli: error: no.such.Service at {address} is SERVICE_UNKNOWN"


def test_health_probes_need_no_token(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data", token="right") as address:
        without = cli(address, "health")
        wrong = cli(address, "--token", "wrong", "health")
    assert (without.code, without.out) == (0, "SERVING\n")
    assert (wrong.code, wrong.out) == (0, "SERVING\n")


# Process start-up: the module and the console script as installed.
def test_python_dash_m_and_console_script_agree() -> None:
    module = subprocess.run([sys.executable, "-m", "streamcli", "--version"], capture_output=True, text=True)
    script = pathlib.Path(sys.executable).parent / "streamcli"
    console = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert module.stdout == console.stdout == f"streamcli {__version__}\n"


# A fresh interpreter: this one has imported grpc long ago.
def test_help_does_not_import_grpc_or_prompt_toolkit() -> None:
    code = (
        "import sys\n"
        "from streamcli.cli.main import main\n"
        "rc = main(['--help'])\n"
        "print(sorted(m for m in ('grpc', 'prompt_toolkit', 'google.protobuf') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_completions_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_completions.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _bash_complete(words: list[str]) -> list[str]:
    script = ROOT / "completions" / "streamcli.bash"
    quoted = " ".join(f"'{w}'" for w in words)
    command = (
        f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _streamcli; echo "${{COMPREPLY[@]}}"'
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_bash_completion_knows_the_tree() -> None:
    assert _bash_complete(["streamcli", "se"]) == ["serve"]
    assert _bash_complete(["streamcli", "--address", "h:1", "he"]) == ["health"]
    assert _bash_complete(["streamcli", "serve", "--log-level", ""]) == ["debug", "info", "warning", "error"]
    assert "--grace" in _bash_complete(["streamcli", "serve", "--"])


def test_fish_and_zsh_completions_load() -> None:
    fish = subprocess.run(
        ["fish", "-c", f"source {ROOT / 'completions' / 'streamcli.fish'}; complete -C 'streamcli serve --log-level '"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(line.split("\t")[0] for line in fish.stdout.splitlines()) == ["debug", "error", "info", "warning"]
    zsh = subprocess.run(["zsh", "-n", str(ROOT / "completions" / "streamcli.zsh")], capture_output=True, text=True)
    assert zsh.returncode == 0, zsh.stderr


def test_tls_failures_print_one_line_without_grpc_core_logs(tmp_path: pathlib.Path) -> None:
    from tests.support.certs import make_pki

    _, server, _ = make_pki(tmp_path)
    with threaded_server(tmp_path / "data", tls_cert=server.cert, tls_key=server.key) as address:
        # The client does not trust the test CA: the handshake fails. A subprocess: gRPC's C core writes
        # its logs to file descriptor 2, which only a process of its own separates from the test's.
        result = run_cli("--address", address.replace("127.0.0.1", "localhost"), "--tls", "health")
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ctrl_c_exits_130_with_one_line(tmp_path: pathlib.Path) -> None:
    import signal
    import time

    with threaded_server(tmp_path / "data") as address:
        # A stdin upload waits for input: interrupt it there.
        process = subprocess.Popen(
            [sys.executable, "-m", "streamcli", "--address", address, "upload", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)  # started and waiting on stdin
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert err.strip() == "streamcli: error: interrupted"


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05])
def test_ctrl_c_while_starting_exits_130_with_one_line(delay: float) -> None:
    import signal
    import time

    # Interrupted while main() imports and starts (grpc and the command's modules). The closed port
    # makes the command fail (exit 3) only after about 0.3 s, so the signal arrives while it is still
    # starting. The signal waits until grpc's extension is loaded: only main() imports it, and before
    # main() runs Python itself is starting, which no program can make answer Ctrl-C in one line (a
    # fixed delay from the spawn landed there on a loaded machine).
    script = pathlib.Path(sys.executable).parent / "streamcli"
    process = subprocess.Popen(
        [str(script), "--address", "127.0.0.1:1", "tail", "events", "--all-users"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    maps = pathlib.Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 20
    while process.poll() is None and time.monotonic() < deadline and "cygrpc" not in maps.read_text():
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert (process.returncode, err) == (ExitStatus.INTERRUPTED, "streamcli: error: interrupted\n")
