"""``Pipeline``: the blocking steps of one transfer (disk reads and writes, hashing), in order, off the event loop.

The event loop hands each step over and goes on serving every other stream; a few steps run ahead of it
(reading) or behind it (writing), never more than the caller's depth, so a transfer holds a few chunks in
memory whatever its size. The steps of one pipeline run one at a time, on a thread of a shared pool (none
is started per transfer: many small files each have a pipeline). hashlib and file I/O release the GIL on
large buffers, so a step overlaps with the loop's own work on another core. Shared by the server (upload
writes, download reads) and the client (upload reads, download writes).

Usage, writing behind::

    pipeline: Pipeline[None] = Pipeline()
    try:
        for chunk in chunks:
            pipeline.put(functools.partial(write, chunk))
            while len(pipeline) > DEPTH:
                await pipeline.take()          # the first failure of a step is raised here
        await pipeline.drain()
    finally:
        await pipeline.close()                 # before the file it writes is closed

and reading ahead: ``put`` a few reads, then ``take`` the oldest and ``put`` the next.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a step's failure as seen: one that nobody awaits (the transfer ended first) is not worth a warning."""
    if not future.cancelled():
        future.exception()


class StepSkipped(Exception):
    """A step that did not run because one given before it failed."""


#: How much lower than the process's the CPU priority of the worker threads is (Linux: a thread's nice value
#: is its own): when the cores are busy, the event loop's thread, which serves every other stream (chats,
#: tails) and hands the transfer its work, runs first, and the disk and hashing work of transfers takes what
#: is left. Measured in bench/README.md ("File transfer").
WORKER_NICENESS = 10


def _lower_priority() -> None:
    """(On each worker thread, once.) Lower this thread's CPU priority by ``WORKER_NICENESS``."""
    if not hasattr(os, "setpriority") or not WORKER_NICENESS:
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):  # (raising one's nice value needs no privilege; a sandbox may refuse)
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + WORKER_NICENESS)


#: The threads that run every pipeline's steps: each pipeline's one at a time, so this many transfers at once
#: at most (one more waits for a thread); threads are reused, not started per transfer.
_WORKERS = concurrent.futures.ThreadPoolExecutor(
    32, thread_name_prefix="streamcli-transfer", initializer=_lower_priority
)


class Pipeline(Generic[T]):
    """Steps run one at a time, in the order given, on a worker thread; results taken in the same order.

    After a step fails, the steps given after it do not run (nothing is written after a failed write): they
    end with ``StepSkipped``.
    """

    def __init__(self) -> None:
        self._steps: collections.deque[concurrent.futures.Future[T]] = collections.deque()  # given, not taken
        self._queue: collections.deque[tuple[Callable[[], T], concurrent.futures.Future[T]]] = collections.deque()
        self._lock = threading.Lock()  # guards _queue and _running, shared with the worker
        self._running = False  # a worker is running this pipeline's steps
        self._failure: BaseException | None = None  # set by the worker, before it starts the next step

    def __len__(self) -> int:
        """Steps given and not taken yet (waiting, running or done)."""
        return len(self._steps)

    def put(self, step: Callable[[], T]) -> None:
        """Run ``step`` after the steps given before it."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._steps.append(future)
        with self._lock:
            self._queue.append((step, future))
            if self._running:
                return  # the worker running the steps before it takes it next
            self._running = True
        _WORKERS.submit(self._run)

    def _run(self) -> None:
        """(On a worker thread.) Run the steps queued, in order, until there are none."""
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                step, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled by close()
            if self._failure is not None:
                future.set_exception(StepSkipped("an earlier step failed"))
                continue
            try:
                result = step()
            except BaseException as exc:
                self._failure = exc
                future.set_exception(exc)
            else:
                future.set_result(result)

    async def take(self) -> T:
        """The result of the oldest step not taken yet, once it is done.

        Raises:
            Exception: what the step raised, or for a step skipped after it, what that earlier step raised.
        """
        future = self._steps[0]
        if future.done() and not future.cancelled():  # (a small write is often done by now: no wake-up to wait for)
            self._steps.popleft()
            failure = future.exception()
            if failure is None:
                return future.result()
            if isinstance(failure, StepSkipped):
                assert self._failure is not None
                raise self._failure from None
            raise failure
        wrapped = asyncio.wrap_future(future)
        wrapped.add_done_callback(_retrieve)
        try:
            # Shielded: a cancelled caller leaves the step running, and in the deque for close() to wait for.
            result = await asyncio.shield(wrapped)
        except asyncio.CancelledError:
            raise
        except StepSkipped:
            self._steps.popleft()
            assert self._failure is not None
            raise self._failure from None
        except BaseException:
            self._steps.popleft()
            raise
        self._steps.popleft()
        return result

    async def drain(self) -> None:
        """Wait for every step given; raises the first failure (see ``take``)."""
        while self._steps:
            await self.take()

    async def close(self) -> None:
        """Cancel the steps not started, wait for the one running; failures are dropped.

        Call it before closing what the steps use (the transfer has ended, well or not). Idempotent.
        """
        self._cancel_waiting()
        running = [future for future in self._steps if not future.cancelled()]
        self._steps.clear()
        if not running:
            return
        try:
            wrapped = [asyncio.wrap_future(future) for future in running]
            for future in wrapped:
                future.add_done_callback(_retrieve)
            await asyncio.wait(wrapped)  # (asyncio.wait cancels nothing when it is cancelled itself)
        except asyncio.CancelledError:
            # Cancelled again while a step runs: it must still end before its file is closed.
            concurrent.futures.wait(running)
            raise

    def _cancel_waiting(self) -> None:
        for future in self._steps:
            future.cancel()  # (False, and no effect, for the step that runs or has run)
