"""``streamcli metrics``: push samples (NDJSON or Prometheus text), list series, show one with its distribution."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.cli.parsing import parse_since
from streamcli.errors import ExitStatus, NotFoundError, StreamcliError, UsageError

if TYPE_CHECKING:
    from streamcli.client.batches import Refusal
    from streamcli.client.connection import Connection
    from streamcli.client.metrics import PushResult, SeriesSummary
    from streamcli.client.records import Parsed

#: Default of --retries (about 3 minutes, as uploads and batches).
RETRIES = 25

metrics_app = typer.Typer(
    help="Push metric samples and read each series' count, mean and quantiles.",
    epilog=(
        "Examples:\n\n  streamcli metrics push samples.ndjson\n\n"
        "  curl -s localhost:9100/metrics | streamcli metrics push -\n\n"
        "  streamcli metrics show http_request_seconds --label route=/api"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)

SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        show_default=False,
        help="Only samples since then: a duration back from now (90m, 2h, 7d) or a time (RFC 3339), counted in "
        "whole minutes.",
    ),
]


@metrics_app.command("push")
def push(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="[FILE|-]", help="NDJSON or Prometheus text; - for stdin.")] = "-",
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format", show_default=False, help="ndjson or prometheus. [default: NDJSON when the input starts '{']"
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Retries with backoff after the server or network goes away.")
    ] = RETRIES,
) -> None:
    """Push metric samples; print each series they went to (all time).

    NDJSON carries one [cyan]{"name", "value", "labels", "timestamp"}[/cyan] a line
    (labels and timestamp optional; the time RFC 3339 or seconds since the
    epoch); Prometheus text is read with prometheus_client's parser. Every
    refused sample is named on stderr as [cyan]FILE:LINE: reason[/cyan]; the others
    are counted. Exit 0 when every sample was taken, 12 when some were refused.

    A file's push is resumable: running the same command again after Ctrl-C, a
    lost network or a server restart sends only what the server does not hold.

    Examples:

      streamcli metrics push samples.ndjson

      curl -s localhost:9100/metrics | streamcli metrics push - --format prometheus
    """
    import sys

    from streamcli.client.metric_records import detect, read_samples
    from streamcli.client.metrics import in_lists, new_push_id, push_id_for

    env = get_env(ctx)
    if source == "-":
        stream: IO[bytes] = getattr(env.stdin, "buffer", None) or sys.stdin.buffer
        size = None
        push_id = new_push_id()
    else:
        path = pathlib.Path(source)
        try:
            stream = open(path, "rb")  # noqa: SIM115 (closed below)
            stat = path.stat()
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
        size = stat.st_size
        push_id = push_id_for(path, stat.st_size, stat.st_mtime_ns, env.connection.token)
    try:
        chosen, lines = detect(stream, file_format)
        batches = in_lists(read_samples(lines, chosen))
        result = _push(env, source, push_id, batches, size, retries, resumable=source != "-")
    finally:
        if source != "-":
            stream.close()
    _print_result(env, result)
    if result.refused_count:
        raise typer.Exit(int(ExitStatus.REFUSED_RECORDS))


def _push(
    env: Environment,
    source: str,
    push_id: str,
    batches: AsyncIterator[Sequence[Parsed[Any]]],
    size: int | None,
    retries: int,
    *,
    resumable: bool,
    ack_seconds: float = 60.0,
) -> PushResult:
    from streamcli.client.metrics import MetricPush, PushOptions
    from streamcli.client.retry import RetryPolicy
    from streamcli.terminal_text import visible
    from streamcli.ui.progress import transfer_progress

    def refused(refusal: Refusal) -> None:
        env.stderr.write(f"{visible(refusal.source)}:{refusal.line}: {visible(refusal.reason)}\n")

    progress = transfer_progress(env.progress_console, 1)
    with progress:
        progress.start(source, source, size)
        options = PushOptions(
            on_refusal=refused,
            retry=RetryPolicy(retries=retries, notice=env.notice),
            notice=env.notice,
            on_progress=lambda samples, read: progress.advance(source, read),
            ack_seconds=ack_seconds,
        )
        work: list[MetricPush] = []

        async def core(conn: Connection) -> PushResult:
            work.append(MetricPush(conn, source, push_id, batches, options))
            return await work[0].run()

        def cut_short(exc: StreamcliError) -> StreamcliError | None:
            if not work:
                return None
            again = "run the same command again to resume" if resumable else "it cannot be resumed"
            return type(exc)(f"{exc.message}; the server holds the first {work[0].held} sample(s) of {source}; {again}")

        try:
            return env.run(core, cut_short=cut_short)
        finally:
            progress.finish(source)


@metrics_app.command("sample")
def sample(
    ctx: typer.Context,
    interval: Annotated[str, typer.Option(help="Time between samples (e.g. 1s, 500ms).")] = "1s",
    duration: Annotated[str, typer.Option(help="How long to sample (e.g. 30s, 1h); 0 samples until Ctrl-C.")] = "30s",
    retries: Annotated[
        int, typer.Option(min=0, help="Retries with backoff after the server or network goes away.")
    ] = RETRIES,
) -> None:
    """Sample this machine (CPU, memory, load, disk and network, with psutil) and stream it live.

    Every --interval, one round of samples labelled with this host's name;
    disk and network are rates over the round. Ctrl-C ends sampling cleanly:
    what was sampled is sent and the summary printed. A lost server is retried
    without losing or doubling a sample.

    Examples:

      streamcli metrics sample --interval 1s --duration 30s

      streamcli metrics sample --duration 0            # until Ctrl-C
    """
    import asyncio

    from streamcli.cli.parsing import parse_duration
    from streamcli.client.metrics import new_push_id
    from streamcli.client.sampler import machine_rounds

    env = get_env(ctx)
    every, total = parse_duration(interval), parse_duration(duration)
    if every <= 0:
        raise UsageError("--interval must be more than zero")
    stop = asyncio.Event()

    async def rounds() -> AsyncIterator[Sequence[Parsed[Any]]]:
        # Ctrl-C while sampling ends the sampling (the push then finishes); at any other time it interrupts.
        with env.ctrl_c_ends(stop):
            env.notice(
                f"sampling this machine every {interval}" + (f" for {duration}" if total else "") + "; Ctrl-C ends"
            )
            async for batch in machine_rounds(every, total or None, stop):
                yield batch

    result = _push(env, "sample", new_push_id(), rounds(), None, retries, resumable=False, ack_seconds=30.0)
    _print_result(env, result)


def _print_result(env: Environment, result: PushResult) -> None:
    if env.json:
        env.emit_json(result.to_json())
        return
    from streamcli.ui.metrics import series_table

    line = f"{result.sent} sent, {result.accepted} accepted"
    if result.overflowed:
        line += f" ({result.overflowed} into the overflow series)"
    if result.refused_count:
        reasons = [f"{n} {reason}" for reason, n in result.refused]
        reasons += [f"{result.client_refused} unreadable"] if result.client_refused else []
        line += f", {result.refused_count} refused ({', '.join(reasons)})"
    env.stdout.write(line + "\n")
    env.stdout.flush()
    if result.series:
        env.console.print(series_table(result.series))


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {pair!r}: use KEY=VALUE")
        labels[key] = value
    return labels


@metrics_app.command("ls")
def list_series(
    ctx: typer.Context,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many series.")] = 10_000,
) -> None:
    """List metric series (a user token's own; every owner's with the service token) with count, min, mean,
    p50, p90, p99 and max; --json for NDJSON.

    Quantiles are within 1% of the exact values, all time or since --since.

    Examples:

      streamcli metrics ls

      streamcli --json metrics ls --since 1h | jq -r 'select(.p99 > 1) | .name'
    """
    from streamcli.client.metrics import list_series as fetch

    env = get_env(ctx)
    start = parse_since(since)
    found = env.run(lambda conn: fetch(conn, since=start, limit=limit, notice=env.notice))
    _print_series(env, found)


def _print_series(env: Environment, found: list[SeriesSummary]) -> None:
    if env.json:
        for series in found:
            env.emit_json(series.to_json())
        return
    from streamcli.ui.metrics import series_table

    env.console.print(series_table(found))


@metrics_app.command("show")
def show_series(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The metric name.")],
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", metavar="KEY=VALUE", help="Only series with this label.")
    ] = None,
    since: SinceOption = None,
    show_trend: Annotated[
        bool,
        typer.Option(
            "--trend/--no-trend",
            help="Ask for each series' trend over the window (--since to now; without it, from the oldest minute "
            "the server keeps) in up to 60 steps, and draw its p50, p99 and count when two steps or more hold "
            'samples; with --json, each series\' "trend".',
        ),
    ] = True,
) -> None:
    """Show the series of one metric: the table, and pictures of each one's distribution and trend.

    Examples:

      streamcli metrics show http_request_seconds

      streamcli metrics show cpu.percent --label cpu=0 --since 10m
    """
    from streamcli.client.metrics import list_series as fetch
    from streamcli.terminal_text import visible
    from streamcli.ui.metrics import PICTURE_QUANTILES, TREND_POINTS, distribution, has_trend, trend

    env = get_env(ctx)
    labels = _labels(label or [])
    start = parse_since(since)
    points = TREND_POINTS if show_trend else 0
    found = env.run(
        lambda conn: fetch(
            conn,
            name=name,
            labels=labels,
            since=start,
            quantiles=PICTURE_QUANTILES,
            trend_points=points,
            notice=env.notice,
        )
    )
    if not found:
        raise NotFoundError(
            f"no series {visible(name)}" + (" with those labels" if labels else "") + " (see metrics ls)"
        )
    _print_series(env, found)
    if env.json:
        return
    for series in found[:20]:
        env.console.print()
        env.console.print(distribution(series))
        if has_trend(series):
            env.console.print()
            env.console.print(trend(series))


def register(app: typer.Typer) -> None:
    """Add the ``metrics`` group to the tree."""
    app.add_typer(metrics_app, name="metrics")
