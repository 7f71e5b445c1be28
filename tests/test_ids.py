"""Ids given by their start, as git takes abbreviated commit ids: ResolveIds, and every command that takes an id.

The server runs in the test's event loop (the ``server`` fixture, on each backend); commands run in-process (``acli``).
Ambiguous file ids are made by recording files under chosen ids in the server's own store (file ids are
random: two that share a prefix would take thousands of uploads); every other file is uploaded for real.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any

import grpc
import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import FileRecord
from streamcli.client.chat_records import ChatMessage
from streamcli.client.chat_session import ChatSession, Downloaded
from streamcli.client.ids import IdKind, is_whole_id
from streamcli.errors import ExitStatus
from streamcli.server.app import RunningServer
from tests.support.chat import SessionEvents
from tests.support.inprocess import acli
from tests.support.servers import client

#: Every test that uses ``server`` runs on each backend (tests/conftest.py).
ON_EACH_BACKEND = True

SIMILAR = ["abcd" + "0" * 28, "abcd" + "1" * 28, "abcd" + "2" * 28]


async def upload(stub: Any, name: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    requests = [
        pb.UploadFileRequest(metadata=pb.FileMetadata(filename=name, total_size=len(data), checksum=digest)),
        pb.UploadFileRequest(chunk=data),
    ]
    response = await stub.UploadFile(iter(requests))
    return str(response.file_id)


async def record_similar_files(server: RunningServer) -> None:
    """Files whose ids share their first four characters (metadata only: enough to resolve and describe)."""
    for number, file_id in enumerate(SIMILAR):
        record = FileRecord(file_id, f"similar-{number}.txt", 1, "text/plain", "0" * 64, time.time())
        await server.backend.metadata.put_file(record)


async def ingest(stub: Any, batch_id: str, *values: float) -> str:
    """A complete batch named ``batch_id`` holding ``values``; its id as the server gives it."""
    records = [pb.DataRecord(key="k", value=value) for value in values]
    request = pb.ProcessDataBatchRequest(batch_id=batch_id, records=records, complete=True)
    return str((await stub.ProcessDataBatch(iter([request]))).batch_id)


async def resolve(stub: Any, kind: int, prefix: str, metadata: Any = (), limit: int = 0) -> pb.ResolveIdsResponse:
    reply: pb.ResolveIdsResponse = await stub.ResolveIds(
        pb.ResolveIdsRequest(kind=kind, prefix=prefix, limit=limit), metadata=metadata
    )
    return reply


# --- the RPC -------------------------------------------------------------------------------------


async def test_resolve_ids_answers_the_ids_that_begin_with_a_prefix(server: RunningServer) -> None:
    await record_similar_files(server)
    async with client(server.address) as conn:
        every = await resolve(conn.stub, pb.ID_KIND_FILE, "abcd")
        assert (list(every.ids), every.total) == (SIMILAR, 3)
        first_two = await resolve(conn.stub, pb.ID_KIND_FILE, "abcd", limit=2)
        assert (list(first_two.ids), first_two.total) == (SIMILAR[:2], 3)
        one = await resolve(conn.stub, pb.ID_KIND_FILE, "abcd1")
        assert (list(one.ids), one.total) == ([SIMILAR[1]], 1)
        none = await resolve(conn.stub, pb.ID_KIND_FILE, "abce")
        assert (list(none.ids), none.total) == ([], 0)
        # Case matters, as it does for the ids themselves; a prefix longer than any id begins none.
        assert (await resolve(conn.stub, pb.ID_KIND_FILE, "ABCD")).total == 0
        assert (await resolve(conn.stub, pb.ID_KIND_FILE, "abcd" * 200)).total == 0


async def test_a_whole_id_is_itself_even_when_longer_ids_begin_with_it(server: RunningServer) -> None:
    async with client(server.address) as conn:
        short = await ingest(conn.stub, "ab", 1.0)
        await ingest(conn.stub, "abcde", 2.0)
        await ingest(conn.stub, "abcdef", 3.0)
        # "ab" is under the prefix minimum, but it is a whole id.
        assert list((await resolve(conn.stub, pb.ID_KIND_BATCH, short)).ids) == ["ab"]
        exact = await resolve(conn.stub, pb.ID_KIND_BATCH, "abcde")
        assert (list(exact.ids), exact.total) == (["abcde"], 1)
        both = await resolve(conn.stub, pb.ID_KIND_BATCH, "abcd")
        assert (list(both.ids), both.total) == (["abcde", "abcdef"], 2)


@pytest.mark.parametrize(
    ("request_", "detail"),
    [
        (pb.ResolveIdsRequest(kind=pb.ID_KIND_FILE, prefix="abc"), "id prefix 'abc' is too short"),
        (pb.ResolveIdsRequest(kind=pb.ID_KIND_FILE, prefix=""), "id prefix '' is too short"),
        (pb.ResolveIdsRequest(kind=pb.ID_KIND_BATCH, prefix="bob/ab"), "id prefix 'bob/ab' is too short"),
        (pb.ResolveIdsRequest(prefix="abcd"), "kind must be ID_KIND_FILE or ID_KIND_BATCH"),
        (pb.ResolveIdsRequest(kind=pb.ID_KIND_FILE, prefix="abcd", limit=101), "limit must be 0-100"),
    ],
)
async def test_what_resolve_ids_refuses(server: RunningServer, request_: pb.ResolveIdsRequest, detail: str) -> None:
    async with client(server.address) as conn:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await conn.stub.ResolveIds(request_)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (refused.value.details() or "")


def test_whole_ids_are_those_the_server_makes() -> None:
    whole = "0123456789abcdef" * 2
    assert is_whole_id(IdKind.FILE, whole) and is_whole_id(IdKind.BATCH, whole)
    assert is_whole_id(IdKind.BATCH, f"alice/{whole}") and not is_whole_id(IdKind.FILE, f"alice/{whole}")
    assert not is_whole_id(IdKind.FILE, whole[:31]) and not is_whole_id(IdKind.FILE, whole.upper())
    assert not is_whole_id(IdKind.BATCH, "nightly")


# --- the commands ------------------------------------------------------------------------------------


async def test_download_takes_a_unique_prefix(server: RunningServer, tmp_path: pathlib.Path) -> None:
    async with client(server.address) as conn:
        file_id = await upload(conn.stub, "report.txt", b"the report")
    run = await acli(server.address, "download", file_id[:8], "-o", str(tmp_path / "out.txt"))
    assert run.code == 0, run.err
    assert (tmp_path / "out.txt").read_bytes() == b"the report"


async def test_files_info_and_rm_take_unique_prefixes(server: RunningServer) -> None:
    await record_similar_files(server)
    async with client(server.address) as conn:
        kept = await upload(conn.stub, "kept.txt", b"kept")
        doomed = await upload(conn.stub, "doomed.txt", b"doomed")
    info = await acli(server.address, "--json", "files", "info", "abcd2")
    assert info.code == 0, info.err
    assert json.loads(info.out)["id"] == SIMILAR[2]
    info = await acli(server.address, "--json", "files", "info", kept[:8])
    assert json.loads(info.out)["name"] == "kept.txt"
    removed = await acli(server.address, "files", "rm", doomed[:8])
    assert (removed.code, removed.out) == (0, f"deleted {doomed}\n")  # the whole id it stood for
    async with client(server.address) as conn:
        assert [
            f.file_id for f in (await conn.stub.ListFiles(pb.ListFilesRequest())).files if f.file_id in (kept, doomed)
        ] == [kept]


async def test_an_ambiguous_prefix_is_a_usage_error_naming_candidates(
    server: RunningServer, tmp_path: pathlib.Path
) -> None:
    await record_similar_files(server)
    download = ["download", "abcd", "-o", str(tmp_path / "out")]
    for args in (["files", "info", "abcd"], download, ["files", "rm", "abcd"]):
        run = await acli(server.address, *args)
        assert run.code == ExitStatus.USAGE, run.err
        assert run.error_lines == [
            f"streamcli: error: id prefix 'abcd' is ambiguous: 3 file ids begin with it "
            f"({', '.join(SIMILAR)}); give more characters"
        ]
    assert not (tmp_path / "out").exists()
    async with client(server.address) as conn:
        assert (await resolve(conn.stub, pb.ID_KIND_FILE, "abcd")).total == 3  # rm deleted none of them


async def test_no_match_is_not_found_as_before_and_too_short_is_refused(server: RunningServer) -> None:
    missing = await acli(server.address, "files", "info", "fedcba")
    assert (missing.code, missing.error_lines) == (ExitStatus.NOT_FOUND, ["streamcli: error: no file 'fedcba'"])
    short = await acli(server.address, "batch", "show", "abc")
    assert short.code == ExitStatus.INVALID_ARGUMENT
    assert short.error_lines == ["streamcli: error: id prefix 'abc' is too short: give at least 4 characters"]


async def test_batch_show_and_records_take_unique_prefixes(server: RunningServer) -> None:
    async with client(server.address) as conn:
        await ingest(conn.stub, "nightly-2026-01", 1.0, 2.0)
        await ingest(conn.stub, "nightly-2026-02", 3.0)
        await ingest(conn.stub, "weekly-2026-05", 4.0, 5.0)
    shown = await acli(server.address, "--json", "batch", "show", "nightly-2026-0")
    assert shown.code == ExitStatus.USAGE
    assert "2 batch ids begin with it (nightly-2026-01, nightly-2026-02)" in shown.err
    shown = await acli(server.address, "--json", "batch", "show", "nightly-2026-02")  # a whole id
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["batch_id"] == "nightly-2026-02"
    records = await acli(server.address, "batch", "records", "nigh")
    assert records.code == ExitStatus.USAGE
    records = await acli(server.address, "batch", "records", "week")
    assert records.code == 0, records.err
    assert [json.loads(line)["value"] for line in records.out.splitlines()] == [4.0, 5.0]


async def test_chat_get_takes_a_unique_prefix(server: RunningServer, tmp_path: pathlib.Path) -> None:
    async with client(server.address) as conn:
        file_id = await upload(conn.stub, "notes.txt", b"the notes")
        events = SessionEvents()
        async with ChatSession(conn, "alice", "files", report=events) as session:
            await events.next(ChatMessage, lambda m: m.content == "alice joined")
            target = tmp_path / "fetched.txt"
            assert await session.handle(f"/get {file_id[:8]} {target}")
            assert await events.next(Downloaded) == Downloaded(str(target), len(b"the notes"))
    assert target.read_bytes() == b"the notes"
