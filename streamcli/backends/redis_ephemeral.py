"""Ephemeral state shared by the replicas of one Redis database: ``RedisPresence`` and ``RedisSignals``.

Presence is leases in Redis (``redis_scripts.JOIN``, ``RENEW``, ``LEAVE``, ``MEMBERS``: each one atomic
step, timed by Redis's clock). A replica renews every lease it holds in one script call every
``RENEW_EVERY`` seconds; a lease not renewed for ``LEASE`` seconds expires, so the members of a replica
that died without leaving (kill -9, a lost host) vanish within ``LEASE`` seconds.

Signals are Redis pub/sub, never stored: ``PUBLISH`` on ``streamcli:signal:<channel>``, each payload
prefixed by the publishing replica's id. A replica delivers its own signals to its own subscribers at
once (no round trip) and ignores them when Redis echoes them back. It reads every channel it has
subscribers for on one connection of its own (``SUBSCRIBE`` when a channel gets its first subscriber
here, ``UNSUBSCRIBE`` when it loses its last), read by one task and demultiplexed to the subscribers'
bounded queues (``ephemeral.Channels``). redis-py's ``PubSub`` is not used: it does not reconnect by
itself (redis/redis-py#2089, #1572), and a read timeout shorter than a silent channel ends it. Here the
connection has no read timeout; a ``PING`` every ``PING_EVERY`` seconds, answered or not, tells a dead
connection from a quiet one, and a lost connection is opened again (every channel subscribed again)
after ``RECONNECT_PAUSE`` seconds. Signals published meanwhile are lost to this replica: they are
ephemeral (a TYPING indicator, a cursor), and what matters is re-sent or stored elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from typing import Any

import redis.asyncio as aioredis

from streamcli.backends import redis_scripts
from streamcli.backends.base import StoreUnavailableError
from streamcli.backends.ephemeral import Channels, SignalQueue
from streamcli.backends.redis_log import LOST, PREFIX, unreachable

log = logging.getLogger("streamcli.server")

#: Seconds a lease lasts after its last renewal.
LEASE = 6.0
#: Seconds between two renewals of the leases a replica holds.
RENEW_EVERY = 2.0
#: Leases renewed per script call.
RENEW_BATCH = 500
#: Seconds between two PINGs on the subscriber connection; three unanswered mean it is lost.
PING_EVERY = 5.0
#: Seconds before a lost subscriber connection is opened again.
RECONNECT_PAUSE = 1.0
#: Length of a replica's id, which prefixes the payload of every signal it publishes.
ORIGIN_LENGTH = 16


def _replica_id() -> bytes:
    return uuid.uuid4().hex[:ORIGIN_LENGTH].encode()


class RedisLease:
    """A lease of ``RedisPresence``: renewed by its presence until left or lost."""

    def __init__(self, presence: RedisPresence, scope: str, member: str, holder: str, exclusive: bool) -> None:
        self.scope = scope
        self.member = member
        self.holder = holder
        self.exclusive = exclusive
        self.keys = [PREFIX + b"presence:" + scope.encode(), PREFIX + b"lease:" + f"{scope}\0{member}".encode()]
        self._presence = presence
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def lost(self) -> None:
        self._held = False

    async def leave(self) -> None:
        if self._held:
            self._held = False
            await self._presence.release(self)


class RedisPresence:
    """``Presence`` across the replicas of one Redis database."""

    def __init__(self, commands: aioredis.Redis) -> None:
        self._id = _replica_id().decode()
        self._count = 0
        self._join = commands.register_script(redis_scripts.JOIN)
        self._renew = commands.register_script(redis_scripts.RENEW)
        self._leave = commands.register_script(redis_scripts.LEAVE)
        self._members = commands.register_script(redis_scripts.MEMBERS)
        self._held: dict[str, RedisLease] = {}  # by holder
        self._renewer: asyncio.Task[None] | None = None

    async def join(self, scope: str, member: str, *, exclusive: bool = False) -> RedisLease | None:
        self._count += 1
        lease = RedisLease(self, scope, member, f"{self._id}:{self._count}", exclusive)
        args: list[Any] = [member, lease.holder, round(LEASE * 1000), "1" if exclusive else ""]
        if not await self._join(keys=lease.keys, args=args):
            return None
        self._held[lease.holder] = lease
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_all(), name="presence renewals")
        return lease

    async def members(self, scope: str) -> list[str]:
        found = await self._members(keys=[PREFIX + b"presence:" + scope.encode()])
        return sorted(member.decode() for member in found)

    async def release(self, lease: RedisLease) -> None:
        """Give ``lease`` up in Redis; one that cannot be reached lets it expire."""
        self._held.pop(lease.holder, None)
        try:
            await self._leave(keys=lease.keys, args=[lease.member, lease.holder])
        except StoreUnavailableError as exc:
            log.warning("could not leave %s in %s (it expires within %g s): %s", lease.member, lease.scope, LEASE, exc)

    async def renew(self) -> None:
        """Extend every lease held here; mark lost those another holder took after they expired."""
        held = list(self._held.values())
        for start in range(0, len(held), RENEW_BATCH):
            batch = held[start : start + RENEW_BATCH]
            keys: list[bytes] = []
            args: list[Any] = [round(LEASE * 1000)]
            for lease in batch:
                keys += lease.keys
                args += [lease.member, lease.holder, "1" if lease.exclusive else ""]
            for number in await self._renew(keys=keys, args=args):
                lease = batch[int(number) - 1]
                log.warning("lost %s in %s: it expired and another holder took it", lease.member, lease.scope)
                lease.lost()
                self._held.pop(lease.holder, None)

    async def _renew_all(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await self.renew()
            except StoreUnavailableError as exc:
                log.warning("could not renew %d leases (trying again in %g s): %s", len(self._held), RENEW_EVERY, exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        # All at once: with Redis away, shutting down waits for one command's timeout, not one per lease.
        await asyncio.gather(*(lease.leave() for lease in list(self._held.values())))


class RedisSignals:
    """``Signals`` across the replicas of one Redis database (``commands`` publishes, a connection of
    ``subscriber_pool`` of its own subscribes)."""

    def __init__(self, commands: aioredis.Redis, subscriber_pool: aioredis.ConnectionPool) -> None:
        self._redis: Any = commands
        self._pool = subscriber_pool
        self._id = _replica_id()
        self._channels = Channels(on_first=self._changed, on_last=self._changed)
        self._changes = asyncio.Event()  # the channels subscribed here changed
        self._subscriber: asyncio.Task[None] | None = None
        self._closed = False

    async def publish(self, channel: str, payload: bytes) -> None:
        self._channels.deliver(channel, payload)
        try:
            await self._redis.publish(_channel_key(channel), self._id + payload)
        except StoreUnavailableError as exc:
            log.debug("signal on %s not sent to the other replicas: %s", channel, exc)

    def subscribe(self, channel: str) -> SignalQueue:
        if self._subscriber is None and not self._closed:
            self._subscriber = asyncio.create_task(self._subscribe_on(), name="signal subscriber")
        return self._channels.subscribe(channel)

    async def close(self) -> None:
        self._closed = True
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
        self._channels.close_all()

    def _changed(self, channel: str) -> None:
        self._changes.set()

    async def _subscribe_on(self) -> None:
        """Read the channels with subscribers here on a connection of their own, opened again when lost."""
        while True:
            try:
                await self._read_connection()
            except (StoreUnavailableError, *LOST) as exc:
                log.warning("signals from other replicas interrupted (reconnecting in %g s): %s", RECONNECT_PAUSE, exc)
            await asyncio.sleep(RECONNECT_PAUSE)

    async def _read_connection(self) -> None:
        try:
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except LOST as exc:
            raise unreachable(exc) from exc
        subscribed: set[str] = set()
        heard = asyncio.Event()  # something came since the last ping
        heard.set()
        work = [
            asyncio.ensure_future(self._read(connection, heard)),
            asyncio.ensure_future(self._keep_subscribed(connection, subscribed, heard)),
        ]
        try:
            done, _ = await asyncio.wait(work, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # (each runs until it fails)
        except LOST as exc:
            raise unreachable(exc) from exc
        finally:
            for task in work:
                task.cancel()
            await asyncio.gather(*work, return_exceptions=True)
            await connection.disconnect(nowait=True)  # subscribed: never a connection for other commands
            await self._pool.release(connection)

    async def _read(self, connection: Any, heard: asyncio.Event) -> None:
        """Deliver each signal from another replica to the subscribers here (RESP3, redis-py's default: they come as
        pushes, which a read returns only when it asks for them)."""
        while True:
            reply = await connection.read_response(timeout=math.inf, push_request=True)
            heard.set()
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                data = bytes(reply[2])
                if data[:ORIGIN_LENGTH] != self._id:  # this replica's own were delivered as published
                    channel = bytes(reply[1])[len(_SIGNAL) :].decode()
                    self._channels.deliver(channel, data[ORIGIN_LENGTH:])

    async def _keep_subscribed(self, connection: Any, subscribed: set[str], heard: asyncio.Event) -> None:
        """Subscribe to the channels that have subscribers here and only to them; PING to tell a dead
        connection from a quiet one."""
        unanswered = 0
        while True:
            self._changes.clear()
            wanted = set(self._channels.channels())
            if wanted - subscribed:
                await connection.send_command("SUBSCRIBE", *(_channel_key(c) for c in wanted - subscribed))
            if subscribed - wanted:
                await connection.send_command("UNSUBSCRIBE", *(_channel_key(c) for c in subscribed - wanted))
            subscribed.clear()
            subscribed.update(wanted)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_EVERY):
                    await self._changes.wait()
                continue
            unanswered = 0 if heard.is_set() else unanswered + 1
            if unanswered >= 3:
                raise StoreUnavailableError(f"the server's Redis did not answer for {3 * PING_EVERY:g} s")
            heard.clear()
            await connection.send_command("PING")


_SIGNAL = PREFIX + b"signal:"


def _channel_key(channel: str) -> bytes:
    return _SIGNAL + channel.encode()
