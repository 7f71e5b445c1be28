"""``streamcli.pipeline.Pipeline``: steps in order on one thread, nothing after a failure, close waits."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from streamcli.pipeline import WORKER_NICENESS, Pipeline


async def test_steps_run_in_order_one_at_a_time_off_the_event_loop() -> None:
    pipeline: Pipeline[tuple[int, str, int]] = Pipeline()
    running = [0]
    lock = threading.Lock()

    def step(n: int) -> tuple[int, str, int]:
        with lock:
            running[0] += 1
            at_once = running[0]
        with lock:
            running[0] -= 1
        return n, threading.current_thread().name, at_once

    try:
        for n in range(50):
            pipeline.put(lambda n=n: step(n))
        results = [await pipeline.take() for _ in range(50)]
    finally:
        await pipeline.close()
    assert [n for n, _, _ in results] == list(range(50))
    assert threading.current_thread().name not in {name for _, name, _ in results}
    assert {at_once for _, _, at_once in results} == {1}


async def test_no_step_runs_after_one_that_failed_and_its_failure_is_raised_again() -> None:
    ran: list[int] = []
    pipeline: Pipeline[None] = Pipeline()

    def step(n: int) -> None:
        if n == 2:
            raise OSError(28, "No space left on device")
        ran.append(n)

    try:
        for n in range(5):
            pipeline.put(lambda n=n: step(n))
        await pipeline.take()
        await pipeline.take()
        with pytest.raises(OSError) as failed:
            await pipeline.take()
        with pytest.raises(OSError) as again:  # a skipped step reports the failure it was skipped for
            await pipeline.drain()
    finally:
        await pipeline.close()
    assert ran == [0, 1]
    assert again.value is failed.value


async def test_close_waits_for_the_step_that_runs_and_drops_those_waiting() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []
    pipeline: Pipeline[None] = Pipeline()

    def blocked() -> None:
        started.set()
        release.wait()
        ran.append("blocked")

    pipeline.put(blocked)
    pipeline.put(lambda: ran.append("later"))
    assert await asyncio.to_thread(started.wait, 30)
    closing = asyncio.ensure_future(pipeline.close())
    await asyncio.sleep(0)
    assert not closing.done()  # the running step has not ended
    release.set()
    await closing
    assert ran == ["blocked"]
    assert len(pipeline) == 0


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread nice values here")
async def test_steps_run_at_a_lower_cpu_priority_than_the_event_loop() -> None:
    pipeline: Pipeline[int] = Pipeline()
    try:
        pipeline.put(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        worker = await pipeline.take()
    finally:
        await pipeline.close()
    loop = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert WORKER_NICENESS > 0
    assert worker == min(loop + WORKER_NICENESS, 19)
