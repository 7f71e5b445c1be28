"""``streamcli files``: list, inspect and delete stored files."""

from __future__ import annotations

from typing import Annotated

import typer

from streamcli.cli.environment import get_env

files_app = typer.Typer(
    help="List, inspect and delete stored files.",
    epilog="Examples:\n\n  streamcli files ls\n\n  streamcli files info 3f2a9c\n\n  streamcli files rm 3f2a9c",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@files_app.command("ls")
def list_files(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many files, newest first.")] = 1000,
) -> None:
    """List stored files, newest first.

    Examples:

      streamcli files ls

      streamcli --json files ls | jq -r .id
    """
    from streamcli.client.files import list_files as fetch

    env = get_env(ctx)
    entries = env.run(lambda conn: fetch(conn, limit))
    if env.json:
        for entry in entries:
            env.emit_json(entry.to_json())
        return
    from rich.filesize import decimal
    from rich.table import Table
    from rich.text import Text

    from streamcli.terminal_text import visible
    from streamcli.times import invalid_time

    table = Table(box=None, header_style="bold")
    table.add_column("ID", no_wrap=True)
    table.add_column("SIZE", no_wrap=True, justify="right")
    table.add_column("CREATED (UTC)", no_wrap=True)
    table.add_column("NAME", overflow="fold")
    for entry in entries:
        created = invalid_time(entry.created_at) or _table_time(entry.created_at.seconds)
        # Text, not str: rich would read markup ("[link=...]") in a string; visible(): nor may the terminal
        # read escape sequences in what the server sent.
        table.add_row(Text(visible(entry.file_id)), decimal(entry.size), created, Text(visible(entry.filename)))
    env.console.print(table)


def _table_time(seconds: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` (UTC) of a valid time, to the second."""
    import datetime

    return (datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


@files_app.command("info")
def file_info(
    ctx: typer.Context,
    file_id: Annotated[str, typer.Argument(metavar="ID", help="Id of the file, or its start (unique, 4+ characters).")],
) -> None:
    """Show one file's metadata.

    Examples:

      streamcli files info 3f2a9c

      streamcli --json files info 3f2a9c
    """
    from streamcli.client.files import get_file_info
    from streamcli.terminal_text import visible

    env = get_env(ctx)
    record = env.run(lambda conn: get_file_info(conn, file_id)).to_json()
    if env.json:
        env.emit_json(record)
    else:
        for key, value in record.items():
            env.stdout.write(f"{key + ':':<14}{visible(str(value))}\n")


@files_app.command("rm")
def remove_files(
    ctx: typer.Context,
    file_ids: Annotated[
        list[str], typer.Argument(metavar="ID...", help="Ids of the files to delete, or their starts.")
    ],
) -> None:
    """Delete stored files.

    Examples:

      streamcli files rm 3f2a9c

      streamcli --json files ls | jq -r .id | xargs streamcli files rm

    An id that cannot be deleted (no such file...) is reported on stderr and
    the others are still deleted; the exit code is then that of the first
    failure.
    """
    from streamcli.client.files import delete_files
    from streamcli.errors import StreamcliError
    from streamcli.terminal_text import visible

    env = get_env(ctx)

    def report(file_id: str, outcome: int | StreamcliError) -> None:
        if isinstance(outcome, StreamcliError):
            env.error(outcome.message)
        elif env.json:
            env.emit_json({"id": file_id, "deleted": True, "bytes_freed": outcome})
        else:
            env.stdout.write(f"deleted {visible(file_id)}\n")
            env.stdout.flush()

    failures = env.run(lambda conn: delete_files(conn, file_ids, report))
    if failures:
        raise typer.Exit(int(failures[0].exit_status))  # each failure has been reported already


def register(app: typer.Typer) -> None:
    """Add the ``files`` group to the tree."""
    app.add_typer(files_app, name="files")
