"""Many small files on one UploadFiles stream: a bounded window of unanswered files, resent after a break.

``upload`` of several files sends the small ones (read whole and hashed off the event loop by the caller,
``client/transfer.py`` ``upload_many``) as one message each on one bidirectional UploadFiles stream, and
the server answers each, in order, once it is durable (it stores the files it has received together: one
sync and one metadata commit per group). At most ``WINDOW_FILES`` files (``WINDOW_BYTES`` bytes) are
unanswered at a time. When the stream breaks, the unanswered files are sent again on a new stream (with the
retries of every transfer): one that was stored before the break but not answered is answered "already
stored" with the stored file's id (the server's rule for the same name, content and owner), never stored
twice. A server without UploadFiles (UNIMPLEMENTED before any answer) gets the files one UploadFile call
each (``NoUploadFiles``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import pathlib
from collections.abc import Callable

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, FirstStatus, rpc_errors
from streamcli.client.progress import ProgressSink
from streamcli.client.retry import Attempts
from streamcli.client.streams import bytes_bidi_stream
from streamcli.errors import StreamcliError, error_for_status

#: Files sent and not yet answered, at most (the server stores up to 64 at once: a window of more keeps
#: the next group arriving while one is stored).
WINDOW_FILES = 128
#: Bytes of the files sent and not yet answered, at most (one file more may pass it).
WINDOW_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class SmallFile:
    """A file read whole, ready to send: its ``UploadFilesRequest`` as wire bytes."""

    position: int  # in the command's list of paths
    path: pathlib.Path
    name: str
    key: str  # its progress key (its upload id)
    size: int
    request: bytes


#: What becomes of a file: the server's answer, or the failure the command reports for it.
OnAnswer = Callable[[SmallFile, "pb.UploadFileResponse | StreamcliError"], None]


class NoUploadFiles(Exception):
    """The server has no UploadFiles (an older one): ``files`` were not uploaded, and the source not read
    further."""

    def __init__(self, files: list[SmallFile]) -> None:
        super().__init__("the server does not implement UploadFiles")
        self.files = files


class SmallFileStream:
    """Sends the files of ``source`` (a queue ending with None) on UploadFiles streams; tells ``on_answer``
    of each file's outcome as it comes.

    Usage::

        await SmallFileStream(conn, source, progress, attempts, on_answer).run()   # NoUploadFiles
    """

    def __init__(
        self,
        conn: Connection,
        source: asyncio.Queue[SmallFile | None],
        progress: ProgressSink,
        attempts: Attempts,
        on_answer: OnAnswer,
    ) -> None:
        self._conn = conn
        self._source = source
        self._progress = progress
        self._attempts = attempts
        self._on_answer = on_answer
        self._unanswered: collections.deque[SmallFile] = collections.deque()  # sent, in order
        self._source_done = False
        self._answered_any = False  # on any stream (before the first answer, UNIMPLEMENTED means no UploadFiles)
        self._progressed = False  # the current stream had a file answered

    async def run(self) -> None:
        """Send every file and hear every answer (a failure given up on is every unanswered file's)."""
        while True:
            try:
                await self._one_stream()
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and not self._answered_any:
                    raise NoUploadFiles(await self._unsent()) from None
                progressed = self._progressed
                try:
                    with rpc_errors(self._conn):
                        await self._attempts.failed(exc, progressed=progressed)
                except StreamcliError as error:
                    for file in await self._unsent():
                        self._on_answer(file, error)
                    return

    async def _unsent(self) -> list[SmallFile]:
        """The files not answered: those sent, then the rest of the source."""
        files = list(self._unanswered)
        self._unanswered.clear()
        while not self._source_done:
            file = await self._source.get()
            if file is None:
                self._source_done = True
            else:
                files.append(file)
        return files

    async def _one_stream(self) -> None:
        """One UploadFiles stream: the unanswered files sent again first, then the source's."""
        call = bytes_bidi_stream(self._conn, "UploadFiles", pb.UploadFilesResponse)(metadata=self._conn.metadata)
        first_status = FirstStatus(call)
        on_stream = list(self._unanswered)  # position on this stream -> file
        room = _Window()
        self._progressed = False
        writer = asyncio.get_running_loop().create_task(self._write(call, on_stream, room), name="UploadFiles writer")
        try:
            index = 0
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                if response.index != index or index >= len(on_stream):
                    raise StreamcliError(f"the server answered file {response.index} of the stream, not {index}")
                file = on_stream[index]
                index += 1
                self._unanswered.popleft()
                room.free(file.size)
                self._answered_any = self._progressed = True
                outcome = response.WhichOneof("outcome")
                if outcome == "stored":
                    self._progress.advance(file.key, file.size)
                    self._progress.finish(file.key)
                    self._on_answer(file, response.stored)
                else:
                    code = _status_code(response.refusal.code)
                    self._progress.finish(file.key)
                    self._on_answer(file, error_for_status(code, response.refusal.detail, address=self._conn.address))
            await writer  # (its failure, if any: the call's status follows)
            if self._unanswered:
                raise StreamcliError(f"the server ended the stream with {len(self._unanswered)} files unanswered")
        except grpc.aio.AioRpcError as exc:
            raise first_status.unmask(exc) from None
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if not call.done():
                call.cancel()

    async def _write(self, call: grpc.aio.StreamStreamCall, on_stream: list[SmallFile], room: _Window) -> None:
        try:
            for resent in list(on_stream):
                await room.take(resent.size)
                await call.write(resent.request)
            while not self._source_done:
                file = await self._source.get()
                if file is None:
                    self._source_done = True
                    break
                await room.take(file.size)
                on_stream.append(file)
                self._unanswered.append(file)
                self._progress.start(file.key, file.name, file.size, 0)
                await call.write(file.request)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended: the reader hears how


class _Window:
    """Room for unanswered files: at most ``WINDOW_FILES`` and (but for one file) ``WINDOW_BYTES``."""

    def __init__(self) -> None:
        self._files = 0
        self._bytes = 0
        self._freed = asyncio.Event()

    async def take(self, size: int) -> None:
        while self._files >= WINDOW_FILES or (self._files and self._bytes + size > WINDOW_BYTES):
            self._freed.clear()
            await self._freed.wait()
        self._files += 1
        self._bytes += size

    def free(self, size: int) -> None:
        self._files -= 1
        self._bytes -= size
        self._freed.set()


def _status_code(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a status number (UNKNOWN for a number that is none)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
