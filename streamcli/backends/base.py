"""The storage seams every backend implements.

Three narrow interfaces, chosen so a backend can be swapped without touching
the services above them (see DESIGN.md, "One mechanism for every stream of
records: the log"):

* ``LogStore``: append-only logs ("streams") of records with strictly
  increasing ids per stream, read by cursor position, trimmed by retention,
  with a wake-up for readers that have caught up. Appends may be idempotent:
  a record that names its producer and sequence number is stored once per
  (stream, producer, sequence).
* ``BlobStore``: file bytes in a directory (replicas share the directory).
* ``MetadataStore``: stored files and resumable uploads.
* ``Presence`` and ``Signals``: ephemeral state shared by every process of a backend, never stored: who is
  in which scope (leases: a chat room's members, a document's editors, the stream writing an upload), and
  signals published to whoever listens now (TYPING, cursors). In process on the embedded backend
  (``backends/ephemeral.py``), on Redis across replicas (``backends/redis_ephemeral.py``).

Domain code depends on these Protocols only; ``streamcli.backends.open_backend``
picks the implementation.
"""

from __future__ import annotations

import dataclasses
import errno
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from streamcli.backends.ephemeral import LocalPresence, LocalSignals


class NewRecord(NamedTuple):
    """A record to append; the store assigns its id and time. (A tuple: appends make one per record, batch
    ingest a million in a row, and a frozen dataclass costs three times as much to make.)"""

    key: str  # partition key within the stream: a user id, a recipient, a room member
    kind: str  # the record's kind within the stream, e.g. an event type name
    payload: bytes  # the serialized message
    # Idempotent appends: the writer's name ("" = none: always stored) and the record's number in the
    # writer's sequence (1, 2, 3, ... without a gap; see ``LogStore.append``).
    producer: str = ""
    sequence: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class LogRecord:
    """A record as stored: id and server time assigned on append."""

    id: int  # position in its stream: 1, 2, 3, ...
    timestamp: float  # server append time, seconds since the epoch; never decreases along ids
    key: str
    kind: str
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class LogBounds:
    """What a stream holds: ids ``trimmed_through + 1 .. last_id``."""

    trimmed_through: int  # highest id removed by retention (0 = nothing trimmed)
    last_id: int  # highest id ever appended (0 = empty)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamHead:
    """A stream, its bounds and when it was last appended to."""

    stream: str
    bounds: LogBounds
    updated_at: float  # seconds since the epoch of the last append


@dataclasses.dataclass(frozen=True, slots=True)
class ProducerState:
    """What a stream holds of one producer's records."""

    last_sequence: int  # highest sequence stored (0 = none): every record numbered up to it is stored once
    first_id: int  # id of the first record the producer stored (0 = none)
    last_id: int  # id of the last record the producer stored (0 = none)
    updated_at: float  # when the producer last appended, seconds since the epoch (0 = never)


@dataclasses.dataclass(frozen=True, slots=True)
class KindCount:
    """The records of one kind in a stream."""

    records: int
    keys: int  # distinct keys among them


class SequenceGapError(Exception):
    """An append met a producer's record numbered beyond the next one expected; nothing was appended.

    ``index`` is the record's position in the records given to ``append``: those before it can be
    appended on their own.
    """

    def __init__(self, stream: str, producer: str, sequence: int, expected: int, index: int) -> None:
        super().__init__(
            f"record {index} of producer {producer!r} in {stream!r} has sequence {sequence}; the next expected "
            f"is {expected}"
        )
        self.producer = producer
        self.sequence = sequence
        self.expected = expected
        self.index = index


class ConditionFailedError(Exception):
    """A conditional append found that the stream's last id moved on (another writer was first); nothing appended."""

    def __init__(self, stream: str, expected: int, last_id: int) -> None:
        super().__init__(f"{stream!r} ends at id {last_id}, not {expected}: nothing appended")
        self.expected = expected
        self.last_id = last_id


class TrimmedError(Exception):
    """A read started at a position retention has removed."""

    def __init__(self, stream: str, after_id: int, trimmed_through: int) -> None:
        super().__init__(
            f"position {after_id} of {stream!r} has been trimmed (records up to {trimmed_through} are gone)"
        )
        self.trimmed_through = trimmed_through


class StoreUnavailableError(Exception):
    """The store cannot be reached now (a lost connection to Redis, say); the same call may succeed later.

    What the failed operation did is unknown: an append may or may not be in. Backends raise it for
    every such failure of their own, whatever their client library raises; the server ends the call
    UNAVAILABLE with its message (``server/service.py``).
    """


class LogStore(Protocol):
    """Append-only logs with cursors."""

    async def append(
        self, stream: str, records: Sequence[NewRecord], *, if_last_id: int | None = None
    ) -> list[LogRecord]:
        """Append records atomically, in order, and wake the stream's readers.

        With ``if_last_id``, append only if the stream's last id is still that (checked in the same
        transaction as the write): the records then get ids ``if_last_id + 1, ...``. This is how writers
        that must not race (a shared document's next revision) append, in every backend.

        Records with a ``producer`` are appended once per (stream, producer, sequence): one numbered
        at or below the producer's last stored sequence is a duplicate, skipped (not in the list
        returned); the producer's state (``producer``) moves on in the same transaction.

        Returns:
            The records stored, in order (all of them when none has a producer).

        Raises:
            SequenceGapError: a record is numbered beyond its producer's next sequence (a producer
                unknown to the stream starts at 1); nothing was appended.
            ConditionFailedError: the stream's last id is not ``if_last_id``; nothing was appended.
        """
        ...

    async def producer(self, stream: str, producer: str) -> ProducerState:
        """What ``stream`` holds of ``producer`` (all zeros for a producer it does not know)."""
        ...

    async def forget_producers(self, stream: str, idle_since: float) -> int:
        """Forget producers that have not appended since ``idle_since`` (seconds since the epoch): a
        forgotten producer starts again at sequence 1.

        Returns:
            The number of producers forgotten.
        """
        ...

    async def read(self, stream: str, after_id: int, limit: int) -> list[LogRecord]:
        """Return up to ``limit`` records with ids above ``after_id``, in order.

        Raises:
            TrimmedError: records just after ``after_id`` were removed by retention.
        """
        ...

    async def read_before(self, stream: str, before_id: int, limit: int) -> list[LogRecord]:
        """Return up to ``limit`` kept records with ids below ``before_id``, newest first (reading a log backwards)."""
        ...

    async def bounds(self, stream: str) -> LogBounds:
        """Return the stream's current bounds."""
        ...

    async def heads(self, prefix: str, after: str, limit: int) -> list[StreamHead]:
        """Up to ``limit`` streams whose names start with ``prefix`` and sort after ``after``, by name."""
        ...

    async def position_before(self, stream: str, timestamp: float) -> int:
        """The id after which records appended at or after ``timestamp`` start."""
        ...

    async def wait_for(self, stream: str, after_id: int, timeout: float) -> bool:
        """Wait until a record with an id above ``after_id`` exists.

        Returns:
            True when there is one, False when ``timeout`` seconds passed first.
        """
        ...

    def release_readers(self) -> None:
        """Make every ``wait_for``, now and later, return False at once (server shutdown)."""
        ...

    async def trim(self, stream: str, *, older_than: float | None = None, keep_last: int | None = None) -> int:
        """Remove records appended before ``older_than`` and/or all but the newest ``keep_last``.

        Returns:
            The number of records removed.
        """
        ...

    async def drop(self, stream: str) -> None:
        """Remove the whole stream: its records, bounds and producers (a batch that retention removes)."""
        ...

    async def kind_counts(self, stream: str) -> dict[str, KindCount]:
        """How many records of each kind the stream holds, and how many distinct keys they have."""
        ...


class StorageFullError(OSError):
    """A store could not write because its disk is full.

    An ``OSError`` with ``errno.ENOSPC``, so that callers handle a full disk
    the same way whichever store (blob files or metadata) hit it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)  # the store's own words, without "[Errno 28]"


@dataclasses.dataclass(frozen=True, slots=True)
class FileRecord:
    """A stored, verified file."""

    file_id: str
    filename: str
    size: int  # bytes
    content_type: str
    sha256: str  # lowercase hex
    created_at: float  # seconds since the epoch
    owner: str = ""  # the user whose token uploaded it; "" for the service token (or a server without tokens)


@dataclasses.dataclass(frozen=True, slots=True)
class UploadRecord:
    """A resumable upload in progress.

    Its committed offset is not stored here: it is the size of the partial
    file (``BlobStore.partial_path``), the one source of truth for what the
    server has received, whatever way the last stream ended.
    """

    upload_id: str
    filename: str
    total_size: int  # declared size in bytes, -1 when unknown
    content_type: str
    sha256: str  # declared lowercase hex sha256, "" when sent at the end
    created_at: float  # seconds since the epoch
    expires_at: float  # seconds since the epoch
    owner: str = ""  # as FileRecord.owner: who may resume it


@dataclasses.dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch of ingested records: its records are in the log stream ``log_stream``."""

    batch_id: str  # as clients name it: the client's id, "USER/ID" for a user token's batch
    owner: str  # the user whose token submitted it; "" for the service token
    source: str  # the client's label (a file name)
    created_at: float  # seconds since the epoch
    updated_at: float  # when it last received records
    completed_at: float = 0.0  # when it was first completed (0 = not yet; its submitter was notified then)
    summary: bytes = b""  # its totals and aggregates so far (streaming.v1.BatchInfo; final when its complete is set)

    @property
    def log_stream(self) -> str:
        return f"batch:{self.batch_id}"


class MetadataStore(Protocol):
    """Metadata of stored files, of uploads in progress and of batches."""

    async def put_batch(self, record: BatchRecord) -> None:
        """Insert or replace a batch."""
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch, or None."""
        ...

    async def list_batches(self, limit: int, offset: int = 0, *, owner: str | None = None) -> list[BatchRecord]:
        """Batches newest first (by creation); with ``owner``, only that user's."""
        ...

    async def batch_ids_with_prefix(
        self, prefix: str, limit: int, *, owner: str | None = None
    ) -> tuple[list[str], int]:
        """The ids of the batches that begin with ``prefix``, ascending, at most ``limit``, and how many there
        are; with ``owner``, only that user's."""
        ...

    async def delete_batch(self, batch_id: str) -> None:
        """Forget a batch (idempotent; its log stream is dropped separately)."""
        ...

    async def batches_idle_since(self, before: float) -> list[BatchRecord]:
        """Batches that received nothing since ``before`` (seconds since the epoch)."""
        ...

    async def put_file(self, record: FileRecord) -> None:
        """Insert or replace a file's metadata."""
        ...

    async def get_file(self, file_id: str) -> FileRecord | None:
        """The file's metadata, or None."""
        ...

    async def list_files(self, limit: int, offset: int = 0, *, visible_to: str | None = None) -> list[FileRecord]:
        """Files newest first; with ``visible_to``, only those that user may see (``file_visible_to``)."""
        ...

    async def file_ids_with_prefix(
        self, prefix: str, limit: int, *, visible_to: str | None = None
    ) -> tuple[list[str], int]:
        """The ids of the files that begin with ``prefix``, ascending, at most ``limit``, and how many there
        are; with ``visible_to``, only those that user may see (``file_visible_to``)."""
        ...

    async def file_visible_to(self, record: FileRecord, user: str) -> bool:
        """Whether ``user`` may see a file: they own it, or it was posted in a chat room they have joined."""
        ...

    async def add_room_member(self, room_id: str, user: str) -> None:
        """Remember that ``user`` joined ``room_id`` (the files posted there become visible to them)."""
        ...

    async def share_file(self, file_id: str, room_id: str) -> None:
        """Remember that ``file_id`` was posted in ``room_id``."""
        ...

    async def delete_file(self, file_id: str) -> FileRecord | None:
        """Remove and return the file's metadata (None when unknown)."""
        ...

    async def find_file(self, filename: str, sha256: str, size: int, owner: str) -> FileRecord | None:
        """A stored file of this owner, name and content (the oldest, when several), or None."""
        ...

    async def put_upload(self, record: UploadRecord) -> None:
        """Insert or replace an upload."""
        ...

    async def start_upload(self, record: UploadRecord) -> bool:
        """Insert a new upload unless there is one of its id; returns whether it was inserted.

        One step: of two streams starting the same upload at once (on any replica), one is told True.
        """
        ...

    async def store_files(self, records: Sequence[FileRecord]) -> list[FileRecord]:
        """Store each of ``records`` as ``finish_upload`` does (without an upload to forget), all in one step
        (SQLite: one transaction): each unless a file of the same owner, name and content is stored already,
        the records stored earlier in ``records`` included.

        Returns:
            For each record in order: itself, or the file stored already.
        """
        ...

    async def finish_upload(self, record: FileRecord, upload_id: str) -> FileRecord:
        """Store ``record`` and forget upload ``upload_id``, in one step: unless a file of the same owner, name
        and content (``find_file``) is stored already, which is then returned (and nothing inserted).

        Returns:
            ``record``, or the file stored already.
        """
        ...

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        """The upload, or None."""
        ...

    async def delete_upload(self, upload_id: str) -> None:
        """Forget an upload (idempotent)."""
        ...

    async def expired_uploads(self, now: float) -> list[UploadRecord]:
        """Uploads whose ``expires_at`` is before ``now``."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class MetricSeries:
    """A metric series: whose it is, its name and its labels (its identity), and its id in the store."""

    series_id: int
    owner: str  # the user whose token sent its samples; "" for the service token
    name: str  # "" for the owner's overflow series
    labels: str  # the labels as canonical JSON (keys sorted): one series whatever order they came in
    overflow: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class MetricDelta:
    """What one flush adds to a series: its samples' aggregate, all together and by minute (stored forms)."""

    series_id: int
    total: bytes
    minutes: tuple[tuple[int, bytes], ...]  # (minute: seconds since the epoch // 60, aggregate)


@dataclasses.dataclass(frozen=True, slots=True)
class PushMark:
    """How far a resumable push is held: every sample below ``next_index``."""

    owner: str
    push_id: str
    next_index: int


@dataclasses.dataclass(frozen=True, slots=True)
class StoredMetric:
    """A series' stored aggregates: all time (one), or one per minute since a time, oldest first, with the
    minute of each in ``minutes``; when it last changed."""

    updated_at: float
    aggregates: tuple[bytes, ...]
    minutes: tuple[int, ...] = ()  # (seconds since the epoch // 60) of each aggregate, when per minute


class MetricStore(Protocol):
    """Metric series and their mergeable aggregates (bytes to the store; services/sketches.py reads them).

    The store names the series: it gives each identity (owner, name, labels) one id, increasing in the
    order series are added, whichever replica adds them, and it counts the ordinary (not overflow) series
    against the server's limit in the same step.
    """

    async def metric_series(self, after_id: int = 0) -> list[MetricSeries]:
        """Every series whose id is above ``after_id`` (all of them by default), by id."""
        ...

    async def add_metric_series(
        self, owner: str, name: str, labels: str, overflow: bool, max_ordinary: int
    ) -> MetricSeries | None:
        """The series of this identity, added if it is new; None, adding nothing, when it is new and
        ordinary (not ``overflow``) and ``max_ordinary`` ordinary series exist already."""
        ...

    async def merge_metrics(
        self,
        deltas: Sequence[MetricDelta],
        merge: Callable[[bytes, bytes], bytes],
        push: PushMark | None = None,
    ) -> None:
        """In one transaction: merge each delta into its series' stored aggregates (``merge(stored, delta)``,
        all time and per minute), and record ``push``. Flushes of the same series at once (other streams,
        other replicas) each count once: none is lost to another's write."""
        ...

    async def stored_metrics(self, series_ids: Sequence[int], since_minute: int | None) -> dict[int, StoredMetric]:
        """The aggregates of these series: all time (``since_minute`` None), else of each minute since it."""
        ...

    async def push_position(self, owner: str, push_id: str) -> int:
        """The next index of a push (0 for a push never seen)."""
        ...

    async def forget_pushes(self, before: float) -> int:
        """Forget the pushes last sent to before ``before`` (seconds since the epoch); returns how many."""
        ...

    async def forget_metric_minutes(self, before_minute: int) -> int:
        """Forget the per-minute aggregates of minutes before ``before_minute`` (the all-time ones stay);
        returns how many."""
        ...


class BlobStore(Protocol):
    """File bytes kept in a directory."""

    def partial_path(self, upload_id: str) -> pathlib.Path:
        """Where an upload in progress writes its bytes."""
        ...

    def blob_path(self, file_id: str) -> pathlib.Path:
        """Where a stored file's bytes are."""
        ...

    def commit(self, upload_id: str, file_id: str, fd: int | None = None) -> pathlib.Path:
        """Durably and atomically move a finished upload to its stored place (``fd``: the partial file, open
        for writing: synced as it is, rather than opened again)."""
        ...

    def commit_many(self, partials: Sequence[tuple[str, str, int]]) -> list[pathlib.Path]:
        """``commit`` of several finished uploads together, each given as (upload id, file id, open partial
        file): their bytes synced, then each moved, then the moves made durable at once (one directory sync,
        not one per file). Returns the stored paths in order."""
        ...

    def discard_partial(self, upload_id: str) -> int:
        """Delete an upload's partial bytes (idempotent); returns the bytes freed (0 if absent)."""
        ...

    def partials_older_than(self, prefix: str, before: float) -> list[str]:
        """The upload ids beginning with ``prefix`` whose partial files were last written before ``before``
        (seconds since the epoch): those no record names (UploadFiles' groups), left by a server that stopped
        between writing them and storing them."""
        ...

    def delete(self, file_id: str) -> int:
        """Delete a stored file's bytes; returns the bytes freed (0 if absent)."""
        ...

    def usage(self) -> int:
        """Bytes used by stored and partial files."""
        ...


class SharedSpace(Protocol):
    """The bytes under ``serve --quota`` of a data directory several replicas share, counted in their store:
    those used by stored and partial files, and those each replica's uploads in flight have reserved.

    A replica's reservations hold while it lives: each call renews its lease, and the reservations of a
    replica whose lease ran out (it died, or lost its store for that long) no longer count.
    """

    async def reserve(self, size: int, quota: int, measured_used: int | None) -> tuple[bool, int, int]:
        """Reserve ``size`` bytes for this replica unless used + every live replica's reservations + ``size``
        would exceed ``quota``; returns (reserved, used, reserved by all). When the store does not know what
        is used (never told, or lost), it takes ``measured_used``, and raises ``SpaceUnknownError`` without one.
        """
        ...

    async def adjust(self, used: int, reserved: int) -> None:
        """Add ``used`` bytes to what is used and ``reserved`` to this replica's reservations (negative: give
        back); renews this replica's lease."""
        ...


class SpaceUnknownError(Exception):
    """The shared count of used bytes is not known: measure the directory and reserve again with it."""


class Lease(Protocol):
    """A member of a scope held by this process (``Presence.join``) until ``leave``.

    The store renews it by itself while this process lives (on Redis every ``RENEW_EVERY`` seconds, expiring
    ``LEASE`` seconds after the last renewal: a replica that dies without leaving loses its members then).
    """

    scope: str
    member: str

    @property
    def held(self) -> bool:
        """False once the lease was lost: it expired (its store unreachable for longer than the lease) and,
        exclusive, another holder took the member meanwhile. A lost lease is never taken back."""
        ...

    async def leave(self) -> None:
        """Give the lease up (idempotent; a store that cannot be reached lets it expire)."""
        ...


class Presence(Protocol):
    """Who is in which scope, across every process of the backend: members held by leases."""

    async def join(self, scope: str, member: str, *, exclusive: bool = False) -> Lease | None:
        """Hold ``member`` in ``scope``: a lease of its own, beside those others hold on the same member.

        Returns:
            The lease, or None when ``exclusive`` and the member is held already (by any holder, in any
            process). A lease that is not exclusive is always granted.
        """
        ...

    async def members(self, scope: str) -> list[str]:
        """The members of ``scope`` held by a live lease, each once, sorted."""
        ...

    async def close(self) -> None:
        """Give up every lease this process holds (server shutdown)."""
        ...


class Subscription(Protocol):
    """The signals of one channel as they come, from when it was subscribed; bounded (``Signals.subscribe``)."""

    #: Signals dropped so far because this subscriber had not taken them (the oldest go first).
    dropped: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        ...


class Signals(Protocol):
    """Ephemeral messages on named channels to whoever subscribes now, in every process; never stored.

    A signal reaches each subscriber of its channel at most once, the publishing process's own
    subscribers included; one published while a process cannot reach the store is lost to that
    process's subscribers elsewhere. Each subscriber keeps at most ``SIGNAL_BUFFER`` signals not taken
    yet and drops the oldest beyond: a slow subscriber loses old signals, never slows the others.
    """

    async def publish(self, channel: str, payload: bytes) -> None:
        """Send ``payload`` to the channel's subscribers."""
        ...

    def subscribe(self, channel: str) -> Subscription:
        """Receive the channel's signals from now on, until the subscription is closed."""
        ...

    async def close(self) -> None:
        """Stop every subscription (server shutdown)."""
        ...


@dataclasses.dataclass
class Backend:
    """One storage backend: the three stores and a way to close them."""

    name: str
    log: LogStore
    metadata: MetadataStore
    blobs: BlobStore
    closer: _Closer
    metrics: MetricStore
    ready: Callable[[], Awaitable[None]] | None = None  # raises when the store cannot be reached (start-up)
    shared: bool = False  # other processes (replicas) may append to its logs: what a log holds is not all seen here
    # The quota's counts when replicas share the data dir (None: this process alone writes there, and the
    # in-memory ledger of services/quota.py decides).
    space: SharedSpace | None = None
    presence: Presence = dataclasses.field(default_factory=LocalPresence)  # in process unless shared
    signals: Signals = dataclasses.field(default_factory=LocalSignals)

    async def close(self) -> None:
        """Give up leases and subscriptions, release connections and files."""
        await self.presence.close()
        await self.signals.close()
        await self.closer.close()


class _Closer(Protocol):
    async def close(self) -> None: ...
