"""Metric series: CollectMetrics (client streaming) and ListMetricSeries.

A series is an owner, a name and a set of labels (in any order: they are kept
sorted). It holds an aggregate (``services/sketches.py``: count, min, max,
sum and a DDSketch) for all time and one per minute of its samples' time.
A stream collects its samples into sketches per (series, minute) in memory
and merges them into the stored ones (``MetricStore.merge_metrics``) every
``FLUSH_SECONDS`` and at its end: the store keeps sketches, never samples.

The store names the series (``MetricStore.add_metric_series``: one id per
series, whichever replica adds it) and counts them against ``max_series``;
the server keeps those it has seen in memory (``_Registry``, read at start-up
and, before each listing, those added since). A stream may touch
``STREAM_SERIES`` series and the server hold ``max_series``; samples of a new
series beyond either go to the owner's overflow series.

A push named by the client (``push_id``) resumes like a batch: each message
says the push index of its first sample, the store keeps the push's next
index in the transaction of each merge, and a re-sent sample below it is
skipped, so each is counted once whatever stream and run sent it.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, ClassVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import Lease, MetricDelta, MetricSeries, MetricStore, Presence, PushMark, StoredMetric
from streamcli.backends.ephemeral import LocalPresence
from streamcli.credentials import Credentials
from streamcli.services import sketches
from streamcli.services.batches import END_TIME, FIRST_TIME
from streamcli.services.checks import MalformedRequest, has_control, id_problem, page_offset, quoted
from streamcli.services.logs import Retention, timestamp
from streamcli.services.rpc import Context, abort

NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:./-]{0,199}")
LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 1024  # characters
MAX_SAMPLES_PER_REQUEST = 10_000
#: Series one stream may touch (OpenTelemetry's default cardinality limit); more go to the overflow series.
STREAM_SERIES = 2000
#: The presence scope of named pushes being sent: one stream per push at a time, on every replica.
PUSHES_SCOPE = "metric-pushes"
#: Default of ``serve --max-series``: series the server holds, every owner's together.
DEFAULT_MAX_SERIES = 100_000
#: Seconds between a stream's merges into the store (and (series, minute) sketches held before one).
FLUSH_SECONDS = 5.0
FLUSH_ENTRIES = 20_000
DEFAULT_ERRORS, MAX_ERRORS = 100, 10_000
#: Series whose stored sketches are read at a time to answer a stream.
SUMMARY_STEP = 250
MAX_PAGE, MAX_QUANTILES, MAX_TREND_POINTS = 1000, 101, 120
#: Default of ``serve --metric-retention``: how long per-minute sketches are kept (all-time ones for ever).
DEFAULT_MINUTE_RETENTION = 30 * 86400.0

#: A series' identity within an owner's: its name and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]
#: Why a sample is refused: the reason counted, and what was wrong.
Refusal = tuple[str, str]


def series_problem(key: Key) -> Refusal | None:
    """Why samples of the series ``key`` are refused, or None."""
    name, labels = key
    if not NAME.fullmatch(name):
        detail = "name is empty" if not name else f"name {quoted(name)} is not a metric name"
        return "invalid_name", detail
    if len(labels) > MAX_LABELS:
        return "too_many_labels", f"{len(labels)} labels; at most {MAX_LABELS}"
    for label, value in labels:
        if not LABEL_KEY.fullmatch(label):
            return "invalid_label", f"label {quoted(label)} is not a label name"
        if len(value) > MAX_LABEL_VALUE:
            return "oversized_label", f"label {label} is {len(value)} characters; at most {MAX_LABEL_VALUE}"
        if has_control(value, multiline=True):  # (Prometheus text escapes a newline in a value: it may hold one)
            return "invalid_label", f"label {label} has a control character other than newline and tab"
    return None


def labels_text(labels: Iterable[tuple[str, str]]) -> str:
    """The stored form of a series' labels: JSON with sorted keys."""
    return json.dumps(dict(sorted(labels)), ensure_ascii=False, separators=(",", ":"))


def _merge_stored(stored: bytes, delta: bytes) -> bytes:
    sketch = sketches.decode(stored)
    sketches.merge(sketch, sketches.decode(delta))
    return sketches.encode(sketch)


class _Registry:
    """The series this server has seen, by identity and by id: a cache of the store's (which names them)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str, str], MetricSeries] = {}
        self.by_id: dict[int, MetricSeries] = {}
        self.last_id = 0  # the highest id known: the store's series up to it are all here

    def keep(self, series: MetricSeries) -> MetricSeries:
        self.by_key[(series.owner, series.name, series.labels)] = series
        self.by_id[series.series_id] = series
        return series

    async def refresh(self, store: MetricStore) -> None:
        """Learn the series the store added since (other streams', other replicas')."""
        for series in await store.metric_series(self.last_id):
            self.keep(series)
            self.last_id = max(self.last_id, series.series_id)


class _Stream:
    """What one CollectMetrics stream holds: its verdict per series, its pending sketches, its counts."""

    def __init__(self, owner: str, push_id: str, next_index: int, errors: int, lease: Lease | None = None) -> None:
        self.owner = owner
        self.push_id = push_id
        self.lease = lease  # a named push's: this stream is the one sending it
        self.next_index = next_index  # with a push: its next index; else samples received
        self.errors = errors
        self.verdicts: dict[Key, int | Refusal] = {}  # series id, or why its samples are refused
        self.touched: set[int] = set()  # series ids (the limit counts those not overflow)
        self.overflow_id = 0
        self.pending: dict[tuple[int, int], Any] = {}  # (series id, minute) -> sketch
        self.response = pb.CollectMetricsResponse()
        self.flushed_at = time.monotonic()

    def refuse(self, index: int, reason: str, detail: str) -> None:
        self.response.refused[reason] += 1
        if len(self.response.errors) < self.errors:
            self.response.errors.add(index=index, reason=reason, detail=detail)


class MetricService:
    """The metric RPCs of ``StreamingService``; see the module's docstring."""

    #: The RPCs of the contract this class implements (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("CollectMetrics", "ListMetricSeries")

    def __init__(
        self,
        store: MetricStore,
        credentials: Credentials | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        minute_retention: float | None = DEFAULT_MINUTE_RETENTION,
        presence: Presence | None = None,
    ) -> None:
        self._store = store
        self._presence = presence or LocalPresence()  # (the backend's: shared by replicas)
        self._credentials = credentials or Credentials()
        self._max_series = max_series
        self._minute_retention = minute_retention  # seconds; None: per-minute sketches are kept for ever
        self._registry = _Registry()

    async def load(self) -> None:
        """Read the series the store holds (before serving; ListMetricSeries reads those added since)."""
        await self._registry.refresh(self._store)

    # --- ingest ------------------------------------------------------------------------------------

    async def CollectMetrics(
        self, request_iterator: AsyncIterator[pb.CollectMetricsRequest], context: Context
    ) -> pb.CollectMetricsResponse:
        owner = self._credentials.caller(context.invocation_metadata()).user or ""
        stream: _Stream | None = None
        number = 0
        try:
            try:
                async for request in request_iterator:
                    if stream is None:
                        stream = await self._open(request, owner, context)
                    problem = _message_problem(request, number, stream)
                    if problem:
                        await self._fail(stream, context, grpc.StatusCode.INVALID_ARGUMENT, problem)
                    if stream.push_id and request.first_index > stream.next_index:
                        await self._fail(
                            stream,
                            context,
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"message {number} starts at index {request.first_index}, beyond the next the push "
                            f"expects, {stream.next_index}",
                        )
                    await self._take(stream, request)
                    number += 1
                    if len(stream.pending) >= FLUSH_ENTRIES or time.monotonic() - stream.flushed_at >= FLUSH_SECONDS:
                        await self._flush(stream)
            except MalformedRequest as exc:
                if stream is None:
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.detail)
                await self._fail(stream, context, grpc.StatusCode.INVALID_ARGUMENT, exc.detail)
            if stream is None:  # an empty stream: nothing received
                return pb.CollectMetricsResponse()
            await self._flush(stream)
            response = stream.response
            if stream.push_id:
                response.next_index = stream.next_index
            touched = sorted((self._registry.by_id[i] for i in stream.touched), key=_order)
            for start in range(0, len(touched), SUMMARY_STEP):  # (a step's stored sketches at a time)
                step = touched[start : start + SUMMARY_STEP]
                stored = await self._store.stored_metrics([s.series_id for s in step], None)
                response.summaries.extend(summary(s, stored[s.series_id], ()) for s in step if s.series_id in stored)
            return response
        finally:
            if stream is not None and stream.lease is not None:
                await asyncio.shield(stream.lease.leave())

    async def _open(self, request: pb.CollectMetricsRequest, owner: str, context: Context) -> _Stream:
        push_id = request.push_id
        if push_id and (problem := id_problem("push_id", push_id)):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if not push_id and request.first_index:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "first_index is set without a push_id")
        errors = min(request.max_errors, MAX_ERRORS) if request.max_errors else DEFAULT_ERRORS
        if not push_id:
            return _Stream(owner, "", 0, errors)
        lease = await self._presence.join(PUSHES_SCOPE, f"{owner}/{push_id}", exclusive=True)  # (no '/' in a push_id)
        if lease is None:
            await abort(context, grpc.StatusCode.ABORTED, f"another stream is sending push {quoted(push_id)}")
        try:
            return _Stream(owner, push_id, await self._store.push_position(owner, push_id), errors, lease)
        except BaseException:
            await asyncio.shield(lease.leave())
            raise

    async def _take(self, stream: _Stream, request: pb.CollectMetricsRequest) -> None:
        """Count the samples of one message not held yet into the stream's pending sketches."""
        samples = request.metrics
        response = stream.response
        response.metrics_received += len(samples)
        if stream.push_id:
            first = request.first_index
            skip = min(stream.next_index - first, len(samples))
            response.duplicates += skip
        else:
            first, skip = stream.next_index, 0
        verdicts = stream.verdicts
        keys: list[Key] = [
            (sample.name, tuple([(k, sample.labels[k]) for k in sorted(sample.labels)]) if sample.labels else ())
            for sample in samples[skip:]
        ]
        for key in keys:  # (the series new to the stream, in the order they come: the store names them)
            if key not in verdicts:
                verdicts[key] = await self._admit(stream, key)
        isfinite = math.isfinite
        now_minute = int(time.time()) // 60
        values: dict[tuple[int, int], list[float]] = {}  # (series id, minute) -> this message's values
        accepted = overflowed = 0
        for offset, key in enumerate(keys, start=skip):
            sample = samples[offset]
            target = verdicts[key]
            if isinstance(target, tuple):
                stream.refuse(first + offset, *target)
                continue
            value = sample.value
            if not isfinite(value):
                stream.refuse(first + offset, "not_finite", f"value is {value} (not a finite number)")
                continue
            if sample.HasField("timestamp"):
                seconds = sample.timestamp.seconds
                if not FIRST_TIME <= seconds < END_TIME:
                    stream.refuse(first + offset, "invalid_time", "timestamp is outside 1970-2099")
                    continue
                minute = seconds // 60
            else:
                minute = now_minute
            found = values.get((target, minute))
            if found is None:
                found = values[(target, minute)] = []
            found.append(value)
            accepted += 1
            overflowed += target == stream.overflow_id
        for entry, taken in values.items():  # one sketch update per (series, minute) and bin
            sketch = stream.pending.get(entry)
            if sketch is None:
                sketch = stream.pending[entry] = sketches.new_sketch()
            sketches.add_all(sketch, taken)
        response.metrics_accepted += accepted
        response.overflowed += overflowed
        stream.next_index = max(stream.next_index, first + len(samples))

    async def _admit(self, stream: _Stream, key: Key) -> int | Refusal:
        """The series id the samples of ``key`` go to in this stream (the overflow series' beyond a limit),
        or why they are refused."""
        problem = series_problem(key)
        if problem is not None:
            return problem
        name, labels = key
        text = labels_text(labels)
        registry = self._registry
        series = None
        if len(stream.touched) - bool(stream.overflow_id) < STREAM_SERIES:  # (ordinary series it touched)
            series = registry.by_key.get((stream.owner, name, text))
            if series is None and (
                added := await self._store.add_metric_series(stream.owner, name, text, False, self._max_series)
            ):
                series = registry.keep(added)
        if series is None:  # over the stream's limit, or the server's
            series = registry.by_key.get((stream.owner, "", "{}"))
            if series is None:
                added = await self._store.add_metric_series(stream.owner, "", "{}", True, self._max_series)
                assert added is not None  # (an overflow series is never over the limit)
                series = registry.keep(added)
            stream.overflow_id = series.series_id
        stream.touched.add(series.series_id)
        return series.series_id

    async def _flush(self, stream: _Stream) -> None:
        """Merge the stream's pending sketches (and its push's position) into the store."""
        parts: dict[int, list[tuple[int, Any]]] = {}
        pending, stream.pending = stream.pending, {}
        while pending:  # (each sketch let go once encoded: memory holds the one or the other)
            (series_id, minute), sketch = pending.popitem()
            parts.setdefault(series_id, []).append((minute, sketch))
        deltas = []
        while parts:
            series_id, minutes = parts.popitem()
            encoded = tuple((minute, sketches.encode(sketch)) for minute, sketch in minutes)
            if len(minutes) == 1:
                total = encoded[0][1]
            else:
                merged = sketches.new_sketch()
                for _, sketch in minutes:
                    sketches.merge(merged, sketch)
                total = sketches.encode(merged)
            del minutes
            deltas.append(MetricDelta(series_id, total, encoded))
        push = PushMark(stream.owner, stream.push_id, stream.next_index) if stream.push_id else None
        if deltas or push is not None:
            await self._store.merge_metrics(deltas, _merge_stored, push)
        stream.flushed_at = time.monotonic()

    async def _fail(self, stream: _Stream, context: Context, code: grpc.StatusCode, detail: str) -> None:
        """Keep what the stream's earlier messages brought, then end it with ``code``."""
        await self._flush(stream)
        if stream.push_id:
            held = f"the push holds samples 0-{stream.next_index - 1}" if stream.next_index else "none is held"
            await abort(context, code, f"{detail}; {held}", (("next-index", str(stream.next_index)),))
        await abort(context, code, f"{detail}; the {stream.response.metrics_accepted} samples before it are stored")

    # --- reading -----------------------------------------------------------------------------------

    async def ListMetricSeries(
        self, request: pb.ListMetricSeriesRequest, context: Context
    ) -> pb.ListMetricSeriesResponse:
        if not 0 <= request.page_size <= MAX_PAGE:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be 0-{MAX_PAGE}")
        offset = page_offset(request.page_token)
        if offset is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this server gave")
        quantiles = tuple(request.quantiles)
        if len(quantiles) > MAX_QUANTILES or not all(0 <= q <= 1 for q in quantiles):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"quantiles: at most {MAX_QUANTILES}, each 0-1")
        points = request.trend_points
        if points > MAX_TREND_POINTS:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"trend_points must be 0-{MAX_TREND_POINTS}")
        kept = self.first_kept_minute()
        since: int | None = None
        response = pb.ListMetricSeriesResponse()
        if request.HasField("since"):
            if not FIRST_TIME <= request.since.seconds < END_TIME:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "since is outside 1970-2099")
            since = request.since.seconds // 60
            if since < kept:  # (minutes before it may be deleted already, or at the next housekeeping)
                since = kept
                response.kept_since.seconds = kept * 60
        user = self._credentials.caller(context.invocation_metadata()).user
        await self._registry.refresh(self._store)  # (series other replicas added)
        wanted = dict(request.labels)
        chosen = sorted(
            (
                series
                for series in self._registry.by_id.values()
                if (user is None or series.owner == user)
                and (not request.name or series.name == request.name)
                and (not wanted or _has_labels(series, wanted))
            ),
            key=_order,
        )
        size = request.page_size or 100
        now = int(time.time()) // 60
        # With ``since``, series without samples since then are left out: read on until the page is full.
        while chosen[offset:] and len(response.series) < size:
            step = chosen[offset : offset + size - len(response.series)]
            ids = [s.series_id for s in step]
            stored = await self._store.stored_metrics(ids, since)
            by_minute = stored if since is not None or not points else await self._store.stored_metrics(ids, kept)
            for s in step:
                if s.series_id in stored:
                    answer = summary(s, stored[s.series_id], quantiles)
                    if points:
                        answer.trend.extend(trend(by_minute.get(s.series_id), since, now, points))
                    response.series.append(answer)
            offset += len(step)
        if chosen[offset:]:
            response.next_page_token = str(offset)
        return response

    # --- retention ---------------------------------------------------------------------------------

    def first_kept_minute(self) -> int:
        """The oldest minute whose per-minute sketches ``serve --metric-retention`` keeps (0: all of them)."""
        if self._minute_retention is None:
            return 0
        return max(0, int(time.time() - self._minute_retention) // 60)

    async def expire(self, retention: Retention) -> int:
        """Forget the positions of pushes idle for longer than the retention's age and the per-minute sketches
        older than ``minute_retention``; returns how many pushes."""
        if self._minute_retention is not None:
            await self._store.forget_metric_minutes(self.first_kept_minute())
        return await self._store.forget_pushes(time.time() - retention.producer_idle_limit)


def summary(series: MetricSeries, held: StoredMetric, quantiles: Sequence[float]) -> pb.MetricSummary:
    """What a client sees of a series: the aggregates ``held`` merged, with p50/p90/p99 and ``quantiles``."""
    sketch = sketches.decode(held.aggregates[0])
    for more in held.aggregates[1:]:
        sketches.merge(sketch, sketches.decode(more))
    count = sketch.count
    p50, p90, p99 = (sketches.quantile(sketch, q) for q in sketches.SUMMARY_QUANTILES)
    return pb.MetricSummary(
        name=series.name,
        labels=json.loads(series.labels),
        count=int(count),
        min=sketch._min if count else 0.0,
        max=sketch._max if count else 0.0,
        sum=sketch._sum,
        mean=sketch._sum / count if count else 0.0,
        p50=p50,
        p90=p90,
        p99=p99,
        owner=series.owner,
        overflow=series.overflow,
        updated_at=timestamp(held.updated_at),
        quantiles=[pb.MetricQuantile(quantile=q, value=sketches.quantile(sketch, q)) for q in quantiles],
    )


def trend(held: StoredMetric | None, since: int | None, now: int, points: int) -> list[pb.MetricTrendPoint]:
    """The per-minute sketches ``held`` in at most ``points`` equal steps of whole minutes, from ``since`` (else
    the first minute held) to the current minute ``now`` (or the last minute held, when later)."""
    minutes, aggregates = (held.minutes, held.aggregates) if held is not None else ((), ())
    if not minutes and since is None:
        return []
    first = since if since is not None else minutes[0]
    last = max(now, minutes[-1]) if minutes else now
    span = max(1, last - first + 1)
    step = -(-span // points)  # (minutes per point, rounded up)
    sketch_of: dict[int, Any] = {}
    for minute, aggregate in zip(minutes, aggregates, strict=True):
        index = (minute - first) // step
        if index >= 0:
            found = sketch_of.get(index)
            if found is None:
                sketch_of[index] = sketches.decode(aggregate)
            else:
                sketches.merge(found, sketches.decode(aggregate))
    result = []
    for index in range(-(-span // step)):
        point = pb.MetricTrendPoint(start=timestamp((first + index * step) * 60.0), minutes=step)
        sketch = sketch_of.get(index)
        if sketch is not None and sketch.count:
            point.count = int(sketch.count)
            point.p50 = sketches.quantile(sketch, 0.5)
            point.p99 = sketches.quantile(sketch, 0.99)
        result.append(point)
    return result


def _has_labels(series: MetricSeries, wanted: dict[str, str]) -> bool:
    labels = json.loads(series.labels)
    return all(labels.get(k) == v for k, v in wanted.items())


def _order(series: MetricSeries) -> tuple[str, str, str]:
    return series.name, series.labels, series.owner


def _message_problem(request: pb.CollectMetricsRequest, number: int, stream: _Stream) -> str:
    """Why message ``number`` of a stream cannot be used, or ""."""
    if len(request.metrics) > MAX_SAMPLES_PER_REQUEST:
        return f"message {number} holds {len(request.metrics)} samples; at most {MAX_SAMPLES_PER_REQUEST}"
    if number and request.push_id and request.push_id != stream.push_id:
        return f"message {number} names another push_id than the stream's first message"
    if not stream.push_id and request.first_index:
        return f"message {number} has a first_index without a push_id"
    return ""
