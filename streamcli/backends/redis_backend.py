"""The Redis backend: logs and metadata in one Redis database shared by replicas, file bytes in a directory.

``open_redis`` builds it from ``redis://HOST:PORT/DB``: one client (a connection pool) for ordinary
commands and a second pool whose connections are each held by one blocked ``XREAD`` (see
``redis_log.py``). Nothing connects until ``ready`` or the first command; ``ready`` says at start-up
whether Redis answers.

Metric series and sketches are on Redis too (``redis_metrics.py``), and so are the storage quota's counts
(``redis_space.py``). What the services keep that is ephemeral but must be the same on every
replica is on Redis too (``redis_ephemeral.py``): presence as leases (chat room members and the
one-session-per-user rule, collaboration editors, the one stream writing an upload or sending a named
metric push) and signals by pub/sub, never stored (TYPING, collaboration cursors and presence), on one
subscriber connection per replica taken from the waits' pool.
"""

from __future__ import annotations

import pathlib
import urllib.parse

import redis.asyncio as aioredis
import redis.exceptions

from streamcli.backends.base import Backend, StoreUnavailableError
from streamcli.backends.blobs import DirectoryBlobStore
from streamcli.backends.redis_ephemeral import RedisPresence, RedisSignals
from streamcli.backends.redis_log import Commands, RedisLog
from streamcli.backends.redis_metadata import RedisMetadata
from streamcli.backends.redis_metrics import RedisMetrics
from streamcli.backends.redis_space import RedisSpace
from streamcli.errors import UnavailableError, UsageError

#: Seconds an ordinary command may take, connecting included, before it fails.
COMMAND_TIMEOUT = 10.0


def parse_redis_url(url: str) -> tuple[str, int, int]:
    """(host, port, db) of ``redis://HOST[:PORT][/DB]``.

    Raises:
        UsageError: anything else.
    """
    parts = urllib.parse.urlsplit(url)
    problem = f"--backend {redis_url_for_logs(url)!r}: expected redis://HOST:PORT/DB"
    if parts.scheme != "redis" or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(problem)
    try:
        port = parts.port or 6379
    except ValueError:
        raise UsageError(problem) from None
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit() or "/" in db_text:
        raise UsageError(f"{problem} (DB is a database number, e.g. 0)")
    return parts.hostname, port, int(db_text)


def redis_url_for_logs(url: str) -> str:
    """``url`` without its password, if it has one."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


class RedisConnections:
    """The two pools of one Redis database: what ``Backend.close`` closes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.commands = Commands.from_url(url, socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT)
        # No socket timeout: a blocked XREAD is silent for as long as it blocks (RedisLog sets each read's),
        # and so is the connection that receives signals (RedisSignals).
        self.waits = aioredis.ConnectionPool.from_url(url, socket_connect_timeout=COMMAND_TIMEOUT)

    async def ready(self) -> None:
        """Raises UnavailableError unless Redis answers."""
        try:
            await self.commands.ping()
        except StoreUnavailableError as exc:
            raise UnavailableError(f"cannot reach Redis at {redis_url_for_logs(self.url)}: {exc.__cause__}") from None
        except redis.exceptions.ResponseError as exc:
            raise UsageError(f"Redis at {redis_url_for_logs(self.url)} refused: {exc}") from None

    async def close(self) -> None:
        await self.commands.aclose()
        await self.waits.disconnect()


def open_redis(url: str, data_dir: pathlib.Path) -> Backend:
    """The Redis backend of ``url``, its file bytes under ``data_dir/blobs`` (a directory replicas share).

    Raises:
        UsageError: the URL is not ``redis://HOST:PORT/DB`` or the data dir cannot be used.
    """
    parse_redis_url(url)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        blobs = DirectoryBlobStore(data_dir / "blobs")
    except OSError as exc:
        raise UsageError(f"cannot use data dir {data_dir}: {exc.strerror or exc}") from exc
    connections = RedisConnections(url)
    return Backend(
        name="redis",
        log=RedisLog(connections.commands, connections.waits),
        metadata=RedisMetadata(connections.commands),
        blobs=blobs,
        closer=connections,
        metrics=RedisMetrics(connections.commands),
        space=RedisSpace(connections.commands),
        ready=connections.ready,
        shared=True,
        presence=RedisPresence(connections.commands),
        signals=RedisSignals(connections.commands, connections.waits),
    )
