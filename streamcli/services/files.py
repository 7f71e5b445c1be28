"""File transfer: UploadFile, DownloadFile, GetUploadStatus and the file companions.

Upload protocol (modelled on tus): the first message carries the metadata of a
new upload (or ``resume`` for an interrupted one), then byte chunks follow. The
server writes to a partial file in the data dir, opened once and hashed
incrementally; only a complete upload whose SHA-256 matches is renamed into the
store and listed. The committed offset of an interrupted upload is the size of
its partial file. A client that hashes while it sends leaves the checksum out
of the metadata and ends with an ``UploadTrailer`` carrying it. Uploads of
unknown size (stdin) declare ``total_size = -1`` and end with a trailer giving
size and checksum; they are not resumable, since the client cannot replay its
input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import io
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar, NoReturn, TypeGuard

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Backend, FileRecord, UploadRecord
from streamcli.backends.blobs import SAFE_ID
from streamcli.checksums import sha256_prefix
from streamcli.credentials import Credentials
from streamcli.names import check_filename
from streamcli.services.checks import MalformedRequest, quoted
from streamcli.services.logs import timestamp
from streamcli.services.notifications import EVERYONE, NotificationService
from streamcli.services.quota import QuotaExceeded, QuotaLedger, Reservation
from streamcli.services.rpc import Context, abort

log = logging.getLogger("streamcli.files")

#: Largest chunk a client may send, in bytes (documented in the proto).
MAX_CHUNK_SIZE = 1024 * 1024
#: Chunk size of downloads, in bytes (measured: see bench/README.md).
DOWNLOAD_CHUNK_SIZE = 64 * 1024
#: Client-chosen upload ids: what is safe as a file name.
UPLOAD_ID = SAFE_ID  # the blob store's rule: an id becomes a file name there
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: What a client is told when the data dir's filesystem has no room left.
DISK_FULL = "the server's disk is full"
#: What ListFiles hands out as a page token: an offset.
PAGE_TOKEN = re.compile(r"[0-9]{1,18}")


@dataclasses.dataclass(frozen=True)
class FileLimits:
    """Limits ``streamcli serve`` enforces on stored files."""

    max_file_size: int = 0  # bytes per file; 0 = no limit
    quota: int = 0  # bytes for all stored and partial files together; 0 = no limit
    upload_ttl: float = 24 * 3600.0  # seconds a partial upload is kept without progress


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


class _PartialFile:
    """The partial file of one upload stream: opened once, hashed as it grows.

    The handle is unbuffered, so ``size`` is always what is on disk: a close
    has nothing left to flush (and cannot fail on a full disk), and the quota
    ledger counts exactly the bytes written, even when a write fails partway.
    """

    def __init__(self, handle: io.FileIO, hasher: Any, size: int, reservation: Reservation) -> None:
        self.handle = handle
        self.hasher = hasher
        self.size = size  # bytes in the file: the committed offset plus what this stream wrote
        self.reservation = reservation

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self.handle.write(view)  # an unbuffered write may take only part
            if not written:
                raise OSError(errno.EIO, "the partial file accepted no bytes")
            self.size += written
            self.reservation.wrote(written)
            view = view[written:]
        self.hasher.update(data)


class _Refusal(Exception):
    """Ends an upload stream for good with ``code`` and ``detail`` (see ``FileService._fail``)."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class FileService:
    """The file RPCs of ``StreamingService`` on a backend's blob and metadata stores."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = (
        "UploadFile",
        "GetUploadStatus",
        "DownloadFile",
        "GetFileInfo",
        "ListFiles",
        "DeleteFile",
    )

    def __init__(
        self,
        backend: Backend,
        limits: FileLimits,
        public_address: str,
        notifications: NotificationService | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._notifications = notifications
        self._credentials = credentials or Credentials()
        self._blobs = backend.blobs
        self._meta = backend.metadata
        self._limits = limits
        self._public_address = public_address
        self._active: set[str] = set()  # upload ids with a stream open right now
        # Without a quota nothing is ever refused, so the disk need not be walked for a starting count.
        self._space = QuotaLedger(limits.quota, backend.blobs.usage() if limits.quota else 0)

    # --- upload ---------------------------------------------------------------

    async def UploadFile(
        self, request_iterator: AsyncIterator[pb.UploadFileRequest], context: Context
    ) -> pb.UploadFileResponse:
        first = await anext(request_iterator, None)
        if first is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "empty upload stream: send metadata first")
        kind = first.WhichOneof("payload")
        if kind == "metadata":
            upload, partial = await self._start(first, context)
        elif kind == "resume":
            upload, partial = await self._resume(first.resume, context)
        else:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first message must carry metadata or resume, not {kind or 'nothing'}",
            )
        self._active.add(upload.upload_id)
        try:
            return await self._receive(upload, partial, request_iterator, context)
        except MalformedRequest as exc:
            await self._malformed(upload, partial, exc, context)
        finally:
            self._active.discard(upload.upload_id)
            partial.handle.close()
            partial.reservation.release()

    async def _start(self, first: pb.UploadFileRequest, context: Context) -> tuple[UploadRecord, _PartialFile]:
        meta = first.metadata
        try:
            filename = check_filename(meta.filename)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if meta.total_size < -1:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"total_size {meta.total_size} is negative")
        checksum = meta.checksum.lower()
        if checksum and not SHA256_HEX.fullmatch(checksum):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "checksum must be the 64-hex-digit SHA-256 of the whole file (or empty, to send it in the trailer)",
            )
        if meta.total_size == -1 and checksum:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "an upload of unknown size sends its checksum in the trailer"
            )
        await self._check_size(meta.total_size, context)
        upload_id = first.upload_id or uuid.uuid4().hex
        if not UPLOAD_ID.fullmatch(upload_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "upload_id must be 1-64 letters, digits, '-' or '_'")
        if upload_id in self._active or await self._meta.get_upload(upload_id) is not None:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"upload {upload_id} already exists: resume it (GetUploadStatus gives its offset)",
            )
        now = time.time()
        owner = self._credentials.caller(context.invocation_metadata()).user or ""
        upload = UploadRecord(
            upload_id, filename, meta.total_size, meta.content_type, checksum, now, now + self._limits.upload_ttl,
            owner,
        )  # fmt: skip
        # Unknown sizes reserve chunk by chunk as they arrive (in _receive).
        reservation = await self._reserve(max(meta.total_size, 0), context)
        handle = None
        try:
            handle = await self._open_partial(upload_id, "wb")
            if meta.total_size >= 0:  # unknown-size uploads cannot be resumed: nothing to record
                await self._meta.put_upload(upload)
        except BaseException as exc:
            reservation.release()
            if handle is not None:  # an upload that never started leaves nothing behind
                handle.close()
                self._blobs.discard_partial(upload_id)
            if _disk_full(exc):
                await self._refuse_full_disk(upload, "could not start", exc, context)
            raise
        return upload, _PartialFile(handle, hashlib.sha256(), 0, reservation)

    async def _resume(self, resume: pb.UploadResume, context: Context) -> tuple[UploadRecord, _PartialFile]:
        upload = await self._meta.get_upload(resume.upload_id) if UPLOAD_ID.fullmatch(resume.upload_id) else None
        if upload is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"no upload {quoted(resume.upload_id)} to resume (expired?)"
            )
        await self._check_upload_owner(upload, context)
        if upload.upload_id in self._active:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"upload {upload.upload_id} is being written by another stream",
            )
        path = self._blobs.partial_path(upload.upload_id)
        committed = path.stat().st_size if path.exists() else 0
        if resume.offset != committed:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"resume offset {resume.offset} disagrees with the server's committed offset {committed}",
            )
        # The committed bytes are already counted as used; only the rest may still arrive. A refused
        # resume keeps its partial file: it can go on once space is freed.
        reservation = await self._reserve(upload.total_size - committed, context)
        handle = None
        try:
            handle = await self._open_partial(upload.upload_id, "r+b" if path.exists() else "w+b")
            # hashlib states cannot be saved, so hash the committed prefix again (off the event loop).
            hasher = await asyncio.to_thread(sha256_prefix, handle, committed)
            handle.seek(committed)
            upload = dataclasses.replace(upload, expires_at=time.time() + self._limits.upload_ttl)
            await self._meta.put_upload(upload)
        except BaseException as exc:
            reservation.release()
            if handle is not None:
                handle.close()  # the partial file stays: the upload can be resumed again
            if _disk_full(exc):
                await self._refuse_full_disk(upload, "could not resume", exc, context)
            raise
        return upload, _PartialFile(handle, hasher, committed, reservation)

    async def _open_partial(self, upload_id: str, mode: str) -> io.FileIO:
        """The upload's partial file, unbuffered (see ``_PartialFile``); closed by UploadFile."""
        return await asyncio.to_thread(io.FileIO, self._blobs.partial_path(upload_id), mode)

    async def _check_size(self, total: int, context: Context) -> None:
        """RESOURCE_EXHAUSTED when a file of ``total`` bytes is over the server's size limit."""
        limit = self._limits.max_file_size
        if limit and total > limit:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the file is larger than the server's limit of {limit} bytes",
            )

    async def _reserve(self, size: int, context: Context) -> Reservation:
        """A reservation of ``size`` bytes for one upload stream, or RESOURCE_EXHAUSTED over the quota."""
        reservation = self._space.reservation()
        try:
            reservation.reserve(size)
        except QuotaExceeded as exc:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return reservation

    async def _receive(
        self,
        upload: UploadRecord,
        partial: _PartialFile,
        requests: AsyncIterator[pb.UploadFileRequest],
        context: Context,
    ) -> pb.UploadFileResponse:
        total, checksum = upload.total_size, upload.sha256
        trailer_seen = False
        try:
            async for request in requests:
                kind = request.WhichOneof("payload")
                if trailer_seen:
                    raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "message after the trailer")
                if kind == "chunk":
                    self._write_chunk(request.chunk, partial, total)
                elif kind == "trailer":
                    problem = _trailer_problem(request.trailer, total, checksum, partial.size)
                    if problem:
                        raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, problem)
                    total, checksum = request.trailer.total_size, request.trailer.checksum.lower()
                    trailer_seen = True
                else:
                    raise _Refusal(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{kind or 'an empty message'} after the first message; only chunks may follow",
                    )
            if total == -1:
                raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended without a trailer")
        except _Refusal as refusal:
            await self._fail(upload, partial, context, refusal.code, refusal.detail)
        except OSError as exc:
            if not _disk_full(exc):
                raise
            await self._fail(upload, partial, context, grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL, cause=exc)
        if partial.size < total or not checksum:
            missing = f"{partial.size} of {total} bytes received" if partial.size < total else "no trailer received"
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"upload incomplete: {missing}; resume upload {upload.upload_id} from offset {partial.size}",
            )
        digest = partial.hasher.hexdigest()
        if digest != checksum:
            await self._fail(
                upload,
                partial,
                context,
                grpc.StatusCode.DATA_LOSS,
                f"checksum mismatch: received bytes hash to {digest}, declared {checksum}",
            )
        return await self._commit(upload, partial, digest, context)

    async def _malformed(
        self, upload: UploadRecord, partial: _PartialFile, exc: MalformedRequest, context: Context
    ) -> NoReturn:
        """End an upload at a message that did not decode, saying what was kept."""
        if upload.total_size >= 0:  # resumable: what came before the bad message stays, like an interrupted stream
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{exc.detail}; upload {upload.upload_id} keeps the {partial.size} bytes received before it: "
                f"resume from offset {partial.size}",
            )
        await self._fail(
            upload, partial, context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.detail}; nothing was stored"
        )

    def _write_chunk(self, data: bytes, partial: _PartialFile, total: int) -> None:
        """Append one chunk to the partial file, or raise ``_Refusal`` saying why it may not be."""
        if not data:
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "empty chunk")
        if len(data) > MAX_CHUNK_SIZE:
            raise _Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk of {len(data)} bytes is larger than the limit of {MAX_CHUNK_SIZE}",
            )
        end = partial.size + len(data)
        if total >= 0 and end > total:
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"received more than the declared {total} bytes")
        if total == -1:  # the size was not known up front: check and reserve as the file grows
            limit = self._limits.max_file_size
            if limit and end > limit:
                raise _Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"the file is larger than the server's limit of {limit} bytes"
                )
            try:
                partial.reservation.reserve(len(data))
            except QuotaExceeded as exc:
                raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        partial.write(data)

    async def _commit(
        self, upload: UploadRecord, partial: _PartialFile, digest: str, context: Context
    ) -> pb.UploadFileResponse:
        file_id, size = uuid.uuid4().hex, partial.size
        existing = await self._meta.find_file(upload.filename, digest, size, upload.owner)
        if existing is not None:  # the same name and bytes are stored already: answer with that file
            partial.handle.close()
            self._space.freed(self._blobs.discard_partial(upload.upload_id))
            await self._forget_upload(upload.upload_id)
            log.info("%s (%s, %d bytes) is stored already as %s", upload.upload_id, upload.filename, size,
                     existing.file_id)  # fmt: skip
            return self._response(existing, upload.upload_id, already_stored=True)
        try:
            await asyncio.to_thread(self._blobs.commit, upload.upload_id, file_id)
            await self._meta.put_file(
                FileRecord(file_id, upload.filename, size, upload.content_type, digest, time.time(), upload.owner)
            )
        except OSError as exc:
            if not _disk_full(exc):
                raise
            # Not recorded, so not stored: the bytes go, whichever side of the rename they are on
            # (the partial's are counted, and removed, by _fail).
            self._blobs.delete(file_id)
            await self._fail(upload, partial, context, grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL, cause=exc)
        await self._forget_upload(upload.upload_id)
        log.info("stored %s (%s, %d bytes)", file_id, upload.filename, size)
        # To its owner; a file of the service token to everyone only where there are no users to keep apart.
        recipient = upload.owner or (EVERYONE if not self._credentials.user_names else "")
        if self._notifications is not None and recipient:
            try:
                await self._notifications.raise_(
                    recipient,
                    "files",
                    f"upload completed: {upload.filename}",
                    f"{size} bytes, sha256 {digest}",
                    attributes={"file_id": file_id, "filename": upload.filename, "size": str(size)},
                )
            except Exception as exc:  # the file is stored: the client must hear so, whatever the log store says
                log.warning("could not notify that %s was stored: %s", file_id, exc)
        return self._response(
            FileRecord(file_id, upload.filename, size, upload.content_type, digest, 0), upload.upload_id
        )

    def _response(self, stored: FileRecord, upload_id: str, *, already_stored: bool = False) -> pb.UploadFileResponse:
        return pb.UploadFileResponse(
            file_id=stored.file_id,
            bytes_uploaded=stored.size,
            download_url=f"streamcli://{self._public_address}/files/{stored.file_id}",
            checksum_verified=True,
            checksum=stored.sha256,
            upload_id=upload_id,
            already_stored=already_stored,
        )

    async def _fail(
        self,
        upload: UploadRecord,
        partial: _PartialFile,
        context: Context,
        code: grpc.StatusCode,
        detail: str,
        *,
        cause: OSError | None = None,
    ) -> NoReturn:
        """Abort the upload for good: nothing of it is kept.

        The partial file goes first: on a full disk that makes room for the
        metadata write that follows, which may still fail (then expiry forgets the
        upload later). ``cause``, a full disk, is logged in one line.
        """
        partial.handle.close()  # before the unlink: an open file keeps its space
        self._blobs.discard_partial(upload.upload_id)
        # What this stream did not write goes back now, so that a stream refused for lack of
        # room makes room for the next one at once.
        self._space.freed(partial.size)
        partial.reservation.release()
        if cause is not None:
            log.warning(
                "upload %s (%s) failed after %d bytes: %s; its partial file is removed",
                upload.upload_id,
                upload.filename,
                partial.size,
                cause,
            )
        await self._forget_upload(upload.upload_id)
        await abort(context, code, detail)

    async def _refuse_full_disk(self, upload: UploadRecord, what: str, cause: OSError, context: Context) -> NoReturn:
        log.warning("%s upload %s (%s): %s", what, upload.upload_id, upload.filename, cause)
        await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL)

    async def _forget_upload(self, upload_id: str) -> None:
        """Delete an upload's record; when the store cannot write, leave it to expiry."""
        try:
            await self._meta.delete_upload(upload_id)
        except OSError as exc:
            log.warning("could not delete the record of upload %s (%s); expiry will retry", upload_id, exc)

    async def _discard(self, upload_id: str) -> None:
        """Delete an upload that no stream is writing: its partial file and its record."""
        self._space.freed(self._blobs.discard_partial(upload_id))
        await self._meta.delete_upload(upload_id)

    async def GetUploadStatus(self, request: pb.GetUploadStatusRequest, context: Context) -> pb.GetUploadStatusResponse:
        upload = await self._meta.get_upload(request.upload_id) if UPLOAD_ID.fullmatch(request.upload_id) else None
        if upload is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no upload {quoted(request.upload_id)}")
        await self._check_upload_owner(upload, context)
        path = self._blobs.partial_path(upload.upload_id)
        return pb.GetUploadStatusResponse(
            upload_id=upload.upload_id,
            committed_offset=path.stat().st_size if path.exists() else 0,
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
        expired = [u for u in await self._meta.expired_uploads(time.time()) if u.upload_id not in self._active]
        discarded = 0
        for upload in expired:
            try:
                await self._discard(upload.upload_id)
            except OSError as exc:  # a full disk, say: the next round tries again
                log.warning("could not discard expired upload %s (%s): %s", upload.upload_id, upload.filename, exc)
                continue
            discarded += 1
            log.info("discarded expired partial upload %s (%s)", upload.upload_id, upload.filename)
        return discarded

    # --- download and companions -----------------------------------------------

    async def _check_upload_owner(self, upload: UploadRecord, context: Context) -> None:
        caller = self._credentials.caller(context.invocation_metadata())
        if not caller.may_act_as(upload.owner):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, f"upload {upload.upload_id} was started with another token"
            )

    async def _get(self, file_id: str, context: Context, *, to_delete: bool = False) -> FileRecord:
        """The file ``file_id`` if the caller may see it (``to_delete``: may delete it)."""
        record = await self._meta.get_file(file_id) if UPLOAD_ID.fullmatch(file_id) else None
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

    async def DownloadFile(
        self, request: pb.DownloadFileRequest, context: Context
    ) -> AsyncIterator[pb.DownloadFileResponse]:
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
        with handle:
            handle.seek(request.offset)
            offset = request.offset
            first = pb.DownloadFileResponse(file=file_info(record), offset=offset)
            data = handle.read(DOWNLOAD_CHUNK_SIZE)
            first.data = data
            yield first
            offset += len(data)
            while offset < record.size:
                data = handle.read(DOWNLOAD_CHUNK_SIZE)
                if not data:
                    await abort(context, grpc.StatusCode.DATA_LOSS, f"file {record.file_id} is shorter than recorded")
                yield pb.DownloadFileResponse(offset=offset, data=data)
                offset += len(data)

    async def GetFileInfo(self, request: pb.GetFileInfoRequest, context: Context) -> pb.GetFileInfoResponse:
        return pb.GetFileInfoResponse(file=file_info(await self._get(request.file_id, context)))

    async def ListFiles(self, request: pb.ListFilesRequest, context: Context) -> pb.ListFilesResponse:
        if not 0 <= request.page_size <= 1000:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_size must be between 1 and 1000")
        size = request.page_size or 100
        # The server's tokens are offsets of at most 18 ASCII digits: str.isdigit() alone also takes
        # "²" (which int() refuses) and numbers beyond SQLite's 64-bit integers.
        if request.page_token and not PAGE_TOKEN.fullmatch(request.page_token):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
        start = int(request.page_token or 0)
        caller = self._credentials.caller(context.invocation_metadata())
        records = await self._meta.list_files(size + 1, start, visible_to=caller.user)
        more = len(records) > size
        return pb.ListFilesResponse(
            files=[file_info(r) for r in records[:size]], next_page_token=str(start + size) if more else ""
        )

    async def DeleteFile(self, request: pb.DeleteFileRequest, context: Context) -> pb.DeleteFileResponse:
        await self._get(request.file_id, context, to_delete=True)  # NOT_FOUND or PERMISSION_DENIED first
        try:
            record = await self._meta.delete_file(request.file_id) if UPLOAD_ID.fullmatch(request.file_id) else None
        except OSError as exc:
            if not _disk_full(exc):
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


def _trailer_problem(trailer: pb.UploadTrailer, total: int, checksum: str, received: int) -> str:
    """Why this trailer cannot end the upload ("" when it can)."""
    if checksum:
        return "a trailer is only for uploads whose checksum was not declared up front"
    if total >= 0 and trailer.total_size != total:
        return f"the trailer declares {trailer.total_size} bytes; the metadata declared {total}"
    if trailer.total_size != received or not SHA256_HEX.fullmatch(trailer.checksum.lower()):
        return (
            f"the trailer declares {trailer.total_size} bytes and checksum {quoted(trailer.checksum)}; "
            f"{received} bytes were received"
        )
    return ""


def _disk_full(exc: BaseException) -> TypeGuard[OSError]:
    """Whether ``exc`` says the data dir's filesystem (or the user's disk quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
