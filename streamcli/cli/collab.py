"""``streamcli collab``: shared documents (Collaborate): the editor, and for scripts print, apply and list."""

from __future__ import annotations

import pathlib
from typing import IO, Annotated, Any

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.cli.parsing import UserOption, user_name
from streamcli.client.settings import RECONNECT_RETRIES
from streamcli.errors import UsageError


def collab(
    ctx: typer.Context,
    document: Annotated[str, typer.Argument(metavar="DOC|ls", help="The document (or ls: list the documents).")],
    print_: Annotated[bool, typer.Option("--print", help="Print the document's current text.")] = False,
    apply: Annotated[
        str | None,
        typer.Option(
            "--apply", metavar="PATH", help="Apply the edits of this NDJSON file (- for stdin) as one change."
        ),
    ] = None,
    user: UserOption = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Reconnection attempts after a lost server before giving up.")
    ] = RECONNECT_RETRIES,
) -> None:
    """Shared documents that several people edit at once (the server orders every edit; all converge).

    [cyan]collab DOC[/cyan] opens the full-screen editor: others' edits appear as they are made (your cursor
    stays where it was), their cursors are drawn in the text and their names in the status bar with the
    connection state; it reconnects by itself. Ctrl-Q leaves.
    [cyan]collab DOC --print[/cyan] prints the text (with --json, an object with its revision).
    [cyan]collab DOC --apply EDITS.ndjson[/cyan] applies edits, one
    [cyan]{"position", "delete_count"?, "insert_text"?}[/cyan] a line (positions in Unicode code points),
    made one after another on the text as it is on joining, as one change; concurrent edits by others
    are transformed around it. It prints the revision once the change is committed; a lost server is
    rejoined and the change re-sent, applied once. [cyan]collab ls[/cyan] lists the documents.

    Examples:

      streamcli collab notes --user alice

      streamcli collab notes --print

      echo '{"position": 0, "insert_text": "# Notes\\n"}' | streamcli collab notes --apply -

      streamcli --json collab ls
    """
    env = get_env(ctx)
    if print_ and apply is not None:
        raise UsageError("--print and --apply: choose one")
    if document == "ls" and not print_ and apply is None:
        _list(env)
        return
    name = user_name(user, env.environ)
    from streamcli.client.retry import RetryPolicy

    if not print_ and apply is None:
        if not (env.stdin_isatty and env.stdout_isatty) or env.json:
            raise UsageError(f"collab {document}: the editor needs a terminal; say --print or --apply EDITS.ndjson")
        from streamcli.ui.collab import CollabEditor

        quiet = RetryPolicy(retries=retries)  # the status bar says what the connection does
        env.run(lambda conn: CollabEditor(conn, document, name, quiet).run())
        return
    policy = RetryPolicy(retries=retries, notice=env.notice)
    if print_:
        from streamcli.client.collab import read_document

        text = env.run(lambda conn: read_document(conn, document, name, policy))
        if env.json:
            env.emit_json(text.to_json())
        else:
            env.stdout.write(text.text if text.text.endswith("\n") or not text.text else text.text + "\n")
            env.stdout.flush()
        return
    assert apply is not None
    from streamcli.client.collab import apply_edits, edits_from_lines

    edits = edits_from_lines(_read_lines(env.stdin if apply == "-" else None, apply))
    if not edits:
        raise UsageError(f"{apply}: no edits")
    applied = env.run(lambda conn: apply_edits(conn, document, name, edits, policy, announce=env.notice))
    if env.json:
        env.emit_json(applied.to_json())
    else:
        env.stdout.write(f"{applied.revision}\n")
        env.stdout.flush()


def _read_lines(stdin: IO[Any] | None, source: str) -> list[str]:
    if stdin is not None:
        data = stdin.read()
        return (data.decode("utf-8", "replace") if isinstance(data, bytes) else data).splitlines()
    try:
        return pathlib.Path(source).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None


def _list(env: Environment) -> None:
    from streamcli.client.collab import list_documents
    from streamcli.terminal_text import visible

    entries = env.run(list_documents)
    if env.json:
        for entry in entries:
            env.emit_json(entry.to_json())
        return
    for entry in entries:
        row = entry.to_json()
        env.stdout.write(f"{visible(entry.document_id)}\t{entry.revision}\t{row['updated_at']}\n")
    env.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add ``collab`` to the tree."""
    app.command()(collab)


__all__ = ["register"]
