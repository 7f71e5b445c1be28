"""The server's event loop never waits on the disk: other streams are served while a transfer's disk work blocks.

A transfer's file is swapped for a FIFO that the test holds, so that the server's write (or read) of a chunk
blocks for as long as the test wants, with no timing involved: if that write ran on the event loop, the loop
would be stuck in it and the chat message below would never arrive (the bounded wait fails the test). The
server runs on a loop of its own (``threaded_server``) so that a stuck loop cannot stall the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pathlib
import select
from collections.abc import Iterator

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from tests.support.chat import RawChat
from tests.support.files import MiB
from tests.support.servers import client
from tests.support.threaded import threaded_server

#: A bound on waits that only expire when the behaviour under test is broken.
PATIENCE = 30.0


async def chat_round_trip(conn: Connection, room: str) -> list[str]:
    """Join ``room``, say a line and read it back: what the server delivered."""
    chat = await RawChat(conn, room, "alice").open()
    await chat.say("still here")
    messages = await chat.messages_until("still here", timeout=PATIENCE)
    await chat.close()
    return [m.content for m in messages]


@contextlib.contextmanager
def fifo_reader(path: pathlib.Path) -> Iterator[int]:
    """A FIFO at ``path`` and a read end on it, open before any writer (so the server's open does not block)."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


def drain(fd: int) -> int:
    """Read ``fd`` until its writer closes it; returns the bytes read."""
    os.set_blocking(fd, True)
    total = 0
    while block := os.read(fd, MiB):
        total += len(block)
    return total


async def test_a_chat_message_is_delivered_while_an_upload_chunk_write_is_blocked(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    with threaded_server(data_dir) as address:
        partial = data_dir / "blobs" / "partial" / "blocked"
        chunk = os.urandom(MiB)  # far more than a pipe holds: the write blocks until the test reads
        async with client(address) as conn, client(address) as chatter:
            with fifo_reader(partial) as fd:
                call = conn.stub.UploadFile(metadata=conn.metadata)
                metadata = pb.FileMetadata(filename="a.bin", total_size=2 * MiB)
                await call.write(pb.UploadFileRequest(metadata=metadata, upload_id="blocked"))
                await call.write(pb.UploadFileRequest(chunk=chunk))
                # The server has started writing the chunk into the FIFO, and cannot finish while nobody reads.
                readable, _, _ = await asyncio.to_thread(select.select, [fd], [], [], PATIENCE)
                assert readable == [fd]

                delivered = await chat_round_trip(chatter, "ops")

                assert "still here" in delivered
                assert not call.done()  # the upload is still stuck in its write
                call.cancel()
                read = await asyncio.to_thread(drain, fd)  # ends once the server has closed the partial file
                assert 0 < read <= len(chunk)
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await call


async def test_a_chat_message_is_delivered_while_a_download_chunk_read_is_blocked(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    content = os.urandom(3 * MiB)
    with threaded_server(data_dir) as address:
        async with client(address) as conn, client(address) as chatter:
            upload = pb.FileMetadata(
                filename="b.bin", total_size=len(content), checksum=hashlib.sha256(content).hexdigest()
            )
            requests = [pb.UploadFileRequest(metadata=upload)]
            requests += [pb.UploadFileRequest(chunk=content[i : i + MiB]) for i in range(0, len(content), MiB)]
            stored = await conn.stub.UploadFile(iter(requests), metadata=conn.metadata, timeout=PATIENCE)
            # The stored file becomes a FIFO with nothing in it: the server's first read of it blocks.
            blob = data_dir / "blobs" / "files" / stored.file_id
            blob.unlink()
            os.mkfifo(blob)
            call = conn.stub.DownloadFile(pb.DownloadFileRequest(file_id=stored.file_id), metadata=conn.metadata)
            # The server opens it for reading (off the loop, as before); the open returns once there is a writer.
            writer = await asyncio.wait_for(asyncio.to_thread(os.open, blob, os.O_WRONLY), PATIENCE)
            try:
                delivered = await chat_round_trip(chatter, "ops")

                assert "still here" in delivered
                assert not call.done()  # the download is still waiting for its first chunk
                call.cancel()
            finally:
                os.close(writer)  # the blocked read returns (end of file) and the server closes its end
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                async for _ in call:
                    pass
