"""The Redis backend against a real ``redis-server``: the test harness, ``open_backend`` with a Redis URL,
and what only the Redis backend does. The log contract shared with the embedded backend is
``tests/test_log_contract.py``."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import time
from collections.abc import AsyncIterator

import pytest

from streamcli.backends import open_backend
from streamcli.backends.base import (
    Backend,
    ConditionFailedError,
    LogBounds,
    MetricDelta,
    NewRecord,
    PushMark,
    StoreUnavailableError,
)
from streamcli.backends.redis_backend import parse_redis_url, redis_url_for_logs
from streamcli.errors import UnavailableError, UsageError
from streamcli.services import sketches
from streamcli.services.metrics import _merge_stored
from tests.support.redis import RedisServer, redis_server
from tests.support.servers import free_port

# --- the harness ----------------------------------------------------------------


def test_the_session_redis_runs_without_persistence_on_loopback(redis_process: RedisServer) -> None:
    assert redis_process.command("CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert redis_process.command("CONFIG", "GET", "appendonly") == b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    assert b"127.0.0.1" in redis_process.command("CONFIG", "GET", "bind")


def test_each_test_gets_an_empty_redis(redis_url: str, redis_process: RedisServer) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_process.port}/0"
    assert redis_process.command("DBSIZE") == b":0\r\n"
    assert redis_process.command("SET", "left-behind", "x").startswith(b"+OK")


def test_a_redis_server_is_stopped_when_its_block_ends(tmp_path: pathlib.Path) -> None:
    with redis_server(tmp_path) as running:
        assert running.command("PING") == b"+PONG\r\n"
    assert running.process.poll() is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", running.port), timeout=2):
        pass


# --- open_backend with a Redis URL ------------------------------------------------------


@contextlib.asynccontextmanager
async def replica(url: str, data_dir: pathlib.Path) -> AsyncIterator[Backend]:
    """One replica's backend on ``url`` (several may share one Redis and one data dir)."""
    backend = open_backend(url, data_dir)
    try:
        assert backend.ready is not None
        await backend.ready()
        yield backend
    finally:
        await backend.close()


@pytest.mark.parametrize(
    "url",
    ["redis://", "redis://host:port/0", "redis://h:6379/zero", "redis://h:6379/0/1", "redis:/h/0", "redis://h/0?x=1"],
)
def test_a_malformed_redis_url_is_a_usage_error(tmp_path: pathlib.Path, url: str) -> None:
    with pytest.raises(UsageError, match=r"expected redis://HOST:PORT/DB"):
        open_backend(url, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_parse_redis_url_defaults_and_password_kept_out_of_logs() -> None:
    assert parse_redis_url("redis://example.test") == ("example.test", 6379, 0)
    assert parse_redis_url("redis://127.0.0.1:7000/3") == ("127.0.0.1", 7000, 3)
    assert redis_url_for_logs("redis://:s3cret@127.0.0.1:7000/3") == "redis://:***@127.0.0.1:7000/3"
    assert redis_url_for_logs("redis://127.0.0.1:7000/3") == "redis://127.0.0.1:7000/3"


async def test_an_unreachable_redis_is_unavailable_at_start(tmp_path: pathlib.Path) -> None:
    backend = open_backend(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "data")
    try:
        assert backend.ready is not None
        with pytest.raises(UnavailableError, match=r"cannot reach Redis at redis://127\.0\.0\.1:"):
            await backend.ready()
    finally:
        await backend.close()


async def test_a_redis_gone_meanwhile_is_store_unavailable_for_every_kind_of_call(tmp_path: pathlib.Path) -> None:
    """Commands, pipelines, scripts and a wait blocked when Redis stops: each raises the seam's error."""
    with redis_server(tmp_path / "redis") as running:
        async with replica(running.url(), tmp_path / "data") as backend:
            await backend.log.append("s", [NewRecord("k", "event", b"x")])
            blocked = asyncio.ensure_future(backend.log.wait_for("s", 1, timeout=60))
            while b"cmd=xread" not in running.command("CLIENT", "LIST"):  # until the wait blocks in Redis
                await asyncio.sleep(0.01)
            running.stop()
            with pytest.raises(StoreUnavailableError, match="the server cannot reach its Redis: "):
                await blocked
            calls = [
                backend.log.bounds("s"),  # a command
                backend.log.read("s", 0, 10),  # a pipeline
                backend.log.append("s", [NewRecord("k", "event", b"y")]),  # a script
                backend.log.wait_for("t", 0, timeout=1),
                backend.metadata.list_files(10),
            ]
            for call in calls:
                with pytest.raises(StoreUnavailableError, match="the server cannot reach its Redis: "):
                    await call
            assert backend.ready is not None
            with pytest.raises(UnavailableError, match=r"cannot reach Redis at redis://127\.0\.0\.1:\d+/0: Error 111"):
                await backend.ready()


async def test_the_redis_backend_keeps_file_bytes_under_the_data_dir(redis_url: str, tmp_path: pathlib.Path) -> None:
    async with replica(redis_url, tmp_path / "data") as backend:
        assert backend.name == "redis"
        assert backend.blobs.blob_path("f1") == tmp_path / "data" / "blobs" / "files" / "f1"
        assert not (tmp_path / "data" / "streamcli.db").exists()


# --- replicas on one Redis ------------------------------------------------------------


def new(n: int) -> NewRecord:
    return NewRecord("k", "event", f"payload-{n}".encode())


async def test_two_replicas_appending_at_once_get_distinct_increasing_ids(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    async with replica(redis_url, tmp_path / "data") as a, replica(redis_url, tmp_path / "data") as b:

        async def writer(backend: Backend, name: str) -> list[int]:
            ids = []
            for n in range(50):
                stored = await backend.log.append("s", [NewRecord("k", name, f"{name}-{n}".encode())] * 2)
                ids += [r.id for r in stored]
            return ids

        ids_a, ids_b = await asyncio.gather(writer(a, "a"), writer(b, "b"))
        assert ids_a == sorted(ids_a) and ids_b == sorted(ids_b)
        assert sorted(ids_a + ids_b) == list(range(1, 201))  # no id twice, none skipped
        records = await b.log.read("s", 0, 1000)
        assert [r.id for r in records] == list(range(1, 201))
        assert [r.timestamp for r in records] == sorted(r.timestamp for r in records)
        assert [r.payload for r in records if r.kind == "a"] == [f"a-{n}".encode() for n in range(50) for _ in (0, 1)]


async def test_of_two_replicas_racing_a_conditional_append_one_wins(redis_url: str, tmp_path: pathlib.Path) -> None:
    async with replica(redis_url, tmp_path / "data") as a, replica(redis_url, tmp_path / "data") as b:
        await a.log.append("doc", [new(0)])
        outcomes = await asyncio.gather(
            a.log.append("doc", [new(1)], if_last_id=1),
            b.log.append("doc", [new(2)], if_last_id=1),
            return_exceptions=True,
        )
        won = [o for o in outcomes if isinstance(o, list)]
        lost = [o for o in outcomes if isinstance(o, ConditionFailedError)]
        assert len(won) == 1 and len(lost) == 1
        assert (lost[0].expected, lost[0].last_id) == (1, 2)
        assert [r.id for r in won[0]] == [2]
        assert (await b.log.bounds("doc")).last_id == 2


async def test_a_producer_is_stored_once_whichever_replica_it_reaches(redis_url: str, tmp_path: pathlib.Path) -> None:
    records = [NewRecord("k", "event", f"p-{n}".encode(), producer="p", sequence=n) for n in range(1, 5)]
    async with replica(redis_url, tmp_path / "data") as a, replica(redis_url, tmp_path / "data") as b:
        assert len(await a.log.append("s", records[:3])) == 3
        again = await b.log.append("s", records)  # re-sent to the other replica after a lost answer
        assert [(r.id, r.payload) for r in again] == [(4, b"p-4")]
        state = await a.log.producer("s", "p")
        assert (state.last_sequence, state.first_id, state.last_id) == (4, 1, 4)
        cut = time.time() + 1
        assert await b.log.forget_producers("s", cut) == 1
        assert (await a.log.producer("s", "p")).last_sequence == 0


async def test_a_waiting_reader_is_woken_by_an_append_through_another_replica(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    async with replica(redis_url, tmp_path / "data") as a, replica(redis_url, tmp_path / "data") as b:
        waiter = asyncio.create_task(b.log.wait_for("s", 0, timeout=30))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await a.log.append("s", [new(1)])
        assert await asyncio.wait_for(waiter, 20) is True


async def test_a_cancelled_wait_leaves_no_busy_connection_behind(redis_url: str, tmp_path: pathlib.Path) -> None:
    async with replica(redis_url, tmp_path / "data") as backend:
        for _ in range(3):  # each cancelled wait's connection must not be handed to the next with a reply due
            waiter = asyncio.create_task(backend.log.wait_for("s", 0, timeout=30))
            await asyncio.sleep(0.02)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        waiter = asyncio.create_task(backend.log.wait_for("s", 0, timeout=30))
        await asyncio.sleep(0.02)
        await backend.log.append("s", [new(1)])
        assert await asyncio.wait_for(waiter, 20) is True
        assert await backend.log.wait_for("other", 0, timeout=0.05) is False


async def test_release_readers_ends_blocked_waits_at_once(redis_url: str, tmp_path: pathlib.Path) -> None:
    async with replica(redis_url, tmp_path / "data") as backend:
        waiters = [asyncio.create_task(backend.log.wait_for("s", 0, timeout=60)) for _ in range(3)]
        await asyncio.sleep(0.05)
        backend.log.release_readers()
        assert await asyncio.wait_for(asyncio.gather(*waiters), 10) == [False, False, False]
        assert await backend.log.wait_for("s", 0, timeout=60) is False  # later ones too
        await backend.log.append("s", [new(1)])  # the store itself still works
        assert [r.id for r in await backend.log.read("s", 0, 10)] == [1]


async def test_heads_lists_streams_by_prefix_after_a_name(redis_url: str, tmp_path: pathlib.Path) -> None:
    async with replica(redis_url, tmp_path / "data") as backend:
        for stream in ("doc:b", "doc:a", "doc:c", "docsnap:a", "room:x"):
            await backend.log.append(stream, [new(1)])
        await backend.log.append("doc:b", [new(2)])
        heads = await backend.log.heads("doc:", "", 10)
        assert [(h.stream, h.bounds.last_id) for h in heads] == [("doc:a", 1), ("doc:b", 2), ("doc:c", 1)]
        assert [h.stream for h in await backend.log.heads("doc:", "doc:a", 1)] == ["doc:b"]
        assert heads[1].updated_at >= heads[0].updated_at > 0
        await backend.log.drop("doc:b")
        assert [h.stream for h in await backend.log.heads("doc:", "", 10)] == ["doc:a", "doc:c"]
        assert await backend.log.bounds("doc:b") == LogBounds(0, 0)


def test_replies_are_parsed_by_hiredis() -> None:
    # redis-py falls back to its pure-Python parser without hiredis: about ten times slower per log entry
    # read (pyproject.toml), which every replay, tail and batch read on Redis would pay.
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE


def one_sample(value: float) -> bytes:
    sketch = sketches.new_sketch()
    sketches.add_all(sketch, [value])
    return sketches.encode(sketch)


async def test_replicas_name_each_series_once_and_share_the_limit(redis_url: str, tmp_path: pathlib.Path) -> None:
    async with replica(redis_url, tmp_path / "a") as a, replica(redis_url, tmp_path / "b") as b:
        added = await asyncio.gather(
            *(
                store.metrics.add_metric_series("u", "m", f'{{"k":"{n}"}}', False, 3)
                for n in range(4)
                for store in (a, b)
            )
        )
        ids = {(s.labels, s.series_id) for s in added if s is not None}
        assert len(ids) == 3 and len({labels for labels, _ in ids}) == 3  # each identity one id; the 4th refused
        assert sum(s is None for s in added) == 2
        overflow = await b.metrics.add_metric_series("u", "", "{}", True, 3)
        assert overflow is not None and overflow.series_id == 4  # (not counted against the limit)
        assert [s.series_id for s in await a.metrics.metric_series(2)] == [3, 4]


async def test_flushes_of_one_series_from_two_replicas_at_once_each_count_once(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    """Forty flushes at once, half through each replica, into one series and minute: each merges once
    (an optimistic transaction that lost to another's write reads again)."""
    async with replica(redis_url, tmp_path / "a") as a, replica(redis_url, tmp_path / "b") as b:
        series = await a.metrics.add_metric_series("", "m", "{}", False, 10)
        assert series is not None

        async def flush(store: Backend, n: int) -> None:
            delta = one_sample(float(n + 1))
            await store.metrics.merge_metrics(
                [MetricDelta(series.series_id, delta, ((1000, delta),))], _merge_stored, PushMark("", f"p{n}", n + 1)
            )

        await asyncio.gather(*(flush(store, n) for n in range(20) for store in (a, b)))
        whole = (await b.metrics.stored_metrics([series.series_id], None))[series.series_id]
        minutes = (await b.metrics.stored_metrics([series.series_id], 0))[series.series_id]
        assert minutes.minutes == (1000,)
        for held in (whole, minutes):
            sketch = sketches.decode(held.aggregates[0])
            assert (sketch.count, sketch._sum) == (40, 2 * sum(range(1, 21)))
        assert [await a.metrics.push_position("", f"p{n}") for n in range(20)] == list(range(1, 21))
        # Retention: the minute goes (the all-time aggregate stays), and pushes idle since before now.
        assert await a.metrics.forget_metric_minutes(1001) == 1
        assert await a.metrics.stored_metrics([series.series_id], 0) == {}
        assert (await a.metrics.stored_metrics([series.series_id], None))[
            series.series_id
        ].aggregates == whole.aggregates
        assert await b.metrics.forget_pushes(time.time() + 1) == 20
        assert await a.metrics.push_position("", "p3") == 0
