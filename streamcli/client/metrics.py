"""Metric pushes over CollectMetrics, resumable, and reading series back (ListMetricSeries).

A push streams samples as they are read (a file's, or a live sampler's) in
messages of at most ``MESSAGE_SAMPLES``, numbered in the push, and ends a
stream for its acknowledgement every ``ACK_EVERY`` samples or ``ack_seconds``
(``client/streams.py``). A lost stream is retried (``Attempts``) from what
the server holds; a file's push id is derived from the file, as a batch's,
so running the same push again after Ctrl-C or a server restart sends only
what the server does not hold and no sample counts twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.batches import Refusal
from streamcli.client.connection import Connection, rpc_errors
from streamcli.client.records import Parsed
from streamcli.client.retry import Attempts, RetryPolicy
from streamcli.client.streams import Outstanding, bytes_stream, one_stream
from streamcli.client.transfer import upload_id_for
from streamcli.protowire import bytes_field, repeated_messages, varint_field
from streamcli.times import rfc3339

#: Samples per CollectMetricsRequest (the server takes up to 10,000).
MESSAGE_SAMPLES = 5000
#: Samples sent on one stream before it is ended for its acknowledgement.
ACK_EVERY = 50_000
#: Refused samples the client asks the server to detail per stream (it reports every one).
ERRORS_PER_STREAM = 10_000


def push_id_for(path: pathlib.Path, size: int, mtime_ns: int, token: str | None) -> str:
    """The push id of this version of a file: the same on every run (see the module)."""
    return upload_id_for(path, size, mtime_ns, "metrics", token)


def new_push_id() -> str:
    """A push id for input that cannot be read again (stdin, a live sampler)."""
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True)
class TrendPoint:
    """One step of a series' trend: its start (RFC 3339), its length in minutes, and its samples' count, p50
    and p99 (0 without samples)."""

    start: str
    minutes: int
    count: int
    p50: float
    p99: float

    @classmethod
    def of(cls, point: pb.MetricTrendPoint) -> TrendPoint:
        return cls(rfc3339(point.start), point.minutes, point.count, point.p50, point.p99)


@dataclasses.dataclass(frozen=True)
class SeriesSummary:
    """A metric series as the server describes it."""

    name: str  # "" for the overflow series
    labels: tuple[tuple[str, str], ...]
    owner: str
    overflow: bool
    count: int
    min: float
    max: float
    sum: float
    mean: float
    p50: float
    p90: float
    p99: float
    updated_at: str  # RFC 3339
    quantiles: tuple[tuple[float, float], ...] = ()  # (quantile, value), as asked for
    trend: tuple[TrendPoint, ...] = ()  # as asked for (trend_points), oldest first

    @classmethod
    def of(cls, summary: pb.MetricSummary) -> SeriesSummary:
        return cls(
            summary.name,
            tuple(sorted(summary.labels.items())),
            summary.owner,
            summary.overflow,
            summary.count,
            summary.min,
            summary.max,
            summary.sum,
            summary.mean,
            summary.p50,
            summary.p90,
            summary.p99,
            rfc3339(summary.updated_at),
            tuple((q.quantile, q.value) for q in summary.quantiles),
            tuple(TrendPoint.of(point) for point in summary.trend),
        )

    @property
    def title(self) -> str:
        """``name{k="v",...}`` (Prometheus' way), ``(overflow)`` for the overflow series."""
        if self.overflow:
            return "(overflow)"
        labels = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"{self.name}{{{labels}}}" if labels else self.name

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["labels"] = dict(self.labels)
        record["quantiles"] = [{"quantile": q, "value": v} for q, v in self.quantiles]
        if not self.trend:  # (asked for by `metrics show` only)
            del record["trend"]
        return record


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What one push did: counts, refusals by reason, and the series it went to (all time)."""

    source: str
    push_id: str
    sent: int  # samples sent (re-sent ones once)
    accepted: int
    overflowed: int
    refused: tuple[tuple[str, int], ...]  # by the server, by reason
    client_refused: int  # lines that were not samples
    series: tuple[SeriesSummary, ...]

    @property
    def refused_count(self) -> int:
        return sum(n for _, n in self.refused) + self.client_refused

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "push_id": self.push_id,
            "sent": self.sent,
            "accepted": self.accepted,
            "overflowed": self.overflowed,
            "refused": dict(self.refused),
            "client_refused": self.client_refused,
            "series": [s.to_json() for s in self.series],
        }


@dataclasses.dataclass(frozen=True)
class PushOptions:
    """Whom to tell of refusals and progress, and how patiently to retry."""

    on_refusal: Callable[[Refusal], None]
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    notice: Callable[[str], None] | None = None  # told when a stream is lost and when it resumes
    on_progress: Callable[[int, int], None] | None = None  # (samples, bytes of input) read since the last call
    ack_seconds: float = 60.0  # a stream is ended for its acknowledgement at least this often


class _Message:
    """One sent message not yet acknowledged: its serialized CollectMetricsRequest (the samples' own bytes
    framed, no message built), its first index and where each of its samples came from (line and text)."""

    __slots__ = ("first", "parsed", "request")

    def __init__(self, push_id: str, first: int, samples: list[bytes], parsed: list[Parsed[bytes]]) -> None:
        self.first = first
        self.parsed = parsed
        # (Fields in number order, as the library writes them: metrics = 1, push_id = 2, first_index = 3.)
        self.request = b"".join(
            (
                repeated_messages(1, samples),
                bytes_field(2, push_id.encode()) if push_id else b"",
                varint_field(3, first),
            )
        )


class MetricPush:
    """Pushes parsed samples (in lists, as they come) as push ``push_id``; see the module's docstring."""

    def __init__(
        self,
        conn: Connection,
        source: str,
        push_id: str,
        batches: AsyncIterator[Sequence[Parsed[bytes]]],
        options: PushOptions,
    ) -> None:
        self._conn = conn
        self._source = source
        self._push_id = push_id
        self._batches = batches
        self._options = options
        self._outstanding: Outstanding[_Message] = Outstanding()
        self._collect = bytes_stream(conn, "CollectMetrics", pb.CollectMetricsResponse)
        self._next_index = 0  # push index of the next sample read
        self.held = 0  # the server's next index
        self._ended = False
        self._sent = self._accepted = self._overflowed = self._client_refused = 0
        self._refused: dict[str, int] = {}
        self._series: dict[tuple[str, str, tuple[tuple[str, str], ...]], SeriesSummary] = {}

    async def run(self) -> PushResult:
        """Push everything; returns what the server said of it.

        Raises:
            StreamcliError: the server refused the stream, or retries ran out (with how to go on).
        """
        attempts = Attempts(
            self._options.retry,
            f"push of {self._source}",
            hint="run the same command again to resume the push",
            connection=self._conn,
            announce=self._options.notice,
        )
        with rpc_errors(self._conn):
            self.held = (await self._query()).next_index
            while True:
                try:
                    reply = await self._stream()
                except grpc.aio.AioRpcError as exc:
                    before = self.held
                    await attempts.failed(exc)
                    await self._reconnect(attempts)
                    if self.held > before:
                        attempts.recovered()
                    continue
                attempts.recovered()
                self._take(reply)
                if self._ended and not self._outstanding:
                    return self._result()

    def _first(self) -> pb.CollectMetricsRequest:
        return pb.CollectMetricsRequest(push_id=self._push_id, max_errors=ERRORS_PER_STREAM)

    async def _query(self) -> pb.CollectMetricsResponse:
        reply: pb.CollectMetricsResponse = await self._conn.stub.CollectMetrics(
            [self._first()], metadata=self._conn.metadata
        )
        return reply

    async def _reconnect(self, attempts: Attempts) -> None:
        while True:
            try:
                reply = await self._query()
            except grpc.aio.AioRpcError as exc:
                await attempts.failed(exc)
                continue
            self.held = max(self.held, reply.next_index)
            self._outstanding.acknowledge(self.held)
            if self._options.notice:
                self._options.notice(
                    f"reconnected; the server holds the first {self.held} sample(s) of {self._source}, "
                    f"re-sending the {self._next_index - self.held} after them"
                )
            return

    async def _stream(self) -> pb.CollectMetricsResponse:
        reply: pb.CollectMetricsResponse = await one_stream(self._collect(metadata=self._conn.metadata), self._write)
        return reply

    async def _write(self, call: Any, _outcome: asyncio.Future[Any]) -> None:
        await call.write(self._first())
        for sent in self._outstanding:
            await call.write(sent.request)
        count, started = self._outstanding.items(), time.monotonic()
        while count < ACK_EVERY and time.monotonic() - started < self._options.ack_seconds and not self._ended:
            message = await self._next_message()
            if message is None:
                continue
            self._outstanding.add(message.first, len(message.parsed), message)
            count += len(message.parsed)
            await call.write(message.request)
        await call.done_writing()

    async def _next_message(self) -> _Message | None:
        """The samples of the next list read, past those the push holds; None when there are none to send."""
        try:
            batch = await anext(self._batches)
        except StopAsyncIteration:
            self._ended = True
            return None
        kept = [parsed for parsed in batch if parsed.record is not None]
        if len(kept) < len(batch):
            for parsed in batch:
                if parsed.record is None:
                    self._client_refused += 1
                    self._options.on_refusal(Refusal(self._source, parsed.line, parsed.problem, parsed.text, False))
        start = self._next_index
        self._next_index += len(kept)
        if start < self.held:  # held from an earlier run
            kept = kept[self.held - start :]
            start = self.held
        if self._options.on_progress is not None:
            self._options.on_progress(len(batch), sum(len(parsed.text) + 1 for parsed in batch))
        if not kept:
            return None
        self._sent += len(kept)
        samples = [parsed.record for parsed in kept if parsed.record is not None]
        return _Message(self._push_id, start, samples, kept)

    def _take(self, reply: pb.CollectMetricsResponse) -> None:
        """Count an acknowledged stream's answer and name the samples it refused, by their lines."""
        where: dict[int, tuple[int, str]] = {}
        wanted = {e.index for e in reply.errors}
        for message in self._outstanding:
            first = message.first
            for offset, parsed in enumerate(message.parsed):
                if first + offset in wanted:
                    where[first + offset] = (parsed.line, parsed.text)
        for error in reply.errors:
            line, text = where.get(error.index, (0, ""))
            self._options.on_refusal(Refusal(self._source, line, error.detail, text, by_server=True))
        self._accepted += reply.metrics_accepted
        self._overflowed += reply.overflowed
        for reason, count in reply.refused.items():
            self._refused[reason] = self._refused.get(reason, 0) + count
        for summary in reply.summaries:
            found = SeriesSummary.of(summary)
            self._series[(found.owner, found.name, found.labels)] = found
        self.held = max(self.held, reply.next_index)
        self._outstanding.acknowledge(self.held)

    def _result(self) -> PushResult:
        return PushResult(
            self._source,
            self._push_id,
            self._sent,
            self._accepted,
            self._overflowed,
            tuple(sorted(self._refused.items())),
            self._client_refused,
            tuple(sorted(self._series.values(), key=lambda s: (s.name, s.labels, s.owner))),
        )


async def in_lists(parsed: Iterable[Parsed[bytes]], size: int = MESSAGE_SAMPLES) -> AsyncIterator[list[Parsed[bytes]]]:
    """``parsed`` in lists of at most ``size`` (a file's samples, for ``MetricPush``)."""
    items = iter(parsed)
    while batch := list(itertools.islice(items, size)):
        yield batch


async def list_series(
    conn: Connection,
    *,
    name: str = "",
    labels: dict[str, str] | None = None,
    since: Timestamp | None = None,
    quantiles: Sequence[float] = (),
    trend_points: int = 0,
    limit: int = 100_000,
    notice: Callable[[str], None] | None = None,
) -> list[SeriesSummary]:
    """The caller's series (every owner's for the service token), sorted by name and labels; with
    ``trend_points``, each with its trend. ``notice`` is told when ``since`` reaches back before what the server
    keeps per minute (the answer then counts from what it keeps)."""
    found: list[SeriesSummary] = []
    token = ""
    while len(found) < limit:
        request = pb.ListMetricSeriesRequest(
            name=name,
            labels=labels or {},
            page_size=min(1000, limit - len(found)),
            page_token=token,
            trend_points=trend_points,
        )
        request.quantiles.extend(quantiles)
        if since is not None:
            request.since.CopyFrom(since)
        page = await conn.stub.ListMetricSeries(request, metadata=conn.metadata)
        if notice is not None and not token and page.HasField("kept_since"):
            notice(
                f"the server keeps per-minute aggregates since {rfc3339(page.kept_since)} only "
                "(serve --metric-retention): counted from then"
            )
        found.extend(SeriesSummary.of(s) for s in page.series)
        token = page.next_page_token
        if not token:
            break
    return found
