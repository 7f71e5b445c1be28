"""ProcessLiveData against the real server: windowed statistics checked against hand-computed values, the
anomaly rule, time windows, late inputs, in-band errors, the key cap, refused options and flow control.

Every expected number below is worked out by hand in the comment beside it, not by the code under test.
"""

from __future__ import annotations

import asyncio
import math
import pathlib
from collections.abc import AsyncIterator, Sequence

import grpc
import psutil
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.server.app import RunningServer
from streamcli.services import processing
from tests.support.servers import client, serve_process


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


def data(key: str, value: float, seconds: int | None = None, sequence: int = 0) -> pb.DataInput:
    item = pb.DataInput(sequence=sequence, key=key, value=value)
    if seconds is not None:
        item.timestamp.CopyFrom(Timestamp(seconds=seconds))
    return item


def numbered(*inputs: pb.DataInput) -> list[pb.DataInput]:
    for n, item in enumerate(inputs, start=1):
        item.sequence = n
    return list(inputs)


async def process(conn: Connection, requests: Sequence[pb.ProcessLiveDataRequest]) -> list[pb.ProcessLiveDataResponse]:
    call = conn.stub.ProcessLiveData(iter(requests), metadata=conn.metadata)
    return [response async for response in call]


async def results(conn: Connection, inputs: Sequence[pb.DataInput], **options: object) -> list[pb.ProcessingResult]:
    responses = await process(conn, [pb.ProcessLiveDataRequest(inputs=inputs, **options)])  # type: ignore[arg-type]
    return [r for response in responses for r in response.results]


def row(r: pb.ProcessingResult) -> tuple[object, ...]:
    """A result's statistics: (mean, min, max, stddev, z, window count, count, anomaly)."""
    return (r.moving_average, r.min, r.max, r.stddev, r.z_score, r.window_count, r.count, r.anomaly)


def close(actual: tuple[object, ...], expected: tuple[object, ...]) -> bool:
    return all(
        math.isclose(a, e, rel_tol=1e-9, abs_tol=1e-12) if isinstance(e, float) else a == e
        for a, e in zip(actual, expected, strict=True)
    )


async def test_a_count_window_moving_statistics_and_the_z_score_against_the_window_before(conn: Connection) -> None:
    got = await results(conn, numbered(*(data("a", v) for v in (1, 2, 3, 4, 100))), window=3)
    expected = [
        # [1]: no prior samples, so no z-score.
        (1.0, 1.0, 1.0, 0.0, 0.0, 1, 1, False),
        # [1, 2]: mean 1.5, deviations +-0.5 -> sd 0.5; one prior sample: no z-score.
        (1.5, 1.0, 2.0, 0.5, 0.0, 2, 2, False),
        # [1, 2, 3]: mean 2, var (1 + 0 + 1) / 3 = 2/3; z of 3 against [1, 2] = (3 - 1.5) / 0.5 = 3: not over 3.
        (2.0, 1.0, 3.0, math.sqrt(2 / 3), 3.0, 3, 3, False),
        # [2, 3, 4] (1 left): mean 3, var 2/3; z of 4 against [1, 2, 3] = (4 - 2) / sqrt(2/3) = sqrt(6).
        (3.0, 2.0, 4.0, math.sqrt(2 / 3), math.sqrt(6), 3, 4, False),
        # [3, 4, 100]: mean 107/3; sum of squares 10025, minus 107^2/3 = 18626/3, var 18626/9;
        # z of 100 against [2, 3, 4] = (100 - 3) / sqrt(2/3) = 97 * sqrt(1.5).
        (107 / 3, 3.0, 100.0, math.sqrt(18626) / 3, 97 * math.sqrt(1.5), 3, 5, True),
    ]
    assert [r.sequence for r in got] == [1, 2, 3, 4, 5]
    assert [r.key for r in got] == ["a"] * 5 and [r.value for r in got] == [1, 2, 3, 4, 100]
    for result, want in zip(got, expected, strict=True):
        assert close(row(result), want), (row(result), want)


async def test_the_anomaly_rule_fires_in_a_window_of_10_and_follows_the_threshold(conn: Connection) -> None:
    # Ten samples alternating 10 and 12 (mean 11, sd exactly 1), then 20: z = (20 - 11) / 1 = 9.
    # Scored with 20 inside the window of 10 it could never pass 3 (Samuelson: at most sqrt(9) = 3).
    inputs = numbered(*(data("k", 10.0 if n % 2 == 0 else 12.0) for n in range(10)), data("k", 20.0))
    default = await results(conn, inputs)
    assert default[-1].z_score == 9.0 and default[-1].anomaly
    assert not any(r.anomaly for r in default[:-1])
    # The new window [12, 10, ..., 12, 20] (10 left): sum 10 * 11 - 10 + 20 = 120, mean 12.
    assert default[-1].moving_average == 12.0 and default[-1].window_count == 10
    assert not (await results(conn, inputs, z=9.0))[-1].anomaly  # 9 is not over 9
    assert (await results(conn, inputs, z=8.5))[-1].anomaly


@pytest.mark.parametrize("small_window", [processing.SMALL_WINDOW, 0])  # min()/max(), then monotonic queues
async def test_sliding_minimum_and_maximum_as_samples_leave(
    conn: Connection, small_window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processing, "SMALL_WINDOW", small_window)  # (the server runs in this process)
    got = await results(conn, numbered(*(data("m", v) for v in (5, 1, 4, 2, 3, 0))), window=3)
    # Windows: [5] [5,1] [5,1,4] [1,4,2] [4,2,3] [2,3,0].
    assert [(r.min, r.max) for r in got] == [(5, 5), (1, 5), (1, 5), (1, 4), (2, 4), (0, 3)]
    assert all(map(math.isclose, [r.moving_average for r in got], [5, 3, 10 / 3, 7 / 3, 3, 5 / 3]))


async def test_keys_have_windows_of_their_own(conn: Connection) -> None:
    got = await results(conn, numbered(data("a", 1), data("b", 100), data("a", 3), data("b", 300)))
    assert [(r.key, r.moving_average, r.count) for r in got] == [("a", 1, 1), ("b", 100, 1), ("a", 2, 2), ("b", 200, 2)]


async def test_a_time_window_holds_what_is_within_its_duration_and_late_inputs_are_flagged(conn: Connection) -> None:
    inputs = numbered(data("t", 1, 0), data("t", 3, 5), data("t", 5, 12), data("t", 7, 15), data("t", 100, 11))
    got = await results(conn, inputs, window_duration=Duration(seconds=10))
    expected = [
        (1.0, 1.0, 1.0, 0.0, 0.0, 1, 1, False),  # (-10, 0]: [1]
        (2.0, 1.0, 3.0, 1.0, 0.0, 2, 2, False),  # (-5, 5]: [1, 3]
        # (2, 12]: [3, 5] (time 0 left); z of 5 against [1, 3] (mean 2, sd 1) = 3.
        (4.0, 3.0, 5.0, 1.0, 3.0, 2, 3, False),
        # (5, 15]: [5, 7] (time 5 left: the window's start is open); z of 7 against [3, 5] = 3.
        (6.0, 5.0, 7.0, 1.0, 3.0, 2, 4, False),
        # Time 11 is before 15: late, scored against [5, 7] (z = (100 - 6) / 1 = 94) and not added.
        (6.0, 5.0, 7.0, 1.0, 94.0, 2, 5, True),
    ]
    for result, want in zip(got, expected, strict=True):
        assert close(row(result), want), (row(result), want)
    assert [r.late for r in got] == [False, False, False, False, True]


async def test_a_late_input_in_a_count_window_is_scored_not_added(conn: Connection) -> None:
    got = await results(conn, numbered(data("c", 2, 10), data("c", 4, 20), data("c", 9, 15), data("c", 6, 20)))
    assert [r.late for r in got] == [False, False, True, False]  # 20 again is not late: only earlier is
    # [2, 4] stays [2, 4] for the late 9 (z = (9 - 3) / 1 = 6: an anomaly, reported, not dropped); then [2, 4, 6].
    assert [(r.moving_average, r.window_count, r.count) for r in got] == [(2, 1, 1), (3, 2, 2), (3, 2, 3), (4, 3, 4)]
    assert got[2].z_score == 6.0 and got[2].anomaly


async def test_an_invalid_input_is_answered_in_band_and_the_stream_goes_on(conn: Connection) -> None:
    too_late = data("k", 1)
    too_late.timestamp.seconds = 253_402_300_800  # 10000-01-01
    inputs = numbered(
        data("", 1), data("k", math.nan), data("k", -math.inf), data("k" * 257, 1), too_late, data("k", 5)
    )
    responses = await process(
        conn,
        [pb.ProcessLiveDataRequest(inputs=inputs[:3]), pb.ProcessLiveDataRequest(inputs=inputs[3:])],
    )
    assert [len(r.results) for r in responses] == [3, 3]  # one response per request, in order
    got = [r for response in responses for r in response.results]
    assert [r.sequence for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r.error for r in got] == [
        "key is empty",
        "value is nan (not a finite number)",
        "value is -inf (not a finite number)",
        "key is 257 characters; at most 256",
        "timestamp is outside the years 0001-9999",
        "",
    ]
    assert (got[5].count, got[5].moving_average) == (1, 5)  # none of the refused ones counted for "k"


@pytest.mark.parametrize("window", [3, 100], ids=["small", "large"])
async def test_values_at_the_ends_of_the_doubles_range_do_not_end_the_stream(conn: Connection, window: int) -> None:
    # Finite, so processed: 1e308 and -1e308 overflow the mean and spread (the statistics say inf or nan), and
    # denormals make a spread whose square root per sample is 0 (no z-score). Both ended the stream UNKNOWN.
    huge = [data("h", v) for v in (1e308, -1e308, 1e308, -1e308, 1.0)]
    tiny = [data("t", v) for v in (5e-324, 0.0, 5e-324, 1e-323, 5e-324)]
    got = await results(conn, numbered(*huge, *tiny, data("k", 2.0)), window=window)
    assert [r.sequence for r in got] == list(range(1, 12)) and not any(r.error for r in got)
    assert [r.z_score for r in got[5:10]] == [0.0] * 5  # the spread of denormals: no deviation to score by
    assert (got[10].key, got[10].moving_average, got[10].count) == ("k", 2.0, 1)  # and the stream went on


async def test_the_key_cap_evicts_the_least_recently_used_key(conn: Connection) -> None:
    got = await results(
        conn, numbered(data("a", 1), data("b", 2), data("a", 3), data("c", 4), data("b", 5), data("c", 6)), max_keys=2
    )
    # a, b; a used again; c evicts b (a is more recent); b evicts a (c is more recent), starting afresh; c goes on.
    assert [(r.key, r.count, r.evicted_keys) for r in got] == [
        ("a", 1, 0),
        ("b", 1, 0),
        ("a", 2, 0),
        ("c", 1, 1),
        ("b", 1, 2),
        ("c", 2, 2),
    ]


@pytest.mark.parametrize(
    ("options", "detail"),
    [
        ({"window": 10_001}, "window is 10001 samples; at most 10000"),
        ({"z": -1.0}, "z is -1.0"),
        ({"z": math.nan}, "z is nan"),
        ({"max_keys": 10_001}, "max_keys is 10001; at most 10000"),
        ({"window_duration": Duration(seconds=0, nanos=-1)}, "window_duration must be positive"),
        ({"window": 5, "window_duration": Duration(seconds=1)}, "window and window_duration are exclusive"),
    ],
)
async def test_options_out_of_range_end_the_stream(conn: Connection, options: dict[str, object], detail: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await process(conn, [pb.ProcessLiveDataRequest(inputs=[data("k", 1)], **options)])  # type: ignore[arg-type]
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (failure.value.details() or "")


async def test_the_largest_window_is_taken(conn: Connection) -> None:
    got = await results(conn, numbered(data("k", 1), data("k", 3)), window=10_000)
    assert got[-1].moving_average == 2.0


async def test_options_are_read_from_the_first_request_only(conn: Connection) -> None:
    responses = await process(
        conn,
        [
            pb.ProcessLiveDataRequest(inputs=numbered(data("k", 1), data("k", 2)), window=2),
            pb.ProcessLiveDataRequest(inputs=[data("k", 6, sequence=3)], window=10_001),  # ignored, not refused
        ],
    )
    assert responses[1].results[0].moving_average == 4.0  # [2, 6]: the window of 2 held


def test_a_client_that_stops_reading_stops_the_server_reading_and_its_memory_stays_flat(
    tmp_path: pathlib.Path,
) -> None:
    # A server of its own (a subprocess): its memory is measured alone.
    with serve_process(tmp_path) as served:
        server = psutil.Process(served.process.pid)
        message = pb.ProcessLiveDataRequest(inputs=[data(f"k{n % 100}", float(n)) for n in range(1000)])
        sent = 0

        async def scenario() -> tuple[int, int, int]:
            nonlocal sent
            async with client(served.address) as conn:
                call = conn.stub.ProcessLiveData(metadata=conn.metadata)

                stop = False

                async def write() -> None:
                    nonlocal sent
                    while not stop and sent < 5000:  # 5,000,000 inputs: far more than the transport holds unread
                        await call.write(message)
                        sent += 1
                    await call.done_writing()

                async def read() -> int:
                    return sum([1 async for _ in call])

                writer = asyncio.ensure_future(write())
                await asyncio.sleep(1)
                before = server.memory_info().rss
                await asyncio.sleep(4)  # 5 s of not reading while the writer tries to send
                after = server.memory_info().rss
                stop = True
                received = await read()  # reading again: every message sent is answered
                await writer
                return before, after, received

        before, after, received = asyncio.run(scenario())
    assert sent < 5000  # the writes stalled: nothing read the results
    assert received == sent
    assert after - before < 20 * 2**20, (before, after)
