"""Replicas: real ``streamcli serve`` processes on one real Redis, what the Redis backend refuses, a
replica whose Redis goes away and comes back, and a batch whose replica dies midway.

Subprocesses, because two replicas are two processes (each its own server, event loop and Redis
connections) sharing only Redis and the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import pathlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.batches import batch_id_for
from streamcli.client.connection import Connection
from streamcli.client.records import FieldMap
from streamcli.errors import ExitStatus, UsageError
from streamcli.server.app import ServerConfig, start_server
from tests.support.chat import RawChat
from tests.support.inprocess import Background, Run, acli, cli
from tests.support.redis import RedisServer, redis_server
from tests.support.servers import ServeProcess, client, running_server, serve_process
from tests.test_batch_cli import held, start_ingest, wait_until
from tests.test_collab import joined, presence_of, text_of
from tests.test_metrics import (
    assert_quantiles_within_one_percent,
    collect,
    messages,
    one_push_at_a_time,
    sample,
    series,
)

TYPING = pb.CHAT_MESSAGE_TYPE_TYPING


@contextlib.contextmanager
def two_replicas(tmp_path: pathlib.Path, redis_url: str, *args: str) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """Replicas A and B on ``redis_url`` (their logs in ``tmp_path/a`` and ``tmp_path/b``), each with ``args``."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve_process(tmp_path / "a", "--backend", redis_url, *args) as a,
        serve_process(tmp_path / "b", "--backend", redis_url, *args) as b,
    ):
        yield a, b


def subscribers(redis: RedisServer, channel: str) -> int:
    """How many replicas subscribe to a signal channel in Redis."""
    reply = redis.command("PUBSUB", "NUMSUB", f"streamcli:signal:{channel}")
    return int(reply.rsplit(b":", 1)[1])


async def until_subscribed(redis: RedisServer, channel: str, count: int) -> None:
    for _ in range(300):
        if subscribers(redis, channel) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{channel} never had {count} subscribing replicas")


async def members(conn: Connection, room: str) -> list[str]:
    reply = await conn.stub.ListRoomMembers(pb.ListRoomMembersRequest(room_id=room))
    return list(reply.presence.users)


async def who(chat: RawChat) -> list[str]:
    await chat.call.write(pb.ChatRequest(who=True))
    while not (response := await chat.next()).HasField("presence"):
        pass
    return list(response.presence.users)


def test_a_tail_on_one_replica_sees_what_is_published_through_another(redis_url: str, tmp_path: pathlib.Path) -> None:
    with two_replicas(tmp_path, redis_url) as (a, b):
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
    with two_replicas(tmp_path, redis_url) as (a, b):
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
        wait_until(lambda: held(b.address, batch_id) > lines // 10 or first.poll() is not None, 120)
        a.process.kill()  # SIGKILL: A says nothing more, and the client's stream breaks mid-batch
        a.process.wait(10)
        first.kill()
        first.communicate(timeout=60)
        assert 0 < held(b.address, batch_id) < lines
        second = start_ingest(b.address, source)  # the same command, told the other replica
        out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    result = json.loads(out)
    assert (result["stored"], result["complete"]) == (lines, True)
    assert sum(a["count"] for a in result["aggregates"]) == lines  # each record once: none lost, none twice
    assert sum(a["sum"] for a in result["aggregates"]) == lines * (lines - 1) / 2


async def alice_and_bob(on_a: Connection, on_b: Connection) -> tuple[RawChat, RawChat]:
    """Alice in the lobby through ``on_a``, bob through ``on_b``, once both have seen bob join."""
    alice = await RawChat(on_a, "lobby", "alice").open()
    bob = await RawChat(on_b, "lobby", "bob").open()
    await alice.messages_until("bob joined")
    await bob.messages_until("bob joined")
    return alice, bob


async def test_chat_users_on_two_replicas_see_each_other_and_each_others_typing(
    redis_process: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    """Presence (ChatPresence, /who and ListRoomMembers), the one-session-per-user rule and TYPING, across
    replicas as on one server."""
    with two_replicas(tmp_path, redis_url) as (a, b):
        async with client(a.address) as on_a, client(b.address) as on_b:
            alice, bob = await alice_and_bob(on_a, on_b)
            seen = (await who(alice), await who(bob), await members(on_a, "lobby"), await members(on_b, "lobby"))
            second = await RawChat(on_b, "lobby", "alice").open()  # alice again, on the other replica
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await second.next()
            duplicate = await RawChat(on_b, "lobby", "alice", allow_duplicate=True).open()
            await duplicate.messages_until("alice joined")
            await duplicate.close()
            told = [m.content for m in await alice.messages_until("alice left") if m.user_id == "system"]
            await until_subscribed(redis_process, "typing:lobby", 2)  # each replica's room hears TYPING
            await bob.say("", kind=TYPING)
            await bob.say("done typing")
            heard = await alice.messages_until("done typing")
            while not any(m.type == TYPING for m in heard):  # (a signal, not in the log: it may come after)
                heard.extend((await alice.next()).messages)
            await bob.close()
            after = await members(on_a, "lobby")
            await alice.close()
    assert seen == (["alice", "bob"],) * 4
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "alice is already in room lobby in another session" in (refused.value.details() or "")
    assert [(m.user_id, m.type) for m in heard if m.type == TYPING] == [("bob", TYPING)]
    assert after == ["alice"]
    assert told == ["alice joined", "alice left"]  # the duplicate session's, once each


async def test_chat_users_on_two_replicas_see_the_same_messages_in_the_same_order(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    with two_replicas(tmp_path, redis_url) as (a, b):
        async with client(a.address) as on_a, client(b.address) as on_b:
            alice, bob = await alice_and_bob(on_a, on_b)

            async def talk(chat: RawChat, name: str) -> None:
                for n in range(15):  # (within the rate limit's burst of 20)
                    await chat.say(f"{name} {n}")
                await chat.say(f"{name} done")

            await asyncio.gather(talk(alice, "alice"), talk(bob, "bob"))  # through both replicas at once
            seen: dict[str, list[pb.ChatMessage]] = {"alice": [], "bob": []}
            for name, chat in (("alice", alice), ("bob", bob)):
                while not {"alice done", "bob done"} <= {m.content for m in seen[name]}:
                    seen[name].extend((await chat.next()).messages)
            await alice.close()
            await bob.close()
    order = {name: [(m.id, m.user_id, m.content) for m in messages] for name, messages in seen.items()}
    said = [entry for entry in order["alice"] if entry[1] != "system"]
    assert len(said) == 32 and len({content for _, _, content in said}) == 32  # each message once
    assert [entry for entry in order["bob"] if entry[1] != "system"] == said  # in the same order, with the same ids
    assert [entry[0] for entry in said] == sorted(entry[0] for entry in said)


async def test_the_members_of_a_killed_replica_vanish_within_their_lease(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    with two_replicas(tmp_path, redis_url) as (a, b):
        async with client(a.address) as on_a, client(b.address) as on_b:
            await RawChat(on_a, "lobby", "alice").open()  # its replica is killed under it
            bob = await RawChat(on_b, "lobby", "bob").open()
            await bob.messages_until("bob joined")
            before = await members(on_b, "lobby")
            a.process.kill()  # SIGKILL: replica A leaves nothing; its leases are no longer renewed
            a.process.wait(10)
            for _ in range(120):  # leases expire 6 s after their last renewal (every 2 s)
                if (after := await members(on_b, "lobby")) == ["bob"]:
                    break
                await asyncio.sleep(0.25)
            again = await RawChat(on_b, "lobby", "alice").open()  # alice's session on A is gone
            await again.messages_until("alice joined")
            rejoined = await members(on_b, "lobby")
            await again.close()
            await bob.close()
    assert before == ["alice", "bob"]
    assert after == ["bob"]
    assert rejoined == ["alice", "bob"]


async def test_one_stream_writes_an_upload_whichever_replica_the_others_reach(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    """While a stream through A writes an upload, a resume or a start of the same upload through B is refused
    as on one server; once A's stream has stored it, B serves the file (the replicas share the data dir)."""
    shared = str(tmp_path / "shared")
    data = bytes(range(256)) * 8
    metadata = pb.FileMetadata(filename="f.bin", total_size=len(data), checksum=hashlib.sha256(data).hexdigest())
    with two_replicas(tmp_path, redis_url, "--data-dir", shared) as (a, b):
        async with client(a.address) as on_a, client(b.address) as on_b:
            writing = on_a.stub.UploadFile()
            await writing.write(pb.UploadFileRequest(upload_id="up-1", metadata=metadata))
            await writing.write(pb.UploadFileRequest(chunk=data[:1000]))
            for _ in range(300):  # A's stream holds the upload once it has written its first chunk
                try:
                    status = await on_b.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="up-1"))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND  # (not recorded yet)
                else:
                    if status.committed_offset == 1000:
                        break
                await asyncio.sleep(0.05)
            refused = []
            for first in (
                pb.UploadFileRequest(resume=pb.UploadResume(upload_id="up-1", offset=1000)),
                pb.UploadFileRequest(upload_id="up-1", metadata=metadata),
            ):
                other = on_b.stub.UploadFile()
                await other.write(first)
                await other.done_writing()
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await other
                refused.append((failed.value.code(), failed.value.details()))
            await writing.write(pb.UploadFileRequest(chunk=data[1000:]))
            await writing.done_writing()
            stored = await writing
            chunks = [r.data async for r in on_b.stub.DownloadFile(pb.DownloadFileRequest(file_id=stored.file_id))]
    assert refused == [
        (grpc.StatusCode.FAILED_PRECONDITION, "upload up-1 is being written by another stream"),
        (grpc.StatusCode.ALREADY_EXISTS, "upload up-1 already exists: resume it (GetUploadStatus gives its offset)"),
    ]
    assert stored.bytes_uploaded == len(data)
    assert b"".join(chunks) == data


async def test_collab_editors_on_two_replicas_see_each_others_presence_and_cursors(
    redis_process: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    """The editor on B is told who is on A and sees A's cursor moves; A's editor is told B's came; once A is
    killed, B's editor is told A's left (its lease expired)."""
    with two_replicas(tmp_path, redis_url) as (a, b):
        async with (
            client(a.address) as on_a,
            client(b.address) as on_b,
            joined(on_a, "doc", "alice", "a1", with_presence=True) as alice,
        ):
            assert text_of(await alice.event()) == (0, "")
            await until_subscribed(redis_process, "collab:doc", 1)  # A hears the document's signals
            async with joined(on_b, "doc", "bob", "b1", with_presence=True) as bob:
                assert text_of(await bob.event()) == (0, "")
                told_bob = presence_of(await bob.event())
                told_alice = presence_of(await alice.event())
                await until_subscribed(redis_process, "collab:doc", 2)
                await alice.call.write(pb.CollaborateRequest(cursor=pb.CollaborateCursor(base_revision=0, position=0)))
                cursor = await bob.event()
                a.process.kill()  # SIGKILL: alice's stream never says goodbye
                a.process.wait(10)
                async with asyncio.timeout(60):  # the lease expires 6 s after its last renewal
                    while not bob.pending:  # (read here: event() gives up after 10 s without a response)
                        bob.pending.extend((await bob.call.read()).events)  # type: ignore[union-attr]
                    event = await bob.event()
    assert told_bob == ("alice", "a1", True)  # who is here, on A
    assert told_alice == ("bob", "b1", True)  # who came, on B
    assert (cursor.user_id, cursor.client_id, cursor.WhichOneof("change")) == ("alice", "a1", "cursor")
    assert presence_of(event) == ("alice", "a1", False)


async def test_a_named_metric_push_is_sent_by_one_stream_at_a_time_across_replicas(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    async with (
        running_server(tmp_path / "a", backend=redis_url) as a,
        running_server(tmp_path / "b", backend=redis_url) as b,
        client(a.address) as on_a,
        client(b.address) as on_b,
    ):
        await one_push_at_a_time(on_a, on_b)
