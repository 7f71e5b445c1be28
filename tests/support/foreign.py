"""A small foreign server implementing the file side of the contract with attacker-chosen metadata.

``streamcli serve`` never sends a file name it would not accept; another server
implementing the contract might. ``foreign_server`` runs a real ``grpc.aio``
server (the generated servicer base class, real HTTP/2 on a loopback port) that
answers ``GetFileInfo``, ``ListFiles`` and ``DownloadFile`` with whatever
``FileInfo`` the test chose, so the client is tested on the real gRPC path.

It runs on its own event loop in a thread (``tests.support.threaded``), so that
the CLI can run in-process while it serves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc
from tests.support.threaded import in_thread

Context = Any  # grpc.aio.ServicerContext: its generic parameters add nothing here


@dataclasses.dataclass(frozen=True)
class ForeignFile:
    """A file the foreign server offers: the metadata it claims and the bytes it sends."""

    info: pb.FileInfo
    content: bytes


def foreign_file(file_id: str, filename: str, content: bytes, **fields: Any) -> ForeignFile:
    """A file whose size and checksum match ``content`` (so downloads verify), with any ``filename``."""
    info = pb.FileInfo(
        file_id=file_id,
        filename=filename,
        size=len(content),
        checksum=hashlib.sha256(content).hexdigest(),
        **fields,
    )
    return ForeignFile(info, content)


class ForeignFileService(pb_grpc.StreamingServiceServicer):
    """DownloadFile, GetFileInfo and ListFiles over a fixed set of files; every other RPC is UNIMPLEMENTED."""

    CHUNK = 64 * 1024

    def __init__(self, files: list[ForeignFile]) -> None:
        self.files = {f.info.file_id: f for f in files}

    async def _get(self, file_id: str, context: Context) -> ForeignFile:
        found = self.files.get(file_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no file {file_id}")  # raw, as a hostile server would
        assert found is not None
        return found

    async def GetFileInfo(self, request: pb.GetFileInfoRequest, context: Context) -> pb.GetFileInfoResponse:
        return pb.GetFileInfoResponse(file=(await self._get(request.file_id, context)).info)

    async def ListFiles(self, request: pb.ListFilesRequest, context: Context) -> pb.ListFilesResponse:
        return pb.ListFilesResponse(files=[f.info for f in self.files.values()])

    async def DownloadFile(
        self, request: pb.DownloadFileRequest, context: Context
    ) -> AsyncIterator[pb.DownloadFileResponse]:
        found = await self._get(request.file_id, context)
        offset = request.offset
        yield pb.DownloadFileResponse(file=found.info, offset=offset, data=found.content[offset : offset + self.CHUNK])
        offset += self.CHUNK
        while offset < len(found.content):
            yield pb.DownloadFileResponse(offset=offset, data=found.content[offset : offset + self.CHUNK])
            offset += self.CHUNK


@contextlib.asynccontextmanager
async def _foreign(files: list[ForeignFile]) -> AsyncIterator[str]:
    server = grpc.aio.server()
    # Only three methods on purpose: the stubs call the base class abstract, but at run time its other
    # methods answer UNIMPLEMENTED, as a partial implementation of the contract would.
    service = ForeignFileService(files)  # type: ignore[abstract]
    pb_grpc.add_StreamingServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.contextmanager
def foreign_server(*files: ForeignFile) -> Iterator[str]:
    """A foreign server offering ``files`` on 127.0.0.1:<free port>, in a thread; yields its address."""
    with in_thread(lambda: _foreign(list(files))) as address:
        yield address
