"""The file companion RPCs: list, info, delete; the FileEntry record."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.ids import IdKind, resolve_id
from streamcli.errors import StreamcliError, UnavailableError, UnimplementedError
from streamcli.times import Instant, rfc3339

#: Failures after which the other deletions would fail the same way: stop there.
_FAILS_FOR_ALL = (UnavailableError, UnimplementedError)


@dataclasses.dataclass(frozen=True, slots=True)
class FileEntry:
    """A stored file, as the server describes it (``files ls``, ``files info``; what a download checks against).

    The fields are named as in the contract's FileInfo; ``to_json`` names them as the CLI prints them.
    """

    file_id: str
    filename: str  # the name it was stored under: a label from elsewhere, not a path (see ``streamcli.names``)
    size: int  # bytes
    content_type: str
    checksum: str  # SHA-256 of the whole file, lowercase hex
    created_at: Instant  # when the upload completed

    @classmethod
    def from_message(cls, info: pb.FileInfo) -> FileEntry:
        stamp = info.created_at
        return cls(
            file_id=info.file_id,
            filename=info.filename,
            size=info.size,
            content_type=info.content_type,
            checksum=info.checksum,
            created_at=Instant(stamp.seconds, stamp.nanos),
        )

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record printed by ``files ls --json`` and ``files info --json``."""
        return {
            "id": self.file_id,
            "name": self.filename,
            "size": self.size,
            "content_type": self.content_type,
            "sha256": self.checksum,
            "created_at": rfc3339(self.created_at),  # (an invalid time from another server is said so, not raised)
        }


async def list_files(conn: Connection, limit: int) -> list[FileEntry]:
    """Stored files, newest first, at most ``limit`` (paging through the server's pages)."""
    files: list[FileEntry] = []
    token = ""
    with rpc_errors(conn):
        while len(files) < limit:
            page = await conn.stub.ListFiles(
                pb.ListFilesRequest(page_size=min(1000, limit - len(files)), page_token=token),
                metadata=conn.metadata,
                timeout=30,
            )
            files.extend(FileEntry.from_message(info) for info in page.files)
            token = page.next_page_token
            if not token:
                break
    return files


async def get_file_info(conn: Connection, file_id: str) -> FileEntry:
    """One file's metadata; ``file_id`` may be the start of the id (``resolve_id``)."""
    file_id = await resolve_id(conn, IdKind.FILE, file_id)
    with rpc_errors(conn):
        reply = await conn.stub.GetFileInfo(pb.GetFileInfoRequest(file_id=file_id), metadata=conn.metadata, timeout=30)
    return FileEntry.from_message(reply.file)


async def delete_file(conn: Connection, file_id: str) -> int:
    """Delete a file, named by its whole id; returns the bytes freed."""
    with rpc_errors(conn):
        reply = await conn.stub.DeleteFile(pb.DeleteFileRequest(file_id=file_id), metadata=conn.metadata, timeout=30)
    return int(reply.bytes_freed)


async def delete_files(
    conn: Connection, file_ids: Sequence[str], report: Callable[[str, int | StreamcliError], None]
) -> list[StreamcliError]:
    """Delete each file, going on after one that fails; ``report`` gets bytes freed or the error, per id.

    An id may be the start of one (``resolve_id``): ``report`` is then given the whole id it stood for.

    Returns the failures, in order. A failure that no other id can escape (server
    unreachable, RPC not implemented) stops there: the ids after it are not tried,
    and its message says how many.
    """
    failures: list[StreamcliError] = []
    for index, file_id in enumerate(file_ids):
        try:
            file_id = await resolve_id(conn, IdKind.FILE, file_id)
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
