"""Ephemeral shared state in one process: the embedded backend's ``Presence`` and ``Signals`` (``backends/base.py``),
and the bounded subscriptions every backend hands its subscribers.

On the embedded backend one process is the whole server, so what it holds in memory is what every
client sees: a lease lasts until it is left (it cannot outlive its process), a signal goes straight to
the subscribers' queues. ``Channels`` (subscribers by channel, each a bounded ``SignalQueue``) is also
what the Redis backend delivers to once a signal reaches its replica.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable

#: Signals a subscriber keeps until it takes them; beyond, the oldest is dropped (and counted).
SIGNAL_BUFFER = 256


class SignalQueue:
    """One subscription: the signals of its channel not taken yet, at most ``SIGNAL_BUFFER`` of them."""

    def __init__(self, channel: str, on_close: Callable[[SignalQueue], None]) -> None:
        self.channel = channel
        self.dropped = 0  # signals dropped because the subscriber had not taken them
        self._pending: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._on_close = on_close

    def put(self, payload: bytes) -> None:
        """Queue ``payload``, dropping the oldest one kept when the queue is full."""
        if self._closed:
            return
        if len(self._pending) >= SIGNAL_BUFFER:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(payload)
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The signals as they come, until ``close`` (those queued before it are still given)."""
        while True:
            while self._pending:
                yield self._pending.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._on_close(self)


class Channels:
    """The subscriptions of this process, by channel."""

    def __init__(self, on_first: Callable[[str], None] | None = None, on_last: Callable[[str], None] | None = None):
        """``on_first``/``on_last``: told when a channel gets its first subscriber here, or loses its last."""
        self._subscribers: dict[str, set[SignalQueue]] = {}
        self._on_first = on_first
        self._on_last = on_last

    def subscribe(self, channel: str) -> SignalQueue:
        queue = SignalQueue(channel, self._closed)
        subscribers = self._subscribers.setdefault(channel, set())
        subscribers.add(queue)
        if len(subscribers) == 1 and self._on_first is not None:
            self._on_first(channel)
        return queue

    def deliver(self, channel: str, payload: bytes) -> None:
        """Give ``payload`` to the channel's subscribers here (none: it is dropped)."""
        for queue in self._subscribers.get(channel, ()):
            queue.put(payload)

    def channels(self) -> list[str]:
        """The channels with subscribers here."""
        return list(self._subscribers)

    def close_all(self) -> None:
        for subscribers in list(self._subscribers.values()):
            for queue in list(subscribers):
                queue.close()

    def _closed(self, queue: SignalQueue) -> None:
        subscribers = self._subscribers.get(queue.channel)
        if subscribers is None or queue not in subscribers:
            return
        subscribers.discard(queue)
        if not subscribers:
            del self._subscribers[queue.channel]
            if self._on_last is not None:
                self._on_last(queue.channel)


class LocalSignals:
    """``Signals`` in one process: a publish puts the signal in its subscribers' queues at once."""

    def __init__(self) -> None:
        self._channels = Channels()

    async def publish(self, channel: str, payload: bytes) -> None:
        self._channels.deliver(channel, payload)

    def subscribe(self, channel: str) -> SignalQueue:
        return self._channels.subscribe(channel)

    async def close(self) -> None:
        self._channels.close_all()


class LocalLease:
    """A lease of ``LocalPresence``: held until left."""

    def __init__(self, presence: LocalPresence, scope: str, member: str) -> None:
        self.scope = scope
        self.member = member
        self._presence = presence
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    async def leave(self) -> None:
        if self._held:
            self._held = False
            self._presence.release(self)


class LocalPresence:
    """``Presence`` in one process: the leases held, by scope and member."""

    def __init__(self) -> None:
        self._leases: dict[str, dict[str, set[LocalLease]]] = {}

    async def join(self, scope: str, member: str, *, exclusive: bool = False) -> LocalLease | None:
        holders = self._leases.setdefault(scope, {}).setdefault(member, set())
        if exclusive and holders:
            return None
        lease = LocalLease(self, scope, member)
        holders.add(lease)
        return lease

    async def members(self, scope: str) -> list[str]:
        return sorted(self._leases.get(scope, {}))

    def release(self, lease: LocalLease) -> None:
        members = self._leases.get(lease.scope, {})
        holders = members.get(lease.member)
        if holders is not None:
            holders.discard(lease)
            if not holders:
                del members[lease.member]
                if not members:
                    del self._leases[lease.scope]

    async def close(self) -> None:
        for members in list(self._leases.values()):
            for holders in list(members.values()):
                for lease in list(holders):
                    await lease.leave()
