"""Idempotent publishing of events: survive a lost connection with no gap and no duplicate.

A run names itself (a random producer id) and numbers its events from 1; the
server stores each (producer, sequence) once. Every event sent stays in memory
until the server acknowledges it; a stream is ended for its acknowledgement
every ACK_EVERY events or, at its next message, after ACK_AFTER seconds, so
what waits unacknowledged is bounded (and the source is not read while it is
full). When a stream fails, the client reconnects with backoff, asks the
server how far the producer's events are stored (a producer stream without
events), and re-sends the rest; should it re-send an event that was stored
after all, the server acknowledges it without storing it again.

A server that does not deduplicate (its answer to the question has no
``last_sequence``) gets the events over one stream, without retries, as before.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, FirstStatus, rpc_errors
from streamcli.client.retry import Attempts, RetryPolicy
from streamcli.client.streams import one_stream
from streamcli.errors import StreamcliError

#: Events per PublishEventsRequest: several ride in one message (per-message cost dominates).
PUBLISH_BATCH = 500
#: Events sent on one stream before it is ended for their acknowledgement: at most this many (and one
#: read's worth) wait unacknowledged in memory.
ACK_EVERY = 20_000
#: Seconds after which a stream is ended for its acknowledgement, when its next events come.
ACK_AFTER = 10.0
#: Consecutive failed attempts before publishing gives up (the delay caps at 8 s: about 3 minutes).
PUBLISH_RETRIES = 25


@dataclasses.dataclass
class PublishProgress:
    """How far a publish has got, for what to say when it stops early (Ctrl-C, a lost server)."""

    sent: int = 0  # events taken from the source and sent at least once
    acknowledged: int = 0  # of those, the first ones the server has acknowledged as stored
    idempotent: bool = False  # the server deduplicates: events without an acknowledgement were re-sent

    def stopped(self, error: StreamcliError) -> StreamcliError:
        """``error`` (Ctrl-C, a server gone for good) with what is known to be stored of the events sent,
        for a publish that stopped early after sending some."""
        sent, acknowledged = self.sent, self.acknowledged
        if acknowledged == sent:
            stored = f"{sent} event(s) had been sent, all acknowledged as stored"
        elif not acknowledged:
            stored = (
                f"{sent} event(s) had been sent; none was acknowledged, so some of them may have been stored "
                "(see streamcli tail events --since)"
            )
        else:
            stored = (
                f"{sent} event(s) had been sent; the first {acknowledged} were acknowledged as stored, and some "
                f"of the {sent - acknowledged} after them may have been stored too (see streamcli tail events --since)"
            )
        return type(error)(f"{error.message} after {stored}")


@dataclasses.dataclass(frozen=True)
class PublishOptions:
    """How patiently to publish, and whom to tell about a lost connection."""

    retry: RetryPolicy = dataclasses.field(default_factory=lambda: RetryPolicy(retries=PUBLISH_RETRIES))
    notice: Callable[[str], None] | None = None  # told (a line) when a stream is lost and when publishing resumes
    producer_id: str = ""  # "" = a new random one


class _Source:
    """The batches of the caller's source, each read in a task of its own when asked for (nothing is read
    ahead): a stream that fails while waiting for the next batch stops waiting, and the batch, when it
    comes, goes to the next stream. (Cancelling the wait would cancel the source itself.)"""

    def __init__(self, batches: AsyncIterable[Sequence[pb.UserEvent]]) -> None:
        self._batches = aiter(batches)
        self._pull: asyncio.Future[Sequence[pb.UserEvent]] | None = None
        self.ended = False
        self.failure: Exception | None = None  # what the source raised, after the batches before it

    async def next(self, unless: asyncio.Future[Any]) -> Sequence[pb.UserEvent] | None:
        """The next batch; None at the end (``failure`` says if the source failed), or when ``unless`` is
        done first (a call that ended while waiting)."""
        if self.ended:
            return None
        if self._pull is None:
            self._pull = asyncio.ensure_future(anext(self._batches))
        if not self._pull.done():
            await asyncio.wait((self._pull, unless), return_when=asyncio.FIRST_COMPLETED)
            if not self._pull.done():
                return None
        pull, self._pull = self._pull, None
        try:
            return pull.result()
        except StopAsyncIteration:
            self.ended = True
        except Exception as exc:  # a bad input line: publishing ends after what came before it
            self.ended = True
            self.failure = exc
        return None

    def prefetch(self) -> None:
        """Start reading the next batch now (the stream is ending): while the server acknowledges, the
        source is parsed, rather than the server waiting for the next batch after it."""
        if self._pull is None and not self.ended:
            self._pull = asyncio.ensure_future(anext(self._batches))

    def close(self) -> None:
        if self._pull is not None:
            self._pull.cancel()


class IdempotentPublisher:
    """Publishes the batches of a source as producer ``producer_id``; see the module's docstring."""

    def __init__(
        self, conn: Connection, batches: AsyncIterable[Sequence[pb.UserEvent]], options: PublishOptions
    ) -> None:
        self._conn = conn
        self._batches = batches
        self._options = options
        self.producer_id = options.producer_id or str(uuid.uuid4())
        self.progress = PublishProgress()
        self._pending: collections.deque[pb.PublishEventsRequest] = collections.deque()  # not acknowledged
        self._next_sequence = 1
        self._last: pb.PublishEventsResponse = pb.PublishEventsResponse()

    async def run(self) -> pb.PublishEventsResponse:
        """Publish everything; returns the count of events published and the ids of the first and last.

        Raises:
            The source's error, with what was published added when it is a StreamcliError; the
            mapped gRPC error once retries are exhausted or when it is not worth retrying.
        """
        with rpc_errors(self._conn):
            first = await self._ask()  # a failure to reach the server is reported at once
        if not first.HasField("last_sequence"):  # a server that does not deduplicate: one stream, no retries
            return await publish_once(self._conn, self._batches)
        self.progress.idempotent = True
        source = _Source(self._batches)
        try:
            with rpc_errors(self._conn):
                await self._publish(source)
        finally:
            source.close()
        if source.failure is not None:
            if isinstance(source.failure, StreamcliError):
                raise type(source.failure)(f"{source.failure.message}; {self._published()}")
            raise source.failure
        return pb.PublishEventsResponse(
            count=self.progress.acknowledged,
            first_id=self._last.producer_first_id,
            last_id=self._last.producer_last_id,
            last_sequence=self.progress.acknowledged,
        )

    async def _publish(self, source: _Source) -> None:
        notice = self._options.notice
        attempts = Attempts(self._options.retry, "publish", connection=self._conn, announce=notice)
        while True:
            try:
                response = await self._stream(source)
            except grpc.aio.AioRpcError as exc:
                await attempts.failed(exc)
                before = self.progress.acknowledged
                await self._reconnect(attempts)
                if self.progress.acknowledged > before:
                    # The server stored more since: the retries start over. (Not on every reconnect: a
                    # server that answers the question but fails every stream must not hold it for ever.)
                    attempts.recovered()
                if notice:
                    unacknowledged = self.progress.sent - self.progress.acknowledged
                    notice(
                        f"reconnected; the server has the first {self.progress.acknowledged} event(s), "
                        f"re-sending the {unacknowledged} after them"
                    )
                continue
            attempts.recovered()
            self._acknowledge(response)
            if source.ended and not self._pending:
                return

    async def _reconnect(self, attempts: Attempts) -> None:
        """Ask the server how far the producer's events are stored, until it answers (or retries run out)."""
        while True:
            try:
                response = await self._ask()
            except grpc.aio.AioRpcError as exc:
                await attempts.failed(exc)
                continue
            self._acknowledge(response)
            return

    async def _ask(self) -> pb.PublishEventsResponse:
        """How far the server has the producer's events: a producer stream without events."""
        question = [pb.PublishEventsRequest(producer_id=self.producer_id)]
        response: pb.PublishEventsResponse = await self._conn.stub.PublishEvents(question, metadata=self._conn.metadata)
        return response

    async def _stream(self, source: _Source) -> pb.PublishEventsResponse:
        """One stream: what has no acknowledgement yet, then new events until it is time for one.

        The stream is written from this task (not from an iterator that grpc reads in a task of its
        own, which goes on waiting for the source after the call has failed, and would take a batch
        from the next stream).
        """
        call = self._conn.stub.PublishEvents(metadata=self._conn.metadata)
        # (A refusal, an invalid event or another user's, keeps its status: retried, the same events would be
        # refused again, for minutes.)
        response: pb.PublishEventsResponse = await one_stream(
            call, lambda call, outcome: self._write(call, source, outcome)
        )
        return response

    async def _write(self, call: Any, source: _Source, outcome: asyncio.Future[pb.PublishEventsResponse]) -> None:
        sent = 0
        for request in list(self._pending):
            await call.write(request)
            sent += len(request.events)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while sent < ACK_EVERY and loop.time() - started < ACK_AFTER:
            batch = await source.next(outcome)
            if batch is None:
                break  # the end of the source, or of the call
            # The whole batch is numbered and kept before any of it is written: a write that fails midway
            # (the server gone) must leave the rest of the batch with the events to send again, not lost.
            requests = []
            for start in range(0, len(batch), PUBLISH_BATCH):
                request = pb.PublishEventsRequest(
                    producer_id=self.producer_id,
                    first_sequence=self._next_sequence,
                    events=batch[start : start + PUBLISH_BATCH],
                )
                self._next_sequence += len(request.events)
                requests.append(request)
            self._pending.extend(requests)
            self.progress.sent += len(batch)
            sent += len(batch)
            for request in requests:
                await call.write(request)
        if not sent:
            await call.write(pb.PublishEventsRequest(producer_id=self.producer_id))  # the stream's producer
        source.prefetch()
        await call.done_writing()

    def _acknowledge(self, response: pb.PublishEventsResponse) -> None:
        """Forget the events the server says it has stored."""
        self._last = response
        stored = response.last_sequence
        pending = self._pending
        while pending and pending[0].first_sequence + len(pending[0].events) - 1 <= stored:
            pending.popleft()
        self.progress.acknowledged = max(self.progress.acknowledged, min(stored, self._next_sequence - 1))

    def _published(self) -> str:
        count = self.progress.acknowledged
        if not count:
            return "nothing was published"
        return (
            f"the {count} event(s) before it were published "
            f"(ids {self._last.producer_first_id}-{self._last.producer_last_id})"
        )


async def publish_once(conn: Connection, batches: AsyncIterable[Sequence[pb.UserEvent]]) -> pb.PublishEventsResponse:
    """Publish each batch as soon as ``batches`` yields it, over one client stream, without a producer (what
    a server that does not deduplicate gets).

    If ``batches`` raises a StreamcliError (a malformed input line, say), the stream is ended
    there, so that the server acknowledges exactly what it appended, and the error is raised
    with that count added.
    """
    failure: list[StreamcliError] = []

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        try:
            async for batch in batches:
                for start in range(0, len(batch), PUBLISH_BATCH):
                    yield pb.PublishEventsRequest(events=batch[start : start + PUBLISH_BATCH])
        except StreamcliError as exc:
            failure.append(exc)

    with rpc_errors(conn):
        call = conn.stub.PublishEvents(requests(), metadata=conn.metadata)
        first_status = FirstStatus(call)  # a refusal midway must reach the user as the server said it
        try:
            response: pb.PublishEventsResponse = await call
        except grpc.aio.AioRpcError as exc:
            raise first_status.unmask(exc) from exc
    if failure:
        published = (
            f"the {response.count} event(s) before it were published (ids {response.first_id}-{response.last_id})"
            if response.count
            else "nothing was published"
        )
        raise type(failure[0])(f"{failure[0].message}; {published}")
    return response
