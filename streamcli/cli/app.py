"""The root of the command tree: global options and the command groups.

Each command group lives in its own module and registers itself with one line
(``COMMANDS`` says which module registers which top-level command); nothing here
imports grpc, so ``streamcli --help`` and shell completion stay about as cheap as
importing typer. ``app`` is the whole tree (for completions and tests);
``command_tree()`` is what ``main`` runs: the same tree, of which a command
builds only its own part (``streamcli.cli.command_tree``).
"""

from __future__ import annotations

import functools
import importlib
import pathlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer
import typer.main

from streamcli import __version__
from streamcli.cli.environment import get_env
from streamcli.client.settings import ConnectionSettings
from streamcli.transport import DEFAULT_ADDRESS

if TYPE_CHECKING:
    from typer._click.core import Command
    from typer.core import TyperGroup

#: Each top-level command, in the order of the whole tree (help lists them so), and the module of
#: ``streamcli.cli`` whose ``register(app)`` adds it.
COMMANDS = {
    "serve": "serve",
    "health": "health",
    "upload": "transfer",
    "download": "transfer",
    "chat": "chat",
    "process": "process",
    "collab": "collab",
    "files": "files",
    "tail": "tail",
    "events": "events",
    "notify": "notify",
    "batch": "batch",
    "metrics": "metrics",
}
#: The modules in the order they register (the order of the whole tree follows from it).
MODULES = (
    "serve",
    "health",
    "transfer",
    "files",
    "tail",
    "events",
    "notify",
    "chat",
    "batch",
    "metrics",
    "process",
    "collab",
)


def _new_app(modules: Iterable[str], *, with_root: bool = True) -> typer.Typer:
    """A command tree with the global options (``with_root``) and the commands of ``modules``."""
    tree = typer.Typer(
        name="streamcli",
        help=(
            "gRPC streaming toolkit: run a streaming server ([bold]serve[/bold]) and talk to it.\n\n"
            "These options go before or after the command; the connection options also read "
            "[cyan]STREAMCLI_*[/cyan] variables."
        ),
        epilog=(
            "Examples:\n\n"
            "  streamcli serve                               # embedded server on 127.0.0.1:50051\n\n"
            "  streamcli --address host:50051 --tls health   # is a TLS server up?\n\n"
            "  STREAMCLI_TOKEN=s3cret streamcli --json health"
        ),
        rich_markup_mode="rich",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    if with_root:
        tree.callback()(root)
    for module in modules:
        importlib.import_module(f"streamcli.cli.{module}").register(tree)
    return tree


def _version(value: bool) -> None:
    if value:
        typer.echo(f"streamcli {__version__}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    address: Annotated[
        str,
        typer.Option(
            "--address",
            "-a",
            envvar="STREAMCLI_ADDRESS",
            help=(
                "Server address: HOST:PORT, HOST (port 50051), http://HOST:PORT or https://HOST:PORT (TLS); "
                "several, comma-separated (A,B), for replicas: the first that answers, the next when it goes away."
            ),
        ),
    ] = DEFAULT_ADDRESS,
    token: Annotated[
        str | None,
        typer.Option(envvar="STREAMCLI_TOKEN", show_default=False, help="Bearer token sent with every call."),
    ] = None,
    tls: Annotated[bool, typer.Option("--tls/--no-tls", envvar="STREAMCLI_TLS", help="Connect with TLS.")] = False,
    ca_cert: Annotated[
        pathlib.Path | None,
        typer.Option(
            envvar="STREAMCLI_CA_CERT",
            dir_okay=False,
            show_default=False,
            help="PEM CA bundle to verify the server with (implies --tls).",
        ),
    ] = None,
    client_cert: Annotated[
        pathlib.Path | None,
        typer.Option(
            envvar="STREAMCLI_CLIENT_CERT",
            dir_okay=False,
            show_default=False,
            help="PEM client certificate, for servers that require mTLS (implies --tls).",
        ),
    ] = None,
    client_key: Annotated[
        pathlib.Path | None,
        typer.Option(
            envvar="STREAMCLI_CLIENT_KEY", dir_okay=False, show_default=False, help="PEM key of --client-cert."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine output on stdout: JSON, one object per line.")
    ] = False,
    traceback: Annotated[bool, typer.Option("--traceback", help="Show a traceback when a command fails.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    env = get_env(ctx)
    env.connection = ConnectionSettings(
        address=address,
        token=token,
        tls=tls,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
    )
    env.json = json_output
    env.traceback = traceback


@functools.cache
def command_tree() -> TyperGroup:
    """The click command tree, built once: what ``main`` runs, completions and tests walk.

    The root (the global options) is built at once; each top-level command when it is first used
    (``LazyCommands``), with its man-page help and ``PlainValues``, so a command builds only its own part.
    """
    from typer._click.core import Context

    from streamcli.cli.command_tree import LazyCommands, plain_values
    from streamcli.cli.manpage import man_page_help

    group = typer.main.get_command(_new_app([]))
    assert isinstance(group, typer.core.TyperGroup)
    man_page_help(group)  # the root's own parameters: it has no commands yet
    root_context = Context(group, info_name="streamcli", **group.context_settings)

    def build(name: str) -> dict[str, Command]:
        commands = dict(typer.main.get_group(_new_app([COMMANDS[name]], with_root=False)).commands)
        for child_name, child in commands.items():
            man_page_help(child, root_context, child_name)
        return commands

    group.commands = LazyCommands(list(COMMANDS), build)
    plain_values(group)
    return group


_app: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole tree, as typer builds it (built on first use)."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = _new_app(MODULES)
    return _app
