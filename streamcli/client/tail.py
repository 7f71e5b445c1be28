"""Following a server log stream: reconnect with backoff, resume exactly, end early on request.

Every response carries the position the server has read up to; after a failure
the stream is reopened to resume after that position, so the records yielded
have no gap and no duplicate, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.retry import Attempts, RetryPolicy

R = TypeVar("R")

#: Consecutive failed reconnects before a tail gives up (the delay caps at 8 s: about 3 minutes).
TAIL_RETRIES = 25


@dataclasses.dataclass(frozen=True)
class TailOptions:
    """When a tail ends."""

    follow: bool = True  # False: history only
    max_records: int | None = None  # end after this many records
    idle_timeout: float | None = None  # end after this many seconds without a record
    retry: RetryPolicy = dataclasses.field(default_factory=lambda: RetryPolicy(retries=TAIL_RETRIES))


class _Positioned(Protocol):
    position: int


def set_start(request: Any, resume_after: int | None, since: Timestamp | None) -> None:
    """Where a (re)opened log stream starts: at ``since`` (or live) the first time, then just after ``resume_after``.

    ``request`` is a StreamUserEventsRequest or SubscribeToNotificationsRequest (both have these fields).
    """
    if resume_after is None:
        if since is not None:
            request.start_time.CopyFrom(since)
    elif resume_after:
        request.resume_after_id = resume_after
    else:
        request.start_time.CopyFrom(Timestamp())  # after position 0: everything


async def tail_log(
    conn: Connection,
    open_stream: Callable[[int | None], Any],
    records_of: Callable[[Any], Sequence[R]],
    options: TailOptions,
) -> AsyncIterator[Sequence[R]]:
    """Yield the records of each response from ``open_stream`` (never empty) until ``options`` say stop,
    reconnecting as needed. A batch at a time: per-record overhead matters when a replay runs at a
    hundred thousand records a second.

    A failure before the server first answers is raised at once (a wrong
    address should not look like a quiet log); after that, the stream is
    reopened with backoff, resuming after the last position received.

    Args:
        conn: the connection (its channel reconnects by itself).
        open_stream: opens the server-streaming call; given None for the first
            attempt (the caller's own start), then the position to resume after.
        records_of: the records of one response (empty for a heartbeat).
        options: follow, max records, idle timeout, retries.
    """
    loop = asyncio.get_running_loop()
    attempts = Attempts(options.retry, "tail")
    resume_after: int | None = None
    connected = False  # until the server first answers, a failure is reported, not retried
    seen = 0
    last_record_at = loop.time()
    with rpc_errors(conn.settings.address):
        while True:
            call = open_stream(resume_after)
            try:
                while True:
                    timeout = None
                    if options.idle_timeout is not None:
                        timeout = options.idle_timeout - (loop.time() - last_record_at)
                    try:
                        response = await asyncio.wait_for(call.read(), timeout)
                    except asyncio.TimeoutError:
                        call.cancel()
                        return
                    if response is grpc.aio.EOF:
                        return  # history replayed (--no-follow)
                    attempts.failures = 0
                    connected = True
                    records = records_of(response)
                    if records:
                        if options.max_records is not None and seen + len(records) >= options.max_records:
                            yield records[: options.max_records - seen]
                            call.cancel()
                            return
                        yield records
                        seen += len(records)
                        last_record_at = loop.time()
                    resume_after = int(response.position)
            except grpc.aio.AioRpcError as exc:
                if not connected:
                    raise
                await attempts.backoff(exc)
