"""The file companion RPCs: list, info, delete."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.errors import StreamcliError, UnavailableError, UnimplementedError

#: Failures after which the other deletions would fail the same way: stop there.
_FAILS_FOR_ALL = (UnavailableError, UnimplementedError)


async def list_files(conn: Connection, limit: int) -> list[pb.FileInfo]:
    """Stored files, newest first, at most ``limit`` (paging through the server's pages)."""
    files: list[pb.FileInfo] = []
    token = ""
    with rpc_errors(conn.settings.address):
        while len(files) < limit:
            page = await conn.stub.ListFiles(
                pb.ListFilesRequest(page_size=min(1000, limit - len(files)), page_token=token),
                metadata=conn.metadata,
                timeout=30,
            )
            files.extend(page.files)
            token = page.next_page_token
            if not token:
                break
    return files


async def get_file_info(conn: Connection, file_id: str) -> pb.FileInfo:
    """One file's metadata."""
    with rpc_errors(conn.settings.address):
        reply = await conn.stub.GetFileInfo(pb.GetFileInfoRequest(file_id=file_id), metadata=conn.metadata, timeout=30)
    info: pb.FileInfo = reply.file
    return info


async def delete_file(conn: Connection, file_id: str) -> int:
    """Delete a file; returns the bytes freed."""
    with rpc_errors(conn.settings.address):
        reply = await conn.stub.DeleteFile(pb.DeleteFileRequest(file_id=file_id), metadata=conn.metadata, timeout=30)
    return int(reply.bytes_freed)


async def delete_files(
    conn: Connection, file_ids: Sequence[str], report: Callable[[str, int | StreamcliError], None]
) -> list[StreamcliError]:
    """Delete each file, going on after one that fails; ``report`` gets bytes freed or the error, per id.

    Returns the failures, in order. A failure that no other id can escape (server
    unreachable, RPC not implemented) stops there: the ids after it are not tried,
    and its message says how many.
    """
    failures: list[StreamcliError] = []
    for index, file_id in enumerate(file_ids):
        try:
            outcome: int | StreamcliError = await delete_file(conn, file_id)
        except StreamcliError as exc:
            outcome = exc
            failures.append(exc)
            if isinstance(exc, _FAILS_FOR_ALL) and index + 1 < len(file_ids):
                outcome = type(exc)(f"{exc.message} (stopped: {len(file_ids) - index - 1} more not deleted)")
                report(file_id, outcome)
                break
        report(file_id, outcome)
    return failures
