"""Async servers on an event loop of their own, in a thread, for in-process CLI tests.

``streamcli.cli.main.main`` runs each command with ``asyncio.run``, which cannot
nest in a test's running loop: a server the CLI talks to in-process serves from
another thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tests.support.servers import running_server


@contextlib.contextmanager
def in_thread(start: Callable[[], Any]) -> Iterator[Any]:
    """Run the async context manager ``start()`` on an event loop in a thread; yield what it yields.

    The loop runs until the block ends, then the context manager exits on it.
    """
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with start() as value:
                ready.set_result(value)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_wait(ready), loop).result(30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


async def _wait(future: asyncio.Future[Any]) -> Any:
    return await future


@contextlib.contextmanager
def threaded_server(data_dir: pathlib.Path, **config: Any) -> Iterator[str]:
    """The real server (``running_server``) in a thread; yields its address."""
    with in_thread(lambda: running_server(data_dir, **config)) as server:
        yield server.address
