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


@dataclasses.dataclass(frozen=True)
class TailOptions:
    """When a tail ends."""

    follow: bool = True  # False: history only
    tail: int | None = None  # start with the last this many records (the server finds them), None: unset
    until: Timestamp | None = None  # end at the first record appended after this time
    max_records: int | None = None  # end after this many records
    idle_timeout: float | None = None  # end after this many seconds without a record
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)  # consecutive failed reconnects
    # Told (a line of text) when the stream is lost and the tail starts reconnecting, and when it resumes.
    notice: Callable[[str], None] | None = None


class _Positioned(Protocol):
    position: int


def set_start(request: Any, resume_after: int | None, since: Timestamp | None, options: TailOptions) -> None:
    """Where a (re)opened log stream starts: at ``since`` and/or the last ``options.tail`` records (or live)
    the first time, then just after ``resume_after``; and where it ends (``options.until``), every time.

    ``request`` is a StreamUserEventsRequest, SubscribeToNotificationsRequest or StreamRoomMessagesRequest
    (all have these fields).
    """
    if options.until is not None:
        request.end_time.CopyFrom(options.until)
    if resume_after is None:
        if since is not None:
            request.start_time.CopyFrom(since)
        if options.tail:
            request.tail = options.tail
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
    attempts = Attempts(options.retry, "tail", connection=conn, announce=options.notice)
    resume_after: int | None = None
    connected = False  # until the server first answers, a failure is reported, not retried
    seen = 0
    idle = _IdleWatch(options.idle_timeout)
    with rpc_errors(conn), idle:
        while not idle.expired:  # (it may run out during a reconnect's backoff)
            call = open_stream(resume_after)
            idle.watch(call)
            try:
                while True:
                    try:
                        response = await call.read()
                    except asyncio.CancelledError:
                        if idle.expired and not _cancelling():
                            return
                        raise
                    if response is grpc.aio.EOF:
                        return  # history replayed (--no-follow)
                    if attempts.recovered() and options.notice:
                        to = f" to {conn.address}" if conn.replicas is not None else ""  # of several, which
                        options.notice(f"reconnected{to}; resuming after id {resume_after}")
                    connected = True
                    records = records_of(response)
                    if records:
                        if options.max_records is not None and seen + len(records) >= options.max_records:
                            yield records[: options.max_records - seen]
                            call.cancel()
                            return
                        idle.pause()  # the consumer's time with the records is not idle time
                        yield records
                        seen += len(records)
                        idle.touch()
                    resume_after = int(response.position)
            except grpc.aio.AioRpcError as exc:
                if not connected:
                    raise
                await attempts.failed(exc)


def _cancelling() -> bool:
    """Whether the current task is being cancelled (Ctrl-C, say), not just a call it was reading."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _IdleWatch:
    """Cancels the stream being read once ``seconds`` pass without a record (None: never).

    One timer for the whole tail, moved on only when it fires: a ``wait_for``
    around every read would cost a task and a timer per response, and live
    tails read hundreds of responses a second.
    """

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._call: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self.expired = False

    def __enter__(self) -> _IdleWatch:
        if self._seconds is not None:
            self._timer = self._loop.call_at(self._last + self._seconds, self._check)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def watch(self, call: Any) -> None:
        """The call to cancel on expiry."""
        self._call = call

    def pause(self) -> None:
        """Records are being handed on: not idle until ``touch``."""
        self._paused = True

    def touch(self) -> None:
        """Records were handed on; idle from now."""
        self._paused = False
        self._last = self._loop.time()

    def _check(self) -> None:
        assert self._seconds is not None
        due = (self._loop.time() if self._paused else self._last) + self._seconds
        if due > self._loop.time():
            self._timer = self._loop.call_at(due, self._check)
        else:
            self._timer = None
            self.expired = True
            if self._call is not None:
                self._call.cancel()
