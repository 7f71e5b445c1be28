"""``streamcli upload`` and ``streamcli download``: verified, resumable file transfer."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Annotated

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.client.settings import RECONNECT_RETRIES
from streamcli.errors import StreamcliError, UsageError

if TYPE_CHECKING:
    from streamcli.client.transfer import TransferResult

RETRIES_HELP = (
    "Retries with backoff (up to 8 s apart) after the server or network goes away, each said on stderr; "
    "each resumes where the last stopped. The default waits about three minutes, as tails do."
)


def upload(
    ctx: typer.Context,
    paths: Annotated[
        list[pathlib.Path],
        typer.Argument(metavar="PATH...", help="Files to upload; '-' reads standard input.", show_default=False),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", "-n", show_default=False, help="Name to store a single file under. [default: its file name]"
        ),
    ] = None,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            "-p",
            min=1,
            max=64,
            help="Files over 1 MiB uploaded at once (smaller ones share one stream).",
        ),
    ] = 4,
    retries: Annotated[int, typer.Option(min=0, help=RETRIES_HELP)] = RECONNECT_RETRIES,
) -> None:
    """Upload files, verified by SHA-256; interrupted uploads resume on the next run.

    Prints one line per file as soon as it is stored: its id and name, and
    "(already stored)" when the server had a file of that name and content and
    answered with its id instead of storing it again ([cyan]--json[/cyan]: one object per
    file with id, name, size, sha256 and already_stored). A run interrupted by
    Ctrl-C has printed the files it finished. Progress bars appear when stderr is
    a terminal. Standard input has no size known in advance: it is sent with its
    size and checksum at the end, and cannot resume. Of several files, those of up
    to 1 MiB go together on one stream, stored by the server in groups.

    Examples:

      streamcli upload report.pdf

      streamcli upload *.iso --parallel 2

      tar c dir | streamcli upload - --name dir.tar
    """
    from streamcli.allocator import keep_freed_buffers
    from streamcli.client.retry import RetryPolicy
    from streamcli.client.transfer import upload_many, upload_stream
    from streamcli.ui.progress import transfer_progress

    env = get_env(ctx)
    keep_freed_buffers(env.environ)  # each chunk's buffers reused, not faulted in afresh
    policy = RetryPolicy(retries=retries, notice=env.notice)
    if pathlib.Path("-") in paths:
        if len(paths) > 1:
            raise UsageError("'-' (standard input) cannot be combined with other files")
        stdin = getattr(env.stdin, "buffer", None)
        if stdin is None:
            raise UsageError("standard input is not readable as bytes")
        with transfer_progress(env.progress_console, 1) as progress:
            result = env.run(lambda conn: upload_stream(conn, stdin, name or "stdin", progress))
        _print_results(env, [result])
        return
    with transfer_progress(env.progress_console, len(paths)) as progress:
        outcomes = env.run(
            lambda conn: upload_many(
                conn, paths, progress, parallel=parallel, name=name, retry=policy,
                on_result=lambda result: _print_results(env, [result]),
            )
        )  # fmt: skip
    failures = [o for o in outcomes if isinstance(o, StreamcliError)]
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more failed)" if len(failures) > 1 else ""
        raise type(first)(f"{first.message}{more}")


def _print_results(env: Environment, results: list[TransferResult]) -> None:
    from streamcli.terminal_text import visible

    for result in results:
        if env.json:
            env.emit_json(result.to_json())
        else:
            again = "  (already stored)" if result.already_stored else ""
            env.stdout.write(f"{visible(result.file_id)}  {visible(result.name)}{again}\n")
        env.stdout.flush()  # a line per file as it is stored, for a reader of a pipe too


def download(
    ctx: typer.Context,
    file_id: Annotated[
        str, typer.Argument(metavar="ID", help="Id of the file, or its start (see 'streamcli files ls').")
    ],
    # A string, not a Path: a Path drops the trailing slash that says "a directory".
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            show_default=False,
            help="File or directory to write to (a trailing '/' means a directory); '-' writes to stdout."
            " [default: the stored name, here]",
        ),
    ] = None,
    create_dirs: Annotated[
        bool, typer.Option("--create-dirs", help="Create the directory to write to, and its parents, if missing.")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from an existing PATH.part.")] = True,
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Overwrite an existing file (or symbolic link); write binary output to a terminal."
        ),
    ] = False,
    retries: Annotated[int, typer.Option(min=0, help=RETRIES_HELP)] = RECONNECT_RETRIES,
) -> None:
    """Download a file, verified by SHA-256, via PATH.part (renamed only when complete).

    An interrupted download resumes from PATH.part on the next run. Prints the
    path written ([cyan]--json[/cyan]: id, name, size, sha256, path). The name
    comes from the server: one that is not a plain file name is replaced by the
    id. Symbolic links at PATH.part or PATH are never followed (exit 9).

    Examples:

      streamcli download 3f2a9c

      streamcli download 3f2a9c -o backups/ --create-dirs

      streamcli download 3f2a9c -o - | tar x
    """
    from streamcli.allocator import keep_freed_buffers
    from streamcli.client.retry import RetryPolicy
    from streamcli.client.transfer import download_file
    from streamcli.terminal_text import visible
    from streamcli.ui.progress import transfer_progress

    env = get_env(ctx)
    keep_freed_buffers(env.environ)  # each chunk's buffers reused, not faulted in afresh
    policy = RetryPolicy(retries=retries, notice=env.notice)
    if output is not None and not output.strip():
        raise UsageError("--output is empty: give a file or directory, or '-' for standard output")
    to_stdout = output == "-"
    stdout = getattr(env.stdout, "buffer", None) if to_stdout else None
    if to_stdout and stdout is None:
        raise UsageError("standard output is not writable as bytes")
    if to_stdout and env.stdout_isatty and not force:
        # As curl: the bytes would be taken for escape sequences, and a terminal is rarely what was meant.
        raise UsageError(
            "binary output can mess up your terminal; pipe it, use -o FILE, or pass --force to write it anyway"
        )
    with transfer_progress(env.progress_console, 1) as progress:
        result = env.run(
            lambda conn: download_file(
                conn,
                file_id,
                None if to_stdout else output,
                progress,
                stdout=stdout,
                resume=resume,
                force=force,
                create_dirs=create_dirs,
                retry=policy,
            )
        )
    if to_stdout:
        return
    if env.json:
        env.emit_json(result.to_json())
    else:
        env.stdout.write(f"{visible(result.path)}\n")


def register(app: typer.Typer) -> None:
    """Add ``upload`` and ``download`` to the tree."""
    app.command()(upload)
    app.command()(download)
