"""File transfer: the RPCs of uploads (UploadFile, UploadFiles, GetUploadStatus), downloads and the file
companions.

An upload stream is an ``UploadSession`` (``streamcli.services.uploads``: the
protocol, partial files, checksums, the quota); the handlers here turn what it
refuses into the call's status and tell the owner when a file is stored. A stream
of many small whole files (UploadFiles) is ``FileGroups``'s
(``streamcli.services.bulk_uploads``), with the same checks, responses and notifications.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Backend, FileRecord
from streamcli.backends.blobs import SAFE_ID
from streamcli.credentials import Credentials
from streamcli.pagecache import DropBehind
from streamcli.pipeline import Pipeline
from streamcli.protowire import bytes_key, varint, varint_field
from streamcli.services.bulk_uploads import FileGroups
from streamcli.services.checks import page_offset, quoted
from streamcli.services.logs import timestamp
from streamcli.services.notifications import EVERYONE, NotificationService
from streamcli.services.pacing import PacingSettings, TransferPacer
from streamcli.services.quota import QuotaLedger
from streamcli.services.rpc import Context, abort
from streamcli.services.uploads import (
    DISK_FULL,
    FileLimits,
    UploadRefused,
    UploadRequest,
    Uploads,
    decode_upload_request,
    disk_full,
)

log = logging.getLogger("streamcli.files")

#: Chunk size of downloads, in bytes: the largest message the contract's chunks take, which moved the most
#: bytes per second through grpc.aio (measured: see bench/README.md, "File transfer").
DOWNLOAD_CHUNK_SIZE = 1024 * 1024
#: Chunks a download reads ahead of what it sends, at most.
READS_AHEAD = 4
_OFFSET_FIELD = pb.DownloadFileResponse.OFFSET_FIELD_NUMBER
_DATA_KEY = bytes_key(pb.DownloadFileResponse.DATA_FIELD_NUMBER)


def file_info(record: FileRecord) -> pb.FileInfo:
    """The wire form of a stored file's metadata."""
    return pb.FileInfo(
        file_id=record.file_id,
        filename=record.filename,
        size=record.size,
        content_type=record.content_type,
        checksum=record.sha256,
        created_at=timestamp(record.created_at),
    )


class FileService:
    """The file RPCs of ``StreamingService`` on a backend's blob and metadata stores."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = (
        "UploadFile",
        "UploadFiles",
        "GetUploadStatus",
        "DownloadFile",
        "GetFileInfo",
        "ListFiles",
        "DeleteFile",
    )
    #: The transfers: they yield to every other call while one is open (``streamcli.services.pacing``).
    BULK_RPCS: ClassVar[tuple[str, ...]] = ("UploadFile", "UploadFiles", "DownloadFile")
    #: Upload chunks are picked out of the wire bytes (see ``decode_upload_request``).
    REQUEST_DESERIALIZERS: ClassVar[dict[str, Callable[[bytes], Any]]] = {"UploadFile": decode_upload_request}

    def __init__(
        self,
        backend: Backend,
        limits: FileLimits,
        public_address: str,
        notifications: NotificationService | None = None,
        credentials: Credentials | None = None,
        pacer: TransferPacer | None = None,
    ) -> None:
        self._notifications = notifications
        self._pacer = pacer or TransferPacer(PacingSettings(lag_target=0))  # (one that never engages)
        self._credentials = credentials or Credentials()
        self._blobs = backend.blobs
        self._meta = backend.metadata
        self._public_address = public_address
        # Without a quota nothing is ever refused, so the disk need not be walked for a starting count.
        if backend.space is not None:  # replicas: the counts are in their store, the disk measured when it asks
            self._space = QuotaLedger(limits.quota, 0, backend.space, backend.blobs.usage)
        else:
            self._space = QuotaLedger(limits.quota, backend.blobs.usage() if limits.quota else 0)
        self._uploads = Uploads(backend, limits, self._space, self._pacer)
        self._groups = FileGroups(self._uploads, self._stored_response, self._notify_stored)

    # --- upload ---------------------------------------------------------------

    async def UploadFile(
        self, request_iterator: AsyncIterator[UploadRequest], context: Context
    ) -> pb.UploadFileResponse:
        first = await anext(request_iterator, None)
        if first is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "empty upload stream: send metadata first")
        caller = self._credentials.caller(context.invocation_metadata())
        try:
            async with self._uploads.open(first, caller) as session:
                stored, already_stored = await session.commit(await session.receive(request_iterator))
                if not already_stored:
                    await self._notify_stored([stored])
        except UploadRefused as refused:
            await abort(context, refused.code, refused.detail)
        return self._stored_response(stored, session.upload.upload_id, already_stored)

    async def UploadFiles(
        self, request_iterator: AsyncIterator[pb.UploadFilesRequest], context: Context
    ) -> AsyncIterator[pb.UploadFilesResponse]:
        caller = self._credentials.caller(context.invocation_metadata())
        async for response in self._groups.answer(request_iterator, caller, context):
            yield response

    def _stored_response(self, stored: FileRecord, upload_id: str, already_stored: bool) -> pb.UploadFileResponse:
        """What UploadFile answers (and UploadFiles for each file it stores)."""
        return pb.UploadFileResponse(
            file_id=stored.file_id,
            bytes_uploaded=stored.size,
            download_url=f"streamcli://{self._public_address}/files/{stored.file_id}",
            checksum_verified=True,
            checksum=stored.sha256,
            upload_id=upload_id,
            already_stored=already_stored,
        )

    async def _notify_stored(self, stored: Sequence[FileRecord]) -> None:
        """Tell their owners that ``stored`` are, in one append; a file of the service token goes to everyone
        only where there are no users to keep apart."""
        notices = []
        for record in stored:
            recipient = record.owner or (EVERYONE if not self._credentials.user_names else "")
            if recipient:
                notices.append(
                    pb.Notification(
                        recipient=recipient,
                        topic="files",
                        title=f"upload completed: {record.filename}",
                        body=f"{record.size} bytes, sha256 {record.sha256}",
                        severity=pb.NOTIFICATION_SEVERITY_INFO,
                        attributes={"file_id": record.file_id, "filename": record.filename, "size": str(record.size)},
                    )
                )
        if self._notifications is None or not notices:
            return
        try:
            await self._notifications.raise_many(notices)
        except Exception as exc:  # the files are stored: the client must hear so, whatever the log store says
            log.warning("could not notify that %s was stored: %s", ", ".join(r.file_id for r in stored), exc)

    async def GetUploadStatus(self, request: pb.GetUploadStatusRequest, context: Context) -> pb.GetUploadStatusResponse:
        caller = self._credentials.caller(context.invocation_metadata())
        try:
            upload = await self._uploads.owned(
                request.upload_id, caller, missing=f"no upload {quoted(request.upload_id)}"
            )
        except UploadRefused as refused:
            await abort(context, refused.code, refused.detail)
        return pb.GetUploadStatusResponse(
            upload_id=upload.upload_id,
            committed_offset=self._uploads.committed_offset(upload.upload_id),
            metadata=pb.FileMetadata(
                filename=upload.filename,
                total_size=upload.total_size,
                content_type=upload.content_type,
                checksum=upload.sha256,
            ),
            expires_at=timestamp(upload.expires_at),
        )

    async def expire_uploads(self) -> int:
        """Discard partial uploads past their time to live; returns how many."""
        return await self._uploads.expire()

    # --- download and companions -----------------------------------------------

    async def _get(self, file_id: str, context: Context, *, to_delete: bool = False) -> FileRecord:
        """The file ``file_id`` if the caller may see it (``to_delete``: may delete it)."""
        record = await self._meta.get_file(file_id) if SAFE_ID.fullmatch(file_id) else None
        if record is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no file {quoted(file_id)}")
        caller = self._credentials.caller(context.invocation_metadata())
        if caller.user is None or record.owner == caller.user:
            return record
        if to_delete:
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"file {record.file_id} is not yours: only its owner may delete it",
            )
        if not await self._meta.file_visible_to(record, caller.user):
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"file {record.file_id} is not yours, nor posted in a chat room you have joined",
            )
        return record

    async def DownloadFile(self, request: pb.DownloadFileRequest, context: Context) -> AsyncIterator[bytes]:
        record = await self._get(request.file_id, context)
        if not 0 <= request.offset <= record.size:
            await abort(
                context, grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} is outside the file (0-{record.size})"
            )
        try:
            # Opened once; an open handle keeps the bytes readable even if the file is deleted meanwhile.
            handle = await asyncio.to_thread(open, self._blobs.blob_path(record.file_id), "rb")
        except FileNotFoundError:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"file {record.file_id} was deleted")
        size = record.size
        # Every response is wire bytes, assembled on the worker thread that reads the chunk (a response
        # serializer passes bytes through): the first carries the file's metadata, each the offset of its bytes.
        head = pb.DownloadFileResponse(file=file_info(record), offset=request.offset).SerializeToString()

        behind = DropBehind(handle.fileno(), request.offset)

        def read(start: int) -> tuple[int, int, bytes]:
            """(On the worker.) The chunk at ``start`` as a response: (start, length, wire bytes)."""
            data = handle.read(DOWNLOAD_CHUNK_SIZE)
            behind.reached(start + len(data))  # (pages read are reused warm: pagecache.py)
            prefix = head if start == request.offset else varint_field(_OFFSET_FIELD, start)
            return start, len(data), b"".join((prefix, _DATA_KEY, varint(len(data)), data)) if data else prefix

        reads: Pipeline[tuple[int, int, bytes]] = Pipeline()
        with handle:
            try:
                # Reads run ahead on a worker thread, at most READS_AHEAD chunks: the loop only sends.
                if request.offset:  # (a resumed download)
                    handle.seek(request.offset)
                ahead = request.offset  # where the next read given to the pipeline starts
                while ahead < size and len(reads) < READS_AHEAD:
                    reads.put(functools.partial(read, ahead))
                    ahead += DOWNLOAD_CHUNK_SIZE
                if not reads:  # nothing to send (an empty file, or a download resumed at its end): the metadata
                    yield head
                offset = request.offset
                while reads:
                    start, length, response = await reads.take()
                    if ahead < size:
                        reads.put(functools.partial(read, ahead))
                        ahead += DOWNLOAD_CHUNK_SIZE
                    if start != offset or not length:  # a read came short: the file ends before its size
                        if start == request.offset:
                            yield head  # (the metadata first, as ever)
                        await abort(
                            context, grpc.StatusCode.DATA_LOSS, f"file {record.file_id} is shorter than recorded"
                        )
                    if self._pacer.engaged:  # (interactive calls are open: this waits its turn)
                        await self._pacer.admit(length)
                    yield response
                    offset += length
            finally:
                await reads.close()  # the read in progress ends before the handle is closed

    async def GetFileInfo(self, request: pb.GetFileInfoRequest, context: Context) -> pb.GetFileInfoResponse:
        return pb.GetFileInfoResponse(file=file_info(await self._get(request.file_id, context)))

    async def ListFiles(self, request: pb.ListFilesRequest, context: Context) -> pb.ListFilesResponse:
        if not 0 <= request.page_size <= 1000:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_size must be between 1 and 1000")
        size = request.page_size or 100
        start = page_offset(request.page_token)
        if start is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
        caller = self._credentials.caller(context.invocation_metadata())
        records = await self._meta.list_files(size + 1, start, visible_to=caller.user)
        more = len(records) > size
        return pb.ListFilesResponse(
            files=[file_info(r) for r in records[:size]], next_page_token=str(start + size) if more else ""
        )

    async def DeleteFile(self, request: pb.DeleteFileRequest, context: Context) -> pb.DeleteFileResponse:
        await self._get(request.file_id, context, to_delete=True)  # NOT_FOUND or PERMISSION_DENIED first
        try:
            record = await self._meta.delete_file(request.file_id) if SAFE_ID.fullmatch(request.file_id) else None
        except OSError as exc:
            if not disk_full(exc):
                raise
            # Even a delete appends to SQLite's write-ahead log; the bytes stay until it can.
            log.warning("could not delete %s: %s", request.file_id, exc)
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{DISK_FULL}: cannot record the deletion")
        if record is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no file {quoted(request.file_id)}")
        freed = await asyncio.to_thread(self._blobs.delete, record.file_id)
        self._space.freed(freed)
        log.info("deleted %s (%s)", record.file_id, record.filename)
        return pb.DeleteFileResponse(bytes_freed=freed)
