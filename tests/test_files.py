"""File transfer against the real server: round trips, protocol violations, resume, limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.client.files import delete_file, get_file_info, list_files
from streamcli.client.progress import NullProgress
from streamcli.client.transfer import (
    CHUNK_SIZE,
    READS_AHEAD,
    TransferResult,
    download_file,
    upload_many,
    upload_path,
)
from streamcli.errors import IntegrityError, LocalFileError, NotFoundError
from streamcli.server.app import RunningServer
from streamcli.services.uploads import MAX_CHUNK_SIZE
from tests.support.files import MiB, write_random
from tests.support.servers import client, running_server
from tests.test_pagecache import cached, file_system


def stored_files(data_dir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "blobs" / "files").iterdir())


def partial_files(data_dir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "blobs" / "partial").iterdir())


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


async def raw_upload(conn: Connection, *messages: pb.UploadFileRequest) -> pb.UploadFileResponse:
    response: pb.UploadFileResponse = await conn.stub.UploadFile(iter(messages), timeout=30)
    return response


def metadata(content: bytes, name: str = "data.bin", size: int | None = None) -> pb.UploadFileRequest:
    return pb.UploadFileRequest(
        metadata=pb.FileMetadata(
            filename=name,
            total_size=len(content) if size is None else size,
            checksum=hashlib.sha256(content).hexdigest(),
        )
    )


# --- round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7], ids=lambda s: f"{s}B"
)
async def test_round_trip_keeps_every_byte(conn: Connection, tmp_path: pathlib.Path, size: int) -> None:
    source = tmp_path / "source.bin"
    digest = write_random(source, size)
    uploaded = await upload_path(conn, source, NullProgress())
    assert (uploaded.size, uploaded.sha256, uploaded.name) == (size, digest, "source.bin")
    out = tmp_path / "out"
    out.mkdir()
    downloaded = await download_file(conn, uploaded.file_id, out, NullProgress())
    assert downloaded.path == str(out / "source.bin")
    assert (out / "source.bin").read_bytes() == source.read_bytes()
    assert not (out / "source.bin.part").exists()


async def test_round_trip_of_100_mib(conn: Connection, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "big.bin"
    digest = write_random(source, 100 * MiB)
    uploaded = await upload_path(conn, source, NullProgress())
    target = tmp_path / "copy.bin"
    downloaded = await download_file(conn, uploaded.file_id, target, NullProgress())
    assert uploaded.sha256 == downloaded.sha256 == digest
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


async def test_the_server_drops_the_pages_of_a_large_file_behind_its_writes_and_its_reads(
    conn: Connection, tmp_path: pathlib.Path
) -> None:
    """An upload's pages are dropped behind the server's writes, and a download's behind its reads (so that
    the kernel reuses warm pages: pagecache.py); the last MiB, not yet behind, stay."""
    if file_system(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("a file in memory has no page cache to drop")
    source = tmp_path / "big.bin"
    write_random(source, 48 * MiB)
    uploaded = await upload_path(conn, source, NullProgress())
    blob = tmp_path / "data" / "blobs" / "files" / uploaded.file_id  # (the server fixture's data dir)
    assert sum(cached(blob)) < 40  # (48 MiB written: at least the first 8 behind the writer dropped)
    blob.read_bytes()  # all of it in the page cache again
    assert sum(cached(blob)) == 48
    target = tmp_path / "copy.bin"
    await download_file(conn, uploaded.file_id, target, NullProgress())
    assert target.read_bytes() == source.read_bytes()
    pages = cached(blob)
    assert not any(pages[:8]) and all(pages[-8:])  # dropped behind the reads; the last ones not yet


async def test_twenty_concurrent_uploads(conn: Connection, tmp_path: pathlib.Path) -> None:
    paths = []
    for n in range(20):
        path = tmp_path / f"file{n}.bin"
        write_random(path, 100_000 + n * 7919)
        paths.append(path)
    results = await upload_many(conn, paths, NullProgress(), parallel=20)
    assert all(isinstance(r, TransferResult) for r in results)
    ids = {r.file_id for r in results if isinstance(r, TransferResult)}
    assert len(ids) == 20
    listed = await list_files(conn, 100)
    assert sorted(f.filename for f in listed) == sorted(p.name for p in paths)
    for path, result in zip(paths, results, strict=True):
        assert isinstance(result, TransferResult)
        out = tmp_path / f"{path.name}.copy"
        await download_file(conn, result.file_id, out, NullProgress())
        assert out.read_bytes() == path.read_bytes()


# --- protocol violations ---------------------------------------------------------


async def test_more_bytes_than_declared_is_invalid_and_keeps_nothing(
    conn: Connection, server: RunningServer, tmp_path: pathlib.Path
) -> None:
    content = b"x" * 10
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await raw_upload(conn, metadata(content), pb.UploadFileRequest(chunk=content + b"y"))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the declared 10 bytes" in failure.value.details()
    assert await list_files(conn, 10) == []
    assert partial_files(tmp_path / "data") == []


async def test_checksum_mismatch_is_data_loss_and_keeps_nothing(conn: Connection, tmp_path: pathlib.Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await raw_upload(conn, metadata(b"expected"), pb.UploadFileRequest(chunk=b"tampered"))
    assert failure.value.code() == grpc.StatusCode.DATA_LOSS
    assert "checksum mismatch" in failure.value.details()
    assert await list_files(conn, 10) == []
    assert partial_files(tmp_path / "data") == stored_files(tmp_path / "data") == []


@pytest.mark.parametrize(
    ("messages", "detail"),
    [
        ([], "empty upload stream"),
        ([pb.UploadFileRequest(chunk=b"abc")], "first message must carry metadata or resume, not chunk"),
        ([metadata(b"abc"), metadata(b"abc")], "metadata after the first message"),
        ([metadata(b"abc"), pb.UploadFileRequest(chunk=b"")], "empty chunk"),
        (
            [metadata(b"a" * (MAX_CHUNK_SIZE + 1)), pb.UploadFileRequest(chunk=b"a" * (MAX_CHUNK_SIZE + 1))],
            f"larger than the limit of {MAX_CHUNK_SIZE}",
        ),
        ([metadata(b"abc", size=-5)], "negative"),
        (
            [pb.UploadFileRequest(metadata=pb.FileMetadata(filename="a", total_size=3, checksum="nothex"))],
            "64-hex-digit SHA-256",
        ),
        (
            [pb.UploadFileRequest(metadata=pb.FileMetadata(filename="a", total_size=-1)), pb.UploadFileRequest()],
            "an empty message after the first message",
        ),
        (
            [pb.UploadFileRequest(metadata=pb.FileMetadata(filename="a", total_size=-1))],
            "ended without a trailer",
        ),
        (
            [metadata(b"abc"), pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=3))],
            "a trailer is only for uploads whose checksum was not declared up front",
        ),
    ],
    ids=[
        "empty-stream",
        "chunk-first",
        "two-metadata",
        "empty-chunk",
        "oversized-chunk",
        "negative-size",
        "bad-checksum",
        "empty-message",
        "no-trailer",
        "trailer-for-known-size",
    ],
)
async def test_malformed_upload_streams_get_invalid_argument(
    conn: Connection, tmp_path: pathlib.Path, messages: list[pb.UploadFileRequest], detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await raw_upload(conn, *messages)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in failure.value.details()
    assert await list_files(conn, 10) == []
    assert partial_files(tmp_path / "data") == []


HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "a\x00b", "line\nbreak", "\x1b[31mred", "x" * 256, "", ".", ".."]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
async def test_hostile_filenames_are_refused_and_nothing_escapes(
    conn: Connection, tmp_path: pathlib.Path, name: str
) -> None:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await raw_upload(conn, metadata(b"evil", name=name), pb.UploadFileRequest(chunk=b"evil"))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(tmp_path.rglob("*")) == before
    assert await list_files(conn, 10) == []


async def test_a_long_utf8_name_within_255_bytes_is_kept(conn: Connection) -> None:
    name = "é" * 127 + "x"  # 255 bytes
    response = await raw_upload(conn, metadata(b"ok", name=name), pb.UploadFileRequest(chunk=b"ok"))
    assert (await get_file_info(conn, response.file_id)).filename == name


async def test_known_size_with_the_checksum_in_the_trailer(conn: Connection) -> None:
    content = b"hashed while sent"
    first = pb.UploadFileRequest(metadata=pb.FileMetadata(filename="t.txt", total_size=len(content)))
    digest = hashlib.sha256(content).hexdigest()
    ok = await raw_upload(
        conn,
        first,
        pb.UploadFileRequest(chunk=content),
        pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=len(content), checksum=digest)),
    )
    assert ok.checksum == digest
    with pytest.raises(grpc.aio.AioRpcError) as wrong_size:
        await raw_upload(
            conn,
            first,
            pb.UploadFileRequest(chunk=content),
            pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=len(content) + 1, checksum=digest)),
        )
    assert "the metadata declared 17" in wrong_size.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as tampered:
        await raw_upload(
            conn,
            first,
            pb.UploadFileRequest(chunk=content),
            pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=len(content), checksum="0" * 64)),
        )
    assert tampered.value.code() == grpc.StatusCode.DATA_LOSS
    with pytest.raises(grpc.aio.AioRpcError) as no_trailer:
        await raw_upload(conn, first, pb.UploadFileRequest(chunk=content))
    assert no_trailer.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no trailer received" in no_trailer.value.details()


async def test_unknown_size_upload_with_trailer(conn: Connection) -> None:
    content = b"streamed " * 1000
    response = await raw_upload(
        conn,
        pb.UploadFileRequest(metadata=pb.FileMetadata(filename="s.txt", total_size=-1)),
        pb.UploadFileRequest(chunk=content[:4000]),
        pb.UploadFileRequest(chunk=content[4000:]),
        pb.UploadFileRequest(
            trailer=pb.UploadTrailer(total_size=len(content), checksum=hashlib.sha256(content).hexdigest())
        ),
    )
    assert response.checksum_verified
    assert response.bytes_uploaded == len(content)


# --- resume ---------------------------------------------------------------------------


async def _interrupted_upload(
    conn: Connection, content: bytes, sent: int, upload_id: str, *, declare_checksum: bool = True
) -> None:
    """Send metadata and the first ``sent`` bytes, wait until the server has them, then drop the stream."""
    hold = asyncio.Event()

    async def requests() -> AsyncIterator[pb.UploadFileRequest]:
        first = metadata(content)
        first.upload_id = upload_id
        if not declare_checksum:
            first.metadata.checksum = ""
        yield first
        for start in range(0, sent, CHUNK_SIZE):
            yield pb.UploadFileRequest(chunk=content[start : min(start + CHUNK_SIZE, sent)])
        await hold.wait()  # never set: the stream stays open until cancelled

    call = conn.stub.UploadFile(requests())
    for _ in range(200):
        try:
            status = await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id=upload_id))
            if status.committed_offset == sent:
                break
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.02)
    call.cancel()


async def test_resume_sends_only_the_rest_and_verifies_the_whole(conn: Connection, tmp_path: pathlib.Path) -> None:
    content = os.urandom(5 * CHUNK_SIZE + 123)
    await _interrupted_upload(conn, content, 2 * CHUNK_SIZE, "resume-me")
    await asyncio.sleep(0.1)  # let the server notice the cancellation
    status = await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="resume-me"))
    assert status.committed_offset == 2 * CHUNK_SIZE
    assert status.metadata.total_size == len(content)
    assert await list_files(conn, 10) == []  # nothing incomplete is listed

    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await raw_upload(conn, pb.UploadFileRequest(resume=pb.UploadResume(upload_id="resume-me", offset=5)))
    assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"committed offset {2 * CHUNK_SIZE}" in wrong.value.details()

    rest = content[2 * CHUNK_SIZE :]
    response = await raw_upload(
        conn,
        pb.UploadFileRequest(resume=pb.UploadResume(upload_id="resume-me", offset=2 * CHUNK_SIZE)),
        *(pb.UploadFileRequest(chunk=rest[i : i + CHUNK_SIZE]) for i in range(0, len(rest), CHUNK_SIZE)),
    )
    assert response.checksum == hashlib.sha256(content).hexdigest()
    assert response.upload_id == "resume-me"
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="resume-me"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    target = tmp_path / "resumed.bin"
    await download_file(conn, response.file_id, target, NullProgress())
    assert target.read_bytes() == content


async def test_a_short_stream_stays_resumable(conn: Connection) -> None:
    content = b"0123456789"
    first = metadata(content)
    first.upload_id = "short"
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await raw_upload(conn, first, pb.UploadFileRequest(chunk=content[:4]))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "resume upload short from offset 4" in failure.value.details()
    status = await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="short"))
    assert status.committed_offset == 4
    assert await list_files(conn, 10) == []


async def test_of_two_streams_starting_one_upload_at_once_one_is_refused(conn: Connection) -> None:
    content = b"0123456789"
    first = metadata(content)
    first.upload_id = "twice"
    outcomes = await asyncio.gather(
        *(raw_upload(conn, first, pb.UploadFileRequest(chunk=content)) for _ in range(2)), return_exceptions=True
    )
    stored = [o for o in outcomes if isinstance(o, pb.UploadFileResponse)]
    refused = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert (len(stored), refused) == (1, [grpc.StatusCode.ALREADY_EXISTS])
    assert stored[0].bytes_uploaded == len(content)


@pytest.mark.parametrize("declare_checksum", [False, True], ids=["checksum-in-trailer", "checksum-up-front"])
async def test_client_upload_resumes_an_interrupted_upload_of_the_same_file(
    conn: Connection, tmp_path: pathlib.Path, declare_checksum: bool
) -> None:
    from streamcli.client.transfer import upload_id_for

    source = tmp_path / "again.bin"
    digest = write_random(source, 6 * CHUNK_SIZE)
    content = source.read_bytes()
    upload_id = upload_id_for(source, len(content), source.stat().st_mtime_ns, "again.bin")
    await _interrupted_upload(conn, content, 4 * CHUNK_SIZE, upload_id, declare_checksum=declare_checksum)
    await asyncio.sleep(0.1)
    result = await upload_path(conn, source, NullProgress())
    assert result.resumed_from == 4 * CHUNK_SIZE
    assert result.sha256 == digest


async def test_a_file_of_one_chunk_starts_without_asking_and_still_resumes_an_interrupted_upload(
    conn: Connection, tmp_path: pathlib.Path
) -> None:
    from streamcli.client.transfer import upload_id_for

    source = tmp_path / "small.bin"
    digest = write_random(source, CHUNK_SIZE // 2)
    content = source.read_bytes()
    upload_id = upload_id_for(source, len(content), source.stat().st_mtime_ns, "small.bin")
    await _interrupted_upload(conn, content, 1000, upload_id, declare_checksum=False)
    await asyncio.sleep(0.1)
    # The first attempt meets the interrupted upload (ALREADY_EXISTS), asks for its offset, sends the rest.
    result = await upload_path(conn, source, NullProgress())
    assert result.resumed_from == 1000
    assert result.sha256 == digest
    assert partial_files(tmp_path / "data") == []


async def test_partial_uploads_expire(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path / "data", upload_ttl=0.3) as server, client(server.address) as conn:
        await _interrupted_upload(conn, b"z" * 1000, 500, "expiring")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not partial_files(tmp_path / "data"):
                break
        assert partial_files(tmp_path / "data") == []
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="expiring"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


# --- limits -----------------------------------------------------------------------------


async def test_max_file_size_is_resource_exhausted_and_keeps_nothing(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path / "data", max_file_size=1000) as server, client(server.address) as conn:
        with pytest.raises(grpc.aio.AioRpcError) as declared:
            await raw_upload(conn, metadata(b"x" * 1001), pb.UploadFileRequest(chunk=b"x" * 1001))
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await raw_upload(
                conn,
                pb.UploadFileRequest(metadata=pb.FileMetadata(filename="s", total_size=-1)),
                pb.UploadFileRequest(chunk=b"x" * 600),
                pb.UploadFileRequest(chunk=b"x" * 600),
            )
        ok = await raw_upload(conn, metadata(b"x" * 1000), pb.UploadFileRequest(chunk=b"x" * 1000))
        assert [f.file_id for f in await list_files(conn, 10)] == [ok.file_id]
    for failure in (declared, streamed):
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than the server's limit of 1000 bytes" in failure.value.details()
    assert partial_files(tmp_path / "data") == []


async def test_quota_is_resource_exhausted(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path / "data", quota=2500) as server, client(server.address) as conn:
        await raw_upload(conn, metadata(b"a" * 2000), pb.UploadFileRequest(chunk=b"a" * 2000))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await raw_upload(conn, metadata(b"b" * 1000), pb.UploadFileRequest(chunk=b"b" * 1000))
        assert len(await list_files(conn, 10)) == 1
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota" in failure.value.details()


# --- download and companions -------------------------------------------------------------


async def test_download_errors(conn: Connection, tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotFoundError, match="no file 'nope'"):
        await download_file(conn, "nope", tmp_path, NullProgress())
    response = await raw_upload(conn, metadata(b"hello"), pb.UploadFileRequest(chunk=b"hello"))
    with pytest.raises(grpc.aio.AioRpcError) as beyond:
        _ = [r async for r in conn.stub.DownloadFile(pb.DownloadFileRequest(file_id=response.file_id, offset=6))]
    assert beyond.value.code() == grpc.StatusCode.OUT_OF_RANGE
    rest = [r async for r in conn.stub.DownloadFile(pb.DownloadFileRequest(file_id=response.file_id, offset=2))]
    assert b"".join(r.data for r in rest) == b"llo"
    assert rest[0].file.size == 5 and rest[0].file.checksum == hashlib.sha256(b"hello").hexdigest()
    (tmp_path / "data.bin").write_bytes(b"keep me")
    with pytest.raises(LocalFileError, match="exists; pass --force"):
        await download_file(conn, response.file_id, tmp_path, NullProgress())
    await download_file(conn, response.file_id, tmp_path, NullProgress(), force=True)
    assert (tmp_path / "data.bin").read_bytes() == b"hello"


async def test_download_resumes_from_a_part_file(conn: Connection, tmp_path: pathlib.Path) -> None:
    content = os.urandom(5 * CHUNK_SIZE)
    response = await raw_upload(
        conn,
        metadata(content),
        *(pb.UploadFileRequest(chunk=content[i : i + CHUNK_SIZE]) for i in range(0, len(content), CHUNK_SIZE)),
    )
    target = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").write_bytes(content[: 3 * CHUNK_SIZE])
    result = await download_file(conn, response.file_id, target, NullProgress())
    assert result.resumed_from == 3 * CHUNK_SIZE
    assert target.read_bytes() == content

    # A corrupt .part fails verification, is removed, and the next run starts over.
    target.unlink()
    (tmp_path / "out.bin.part").write_bytes(b"garbage" + content[7 : 2 * CHUNK_SIZE])
    with pytest.raises(IntegrityError, match="failed verification") as failed:
        await download_file(conn, response.file_id, target, NullProgress())
    assert str(failed.value).endswith("; out.bin.part was removed: run the same command again to start over")
    assert not target.exists() and not (tmp_path / "out.bin.part").exists()
    await download_file(conn, response.file_id, target, NullProgress())
    assert target.read_bytes() == content

    # --no-resume ignores what is there.
    target.unlink()
    (tmp_path / "out.bin.part").write_bytes(b"garbage")
    result = await download_file(conn, response.file_id, target, NullProgress(), resume=False)
    assert result.resumed_from == 0 and target.read_bytes() == content


async def test_list_pages_info_and_delete(conn: Connection, tmp_path: pathlib.Path) -> None:
    ids = []
    for n in range(3):
        content = f"file {n}".encode()
        ids.append(
            (await raw_upload(conn, metadata(content, name=f"f{n}"), pb.UploadFileRequest(chunk=content))).file_id
        )
    first = await conn.stub.ListFiles(pb.ListFilesRequest(page_size=2))
    second = await conn.stub.ListFiles(pb.ListFilesRequest(page_size=2, page_token=first.next_page_token))
    assert len(first.files) == 2 and first.next_page_token
    assert len(second.files) == 1 and not second.next_page_token
    assert [f.file_id for f in [*first.files, *second.files]] == ids[::-1]  # newest first
    assert [f.filename for f in await list_files(conn, 2)] == ["f2", "f1"]
    info = await get_file_info(conn, ids[0])
    assert (info.filename, info.size) == ("f0", 6)
    assert await delete_file(conn, ids[0]) == 6
    with pytest.raises(NotFoundError):
        await get_file_info(conn, ids[0])
    with pytest.raises(NotFoundError):
        await delete_file(conn, ids[0])
    assert len(stored_files(tmp_path / "data")) == 2


@pytest.mark.parametrize("token", ["\u00b2", "-1", "1" * 19, "1e3", " 1"])
async def test_a_page_token_the_server_never_gave_is_refused_by_every_listing(conn: Connection, token: str) -> None:
    for listing in (
        conn.stub.ListFiles(pb.ListFilesRequest(page_token=token)),
        conn.stub.ListBatches(pb.ListBatchesRequest(page_token=token)),
        conn.stub.ListMetricSeries(pb.ListMetricSeriesRequest(page_token=token)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await listing
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (refused.value.details() or "")


async def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(conn: Connection, tmp_path: pathlib.Path) -> None:
    # The partial file of this upload is /dev/full: every write fails with ENOSPC, as on a full disk.
    partial = tmp_path / "data" / "blobs" / "partial" / "disk-full"
    partial.symlink_to("/dev/full")
    first = metadata(b"z" * 100_000)
    first.upload_id = "disk-full"
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await raw_upload(conn, first, pb.UploadFileRequest(chunk=b"z" * 100_000))
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk is full" in failure.value.details()
    assert not partial.exists() and not partial.is_symlink()
    assert await list_files(conn, 10) == []
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="disk-full"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


class _Writer(NullProgress):
    """Progress that changes the file being uploaded once its first chunk is sent, as another program would."""

    def __init__(self, path: pathlib.Path, change: str) -> None:
        self.path, self.change = path, change

    def advance(self, key: str, amount: int, records: int = 0) -> None:
        if self.change == "grow":
            with open(self.path, "ab") as handle:
                handle.write(b"more")
        elif self.change == "rewrite":  # the same size, other bytes, a later time
            stat = self.path.stat()
            with open(self.path, "r+b") as handle:  # in place: the size never changes (the client reads meanwhile)
                handle.write(b"x" * stat.st_size)
            os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        elif self.change == "shrink":
            os.truncate(self.path, CHUNK_SIZE)
        self.change = "done"


#: Chunks of the changing file: more than the client reads ahead, so its last chunk is read after the change
#: the first advance makes (a change after the last read is outside what was sent).
CHANGING_CHUNKS = READS_AHEAD + 3


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ("grow", f"{CHANGING_CHUNKS * CHUNK_SIZE} bytes when it started, {CHANGING_CHUNKS * CHUNK_SIZE + 4} now"),
        ("shrink", f"{CHANGING_CHUNKS * CHUNK_SIZE} bytes when it started, {CHUNK_SIZE} now"),
        ("rewrite", "modified since it started"),
    ],
)
async def test_a_file_that_changes_while_it_uploads_is_not_stored_and_said_so(
    conn: Connection, tmp_path: pathlib.Path, change: str, what: str
) -> None:
    path = tmp_path / "growing.log"
    path.write_bytes(os.urandom(CHANGING_CHUNKS * CHUNK_SIZE))
    with pytest.raises(LocalFileError) as changed:
        await upload_path(conn, path, _Writer(path, change))
    assert str(changed.value) == (
        f"{path} changed while it was being uploaded ({what}); it was not stored: run the command again once "
        "nothing writes to the file any more"
    )
    assert await list_files(conn, 10) == []
    stored = await upload_path(conn, path, NullProgress())  # once it is stable, it uploads
    assert stored.size == path.stat().st_size
