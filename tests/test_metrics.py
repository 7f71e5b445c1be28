"""CollectMetrics and ListMetricSeries against the real server: quantile accuracy across streams and restarts,
series identity, refusals, cardinality limits, resumable pushes, windows and access."""

from __future__ import annotations

import asyncio
import math
import pathlib
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.server.app import RunningServer
from streamcli.services import metrics
from tests.support.servers import client, running_server

Metadata = tuple[tuple[str, str], ...]
#: The tests that run a server run once per backend (tests/conftest.py).
ON_EACH_BACKEND = True


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


def sample(name: str, value: float, seconds: int | None = None, **labels: str) -> pb.MetricData:
    data = pb.MetricData(name=name, value=value, labels=labels)
    if seconds is not None:
        data.timestamp.CopyFrom(Timestamp(seconds=seconds))
    return data


def messages(samples: Sequence[pb.MetricData], size: int = 5000, **fields: object) -> list[pb.CollectMetricsRequest]:
    return [
        pb.CollectMetricsRequest(metrics=samples[start : start + size], **fields)  # type: ignore[arg-type]
        for start in range(0, len(samples), size)
    ] or [pb.CollectMetricsRequest(**fields)]  # type: ignore[arg-type]


async def collect(
    conn: Connection, requests: Sequence[pb.CollectMetricsRequest], metadata: Metadata = ()
) -> pb.CollectMetricsResponse:
    response: pb.CollectMetricsResponse = await conn.stub.CollectMetrics(
        list(requests), metadata=metadata or conn.metadata
    )
    return response


async def series(conn: Connection, metadata: Metadata = (), **request: object) -> list[pb.MetricSummary]:
    response = await conn.stub.ListMetricSeries(
        pb.ListMetricSeriesRequest(**request),  # type: ignore[arg-type]
        metadata=metadata or conn.metadata,
    )
    return list(response.series)


def assert_quantiles_within_one_percent(summary: pb.MetricSummary, values: np.ndarray) -> None:
    # The exact quantile at rank floor(q * (n - 1)), the rank DDSketch answers for.
    exact = np.quantile(values, [0.5, 0.9, 0.99], method="lower")
    for got, want in zip((summary.p50, summary.p90, summary.p99), exact, strict=True):
        assert abs(got - want) <= 0.01 * abs(want), (got, want)
    assert summary.count == len(values)
    assert (summary.min, summary.max) == (values.min(), values.max())
    assert math.isclose(summary.sum, float(values.sum()), rel_tol=1e-9)


async def test_quantiles_of_a_million_lognormal_samples_hold_across_streams_and_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    rng = np.random.default_rng(20)
    first = rng.lognormal(0.0, 1.0, 500_000)
    second = rng.lognormal(1.5, 0.5, 500_000)  # another shape: the merge must matter
    async with running_server(tmp_path / "data") as server, client(server.address) as conn:
        await collect(conn, messages([sample("latency", v, route="/a") for v in first.tolist()]))
        [one] = await series(conn)
        assert_quantiles_within_one_percent(one, first)
        response = await collect(conn, messages([sample("latency", v, route="/a") for v in second.tolist()]))
        assert (response.metrics_received, response.metrics_accepted) == (500_000, 500_000)
        [merged] = response.summaries
        assert_quantiles_within_one_percent(merged, np.concatenate([first, second]))
    async with running_server(tmp_path / "data") as server, client(server.address) as conn:
        [again] = await series(conn, name="latency")
        assert_quantiles_within_one_percent(again, np.concatenate([first, second]))
        assert dict(again.labels) == {"route": "/a"}


async def test_label_order_never_changes_a_series(conn: Connection) -> None:
    forward = pb.MetricData(name="m", value=1.0, labels={"a": "1", "b": "2", "c": "3"})
    backward = pb.MetricData(name="m", value=3.0)
    for key in ("c", "b", "a"):
        backward.labels[key] = forward.labels[key]
    response = await collect(conn, [pb.CollectMetricsRequest(metrics=[forward, backward])])
    await collect(conn, [pb.CollectMetricsRequest(metrics=[backward])])
    [one] = await series(conn)
    assert (one.count, one.min, one.max, one.mean) == (3, 1.0, 3.0, 7 / 3)
    assert [s.count for s in response.summaries] == [2]
    assert len(await series(conn, labels={"b": "2"})) == 1
    assert await series(conn, labels={"b": "9"}) == []


async def test_refused_samples_are_counted_by_reason_and_the_stream_goes_on(conn: Connection) -> None:
    bad = {
        1: (sample("m", math.nan), "not_finite"),
        2: (sample("m", math.inf), "not_finite"),
        3: (sample("m", -math.inf), "not_finite"),
        5: (sample("", 1.0), "invalid_name"),
        6: (sample("9lives", 1.0), "invalid_name"),
        7: (pb.MetricData(name="m", value=1.0, labels={f"l{n}": "v" for n in range(33)}), "too_many_labels"),
        8: (pb.MetricData(name="m", value=1.0, labels={"bad key": "v"}), "invalid_label"),
        9: (sample("m", 1.0, host="a\x1bb\n"), "invalid_label"),
        10: (sample("m", 1.0, host="x" * 1025), "oversized_label"),
        11: (pb.MetricData(name="m", value=1.0, timestamp=Timestamp(seconds=-60)), "invalid_time"),
    }
    samples = [bad[i][0] if i in bad else sample("m", float(i)) for i in range(15)]
    response = await collect(conn, messages(samples, size=4))
    assert response.metrics_received == 15
    assert response.metrics_accepted == 5
    assert dict(response.refused) == {
        "not_finite": 3,
        "invalid_name": 2,
        "too_many_labels": 1,
        "invalid_label": 2,
        "oversized_label": 1,
        "invalid_time": 1,
    }
    assert [(e.index, e.reason) for e in response.errors] == [(i, reason) for i, (_, reason) in sorted(bad.items())]
    assert "not a finite number" in response.errors[0].detail
    [one] = response.summaries
    assert (one.name, one.count, one.min, one.max) == ("m", 5, 0.0, 14.0)
    limited = await collect(conn, [pb.CollectMetricsRequest(metrics=samples, max_errors=2)])
    assert len(limited.errors) == 2 and sum(limited.refused.values()) == 10


async def test_a_stream_touches_at_most_2000_series_the_rest_counted_in_the_overflow_series(
    conn: Connection,
) -> None:
    samples = [sample("requests", 1.0, user=f"u{n}") for n in range(metrics.STREAM_SERIES + 50)]
    samples += [sample("requests", 2.0, user="u0"), sample("requests", 5.0, user="u-new")]
    response = await collect(conn, messages(samples, size=1000))
    assert response.metrics_accepted == len(samples)
    assert response.overflowed == 51
    overflow = [s for s in response.summaries if s.overflow]
    assert [(s.name, dict(s.labels), s.count, s.max) for s in overflow] == [("", {}, 51, 5.0)]
    assert len(response.summaries) == metrics.STREAM_SERIES + 1
    # Another stream may touch the series the first could not.
    later = await collect(conn, [pb.CollectMetricsRequest(metrics=[sample("requests", 1.0, user="u2049")])])
    assert [(s.labels["user"], s.overflow) for s in later.summaries] == [("u2049", False)]


async def test_the_server_wide_limit_sends_new_series_to_the_overflow_series(
    tmp_path: pathlib.Path, backend: str
) -> None:
    async with (
        running_server(tmp_path / "data", backend=backend, max_series=3) as server,
        client(server.address) as conn,
    ):
        first = [sample("m", float(n), k=str(n)) for n in range(5)]
        response = await collect(conn, [pb.CollectMetricsRequest(metrics=first)])
        assert response.overflowed == 2
        again = [sample("m", 10.0, k="0"), sample("m", 20.0, k="9")]
        response = await collect(conn, [pb.CollectMetricsRequest(metrics=again)])
        assert response.overflowed == 1
        found = {(s.labels.get("k"), s.overflow): s.count for s in await series(conn)}
        assert found == {("0", False): 2, ("1", False): 1, ("2", False): 1, (None, True): 3}


async def test_a_named_push_takes_each_index_once_across_streams(conn: Connection) -> None:
    values = [sample("bytes", float(n)) for n in range(150)]
    first = await collect(conn, [pb.CollectMetricsRequest(push_id="p1", metrics=values[:100])])
    assert first.next_index == 100
    resent = [pb.CollectMetricsRequest(push_id="p1", first_index=50, metrics=values[50:])]
    second = await collect(conn, resent)
    assert (second.next_index, second.duplicates, second.metrics_accepted) == (150, 50, 50)
    [one] = second.summaries
    assert (one.count, one.sum) == (150, sum(range(150)))
    query = await collect(conn, [pb.CollectMetricsRequest(push_id="p1")])
    assert (query.next_index, query.metrics_received) == (150, 0)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await collect(conn, [pb.CollectMetricsRequest(push_id="p1", first_index=151, metrics=values[:1])])
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("next-index", "150") in tuple(failure.value.trailing_metadata() or ())


async def one_push_at_a_time(first: Connection, second: Connection) -> None:
    """Two streams of push p1 at once, through ``first`` and ``second``: one is refused ABORTED, the other
    (whichever opened first) goes on, and the push is free for the next stream once it ends."""
    go = asyncio.Event()

    async def held(values: Sequence[pb.MetricData]) -> AsyncIterator[pb.CollectMetricsRequest]:
        yield pb.CollectMetricsRequest(push_id="p1", metrics=values)
        await go.wait()

    calls = [
        asyncio.ensure_future(conn.stub.CollectMetrics(held([sample("m", float(n))]), metadata=conn.metadata))
        for n, conn in enumerate((first, second))
    ]
    done, _ = await asyncio.wait(calls, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1  # the refused one ends at once; the other waits for go
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await done.pop()
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert "another stream is sending push 'p1'" in (refused.value.details() or "")
    go.set()
    winner = await next(c for c in calls if not c.done() or c.exception() is None)
    assert (winner.next_index, winner.metrics_received) == (1, 1)
    again = await collect(second, [pb.CollectMetricsRequest(push_id="p1", first_index=1, metrics=[sample("m", 9.0)])])
    assert again.next_index == 2


async def test_a_named_push_is_sent_by_one_stream_at_a_time(conn: Connection) -> None:
    await one_push_at_a_time(conn, conn)


async def test_since_counts_the_minutes_from_that_time(conn: Connection) -> None:
    now = int(time.time())
    old = [sample("temp", 100.0, now - 7200), sample("temp", 50.0, now - 3600)]
    recent = [sample("temp", 1.0, now - 60), sample("temp", 3.0)]
    await collect(conn, [pb.CollectMetricsRequest(metrics=old + recent)])
    [whole] = await series(conn)
    assert (whole.count, whole.max) == (4, 100.0)
    [window] = await series(conn, since=Timestamp(seconds=now - 600))
    assert (window.count, window.min, window.max, window.mean) == (2, 1.0, 3.0, 2.0)
    assert await series(conn, since=Timestamp(seconds=now + 3600)) == []


async def test_quantiles_on_request_and_pages(conn: Connection) -> None:
    await collect(
        conn, [pb.CollectMetricsRequest(metrics=[sample(f"m{n}", float(v)) for n in range(3) for v in range(1, 101)])]
    )
    page = await conn.stub.ListMetricSeries(pb.ListMetricSeriesRequest(page_size=2, quantiles=[0.0, 0.25, 1.0]))
    assert [s.name for s in page.series] == ["m0", "m1"]
    assert [(q.quantile, round(q.value)) for q in page.series[0].quantiles] == [(0.0, 1), (0.25, 25), (1.0, 100)]
    rest = await conn.stub.ListMetricSeries(pb.ListMetricSeriesRequest(page_size=2, page_token=page.next_page_token))
    assert [s.name for s in rest.series] == ["m2"] and not rest.next_page_token


async def test_a_user_token_sees_only_its_own_series(tmp_path: pathlib.Path, backend: str) -> None:
    tokens = {"alice": "ta", "bob": "tb"}
    alice: Metadata = (("authorization", "Bearer ta"),)
    bob: Metadata = (("authorization", "Bearer tb"),)
    service: Metadata = (("authorization", "Bearer service"),)
    async with (
        running_server(tmp_path / "data", backend=backend, token="service", user_tokens=tokens) as server,
        client(server.address) as conn,
    ):
        await collect(conn, [pb.CollectMetricsRequest(metrics=[sample("cpu", 1.0)])], alice)
        await collect(conn, [pb.CollectMetricsRequest(metrics=[sample("cpu", 2.0), sample("cpu", 4.0)])], bob)
        assert [(s.owner, s.count) for s in await series(conn, alice)] == [("alice", 1)]
        assert [(s.owner, s.count) for s in await series(conn, bob, name="cpu")] == [("bob", 2)]
        assert sorted((s.owner, s.count) for s in await series(conn, service)) == [("alice", 1), ("bob", 2)]
        # A push id is its owner's: bob's "p" is another push than alice's.
        await collect(conn, [pb.CollectMetricsRequest(push_id="p", metrics=[sample("x", 1.0)])], alice)
        reply = await collect(conn, [pb.CollectMetricsRequest(push_id="p")], bob)
        assert reply.next_index == 0


async def test_a_trend_counts_each_step_of_whole_minutes(conn: Connection) -> None:
    first = int(time.time()) // 60 - 9  # ten minutes back, the current one included
    at = [first * 60 + 5] * 100 + [(first + 4) * 60 + 59] + [(first + 8) * 60] * 2
    values = [float(v) for v in range(1, 101)] + [10.0, 4.0, 6.0]
    await collect(
        conn, [pb.CollectMetricsRequest(metrics=[sample("lat", v, s) for v, s in zip(values, at, strict=True)])]
    )
    [windowed] = await series(conn, since=Timestamp(seconds=first * 60 + 30), trend_points=10)
    steps = windowed.trend  # (ten steps of a minute; eleven if the minute turned since `first` was taken)
    assert [p.minutes for p in steps] == [1] * len(steps) and len(steps) in (10, 11)
    assert steps[0].start.seconds == first * 60  # (the minute `since` falls in counts whole)
    assert [p.count for p in steps[:9]] == [100, 0, 0, 0, 1, 0, 0, 0, 2]
    assert math.isclose(steps[0].p50, 50.0, rel_tol=0.01) and math.isclose(steps[0].p99, 99.0, rel_tol=0.01)
    assert (steps[1].p50, steps[1].p99) == (0.0, 0.0)
    assert math.isclose(steps[4].p50, 10.0, rel_tol=0.01)
    # Without since: from the series' first minute kept; fewer points than minutes make longer steps.
    [whole] = await series(conn, trend_points=3)
    assert [p.minutes for p in whole.trend] == [4] * len(whole.trend) and len(whole.trend) == 3
    assert whole.trend[0].start.seconds == first * 60
    assert [p.count for p in whole.trend][:2] == [100, 1] and whole.count == 103
    [plain] = await series(conn)
    assert not plain.trend
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await series(conn, trend_points=metrics.MAX_TREND_POINTS + 1)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "trend_points" in (
        failure.value.details() or ""
    )


async def test_per_minute_sketches_expire_after_the_retention_and_all_time_ones_stay(
    tmp_path: pathlib.Path, backend: str
) -> None:
    now = int(time.time())
    async with (
        running_server(
            tmp_path / "data", backend=backend, metric_retention=3600.0, housekeeping_interval=0.05
        ) as server,
        client(server.address) as conn,
    ):
        samples = [sample("disk", 7.0, now - 7200), sample("disk", 1.0, now - 600), sample("disk", 3.0, now - 540)]
        await collect(conn, [pb.CollectMetricsRequest(metrics=samples)])
        # A --since beyond the retention counts from the oldest minute kept, and says so.
        answer = await conn.stub.ListMetricSeries(pb.ListMetricSeriesRequest(since=Timestamp(seconds=now - 10_800)))
        [window] = answer.series
        assert (window.count, window.max) == (2, 3.0)
        assert answer.HasField("kept_since") and now - 3700 <= answer.kept_since.seconds <= now - 3500
        inside = await conn.stub.ListMetricSeries(pb.ListMetricSeriesRequest(since=Timestamp(seconds=now - 1800)))
        assert not inside.HasField("kept_since") and inside.series[0].count == 2
        # Housekeeping deletes the minute older than the retention; the all-time aggregate keeps its sample.
        [series_id] = [s.series_id for s in await server.backend.metrics.metric_series()]
        deadline = time.monotonic() + 30
        while (await server.backend.metrics.stored_metrics([series_id], 0))[series_id].minutes[0] < now // 60 - 60:
            assert time.monotonic() < deadline, "the old minute was never deleted"
            await asyncio.sleep(0.05)
        assert [
            m - now // 60 for m in (await server.backend.metrics.stored_metrics([series_id], 0))[series_id].minutes
        ] == [
            (now - 600) // 60 - now // 60,
            (now - 540) // 60 - now // 60,
        ]
        [whole] = await series(conn)
        assert (whole.count, whole.max) == (3, 7.0)


def test_serve_refuses_a_metric_retention_under_a_minute(tmp_path: pathlib.Path) -> None:
    from streamcli.errors import UsageError
    from streamcli.server.app import ServerConfig

    with pytest.raises(UsageError, match="--metric-retention"):
        ServerConfig(data_dir=tmp_path, metric_retention=30.0).validate()
