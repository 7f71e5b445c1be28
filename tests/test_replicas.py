"""Replicas: real ``streamcli serve`` processes on one real Redis, what the Redis backend refuses, a
replica whose Redis goes away and comes back, and a batch whose replica dies midway.

Subprocesses, because two replicas are two processes (each its own server, event loop and Redis
connections) sharing only Redis and the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib

import grpc
import numpy as np
import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.batches import batch_id_for
from streamcli.client.records import FieldMap
from streamcli.errors import ExitStatus, UsageError
from streamcli.server.app import ServerConfig, start_server
from tests.support.inprocess import Background, Run, acli, cli
from tests.support.redis import redis_server
from tests.support.servers import client, running_server, serve_process
from tests.test_batch_cli import start_ingest, wait_until
from tests.test_collab import joined, text_of
from tests.test_metrics import assert_quantiles_within_one_percent, collect, messages, sample, series


def test_a_tail_on_one_replica_sees_what_is_published_through_another(redis_url: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve_process(tmp_path / "a", "--backend", redis_url) as a,
        serve_process(tmp_path / "b", "--backend", redis_url) as b,
    ):
        assert f"backend {redis_url}" in a.log()
        first = cli(a.address, "--json", "events", "publish", "-u", "alice", "-t", "login")
        assert first.code == 0, first.err
        with Background(b.address, "--json", "tail", "events", "--all-users", "--since", "1h", "--max", "3") as tail:
            second = cli(a.address, "--json", "events", "publish", "-u", "bob", "-t", "login")
            third = cli(b.address, "--json", "events", "publish", "-u", "carol", "-t", "logout")
            seen = tail.communicate(timeout=60)
    assert (second.code, third.code) == (0, 0), (second.err, third.err)
    assert seen.code == 0, seen.err
    records = [json.loads(line) for line in seen.out.splitlines()]
    assert [(r["id"], r["user_id"], r["type"]) for r in records] == [
        (1, "alice", "login"),
        (2, "bob", "login"),
        (3, "carol", "logout"),
    ]


async def test_streams_through_two_replicas_into_one_series_merge_into_its_quantiles(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    """Two streams at once, one through each replica, into the same series (and each into one series of
    its own): the series holds every sample once, its quantiles within the sketch's 1% of the exact ones."""
    rng = np.random.default_rng(17)
    through_a = rng.lognormal(0.0, 1.0, 60_000)
    through_b = rng.lognormal(1.5, 0.5, 60_000)  # another shape: the merge must matter
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve_process(tmp_path / "a", "--backend", redis_url) as a,
        serve_process(tmp_path / "b", "--backend", redis_url) as b,
    ):
        async with client(a.address) as on_a, client(b.address) as on_b:
            sent = await asyncio.gather(
                collect(on_a, messages([sample("latency", v, route="/") for v in through_a.tolist()], 2000)),
                collect(on_b, messages([sample("latency", v, route="/") for v in through_b.tolist()], 2000)),
                collect(on_a, [pb.CollectMetricsRequest(metrics=[sample("only_a", 1.0)])]),
                collect(on_b, [pb.CollectMetricsRequest(metrics=[sample("only_b", 2.0)])]),
            )
            assert [r.metrics_accepted for r in sent] == [60_000, 60_000, 1, 1]
            listed_on_a = {s.name: s for s in await series(on_a)}
            listed_on_b = {s.name: s for s in await series(on_b)}
    assert sorted(listed_on_a) == sorted(listed_on_b) == ["latency", "only_a", "only_b"]
    for listed in (listed_on_a, listed_on_b):
        assert_quantiles_within_one_percent(listed["latency"], np.concatenate([through_a, through_b]))
        assert (listed["only_a"].count, listed["only_b"].count) == (1, 1)


async def test_serve_on_redis_refuses_sync_every_commit(redis_url: str, tmp_path: pathlib.Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "data", address="127.0.0.1:0", backend=redis_url, sync_every_commit=True)
    with pytest.raises(UsageError, match=r"--sync-every-commit is for the embedded store; on Redis, durability is"):
        await start_server(config)


async def health_until(address: str, serving: bool) -> Run:
    """``streamcli health`` until it says SERVING (exit 0) or, not ``serving``, NOT_SERVING (the server's
    watcher pings its Redis every second)."""
    for _ in range(300):
        run = await acli(address, "health")
        if (run.code == 0) if serving else ("NOT_SERVING" in run.out + run.err):
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never said {'SERVING' if serving else 'NOT_SERVING'}: {run.out}{run.err}")


async def test_a_replica_whose_redis_goes_away_says_unavailable_and_recovers_by_itself(tmp_path: pathlib.Path) -> None:
    """Redis stopped and started again while a tail is connected: calls meanwhile end UNAVAILABLE saying
    why, health says NOT_SERVING, then SERVING by itself; the tail resumes with no gap or duplicate.
    The server runs in this loop; its Redis is a process of its own with an append-only file, so that
    started again on the same port it has all it acknowledged."""
    with contextlib.ExitStack() as redis_processes:
        first = redis_processes.enter_context(redis_server(tmp_path / "redis", persistent=True))
        async with running_server(tmp_path / "data", backend=first.url()) as server, client(server.address) as conn:
            published = await acli(server.address, "events", "publish", "-u", "alice", "-t", "login")
            assert published.code == 0, published.err
            args = ("--json", "tail", "events", "--all-users", "--since", "1h", "--max", "3")
            with Background(server.address, *args) as tail:
                history = json.loads(await asyncio.to_thread(tail.stdout.readline))  # connected, history read
                first.stop()
                down = await health_until(server.address, serving=False)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await conn.stub.ListFiles(pb.ListFilesRequest())
                listed = await acli(server.address, "files", "ls")
                redis_processes.enter_context(redis_server(tmp_path / "redis", port=first.port, persistent=True))
                up = await health_until(server.address, serving=True)
                for user in ("bob", "carol"):
                    published = await acli(server.address, "events", "publish", "-u", user, "-t", "login")
                    assert published.code == 0, published.err
                seen = await asyncio.to_thread(tail.communicate, timeout=60)
    assert (down.code, down.out, up.code, up.out) == (ExitStatus.UNAVAILABLE, "NOT_SERVING\n", 0, "SERVING\n")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the server cannot reach its Redis" in (refused.value.details() or "")
    assert listed.code == ExitStatus.UNAVAILABLE
    assert len(listed.error_lines) == 1 and "the server cannot reach its Redis" in listed.err
    assert seen.code == 0, seen.err
    assert "lost the stream (UNAVAILABLE: the server cannot reach its Redis" in seen.err  # and came back
    records = [history, *(json.loads(line) for line in seen.out.splitlines())]
    assert [(r["id"], r["user_id"]) for r in records] == [(1, "alice"), (2, "bob"), (3, "carol")]


async def test_collab_editors_on_two_replicas_see_each_others_edits_live_and_converge(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve_process(tmp_path / "a", "--backend", redis_url) as a,
        serve_process(tmp_path / "b", "--backend", redis_url) as b,
    ):
        async with client(a.address) as on_a, client(b.address) as on_b:
            async with joined(on_a, "doc", "alice") as alice, joined(on_b, "doc", "bob") as bob:
                assert text_of(await alice.event()) == (0, "")
                assert text_of(await bob.event()) == (0, "")
                await alice.edit(0, 0, text="hello", seq=1)
                # Bob, on B, is sent alice's edit committed through A, without sending anything himself.
                for stream in (alice, bob):
                    event = await stream.event()
                    assert (event.revision, event.user_id, event.edit.insert_text) == (1, "alice", "hello")
                # Both based on revision 1, at once through different replicas: one commits first, the other
                # is transformed onto it; each editor is sent both revisions, in the same order.
                await alice.edit(1, 0, text="A", seq=2)
                await bob.edit(1, 5, text="B", seq=1)
                seen_by_alice = await alice.events(2)
                seen_by_bob = await bob.events(2)
            order = [(e.revision, e.user_id, e.edit.position, e.edit.insert_text) for e in seen_by_alice]
            assert [(e.revision, e.user_id, e.edit.position, e.edit.insert_text) for e in seen_by_bob] == order
            assert [revision for revision, *_ in order] == [2, 3]
            async with joined(on_a, "doc", "carol") as carol, joined(on_b, "doc", "dave") as dave:
                assert text_of(await carol.event()) == text_of(await dave.event()) == (3, "AhelloB")


def records_held(address: str, batch_id: str) -> int:
    """What the batch holds, read through the replica at ``address`` (0 until it exists)."""
    with grpc.insecure_channel(address) as channel:
        get = channel.unary_unary(
            "/streaming.v1.StreamingService/GetBatch",
            request_serializer=pb.GetBatchRequest.SerializeToString,
            response_deserializer=pb.GetBatchResponse.FromString,
        )
        try:
            return int(get(pb.GetBatchRequest(batch_id=batch_id), timeout=30).batch.records_received)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            return 0


def test_a_batch_cut_off_with_its_replica_completes_through_another_storing_each_record_once(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    lines = 150_000
    source = tmp_path / "records.ndjson"
    source.write_text("".join(f'{{"key": "k{n % 7}", "value": {n}}}\n' for n in range(lines)))
    batch_id = batch_id_for(source, source.stat().st_size, source.stat().st_mtime_ns, FieldMap(), None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve_process(tmp_path / "a", "--backend", redis_url) as a,
        serve_process(tmp_path / "b", "--backend", redis_url) as b,
    ):
        first = start_ingest(a.address, source)
        # Read through B: what A stored is in Redis, not in A.
        wait_until(lambda: records_held(b.address, batch_id) > lines // 10 or first.poll() is not None, 120)
        a.process.kill()  # SIGKILL: A says nothing more, and the client's stream breaks mid-batch
        a.process.wait(10)
        first.kill()
        first.communicate(timeout=60)
        assert 0 < records_held(b.address, batch_id) < lines
        second = start_ingest(b.address, source)  # the same command, told the other replica
        out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    result = json.loads(out)
    assert (result["stored"], result["complete"]) == (lines, True)
    assert sum(a["count"] for a in result["aggregates"]) == lines  # each record once: none lost, none twice
    assert sum(a["sum"] for a in result["aggregates"]) == lines * (lines - 1) / 2
