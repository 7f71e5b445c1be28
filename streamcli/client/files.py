"""The file companion RPCs: list, info, delete."""

from __future__ import annotations

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors


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
