"""Uploads in progress: starting or resuming one, receiving its chunks, and what stays when it ends.

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

``Uploads.open`` gives an ``UploadSession`` for one stream; every way a stream
can fail ends in ``UploadSession._end``, which decides what of the upload stays,
and reaches the RPC handler as ``UploadRefused`` (a status code and detail).

One stream writes an upload at a time, on every replica: the stream holds an
exclusive lease on the upload's id in the backend's presence (scope ``uploads``)
from before it touches the partial file until it has closed it. A stream whose
lease was lost (its store unreachable for longer than the lease, and another
stream took the upload meanwhile) stops at its next chunk, leaving the file to
the stream that holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import logging
import pathlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, NoReturn, TypeGuard

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Backend, BlobStore, FileRecord, Lease, UploadRecord
from streamcli.backends.blobs import SAFE_ID
from streamcli.checksums import sha256_prefix
from streamcli.credentials import Caller
from streamcli.names import check_filename
from streamcli.pagecache import WriteBehind
from streamcli.pipeline import Pipeline
from streamcli.private_files import open_private
from streamcli.protowire import Picking, bytes_key, trailing_bytes
from streamcli.services.checks import MalformedRequest, quoted
from streamcli.services.pacing import TransferPacer
from streamcli.services.quota import QuotaExceeded, QuotaLedger, Reservation

log = logging.getLogger("streamcli.files")

#: Largest chunk a client may send, in bytes (documented in the proto).
MAX_CHUNK_SIZE = 1024 * 1024
#: Client-chosen upload ids: what is safe as a file name.
UPLOAD_ID = SAFE_ID  # the blob store's rule: an id becomes a file name there
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: What a client is told when the data dir's filesystem has no room left.
DISK_FULL = "the server's disk is full"
#: The presence scope of the uploads a stream is writing (members: upload ids, each held by one stream).
UPLOADS_SCOPE = "uploads"
#: How the partial files of UploadFiles' groups are named (then a uuid): they have no upload record, so
#: ``Uploads.expire`` finds those a stopped server left behind by their name and age.
GROUP_PARTIAL_PREFIX = "group-"
_CHUNK_KEY = bytes_key(pb.UploadFileRequest.CHUNK_FIELD_NUMBER)[0]

#: What an upload stream's messages are, as UploadFile's request deserializer makes them: a chunk (a view of
#: the message's wire bytes) or any other message.
UploadRequest = pb.UploadFileRequest | memoryview
#: UploadFile's request deserializer: a message that is a chunk alone (nearly every message of an upload)
#: becomes a view of its bytes in the message, without the copies of a protobuf parse; others are parsed.
decode_upload_request = Picking(pb.UploadFileRequest, functools.partial(trailing_bytes, key=_CHUNK_KEY))


@dataclasses.dataclass(frozen=True)
class FileLimits:
    """Limits ``streamcli serve`` enforces on stored files."""

    max_file_size: int = 0  # bytes per file; 0 = no limit
    quota: int = 0  # bytes for all stored and partial files together; 0 = no limit
    upload_ttl: float = 24 * 3600.0  # seconds a partial upload is kept without progress


class UploadRefused(Exception):
    """Ends an upload stream with ``code`` and ``detail``.

    Raised by ``Uploads.open``, ``UploadSession.receive`` and ``UploadSession.commit`` once what
    must go is gone (``UploadSession._end``); inside the session, also by the checks of each message,
    before that.
    """

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ClaimLost(UploadRefused):
    """This stream lost its lease on the upload: another stream writes it now, so nothing of it is touched."""

    def __init__(self, upload_id: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            f"this stream lost its hold on upload {upload_id} while the server could not reach its store; "
            "resume it (GetUploadStatus gives its offset)",
        )


def disk_full(exc: BaseException) -> TypeGuard[OSError]:
    """Whether ``exc`` says the data dir's filesystem (or the user's disk quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class PartialFile:
    """The partial file of one upload stream: opened once, hashed as it grows, written behind the event loop.

    ``write`` hands a chunk to the stream's ``Pipeline`` (one worker thread writes and hashes, in order; at
    most ``WRITES_IN_FLIGHT`` chunks wait) and returns: the loop goes on serving every other stream while the
    disk works. ``received`` counts the bytes accepted; ``size`` those on disk, which is what ``settle``
    (every accepted chunk written, or the first failure raised) makes it equal to.

    The handle is unbuffered, so ``size`` is always what is on disk: a close
    has nothing left to flush (and cannot fail on a full disk), and the quota
    ledger counts exactly the bytes written, even when a write fails partway.
    The ledger is only touched on the event loop (``_account``), never by the worker.

    A new upload's file is created by the worker, in the step of its first write (or by ``store``): a file of
    one chunk is opened and written in one hand-off, made durable and moved to its stored place in another.
    """

    #: Chunks accepted and not yet written, at most (a few MiB at the largest chunk the contract allows).
    WRITES_IN_FLIGHT = 4

    def __init__(
        self, handle: io.FileIO | None, hasher: Any, size: int, reservation: Reservation, *, path: pathlib.Path
    ) -> None:
        self.handle = handle  # None until the worker creates the file at ``path`` (a new upload)
        self.path = path
        self.hasher = hasher
        self.size = size  # bytes in the file: the committed offset plus what this stream wrote
        self.received = size  # bytes in the file plus those accepted and not yet written
        self.reservation = reservation
        self._accounted = size  # of ``size``, what the reservation has been told of
        self._pipeline: Pipeline[None] = Pipeline()
        self._behind: WriteBehind | None = None  # synced as it grows: the commit's fsync has little left
        self._closed = False
        self._storing = False  # ``store`` has handed the handle to its thread

    def _opened(self) -> io.FileIO:
        """(On the worker thread.) The file's handle, created empty (0600, as the blob it becomes) if need be."""
        if self.handle is None:
            if self._closed:  # (the stream ended while this step waited: nothing more is created)
                raise OSError(errno.EBADF, "the partial file is closed")
            self.handle = open_private(self.path, "wb")
        return self.handle

    async def write(self, data: bytes | memoryview) -> None:
        """Accept ``data`` for writing after what came before; raises a failure of an earlier write."""
        self.received += len(data)
        self._pipeline.put(functools.partial(self._write_now, data))
        while len(self._pipeline) > self.WRITES_IN_FLIGHT:
            try:
                await self._pipeline.take()
            finally:
                self._account()

    async def settle(self) -> None:
        """Wait until every accepted chunk is written (``size == received``), or raise the first failure."""
        try:
            await self._pipeline.drain()
        finally:
            self._account()

    def _write_now(self, data: bytes | memoryview) -> None:
        """(On the worker thread.) Append ``data`` and hash it."""
        handle = self._opened()
        if self._behind is None:
            self._behind = WriteBehind(handle.fileno(), self.size, durable=True)
        view = memoryview(data)
        while view:
            written = write_some(handle, view)
            self.size += written
            view = view[written:]
        self._behind.wrote(self.size)
        self.hasher.update(data)

    async def store(self, blobs: BlobStore, upload_id: str, file_id: str) -> None:
        """Make the file durable and move it to its stored place as ``file_id`` (``BlobStore.commit``), once every
        write is done; raises its failure, or the first of a write.

        On a thread at the process's priority, not the worker's: the commit is little CPU but waits for the
        disk, and a step at the worker's lower priority waits for a core as well on a busy machine, which
        the client of every small file would wait for.
        """
        await self.settle()
        # From here the thread owns the handle and closes it, also when this call is cancelled meanwhile
        # (shielded: it runs to its end; ``close`` leaves the handle to it).
        self._storing = True
        await asyncio.shield(asyncio.to_thread(self._store_now, blobs, upload_id, file_id))

    def _store_now(self, blobs: BlobStore, upload_id: str, file_id: str) -> None:
        """(On a thread.) ``BlobStore.commit`` of the file, synced through its handle, then closed here
        (closing a file just written can take a fraction of a millisecond: not on the event loop)."""
        handle = self._opened()
        try:
            if self._behind is not None:
                self._behind.finish()  # (a failed sync behind the writes is this commit's failure)
            blobs.commit(upload_id, file_id, handle.fileno())
        finally:
            handle.close()

    def _account(self) -> None:
        """Tell the reservation of the bytes written since it last heard."""
        self.reservation.wrote(self.size - self._accounted)
        self._accounted = self.size

    async def close(self) -> None:
        """Stop writing (a chunk being written is finished, those waiting dropped), close the file and give
        back what was reserved and not written (all idempotent)."""
        self._closed = True
        await self._pipeline.close()
        self._account()
        self.received = self.size
        if self.handle is not None and not self._storing:
            self.handle.close()
        self.reservation.release()


class Uploads:
    """The uploads of one data dir: opens a session per upload stream, expires abandoned partial files.

    Usage::

        async with uploads.open(first_message, caller) as session:   # UploadRefused
            digest = await session.receive(requests)                 # UploadRefused
            stored, already_stored = await session.commit(digest)
    """

    def __init__(self, backend: Backend, limits: FileLimits, space: QuotaLedger, pacer: TransferPacer) -> None:
        self.pacer = pacer  # upload chunks wait their turn while interactive calls are open
        self.blobs = backend.blobs
        self.meta = backend.metadata
        self.presence = backend.presence  # which uploads a stream is writing, on every replica
        self.limits = limits
        self.space = space

    @contextlib.asynccontextmanager
    async def open(self, first: UploadRequest, caller: Caller) -> AsyncIterator[UploadSession]:
        """The session of a stream whose first message is ``first``, closed when the block ends.

        Raises:
            UploadRefused: the upload cannot start or resume.
        """
        if isinstance(first, memoryview):  # a chunk (decode_upload_request)
            raise _invalid("the first message must carry metadata or resume, not chunk")
        kind = first.WhichOneof("payload")
        if kind == "metadata":
            session = await self._start(first, caller)
        elif kind == "resume":
            session = await self._resume(first.resume, caller)
        else:
            raise _invalid(f"the first message must carry metadata or resume, not {kind or 'nothing'}")
        try:
            yield session
        finally:
            try:
                await session.partial.close()
            finally:
                await asyncio.shield(session.lease.leave())  # once the file is closed: another stream may go on

    async def owned(self, upload_id: str, caller: Caller, *, missing: str) -> UploadRecord:
        """The record of upload ``upload_id`` if ``caller`` may act on it.

        Raises:
            UploadRefused: NOT_FOUND with ``missing`` for the detail, or PERMISSION_DENIED.
        """
        upload = await self.meta.get_upload(upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
        if upload is None:
            raise UploadRefused(grpc.StatusCode.NOT_FOUND, missing)
        if not caller.may_act_as(upload.owner):
            raise UploadRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"upload {upload.upload_id} was started with another token"
            )
        return upload

    def committed_offset(self, upload_id: str) -> int:
        """The bytes of the upload on disk: where a resumed stream goes on."""
        path = self.blobs.partial_path(upload_id)
        return path.stat().st_size if path.exists() else 0

    async def _start(self, first: pb.UploadFileRequest, caller: Caller) -> UploadSession:
        meta = first.metadata
        checksum = meta.checksum.lower()
        filename = checked_metadata(meta, checksum, self.limits.max_file_size)
        upload_id = first.upload_id or uuid.uuid4().hex
        if not UPLOAD_ID.fullmatch(upload_id):
            raise _invalid("upload_id must be 1-64 letters, digits, '-' or '_'")
        exists = UploadRefused(
            grpc.StatusCode.ALREADY_EXISTS,
            f"upload {upload_id} already exists: resume it (GetUploadStatus gives its offset)",
        )
        now = time.time()
        upload = UploadRecord(
            upload_id, filename, meta.total_size, meta.content_type, checksum, now, now + self.limits.upload_ttl,
            caller.user or "",
        )  # fmt: skip
        async with self._claimed(upload_id, exists) as lease:
            return await self._started(upload, lease, exists)

    async def _started(self, upload: UploadRecord, lease: Lease, exists: UploadRefused) -> UploadSession:
        """The session of a new ``upload`` (its id claimed by ``lease``): recorded unless an upload of its id
        exists (``exists``), with its reservation."""
        upload_id = upload.upload_id
        if upload.total_size < 0:  # unknown-size uploads cannot be resumed: nothing to record
            if await self.meta.get_upload(upload_id) is not None:
                raise exists
        else:
            try:
                # Recorded unless an upload of this id exists (on any replica): the check and the record are one step.
                if not await self.meta.start_upload(upload):
                    raise exists
            except OSError as exc:
                if not disk_full(exc):
                    raise
                log.warning("could not start upload %s (%s): %s", upload_id, upload.filename, exc)
                raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL) from exc
        try:
            # Unknown sizes reserve chunk by chunk as they arrive (UploadSession._write_chunk).
            reservation = await self._reserve(max(upload.total_size, 0))
        except UploadRefused:
            if upload.total_size >= 0:
                await self.forget(upload_id)
            raise
        # The partial file is created by the worker that writes it (PartialFile), with the first chunk.
        path = self.blobs.partial_path(upload_id)
        return UploadSession(self, upload, PartialFile(None, hashlib.sha256(), 0, reservation, path=path), lease)

    async def _resume(self, resume: pb.UploadResume, caller: Caller) -> UploadSession:
        missing = f"no upload {quoted(resume.upload_id)} to resume (expired?)"
        upload = await self.owned(resume.upload_id, caller, missing=missing)
        busy = UploadRefused(
            grpc.StatusCode.FAILED_PRECONDITION, f"upload {upload.upload_id} is being written by another stream"
        )
        async with self._claimed(upload.upload_id, busy) as lease:
            committed = self.committed_offset(upload.upload_id)
            if resume.offset != committed:
                raise UploadRefused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"resume offset {resume.offset} disagrees with the server's committed offset {committed}",
                )
            # The committed bytes are already counted as used; only the rest may still arrive. A refused
            # resume keeps its partial file: it can go on once space is freed.
            reservation = await self._reserve(upload.total_size - committed)
            return await self._opened(upload, committed, reservation, lease)

    @contextlib.asynccontextmanager
    async def _claimed(self, upload_id: str, refusal: UploadRefused) -> AsyncIterator[Lease]:
        """The lease of the one stream that writes ``upload_id`` (``refusal`` when another holds it), given up
        if the block fails."""
        lease = await self.presence.join(UPLOADS_SCOPE, upload_id, exclusive=True)
        if lease is None:
            raise refusal
        try:
            yield lease
        except BaseException:
            await asyncio.shield(lease.leave())
            raise

    async def _opened(
        self, upload: UploadRecord, committed: int, reservation: Reservation, lease: Lease
    ) -> UploadSession:
        """A session writing resumed ``upload``'s partial file after its first ``committed`` bytes.

        The partial file is opened and its committed prefix hashed again (hashlib states cannot be saved),
        and the upload recorded with a fresh expiry. When that fails, the partial file stays, to be resumed
        again.
        """
        path = self.blobs.partial_path(upload.upload_id)
        handle = None
        try:
            mode = "r+b" if path.exists() else "w+b"
            handle = await asyncio.to_thread(open_private, path, mode)  # 0600, as the blob it becomes
            hasher = await asyncio.to_thread(sha256_prefix, handle, committed)  # off the event loop
            handle.seek(committed)
            upload = dataclasses.replace(upload, expires_at=time.time() + self.limits.upload_ttl)
            await self.meta.put_upload(upload)
        except BaseException as exc:
            reservation.release()
            if handle is not None:
                handle.close()
            if disk_full(exc):
                log.warning("could not resume upload %s (%s): %s", upload.upload_id, upload.filename, exc)
                raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL) from exc
            raise
        return UploadSession(self, upload, PartialFile(handle, hasher, committed, reservation, path=path), lease)

    async def _reserve(self, size: int) -> Reservation:
        """A reservation of ``size`` bytes for one upload stream, or RESOURCE_EXHAUSTED over the quota."""
        reservation = self.space.reservation()
        await reserve_more(reservation, size)
        return reservation

    async def forget(self, upload_id: str) -> None:
        """Delete an upload's record; when the store cannot write, leave it to expiry."""
        try:
            await self.meta.delete_upload(upload_id)
        except OSError as exc:
            log.warning("could not delete the record of upload %s (%s); expiry will retry", upload_id, exc)

    async def expire(self) -> int:
        """Discard partial uploads past their time to live that no stream is writing; returns how many."""
        expired = await self.meta.expired_uploads(time.time())
        if expired:
            writing = set(await self.presence.members(UPLOADS_SCOPE))  # on any replica
            expired = [u for u in expired if u.upload_id not in writing]
        discarded = 0
        for upload in expired:
            try:
                self.space.freed(self.blobs.discard_partial(upload.upload_id))
                await self.meta.delete_upload(upload.upload_id)
            except OSError as exc:  # a full disk, say: the next round tries again
                log.warning("could not discard expired upload %s (%s): %s", upload.upload_id, upload.filename, exc)
                continue
            discarded += 1
            log.info("discarded expired partial upload %s (%s)", upload.upload_id, upload.filename)
        # A group's partial files live for the moments of its commit: one older than the time to live was left
        # by a server that stopped in between (its files were never answered).
        stale = await asyncio.to_thread(
            self.blobs.partials_older_than, GROUP_PARTIAL_PREFIX, time.time() - self.limits.upload_ttl
        )
        for upload_id in stale:
            self.space.freed(self.blobs.discard_partial(upload_id))
            discarded += 1
            log.info("discarded the partial file %s of an UploadFiles group never stored", upload_id)
        return discarded


class UploadSession:
    """One upload stream: receives its chunks into the partial file, verifies them, stores the file."""

    def __init__(self, uploads: Uploads, upload: UploadRecord, partial: PartialFile, lease: Lease) -> None:
        self._uploads = uploads
        self.upload = upload
        self.partial = partial
        self.lease = lease  # this stream's claim on the upload (Uploads._claimed)

    async def receive(self, requests: AsyncIterator[UploadRequest]) -> str:
        """Write the chunks that follow the first message, up to the end of the stream.

        Returns:
            The SHA-256 of the whole file, matching the one the client declared.

        Raises:
            UploadRefused: the upload is incomplete (its partial file stays, for a resume) or refused.
        """
        try:
            # However the stream ends, what was accepted is written first (or its failure raised, replacing
            # the stream's: a full disk is why nothing is kept), so that ``size`` is what is on disk. A call
            # that is gone (cancelled) leaves that to Uploads.open, which closes the file after the write
            # in progress.
            try:
                total, checksum = await self._read(requests)
            except asyncio.CancelledError:
                raise
            except BaseException:
                await self.partial.settle()
                raise
            await self.partial.settle()
        except UploadRefused as refusal:
            await self._end(refusal.code, refusal.detail, keep=isinstance(refusal, ClaimLost))
        except MalformedRequest as exc:
            upload, size = self.upload, self.partial.size
            if upload.total_size >= 0:  # resumable: what came before the bad message stays, like an interruption
                detail = (
                    f"{exc.detail}; upload {upload.upload_id} keeps the {size} bytes received before it: "
                    f"resume from offset {size}"
                )
                await self._end(grpc.StatusCode.INVALID_ARGUMENT, detail, keep=True)
            await self._end(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.detail}; nothing was stored")
        except OSError as exc:
            if not disk_full(exc):
                raise
            await self._end(grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL, cause=exc)
        size = self.partial.size
        if size < total or not checksum:
            missing = f"{size} of {total} bytes received" if size < total else "no trailer received"
            detail = f"upload incomplete: {missing}; resume upload {self.upload.upload_id} from offset {size}"
            await self._end(grpc.StatusCode.FAILED_PRECONDITION, detail, keep=True)
        digest: str = self.partial.hasher.hexdigest()
        if digest != checksum:
            await self._end(grpc.StatusCode.DATA_LOSS, checksum_mismatch(digest, checksum))
        return digest

    async def _read(self, requests: AsyncIterator[UploadRequest]) -> tuple[int, str]:
        """Write every chunk; returns the size and checksum declared (by the metadata or the trailer)."""
        total, checksum = self.upload.total_size, self.upload.sha256
        trailer_seen = False
        async for request in requests:
            if trailer_seen:
                raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, "message after the trailer")
            if isinstance(request, memoryview):  # a chunk (decode_upload_request)
                await self._write_chunk(request, total)
                continue
            kind = request.WhichOneof("payload")
            if kind == "chunk":
                await self._write_chunk(request.chunk, total)
            elif kind == "trailer":
                problem = _trailer_problem(request.trailer, total, checksum, self.partial.received)
                if problem:
                    raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, problem)
                total, checksum = request.trailer.total_size, request.trailer.checksum.lower()
                trailer_seen = True
            else:
                raise UploadRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{kind or 'an empty message'} after the first message; only chunks may follow",
                )
        if total == -1:
            raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended without a trailer")
        return total, checksum

    async def _write_chunk(self, data: bytes | memoryview, total: int) -> None:
        """Append one chunk to the partial file, or raise ``UploadRefused`` saying why it may not be."""
        if not data:
            raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, "empty chunk")
        if len(data) > MAX_CHUNK_SIZE:
            raise _invalid(f"chunk of {len(data)} bytes is larger than the limit of {MAX_CHUNK_SIZE}")
        if not self.lease.held:
            raise ClaimLost(self.upload.upload_id)
        partial = self.partial
        end = partial.received + len(data)
        if total >= 0 and end > total:
            raise _invalid(too_many_bytes(total))
        if total == -1:  # the size was not known up front: check and reserve as the file grows
            limit = self._uploads.limits.max_file_size
            if limit and end > limit:
                raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, _too_large(limit))
            await reserve_more(partial.reservation, len(data))
        if self._uploads.pacer.engaged:  # (interactive calls are open: the next message waits its turn)
            await self._uploads.pacer.admit(len(data))
        await partial.write(data)

    async def commit(self, digest: str) -> tuple[FileRecord, bool]:
        """Store the received file (whose SHA-256 is ``digest``) and forget the upload.

        Returns:
            The stored file, and whether it was stored already (the same name and bytes, and owner):
            then that file is the answer and the received bytes go.

        Raises:
            UploadRefused: the disk is full; nothing of the upload is kept.
        """
        upload, uploads, size = self.upload, self._uploads, self.partial.size
        if not self.lease.held:  # another stream writes the upload now: nothing of it is touched
            lost = ClaimLost(upload.upload_id)
            await self._end(lost.code, lost.detail, keep=True)
        file_id = uuid.uuid4().hex
        stored = FileRecord(file_id, upload.filename, size, upload.content_type, digest, time.time(), upload.owner)
        try:
            # The bytes are made durable (through the handle that wrote them) and moved first, then the file
            # is recorded and the upload forgotten in one metadata step, which finds a file stored already.
            await self.partial.store(uploads.blobs, upload.upload_id, stored.file_id)
            recorded = await uploads.meta.finish_upload(stored, upload.upload_id)
        except OSError as exc:
            if not disk_full(exc):
                raise
            # Not recorded, so not stored: the bytes go, whichever side of the rename they are on
            # (the partial's are counted, and removed, by _end).
            uploads.blobs.delete(stored.file_id)
            await self._end(grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL, cause=exc)
        if recorded.file_id != stored.file_id:  # the same name and bytes, and owner: that file is the answer
            uploads.space.freed(uploads.blobs.delete(stored.file_id))
            log.info("%s (%s, %d bytes) is stored already as %s", upload.upload_id, upload.filename, size,
                     recorded.file_id)  # fmt: skip
            return recorded, True
        log.info("stored %s (%s, %d bytes)", stored.file_id, upload.filename, size)
        return stored, False

    async def _end(
        self, code: grpc.StatusCode, detail: str, *, keep: bool = False, cause: OSError | None = None
    ) -> NoReturn:
        """End the upload with ``code`` and ``detail``: the one place that decides what of it stays.

        ``keep``: the partial file stays, to be resumed from its size (the detail says from where).
        Otherwise nothing of the upload is kept: the partial file goes first (on a full disk that makes
        room for the metadata write that follows, which may still fail: expiry then forgets the upload
        later), and what it held and what this stream had reserved go back to the quota at once, so
        that a stream refused for lack of room makes room for the next one. ``cause``, a full disk, is
        logged in one line.

        Raises:
            UploadRefused: always.
        """
        if not keep:
            uploads, upload, partial = self._uploads, self.upload, self.partial
            await partial.close()  # before the unlink: an open file keeps its space
            uploads.blobs.discard_partial(upload.upload_id)
            uploads.space.freed(partial.size)
            if cause is not None:
                log.warning("upload %s (%s) failed after %d bytes: %s; its partial file is removed",
                            upload.upload_id, upload.filename, partial.size, cause)  # fmt: skip
            await uploads.forget(upload.upload_id)
        raise UploadRefused(code, detail)


def checked_metadata(meta: pb.FileMetadata, checksum: str, max_file_size: int) -> str:
    """The file name of a new upload's metadata (``checksum``: its lower-cased checksum), once all checks pass
    (UploadFile's first message, and each file of UploadFiles).

    Raises:
        UploadRefused: INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for a file over ``max_file_size``.
    """
    try:
        filename = check_filename(meta.filename)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    if meta.total_size < -1:
        raise _invalid(f"total_size {meta.total_size} is negative")
    if checksum and not SHA256_HEX.fullmatch(checksum):
        raise _invalid(
            "checksum must be the 64-hex-digit SHA-256 of the whole file (or empty, to send it in the trailer)"
        )
    if meta.total_size == -1 and checksum:
        raise _invalid("an upload of unknown size sends its checksum in the trailer")
    if max_file_size and meta.total_size > max_file_size:
        raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, _too_large(max_file_size))
    return filename


def write_some(handle: io.FileIO, view: memoryview) -> int:
    """(On a thread.) Write the start of ``view`` to a partial file's unbuffered ``handle`` (which may take only
    part of it); the bytes written, at least one.

    Raises:
        OSError: the write failed, or took no bytes (EIO: a loop on it would never end).
    """
    written = handle.write(view)
    if not written:
        raise OSError(errno.EIO, "the partial file accepted no bytes")
    return written


async def reserve_more(reservation: Reservation, size: int) -> None:
    """Reserve ``size`` more bytes in ``reservation``, or raise RESOURCE_EXHAUSTED saying the quota is exceeded."""
    try:
        await reservation.reserve(size)
    except QuotaExceeded as exc:
        raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None


def checksum_mismatch(digest: str, checksum: str) -> str:
    """What a client is told of a file whose bytes hash to ``digest`` where it declared ``checksum``."""
    return f"checksum mismatch: received bytes hash to {digest}, declared {checksum}"


def too_many_bytes(total: int) -> str:
    """What a client is told of a file that sent more bytes than it declared (``total``)."""
    return f"received more than the declared {total} bytes"


def _invalid(detail: str) -> UploadRefused:
    return UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, detail)


def _too_large(limit: int) -> str:
    return f"the file is larger than the server's limit of {limit} bytes"


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
