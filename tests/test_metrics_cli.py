"""``streamcli metrics push/ls/show``: NDJSON and Prometheus text (comments, escapes, histograms, timestamps),
refusals by line, resumed pushes, tables, JSON and the distribution picture.

In-process through the real entry point against a server in a thread, except Ctrl-C (a signal).
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamcli.errors import ExitStatus
from tests.support.inprocess import cli
from tests.support.servers import clean_env, run_cli, serve_process
from tests.support.threaded import threaded_server

PROMETHEUS = """\
# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{code="400",method="post"}    3 1395066363000

# A comment that is not HELP or TYPE.
msdos_file_access_time_seconds{path="C:\\\\DIR\\\\FILE.TXT",error="Cannot find file:\\n\\"FILE.TXT\\""} 1.458e9
metric_without_timestamp_and_labels 12.47
# TYPE rpc_duration_seconds histogram
rpc_duration_seconds_bucket{le="0.05"} 24054
rpc_duration_seconds_bucket{le="+Inf"} 144320
rpc_duration_seconds_sum 53423
rpc_duration_seconds_count 144320
nan_metric NaN
this line is not prometheus
"""


@pytest.fixture
def address(tmp_path: pathlib.Path) -> Iterator[str]:
    with threaded_server(tmp_path / "data") as running:
        yield running


def listed(address: str, *args: str) -> list[dict[str, Any]]:
    run = cli(address, "--json", "metrics", "ls", *args)
    assert run.code == 0, run.err
    return [json.loads(line) for line in run.out.splitlines()]


def write_ndjson(path: pathlib.Path, lines: list[object]) -> pathlib.Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_ndjson_push_names_each_refused_line_and_prints_the_series(address: str, tmp_path: pathlib.Path) -> None:
    good = [{"name": "latency", "value": n, "labels": {"route": "/a"}} for n in range(1, 101)]
    source = write_ndjson(
        tmp_path / "s.ndjson",
        [
            *good[:50],
            "not json",
            {"name": "latency", "value": "7"},
            {"name": "", "value": 1},
            {"name": "latency", "value": 1, "lables": {}},
            {"name": "latency", "value": 1, "timestamp": "yesterday"},
            *good[50:],
        ],
    )
    run = cli(address, "metrics", "push", str(source))
    assert run.code == ExitStatus.REFUSED_RECORDS, run.err
    named = sorted(run.error_lines)
    assert [line.split(": ")[0] for line in named] == [f"{source}:{n}" for n in range(51, 56)]
    assert "name is empty" in named[2] and "unknown field `lables`" in named[3]
    assert run.out.startswith("101 sent, 100 accepted, 5 refused (1 invalid_name, 4 unreadable)\n")
    assert 'latency{route="/a"}' in run.out
    [series] = listed(address)
    assert (series["name"], series["labels"], series["count"], series["min"], series["max"]) == (
        "latency",
        {"route": "/a"},
        100,
        1.0,
        100.0,
    )
    assert abs(series["p50"] - 50) <= 0.5 and abs(series["p99"] - 99) <= 0.99


def test_pushing_the_same_file_again_counts_nothing_twice(address: str, tmp_path: pathlib.Path) -> None:
    source = write_ndjson(tmp_path / "s.ndjson", [{"name": "m", "value": n} for n in range(5000)])
    first = cli(address, "--json", "metrics", "push", str(source))
    assert first.code == 0, first.err
    assert json.loads(first.out)["accepted"] == 5000
    again = cli(address, "--json", "metrics", "push", str(source))
    assert again.code == 0, again.err
    assert (json.loads(again.out)["sent"], json.loads(again.out)["accepted"]) == (0, 0)
    assert [s["count"] for s in listed(address)] == [5000]


def test_prometheus_text_with_comments_escapes_histograms_and_timestamps(address: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "node.prom"
    source.write_text(PROMETHEUS)
    run = cli(address, "--json", "metrics", "push", str(source))
    assert run.code == ExitStatus.REFUSED_RECORDS
    assert [line.split(": ")[0] for line in run.error_lines] == [f"{source}:15", f"{source}:14"]
    result = json.loads(run.out)
    assert (result["sent"], result["accepted"], result["refused"]) == (9, 8, {"not_finite": 1})
    found = {(s["name"], tuple(sorted(s["labels"].items()))): s for s in listed(address)}
    assert found[("http_requests_total", (("code", "200"), ("method", "post")))]["sum"] == 1027
    assert found[("http_requests_total", (("code", "400"), ("method", "post")))]["sum"] == 3
    escaped = (("error", 'Cannot find file:\n"FILE.TXT"'), ("path", "C:\\DIR\\FILE.TXT"))
    assert found[("msdos_file_access_time_seconds", escaped)]["max"] == 1.458e9
    assert found[("rpc_duration_seconds_bucket", (("le", "+Inf"),))]["sum"] == 144320
    assert found[("rpc_duration_seconds_bucket", (("le", "0.05"),))]["sum"] == 24054
    assert found[("rpc_duration_seconds_count", ())]["sum"] == 144320
    # The two samples stamped 2014 are outside the last hour; the others count now.
    recent = {s["name"] for s in listed(address, "--since", "1h")}
    assert "http_requests_total" not in recent and "metric_without_timestamp_and_labels" in recent


def test_the_format_is_detected_or_given(address: str, tmp_path: pathlib.Path) -> None:
    prom = tmp_path / "data.txt"
    prom.write_text("\n# comment\nup 1\n")
    assert cli(address, "metrics", "push", str(prom)).code == 0
    ndjson = write_ndjson(tmp_path / "data.log", [{"name": "down", "value": 0}])
    assert cli(address, "metrics", "push", str(ndjson)).code == 0
    forced = cli(address, "metrics", "push", str(ndjson), "--format", "prometheus")
    assert forced.code == ExitStatus.REFUSED_RECORDS and "not Prometheus text" in forced.err
    assert cli(address, "metrics", "push", str(ndjson), "--format", "csv").code == ExitStatus.USAGE
    assert sorted(s["name"] for s in listed(address)) == ["down", "up"]


def test_show_prints_the_table_and_a_distribution_by_label(address: str, tmp_path: pathlib.Path) -> None:
    now = time.time()
    lines = [{"name": "rtt", "value": v, "labels": {"host": h}, "timestamp": now} for h in "ab" for v in range(1, 201)]
    assert cli(address, "metrics", "push", str(write_ndjson(tmp_path / "r.ndjson", lines))).code == 0
    run = cli(address, "metrics", "show", "rtt", "--label", "host=b")
    assert run.code == 0, run.err
    header = run.out.splitlines()[0].split()
    assert header == ["SERIES", "COUNT", "MIN", "MEAN", "P50", "P90", "P99", "MAX"]
    assert 'rtt{host="b"}' in run.out and 'host="a"' not in run.out.replace('distribution of rtt{host="b"}', "")
    assert 'distribution of rtt{host="b"}' in run.out and "█" in run.out
    shown = cli(address, "--json", "metrics", "show", "rtt")
    records = [json.loads(line) for line in shown.out.splitlines()]
    assert [r["labels"]["host"] for r in records] == ["a", "b"]
    assert len(records[0]["quantiles"]) == 100
    missing = cli(address, "metrics", "show", "rtt", "--label", "host=c")
    assert missing.code == ExitStatus.NOT_FOUND and "no series rtt with those labels" in missing.err
    assert cli(address, "metrics", "show", "rtt", "--label", "novalue").code == ExitStatus.USAGE


MACHINE_SERIES = {
    "cpu.percent",
    "memory.used_bytes",
    "memory.available_bytes",
    "memory.percent",
    "swap.percent",
    "load.1m",
    "net.sent_bytes_per_second",
    "net.received_bytes_per_second",
}


def test_sample_streams_this_machine_for_3_seconds(address: str) -> None:
    run = cli(address, "--json", "metrics", "sample", "--interval", "500ms", "--duration", "3s")
    assert run.code == 0, run.err
    assert "sampling this machine every 500ms for 3s" in run.err
    result = json.loads(run.out)
    assert result["refused"] == {} and result["accepted"] == result["sent"] > 0
    totals = {s["name"]: s for s in result["series"] if s["labels"].keys() == {"host"}}
    assert totals.keys() >= MACHINE_SERIES
    rounds = totals["memory.used_bytes"]["count"]
    assert rounds >= 1 and all(totals[name]["count"] == rounds for name in MACHINE_SERIES)
    assert 0 <= totals["cpu.percent"]["min"] <= totals["cpu.percent"]["max"] <= 100
    assert {s["name"] for s in listed(address)} >= MACHINE_SERIES


def test_ctrl_c_ends_sampling_with_the_summary(tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as serve:
        command = [sys.executable, "-m", "streamcli", "--address", serve.address, "--json", "metrics", "sample"]
        sampling = subprocess.Popen(
            [*command, "--interval", "200ms", "--duration", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        assert sampling.stderr is not None
        assert "Ctrl-C ends" in sampling.stderr.readline()
        wait_until(lambda: bool(run_json(serve.address)))  # a round has reached the server
        sampling.send_signal(signal.SIGINT)
        out, err = sampling.communicate(timeout=60)
        assert sampling.returncode == 0, err
        result = json.loads(out)
        assert result["accepted"] > 0 and any(s["name"] == "cpu.percent" for s in result["series"])


def run_json(address: str) -> list[dict[str, Any]]:
    run = run_cli("--address", address, "--json", "metrics", "ls")
    return [json.loads(line) for line in run.stdout.splitlines()]


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_the_trend_picture_draws_p50_p99_and_count_per_step() -> None:
    import io

    from rich.console import Console

    from streamcli.client.metrics import SeriesSummary, TrendPoint
    from streamcli.ui.metrics import has_trend, sparkline, trend

    assert sparkline([1.0, None, 8.0, 4.5]) == "▁ █▅"
    assert sparkline([2.0, 2.0]) == "▄▄" and sparkline([None]) == " "
    points = [
        TrendPoint("2026-11-30T10:00:00Z", 5, 10, 1.0, 2.0),
        TrendPoint("2026-11-30T10:05:00Z", 5, 0, 0.0, 0.0),
        TrendPoint("2026-11-30T10:10:00Z", 5, 30, 8.0, 16.0),
    ]
    series = SeriesSummary("rtt", (("host", "a"),), "", False, 40, 1, 20, 200, 5, 6, 9, 15, "", (), tuple(points))
    assert has_trend(series) and not has_trend(dataclasses_replace(series, trend=tuple(points[:2])))
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(trend(series))
    lines = out.getvalue().splitlines()
    assert lines[0] == 'trend of rtt{host="a"}, 2026-11-30T10:00:00Z to 2026-11-30T10:15:00Z, 5m a character'
    assert [line.split() for line in lines[1:]] == [
        ["p50", "▁", "█", "1", "-", "8"],
        ["p99", "▁", "█", "2", "-", "16"],
        ["count", "▁", "█", "10", "-", "30"],
    ]
    assert "▁ █" in lines[1]  # (the step without samples is a blank)
    assert series.to_json()["trend"][2] == {
        "start": "2026-11-30T10:10:00Z", "minutes": 5, "count": 30, "p50": 8.0, "p99": 16.0
    }  # fmt: skip
    assert "trend" not in dataclasses_replace(series, trend=()).to_json()


def dataclasses_replace(series: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(series, **changes)


def test_show_draws_the_trend_of_a_series_with_samples_in_several_minutes(address: str, tmp_path: pathlib.Path) -> None:
    now = int(time.time())
    lines = [{"name": "q", "value": float(v), "timestamp": now - 60 * back} for back in (30, 20, 10) for v in range(5)]
    assert cli(address, "metrics", "push", str(write_ndjson(tmp_path / "q.ndjson", lines))).code == 0
    run = cli(address, "metrics", "show", "q", "--since", "1h")
    assert run.code == 0, run.err
    # (The hour and its first minute in 31 steps of 2 minutes: the picture's title may wrap.)
    assert "trend of q, " in run.out and "2m a" in run.out and "no samples" not in run.out
    [counts] = [line.split() for line in run.out.splitlines() if line.split()[:1] == ["count"]]
    assert counts == ["count", "▄", "▄", "▄", "5", "-", "5"]
    plain = cli(address, "metrics", "show", "q", "--no-trend")
    assert plain.code == 0 and "trend of" not in plain.out and "distribution of q" in plain.out
    [record] = [
        json.loads(line) for line in cli(address, "--json", "metrics", "show", "q", "--since", "1h").out.splitlines()
    ]
    assert sum(point["count"] for point in record["trend"]) == 15
    # A --since beyond what the server keeps per minute is said on stderr (the default keeps 30 days).
    old = cli(address, "metrics", "show", "q", "--since", "40d")
    assert old.code == 0 and "keeps per-minute aggregates since" in old.err
