"""Start-up: a command builds and imports only what it uses, and that changes nothing it does."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import typer.main
from typer._click.core import Command, Context

from streamcli.cli.app import COMMANDS, MODULES, app, command_tree
from streamcli.cli.command_tree import PlainValues
from streamcli.cli.manpage import man_page_help
from tests.support.inprocess import cli
from tests.support.servers import clean_env
from tests.support.threaded import threaded_server

#: What no unary command imports: each belongs to other commands (chat, batch, metrics) or to none.
NEVER = ("pydantic", "prompt_toolkit", "msgspec", "psutil", "ddsketch", "prometheus_client", "numpy")


def _imported_by(address: str, *args: str) -> tuple[str, list[str]]:
    """Run ``streamcli --address ADDRESS ARGS`` in a fresh interpreter (this one has imported everything long
    ago); return what it printed and which of NEVER and rich it had imported when it ended."""
    code = (
        "import sys\n"
        "from streamcli.cli.main import main\n"
        f"code = main(['--address', {address!r}, *{list(args)!r}])\n"
        f"packages = ({', '.join(map(repr, NEVER))}, 'rich')\n"
        "print(code, sorted(p for p in packages if any(m == p or m.startswith(p + '.') for m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True)
    *output, last = result.stdout.splitlines()
    return "\n".join(output), eval(last.partition(" ")[2])


def test_unary_commands_import_neither_pydantic_nor_other_commands_packages(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        assert cli(address, "upload", str(_file(tmp_path))).code == 0
        file_id = json.loads(cli(address, "--json", "files", "ls").out)["id"]
        assert _imported_by(address, "health") == ("SERVING", [])
        output, imported = _imported_by(address, "--json", "files", "ls")
        assert file_id in output and imported == []
        output, imported = _imported_by(address, "files", "info", file_id)
        assert "a.txt" in output and imported == []
        output, imported = _imported_by(address, "files", "ls")  # a table: rich draws it
        assert "a.txt" in output and imported == ["rich"]
        # Paths and a number from the command line are made without pydantic.
        output, imported = _imported_by(address, "--json", "upload", "--parallel", "2", str(_file(tmp_path)))
        assert '"already_stored":true' in output and imported == []  # no terminal: no progress bars, no rich
        output, imported = _imported_by(address, "download", file_id, "-o", str(tmp_path / "b.txt"))
        assert output.endswith("b.txt") and imported == []


def _file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "a.txt"
    path.write_text("hello\n")
    return path


@pytest.mark.parametrize("entry", ["console-script", "python-m"])
def test_a_command_exits_with_its_objects_frozen_and_its_output_flushed(entry: str) -> None:
    # A process of its own: what happens at the interpreter's exit is under test.
    start = (
        "from streamcli.cli.main import run; run()"
        if entry == "console-script"
        else "import runpy; runpy.run_module('streamcli', run_name='__main__')"
    )
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: sys.stderr.write(f'frozen {gc.get_freeze_count() > 0}\\n'))\n"
        "sys.argv = ['streamcli', '--version']\n"
        f"{start}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("streamcli ")
    assert "frozen True" in result.stderr  # Python's shutdown does not collect them: bench/README.md


def test_the_lazy_tree_has_every_command_of_the_whole_tree_in_its_order() -> None:
    whole: Any = typer.main.get_command(app)
    man_page_help(whole)  # as command_tree() gives every command it builds
    lazy: Any = command_tree()
    assert list(lazy.commands) == list(whole.commands) == list(COMMANDS)
    assert sorted(set(COMMANDS.values())) == sorted(MODULES)
    for name, command in whole.commands.items():
        assert _shape(lazy.commands[name]) == _shape(command), name


def _shape(command: Command) -> object:
    """What a command offers: its parameters (names, options, types, defaults, help) and its subcommands."""
    params = [
        (
            p.name,
            p.opts,
            p.secondary_opts,
            repr(p.type_descriptor.annotation),
            type(p).__name__,
            repr(p.default),
            getattr(p, "help", None),
        )
        for p in command.params
    ]
    children = {name: _shape(child) for name, child in getattr(command, "commands", {}).items()}
    return command.name, command.help, params, children


def _every_param() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []

    def walk(command: Any, path: str) -> None:
        found.extend((f"{path} {p.name}", p) for p in command.params)
        for name, child in getattr(command, "commands", {}).items():
            walk(child, f"{path} {name}")

    walk(typer.main.get_command(app), "streamcli")
    return found


@pytest.mark.parametrize(("where", "param"), _every_param(), ids=lambda x: x if isinstance(x, str) else "")
def test_plain_values_come_out_as_typers_coercion_gives_them(where: str, param: Any) -> None:
    """Every default, a string and None, through PlainValues and through typer's own coercion."""
    from typer._coercion import build_runtime_param

    typers = build_runtime_param(param.type_descriptor)
    plain = PlainValues(param)
    ctx = Context(typer.main.get_command(app))
    multiple = param.multiple or param.nargs == -1
    # Strings of several shapes: a plain Path parameter makes its Path without typer (an empty string, a
    # trailing slash and an existing directory, ".", included), an int parameter its int (out of range, or not
    # plain digits, typer says why).
    strings = ("x", "", "a/b/", ".", "4", "-3", "0", "007", "100000", "1.5", " 4")
    for value in (param.default, None, *((strings,) if multiple else strings)):
        try:
            expected = typers.coerce(value, param=param, ctx=ctx)
        except Exception as exc:  # a value typer refuses: PlainValues must refuse it alike
            with pytest.raises(type(exc)):
                plain.coerce(value, param=param, ctx=ctx)
            continue
        got = plain.coerce(value, param=param, ctx=ctx)
        assert (type(got), got) == (type(expected), expected), (where, value)
