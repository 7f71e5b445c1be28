"""Batch ingest over ProcessDataBatch, resumable, and reading batches back.

A file's batch is named by its path, size, modification time and the field
mapping (``batch_id_for``, as uploads are), so running the same ingest again
after Ctrl-C, a lost network or a server restart continues the same batch:
the client asks the server how far the batch is held (a stream without
records), skips what it holds, and sends the rest; the server takes each
index once. Within a run, a failed stream is retried (``Attempts``) from the
server's answer. Sent records stay in memory until the stream carrying them
is acknowledged, and a stream is ended for its acknowledgement every
``ACK_EVERY`` records, so memory does not grow with the input.

Refusals are told (``IngestOptions.on_refusal``) in line order: one the
client finds (a line that does not parse) waits until the server has
acknowledged every record before it, whose own refusals come with that
acknowledgement; all that wait are told when the ingest ends, however it ends.

The input is read and parsed on a thread of its own (``_Reader``), up to
``READ_AHEAD`` messages ahead: a pipe that is slow to give its next line does
not stall the event loop (which answers keepalives and acknowledgements
meanwhile), and the next records are parsed while the server acknowledges.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import operator
import pathlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.ids import IdKind, resolve_id
from streamcli.client.records import FieldMap, Parsed
from streamcli.client.retry import Attempts, RetryPolicy
from streamcli.client.streams import Outstanding, bytes_stream, one_stream
from streamcli.client.transfer import upload_id_for
from streamcli.protowire import repeated_messages, varint_field
from streamcli.times import rfc3339

#: Records per ProcessDataBatchRequest (per-message cost dominates small messages).
MESSAGE_RECORDS = 500
#: Records (and bytes of input text) sent on one stream before it is ended for its acknowledgement.
ACK_EVERY = 20_000
ACK_BYTES = 32 << 20
#: Refused records the client asks the server to detail per stream (it reports every one).
ERRORS_PER_STREAM = 100_000
#: Messages' worth of parsed records the reader thread may hold ready.
READ_AHEAD = 8


def batch_id_for(path: pathlib.Path, size: int, mtime_ns: int, mapping: FieldMap, token: str | None) -> str:
    """The batch id of this version of a file read with ``mapping``: the same on every run (see the module)."""
    return upload_id_for(path, size, mtime_ns, "batch\0" + mapping.describe(), token)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A record that was not stored: where it was, why, and its original text."""

    source: str  # the file's name as given, "-" for stdin
    line: int
    reason: str
    text: str
    by_server: bool

    def to_json(self) -> dict[str, Any]:
        """The dead-letter file's line."""
        return {"file": self.source, "line": self.line, "reason": self.reason, "text": self.text}


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """The stored values of one key."""

    key: str
    count: int
    min: float
    max: float
    sum: float
    mean: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BatchSummary:
    """A batch as the server describes it."""

    batch_id: str
    source: str
    owner: str
    created_at: str  # RFC 3339
    complete: bool
    received: int
    stored: int
    refused: int
    aggregates: tuple[Aggregate, ...] = ()
    overflow_keys: int = 0
    overflow_records: int = 0

    @classmethod
    def of(cls, info: pb.BatchInfo) -> BatchSummary:
        return cls(
            info.batch_id,
            info.source,
            info.owner,
            rfc3339(info.created_at),
            info.complete,
            info.records_received,
            info.records_stored,
            info.records_refused,
            tuple(Aggregate(a.key, a.count, a.min, a.max, a.sum, a.mean) for a in info.aggregates),
            info.overflow_keys,
            info.overflow_records,
        )

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["aggregates"] = [a.to_json() for a in self.aggregates]
        return record


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """What one input's ingest did: the batch, and the records refused by the client (unparsable lines)."""

    source: str
    batch: BatchSummary
    client_refused: int
    stopped_early: bool  # --max-errors reached: the batch is not complete

    @property
    def refused(self) -> int:
        return self.batch.refused + self.client_refused

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.source,
            **self.batch.to_json(),
            "client_refused": self.client_refused,
            "stopped_early": self.stopped_early,
        }


@dataclasses.dataclass
class IngestProgress:
    """How far an ingest has got (for a progress bar and for what to say on Ctrl-C)."""

    records: int = 0  # records read (sent or skipped as held)
    acknowledged: int = 0  # the batch's next index as the server last said
    bytes_read: int = 0


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    """How to ingest: whom to tell of refusals, how many to bear, how patiently to retry."""

    on_refusal: Callable[[Refusal], None]
    max_errors: int = 0  # stop once this many records were refused (0: never)
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    notice: Callable[[str], None] | None = None  # told when a stream is lost and when it resumes
    on_progress: Callable[[int, int], None] | None = None  # (records, bytes) read since the last call


#: One parsed input record (its line, text and serialized DataRecord, or why it was refused).
Record = Parsed[bytes]
_RECORD, _TEXT = operator.attrgetter("record"), operator.attrgetter("text")


class _Reader:
    """The parsed records of an input, in lists of up to MESSAGE_RECORDS, parsed ahead (at most READ_AHEAD
    lists) on a daemon thread: it may be blocked reading a pipe when the ingest ends (Ctrl-C, a lost server)."""

    def __init__(self, parsed: Iterator[Record]) -> None:
        self._parsed = parsed
        self._ready: asyncio.Queue[list[Record] | BaseException | None] | None = None
        self._room = threading.Semaphore(READ_AHEAD)
        self._closed = False

    async def next(self) -> list[Record] | None:
        """The next records; None at the end of the input. Raises what reading raised."""
        if self._ready is None:
            self._ready = asyncio.Queue()
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._read, args=(loop, self._ready), name="streamcli-records", daemon=True).start()
        item = await self._ready.get()
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            self._room.release()
        return item

    def close(self) -> None:
        """Stop reading (after the list under way)."""
        self._closed = True
        self._room.release()

    def _read(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Queue[list[Record] | BaseException | None]) -> None:
        def hand_over(item: list[Record] | BaseException | None) -> bool:
            try:
                loop.call_soon_threadsafe(ready.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is reading
                return False
            return True

        chunk: list[Record] = []
        try:
            while True:
                # (Taken a list at a time; what was taken before a failure stays in ``chunk``.)
                chunk.extend(itertools.islice(self._parsed, MESSAGE_RECORDS))
                if not chunk:
                    break
                self._room.acquire()
                if self._closed or not hand_over(chunk):
                    return
                chunk = []
            hand_over(None)
        except Exception as exc:  # unreadable input: the records before it are used, then it is raised
            if chunk:
                hand_over(chunk)
            hand_over(exc)


class _Pending:
    """One sent message not yet acknowledged: its serialized ProcessDataBatchRequest (the records' own bytes
    framed, no message built), its first index and where each of its records came from."""

    __slots__ = ("first", "lines", "request", "size")

    def __init__(self, first: int, records: list[bytes], lines: list[Record], size: int = 0) -> None:
        self.first = first
        self.lines = lines  # each record as parsed (its line and text)
        self.size = size  # characters of input text read for it
        # (Fields in number order, as the library writes them: records = 1, first_index = 3.)
        self.request = repeated_messages(1, records) + varint_field(3, first)


class BatchIngest:
    """Ingests the parsed records of one input as batch ``batch_id``; see the module's docstring."""

    def __init__(
        self,
        conn: Connection,
        source: str,
        batch_id: str,
        parsed: Iterator[Record],
        options: IngestOptions,
    ) -> None:
        self._conn = conn
        self._source = source
        self._batch_id = batch_id
        self._reader = _Reader(parsed)
        self._process = bytes_stream(conn, "ProcessDataBatch", pb.ProcessDataBatchResponse)
        self._options = options
        self.progress = IngestProgress()
        self._pending: Outstanding[_Pending] = Outstanding()
        self._next_index = 0  # index of the next record read
        self._held = 0  # the server's next index
        self._earlier: dict[int, str] = {}  # refusals of earlier runs, by index (reported as their lines come)
        self._refused = 0
        self._unsaid: list[Refusal] = []  # found, not told yet: records before them await the server's verdict
        self._client_refused = 0
        self._ended = False
        self._stopped = False

    async def run(self) -> IngestResult:
        """Ingest everything; returns the batch as the server describes it at the end.

        Raises:
            StreamcliError: the server refused the stream, or retries ran out (with how to go on).
        """
        attempts = Attempts(
            self._options.retry,
            f"ingest of {self._source}",
            hint="run the same command again to resume the batch",
            connection=self._conn,
            announce=self._options.notice,
        )
        try:
            return await self._run(attempts)
        finally:
            self._reader.close()
            self._say(everything=True)

    async def _run(self, attempts: Attempts) -> IngestResult:
        with rpc_errors(self._conn):
            reply = await self._call(self._query())
            self._acknowledge(reply)
            self._earlier = {e.index: e.reason for e in reply.errors}
            while True:
                try:
                    reply = await self._stream()
                except grpc.aio.AioRpcError as exc:
                    before = self._held
                    await attempts.failed(exc)
                    await self._reconnect(attempts)
                    if self._held > before:
                        attempts.recovered()
                    continue
                attempts.recovered()
                self._report(reply)
                self._acknowledge(reply)
                if (self._ended or self._stopped) and not self._pending:
                    return IngestResult(self._source, BatchSummary.of(reply.batch), self._client_refused, self._stopped)

    def _query(self) -> list[pb.ProcessDataBatchRequest]:
        return [pb.ProcessDataBatchRequest(batch_id=self._batch_id, max_errors=ERRORS_PER_STREAM, source=self._source)]

    async def _call(self, requests: list[pb.ProcessDataBatchRequest]) -> pb.ProcessDataBatchResponse:
        response: pb.ProcessDataBatchResponse = await self._conn.stub.ProcessDataBatch(
            requests, metadata=self._conn.metadata
        )
        return response

    async def _reconnect(self, attempts: Attempts) -> None:
        while True:
            try:
                reply = await self._call(self._query())
            except grpc.aio.AioRpcError as exc:
                await attempts.failed(exc)
                continue
            self._report(reply)  # the refusals among what the lost stream had stored
            self._acknowledge(reply)
            if self._options.notice:
                self._options.notice(
                    f"reconnected; the server holds the first {self._held} record(s) of {self._source}, "
                    f"re-sending the {self._next_index - self._held} after them"
                )
            return

    async def _stream(self) -> pb.ProcessDataBatchResponse:
        """One stream: the unacknowledged messages, then new ones until it is time for an acknowledgement."""
        response: pb.ProcessDataBatchResponse = await one_stream(
            self._process(metadata=self._conn.metadata), self._write
        )
        return response

    async def _write(self, call: Any, _outcome: asyncio.Future[Any]) -> None:
        first = pb.ProcessDataBatchRequest(batch_id=self._batch_id, max_errors=ERRORS_PER_STREAM, source=self._source)
        await call.write(first)
        count = size = 0
        for pending in self._pending:
            await call.write(pending.request)
            count += len(pending.lines)
        while count < ACK_EVERY and size < ACK_BYTES and not self._ended and not self._stopped:
            message = await self._next_message()
            if message is None:
                break
            self._pending.add(message.first, len(message.lines), message)
            count += len(message.lines)
            size += message.size
            await call.write(message.request)
        if self._ended:
            await call.write(pb.ProcessDataBatchRequest(complete=True))
        await call.done_writing()

    async def _next_message(self) -> _Pending | None:
        """The next records to send (up to MESSAGE_RECORDS), reading past those the batch holds; None at the end."""
        records: list[bytes] = []
        lines: list[Record] = []
        text = 0  # characters of the lines of ``lines``
        start = self._next_index
        while not records and not self._stopped:
            chunk = await self._reader.next()
            if chunk is None:
                self._ended = True
                break
            read = size = 0
            good = list(map(_RECORD, chunk))
            if None not in good and self._next_index >= self._held:  # (nearly always: every record is sent)
                records, lines = good, chunk
                self._next_index += len(good)
                read = len(chunk)
                text = sum(map(len, map(_TEXT, chunk)))
                size = text + read
                chunk = []
            for parsed in chunk:
                read += 1
                size += len(parsed.text) + 1
                if parsed.record is None:
                    self._client_refused += 1
                    self._refuse(Refusal(self._source, parsed.line, parsed.problem, parsed.text, by_server=False))
                else:
                    index = self._next_index
                    self._next_index += 1
                    if index < self._held:  # held by an earlier run
                        if index in self._earlier:
                            self._refuse(Refusal(self._source, parsed.line, self._earlier[index], parsed.text, True))
                        start = self._next_index
                    else:
                        records.append(parsed.record)
                        lines.append(parsed)
                        text += len(parsed.text)
                if self._stopped:
                    break
            self.progress.records += read
            self.progress.bytes_read += size
            if self._options.on_progress is not None:
                self._options.on_progress(read, size)
        if not records:
            return None
        return _Pending(start, records, lines, text)

    def _refuse(self, refusal: Refusal) -> None:
        self._refused += 1
        self._unsaid.append(refusal)
        if self._options.max_errors and self._refused >= self._options.max_errors:
            self._stopped = True

    def _report(self, reply: pb.ProcessDataBatchResponse) -> None:
        """Name the records the server refused on this stream, by their lines."""
        if not reply.errors:
            return
        where: dict[int, tuple[int, str]] = {}
        wanted = {e.index for e in reply.errors}
        for pending in self._pending:
            first = pending.first
            for offset, origin in enumerate(pending.lines):
                if first + offset in wanted:
                    where[first + offset] = (origin.line, origin.text)
        for error in reply.errors:
            if error.index in where and not self._stopped:  # (a query lists those told before too)
                line, text = where[error.index]
                self._refuse(Refusal(self._source, line, error.reason, text, by_server=True))

    def _acknowledge(self, reply: pb.ProcessDataBatchResponse) -> None:
        self._held = max(self._held, reply.next_index)
        self.progress.acknowledged = self._held
        self._pending.acknowledge(self._held)
        self._say()

    def _say(self, *, everything: bool = False) -> None:
        """Tell the refusals found so far that no record awaiting the server's verdict precedes, by line."""
        if not self._unsaid:
            return
        self._unsaid.sort(key=lambda refusal: refusal.line)
        cut = len(self._unsaid)
        first = self._pending.head()
        if first is not None and not everything:
            waiting = first.lines[max(0, self._held - first.first)].line  # line of the first unheld
            cut = next((n for n, refusal in enumerate(self._unsaid) if refusal.line > waiting), cut)
        told, self._unsaid = self._unsaid[:cut], self._unsaid[cut:]
        for refusal in told:
            self._options.on_refusal(refusal)


def new_batch_id() -> str:
    """A batch id for an input that cannot be resumed (stdin)."""
    return uuid.uuid4().hex


async def list_batches(conn: Connection, limit: int) -> list[BatchSummary]:
    """The caller's batches, newest first, at most ``limit``."""
    found: list[BatchSummary] = []
    token = ""
    while len(found) < limit:
        page = await conn.stub.ListBatches(
            pb.ListBatchesRequest(page_size=min(1000, limit - len(found)), page_token=token), metadata=conn.metadata
        )
        found.extend(BatchSummary.of(info) for info in page.batches)
        token = page.next_page_token
        if not token:
            break
    return found


@dataclasses.dataclass(frozen=True)
class BatchDetail:
    """A batch and its refused records (by index)."""

    batch: BatchSummary
    errors: tuple[tuple[int, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.batch.to_json(), "errors": [{"index": i, "reason": r} for i, r in self.errors]}


async def get_batch(conn: Connection, batch_id: str, max_errors: int) -> BatchDetail:
    """One batch, with up to ``max_errors`` refused records; ``batch_id`` may be the start of the id."""
    batch_id = await resolve_id(conn, IdKind.BATCH, batch_id)
    reply = await conn.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch_id, max_errors=max_errors), metadata=conn.metadata
    )
    return BatchDetail(BatchSummary.of(reply.batch), tuple((e.index, e.reason) for e in reply.errors))


async def batch_records(conn: Connection, batch_id: str) -> AsyncIterator[list[dict[str, Any]]]:
    """The stored records of a batch as JSON objects (index, key, value, timestamp?, payload?), in batches;
    ``batch_id`` may be the start of the id."""
    from google.protobuf import json_format

    batch_id = await resolve_id(conn, IdKind.BATCH, batch_id)
    call = conn.stub.ReadBatchRecords(pb.ReadBatchRecordsRequest(batch_id=batch_id), metadata=conn.metadata)
    async for response in call:
        out = []
        for item in response.records:
            record: dict[str, Any] = {"index": item.index, "key": item.record.key, "value": item.record.value}
            if item.record.HasField("timestamp"):
                record["timestamp"] = rfc3339(item.record.timestamp)
            if item.record.HasField("payload"):
                record["payload"] = json_format.MessageToDict(item.record.payload)
            out.append(record)
        yield out
