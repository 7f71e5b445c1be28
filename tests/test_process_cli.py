"""``streamcli process`` against the real server: files, plain numbers, a live pipe, --json, --anomalies-only,
--in-flight, refusals by line, option errors and Ctrl-C."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from streamcli.errors import ExitStatus
from tests.support.inprocess import Background, cli
from tests.support.servers import clean_env, serve_process
from tests.support.threaded import threaded_server

# 1, 2, 3, 4 then 100 in a window of 3: 100 against [2, 3, 4] (mean 3, sd sqrt(2/3)) is z = 97 * sqrt(1.5) =
# 118.80; every earlier z is at most 3 (see tests/test_processing.py for the whole sequence).
NUMBERS = "1\n2\n3\n4\n100\n"


@pytest.fixture
def address(tmp_path: pathlib.Path) -> Iterator[str]:
    with threaded_server(tmp_path / "data") as served:
        yield served


def test_plain_numbers_from_stdin_one_aligned_line_per_result(address: str) -> None:
    run = cli(address, "process", "--window", "3", stdin=NUMBERS)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert len(lines) == 5
    assert lines[2].split() == ["3", "default", "3", "avg", "2", "sd", "0.816497", "z", "3.00", "n", "3"]
    assert lines[4].split()[-2:] == ["3", "ANOMALY"] and "z   118.80" in lines[4]
    assert not any("ANOMALY" in line for line in lines[:4])
    assert len({line.index("avg") for line in lines}) == 1  # aligned
    assert run.err.splitlines()[-1] == (
        "streamcli: stdin: 5 input(s) sent, 5 result(s), 1 anomaly, 0 late, 0 refused, 0 key(s) evicted"
    )


def test_an_ndjson_file_with_keys_and_times_as_json(address: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "in.ndjson"
    source.write_text(
        '{"key": "a", "value": 1, "timestamp": "2026-11-30T10:00:00Z"}\n'
        '{"key": "b", "value": 10}\n'
        '{"key": "a", "value": 3, "timestamp": "2026-11-30T10:00:05Z"}\n'
        '{"key": "a", "value": 50, "timestamp": "2026-11-30T10:00:01Z"}\n'
    )
    run = cli(address, "--json", "process", str(source))
    assert run.code == 0, run.err
    records = [json.loads(line) for line in run.out.splitlines()]
    assert [(r["line"], r["key"], r["mean"], r["count"], r["late"]) for r in records] == [
        (1, "a", 1.0, 1, False),
        (2, "b", 10.0, 1, False),
        (3, "a", 2.0, 2, False),  # [1, 3]
        (4, "a", 2.0, 3, True),  # 10:00:01 is before 10:00:05: late, not added; z = (50 - 2) / 1 = 48
    ]
    assert records[3]["z"] == 48.0 and records[3]["anomaly"]


def test_statistics_that_overflow_are_printed_as_json_can_carry_them(address: str) -> None:
    # 1e308 then -1e308: the mean and spread overflow (the server says inf and nan; the stream goes on).
    run = cli(address, "--json", "process", stdin="1e308\n-1e308\n1e308\n2\n")
    assert run.code == 0, run.err
    records = [json.loads(line, parse_constant=pytest.fail) for line in run.out.splitlines()]  # strict JSON
    assert [r["value"] for r in records] == [1e308, -1e308, 1e308, 2.0]
    assert [r["mean"] for r in records] == [1e308, "-Infinity", "NaN", "NaN"]  # as protobuf's JSON writes them
    assert records[2]["stddev"] == "NaN" and records[0]["stddev"] == 0.0


def test_anomalies_only_and_a_higher_threshold(address: str) -> None:
    only = cli(address, "--json", "process", "--window", "3", "--anomalies-only", stdin=NUMBERS)
    assert only.code == 0, only.err
    assert [json.loads(line)["line"] for line in only.out.splitlines()] == [5]
    assert "1 anomaly" in only.err
    none = cli(address, "process", "--window", "3", "--anomalies-only", "--z", "200", stdin=NUMBERS)
    assert none.code == 0 and none.out == ""
    assert "0 anomalies" in none.err


def test_in_flight_of_one_gives_every_result_in_order(address: str) -> None:
    run = cli(address, "--json", "process", "--in-flight", "1", stdin="".join(f"{n}\n" for n in range(1, 201)))
    assert run.code == 0, run.err
    records = [json.loads(line) for line in run.out.splitlines()]
    assert [r["line"] for r in records] == list(range(1, 201))
    # The window of 10 last holds 191..200: mean 195.5.
    assert records[-1]["mean"] == 195.5 and records[-1]["count"] == 200


def test_refused_lines_and_inputs_are_named_by_line_and_the_rest_processed(address: str) -> None:
    stdin = '5\nfive\n{"key": "", "value": 1}\nnan\n{"key": "k"}\n{"key": "k", "value": 2, "timestamp": "x"}\n7\n'
    run = cli(address, "process", stdin=stdin)
    assert run.code == ExitStatus.REFUSED_RECORDS
    assert run.error_lines[:5] == [
        "stdin:2: not a number or a JSON object",
        "stdin:5: no 'value' number",
        "stdin:6: 'timestamp': 'x' is not a time like 2026-11-24T10:00:00Z",
        "stdin:3: key is empty",  # the server's verdicts come with the results
        "stdin:4: value is nan (not a finite number)",
    ]
    assert "4 input(s) sent, 4 result(s), 0 anomalies, 0 late, 5 refused" in run.error_lines[-1]
    lines = run.out.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "3", "4", "7"]
    assert "error: key is empty" in lines[1]
    assert lines[3].split()[:5] == ["7", "default", "7", "avg", "6"]  # [5, 7]: the refused ones never counted


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--window", "0"), "a number of inputs must be 1 to 10000"),
        (("--window", "10001"), "a number of inputs must be 1 to 10000"),
        (("--window", "soon"), "is not a duration"),
        (("--z", "0"), "the threshold must be a positive number"),
        (("--in-flight", "0"), "--in-flight"),
    ],
)
def test_option_errors(address: str, args: tuple[str, ...], message: str) -> None:
    run = cli(address, "process", *args, stdin=NUMBERS)
    assert run.code == ExitStatus.USAGE
    assert message in run.err


def test_a_live_pipe_gets_each_result_as_its_line_arrives(address: str) -> None:
    with Background(address, "process", "--window", "3") as command:
        for n, value in enumerate(("1", "2", "3", "4", "100"), start=1):
            command.write(value + "\n")
            line = command.stdout.readline()  # before the next line is written: the result came on its own
            assert line.split()[:3] == [str(n), "default", value]
        assert "ANOMALY" in line
        run = command.communicate()
    assert run.code == 0
    assert "5 input(s) sent, 5 result(s), 1 anomaly" in run.err


def test_ctrl_c_mid_stream_exits_130_saying_how_far_it_got(tmp_path: pathlib.Path) -> None:
    # A subprocess: the signal goes to a process of its own.
    with serve_process(tmp_path) as served:
        command = [sys.executable, "-m", "streamcli", "--address", served.address, "process"]
        running = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env()
        )
        assert running.stdin is not None and running.stdout is not None
        running.stdin.write("1\n2\n")
        running.stdin.flush()
        assert running.stdout.readline().split()[0] == "1"
        assert running.stdout.readline().split()[0] == "2"
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=30)
    assert running.returncode == ExitStatus.INTERRUPTED
    assert err.splitlines()[-1] == (
        "streamcli: error: interrupted; stdin: 2 input(s) sent, 2 result(s), 0 anomalies, 0 late, 0 refused, "
        "0 key(s) evicted"
    )
