"""Builds, starts and stops the streamcli ``grpc.aio`` server.

``start_server`` returns a ``RunningServer`` (used by tests and by ``serve``);
``serve`` adds signal handling: the first SIGINT/SIGTERM drains gracefully
(health NOT_SERVING, no new calls, in-flight streams get ``grace`` seconds),
a second one exits at once. A backend whose store lives elsewhere (Redis) is watched while serving:
health says NOT_SERVING while the store cannot be reached and SERVING again once it answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import pathlib
import signal
import time
from collections.abc import Awaitable, Callable, Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from streamcli import transport
from streamcli.allocator import keep_freed_buffers
from streamcli.backends import open_backend
from streamcli.backends.base import Backend
from streamcli.backends.redis_backend import redis_url_for_logs
from streamcli.credentials import Credentials
from streamcli.errors import UnavailableError, UsageError
from streamcli.server.auth import BearerTokenInterceptor
from streamcli.server.decoding import DecodingBoundary
from streamcli.server.reflection import enable_documented_reflection
from streamcli.server.service import SERVICE_NAME, add_service
from streamcli.server.tokens import check_user_tokens, read_user_tokens, world_readable
from streamcli.services.batches import BatchService
from streamcli.services.chat import ChatService, ChatSettings
from streamcli.services.collab import CollabService
from streamcli.services.documents import DocumentSettings
from streamcli.services.events import STREAM as EVENTS_STREAM
from streamcli.services.events import EventService
from streamcli.services.files import FileService
from streamcli.services.ids import IdService
from streamcli.services.logs import LogSettings, Retention
from streamcli.services.metrics import DEFAULT_MAX_SERIES, DEFAULT_MINUTE_RETENTION, MetricService
from streamcli.services.notifications import STREAM as NOTIFICATIONS_STREAM
from streamcli.services.notifications import NotificationService
from streamcli.services.pacing import PacingSettings, TransferPacer
from streamcli.services.processing import ProcessingService
from streamcli.services.uploads import FileLimits
from streamcli.tls import check_pair, read_pem

log = logging.getLogger("streamcli.server")

#: Seconds between the checks that a backend's store answers (health follows them).
STORE_CHECK_INTERVAL = 1.0


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything ``streamcli serve`` can be told."""

    data_dir: pathlib.Path
    address: str = transport.DEFAULT_ADDRESS
    backend: str = "embedded"
    sync_every_commit: bool = False  # the embedded store syncs to the disk at every commit (survives power loss)
    grace: float = 10.0  # seconds in-flight calls get on shutdown
    token: str | None = None  # shared bearer token
    user_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)  # user -> token naming that user
    user_tokens_file: pathlib.Path | None = None  # more user tokens, NAME=TOKEN a line; read again on SIGHUP
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    tls_client_ca: pathlib.Path | None = None  # set: clients must present a cert it signed (mTLS)
    allow_insecure: bool = False  # allow a non-loopback bind without TLS (tokens then travel in clear text)
    max_file_size: int = 0  # bytes per stored file; 0 = no limit
    quota: int = 0  # bytes for all files in the data dir; 0 = no limit
    upload_ttl: float = 24 * 3600.0  # seconds an interrupted upload is kept for resuming
    heartbeat: float = 15.0  # seconds between heartbeats on idle log streams
    live_interval: float = 0.01  # a live tail sends at most one response per tick of this many seconds
    retention: Retention = dataclasses.field(default_factory=Retention)  # of the event and notification logs, batches
    housekeeping_interval: float = 30.0  # seconds between expiry and retention runs
    chat: ChatSettings = dataclasses.field(default_factory=ChatSettings)
    max_series: int = DEFAULT_MAX_SERIES  # metric series the server holds; new ones beyond go to an overflow series
    # Seconds per-minute metric sketches are kept (--since, trends); None: for ever. All-time ones are always kept.
    metric_retention: float | None = DEFAULT_MINUTE_RETENTION
    documents: DocumentSettings = dataclasses.field(default_factory=DocumentSettings)  # Collaborate's limits
    # How transfers yield to interactive calls (lag_target 0: never; services/pacing.py)
    pacing: PacingSettings = dataclasses.field(default_factory=PacingSettings)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def validate(self) -> None:
        """Refuse configurations that are unsafe or incomplete.

        Raises:
            UsageError: with a one-line explanation.
        """
        transport.parse_address(self.address)
        check_pair(self.tls_cert, self.tls_key, "--tls-cert", "--tls-key")
        if self.tls_client_ca is not None and not self.tls:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.token is not None and not self.token.strip():
            raise UsageError("the token is empty")
        check_user_tokens(self.user_tokens, "--user-token")
        self.all_user_tokens()  # the file's, when there is one, read and checked
        if self.grace < 0:
            raise UsageError("--grace must be zero or more seconds")
        if self.max_file_size < 0 or self.quota < 0:
            raise UsageError("--max-file-size and --quota must be zero (no limit) or more bytes")
        if self.backend.startswith("redis:") and self.sync_every_commit:
            raise UsageError(
                "--sync-every-commit is for the embedded store; on Redis, durability is Redis's own "
                "appendonly/appendfsync setting"
            )
        if self.max_series < 1:
            raise UsageError("--max-series must be at least 1")
        if self.metric_retention is not None and self.metric_retention < 60:
            raise UsageError("--metric-retention must be at least a minute (or none)")
        if self.upload_ttl <= 0:
            raise UsageError("--upload-ttl must be more than zero seconds")
        if self.heartbeat <= 0 or self.housekeeping_interval <= 0:
            raise UsageError("--heartbeat must be more than zero seconds")
        if not 0 <= self.live_interval <= 1:
            raise UsageError("--live-interval must be between 0 and 1 second")
        if not 0 <= self.pacing.lag_target <= 1:
            raise UsageError("--transfer-lag-target must be between 0 (no pacing) and 1 second")
        try:
            self.pacing.check()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not (self.tls or self.allow_insecure or transport.is_loopback_address(self.address)):
            # Without TLS a token would cross the network in clear text: it protects nothing there.
            if self.token or self.user_tokens or self.user_tokens_file:
                raise UsageError(
                    f"refusing to accept tokens without TLS on non-loopback address {self.address}: they would "
                    "cross the network in clear text; add --tls-cert/--tls-key, or pass --allow-insecure"
                )
            raise UsageError(
                f"refusing to listen on non-loopback address {self.address} without TLS; "
                "add --tls-cert/--tls-key (and --token), or pass --allow-insecure"
            )

    def all_user_tokens(self) -> dict[str, str]:
        """The user tokens of the flags and of the file (read now).

        Raises:
            UsageError: the file is unreadable or malformed, a user has a token in both places, or two
                tokens (or a user token and the service token) are the same.
        """
        users = dict(self.user_tokens)
        if self.user_tokens_file is not None:
            for name, token in read_user_tokens(self.user_tokens_file).items():
                if name in users:
                    raise UsageError(f"{name} has a token in --user-tokens {self.user_tokens_file} and --user-token")
                users[name] = token
        if len(set(users.values()) | {self.token}) < len(users) + 1:
            raise UsageError("every user token must be different from the others and from --token")
        return users


@dataclasses.dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    backend: Backend
    address: str  # the bound address, with the real port when 0 was asked for
    stopping: asyncio.Event  # set when shutdown begins; long-lived streams watch it
    housekeeping: list[asyncio.Task[None]]  # periodic background jobs
    chat: ChatService  # closed after the calls end: stores the last leave messages
    credentials: Credentials
    config: ServerConfig
    pacer: TransferPacer  # paces transfers while interactive calls are open (its counters say what it did)

    def reload_user_tokens(self) -> None:
        """Read ``--user-tokens FILE`` again (on SIGHUP); a file that fails keeps the tokens in force."""
        if self.config.user_tokens_file is None:
            log.info("SIGHUP: no --user-tokens file to read again")
            return
        try:
            users = self.config.all_user_tokens()
        except UsageError as exc:
            log.error("SIGHUP: keeping the user tokens in force: %s", exc)
            return
        self.credentials.replace_users(users)
        log.info("SIGHUP: %d user tokens from %s and the flags", len(users), self.config.user_tokens_file)

    async def stop(self, grace: float | None) -> None:
        """Go NOT_SERVING, refuse new calls, give in-flight calls ``grace`` seconds.

        Log streams (tails, chat) end at once with UNAVAILABLE naming the id to
        resume after; their clients reconnect elsewhere or later. Stopping twice is harmless.
        """
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.backend.log.release_readers()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.chat.close()
        await self.pacer.close()
        for task in self.housekeeping:
            task.cancel()
        await asyncio.gather(*self.housekeeping, return_exceptions=True)
        await self.backend.close()


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    cert = read_pem(config.tls_cert, "TLS certificate")
    key = read_pem(config.tls_key, "TLS key")
    client_ca = read_pem(config.tls_client_ca, "client CA") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def start_server(config: ServerConfig) -> RunningServer:
    """Validate ``config``, open the backend, bind and start serving.

    Raises:
        UsageError: the configuration is refused.
        UnavailableError: the address cannot be bound (e.g. the port is taken).
    """
    config.validate()
    credentials = _credentials(config)
    credentials_ = Credentials(config.token, config.all_user_tokens(), required=config.user_tokens_file is not None)
    if config.user_tokens_file is not None and world_readable(config.user_tokens_file):
        log.warning("--user-tokens %s is readable by every user of this machine", config.user_tokens_file)
    # The token is checked first: a caller without one learns nothing else, not even a decoding error.
    interceptors = [BearerTokenInterceptor(credentials_)] if credentials_.enabled else []
    interceptors.append(DecodingBoundary())
    server = grpc.aio.server(interceptors=interceptors, options=transport.server_options())
    backend = open_backend(config.backend, config.data_dir, sync_every_commit=config.sync_every_commit)
    try:
        if backend.ready is not None:
            await backend.ready()
        port = _bind(server, config.address, credentials)
        address = f"{transport.parse_address(config.address)[0]}:{port}"
        stopping = asyncio.Event()
        log_settings = LogSettings(config.heartbeat, config.retention, config.live_interval)
        pacer = TransferPacer(config.pacing)
        notifications = NotificationService(backend.log, log_settings, stopping, credentials_)
        events = EventService(backend.log, log_settings, stopping, credentials_)
        files = FileService(
            backend,
            FileLimits(config.max_file_size, config.quota, config.upload_ttl),
            public_address=address,
            notifications=notifications,
            credentials=credentials_,
            pacer=pacer,
        )
        chat = ChatService(backend, log_settings, config.chat, stopping, notifications, credentials_)
        batches = BatchService(backend.log, backend.metadata, notifications, credentials_)
        metrics = MetricService(
            backend.metrics, credentials_, config.max_series, config.metric_retention, backend.presence
        )
        await metrics.load()
        collab = CollabService(backend, log_settings, stopping, credentials_, config.documents)
        ids = IdService(backend.metadata, credentials_)
        domains = [files, events, notifications, chat, batches, metrics, ProcessingService(), collab, ids]
        # Calls are counted for the pacer only when it may pace (a server that does not, costs nothing per call).
        add_service(server, domains, pacer=pacer if config.pacing.lag_target else None)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_documented_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        # Before start: no probe may see SERVICE_UNKNOWN.
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        await server.start()
    except BaseException:
        await backend.close()
        raise
    interval = min(config.housekeeping_interval, config.upload_ttl / 4)

    async def apply_retention() -> None:
        for stream in (EVENTS_STREAM, NOTIFICATIONS_STREAM):
            await backend.log.trim(
                stream,
                older_than=time.time() - config.retention.max_age if config.retention.max_age else None,
                keep_last=config.retention.max_count,
            )
            await backend.log.forget_producers(stream, time.time() - config.retention.producer_idle_limit)
        await batches.expire(config.retention)
        await metrics.expire(config.retention)

    housekeeping = [
        asyncio.create_task(_every(interval, files.expire_uploads)),
        asyncio.create_task(_every(config.housekeeping_interval, apply_retention)),
    ]
    if backend.ready is not None:
        housekeeping.append(asyncio.create_task(_watch_store(backend.ready, health_servicer)))
    return RunningServer(
        server, health_servicer, backend, address, stopping, housekeeping, chat, credentials_, config, pacer
    )


async def _every(interval: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` now and then every ``interval`` seconds; log its failures, never stop."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("housekeeping job %s failed", getattr(job, "__qualname__", job))
        await asyncio.sleep(interval)


async def _watch_store(check: Callable[[], Awaitable[None]], health_servicer: health.aio.HealthServicer) -> None:
    """Health NOT_SERVING while ``check`` (the backend's ``ready``) fails, SERVING again once it passes:
    a load balancer then sends calls elsewhere while this replica's store is away, and back by itself."""
    serving = True
    while True:
        await asyncio.sleep(STORE_CHECK_INTERVAL)
        try:
            await check()
        except Exception as exc:  # UnavailableError, or whatever else keeps the store from answering
            if serving:
                log.warning("%s; health NOT_SERVING until it answers", exc)
                serving = False
                await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
            continue
        if not serving:
            log.warning("the backend's store answers again; health SERVING")
            serving = True
            await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)


async def _set_health(health_servicer: health.aio.HealthServicer, status: int) -> None:
    """``status`` for the server and for StreamingService (ignored once a shutdown began)."""
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise UnavailableError(f"cannot listen on {address}: the address is in use or not available")
    return port


#: The collector's thresholds in the server (Python's defaults: 700, 10, 10). Streams allocate and
#: free objects all the time, nearly all freed by reference counting; with the defaults a full
#: pass (a stall of every stream for as long as it walks every long-lived object) came a few times a
#: second under bench/chat.py's load. Fewer, larger young passes cost the same in all.
GC_THRESHOLDS = (5000, 20, 50)


async def serve(config: ServerConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully (a second signal exits at once).

    ``on_ready`` is told the bound address (the real port when 0 was asked for) once the server serves.
    """
    # Transfer buffers (1 MiB each) reused instead of faulted in again for every chunk (allocator.py); set
    # before the server's threads start, as they take their heaps.
    keep_freed_buffers(os.environ)
    running = await start_server(config)
    # What exists now lives as long as the server: keep it out of the collector's full passes,
    # which otherwise walk every module, descriptor and handler object (gen-2 passes of 26-34 ms
    # were seen in bench/chat.py, each a stall of every stream).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info(
        "listening on %s (backend %s, data dir %s, TLS %s, auth %s)",
        running.address,
        redis_url_for_logs(config.backend),
        config.data_dir,
        "on" if config.tls else "off",
        "tokens" if running.credentials.enabled else "off",
    )
    if on_ready is not None:
        try:
            on_ready(running.address)
        except BaseException:  # e.g. the ready file cannot be written: nobody would know the server is up
            await running.stop(0)
            raise
    loop = asyncio.get_running_loop()
    first_signal = asyncio.Event()

    def on_signal(signum: int) -> None:
        if first_signal.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(128 + signum)
        log.info("%s: shutting down (grace %.1fs; signal again to exit now)", signal.Signals(signum).name, config.grace)
        first_signal.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, running.reload_user_tokens)
    try:
        await first_signal.wait()
        await running.stop(config.grace)
        log.info("stopped")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
