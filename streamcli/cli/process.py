"""``streamcli process``: windowed statistics and anomalies of a stream of numbers, live (ProcessLiveData)."""

from __future__ import annotations

import pathlib
import re
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.cli.parsing import parse_duration
from streamcli.errors import ExitStatus, Interrupted, StreamcliError, UsageError

if TYPE_CHECKING:
    from streamcli.client.connection import Connection
    from streamcli.client.processing import LiveOptions, LiveResult, LiveSummary

_COUNT = re.compile(r"\d+")


def process(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(metavar="[FILE|-]", help="NDJSON inputs or plain numbers, one a line; - for stdin.")
    ] = "-",
    window: Annotated[
        str,
        typer.Option(
            help="The window per key: a number of inputs (at most 10000), or a duration of the inputs' time (30s, "
            "5m), where an input without a timestamp takes the time the server received it."
        ),
    ] = "10",
    z: Annotated[float, typer.Option("--z", help="Anomaly threshold, in standard deviations (over 0).")] = 3.0,
    in_flight: Annotated[
        int, typer.Option("--in-flight", min=1, help="Inputs sent and not yet answered, at most.")
    ] = 10_000,
    anomalies_only: Annotated[bool, typer.Option("--anomalies-only", help="Print only the anomalies.")] = False,
) -> None:
    """Process numbers as they flow: per key, a moving average, min, max, standard deviation, the z-score of each
    input against the window before it, and anomalies.

    Input lines are [cyan]{"key", "value", "timestamp"?}[/cyan] (RFC 3339) or plain numbers (key
    [cyan]default[/cyan]). One line is printed per result as it comes back (with --json, one object); an
    input whose time is before its key's latest is marked late (scored, not added to the window). Lines that
    are not inputs and inputs the server refuses are named on stderr as [cyan]FILE:LINE: reason[/cyan];
    a summary follows at the end. Exit 0, or 12 when some inputs were refused.

    Examples:

      streamcli process readings.ndjson --window 100

      tail -f app.log | jq -c '{key: .host, value: .latency}' | streamcli process --anomalies-only

      seq 1 100 | streamcli --json process --window 30s
    """
    from streamcli.client.processing import LiveOptions, input_lines

    env = get_env(ctx)
    if not z > 0 or z == float("inf"):
        raise UsageError(f"--z {z}: the threshold must be a positive number")
    if _COUNT.fullmatch(window.strip()):
        count = int(window)
        if not 1 <= count <= 10_000:
            raise UsageError(f"--window {window}: a number of inputs must be 1 to 10000")
        options = LiveOptions(window=count, z=z, in_flight=in_flight)
    else:
        seconds = parse_duration(window)
        if seconds <= 0:
            raise UsageError(f"--window {window}: a duration must be positive")
        options = LiveOptions(window_seconds=seconds, z=z, in_flight=in_flight)
    if source == "-":
        stream: IO[Any] = env.stdin
    else:
        try:
            stream = open(pathlib.Path(source), "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        summary = _run(env, source, input_lines(stream), options, anomalies_only)
    finally:
        if source != "-":
            stream.close()
    env.notice(summary.text())
    if summary.refused:
        raise typer.Exit(int(ExitStatus.REFUSED_RECORDS))


def _run(env: Environment, source: str, lines: Any, options: LiveOptions, anomalies_only: bool) -> LiveSummary:
    from streamcli.client.jsontext import ENCODER
    from streamcli.client.processing import LiveProcess
    from streamcli.terminal_text import visible
    from streamcli.ui.processing import result_line

    out = env.stdout
    name = "stdin" if source == "-" else source
    colour = env.stdout_isatty and not env.no_color

    def show(results: list[LiveResult]) -> None:
        shown = [r for r in results if r.anomaly] if anomalies_only else results
        if not shown:
            return
        if env.json:
            out.write("".join(ENCODER.encode(r.to_json()) + "\n" for r in shown))
        elif colour:
            from rich.text import Text

            for r in shown:
                env.console.print(Text(result_line(r), style="bold red" if r.anomaly else ""))
        else:
            out.write("".join(result_line(r) + "\n" for r in shown))
        out.flush()

    def refused(line: int, reason: str) -> None:
        env.stderr.write(f"{visible(name)}:{line}: {visible(reason)}\n")

    work: list[LiveProcess] = []

    async def core(conn: Connection) -> LiveSummary:
        work.append(LiveProcess(conn, name, lines, options, show, refused))
        return await work[0].run()

    try:
        return env.run(core)
    except (Interrupted, StreamcliError) as exc:
        if not work:
            raise
        raise type(exc)(f"{exc.message}; {work[0].summary.text()}") from exc


def register(app: typer.Typer) -> None:
    """Add the ``process`` command to the tree."""
    app.command("process")(process)


__all__ = ["register"]
