"""``streamcli batch``: ingest records from NDJSON or CSV files, list batches, show one, read its records back."""

from __future__ import annotations

import pathlib
from typing import IO, TYPE_CHECKING, Annotated

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.errors import ExitStatus, StreamcliError, UsageError

if TYPE_CHECKING:
    from streamcli.client.batches import BatchDetail, BatchSummary, IngestResult, Refusal
    from streamcli.client.connection import Connection
    from streamcli.client.records import FieldMap

#: Default of --retries (about 3 minutes, as uploads and tails).
RETRIES = 25

batch_app = typer.Typer(
    help="Ingest data records in batches and read them back.",
    epilog=(
        "Examples:\n\n  streamcli batch ingest readings.ndjson\n\n"
        "  streamcli batch ingest data.csv --key-field sensor --rejects bad.ndjson\n\n"
        "  streamcli batch records ID > back.ndjson"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@batch_app.command("ingest")
def ingest(
    ctx: typer.Context,
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="NDJSON or CSV files; - for stdin.")],
    file_format: Annotated[
        str | None,
        typer.Option("--format", show_default=False, help="ndjson or csv. [default: by extension: .csv is CSV]"),
    ] = None,
    key_field: Annotated[str, typer.Option(help="The field holding the record's key.")] = "key",
    value_field: Annotated[str, typer.Option(help="The field holding its numeric value.")] = "value",
    time_field: Annotated[str, typer.Option(help="The field holding its time (RFC 3339; optional).")] = "timestamp",
    rejects: Annotated[
        pathlib.Path | None,
        typer.Option(
            dir_okay=False,
            show_default=False,
            help="Write each refused record here, as NDJSON: file, line, reason and the original text.",
        ),
    ] = None,
    max_errors: Annotated[int, typer.Option(min=0, help="Stop after this many refused records (0: never stop).")] = 0,
    retries: Annotated[
        int, typer.Option(min=0, help="Retries with backoff after the server or network goes away.")
    ] = RETRIES,
) -> None:
    """Ingest records into batches, one batch per file.

    Each line (NDJSON) or row (CSV, with a header) is a record: a key, a
    numeric value, an optional RFC 3339 time; the other fields go into its
    payload. Every refused record is named on stderr as [cyan]FILE:LINE: reason[/cyan]
    (and written to [cyan]--rejects[/cyan]); the others are stored. Then a summary:
    received, stored, refused and per-key aggregates ([cyan]--json[/cyan]: one object per file).

    Exit 0 when every record was stored, 12 when some were refused.

    Ingest is resumable: a file's batch is named by its path, size and
    modification time, so running the same command again after Ctrl-C, a lost
    network or a server restart sends only what the server does not hold,
    and no record is stored twice. Standard input cannot be resumed.

    Examples:

      streamcli batch ingest readings.ndjson

      streamcli batch ingest data.csv --key-field sensor --value-field reading --rejects bad.ndjson

      producer | streamcli batch ingest - --format csv
    """
    from streamcli.client.records import FieldMap, format_of

    env = get_env(ctx)
    mapping = FieldMap(key_field, value_field, time_field)
    formats = [format_of(name, file_format) for name in files]
    if files.count("-") > 1:
        raise UsageError("stdin (-) can be read once")
    dead_letters = _open_rejects(rejects)
    results: list[IngestResult] = []
    try:
        for name, chosen in zip(files, formats, strict=True):
            results.append(_ingest_one(env, name, chosen, mapping, dead_letters, max_errors, retries, len(files)))
            if results[-1].stopped_early:
                break
    finally:
        if dead_letters is not None:
            dead_letters.close()
    _print_results(env, results)
    if any(result.refused for result in results):
        raise typer.Exit(int(ExitStatus.REFUSED_RECORDS))


def _open_rejects(path: pathlib.Path | None) -> IO[str] | None:
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write --rejects {path}: {exc.strerror or exc}") from None


def _ingest_one(
    env: Environment,
    name: str,
    file_format: str,
    mapping: FieldMap,
    dead_letters: IO[str] | None,
    max_errors: int,
    retries: int,
    count: int,
) -> IngestResult:
    from streamcli.client.batches import BatchIngest, IngestOptions, batch_id_for, new_batch_id
    from streamcli.client.jsontext import ENCODER
    from streamcli.client.records import read_records
    from streamcli.client.retry import RetryPolicy
    from streamcli.terminal_text import visible
    from streamcli.ui.progress import transfer_progress

    if name == "-":
        buffer: IO[bytes] | None = getattr(env.stdin, "buffer", None)
        if buffer is None:
            raise UsageError("standard input is not readable as bytes")
        stream = buffer
        size = None
        batch_id = new_batch_id()
    else:
        path = pathlib.Path(name)
        try:
            stream = open(path, "rb")  # noqa: SIM115 (closed below)
            stat = path.stat()
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
        size = stat.st_size
        batch_id = batch_id_for(path, stat.st_size, stat.st_mtime_ns, mapping, env.connection.token)

    def refused(refusal: Refusal) -> None:
        env.stderr.write(f"{visible(refusal.source)}:{refusal.line}: {visible(refusal.reason)}\n")
        if dead_letters is not None:
            dead_letters.write(ENCODER.encode(refusal.to_json()) + "\n")

    progress = transfer_progress(env.progress_console, count, records=True)
    with progress:
        progress.start(name, name, size)

        def advanced(records: int, size: int) -> None:
            progress.advance(name, size, records)  # (bytes of input: the bar of a file has its size)

        options = IngestOptions(
            on_refusal=refused,
            max_errors=max_errors,
            retry=RetryPolicy(retries=retries, notice=env.notice),
            notice=env.notice,
            on_progress=advanced,
        )
        parsed = read_records(stream, file_format, mapping)
        work: list[BatchIngest] = []

        async def core(conn: Connection) -> IngestResult:
            work.append(BatchIngest(conn, name, batch_id, parsed, options))
            return await work[0].run()

        def cut_short(exc: StreamcliError) -> StreamcliError | None:
            if not work:
                return None
            held = work[0].progress.acknowledged
            again = "run the same command again to resume" if name != "-" else "stdin cannot be resumed"
            return type(exc)(
                f"{exc.message}; the server holds the first {held} record(s) of {name} (batch {batch_id}); {again}"
            )

        try:
            return env.run(core, cut_short=cut_short)
        finally:
            progress.finish(name)
            if stream is not getattr(env.stdin, "buffer", None):
                stream.close()


def _print_results(env: Environment, results: list[IngestResult]) -> None:
    if env.json:
        for result in results:
            env.emit_json(result.to_json())
        return
    from rich.table import Table
    from rich.text import Text

    from streamcli.terminal_text import visible

    table = Table(box=None, header_style="bold")
    table.add_column("FILE")
    table.add_column("BATCH", no_wrap=True)
    for column in ("RECEIVED", "STORED", "REFUSED"):
        table.add_column(column, justify="right")
    for result in results:
        state = "" if result.batch.complete else " (incomplete)"
        table.add_row(
            Text(visible(result.source)),
            Text(visible(result.batch.batch_id) + state),
            str(result.batch.received + result.client_refused),
            str(result.batch.stored),
            str(result.refused),
        )
    env.console.print(table)
    for result in results:
        if result.batch.aggregates:
            _print_aggregates(env, result.batch)


def _print_aggregates(env: Environment, batch: BatchSummary) -> None:
    from rich.table import Table
    from rich.text import Text

    from streamcli.terminal_text import visible

    table = Table(box=None, header_style="bold", title=f"batch {visible(batch.batch_id)}", title_justify="left")
    table.add_column("KEY")
    for column in ("COUNT", "MIN", "MAX", "SUM", "MEAN"):
        table.add_column(column, justify="right")
    for a in batch.aggregates:
        table.add_row(Text(visible(a.key)), str(a.count), f"{a.min:g}", f"{a.max:g}", f"{a.sum:g}", f"{a.mean:g}")
    env.console.print(table)
    if batch.overflow_keys:
        env.stdout.write(f"(and {batch.overflow_keys} more keys, {batch.overflow_records} records, not detailed)\n")


@batch_app.command("ls")
def list_batches(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many batches, newest first.")] = 1000,
) -> None:
    """List batches, newest first (a user token's own; all with the service token).

    Examples:

      streamcli batch ls

      streamcli --json batch ls | jq -r .batch_id
    """
    from streamcli.client.batches import list_batches as fetch

    env = get_env(ctx)
    found = env.run(lambda conn: fetch(conn, limit))
    if env.json:
        for batch in found:
            env.emit_json(batch.to_json())
        return
    from rich.table import Table
    from rich.text import Text

    from streamcli.terminal_text import visible

    table = Table(box=None, header_style="bold")
    for column in ("BATCH", "CREATED (UTC)", "STORED", "REFUSED", "STATE", "SOURCE"):
        table.add_column(column, no_wrap=column != "SOURCE")
    for batch in found:
        table.add_row(
            Text(visible(batch.batch_id)),
            batch.created_at,
            str(batch.stored),
            str(batch.refused),
            "complete" if batch.complete else "incomplete",
            Text(visible(batch.source)),
        )
    env.console.print(table)


@batch_app.command("show")
def show_batch(
    ctx: typer.Context,
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id, or its start (unique, 4+ characters).")],
    errors: Annotated[int, typer.Option(min=0, max=100_000, help="Refused records to list (by index).")] = 100,
) -> None:
    """Show one batch: counts, per-key aggregates and refused records.

    Examples:

      streamcli batch show 3f2a9c

      streamcli --json batch show 3f2a9c --errors 1000
    """
    from streamcli.client.batches import get_batch
    from streamcli.terminal_text import visible

    env = get_env(ctx)
    detail: BatchDetail = env.run(lambda conn: get_batch(conn, batch_id, errors))
    if env.json:
        env.emit_json(detail.to_json())
        return
    batch = detail.batch
    for key, value in (
        ("batch", batch.batch_id),
        ("source", batch.source),
        ("owner", batch.owner),
        ("created", batch.created_at),
        ("state", "complete" if batch.complete else "incomplete"),
        ("received", batch.received),
        ("stored", batch.stored),
        ("refused", batch.refused),
    ):
        env.stdout.write(f"{key + ':':<10}{visible(str(value))}\n")
    env.stdout.flush()
    if batch.aggregates:
        _print_aggregates(env, batch)
    for index, reason in detail.errors[:errors]:
        env.stdout.write(f"record {index}: {visible(reason)}\n")


@batch_app.command("records")
def read_records(
    ctx: typer.Context,
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id, or its start (unique, 4+ characters).")],
) -> None:
    """Print the stored records of a batch as NDJSON (index, key, value, timestamp, payload).

    Examples:

      streamcli batch records 3f2a9c > records.ndjson
    """
    from streamcli.client.batches import batch_records

    env = get_env(ctx)

    async def core(conn: Connection) -> None:
        async for chunk in batch_records(conn, batch_id):
            for record in chunk:
                env.emit_json(record)

    env.run(core)


def register(app: typer.Typer) -> None:
    """Add the ``batch`` group to the tree."""
    app.add_typer(batch_app, name="batch")
