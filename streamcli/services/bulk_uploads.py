"""UploadFiles: many small whole files on one stream, stored in groups (group commit).

Each request is one whole file (metadata with size and checksum, and its bytes). The stream's requests are
read ahead into an ``Inbox`` (at most ``GROUP_FILES`` files or ``GROUP_BYTES`` bytes: a client that does not
read its answers stops the server reading, by HTTP/2 flow control), and whatever has arrived when the
previous group is done is the next group. A group is stored in a few steps whatever its size:

1. each file checked as UploadFile checks its first message and its bytes (``uploads.checked_metadata``,
   the same details), on the event loop; the quota reserved once for the group (file by file when the
   group does not fit, so that the files that fit are stored, as uploads one after another would be);
2. on one thread: each file hashed and compared, written to a partial file, all synced together, renamed
   into the store, the directory synced once (``BlobStore.commit_many``);
3. one metadata step for the group (``MetadataStore.store_files``: one SQLite transaction; the same
   already-stored rule as ``finish_upload``), then one append of the "upload completed" notifications;
4. the group's answers, in order.

A group, once started, runs to its end (shielded): a call cancelled meanwhile leaves no file written and
unrecorded. Every answered file is durable; a stream-level failure (a malformed message, the store
unreachable) ends the call saying how many files were answered.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import BlobStore, FileRecord, StoreUnavailableError
from streamcli.credentials import Caller
from streamcli.private_files import open_private
from streamcli.services.checks import MalformedRequest
from streamcli.services.quota import Reservation
from streamcli.services.rpc import Context, abort
from streamcli.services.uploads import (
    DISK_FULL,
    GROUP_PARTIAL_PREFIX,
    MAX_CHUNK_SIZE,
    UploadRefused,
    Uploads,
    checked_metadata,
    checksum_mismatch,
    disk_full,
    reserve_more,
    too_many_bytes,
    write_some,
)

log = logging.getLogger("streamcli.files")

#: Files read ahead of the answers, at most (and so the most one group stores at once).
GROUP_FILES = 64
#: Bytes of file content read ahead of the answers, at most (one file more may pass it, by at most 1 MiB).
GROUP_BYTES = 8 * 1024 * 1024

#: What UploadFile answers for a stored file: (the file, the upload id, whether it was stored already).
Respond = Callable[[FileRecord, str, bool], pb.UploadFileResponse]


@dataclasses.dataclass
class _File:
    """One checked file of a group."""

    position: int  # in the group
    record: FileRecord  # what is stored if all goes well
    content: bytes
    upload_id: str  # names its partial file (GROUP_PARTIAL_PREFIX: found by Uploads.expire if a crash leaves it)


class Inbox:
    """The requests of a stream, read ahead by a task of its own, at most ``GROUP_FILES`` files and
    ``GROUP_BYTES`` bytes; ``take`` hands over what has arrived."""

    def __init__(self, requests: AsyncIterator[pb.UploadFilesRequest]) -> None:
        self._waiting: collections.deque[pb.UploadFilesRequest] = collections.deque()
        self._bytes = 0
        self._changed = asyncio.Event()  # a request arrived, the stream ended, or requests were taken
        self._ended = False
        self._failure: BaseException | None = None  # how the reading ended, if not with the stream's end
        self._reader = asyncio.get_running_loop().create_task(self._read(requests), name="UploadFiles reader")

    async def _read(self, requests: AsyncIterator[pb.UploadFilesRequest]) -> None:
        try:
            async for request in requests:
                self._waiting.append(request)
                self._bytes += len(request.content)
                self._changed.set()
                while len(self._waiting) >= GROUP_FILES or self._bytes >= GROUP_BYTES:
                    self._changed.clear()
                    await self._changed.wait()
        except Exception as exc:  # MalformedRequest, or the call's own failure
            self._failure = exc
        finally:
            self._ended = True
            self._changed.set()

    async def take(self) -> list[pb.UploadFilesRequest]:
        """The requests that have arrived (waiting for one); [] at the end of the stream.

        Raises:
            MalformedRequest: the next message did not decode (the ones before it were taken).
        """
        while not self._waiting and not self._ended:
            self._changed.clear()
            await self._changed.wait()
        if not self._waiting:
            if self._failure is not None:
                raise self._failure
            return []
        taken = list(self._waiting)
        self._waiting.clear()
        self._bytes = 0
        self._changed.set()  # (the reader goes on)
        return taken

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class FileGroups:
    """Stores the files of UploadFiles streams in groups (see the module's docstring).

    ``respond`` makes UploadFile's answer for a stored file; ``notify`` tells the owners of new files.
    """

    def __init__(
        self, uploads: Uploads, respond: Respond, notify: Callable[[Sequence[FileRecord]], Awaitable[None]]
    ) -> None:
        self._uploads = uploads
        self._respond = respond
        self._notify = notify

    async def answer(
        self, requests: AsyncIterator[pb.UploadFilesRequest], caller: Caller, context: Context
    ) -> AsyncIterator[pb.UploadFilesResponse]:
        """The answers to a stream's files, in order, group by group."""
        inbox = Inbox(requests)
        answered = 0
        try:
            while group := await inbox.take():
                # Shielded: a group once started is stored and recorded to its end, even if the call goes.
                for response in await asyncio.shield(self._store(group, answered, caller)):
                    yield response
                answered += len(group)
        except MalformedRequest as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.detail}; {_answered(answered)}")
        except StoreUnavailableError as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"{exc}; {_answered(answered)}")
        finally:
            await inbox.close()

    async def _store(
        self, group: list[pb.UploadFilesRequest], first: int, caller: Caller
    ) -> list[pb.UploadFilesResponse]:
        """Store the files of ``group`` (its first at position ``first`` of the stream); their answers."""
        answers: list[pb.UploadFilesResponse | None] = [None] * len(group)

        def refuse(position: int, refusal: UploadRefused) -> None:
            answers[position] = pb.UploadFilesResponse(
                index=first + position,
                refusal=pb.UploadFileRefusal(code=refusal.code.value[0], detail=refusal.detail),
            )

        files: list[_File] = []
        for position, request in enumerate(group):
            try:
                files.append(self._checked(position, request, caller))
            except UploadRefused as refusal:
                refuse(position, refusal)
        uploads = self._uploads
        if files and uploads.pacer.engaged:  # (interactive calls are open: the group waits its turn)
            await uploads.pacer.admit(sum(len(f.content) for f in files))
        reservation = uploads.space.reservation()
        stored: list[_File] = []
        try:
            files = await self._reserved(files, reservation, refuse)
            stored = await self._written(files, refuse)
        finally:
            reservation.wrote(sum(f.record.size for f in stored))  # (on disk now: used, no longer reserved)
            reservation.release()
        if stored:
            recorded = await self._recorded(stored, refuse)
            new = [r for f, r in zip(stored, recorded, strict=True) if r.file_id == f.record.file_id]
            if new:
                await self._notify(new)
            for file, record in zip(stored, recorded, strict=True):
                already = record.file_id != file.record.file_id
                if already:  # the same name and bytes, and owner: that file is the answer
                    uploads.space.freed(uploads.blobs.delete(file.record.file_id))
                answers[file.position] = pb.UploadFilesResponse(
                    index=first + file.position, stored=self._respond(record, file.upload_id, already)
                )
            log.info("stored %d of %d files of a group (%d new)", len(stored), len(group), len(new))
        return [answer for answer in answers if answer is not None]

    def _checked(self, position: int, request: pb.UploadFilesRequest, caller: Caller) -> _File:
        """The file of ``request`` once UploadFile's checks pass (the same refusals, the same details)."""
        meta, content = request.metadata, request.content
        checksum = meta.checksum.lower()
        filename = checked_metadata(meta, checksum, self._uploads.limits.max_file_size)
        if meta.total_size < 0 or not checksum:
            raise UploadRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "UploadFiles needs each file's size (total_size) and checksum in its metadata",
            )
        if len(content) > MAX_CHUNK_SIZE:
            raise UploadRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the file's {len(content)} bytes are more than UploadFiles takes ({MAX_CHUNK_SIZE}): "
                "send it with UploadFile",
            )
        if len(content) > meta.total_size:
            raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, too_many_bytes(meta.total_size))
        if len(content) < meta.total_size:
            raise UploadRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"upload incomplete: {len(content)} of {meta.total_size} bytes received",
            )
        record = FileRecord(
            uuid.uuid4().hex, filename, len(content), meta.content_type, checksum, time.time(), caller.user or ""
        )
        return _File(position, record, content, GROUP_PARTIAL_PREFIX + uuid.uuid4().hex)

    async def _reserved(
        self, files: list[_File], reservation: Reservation, refuse: Callable[[int, UploadRefused], None]
    ) -> list[_File]:
        """The files of ``files`` that fit under the quota, reserved in ``reservation``: all at once when they
        fit together, else one by one (the others refused as UploadFile would refuse them)."""
        try:
            await reserve_more(reservation, sum(f.record.size for f in files))
            return files
        except UploadRefused:
            pass
        fitting = []
        for file in files:
            try:
                await reserve_more(reservation, file.record.size)
            except UploadRefused as refusal:
                refuse(file.position, refusal)
                continue
            fitting.append(file)
        return fitting

    async def _written(self, files: list[_File], refuse: Callable[[int, UploadRefused], None]) -> list[_File]:
        """The files of ``files`` whose bytes hash to their checksum, written, synced and moved into the store
        on one thread; the others refused."""
        if not files:
            return []
        blobs = self._uploads.blobs
        try:
            digests = await asyncio.to_thread(_write_group, blobs, files)
        except OSError as exc:
            if not disk_full(exc):
                raise
            log.warning("could not store a group of %d files: %s", len(files), exc)
            for file in files:
                refuse(file.position, UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL))
            return []
        written = []
        for file, digest in zip(files, digests, strict=True):
            if digest != file.record.sha256:
                mismatch = checksum_mismatch(digest, file.record.sha256)
                refuse(file.position, UploadRefused(grpc.StatusCode.DATA_LOSS, mismatch))
            else:
                written.append(file)
        return written

    async def _recorded(self, files: list[_File], refuse: Callable[[int, UploadRefused], None]) -> list[FileRecord]:
        """``MetadataStore.store_files`` of the written ``files``; when that fails, their bytes go (not
        recorded, so not stored): refused on a full disk, the failure raised otherwise."""
        uploads = self._uploads
        try:
            return await uploads.meta.store_files([f.record for f in files])
        except BaseException as exc:
            for file in files:
                uploads.space.freed(uploads.blobs.delete(file.record.file_id))
            if not disk_full(exc):
                raise
            for file in files:
                refuse(file.position, UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, DISK_FULL))
            return []


def _write_group(blobs: BlobStore, files: Sequence[_File]) -> list[str]:
    """(On a thread.) Each file's SHA-256; those that match their checksum written to partial files and
    committed together (``BlobStore.commit_many``). Nothing of the group is left behind when this fails."""
    digests = [hashlib.sha256(f.content).hexdigest() for f in files]
    matching = [f for f, digest in zip(files, digests, strict=True) if digest == f.record.sha256]
    handles = []
    try:
        for file in matching:
            handle = open_private(blobs.partial_path(file.upload_id), "wb")
            handles.append(handle)
            view = memoryview(file.content)
            while view:
                view = view[write_some(handle, view) :]
        blobs.commit_many([(f.upload_id, f.record.file_id, h.fileno()) for f, h in zip(matching, handles, strict=True)])
    except BaseException:
        for file in matching:
            blobs.discard_partial(file.upload_id)
            blobs.delete(file.record.file_id)
        raise
    finally:
        for handle in handles:
            handle.close()
    return digests


def _answered(count: int) -> str:
    return f"{count} files of this stream were answered before (each stored as answered), none after"
