"""The root of the command tree: global options and the command groups.

Each command group lives in its own module and registers itself here with one
line; nothing here imports grpc, so ``streamcli --help`` and shell completion
stay about as cheap as importing typer.
"""

from __future__ import annotations

import functools
import pathlib
from typing import TYPE_CHECKING, Annotated

import typer

from streamcli import __version__
from streamcli.cli.environment import get_env
from streamcli.client.settings import ConnectionSettings
from streamcli.transport import DEFAULT_ADDRESS

if TYPE_CHECKING:
    from typer.core import TyperGroup

app = typer.Typer(
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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"streamcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    address: Annotated[
        str,
        typer.Option(
            "--address",
            "-a",
            envvar="STREAMCLI_ADDRESS",
            help="Server address: HOST:PORT, HOST (port 50051), http://HOST:PORT or https://HOST:PORT (TLS).",
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


def _register() -> None:
    # One line per command group; each module only knows about `app`.
    from streamcli.cli import (
        batch,
        chat,
        collab,
        events,
        files,
        health,
        metrics,
        notify,
        process,
        serve,
        tail,
        transfer,
    )

    serve.register(app)
    health.register(app)
    transfer.register(app)
    files.register(app)
    tail.register(app)
    events.register(app)
    notify.register(app)
    chat.register(app)
    batch.register(app)
    metrics.register(app)
    process.register(app)
    collab.register(app)


_register()


@functools.cache
def command_tree() -> TyperGroup:
    """The click command tree of ``app``, built once: what ``main`` runs, completions and tests walk."""
    import typer.main

    from streamcli.cli.manpage import man_page_help

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    man_page_help(group)
    return group
