"""Event data and record times as published and printed: only JSON in, only JSON (and RFC 3339) out."""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import random
import re
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import NonFiniteNumber, parse_json
from streamcli.services.logs import timestamp
from tests.support.inprocess import cli
from tests.support.servers import client
from tests.support.threaded import threaded_server

#: RFC 3339 as streamcli writes it: a four-digit year, and a fraction of 3 or 6 digits (or none).
RFC3339_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z")


def strict_loads(text: str) -> Any:
    """json.loads as strict parsers read JSON: NaN, Infinity and -Infinity are refused."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in {text!r} is not JSON")

    return json.loads(text, parse_constant=refuse)


def tail_json(address: str, what: str = "events") -> list[dict[str, Any]]:
    who = ["--all-users"] if what == "events" else ["--user", "alice"]
    result = cli(address, "--json", "tail", what, *who, "--since", "1h", "--no-follow")
    assert result.code == 0, result.err
    return [strict_loads(line) for line in result.out.splitlines()]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": [1, Infinity]}', "Infinity is not a JSON number"),
        ('{"a": {"b": -Infinity}}', "-Infinity is not a JSON number"),
        ('{"big": 1e400}', "1e400 is beyond the range of a double"),
        ("-1.5E+309", "-1.5E+309 is beyond the range of a double"),
        ('{"huge": 1' + "0" * 400 + "}", "1" + "0" * 400 + " is beyond 2^53: event data numbers are doubles"),
        ('{"i": [12345678901234567890]}', "12345678901234567890 is beyond 2^53"),
        (
            '{"i": -9007199254740993}',
            "-9007199254740993 is beyond 2^53: event data numbers are doubles, which "
            "would round it (send it as a string)",
        ),
        ('{"huger": 1' + "0" * 5000 + "}", "an integer is beyond the range of a double"),
    ],
)
def test_parse_json_refuses_what_json_loads_lets_through(text: str, problem: str) -> None:
    from streamcli.client.events import event_from_json
    from streamcli.errors import UsageError

    with pytest.raises((NonFiniteNumber, UsageError), match=re.escape(problem)):
        event_from_json({"user_id": "a", "type": "login", "data": parse_json(text)})


def test_parse_json_reads_finite_numbers_as_json_loads_does() -> None:
    text = (
        '{"f": [0.5, -1e-7, 1e308, 1.7976931348623157e308, 1e-400, 2E3], '
        '"i": [0, -1, 9007199254740992, -9007199254740992]}'
    )
    assert parse_json(text) == json.loads(text)
    assert parse_json(text.encode()) == json.loads(text)
    for bad in ["\ufeff{}", "{", '{"a": nan}', "[1,]"]:  # not JSON: the same error as from json.loads
        with pytest.raises(json.JSONDecodeError) as theirs:
            json.loads(bad)
        with pytest.raises(json.JSONDecodeError, match=re.escape(str(theirs.value))):
            parse_json(bad)


def test_publish_refuses_non_finite_numbers_in_data(tmp_path: pathlib.Path) -> None:
    cases = {
        '{"a":NaN}': "--data: NaN is not a JSON number",
        '{"a":[Infinity]}': "--data: Infinity is not a JSON number",
        "-Infinity": "--data: -Infinity is not a JSON number",
        '{"big":1e400}': "--data: 1e400 is beyond the range of a double",
        '{"id":9007199254740993}': "--data: 9007199254740993 is beyond 2^53: event data numbers are doubles, "
        "which would round it (send it as a string)",
    }
    with threaded_server(tmp_path / "data") as address:
        results = {data: cli(address, "events", "publish", "-u", "a", "-t", "login", "--data", data) for data in cases}
        stored = tail_json(address)
    for data, message in cases.items():
        result = results[data]
        assert (result.code, result.out) == (2, ""), (data, result.err)
        assert result.err.splitlines() == [f"streamcli: error: {message}"]
    assert stored == []


def test_publish_refuses_non_finite_numbers_on_stdin(tmp_path: pathlib.Path) -> None:
    good = '{"user_id": "a", "type": "login", "data": {"n": 1.5}}\n'
    cases = [
        (good + '{"user_id": "a", "type": "login", "data": {"n": NaN}}\n' + good,
         "stdin line 2: NaN is not a JSON number; the 1 event(s) before it were published (ids 1-1)"),
        ('{"user_id": "a", "type": "login", "data": [1e400]}\n',
         "stdin line 1: 1e400 is beyond the range of a double; nothing was published"),
        (good + good + '{"user_id": "a", "type": "login", "data": {"x": {"y": -Infinity}}}\n',
         "stdin line 3: -Infinity is not a JSON number; the 2 event(s) before it were published (ids 2-3)"),
        ('{"user_id": "a", "type": "login", "data": Infinity}\n',
         "stdin line 1: Infinity is not a JSON number; nothing was published"),
        (good + '{"user_id": "a", "type": "login", "data": {"id": 9007199254740993}}\n',
         "stdin line 2: 9007199254740993 is beyond 2^53: event data numbers are doubles, which would round it "
         "(send it as a string); the 1 event(s) before it were published (ids 4-4)"),
    ]  # fmt: skip
    with threaded_server(tmp_path / "data") as address:
        results = [cli(address, "events", "publish", stdin=lines) for lines, _ in cases]
        stored = tail_json(address)
    for (_, message), result in zip(cases, results, strict=True):
        assert (result.code, result.out) == (2, ""), result.err
        assert result.err.splitlines() == [f"streamcli: error: {message}"]
    assert [(event["id"], event["data"]) for event in stored] == [(n, {"n": 1.5}) for n in range(1, 5)]


def _data(message: struct_pb2.Struct | struct_pb2.Value) -> AnyMessage:
    packed = AnyMessage()
    packed.Pack(message)
    return packed


async def _publish_unchecked(address: str, events: list[pb.UserEvent]) -> None:
    """Publish through the gRPC API, as a client that lets NaN and infinities through would."""
    async with client(address) as conn:
        reply = await conn.stub.PublishEvents(iter([pb.PublishEventsRequest(events=events)]), timeout=10)
    assert reply.count == len(events)


def test_stored_non_finite_numbers_are_printed_as_json_strings(tmp_path: pathlib.Path) -> None:
    struct = struct_pb2.Struct()
    struct.update({"nan": math.nan, "inf": math.inf, "list": [1.5, -math.inf], "nested": {"x": math.nan}})
    # Two kinds in one Value: the fast path leaves it to the general parser (which keeps the last kind).
    two_kinds = AnyMessage(
        type_url="type.googleapis.com/google.protobuf.Value",
        value=struct_pb2.Value(string_value="s").SerializeToString()
        + struct_pb2.Value(number_value=-math.inf).SerializeToString(),
    )
    datas = [
        _data(struct),
        _data(struct_pb2.Value(number_value=math.inf)),
        _data(struct_pb2.Value(number_value=math.nan)),
        two_kinds,
    ]
    events = [pb.UserEvent(user_id="a", type=pb.USER_EVENT_TYPE_LOGIN, data=data) for data in datas]
    with threaded_server(tmp_path / "data") as address:
        asyncio.run(_publish_unchecked(address, events))
        stored = tail_json(address)  # each line read by strict_loads
        human = cli(address, "tail", "events", "--all-users", "--since", "1h", "--no-follow")
    assert [event["data"] for event in stored] == [
        {"nan": "NaN", "inf": "Infinity", "list": [1.5, "-Infinity"], "nested": {"x": "NaN"}},
        "Infinity",
        "NaN",
        "-Infinity",
    ]
    assert human.code == 0, human.err
    assert '"nan":"NaN"' in human.out and "NaN," not in human.out and ":Infinity" not in human.out


def test_a_timestamp_before_the_year_1000_prints_with_four_digits(tmp_path: pathlib.Path) -> None:
    stamps = ["0001-01-01T00:00:00Z", "0999-12-31T23:59:59.250Z", "2026-11-24T10:00:00.000001Z"]
    with threaded_server(tmp_path / "data") as address:
        for stamp in stamps:
            published = cli(address, "events", "publish", "-u", "a", "-t", "login", "--timestamp", stamp)
            assert published.code == 0, published.err
        stored = tail_json(address)
    assert [event["timestamp"] for event in stored] == stamps


def test_published_times_keep_their_nanoseconds_and_may_use_lowercase_t_z_or_an_offset(
    tmp_path: pathlib.Path,
) -> None:
    flag = "2026-11-24T10:00:00.123456789Z"
    piped = {  # as published -> as stored (UTC), printed like protobuf's Timestamp.ToJsonString
        "2026-11-24t10:00:00.5z": "2026-11-24T10:00:00.500Z",
        "2026-11-24T10:00:00.000000001+05:30": "2026-11-24T04:30:00.000000001Z",
        "2026-11-23T23:00:00.000001-05:30": "2026-11-24T04:30:00.000001Z",
        "2026-11-24 10:00:00.987654321": "2026-11-24T10:00:00.987654321Z",  # no zone: UTC
    }
    lines = "".join(json.dumps({"user_id": "a", "type": "login", "timestamp": t}) + "\n" for t in piped)
    with threaded_server(tmp_path / "data") as address:
        one = cli(address, "events", "publish", "-u", "a", "-t", "login", "--timestamp", flag)
        many = cli(address, "events", "publish", stdin=lines)
        stored = tail_json(address)
        # --since reads times the same way (it picks by append time: all of these are after it).
        tail = ("--json", "tail", "events", "--all-users", "--no-follow", "--since")
        since = [
            cli(address, *tail, start) for start in ("2000-01-01t00:00:00z", "2000-01-01T05:30:00.000000001+05:30")
        ]
    assert (one.code, many.code) == (0, 0), one.err + many.err
    assert [event["timestamp"] for event in stored] == [flag, *piped.values()]
    assert [(result.code, len(result.out.splitlines())) for result in since] == [(0, 5), (0, 5)]


def test_time_options_keep_nanoseconds_and_refuse_what_a_timestamp_cannot_hold() -> None:
    from streamcli.client.events import TimeOutOfRange, parse_timestamp
    from streamcli.errors import UsageError

    assert (parse_timestamp("2026-11-24T10:00:00.123456789Z").nanos) == 123_456_789
    assert parse_timestamp("2026-11-24T10:00:00.999999999-00:00").ToJsonString() == "2026-11-24T10:00:00.999999999Z"
    assert parse_timestamp("9999-12-31T23:59:59.999999999Z").ToJsonString() == "9999-12-31T23:59:59.999999999Z"
    with pytest.raises(TimeOutOfRange):
        parse_timestamp("9999-12-31T23:59:59-00:01")
    assert parse_timestamp("2026-11-24T10:00:00+0530").ToJsonString() == "2026-11-24T04:30:00Z"  # date +%z
    for bad in ("2026-02-30T00:00:00Z", "2026-11-24T24:00:00Z", "2026-11-24T10:00:00+05", "tomorrow", "1h"):
        with pytest.raises(UsageError, match="is not a time like 2026-11-24T10:00:00Z"):
            parse_timestamp(bad)


def test_the_fast_reading_of_machine_written_times_agrees_with_the_general_one() -> None:
    from streamcli.client.events import parse_time
    from streamcli.errors import UsageError

    def read(text: str) -> tuple[int, int] | str:
        try:
            return parse_time(text)
        except UsageError as exc:
            return type(exc).__name__ + ": " + exc.message.replace(repr(text.strip()), "TEXT")

    # Each text in the form the fast reading takes (YYYY-MM-DDTHH:MM:SS[.digits]Z) and near misses, against the
    # same text with surrounding spaces (which only the general, regular-expression reading takes).
    texts = [
        "2026-11-24T10:00:00Z", "2026-11-24T10:00:00.1Z", "2026-11-24T10:00:00.1234567891234Z",
        "9999-12-31T23:59:59.999999999Z", "0001-01-01T00:00:00Z", "1969-12-31T23:59:59.5Z",
        "2024-02-29T12:34:56.000001Z", "0000-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-24T24:00:00Z",
        "2026-11-24T23:60:00Z", "2026-11-24T23:59:60Z", "2026-11-24T23:59:59.Z", "2026-W47-1T00:00:00Z",
        "\uff12026-11-24T10:00:00Z", "2026-11-24T1a:00:00Z", "2026-11-24T10:00:00.12a3Z", "2026-11-24T10:00:00+Z",
        "2026-11-24T10:00:00.\u0661Z", "2026-1-024T10:00:00Z",
    ]  # fmt: skip
    assert read("2026-11-24T10:00:00.1Z") == (1_795_514_400, 100_000_000)
    assert read("2026-02-30T00:00:00Z") == "UsageError: TEXT is not a time like 2026-11-24T10:00:00Z"
    for text in texts:
        assert read(text) == read(f" {text} "), text


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    year=st.integers(1, 9999),
    month=st.integers(1, 12),
    day=st.integers(1, 31),
    clock=st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)),
    fraction=st.text("0123456789", max_size=9),
    zone=st.one_of(
        st.sampled_from(["Z", "z"]), st.tuples(st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59))
    ),
    separator=st.sampled_from("Tt"),
)
def test_times_read_as_protobufs_own_rfc_3339_reader_reads_them(
    year: int,
    month: int,
    day: int,
    clock: tuple[int, int, int],
    fraction: str,
    zone: str | tuple[str, int, int],
    separator: str,
) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from streamcli.client.events import parse_timestamp
    from streamcli.errors import UsageError

    offset = zone if isinstance(zone, str) else f"{zone[0]}{zone[1]:02d}:{zone[2]:02d}"
    text = f"{year:04d}-{month:02d}-{day:02d}{separator}{clock[0]:02d}:{clock[1]:02d}:{clock[2]:02d}"
    text += f".{fraction}" if fraction else ""
    text += offset
    expected = Timestamp()
    try:
        expected.FromJsonString(text.replace("t", "T").replace("z", "Z"))  # protobuf reads the uppercase forms
    except ValueError:
        with pytest.raises(UsageError):  # an impossible date, or outside what a Timestamp holds
            parse_timestamp(text)
        return
    assert parse_timestamp(text) == expected


def test_an_out_of_range_timestamp_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    result = cli(
        "127.0.0.1:1", "events", "publish", "-u", "a", "-t", "login", "--timestamp", "0001-01-01T00:00:00+01:00"
    )
    assert (result.code, result.err) == (
        2,
        "streamcli: error: '0001-01-01T00:00:00+01:00' is out of range (years 0001-9999 in UTC)\n",
    )


def test_server_times_are_whole_microseconds() -> None:
    assert timestamp(1764156636.01486).nanos == 14_860_000  # not 14_860_288, the float's noise
    assert (timestamp(1.9999999).seconds, timestamp(1.9999999).nanos) == (2, 0)
    assert (timestamp(-1.5).seconds, timestamp(-1.5).nanos) == (-2, 500_000_000)
    rng = random.Random(7)
    for _ in range(1000):
        micros = rng.randrange(1_700_000_000_000_000, 1_900_000_000_000_000)
        stamp = timestamp(micros / 1e6)
        assert stamp.ToMicroseconds() == micros and stamp.nanos % 1000 == 0


def test_notification_times_print_like_event_times(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        send = ["--json", "notify", "send", "--to", "alice", "--topic", "t", "--title"]
        sent = [cli(address, *send, f"n{n}") for n in range(3)]
        shown = tail_json(address, "notifications")
        published = cli(address, "events", "publish", "-u", "a", "-t", "login")
        assert published.code == 0, published.err
        [event] = tail_json(address)
    assert all(result.code == 0 for result in sent), [result.err for result in sent]
    times = [strict_loads(result.out)["timestamp"] for result in sent]
    assert [record["timestamp"] for record in shown] == times
    for text in [*times, event["timestamp"]]:
        assert RFC3339_MICROS.fullmatch(text), text
