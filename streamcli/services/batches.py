"""Batches of data records: ProcessDataBatch (client streaming), ListBatches, GetBatch, ReadBatchRecords.

A batch is a log (DESIGN.md): the stream ``batch:<id>`` holds one entry per
record index, kind ``record`` (the stored DataRecord) or ``refused`` (the
reason), appended by the batch's one producer with sequence = index + 1. So
the log's producer mechanism (``LogStore.append``) is what makes a re-sent
record count once, stored or refused, whichever stream and run sent it; and
the entry of index ``i`` has log id ``i + 1``.

The batch's row (``MetadataStore.put_batch``) holds its id, owner, label and
times, and its summary: counts and per-key aggregates (a ``BatchInfo``) of the
log's first ``records_received`` entries, kept up to date as each stream
appends (``Tally``), final once ``complete`` is set. They count each stored
record exactly once because a tally only takes what an append stored, in index
order; a tally that fell behind (another stream of the batch, a server that
stopped between an append and the row's update) is brought up to date from
the log entries after it, never by reading the whole batch back.

A record is stored as the bytes it arrived in: ProcessDataBatch's request
deserializer (``decode_batch_request``) parses each message with protobuf (what
does not parse is the decoding boundary's) and takes each record's bytes out
of the message's wire bytes, so no record is serialized again.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import (
    BatchRecord,
    LogRecord,
    LogStore,
    MetadataStore,
    NewRecord,
    SequenceGapError,
)
from streamcli.backends.blobs import SAFE_ID
from streamcli.credentials import Caller, Credentials
from streamcli.protowire import Picking, bytes_key, repeated_payloads
from streamcli.services.checks import MalformedRequest, has_control, id_problem, page_offset, quoted
from streamcli.services.logs import Retention, timestamp
from streamcli.services.notifications import EVERYONE, NotificationService
from streamcli.services.rpc import Context, abort

#: The kinds of a batch log's entries.
STORED, REFUSED = "record", "refused"
#: The one producer of a batch's log: its sequence numbers are the record indexes + 1.
PRODUCER = "batch"
MAX_RECORDS_PER_REQUEST = 10_000
MAX_KEY = 256  # characters
MAX_SOURCE = 256  # characters
MAX_PAYLOAD = 65_536  # bytes, serialized
#: Timestamps accepted: 1970-01-01T00:00:00Z (inclusive) to 2100-01-01T00:00:00Z (exclusive).
FIRST_TIME, END_TIME = 0, 4_102_444_800
DEFAULT_ERRORS, MAX_ERRORS = 100, 100_000
#: Keys detailed in a batch's aggregates; the others are counted.
MAX_AGGREGATE_KEYS = 1000
#: Entries read from the log per step when reading a batch back.
READ_STEP = 2000
#: Seconds between the saves of a batch's summary while a stream appends to it: a reader of the batch
#: (GetBatch, ListBatches) reads the log only from the last save on, not from the stream's start.
SAVE_INTERVAL = 1.0
MAX_PAGE = 1000


class ReceivedBatch(NamedTuple):
    """A ProcessDataBatchRequest as ``decode_batch_request`` gives it: the message, and each of its records' bytes
    as they arrived (None: the bytes are not plain fields, each record is serialized again to be stored)."""

    message: pb.ProcessDataBatchRequest
    record_bytes: list[bytes] | None


_RECORDS = pb.ProcessDataBatchRequest.RECORDS_FIELD_NUMBER
_RECORDS_KEY = bytes_key(_RECORDS)[0]


def _with_record_bytes(data: bytes) -> ReceivedBatch | None:
    """A message that starts with a record (every message of records that streamcli or protobuf writes, fields in
    number order), parsed, with its records' bytes; None for any other (protobuf alone parses it)."""
    if not data or data[0] != _RECORDS_KEY:
        return None
    message = pb.ProcessDataBatchRequest.FromString(data)  # (raises on bytes that are not one, as without this)
    record_bytes = repeated_payloads(data, _RECORDS)
    if record_bytes is not None and len(record_bytes) != len(message.records):
        record_bytes = None  # (cannot happen for bytes protobuf parsed; never store what does not match)
    return ReceivedBatch(message, record_bytes)


#: ProcessDataBatch's request deserializer: a message of records becomes a ``ReceivedBatch``; others are parsed.
decode_batch_request = Picking(pb.ProcessDataBatchRequest, _with_record_bytes)


class Tally:
    """The counts and per-key aggregates of a batch log's first ``received`` entries (indexes 0 to
    ``received`` - 1): what the batch's summary keeps, in memory while a stream appends to it."""

    __slots__ = ("aggregates", "overflow_records", "received", "refused", "stale", "stored")

    def __init__(self, summary: bytes = b"") -> None:
        info = pb.BatchInfo.FromString(summary)
        self.received = info.records_received
        self.stored = info.records_stored
        self.refused = info.records_refused
        self.overflow_records = info.overflow_records
        # key -> [count, min, max, sum]; the first MAX_AGGREGATE_KEYS keys met, in index order.
        self.aggregates = {a.key: [a.count, a.min, a.max, a.sum] for a in info.aggregates}
        self.stale = False  # another stream appended meanwhile: bring it up to date from the log

    def add(self, first_index: int, stored: Sequence[tuple[str, float] | None]) -> None:
        """Take the entries of indexes ``first_index``... as appended: (key, value) of a stored record, None
        for a refused one. Entries that do not follow on from the tally make it stale instead."""
        if first_index != self.received:
            self.stale = True
        if self.stale:
            return
        aggregates = self.aggregates
        for entry in stored:
            if entry is None:
                self.refused += 1
                continue
            self.stored += 1
            key, value = entry
            aggregate = aggregates.get(key)
            if aggregate is None:
                if len(aggregates) >= MAX_AGGREGATE_KEYS:
                    self.overflow_records += 1
                else:
                    aggregates[key] = [1, value, value, value]
                continue
            aggregate[0] += 1
            if value < aggregate[1]:
                aggregate[1] = value
            if value > aggregate[2]:
                aggregate[2] = value
            aggregate[3] += value
        self.received += len(stored)

    def info(self, *, complete: bool = False, overflow_keys: int = 0) -> pb.BatchInfo:
        """The summary to keep (sorted by key, as ``BatchInfo.aggregates`` says)."""
        info = pb.BatchInfo(
            records_received=self.received,
            records_stored=self.stored,
            records_refused=self.refused,
            overflow_keys=overflow_keys,
            overflow_records=self.overflow_records,
            complete=complete,
        )
        for key in sorted(self.aggregates):
            count, low, high, total = self.aggregates[key]
            info.aggregates.add(key=key, count=int(count), min=low, max=high, sum=total, mean=total / count)
        return info


def record_problem(record: pb.DataRecord, key: str, value: float, serialized: bytes | None = None) -> str:
    """Why ``record`` (whose ``key`` and ``value`` the caller has read) is refused, or "" when it is stored. With
    ``serialized`` (the record's bytes, as stored), a record no larger than the payload limit is not measured
    again (its payload is smaller still)."""
    if len(key) > MAX_KEY:
        return f"key is longer than {MAX_KEY} characters"
    if problem := _key_problem(key):
        return problem
    if not math.isfinite(value):
        return f"value is {value} (not a finite number)"
    stamp = record.timestamp  # (an absent one reads as 0 seconds and 0 nanos, within the range: asking costs more)
    seconds, nanos = stamp.seconds, stamp.nanos
    if not FIRST_TIME <= seconds < END_TIME or not 0 <= nanos <= 999_999_999:
        return "timestamp is outside 1970-01-01T00:00:00Z to 2100-01-01T00:00:00Z"
    measure = serialized is None or len(serialized) > MAX_PAYLOAD
    if measure and record.HasField("payload") and (size := record.payload.ByteSize()) > MAX_PAYLOAD:
        return f"payload is {size} bytes serialized; at most {MAX_PAYLOAD}"
    return ""


# Keys repeat from record to record: the verdict on each (at most MAX_KEY characters) is kept.
@functools.lru_cache(maxsize=4096)
def _key_problem(key: str) -> str:
    """Why records of ``key`` (no longer than MAX_KEY) are refused, or ""."""
    if not key:
        return "key is required"
    if has_control(key):
        return "key has a control character"
    return ""


def error_count(requested: int) -> int:
    """How many refused records to detail for a request's ``max_errors``."""
    return min(requested, MAX_ERRORS) if requested else DEFAULT_ERRORS


class BatchService:
    """The batch RPCs of ``StreamingService``; see the module's docstring."""

    #: The RPCs of the contract this class implements, by the names of its methods (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("ProcessDataBatch", "ListBatches", "GetBatch", "ReadBatchRecords")
    #: ProcessDataBatch's messages come with their records' bytes (server/service.py binds it).
    REQUEST_DESERIALIZERS: ClassVar[dict[str, Callable[[bytes], Any]]] = {"ProcessDataBatch": decode_batch_request}

    def __init__(
        self,
        log: LogStore,
        metadata: MetadataStore,
        notifications: NotificationService | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._log = log
        self._metadata = metadata
        self._notifications = notifications
        self._credentials = credentials or Credentials()

    # --- ingest ------------------------------------------------------------------------------------

    async def ProcessDataBatch(
        self, request_iterator: AsyncIterator[pb.ProcessDataBatchRequest | ReceivedBatch], context: Context
    ) -> pb.ProcessDataBatchResponse:
        caller = self._credentials.caller(context.invocation_metadata())
        response = pb.ProcessDataBatchResponse()
        batch: BatchRecord | None = None
        tally = Tally()
        named = False
        complete = False
        limit = DEFAULT_ERRORS
        next_index = 0  # every index below it is held
        started = saved = time.monotonic()  # saved: when the batch's row last took the tally
        taken_at_save = 0  # records this stream had taken then
        number = 0  # messages read
        try:
            async for received in request_iterator:
                if isinstance(received, ReceivedBatch):
                    request, record_bytes = received
                else:
                    request, record_bytes = received, None
                if batch is None:
                    named = bool(request.batch_id)
                    batch = await self._open(request, caller, context)
                    limit = error_count(request.max_errors)
                    next_index = (await self._log.producer(batch.log_stream, PRODUCER)).last_sequence
                    tally = await self._tally(batch)
                    response.batch_id = batch.batch_id
                problem = _message_problem(request, number, batch, named, caller)
                if problem:
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{problem}; {_held(next_index)}")
                complete = complete or request.complete
                first = request.first_index if named else next_index
                if first > next_index:
                    await abort(
                        context,
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"message {number} starts at index {first}, beyond the next the batch expects, {next_index}",
                        (("next-index", str(next_index)),),
                    )
                next_index = await self._take(
                    batch, request.records, record_bytes, first, next_index, response, limit, tally, context
                )
                number += 1
                taken = response.records_processed + response.records_failed
                if taken != taken_at_save and not tally.stale and time.monotonic() - saved >= SAVE_INTERVAL:
                    batch = _touched(batch, tally)  # (only once it took records: a re-sent prefix changes nothing)
                    await self._metadata.put_batch(batch)
                    saved, taken_at_save = time.monotonic(), taken
        except MalformedRequest as exc:  # what came before it is held, as next_index says
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.detail}; {_held(next_index)}")
        if batch is None:  # an empty stream: nothing to name
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the stream holds no message")
        response.next_index = next_index
        response.duration_ms = round((time.monotonic() - started) * 1000)
        if tally.stale:  # another stream appended too: what the row and the log hold now
            batch = await self._metadata.get_batch(batch.batch_id) or batch
            tally = await self._tally(batch)
        if response.records_processed or response.records_failed or not batch.updated_at:
            batch = _touched(batch, tally)  # (a complete batch that took new records is complete no more)
            await self._metadata.put_batch(batch)
        elif named and not complete and tally.refused:  # a query: the refusals so far
            response.errors.extend(await self.refusals(batch, min(limit, tally.refused)))
        if complete or not named:
            batch = await self._complete(batch, tally)
        response.batch.CopyFrom(await self.info(batch))
        return response

    async def _open(self, request: pb.ProcessDataBatchRequest, caller: Caller, context: Context) -> BatchRecord:
        """The batch the stream's first message names (created when new), or a new unnamed one."""
        if len(request.source) > MAX_SOURCE or has_control(request.source):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"source must be at most {MAX_SOURCE} characters without control characters",
            )
        name = request.batch_id
        if name and (problem := id_problem("batch_id", name)):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if not name and request.first_index:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "first_index is set without a batch_id")
        batch_id = name or uuid.uuid4().hex
        if caller.user is not None:
            batch_id = f"{caller.user}/{batch_id}"  # a user's batches are its own, whatever they are called
        existing = await self._metadata.get_batch(batch_id)
        if existing is not None:
            return existing
        now = time.time()
        return BatchRecord(batch_id, caller.user or "", request.source, now, now)

    async def _take(
        self,
        batch: BatchRecord,
        records: Sequence[pb.DataRecord],
        record_bytes: list[bytes] | None,
        first: int,
        next_index: int,
        response: pb.ProcessDataBatchResponse,
        limit: int,
        tally: Tally,
        context: Context,
    ) -> int:
        """Append the records of one message not held yet (from index ``first``; ``record_bytes``: each record's
        bytes as they arrived, else None); returns the next index."""
        response.records_received += len(records)
        skip = next_index - first
        response.duplicates += min(skip, len(records))
        new: list[NewRecord] = []
        reasons: dict[int, str] = {}
        keys: list[str] = []  # of each record of ``new``, for the tally
        values: list[float] = []
        for offset in range(skip, len(records)):
            record = records[offset]
            index = first + offset
            serialized = record.SerializeToString() if record_bytes is None else record_bytes[offset]
            key = record.key
            value = record.value
            keys.append(key)
            values.append(value)
            problem = record_problem(record, key, value, serialized)
            if problem:
                reasons[index] = problem
                new.append(NewRecord(key[:MAX_KEY], REFUSED, problem.encode(), PRODUCER, index + 1))
            else:  # (made from its fields' tuple in C: a NamedTuple's own __new__ is Python, twice the cost)
                new.append(tuple.__new__(NewRecord, (key, STORED, serialized, PRODUCER, index + 1)))
        if not new:
            await self._held_refusals(batch, first, len(records), response, limit)
            return next_index
        try:
            appended = await self._log.append(batch.log_stream, new)
        except SequenceGapError as exc:  # another stream of the batch moved it meanwhile
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"another stream of batch {batch.batch_id} is sending it; {_held(exc.expected - 1)}",
                (("next-index", str(exc.expected - 1)),),
            )
        response.duplicates += len(new) - len(appended)  # stored meanwhile by another stream
        taken: list[tuple[str, float] | None]
        failed = 0  # (counted here, added to the response once: a message's field costs more than a local)
        if not reasons and len(appended) == len(new):  # (nearly always: every record taken and stored)
            taken = list(zip(keys, values, strict=True))
        else:
            taken = []
            start = first + skip  # the index of new[0]
            for entry in appended:
                index = entry.id - 1
                if entry.kind == STORED:
                    taken.append((keys[index - start], values[index - start]))
                else:
                    failed += 1
                    taken.append(None)
                    if len(response.errors) < limit:
                        response.errors.add(index=index, reason=reasons[index])
        response.records_processed += len(appended) - failed
        response.records_failed += failed
        if appended:
            tally.add(appended[0].id - 1, taken)
        held = skip + len(new) - len(appended)  # records of the message the log held already (a prefix)
        if held:
            await self._held_refusals(batch, first, held, response, limit)
        return first + len(records)

    async def _held_refusals(
        self, batch: BatchRecord, first: int, count: int, response: pb.ProcessDataBatchResponse, limit: int
    ) -> None:
        """Detail the refusals among the ``count`` records from index ``first`` that a message re-sent while
        the log held them (another stream stored them: one the client gave up on, still appending): the
        client has not heard of them."""
        for entry in await self._log.read(batch.log_stream, first, count):
            if entry.kind == REFUSED and len(response.errors) < limit:
                response.errors.add(index=entry.id - 1, reason=entry.payload.decode())

    async def _complete(self, batch: BatchRecord, tally: Tally) -> BatchRecord:
        """Keep the batch's final summary (from ``tally``, up to date) and notify its submitter once."""
        overflow_keys = 0
        if tally.overflow_records:  # keys beyond those detailed: counted by the log (once, at completion)
            counts = await self._log.kind_counts(batch.log_stream)
            overflow_keys = (counts[STORED].keys if STORED in counts else 0) - len(tally.aggregates)
        info = self._describe(batch, tally.info(complete=True, overflow_keys=overflow_keys))
        first_time = not batch.completed_at
        batch = BatchRecord(
            batch.batch_id,
            batch.owner,
            batch.source,
            batch.created_at,
            batch.updated_at,
            batch.completed_at or time.time(),
            info.SerializeToString(),
        )
        await self._metadata.put_batch(batch)
        recipient = batch.owner or (EVERYONE if not self._credentials.user_names else "")
        if first_time and self._notifications is not None and recipient:
            await self._notifications.raise_(
                recipient,
                "batch",
                f"batch {batch.batch_id} ingested: {info.records_stored} stored, {info.records_refused} refused",
                severity=pb.NOTIFICATION_SEVERITY_WARNING if info.records_refused else pb.NOTIFICATION_SEVERITY_INFO,
                attributes={
                    "batch_id": batch.batch_id,
                    "stored": str(info.records_stored),
                    "refused": str(info.records_refused),
                    "source": batch.source,
                },
            )
        return batch

    async def _tally(self, batch: BatchRecord) -> Tally:
        """The batch's tally as its row keeps it, brought up to date with the log entries after it."""
        tally = Tally(batch.summary)
        while True:
            entries = await self._log.read(batch.log_stream, tally.received, READ_STEP)
            if not entries:
                return tally
            tally.add(
                entries[0].id - 1,
                [
                    (entry.key, pb.DataRecord.FromString(entry.payload).value) if entry.kind == STORED else None
                    for entry in entries
                ],
            )
            if tally.stale:  # (ids are consecutive: a batch's log is never trimmed, only dropped whole)
                raise RuntimeError(f"the log of batch {batch.batch_id} has a gap after index {tally.received - 1}")

    @staticmethod
    def _describe(batch: BatchRecord, info: pb.BatchInfo) -> pb.BatchInfo:
        """``info`` (a tally's) with the batch's id, source, owner and times."""
        info.batch_id = batch.batch_id
        info.source = batch.source
        info.owner = batch.owner
        info.created_at.CopyFrom(timestamp(batch.created_at))
        info.updated_at.CopyFrom(timestamp(batch.updated_at))
        return info

    async def info(self, batch: BatchRecord, *, aggregates: bool = True) -> pb.BatchInfo:
        """What a client sees of ``batch``: the kept summary once complete, else its counts now (no aggregates)."""
        info = pb.BatchInfo.FromString(batch.summary)
        if info.complete:
            if not aggregates:
                info.ClearField("aggregates")
            return info
        return self._counts(self._describe(batch, (await self._tally(batch)).info()))

    @staticmethod
    def _counts(info: pb.BatchInfo) -> pb.BatchInfo:
        """An incomplete batch's description: its counts, not the aggregates so far."""
        info.ClearField("aggregates")
        info.overflow_records = 0
        return info

    async def refusals(self, batch: BatchRecord, limit: int) -> list[pb.RecordError]:
        """The first ``limit`` refused records of ``batch``, in index order (the log is read until they are found:
        give no more than the batch's refusals)."""
        errors: list[pb.RecordError] = []
        if limit <= 0:
            return errors
        async for entry in self._entries(batch, -1):
            if entry.kind == REFUSED:
                errors.append(pb.RecordError(index=entry.id - 1, reason=entry.payload.decode()))
                if len(errors) >= limit:
                    break
        return errors

    async def _entries(self, batch: BatchRecord, after_index: int) -> AsyncIterator[LogRecord]:
        """The batch log's entries after index ``after_index`` (-1: all), in index order."""
        position = after_index + 1
        while True:
            entries = await self._log.read(batch.log_stream, position, READ_STEP)
            if not entries:
                return
            for entry in entries:
                yield entry
            position = entries[-1].id

    # --- reading back ------------------------------------------------------------------------------

    async def _find(self, batch_id: str, context: Context) -> BatchRecord:
        """The batch a request names, as the caller may see it: NOT_FOUND or PERMISSION_DENIED otherwise."""
        caller = self._credentials.caller(context.invocation_metadata())
        owner, _, name = batch_id.rpartition("/")
        if not SAFE_ID.fullmatch(name) or (owner and not _user_name(owner)):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"batch_id {quoted(batch_id)} is not a batch id")
        if caller.user is not None:
            if owner and owner != caller.user:
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this token is {caller.user}'s: it reads {caller.user}'s batches only",
                )
            batch_id = f"{caller.user}/{name}"
        batch = await self._metadata.get_batch(batch_id)
        if batch is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no batch {quoted(batch_id)}")
        return batch

    async def ListBatches(self, request: pb.ListBatchesRequest, context: Context) -> pb.ListBatchesResponse:
        if not 0 <= request.page_size <= MAX_PAGE:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be 0-{MAX_PAGE}")
        offset = page_offset(request.page_token)
        if offset is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this server gave")
        size = request.page_size or 100
        caller = self._credentials.caller(context.invocation_metadata())
        rows = await self._metadata.list_batches(size + 1, offset, owner=caller.user)
        response = pb.ListBatchesResponse()
        for row in rows[:size]:
            response.batches.append(await self.info(row, aggregates=False))
        if len(rows) > size:
            response.next_page_token = str(offset + size)
        return response

    async def GetBatch(self, request: pb.GetBatchRequest, context: Context) -> pb.GetBatchResponse:
        batch = await self._find(request.batch_id, context)
        info = await self.info(batch)
        # The log is read for refusals only as far as the last of those wanted: not at all when none is.
        errors = await self.refusals(batch, min(error_count(request.max_errors), info.records_refused))
        return pb.GetBatchResponse(batch=info, errors=errors)

    async def ReadBatchRecords(
        self, request: pb.ReadBatchRecordsRequest, context: Context
    ) -> AsyncIterator[pb.ReadBatchRecordsResponse]:
        batch = await self._find(request.batch_id, context)
        after = request.after_index if request.HasField("after_index") else -1
        response = pb.ReadBatchRecordsResponse()
        size = 0
        async for entry in self._entries(batch, after):
            if entry.kind != STORED:
                continue
            response.records.add(index=entry.id - 1, record=pb.DataRecord.FromString(entry.payload))
            size += len(entry.payload)
            if len(response.records) >= 500 or size >= 1 << 20:
                yield response
                response, size = pb.ReadBatchRecordsResponse(), 0
        if response.records:
            yield response

    # --- retention ---------------------------------------------------------------------------------

    async def expire(self, retention: Retention) -> int:
        """Remove the batches idle for longer than the retention's age; returns how many."""
        idle = await self._metadata.batches_idle_since(time.time() - retention.producer_idle_limit)
        for batch in idle:
            await self._log.drop(batch.log_stream)
            await self._metadata.delete_batch(batch.batch_id)
        return len(idle)


def _user_name(owner: str) -> bool:
    """Whether ``owner`` can be the user name of a batch id (no control characters, not too long)."""
    return 0 < len(owner) <= MAX_KEY and not has_control(owner)


def _message_problem(
    request: pb.ProcessDataBatchRequest, number: int, batch: BatchRecord, named: bool, caller: Caller
) -> str:
    """Why message ``number`` of a stream cannot be used, or ""."""
    if len(request.records) > MAX_RECORDS_PER_REQUEST:
        return f"message {number} holds {len(request.records)} records; at most {MAX_RECORDS_PER_REQUEST}"
    if number and request.batch_id:
        own = batch.batch_id.rpartition("/")[2] if caller.user is not None else batch.batch_id
        if request.batch_id != own:
            return f"message {number} names another batch_id than the stream's first message"
    if not named and request.first_index:
        return f"message {number} has a first_index without a batch_id"
    return ""


def _touched(batch: BatchRecord, tally: Tally) -> BatchRecord:
    """``batch`` as it took records: its summary so far, incomplete (``completed_at`` stays: it says whether
    the submitter was notified)."""
    summary = tally.info().SerializeToString()
    return BatchRecord(
        batch.batch_id, batch.owner, batch.source, batch.created_at, time.time(), batch.completed_at, summary
    )


def _held(next_index: int) -> str:
    if not next_index:
        return "no record of the batch is held"
    return f"the batch holds records 0-{next_index - 1} (resume at index {next_index})"
