"""``Pipeline``: the blocking steps of one transfer (disk reads and writes, hashing) in order on a thread of its own.

The event loop hands each step over and goes on serving every other stream; a few steps run ahead of it
(reading) or behind it (writing), never more than the caller's depth, so a transfer holds a few chunks in
memory whatever its size. hashlib and file I/O release the GIL on large buffers, so a step overlaps with the
loop's own work on another core. Shared by the server (upload writes, download reads) and the client (upload
reads, download writes).

Usage, writing behind::

    pipeline: Pipeline[None] = Pipeline("upload-writer")
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
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a step's failure as seen: one that nobody awaits (the transfer ended first) is not worth a warning."""
    if not future.cancelled():
        future.exception()


class StepSkipped(Exception):
    """A step that did not run because one given before it failed."""


class Pipeline(Generic[T]):
    """Steps run one at a time, in the order given, on one worker thread; results taken in the same order.

    After a step fails, the steps given after it do not run (nothing is written after a failed write): they
    end with ``StepSkipped``.
    """

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"streamcli-{name}")
        self._steps: collections.deque[concurrent.futures.Future[T]] = collections.deque()
        self._failure: BaseException | None = None  # set by the worker thread, before it starts the next step

    def __len__(self) -> int:
        """Steps given and not taken yet (waiting, running or done)."""
        return len(self._steps)

    def put(self, step: Callable[[], T]) -> None:
        """Run ``step`` after the steps given before it."""
        self._steps.append(self._executor.submit(self._run, step))

    def _run(self, step: Callable[[], T]) -> T:
        if self._failure is not None:
            raise StepSkipped("an earlier step failed")
        try:
            return step()
        except BaseException as exc:
            self._failure = exc
            raise

    async def take(self) -> T:
        """The result of the oldest step not taken yet, once it is done.

        Raises:
            Exception: what the step raised, or for a step skipped after it, what that earlier step raised.
        """
        future = self._steps[0]
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
        """Cancel the steps not started, wait for the one running, and let the thread go; failures are dropped.

        Call it before closing what the steps use (the transfer has ended, well or not). Idempotent.
        """
        self._cancel_waiting()
        running = [future for future in self._steps if not future.cancelled()]
        self._steps.clear()
        try:
            if running:
                wrapped = [asyncio.wrap_future(future) for future in running]
                for future in wrapped:
                    future.add_done_callback(_retrieve)
                await asyncio.wait(wrapped)  # (asyncio.wait cancels nothing when it is cancelled itself)
        except asyncio.CancelledError:
            # Cancelled again while a step runs: it must still end before its file is closed.
            concurrent.futures.wait(running)
            raise
        finally:
            self._executor.shutdown(wait=False)

    def _cancel_waiting(self) -> None:
        for future in self._steps:
            future.cancel()  # (False, and no effect, for the step that runs or has run)
