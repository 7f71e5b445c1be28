"""``streamcli serve``: run the streaming server."""

from __future__ import annotations

import enum
import logging
import os
import pathlib
from typing import Annotated

import typer

from streamcli.cli.environment import get_env
from streamcli.cli.parsing import parse_duration, parse_retention, parse_size
from streamcli.errors import UsageError


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def serve(
    ctx: typer.Context,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            "-a",
            show_default=False,
            help=("HOST:PORT to listen on (port 0 picks a free one). [default: the global --address, 127.0.0.1:50051]"),
        ),
    ] = None,
    data_dir: Annotated[
        pathlib.Path | None,
        typer.Option(
            envvar="STREAMCLI_DATA_DIR",
            file_okay=False,
            show_default=False,
            help=(
                "Where the embedded store keeps its database and files."
                " [default: the user data dir, e.g. ~/.local/share/streamcli]"
            ),
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            envvar="STREAMCLI_BACKEND",
            help="Storage backend: 'embedded' (SQLite + data dir), or redis://HOST:PORT/DB: logs and metadata in "
            "Redis, shared by every replica on it (file bytes stay in --data-dir, which the replicas share, "
            "and --quota counts for all of them together).",
        ),
    ] = "embedded",
    sync_every_commit: Annotated[
        bool,
        typer.Option(
            "--sync-every-commit",
            envvar="STREAMCLI_SYNC_EVERY_COMMIT",
            help="Embedded store: sync to the disk at every commit, so that what the server acknowledged "
            "survives power loss and OS crashes too. Without it, a crash of the server process loses "
            "nothing acknowledged, and a power cut can lose about the last second. Each commit then waits "
            "for the disk (see README, Durability).",
        ),
    ] = False,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight calls get to finish on SIGINT/SIGTERM.")
    ] = 10.0,
    token: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help=(
                "Require 'authorization: Bearer TOKEN' on every call except health."
                " [default: the global --token / STREAMCLI_TOKEN]"
            ),
        ),
    ] = None,
    user_tokens: Annotated[
        list[str] | None,
        typer.Option(
            "--user-token",
            show_default=False,
            help="NAME=TOKEN: a user token. Its holder acts as NAME and reaches only NAME's events, notifications "
            "and files (and files posted in rooms NAME joined); chat uses NAME whatever --user says. Repeatable.",
        ),
    ] = None,
    user_tokens_file: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--user-tokens",
            envvar="STREAMCLI_USER_TOKENS",
            dir_okay=False,
            show_default=False,
            help="File of user tokens, one NAME=TOKEN a line ('#' comments), for many users; read again on "
            "SIGHUP (a file that fails to read keeps the tokens in force). Calls then always need a token.",
        ),
    ] = None,
    tls_cert: Annotated[
        pathlib.Path | None,
        typer.Option(
            envvar="STREAMCLI_TLS_CERT",
            dir_okay=False,
            show_default=False,
            help="PEM server certificate (enables TLS).",
        ),
    ] = None,
    tls_key: Annotated[
        pathlib.Path | None,
        typer.Option(envvar="STREAMCLI_TLS_KEY", dir_okay=False, show_default=False, help="PEM key of --tls-cert."),
    ] = None,
    tls_client_ca: Annotated[
        pathlib.Path | None,
        typer.Option(
            envvar="STREAMCLI_TLS_CLIENT_CA",
            dir_okay=False,
            show_default=False,
            help="Require client certificates signed by this PEM CA (mTLS).",
        ),
    ] = None,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            "--allow-insecure",
            help="Allow a non-loopback address without TLS (a --token would then travel in clear text).",
        ),
    ] = False,
    max_file_size: Annotated[
        str,
        typer.Option(envvar="STREAMCLI_MAX_FILE_SIZE", help="Largest file accepted (e.g. 2G); 0 = no limit."),
    ] = "0",
    quota: Annotated[
        str,
        typer.Option(envvar="STREAMCLI_QUOTA", help="Total size of all stored files (e.g. 100G); 0 = no limit."),
    ] = "0",
    max_series: Annotated[
        int,
        typer.Option(
            envvar="STREAMCLI_MAX_SERIES",
            min=1,
            help="Metric series the server holds (every user's); samples of new series beyond it go to an "
            "overflow series.",
        ),
    ] = 100_000,
    metric_retention: Annotated[
        str,
        typer.Option(
            envvar="STREAMCLI_METRIC_RETENTION",
            help="How long each metric series keeps its per-minute aggregates (what --since and trends read), "
            "e.g. 30d, or none (for ever). Each series' all-time aggregate is kept for ever; a --since before "
            "what is kept counts from the oldest minute kept.",
        ),
    ] = "30d",
    upload_ttl: Annotated[
        str,
        typer.Option(envvar="STREAMCLI_UPLOAD_TTL", help="How long an interrupted upload stays resumable (e.g. 24h)."),
    ] = "24h",
    heartbeat: Annotated[
        float,
        typer.Option(min=0.05, help="Seconds between heartbeats on idle tail and chat streams."),
    ] = 15.0,
    live_interval: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="A live tail sends at most one response per tick of this many seconds: what is published "
            "meanwhile rides in the next one (an event after a quiet spell goes out at once). 0 = a response "
            "per append.",
        ),
    ] = 0.01,
    event_retention: Annotated[
        str,
        typer.Option(
            envvar="STREAMCLI_EVENT_RETENTION",
            help="What the event and notification logs keep: an age (7d), a record count (100000), both "
            "(7d,100000) or none. Readers behind what is trimmed get OUT_OF_RANGE.",
        ),
    ] = "30d",
    chat_backlog: Annotated[
        int, typer.Option(min=0, help="Chat messages a joining client gets when it does not say how many.")
    ] = 50,
    chat_rate: Annotated[
        float, typer.Option(min=0.1, help="Chat messages per second one user may send to a room (bursts of 20).")
    ] = 5.0,
    stall_limit: Annotated[
        float,
        typer.Option(min=1.0, help="Seconds a chat client may stop reading before it is disconnected (it can resume)."),
    ] = 30.0,
    transfer_lag_target: Annotated[
        str,
        typer.Option(
            envvar="STREAMCLI_TRANSFER_LAG_TARGET",
            help="While interactive calls (chat, tails, ...) are open, file transfers yield to them: they are "
            "slowed down whenever the server's event loop runs later than this (e.g. 5ms), never below 4 MiB/s "
            "in all. Lower keeps chats and tails quicker and transfers slower; 0 = never slow transfers down.",
        ),
    ] = "5ms",
    ready_file: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--ready-file",
            dir_okay=False,
            show_default=False,
            help='Once serving, write {"address", "host", "port"} as JSON to this file (atomically: complete '
            "when it appears; the real port when --address asked for 0); removed when the server stops.",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(envvar="STREAMCLI_LOG_LEVEL", case_sensitive=False, help="Log verbosity (logs go to stderr)."),
    ] = LogLevel.info,
) -> None:
    """Run the gRPC streaming server until SIGINT/SIGTERM.

    Serves [bold]streaming.v1.StreamingService[/bold], the standard health service and
    server reflection (grpcurl and buf curl work without the proto). The first
    signal drains gracefully; a second one exits at once. Once serving,
    [cyan]--json[/cyan] prints {"address", "host", "port"} on stdout (the real port when
    --address asked for 0), as [cyan]--ready-file[/cyan] writes it to a file.

    Examples:

      streamcli serve

      streamcli serve --address 0.0.0.0:50051 --tls-cert cert.pem --tls-key key.pem --token s3cret

      streamcli --json serve --address 127.0.0.1:0 | head -1 | jq .port

      streamcli serve --address 127.0.0.1:0 --ready-file /tmp/serve.json

      grpcurl -plaintext 127.0.0.1:50051 list
    """
    env = get_env(ctx)
    level = getattr(logging, log_level.value.upper())
    logging.basicConfig(
        stream=env.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    if level <= logging.DEBUG:
        os.environ["GRPC_VERBOSITY"] = "DEBUG"  # main() silences gRPC's C core otherwise

    import asyncio

    import platformdirs

    from streamcli.client.jsontext import ENCODER
    from streamcli.server.app import ServerConfig
    from streamcli.server.app import serve as run_server
    from streamcli.services.chat import ChatSettings
    from streamcli.services.logs import Retention
    from streamcli.services.pacing import PacingSettings

    if address is None and "," in env.connection.address:
        raise UsageError(
            f"the global --address (or STREAMCLI_ADDRESS) {env.connection.address} names several servers, "
            "and serve listens on one: give serve --address HOST:PORT"
        )
    named_tokens = {}
    for item in user_tokens or []:
        name, separator, secret = item.partition("=")
        if not separator:
            raise UsageError(f"--user-token {item!r}: expected NAME=TOKEN")
        if name in named_tokens:
            raise UsageError(f"--user-token {name}=...: {name} has a token already")
        named_tokens[name] = secret
    config = ServerConfig(
        data_dir=data_dir or pathlib.Path(platformdirs.user_data_dir("streamcli")),
        address=address or env.connection.address,
        backend=backend,
        sync_every_commit=sync_every_commit,
        grace=grace,
        token=token if token is not None else env.connection.token,
        user_tokens=named_tokens,
        user_tokens_file=user_tokens_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        allow_insecure=allow_insecure,
        max_file_size=parse_size(max_file_size),
        quota=parse_size(quota),
        max_series=max_series,
        metric_retention=None if metric_retention.strip().lower() == "none" else parse_duration(metric_retention),
        upload_ttl=parse_duration(upload_ttl),
        heartbeat=heartbeat,
        live_interval=live_interval,
        retention=Retention(*parse_retention(event_retention)),
        chat=ChatSettings(backlog=chat_backlog, rate=chat_rate, stall_limit=stall_limit),
        pacing=PacingSettings(lag_target=parse_duration(transfer_lag_target)),
    )

    def ready(bound: str) -> None:
        host, _, port = bound.rpartition(":")
        line = {"address": bound, "host": host.strip("[]"), "port": int(port)}
        if ready_file is not None:
            write_atomically(ready_file, ENCODER.encode(line) + "\n")
        if env.json:
            env.emit_json(line)

    try:
        asyncio.run(run_server(config, on_ready=ready))
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # a stopped server is not ready


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees nothing or all of it: a temporary file beside it,
    flushed to disk, then renamed into place."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as temporary:
        try:
            temporary.write(text)
            temporary.flush()
            os.fsync(temporary.fileno())
            os.replace(temporary.name, path)
        except BaseException:
            os.unlink(temporary.name)
            raise


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the tree."""
    app.command(no_args_is_help=False)(serve)
