"""``serve --quota`` under concurrent uploads: what is in flight counts, not only what is on disk."""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import SpaceUnknownError
from streamcli.backends.redis_log import Commands
from streamcli.backends.redis_space import RedisSpace
from streamcli.client.connection import Connection
from streamcli.client.files import delete_file, list_files
from tests.support.servers import client, running_server

QUOTA = 500_000
Outcome = pb.UploadFileResponse | grpc.aio.AioRpcError


def partial_files(data_dir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "blobs" / "partial").iterdir())


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail (naming ``what``) if it never does."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


async def held_uploads(
    conn: Connection | Sequence[Connection], data_dir: pathlib.Path, contents: Sequence[bytes], *, known_size: bool
) -> list[Outcome]:
    """Upload ``contents`` concurrently, each stream held open after its first message and first
    chunk until every upload has either started on the server (its partial file exists) or been
    refused, so that all of them are in flight together whatever the scheduling. Several connections
    (replicas) take the uploads in turn.
    """
    conns = [conn] if isinstance(conn, Connection) else list(conn)
    go = asyncio.Event()

    async def requests(content: bytes) -> AsyncIterator[pb.UploadFileRequest]:
        size = len(content) if known_size else -1
        yield pb.UploadFileRequest(metadata=pb.FileMetadata(filename="f.bin", total_size=size))
        yield pb.UploadFileRequest(chunk=content[: len(content) // 2])
        await go.wait()
        yield pb.UploadFileRequest(chunk=content[len(content) // 2 :])
        digest = hashlib.sha256(content).hexdigest()
        yield pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=len(content), checksum=digest))

    calls = [conns[n % len(conns)].stub.UploadFile(requests(c), timeout=60) for n, c in enumerate(contents)]
    await wait_for(
        lambda: len(partial_files(data_dir)) + sum(call.done() for call in calls) >= len(calls),
        "every upload to start or be refused",
    )
    go.set()
    outcomes: list[Outcome] = []
    for call in calls:
        try:
            outcomes.append(await call)
        except grpc.aio.AioRpcError as exc:
            outcomes.append(exc)
    return outcomes


def refusals(outcomes: Sequence[Outcome]) -> list[grpc.aio.AioRpcError]:
    return [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]


async def stored_bytes(conn: Connection) -> int:
    return sum(f.size for f in await list_files(conn, 1000))


@pytest.mark.parametrize("known_size", [True, False], ids=["declared-size", "unknown-size"])
async def test_parallel_uploads_cannot_overshoot_the_quota(tmp_path: pathlib.Path, known_size: bool) -> None:
    data_dir = tmp_path / "data"
    contents = [bytes([n]) * 190_000 for n in range(8)]  # each fits alone; all eight are 3x the quota
    async with running_server(data_dir, quota=QUOTA) as server, client(server.address) as conn:
        outcomes = await held_uploads(conn, data_dir, contents, known_size=known_size)
        refused = refusals(outcomes)
        stored = [o for o in outcomes if isinstance(o, pb.UploadFileResponse)]
        # Declared sizes are reserved up front: the first two fit and the rest are refused. Unknown
        # sizes are reserved chunk by chunk, so which ones lose depends on how the chunks interleave.
        assert len(stored) == 2 if known_size else len(stored) <= 2
        assert len(refused) == 8 - len(stored)
        assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("quota" in r.details() and "reserved" in r.details() for r in refused)
        assert await stored_bytes(conn) == 190_000 * len(stored) <= QUOTA
        assert partial_files(data_dir) == []  # nothing of a refused upload is kept

        # Deleting frees the space for the refused ones.
        for response in stored:
            await delete_file(conn, response.file_id)
        again = await held_uploads(conn, data_dir, contents[:2], known_size=known_size)
        assert all(isinstance(o, pb.UploadFileResponse) for o in again), refusals(again)
        assert await stored_bytes(conn) == 380_000


async def test_a_resume_reserves_what_is_left_and_a_refused_resume_keeps_its_partial(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    big = b"b" * 300_000
    async with running_server(data_dir, quota=QUOTA) as server, client(server.address) as conn:
        # An interrupted upload: 100 KB of 300 KB on disk, the stream gone.
        call = conn.stub.UploadFile(
            iter(
                [
                    pb.UploadFileRequest(
                        upload_id="big", metadata=pb.FileMetadata(filename="big", total_size=len(big))
                    ),
                    pb.UploadFileRequest(chunk=big[:100_000]),
                ]
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as short:
            await call
        assert short.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # resumable, not refused

        # 100 KB on disk + 250 KB fits; the resume's 200 KB more then does not.
        other = b"o" * 250_000
        await held_uploads(conn, data_dir, [other], known_size=True)
        resume = [
            pb.UploadFileRequest(resume=pb.UploadResume(upload_id="big", offset=100_000)),
            pb.UploadFileRequest(chunk=big[100_000:]),
            pb.UploadFileRequest(
                trailer=pb.UploadTrailer(total_size=len(big), checksum=hashlib.sha256(big).hexdigest())
            ),
        ]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await conn.stub.UploadFile(iter(resume))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota" in refused.value.details()
        status = await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="big"))
        assert status.committed_offset == 100_000  # still resumable later

        (stored_other,) = await list_files(conn, 10)
        await delete_file(conn, stored_other.file_id)
        done = await conn.stub.UploadFile(iter(resume))
        assert done.bytes_uploaded == len(big)
        assert await stored_bytes(conn) == len(big)


async def test_an_expired_upload_gives_its_space_back(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    async with (
        running_server(data_dir, quota=QUOTA, upload_ttl=2.0) as server,
        client(server.address) as conn,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as short:
            await conn.stub.UploadFile(
                iter(
                    [
                        pb.UploadFileRequest(metadata=pb.FileMetadata(filename="a", total_size=400_000)),
                        pb.UploadFileRequest(chunk=b"a" * 300_000),
                    ]
                )
            )
        assert short.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        later = b"l" * 400_000
        (full,) = await held_uploads(conn, data_dir, [later], known_size=True)
        assert isinstance(full, grpc.aio.AioRpcError)  # 300 KB partial + 400 KB > 500 KB
        assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await wait_for(lambda: partial_files(data_dir) == [], "the partial upload to expire")
        (stored,) = await held_uploads(conn, data_dir, [later], known_size=True)
        assert isinstance(stored, pb.UploadFileResponse)


@pytest.mark.parametrize("known_size", [True, False], ids=["declared-size", "unknown-size"])
async def test_parallel_uploads_through_two_replicas_cannot_overshoot_the_quota_together(
    redis_url: str, tmp_path: pathlib.Path, known_size: bool
) -> None:
    data_dir = tmp_path / "shared"  # the replicas share the data dir, as they must
    contents = [bytes([n]) * 190_000 for n in range(8)]
    async with (
        running_server(data_dir, quota=QUOTA, backend=redis_url) as a,
        running_server(data_dir, quota=QUOTA, backend=redis_url) as b,
        client(a.address) as on_a,
        client(b.address) as on_b,
    ):
        outcomes = await held_uploads([on_a, on_b], data_dir, contents, known_size=known_size)
        refused = refusals(outcomes)
        stored = [o for o in outcomes if isinstance(o, pb.UploadFileResponse)]
        # Each replica alone would have let two through: together they hold the quota once.
        assert len(stored) == 2 if known_size else len(stored) <= 2
        assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("quota" in r.details() and "reserved" in r.details() for r in refused)
        assert await stored_bytes(on_b) == 190_000 * len(stored) <= QUOTA
        assert partial_files(data_dir) == []

        # A file deleted through one replica frees its space for uploads through the other.
        for response in stored:
            await delete_file(on_a, response.file_id)
        again = await held_uploads([on_b, on_b], data_dir, contents[:2], known_size=known_size)
        assert all(isinstance(o, pb.UploadFileResponse) for o in again), refusals(again)


async def test_a_replica_that_stops_renewing_loses_its_reservations(redis_url: str) -> None:
    commands = Commands.from_url(redis_url)
    try:
        dead, alive = RedisSpace(commands, lease_ms=300), RedisSpace(commands)
        with pytest.raises(SpaceUnknownError):  # nobody measured the directory yet
            await alive.reserve(1, QUOTA, None)
        assert await dead.reserve(400_000, QUOTA, 50_000) == (True, 50_000, 400_000)
        assert await alive.reserve(100_000, QUOTA, None) == (False, 50_000, 400_000)
        # ``dead`` renews nothing: once its lease has run out its reservation no longer counts.
        for _ in range(500):
            taken, used, reserved = await alive.reserve(100_000, QUOTA, None)
            if taken:
                break
            await asyncio.sleep(0.01)
        assert (taken, used, reserved) == (True, 50_000, 100_000)
        await alive.adjust(100_000, -100_000)  # written: reserved moves to used
        assert await alive.reserve(350_000, QUOTA, None) == (True, 150_000, 350_000)
        assert await alive.reserve(1, QUOTA, None) == (False, 150_000, 350_000)
    finally:
        await commands.aclose()
