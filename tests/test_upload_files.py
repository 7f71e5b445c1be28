"""UploadFiles (many small whole files on one stream) and ``upload`` of many small files, on a real server.

The server side: files stored byte-exact, answered in order, a refused file in the middle losing nothing
else, the dedup rule, the quota across parallel streams, per-user access, a malformed message and a store
outage ending the stream with how many files were answered. The client side (``upload`` in-process): the
same output as before, a fallback to UploadFile against a server without UploadFiles, and a resend after a
broken stream (through a proxy that breaks it) storing nothing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, FirstStatus
from streamcli.errors import ExitStatus
from streamcli.server.app import RunningServer
from streamcli.services.uploads import MAX_CHUNK_SIZE
from tests.support.inprocess import acli
from tests.support.redis import redis_server
from tests.support.servers import client, running_server

#: Every test that uses ``server`` runs on each backend (tests/conftest.py): dedup, quota and access are
#: the metadata's.
ON_EACH_BACKEND = True
TOKENS = {"alice": "alice-token", "bob": "bob-token"}
SERVICE = "service-token"
SERVICE_NAME = "streaming.v1.StreamingService"


def file_request(name: str, content: bytes, *, checksum: str | None = None, size: int | None = None) -> Any:
    digest = hashlib.sha256(content).hexdigest() if checksum is None else checksum
    metadata = pb.FileMetadata(filename=name, total_size=len(content) if size is None else size, checksum=digest)
    return pb.UploadFilesRequest(metadata=metadata, content=content)


async def upload_files(
    conn: Connection, requests: Sequence[Any], metadata: Any = None
) -> tuple[list[pb.UploadFilesResponse], grpc.aio.AioRpcError | None]:
    """Send ``requests`` on one UploadFiles stream; its answers, and how it failed (None: OK)."""
    call = conn.stub.UploadFiles(iter(requests), metadata=metadata or conn.metadata, timeout=60)
    first_status = FirstStatus(call)
    answers = []
    try:
        async for answer in call:
            answers.append(answer)
    except grpc.aio.AioRpcError as exc:
        return answers, first_status.unmask(exc)
    return answers, None


async def download(conn: Connection, file_id: str, metadata: Any = None) -> bytes:
    data = b""
    async for response in conn.stub.DownloadFile(
        pb.DownloadFileRequest(file_id=file_id), metadata=metadata or conn.metadata
    ):
        data += response.data
    return data


async def listed(conn: Connection) -> list[pb.FileInfo]:
    return list((await conn.stub.ListFiles(pb.ListFilesRequest(page_size=1000), metadata=conn.metadata)).files)


async def test_many_files_are_stored_byte_exact_and_answered_in_order(server: RunningServer) -> None:
    contents = [f"file {n}\n".encode() * (n + 1) for n in range(150)]  # more than one group
    async with client(server.address) as conn:
        answers, failure = await upload_files(conn, [file_request(f"f{n}.txt", c) for n, c in enumerate(contents)])
        assert failure is None
        assert [a.index for a in answers] == list(range(150))
        assert all(a.WhichOneof("outcome") == "stored" and not a.stored.already_stored for a in answers)
        for answer, content in zip(answers, contents, strict=True):
            assert answer.stored.bytes_uploaded == len(content)
            assert answer.stored.checksum == hashlib.sha256(content).hexdigest()
            assert answer.stored.download_url.endswith(f"/files/{answer.stored.file_id}")
            assert await download(conn, answer.stored.file_id) == content
        assert len(await listed(conn)) == 150
    assert not list((server.config.data_dir / "blobs" / "partial").iterdir())


async def test_a_refused_file_in_the_middle_loses_nothing_else(server: RunningServer) -> None:
    good = [b"one", b"two", b"three"]
    bad_checksum = hashlib.sha256(b"other").hexdigest()
    requests = [
        file_request("a", good[0]),
        file_request("b", b"xyz", checksum=bad_checksum),  # DATA_LOSS
        file_request("c/d", b"x"),  # a path, not a name
        file_request("e", good[1]),
        file_request("f", b"x" * (MAX_CHUNK_SIZE + 1)),  # too large for UploadFiles
        file_request("g", b"abc", size=5),  # fewer bytes than declared
        file_request("h", b"abc", checksum=""),  # no checksum
        file_request("i", good[2]),
    ]
    async with client(server.address) as conn:
        answers, failure = await upload_files(conn, requests)
        assert failure is None
        outcomes = [(a.index, a.WhichOneof("outcome")) for a in answers]
        assert outcomes == [
            (0, "stored"), (1, "refusal"), (2, "refusal"), (3, "stored"), (4, "refusal"), (5, "refusal"),
            (6, "refusal"), (7, "stored"),
        ]  # fmt: skip
        codes = [grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == a.refusal.code)) for a in answers]
        assert codes[1] == grpc.StatusCode.DATA_LOSS
        assert codes[2] == codes[4] == codes[5] == codes[6] == grpc.StatusCode.INVALID_ARGUMENT
        assert "send it with UploadFile" in answers[4].refusal.detail
        assert "3 of 5 bytes" in answers[5].refusal.detail
        # The same detail as UploadFile gives for the same file.
        call = conn.stub.UploadFile(
            iter([
                pb.UploadFileRequest(metadata=pb.FileMetadata(filename="b", total_size=3, checksum=bad_checksum)),
                pb.UploadFileRequest(chunk=b"xyz"),
            ]),
            metadata=conn.metadata,
        )  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.DATA_LOSS, answers[1].refusal.detail)
        stored = {a.stored.file_id for a in answers if a.HasField("stored")}
        assert {f.file_id for f in await listed(conn)} == stored
        for answer, content in zip([answers[0], answers[3], answers[7]], good, strict=True):
            assert await download(conn, answer.stored.file_id) == content
    assert not list((server.config.data_dir / "blobs" / "partial").iterdir())


async def test_a_file_stored_already_is_answered_with_the_stored_one(server: RunningServer) -> None:
    async with client(server.address) as conn:
        first, _ = await upload_files(conn, [file_request("same", b"bytes"), file_request("same", b"bytes")])
        again, _ = await upload_files(conn, [file_request("same", b"bytes"), file_request("other", b"bytes")])
        digest = hashlib.sha256(b"bytes").hexdigest()
        single = await conn.stub.UploadFile(
            iter([
                pb.UploadFileRequest(metadata=pb.FileMetadata(filename="same", total_size=5, checksum=digest)),
                pb.UploadFileRequest(chunk=b"bytes"),
            ]),
            metadata=conn.metadata,
        )  # fmt: skip
        stored_id = first[0].stored.file_id
        assert not first[0].stored.already_stored
        assert (first[1].stored.already_stored, first[1].stored.file_id) == (True, stored_id)
        assert (again[0].stored.already_stored, again[0].stored.file_id) == (True, stored_id)
        assert not again[1].stored.already_stored  # another name: another file
        assert (single.already_stored, single.file_id) == (True, stored_id)  # UploadFile sees them too
        assert len(await listed(conn)) == 2


async def test_parallel_bulk_streams_do_not_exceed_the_quota(tmp_path: pathlib.Path, backend: str) -> None:
    quota = 100_000
    async with (
        running_server(tmp_path / "data", backend=backend, quota=quota) as server,
        client(server.address) as conn,
    ):
        streams = [
            [file_request(f"s{s}-{n}", bytes([s, n]) * 5_000) for n in range(8)]  # 80 KB a stream
            for s in range(2)
        ]
        results = await asyncio.gather(*(upload_files(conn, requests) for requests in streams))
        answers = [a for answers, failure in results for a in answers]
        assert all(failure is None for _, failure in results)
        stored = [a for a in answers if a.HasField("stored")]
        refused = [a for a in answers if a.HasField("refusal")]
        assert stored and refused
        assert all(a.refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for a in refused)
        assert all("quota" in a.refusal.detail for a in refused)
        assert sum(a.stored.bytes_uploaded for a in stored) <= quota
        assert sum(f.size for f in await listed(conn)) <= quota


async def test_a_user_owns_the_files_it_sends_and_sees_no_others(tmp_path: pathlib.Path, backend: str) -> None:
    async with (
        running_server(tmp_path / "data", backend=backend, token=SERVICE, user_tokens=TOKENS) as server,
        client(server.address, token=TOKENS["alice"]) as alice,
        client(server.address, token=TOKENS["bob"]) as bob,
    ):
        [mine], _ = await upload_files(alice, [file_request("secret", b"alice's")])
        file_id = mine.stored.file_id
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await bob.stub.GetFileInfo(pb.GetFileInfoRequest(file_id=file_id), metadata=bob.metadata)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        [theirs], _ = await upload_files(bob, [file_request("secret", b"alice's")])
        assert not theirs.stored.already_stored and theirs.stored.file_id != file_id  # not alice's file
        assert [f.file_id for f in await listed(bob)] == [theirs.stored.file_id]
        _, failure = await upload_files(alice, [file_request("x", b"x")], metadata=(("authorization", "Bearer no"),))
        assert failure is not None and failure.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_malformed_message_ends_the_stream_saying_what_was_answered(server: RunningServer) -> None:
    async with client(server.address) as conn:
        method = conn.channel.stream_stream(
            f"/{SERVICE_NAME}/UploadFiles",
            request_serializer=lambda b: b,
            response_deserializer=pb.UploadFilesResponse.FromString,
        )
        requests = [file_request("ok", b"fine").SerializeToString(), b"\xff\xff\xff"]
        call = method(iter(requests), metadata=conn.metadata)
        first_status = FirstStatus(call)
        answers = []
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            try:
                async for answer in call:
                    answers.append(answer)
            except grpc.aio.AioRpcError as exc:
                raise first_status.unmask(exc) from None
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1 files of this stream were answered" in (failure.value.details() or "")
        assert [a.index for a in answers] == [0]
        assert [f.filename for f in await listed(conn)] == ["ok"]


async def test_a_store_outage_mid_stream_ends_it_unavailable_with_the_count(tmp_path: pathlib.Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        async with running_server(tmp_path / "data", backend=redis.url()) as server, client(server.address) as conn:
            outbox: asyncio.Queue[Any] = asyncio.Queue()

            async def requests() -> AsyncIterator[Any]:
                while (request := await outbox.get()) is not None:
                    yield request

            call = conn.stub.UploadFiles(requests(), metadata=conn.metadata, timeout=60)
            first_status = FirstStatus(call)
            for n in range(3):
                await outbox.put(file_request(f"f{n}", b"x" * (n + 1)))
            answers = [await call.read() for _ in range(3)]
            redis.stop()
            await outbox.put(file_request("late", b"late"))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                try:
                    await call.read()
                except grpc.aio.AioRpcError as exc:
                    raise first_status.unmask(exc) from None
            await outbox.put(None)
    assert [a.index for a in answers] == [0, 1, 2] and all(a.HasField("stored") for a in answers)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    details = failure.value.details() or ""
    assert "the server cannot reach its Redis" in details and "3 files of this stream were answered" in details


# --- the client: `upload` of many small files ---------------------------------------------------


def small_files(directory: pathlib.Path, count: int) -> list[pathlib.Path]:
    directory.mkdir()
    paths = []
    for n in range(count):
        path = directory / f"f{n:03}.txt"
        path.write_bytes(f"small file {n}\n".encode() * 40)
        paths.append(path)
    return paths


async def test_upload_of_a_directory_of_small_files_prints_each_as_before(
    server: RunningServer, tmp_path: pathlib.Path
) -> None:
    paths = small_files(tmp_path / "dir", 40)
    big = tmp_path / "dir" / "big.bin"
    big.write_bytes(b"B" * (MAX_CHUNK_SIZE + 10))  # one UploadFile call, beside the stream
    run = await acli(server.address, "--json", "upload", *map(str, [*paths, big]))
    assert run.code == 0, run.err
    records = [json.loads(line) for line in run.out.splitlines()]
    assert sorted(r["name"] for r in records) == sorted(p.name for p in [*paths, big])
    for record in records:
        content = (tmp_path / "dir" / record["name"]).read_bytes()
        assert record["size"] == len(content) and record["sha256"] == hashlib.sha256(content).hexdigest()
        assert record["already_stored"] is False and record["resumed_from"] == 0
    async with client(server.address) as conn:
        for record in records:
            assert await download(conn, record["id"]) == (tmp_path / "dir" / record["name"]).read_bytes()
    again = await acli(server.address, "upload", *map(str, paths[:2]))
    assert again.code == 0 and all(line.endswith("(already stored)") for line in again.out.splitlines())


async def test_upload_says_which_files_failed_and_exits_as_before(tmp_path: pathlib.Path, backend: str) -> None:
    async with running_server(tmp_path / "data", backend=backend, max_file_size=700) as server:
        paths = small_files(tmp_path / "dir", 5)  # 600 bytes each
        paths[2].write_bytes(b"x" * 800)  # over --max-file-size: refused by the server
        missing = tmp_path / "dir" / "missing.txt"
        run = await acli(server.address, "upload", *map(str, [*paths, missing]))
    assert len(run.out.splitlines()) == 4  # the four that fit
    # The first failure in the order given: the server's refusal of the file over its limit.
    assert run.code == ExitStatus.RESOURCE_EXHAUSTED, run.err
    assert run.error_lines == [
        "streamcli: error: the file is larger than the server's limit of 700 bytes (and 1 more failed)"
    ]


class Proxy:
    """A raw grpc.aio server in front of a streamcli server, forwarding bytes: UploadFile and GetUploadStatus
    always; UploadFiles only with ``bulk`` (without, grpc answers UNIMPLEMENTED, as a server that predates
    it). With ``break_after``, the first UploadFiles stream forwards that many answers, waits until the
    server has answered two more (stored, not heard by the client), then breaks (UNAVAILABLE)."""

    def __init__(self, target: str, *, bulk: bool, break_after: int | None = None) -> None:
        self.target = target
        self.bulk = bulk
        self.break_after = break_after
        self.bulk_streams = 0
        self.upload_calls = 0

    async def __aenter__(self) -> str:
        self.channel = grpc.aio.insecure_channel(self.target)
        self.server = grpc.aio.server()
        handlers = {
            "UploadFile": grpc.stream_unary_rpc_method_handler(self._upload_file),
            "GetUploadStatus": grpc.unary_unary_rpc_method_handler(self._unary("GetUploadStatus")),
        }
        if self.bulk:
            handlers["UploadFiles"] = grpc.stream_stream_rpc_method_handler(self._upload_files)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        await self.server.stop(0)
        await self.channel.close()

    def _method(self, name: str, kind: str) -> Any:
        return getattr(self.channel, kind)(f"/{SERVICE_NAME}/{name}")

    def _unary(self, name: str) -> Any:
        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return await self._method(name, "unary_unary")(request, metadata=context.invocation_metadata())  # type: ignore[no-any-return]

        return forward

    async def _upload_file(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.upload_calls += 1
        call = self._method("UploadFile", "stream_unary")(requests, metadata=context.invocation_metadata())
        try:
            return await call  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
            raise

    async def _upload_files(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self.bulk_streams += 1
        breaking = self.break_after is not None and self.bulk_streams == 1
        call = self._method("UploadFiles", "stream_stream")(requests, metadata=context.invocation_metadata())
        answers = 0
        async for answer in call:
            answers += 1
            if breaking and self.break_after is not None and answers > self.break_after:
                if answers == self.break_after + 2:  # two stored and never heard of
                    call.cancel()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the proxy broke the stream")
                continue
            yield answer


async def test_upload_falls_back_to_uploadfile_on_a_server_without_uploadfiles(
    server: RunningServer, tmp_path: pathlib.Path
) -> None:
    paths = small_files(tmp_path / "dir", 6)
    proxy = Proxy(server.address, bulk=False)
    async with proxy as address:
        run = await acli(address, "--json", "upload", *map(str, paths))
    assert run.code == 0, run.err
    assert run.err == ""  # silently
    assert sorted(json.loads(line)["name"] for line in run.out.splitlines()) == [p.name for p in paths]
    assert proxy.upload_calls == 6
    async with client(server.address) as conn:
        assert len(await listed(conn)) == 6


async def test_files_unanswered_when_the_stream_broke_are_sent_again_and_stored_once(
    server: RunningServer, tmp_path: pathlib.Path
) -> None:
    paths = small_files(tmp_path / "dir", 10)
    proxy = Proxy(server.address, bulk=True, break_after=3)
    async with proxy as address:
        run = await acli(address, "--json", "upload", "--retries", "3", *map(str, paths))
    assert run.code == 0, run.err
    assert proxy.bulk_streams == 2
    assert "UNAVAILABLE: the proxy broke the stream; retry 1 of 3" in run.err
    records = [json.loads(line) for line in run.out.splitlines()]
    assert sorted(r["name"] for r in records) == [p.name for p in paths]  # each reported once
    again = {r["name"] for r in records if r["already_stored"]}
    # Answered before the break: new. Stored and not heard of (at least the two the proxy held back, more if
    # the server had stored them too): answered "already stored" on the resend, with the stored file's id.
    assert not again & {"f000.txt", "f001.txt", "f002.txt"}
    assert {"f003.txt", "f004.txt"} <= again
    async with client(server.address) as conn:
        files = await listed(conn)
        assert sorted(f.filename for f in files) == [p.name for p in paths]  # nothing stored twice
        assert {r["id"] for r in records} == {f.file_id for f in files}


async def test_a_group_partial_left_by_a_stopped_server_expires(tmp_path: pathlib.Path) -> None:
    partial = tmp_path / "data" / "blobs" / "partial"
    async with running_server(tmp_path / "data", upload_ttl=0.3, housekeeping_interval=0.05):
        (partial / "group-0123456789abcdef").write_bytes(b"never stored")  # no record names it
        (partial / "other").write_bytes(b"not a group's")  # not a group's: left to UploadFile's own expiry
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not (partial / "group-0123456789abcdef").exists():
                break
        assert sorted(p.name for p in partial.iterdir()) == ["other"]
