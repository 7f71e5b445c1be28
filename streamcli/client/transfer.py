"""Uploads and downloads: chunked, resumable, SHA-256 verified, constant memory.

Uploads of a path are resumable across runs without any client state: the
upload id is derived from the file's path, size, modification time and name, so
running the same command again finds the interrupted upload (the server
refuses a new upload of its id with ALREADY_EXISTS; ``GetUploadStatus`` gives
its offset) and sends only the rest. The file is read once, hashed as
it is sent; the checksum rides in the trailer. Downloads write ``NAME.part``, continue from its size, verify the
SHA-256 and only then rename it into place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import hashlib
import os
import pathlib
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, BinaryIO

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.checksums import sha256_prefix
from streamcli.client.connection import Connection, FirstStatus, rpc_errors
from streamcli.client.files import FileEntry
from streamcli.client.ids import IdKind, resolve_id
from streamcli.client.progress import ProgressSink
from streamcli.client.retry import DEFAULT_RETRY, Attempts, RetryPolicy
from streamcli.client.small_files import NoUploadFiles, SmallFile, SmallFileStream
from streamcli.client.streams import bytes_stream
from streamcli.errors import (
    ConflictError,
    IntegrityError,
    LocalFileError,
    ResourceExhaustedError,
    StreamcliError,
    UsageError,
)
from streamcli.names import check_filename, is_filename
from streamcli.pagecache import WriteBehind
from streamcli.pipeline import Pipeline
from streamcli.protowire import Picking, bytes_key, read_varint, serialize, trailing_bytes, varint

#: Bytes per upload message: the most the contract allows, which moved the most bytes per second
#: through grpc.aio on loopback of the sizes measured (bench/README.md, "File transfer"); at the
#: speeds measured that is still hundreds of progress updates a second.
CHUNK_SIZE = 1024 * 1024
#: Chunks an upload reads (and hashes) ahead of what it sends, at most.
READS_AHEAD = 4
#: Files of at most this many bytes, when ``upload`` has several, go on one UploadFiles stream (the most one
#: of its messages carries); larger ones are uploaded one UploadFile call each.
SMALL_FILE_SIZE = CHUNK_SIZE
#: Paths inspected (small files read and hashed) per hand-off to a thread.
SMALL_FILES_PER_READ = 16
#: Small files read ahead of the stream, at most (beyond its window of unanswered files).
SMALL_FILES_AHEAD = 64
#: The key of ``UploadFileRequest.chunk`` (field 3, length-delimited): a chunk's request is this, its length, the chunk.
_CHUNK_KEY = bytes_key(pb.UploadFileRequest.CHUNK_FIELD_NUMBER)
_OFFSET_KEY = bytes((pb.DownloadFileResponse.OFFSET_FIELD_NUMBER << 3,))  # (a varint field's key)
_DATA_KEY = bytes_key(pb.DownloadFileResponse.DATA_FIELD_NUMBER)[0]
_INT64_BITS = (1 << 64) - 1
_DOWNLOAD_METHOD = f"/{pb.DESCRIPTOR.services_by_name['StreamingService'].full_name}/DownloadFile"

#: A file of one chunk or less, read whole: its bytes and their SHA-256 (lowercase hex).
_Whole = tuple[bytes, str]

#: Codes an upload retries on besides the usual ones: the server may still be
#: finishing the previous attempt's stream when the next one starts.
_UPLOAD_RACES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS})


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """A completed, verified transfer."""

    file_id: str
    name: str
    size: int  # bytes
    sha256: str  # lowercase hex
    resumed_from: int = 0  # bytes that an earlier attempt had already moved
    path: str = ""  # where a download was written ("-" for stdout)
    already_stored: bool = False  # an upload the server had stored already (same name and content)

    def to_json(self) -> dict[str, object]:
        """The NDJSON record printed by ``upload --json`` and ``download --json``."""
        record: dict[str, object] = {
            "id": self.file_id,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "resumed_from": self.resumed_from,
        }
        if self.path:
            record["path"] = self.path
        else:
            record["already_stored"] = self.already_stored
        return record


def upload_id_for(path: pathlib.Path, size: int, mtime_ns: int, name: str, token: str | None = None) -> str:
    """The id under which this version of a file (path, size, modification time) is uploaded as ``name``.

    Running the same upload again finds the same id, hence the interrupted
    upload, without reading the file first or keeping client state. The
    token takes part: another user uploading the same file starts an upload of
    their own (and cannot guess, or block, this one's id).
    """
    key = f"{path.resolve()}:{size}:{mtime_ns}:{name}"
    if token:
        key += ":" + hashlib.sha256(token.encode()).hexdigest()
    return hashlib.sha256(key.encode()).hexdigest()[:32]


async def upload_path(
    conn: Connection,
    path: pathlib.Path,
    progress: ProgressSink,
    *,
    name: str | None = None,
    content_type: str = "",
    retry: RetryPolicy = DEFAULT_RETRY,
) -> TransferResult:
    """Upload a regular file, resuming an earlier interrupted upload of it.

    The file is read once: hashed as it is sent, its SHA-256 travels in the
    trailer and the server stores the file only if the bytes it received match.

    Raises:
        UsageError: ``path`` is not a readable regular file.
        StreamcliError: the server refused the upload (size, quota, checksum...).
    """
    name = name or path.name
    # One hand-off to a thread: the file's size and time, the upload id, and a file of one chunk or less read
    # and hashed (its first attempt needs nothing more from the disk).
    size, mtime_ns, upload_id, whole = await asyncio.to_thread(_prepare, path, name, conn.settings.token)
    metadata = pb.FileMetadata(filename=name, total_size=size, content_type=content_type)
    attempts = Attempts(
        retry, f"upload of {name}", also=_UPLOAD_RACES,
        hint="run the same command again to resume the upload", connection=conn,
    )  # fmt: skip
    resumed_from = 0
    changed: list[str] = []  # what _file_requests found changed in the file, when it did
    with rpc_errors(conn):
        sent = [0]  # bytes the current attempt handed to the stream

        def advance(n: int) -> None:
            sent[0] += n
            progress.advance(upload_id, n)

        # An upload starts at once, without asking the server first (a round trip: most of the cost of a small
        # file, and a fixed cost before a large one's first byte, a third of a second on a busy server), and
        # asks only when the server has an upload under its id already (ALREADY_EXISTS: an interrupted one,
        # which it then resumes) or an attempt failed.
        ask = False
        while True:
            first_status = None
            sent[0] = 0
            try:
                status = await _upload_status(conn, upload_id, size) if ask else None
                if status is None:
                    first = pb.UploadFileRequest(metadata=metadata, upload_id=upload_id)
                    offset, declared = 0, ""
                else:
                    offset, declared = status
                    first = pb.UploadFileRequest(resume=pb.UploadResume(upload_id=upload_id, offset=offset))
                    resumed_from = resumed_from or offset
                progress.start(upload_id, name, size, offset)
                if whole is not None and status is None:  # (the file was read with its inspection)
                    requests = _whole_file_requests(first, whole, advance)
                else:
                    hasher = await asyncio.to_thread(_hash_head, path, offset) if offset else hashlib.sha256()
                    requests = _file_requests(
                        first, path, offset, (size, mtime_ns), hasher, trailer=not declared,
                        advance=advance, changed=changed,
                    )  # fmt: skip
                whole = None  # a later attempt reads the file again, and sees if it changed meanwhile
                call = bytes_stream(conn, "UploadFile", pb.UploadFileResponse)(requests, metadata=conn.metadata)
                first_status = FirstStatus(call)
                response = await call
                break
            except grpc.aio.AioRpcError as exc:
                if changed:  # the server refused what the stream became; the reason is here
                    raise LocalFileError(_changed(path, changed[0])) from None
                exc = first_status.unmask(exc) if first_status else exc
                if not ask and exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    ask = True
                    continue  # not a failure: the server has an earlier attempt of this file to resume
                ask = True
                await attempts.failed(exc, progressed=sent[0] > 0)
    progress.finish(upload_id)
    return TransferResult(
        response.file_id, name, response.bytes_uploaded, response.checksum, resumed_from,
        already_stored=response.already_stored,
    )  # fmt: skip


def _prepare(path: pathlib.Path, name: str, token: str | None) -> tuple[int, int, str, _Whole | None]:
    """(On a thread.) Size and modification time (ns) of the regular file to upload, its upload id, and its
    bytes and their SHA-256 when they fit in one chunk (None otherwise).

    Raises:
        UsageError: ``path`` is not a readable regular file.
        LocalFileError: the file changed while it was read.
    """
    size, mtime_ns = _inspect(path)
    upload_id = upload_id_for(path, size, mtime_ns, name, token)
    if size > CHUNK_SIZE:
        return size, mtime_ns, upload_id, None
    try:
        with open(path, "rb") as handle:
            whole = handle.read(size + 1)  # (one byte more: a file that grew says so)
            now = os.fstat(handle.fileno())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if (now.st_size, now.st_mtime_ns) != (size, mtime_ns) or len(whole) != size:
        grew = f"{size} bytes when it started, {now.st_size} now"
        raise LocalFileError(_changed(path, grew if now.st_size != size else "modified since it started"))
    return size, mtime_ns, upload_id, (whole, hashlib.sha256(whole).hexdigest())


def _changed(path: pathlib.Path, what: str) -> str:
    """What the user is told of a file that changed while it was uploaded (``what`` changed)."""
    return (
        f"{path} changed while it was being uploaded ({what}); it was not stored: run the command again once "
        "nothing writes to the file any more"
    )


async def _whole_file_requests(
    first: pb.UploadFileRequest, whole: _Whole, advance: Callable[[int], None]
) -> AsyncIterator[pb.UploadFileRequest | bytes]:
    """The first message, the bytes of a file of one chunk or less (as wire bytes, as ``_file_requests`` sends
    them), then the trailer with their size and checksum."""
    data, sha256 = whole
    yield first
    if data:
        yield _CHUNK_KEY + varint(len(data)) + data
        advance(len(data))
    yield pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=len(data), checksum=sha256))


def _inspect(path: pathlib.Path) -> tuple[int, int]:
    """Size and modification time (ns) of the regular file to upload."""
    try:
        if not path.is_file():
            raise UsageError(f"{path} is not a regular file" if path.exists() else f"{path} does not exist")
        with open(path, "rb"):  # readable?
            pass
        stat = path.stat()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return stat.st_size, stat.st_mtime_ns


def _hash_head(path: pathlib.Path, length: int) -> hashlib._Hash:
    with open(path, "rb") as handle:
        return sha256_prefix(handle, length)


async def _upload_status(conn: Connection, upload_id: str, size: int) -> tuple[int, str] | None:
    """(committed offset, declared checksum) of the server's upload, or None when there is none to resume."""
    try:
        status = await conn.stub.GetUploadStatus(
            pb.GetUploadStatusRequest(upload_id=upload_id), metadata=conn.metadata, timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    if status.metadata.total_size != size:
        raise ConflictError(f"upload {upload_id} on the server is of a different file")
    return int(status.committed_offset), str(status.metadata.checksum)


async def _file_requests(
    first: pb.UploadFileRequest,
    path: pathlib.Path,
    offset: int,
    inspected: tuple[int, int],
    hasher: hashlib._Hash,
    *,
    trailer: bool,
    advance: Callable[[int], None],
    changed: list[str],
) -> AsyncIterator[pb.UploadFileRequest | bytes]:
    """The first message, the file's bytes from ``offset`` (hashed as read), then the trailer.

    Reading and hashing run on a worker thread (a ``Pipeline``), at most ``READS_AHEAD`` chunks ahead
    of what the stream has taken, and so does the serialization of each chunk's message (its wire bytes,
    which the call's serializer passes through): the event loop only sends. ``inspected`` is the file's size and
    modification time (ns) when the upload started. If they differ when the last chunk has been read, or
    the file ends early, the stream ends one chunk short of the declared size, so that the server stores
    nothing, and ``changed`` says what changed.
    """
    size = inspected[0]
    yield first
    sent = offset
    handle = await asyncio.to_thread(open, path, "rb")

    def read(length: int, last: bool) -> tuple[bytes, int] | None:
        """The next chunk's request as wire bytes, and the chunk's length; hashed. None when the file is no
        longer the one inspected (``changed`` says how)."""
        chunk = handle.read(length)
        if last or not chunk:  # the last one (or the file ended early): is it still the file inspected?
            now = os.fstat(handle.fileno())
            if (now.st_size, now.st_mtime_ns) != inspected or not chunk:
                grew = f"{size} bytes when it started, {now.st_size} now"
                changed.append(grew if now.st_size != size else "modified since it started")
                return None
        hasher.update(chunk)
        # UploadFileRequest(chunk=chunk), serialized here rather than by protobuf on the event loop.
        return _CHUNK_KEY + varint(len(chunk)) + chunk, len(chunk)

    reads: Pipeline[tuple[bytes, int] | None] = Pipeline()
    ahead = offset  # bytes asked of the pipeline so far

    def ask() -> None:
        nonlocal ahead
        length = min(CHUNK_SIZE, size - ahead)
        reads.put(functools.partial(read, length, ahead + length >= size))
        ahead += length

    with handle:
        try:
            handle.seek(offset)
            while ahead < size and len(reads) < READS_AHEAD:
                ask()
            while reads:
                taken = await reads.take()
                if taken is None:
                    return  # one chunk short: the server stores nothing
                if ahead < size:
                    ask()
                request, length = taken
                sent += length
                yield request
                advance(length)
        finally:
            await reads.close()  # before the handle is closed
    if trailer:
        yield pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=sent, checksum=hasher.hexdigest()))


async def upload_stream(
    conn: Connection, source: BinaryIO, name: str, progress: ProgressSink, *, content_type: str = ""
) -> TransferResult:
    """Upload a stream of unknown size (e.g. stdin): size and checksum go in a trailer.

    Such an upload cannot resume: the stream cannot be read a second time.
    """
    hasher = hashlib.sha256()
    key = f"stream:{name}"

    async def requests() -> AsyncIterator[pb.UploadFileRequest]:
        yield pb.UploadFileRequest(metadata=pb.FileMetadata(filename=name, total_size=-1, content_type=content_type))
        size = 0
        while chunk := await asyncio.to_thread(source.read, CHUNK_SIZE):
            hasher.update(chunk)
            size += len(chunk)
            yield pb.UploadFileRequest(chunk=chunk)
            progress.advance(key, len(chunk))
        yield pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=size, checksum=hasher.hexdigest()))

    progress.start(key, name, None)
    with rpc_errors(conn):
        call = conn.stub.UploadFile(requests(), metadata=conn.metadata)
        first_status = FirstStatus(call)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            raise first_status.unmask(exc) from None
    progress.finish(key)
    return TransferResult(
        response.file_id, name, response.bytes_uploaded, response.checksum, already_stored=response.already_stored
    )


async def upload_many(
    conn: Connection,
    paths: Sequence[pathlib.Path],
    progress: ProgressSink,
    *,
    parallel: int,
    name: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    on_result: Callable[[TransferResult], None] | None = None,
) -> list[TransferResult | StreamcliError]:
    """Upload several files; one result or error per path, in order.

    Files of up to ``SMALL_FILE_SIZE`` bytes go on one UploadFiles stream (``client/small_files.py``: read whole
    and hashed on a thread, a bounded window of them unanswered); larger ones, and every file when the server
    has no UploadFiles, one UploadFile call each, ``parallel`` at a time (``upload_path``). ``on_result`` hears
    of each stored file as soon as it is stored, so that a run interrupted later has said what it finished.
    """
    if name is not None and len(paths) > 1:
        raise UsageError("--name applies to a single file")
    gate = asyncio.Semaphore(parallel)
    outcomes: list[TransferResult | StreamcliError | None] = [None] * len(paths)

    def settle(position: int, outcome: TransferResult | StreamcliError) -> None:
        outcomes[position] = outcome
        if on_result is not None and isinstance(outcome, TransferResult):
            on_result(outcome)

    async def one(position: int, path: pathlib.Path) -> None:
        async with gate:
            try:
                settle(position, await upload_path(conn, path, progress, name=name, retry=retry))
            except StreamcliError as exc:
                settle(position, exc)

    if len(paths) < 2:  # one file: one call, whatever its size
        await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
        return [o for o in outcomes if o is not None]

    def answered(file: SmallFile, outcome: pb.UploadFileResponse | StreamcliError) -> None:
        if isinstance(outcome, StreamcliError):
            settle(file.position, outcome)
        else:
            settle(file.position, TransferResult(
                outcome.file_id, file.name, outcome.bytes_uploaded, outcome.checksum,
                already_stored=outcome.already_stored,
            ))  # fmt: skip

    large: list[asyncio.Task[None]] = []
    small: asyncio.Queue[SmallFile | None] = asyncio.Queue(maxsize=SMALL_FILES_AHEAD)

    async def read() -> None:
        """Every path inspected (small files read and hashed) on a thread, a few at a time; the small ones
        queued for the stream, the large ones started with UploadFile."""
        token = conn.settings.token
        for start in range(0, len(paths), SMALL_FILES_PER_READ):
            batch = list(enumerate(paths[start : start + SMALL_FILES_PER_READ], start))
            for position, path, outcome in await asyncio.to_thread(_prepare_small, batch, token):
                if isinstance(outcome, StreamcliError):
                    settle(position, outcome)
                elif outcome is None:
                    large.append(asyncio.ensure_future(one(position, path)))
                else:
                    await small.put(outcome)
        await small.put(None)

    attempts = Attempts(
        retry, f"upload of {len(paths)} files", hint="run the same command again to resume the upload",
        connection=conn,
    )  # fmt: skip
    reader = asyncio.ensure_future(read())
    try:
        try:
            await SmallFileStream(conn, small, progress, attempts, answered).run()
        except NoUploadFiles as missing:  # an older server: one UploadFile call each
            large.extend(asyncio.ensure_future(one(f.position, f.path)) for f in missing.files)
        await reader
        await asyncio.gather(*large)
    finally:
        for task in (reader, *large):
            task.cancel()
        await asyncio.gather(reader, *large, return_exceptions=True)
    return [o for o in outcomes if o is not None]


def _prepare_small(
    batch: list[tuple[int, pathlib.Path]], token: str | None
) -> list[tuple[int, pathlib.Path, SmallFile | StreamcliError | None]]:
    """(On a thread.) Each path of ``batch`` (position, path) inspected: a file of at most ``SMALL_FILE_SIZE``
    bytes read, hashed and made into its UploadFiles request; None for a larger one; the failure of one that
    cannot be read (``_prepare``'s)."""
    prepared: list[tuple[int, pathlib.Path, SmallFile | StreamcliError | None]] = []
    for position, path in batch:
        try:
            size, _, upload_id, whole = _prepare(path, path.name, token)
        except StreamcliError as exc:
            prepared.append((position, path, exc))
            continue
        if whole is None or size > SMALL_FILE_SIZE:
            prepared.append((position, path, None))
            continue
        data, sha256 = whole
        metadata = pb.FileMetadata(filename=path.name, total_size=size, checksum=sha256)
        request = pb.UploadFilesRequest(metadata=metadata, content=data).SerializeToString()
        prepared.append((position, path, SmallFile(position, path, path.name, upload_id, size, request)))
    return prepared


async def download_file(
    conn: Connection,
    file: str | FileEntry,
    destination: str | os.PathLike[str] | None,
    progress: ProgressSink,
    *,
    stdout: BinaryIO | None = None,
    resume: bool = True,
    force: bool = False,
    create_dirs: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> TransferResult:
    """Download a file (its id or the start of it, or its entry from ``files.list_files``) to ``destination``
    via ``NAME.part``, or to ``stdout`` when given.

    ``destination`` is a file, or a directory to write the server's name into: one
    that exists, or any path ending in ``/`` (created with ``create_dirs``, as are
    the missing parents of a file). None means the current directory. The server's
    name is checked like the server checks the names it accepts
    (``streamcli.names``); one that fails is replaced by ``file_id``. Neither
    ``NAME.part`` nor ``NAME`` is ever followed if it is a link: a partial file
    must be a regular file with no other link, and ``force`` replaces only a
    regular file or a symbolic link (the link itself) at ``NAME``.

    Raises:
        NotFoundError: no such file.
        UsageError: a directory that does not exist, or a path that cannot be written.
        LocalFileError: the destination exists and ``force`` is false; it is a directory;
            ``NAME.part`` is a link or not a regular file.
        IntegrityError: the bytes received do not hash to the stored SHA-256.
        ResourceExhaustedError: the disk (or stdout) is full.
    """
    if isinstance(file, FileEntry):
        info, file_id = file, file.file_id
    else:
        file_id = await resolve_id(conn, IdKind.FILE, file)
        with rpc_errors(conn):
            reply = await conn.stub.GetFileInfo(pb.GetFileInfoRequest(file_id=file_id), metadata=conn.metadata)
        info = FileEntry.from_message(reply.file)
    if stdout is not None:
        return await _download(conn, info, stdout, 0, hashlib.sha256(), progress, retry, "-")
    target = await asyncio.to_thread(
        _choose_target, destination, lambda: _local_name(info.filename, file_id), force, create_dirs
    )
    part, handle, offset, hasher = await asyncio.to_thread(_open_part, target, info.size, resume)
    with handle:
        try:
            result = await _download(conn, info, handle, offset, hasher, progress, retry, str(target))
        except IntegrityError as exc:
            handle.close()
            part.unlink(missing_ok=True)  # corrupt bytes are not worth resuming
            raise IntegrityError(f"{exc}; {part.name} was removed: run the same command again to start over") from exc
        await asyncio.to_thread(_make_durable, handle)  # before the rename: a crash leaves NAME whole or absent
    await asyncio.to_thread(_install, part, target, force)
    return result


def _make_durable(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _local_name(server_name: str, file_id: str) -> str:
    """The name to write a download under in a directory: the server's if it is a file name, else the id."""
    try:
        return check_filename(server_name)
    except ValueError as problem:
        if is_filename(file_id):
            return file_id
        raise UsageError(
            f"the server's name for {file_id!r} is not a usable file name: {problem}; name the file with -o PATH"
        ) from None


def _choose_target(
    destination: str | os.PathLike[str] | None, name: Callable[[], str], force: bool, create_dirs: bool
) -> pathlib.Path:
    """The path to download to, checked before any byte is fetched."""
    raw = os.fspath(destination) if destination is not None else ""
    if not raw:
        target = pathlib.Path.cwd() / name()
    elif raw.endswith(("/", os.sep)):  # a trailing slash says "a directory", as in cp, rsync and curl
        directory = pathlib.Path(raw)
        _ensure_directory(directory, create_dirs)
        target = directory / name()
    elif (path := pathlib.Path(raw)).is_dir():  # one the user named: following a link there is their choice
        target = path / name()
    else:
        _ensure_directory(path.parent, create_dirs)
        target = path
    _check_target(target, force)
    return target


def _ensure_directory(directory: pathlib.Path, create: bool) -> None:
    if directory.is_dir():
        return
    if directory.exists() or directory.is_symlink():
        raise UsageError(f"{directory} is not a directory")
    if not create:
        raise UsageError(f"directory {directory} does not exist (pass --create-dirs to create it)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create directory {directory}: {exc.strerror or exc}") from exc


def _check_target(target: pathlib.Path, force: bool) -> None:
    """Refuse to put the download at ``target`` unless nothing is there, or ``force`` and it is replaceable."""
    try:
        mode = os.lstat(target).st_mode  # lstat: a link is judged as a link, never by what it points to
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        raise LocalFileError(f"{target} is a directory; not replacing it")
    if not force:
        raise LocalFileError(f"{target} exists; pass --force to overwrite it")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise LocalFileError(f"{target} is not a regular file; not replacing it")


def _open_part(target: pathlib.Path, size: int, resume: bool) -> tuple[pathlib.Path, BinaryIO, int, hashlib._Hash]:
    """Open ``target``'s ``.part`` file without following links, keeping what an earlier run wrote.

    Someone else may have put a link at ``NAME.part`` (to make the download write or append to
    another file): the partial file must be a regular file with no other link. O_NOFOLLOW and,
    when creating, O_EXCL close the gap between looking and opening; O_NONBLOCK keeps a FIFO
    swapped in meanwhile from blocking the open (it changes nothing for a regular file).
    """
    part = target.with_name(target.name + ".part")
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            seen = os.lstat(part)
        except FileNotFoundError:
            fd = os.open(part, flags | os.O_CREAT | os.O_EXCL, 0o666)
        else:
            _check_part(part, seen)
            fd = os.open(part, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EEXIST, errno.EISDIR, errno.ENXIO):  # replaced since we looked
            raise LocalFileError(f"{part} changed while being opened; try again") from exc
        raise UsageError(f"cannot write {part}: {exc.strerror or exc}") from exc
    handle = os.fdopen(fd, "r+b")
    try:
        opened = os.fstat(fd)
        _check_part(part, opened)
        offset = opened.st_size if resume and opened.st_size <= size else 0
        hasher = sha256_prefix(handle, offset)
        handle.seek(offset)
        handle.truncate()
    except BaseException:
        handle.close()
        raise
    return part, handle, offset, hasher


def _check_part(part: pathlib.Path, status: os.stat_result) -> None:
    again = " (remove it and try again)"
    if stat.S_ISLNK(status.st_mode):
        raise LocalFileError(f"{part} is a symbolic link; not following it{again}")
    if not stat.S_ISREG(status.st_mode):
        raise LocalFileError(f"{part} is not a regular file{again}")
    if status.st_nlink > 1:  # a hard link to another file: writing would change that file too
        raise LocalFileError(f"{part} has other links ({status.st_nlink}); not writing through them{again}")


def _install(part: pathlib.Path, target: pathlib.Path, force: bool) -> None:
    """Rename the verified ``part`` to ``target``, re-checking what is there now.

    Without ``force``, a hard link then an unlink: linking fails if anything appeared at
    ``target`` during the download, so nothing is clobbered. ``os.replace`` (with ``force``,
    or where the file system has no hard links) replaces a link itself, never its target.
    """
    if not force:
        try:
            os.link(part, target, follow_symlinks=False)
        except FileExistsError:
            raise LocalFileError(f"{target} exists; pass --force to overwrite it") from None
        except OSError:
            pass  # no hard links here (EPERM, ENOTSUP...): check, then rename
        else:
            part.unlink()
            return
    _check_target(target, force)
    try:
        os.replace(part, target)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise LocalFileError(f"{target} is a directory; not replacing it") from exc
        raise UsageError(f"cannot rename {part} to {target}: {exc.strerror or exc}") from exc


class _BackgroundWriter:
    """Writes and hashes received bytes on a worker thread, in order, with bounded memory.

    The event loop only receives: ~1 MiB blocks go to the download's ``Pipeline`` (file
    writes and SHA-256 release the GIL, so the two overlap on two cores), and at
    most ``MAX_PENDING`` blocks wait, so memory stays constant whatever the size.
    """

    BLOCK = 1 << 20
    MAX_PENDING = 4

    def __init__(self, sink: BinaryIO, hasher: hashlib._Hash, *, durable: bool) -> None:
        self._sink = sink
        self._durable = durable  # the sink is fsynced after ``drain``: synced as it grows (pagecache.SyncBehind)
        self._hasher = hasher
        self._pipeline: Pipeline[None] = Pipeline()
        self._buffer: list[bytes | memoryview] = []
        self._buffered = 0
        self._behind: WriteBehind | None = None  # (made by the worker, at the first block)
        self._written = 0

    async def __aenter__(self) -> _BackgroundWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pipeline.close()  # the block being written ends before the sink is used again

    def _write(self, block: bytes | memoryview) -> None:
        if self._behind is None:  # so that the fsync before the rename has little left, and warm pages are reused
            try:
                self._written = self._sink.tell()
                self._behind = WriteBehind(self._sink.fileno(), self._written, durable=self._durable)
            except (OSError, ValueError):  # a pipe, or no file at all (a test's buffer): nothing to write back
                self._behind = WriteBehind(-1, 0, enabled=False)
        self._sink.write(block)
        self._written += len(block)
        self._behind.wrote(self._written)
        self._hasher.update(block)

    async def write(self, data: bytes | memoryview) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self.BLOCK:
            await self._dispatch()

    async def _dispatch(self) -> None:
        block = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        self._pipeline.put(functools.partial(self._write, block))
        while len(self._pipeline) > self.MAX_PENDING:
            await self._settle()

    async def drain(self) -> None:
        """Wait until everything given to ``write`` is written and hashed."""
        if self._buffer:
            await self._dispatch()
        self._pipeline.put(self._finish)  # after the writes: the sync behind them has ended, or its failure raised
        while self._pipeline:
            await self._settle()

    def _finish(self) -> None:
        """(On the worker thread.) Wait for the sync behind the writes (``WriteBehind.finish``)."""
        if self._behind is not None:
            self._behind.finish()

    async def _settle(self) -> None:
        try:
            await self._pipeline.take()  # after a failed block, nothing more is written
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # stdout's reader went away (`| head`): the CLI's boundary exits 141, quietly
            kind = ResourceExhaustedError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else UsageError
            raise kind(f"cannot write the download: {exc.strerror or exc}") from exc


def _pick_data(message: bytes) -> tuple[int, memoryview] | None:
    """A DownloadFileResponse of an offset and bytes alone (every one but the first): (offset, a view of the
    bytes in the message: no copy); None for any other, which protobuf parses."""
    offset, position = 0, 0
    if message[:1] == _OFFSET_KEY:
        try:
            offset, position = read_varint(message, 1)
        except ValueError:
            return None
        offset &= _INT64_BITS
        offset = offset - (1 << 64) if offset >> 63 else offset  # (an int64, as protobuf reads it)
    data = trailing_bytes(message, _DATA_KEY, position)
    return None if data is None else (offset, data)


def _download_call(conn: Connection) -> Any:
    """DownloadFile on ``conn``'s channel, its responses of offset and bytes decoded by ``_pick_data``."""
    return conn.channel.unary_stream(
        _DOWNLOAD_METHOD,
        request_serializer=serialize,
        response_deserializer=Picking(pb.DownloadFileResponse, _pick_data),
    )


async def _download(
    conn: Connection,
    info: FileEntry,
    sink: BinaryIO,
    offset: int,
    hasher: hashlib._Hash,
    progress: ProgressSink,
    retry: RetryPolicy,
    shown_path: str,
) -> TransferResult:
    resumed_from = offset
    to_stdout = shown_path == "-"  # (else a .part file, fsynced before its rename)
    hint = "run the same command again to resume from the .part file"
    if to_stdout:
        hint = "standard output cannot resume: run it again, or download to a file"
    attempts = Attempts(retry, f"download of {info.filename}", hint=hint, connection=conn)
    progress.start(info.file_id, info.filename, info.size, offset)
    with rpc_errors(conn):
        async with _BackgroundWriter(sink, hasher, durable=not to_stdout) as writer:
            while True:  # one pass per attempt; retries continue from `offset`
                attempt_start = offset
                try:
                    request = pb.DownloadFileRequest(file_id=info.file_id, offset=offset)
                    async for response in _download_call(conn)(request, metadata=conn.metadata):
                        at, data = response if isinstance(response, tuple) else (response.offset, response.data)
                        if at != offset:
                            raise IntegrityError(f"server sent bytes at offset {at}, expected {offset}")
                        await writer.write(data)
                        offset += len(data)
                        progress.advance(info.file_id, len(data))
                    break
                except grpc.aio.AioRpcError as exc:
                    await attempts.failed(exc, progressed=offset > attempt_start)
            await writer.drain()
    sink.flush()
    progress.finish(info.file_id)
    digest = hasher.hexdigest()
    if offset != info.size or digest != info.checksum:
        raise IntegrityError(
            f"download of {info.file_id} failed verification: {offset} bytes hashing to {digest}, "
            f"expected {info.size} bytes hashing to {info.checksum}"
        )
    return TransferResult(info.file_id, info.filename, info.size, digest, resumed_from, shown_path)
