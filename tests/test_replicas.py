"""Replicas: real ``streamcli serve`` processes on one real Redis, and what the Redis backend refuses.

Subprocesses, because two replicas are two processes (each its own server, event loop and Redis
connections) sharing only Redis and the data dir.
"""

from __future__ import annotations

import json
import pathlib

import grpc
import pytest

from streamcli.errors import UsageError
from streamcli.server.app import ServerConfig, start_server
from tests.support.inprocess import Background, cli
from tests.support.servers import client, running_server, serve_process


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


async def test_the_metric_rpcs_say_redis_does_not_support_them_yet(redis_url: str, tmp_path: pathlib.Path) -> None:
    from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

    async with running_server(tmp_path / "data", backend=redis_url) as server, client(server.address) as conn:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await conn.stub.ListMetricSeries(pb.ListMetricSeriesRequest())
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "--backend redis does not support metrics yet" in (refused.value.details() or "")
        listed = await conn.stub.ListFiles(pb.ListFilesRequest())
        assert list(listed.files) == []  # the rest of the server works


async def test_serve_on_redis_refuses_a_quota_at_start(redis_url: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(UsageError, match=r"--backend redis does not support --quota yet"):
        await start_server(ServerConfig(data_dir=tmp_path / "data", address="127.0.0.1:0", backend=redis_url, quota=10))
