"""The ephemeral seams, the same tests on every backend: ``Presence`` (leases) and ``Signals`` (pub/sub).

Then, on Redis only, two backends on one Redis database as two replicas would open them: a lease held by
one is seen and refused by the other, a signal published by one reaches the other's subscribers, each
subscriber once.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from streamcli.backends import open_backend
from streamcli.backends.base import Backend, StoreUnavailableError, Subscription
from streamcli.backends.ephemeral import SIGNAL_BUFFER
from streamcli.backends.redis_ephemeral import RedisPresence
from tests.support.redis import redis_server
from tests.support.stores import Store, open_store


@pytest.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Store]:
    """Each backend, empty."""
    async with open_store(request, tmp_path) as opened:
        yield opened


async def take(subscription: Subscription, count: int) -> list[bytes]:
    taken: list[bytes] = []
    async with asyncio.timeout(30):
        async for payload in subscription:
            taken.append(payload)
            if len(taken) == count:
                break
    return taken


# --- presence ------------------------------------------------------------


async def test_a_member_is_present_while_one_of_its_leases_is_held(store: Store) -> None:
    presence = store.backend.presence
    first = await presence.join("room:a", "alice")
    second = await presence.join("room:a", "alice")  # not exclusive: granted beside the first
    bob = await presence.join("room:a", "bob")
    elsewhere = await presence.join("room:b", "carol")
    assert first is not None and second is not None and bob is not None and elsewhere is not None
    assert await presence.members("room:a") == ["alice", "bob"]
    assert await presence.members("room:b") == ["carol"]
    await first.leave()
    assert await presence.members("room:a") == ["alice", "bob"]
    await second.leave()
    await second.leave()  # idempotent
    assert await presence.members("room:a") == ["bob"]
    assert (first.held, bob.held) == (False, True)
    assert await presence.members("room:none") == []


async def test_an_exclusive_join_is_refused_while_the_member_is_held(store: Store) -> None:
    presence = store.backend.presence
    held = await presence.join("upload", "u1", exclusive=True)
    assert held is not None and held.held
    assert await presence.join("upload", "u1", exclusive=True) is None
    shared = await presence.join("room:a", "alice")
    assert shared is not None
    assert await presence.join("room:a", "alice", exclusive=True) is None  # any lease counts
    assert await presence.join("upload", "u2", exclusive=True) is not None  # another member
    await held.leave()
    again = await presence.join("upload", "u1", exclusive=True)
    assert again is not None and again.held


async def test_closing_presence_gives_every_lease_up(store: Store, tmp_path: pathlib.Path) -> None:
    lease = await store.backend.presence.join("room:a", "alice")
    assert lease is not None
    await store.backend.presence.close()
    assert not lease.held
    assert await store.backend.presence.members("room:a") == []


# --- signals -----------------------------------------------------------------


async def test_a_signal_reaches_every_subscriber_of_its_channel_once(store: Store) -> None:
    signals = store.backend.signals
    first = signals.subscribe("typing:a")
    second = signals.subscribe("typing:a")
    other = signals.subscribe("typing:b")
    await signals.publish("typing:a", b"one")
    await signals.publish("typing:a", b"two")
    await signals.publish("typing:b", b"three")
    assert await take(first, 2) == [b"one", b"two"]
    assert await take(second, 2) == [b"one", b"two"]
    assert await take(other, 1) == [b"three"]
    first.close()
    await signals.publish("typing:a", b"four")
    assert await take(second, 1) == [b"four"]
    assert [payload async for payload in first] == []  # closed: nothing more, its iteration ends


async def test_a_slow_subscriber_drops_the_oldest_signals_beyond_its_buffer(store: Store) -> None:
    signals = store.backend.signals
    slow = signals.subscribe("cursor:d")
    for n in range(SIGNAL_BUFFER + 10):
        await signals.publish("cursor:d", str(n).encode())
    assert slow.dropped == 10
    taken = await take(slow, SIGNAL_BUFFER)
    assert taken[0] == b"10" and taken[-1] == str(SIGNAL_BUFFER + 9).encode()


async def test_closing_signals_ends_every_subscription(store: Store) -> None:
    subscription = store.backend.signals.subscribe("typing:a")
    await store.backend.signals.close()
    assert [payload async for payload in subscription] == []


# --- two replicas on one Redis -------------------------------------------------


@pytest.fixture
async def replicas(redis_url: str, tmp_path: pathlib.Path) -> AsyncIterator[tuple[Backend, Backend]]:
    """Two Redis backends on one database, as two replicas open them."""
    first = open_backend(redis_url, tmp_path / "a")
    second = open_backend(redis_url, tmp_path / "b")
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def subscribed(redis_url: str, channel: str, count: int) -> None:
    """Wait until ``count`` replicas subscribe to ``channel`` in Redis (each subscribes once, whatever
    its number of subscribers)."""
    client = aioredis.from_url(redis_url)
    try:
        async with asyncio.timeout(30):
            while (
                dict(await client.pubsub_numsub(f"streamcli:signal:{channel}"))[f"streamcli:signal:{channel}".encode()]
                < count
            ):
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def test_a_lease_held_by_one_replica_is_seen_and_refused_by_another(
    replicas: tuple[Backend, Backend],
) -> None:
    a, b = replicas
    held = await a.presence.join("room:r", "alice", exclusive=True)
    assert held is not None
    assert await b.presence.join("room:r", "alice", exclusive=True) is None
    beside = await b.presence.join("room:r", "bob")
    assert beside is not None
    assert await a.presence.members("room:r") == await b.presence.members("room:r") == ["alice", "bob"]
    assert isinstance(a.presence, RedisPresence)
    await a.presence.renew()  # renewing keeps what is held
    assert held.held
    await held.leave()
    assert await b.presence.members("room:r") == ["bob"]
    assert await b.presence.join("room:r", "alice", exclusive=True) is not None


async def test_a_signal_reaches_the_subscribers_of_every_replica_once(
    replicas: tuple[Backend, Backend], redis_url: str
) -> None:
    a, b = replicas
    on_a = a.signals.subscribe("typing:r")
    on_b = b.signals.subscribe("typing:r")
    await subscribed(redis_url, "typing:r", 2)
    await a.signals.publish("typing:r", b"from a")
    await b.signals.publish("typing:r", b"from b")  # after a's: Redis delivers a's echo first, if it did
    assert await take(on_a, 2) == [b"from a", b"from b"]
    assert sorted(await take(on_b, 2)) == [b"from a", b"from b"]  # its own at once, a's through Redis
    await a.signals.publish("typing:r", b"again from a")  # after b's own: Redis would echo that first
    assert await take(on_b, 1) == [b"again from a"]
    on_b.close()
    await subscribed(redis_url, "typing:r", 1)  # b unsubscribed in Redis: its last subscriber left


async def test_after_a_redis_restart_signals_flow_again_and_leases_are_taken_again(tmp_path: pathlib.Path) -> None:
    """A Redis of its own, restarted empty (no persistence) on the same port: each replica subscribes again
    by itself, and its next renewal puts back the leases it holds."""
    with contextlib.ExitStack() as processes:
        first = processes.enter_context(redis_server(tmp_path / "redis"))
        a = open_backend(first.url(), tmp_path / "a")
        b = open_backend(first.url(), tmp_path / "b")
        try:
            lease = await a.presence.join("room:r", "alice")
            on_b = b.signals.subscribe("typing:r")
            await subscribed(first.url(), "typing:r", 1)
            first.stop()
            second = processes.enter_context(redis_server(tmp_path / "redis", port=first.port))
            await subscribed(second.url(), "typing:r", 1)  # b's subscriber connection, opened again
            assert await b.presence.members("room:r") == []  # (an empty Redis)
            assert isinstance(a.presence, RedisPresence)
            for _ in range(100):  # a's pooled connections to the stopped Redis fail once each, as renewals do
                try:
                    await a.presence.renew()
                    break
                except StoreUnavailableError:
                    await asyncio.sleep(0.05)
            members = await b.presence.members("room:r")
            await a.signals.publish("typing:r", b"after")
            heard = await take(on_b, 1)
            held = lease is not None and lease.held
        finally:
            await a.close()
            await b.close()
    assert held
    assert members == ["alice"]
    assert heard == [b"after"]
