"""``streamcli batch``: ingest from NDJSON and CSV, refused lines by number, read back, resume after Ctrl-C and restart.

In-process through the real entry point against a server in a thread, except
where a signal or a process boundary is under test (Ctrl-C, a killed server).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.batches import batch_id_for
from streamcli.client.records import FieldMap
from streamcli.errors import ExitStatus
from tests.support.inprocess import cli
from tests.support.servers import clean_env, free_port, serve_process
from tests.support.threaded import threaded_server


@pytest.fixture
def address(tmp_path: pathlib.Path) -> Iterator[str]:
    with threaded_server(tmp_path / "data") as running:
        yield running


def ingest_json(address: str, *args: str) -> tuple[int, list[dict[str, object]], str]:
    run = cli(address, "--json", "batch", "ingest", *args)
    return run.code, [json.loads(line) for line in run.out.splitlines()], run.err


def records_of(address: str, batch_id: object) -> list[dict[str, object]]:
    run = cli(address, "batch", "records", str(batch_id))
    assert run.code == 0, run.err
    return [json.loads(line) for line in run.out.splitlines()]


def test_ndjson_round_trip_through_ingest_and_records(address: str, tmp_path: pathlib.Path) -> None:
    lines = [
        {"key": f"k{n % 4}", "value": n / 2, "timestamp": "2026-11-24T10:00:00.5Z", "site": "north", "n": n}
        for n in range(1200)
    ]
    source = tmp_path / "in.ndjson"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, [result], err = ingest_json(address, str(source))
    assert code == 0, err
    assert (result["received"], result["stored"], result["refused"], result["complete"]) == (1200, 1200, 0, True)
    back = records_of(address, result["batch_id"])
    assert [r["index"] for r in back] == list(range(1200))
    for line, record in zip(lines, back, strict=True):
        assert (record["key"], record["value"], record["timestamp"]) == (
            line["key"],
            line["value"],
            "2026-11-24T10:00:00.500Z",
        )
        assert record["payload"] == {"site": "north", "n": line["n"]}
    aggregates = {a["key"]: a for a in result["aggregates"]}  # type: ignore[attr-defined]
    assert aggregates["k1"]["count"] == 300 and aggregates["k1"]["max"] == 1197 / 2


def test_csv_with_bom_quoting_embedded_newlines_and_mapped_fields(address: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(
        b"\xef\xbb\xbfsensor,reading,when,note\r\n"
        b's1,1.5,2026-01-01T00:00:00Z,"plain, with comma"\r\n'
        b's2,2,,"two\nlines"\r\n'
        b"s3,abc,,x\r\n"
        b's4,"4",,"say ""hi"""\r\n'
    )
    args = ("--key-field", "sensor", "--value-field", "reading", "--time-field", "when")
    run = cli(address, "--json", "batch", "ingest", str(source), *args)
    assert run.code == ExitStatus.REFUSED_RECORDS, run.err
    assert run.error_lines == [f"{source}:5: 'reading' is not a number: 'abc'"]  # after a record of two lines
    result = json.loads(run.out)
    back = records_of(address, result["batch_id"])
    assert [(r["key"], r["value"], r["payload"]) for r in back] == [
        ("s1", 1.5, {"note": "plain, with comma"}),
        ("s2", 2.0, {"note": "two\nlines"}),
        ("s4", 4.0, {"note": 'say "hi"'}),
    ]
    assert back[0]["timestamp"] == "2026-01-01T00:00:00Z" and "timestamp" not in back[1]


def test_an_empty_file_is_an_empty_complete_batch(address: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "empty.ndjson"
    source.write_text("")
    code, [result], err = ingest_json(address, str(source))
    assert code == 0, err
    assert (result["received"], result["stored"], result["complete"]) == (0, 0, True)


def test_every_bad_line_is_named_and_dead_lettered_in_line_order(address: str, tmp_path: pathlib.Path) -> None:
    bad = {
        17: "not json at all",
        101: '{"key": "k", "value": NaN}',
        230: '{"key": "k", "value": Infinity}',
        333: '{"key": "k", "value": 1e999}',
        404: '{"key": "", "value": 1}',
        505: '{"key": "k"}',
        606: '{"key": "k", "value": "3"}',
        707: '{"key": "k", "value": 1, "timestamp": "yesterday"}',
        808: '{"key": "k", "value": 1, "timestamp": "1900-01-01T00:00:00Z"}',
        909: json.dumps({"key": "k", "value": 1, "blob": "x" * 70_000}),
    }
    source = tmp_path / "in.ndjson"
    rows = [bad.get(n, json.dumps({"key": f"k{n % 5}", "value": n})) for n in range(1, 1001)]
    source.write_text("\n".join(rows) + "\n")
    rejects = tmp_path / "rejects.ndjson"
    run = cli(address, "--json", "batch", "ingest", str(source), "--rejects", str(rejects))
    assert run.code == ExitStatus.REFUSED_RECORDS, run.err
    # The client's refusals (17, 101, ...) and the server's (404, 808, 909) told together, by line.
    named = [int(line.split(":")[1]) for line in run.error_lines]
    assert named == sorted(bad)
    assert all(line.startswith(f"{source}:") for line in run.error_lines)
    dead = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [d["line"] for d in dead] == sorted(bad)
    for letter in dead:
        assert letter["text"] == bad[letter["line"]] and letter["reason"] and letter["file"] == str(source)
    result = json.loads(run.out)
    assert result["stored"] == 990 and result["stored"] + result["refused"] + result["client_refused"] == 1000


def test_max_errors_stops_early_and_leaves_the_batch_incomplete(address: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "in.ndjson"
    source.write_text("bad\n" * 5 + '{"key": "k", "value": 1}\n' * 10)
    code, [result], err = ingest_json(address, str(source), "--max-errors", "2")
    assert code == ExitStatus.REFUSED_RECORDS
    assert len(err.splitlines()) == 2 and result["stopped_early"] is True and result["complete"] is False


def test_ls_and_show(address: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "in.ndjson"
    source.write_text('{"key": "a", "value": 1}\n{"key": "", "value": 2}\n')
    code, [result], _ = ingest_json(address, str(source))
    assert code == ExitStatus.REFUSED_RECORDS
    listed = cli(address, "--json", "batch", "ls")
    assert [json.loads(line)["batch_id"] for line in listed.out.splitlines()] == [result["batch_id"]]
    shown = cli(address, "batch", "show", str(result["batch_id"]))
    assert shown.code == 0 and "record 1: key is required" in shown.out and "stored:   1" in shown.out
    missing = cli(address, "batch", "show", "nope")
    assert missing.code == ExitStatus.NOT_FOUND


# --- across processes: Ctrl-C and a killed server ----------------------------------------------------

LINES = 300_000


def big_input(tmp_path: pathlib.Path) -> pathlib.Path:
    source = tmp_path / "big.ndjson"
    with open(source, "w") as out:
        for n in range(LINES):
            out.write(f'{{"key": "k{n % 7}", "value": {n}}}\n')
    return source


def held(address: str, batch_id: str) -> int:
    """The records the batch holds, read through the server at ``address`` (0 until it exists)."""
    with grpc.insecure_channel(address, options=transport.client_options()) as channel:
        get = channel.unary_unary(
            "/streaming.v1.StreamingService/GetBatch",
            request_serializer=pb.GetBatchRequest.SerializeToString,
            response_deserializer=pb.GetBatchResponse.FromString,
        )
        try:
            return int(get(pb.GetBatchRequest(batch_id=batch_id), timeout=30).batch.records_received)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            return 0


def start_ingest(address: str, source: pathlib.Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "streamcli", "--address", address, "--json", "batch", "ingest", str(source)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())


def wait_until(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_exactly_once(address: str, batch_id: str, result: dict[str, object]) -> None:
    assert (result["stored"], result["complete"]) == (LINES, True)
    total = sum(a["count"] for a in result["aggregates"])  # type: ignore[attr-defined]
    assert total == LINES
    assert sum(a["sum"] for a in result["aggregates"]) == LINES * (LINES - 1) / 2  # type: ignore[attr-defined]


def interrupted_ingest(address: str, source: pathlib.Path, batch_id: str) -> str:
    """Ingest ``source``, Ctrl-C it once the server holds a tenth of it; its stderr."""
    first = start_ingest(address, source)
    wait_until(lambda: held(address, batch_id) > LINES // 10 or first.poll() is not None)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == ExitStatus.INTERRUPTED, err
    assert "run the same command again to resume" in err
    return err


def test_ctrl_c_midway_then_the_same_command_stores_every_record_once(tmp_path: pathlib.Path) -> None:
    source = big_input(tmp_path)
    batch_id = batch_id_for(source, source.stat().st_size, source.stat().st_mtime_ns, FieldMap(), None)
    with serve_process(tmp_path) as serve:
        interrupted_ingest(serve.address, source, batch_id)
        stored_before = held(serve.address, batch_id)
        assert 0 < stored_before < LINES
        second = start_ingest(serve.address, source)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
        assert_exactly_once(serve.address, batch_id, json.loads(out))


def test_a_run_after_ctrl_c_names_the_earlier_runs_refusals_again_by_line(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "sprinkled.ndjson"
    refused_by_server = {n for n in range(1, LINES + 1) if n % 1000 == 0}  # an empty key
    refused_by_client = {n for n in range(1, LINES + 1) if n % 1000 == 500}  # not JSON
    with open(source, "w") as out:
        for n in range(1, LINES + 1):
            if n in refused_by_client:
                out.write("{oops\n")
            else:
                out.write(f'{{"key": "{"" if n in refused_by_server else f"k{n % 7}"}", "value": {n}}}\n')
    batch_id = batch_id_for(source, source.stat().st_size, source.stat().st_mtime_ns, FieldMap(), None)
    with serve_process(tmp_path) as serve:
        err = interrupted_ingest(serve.address, source, batch_id)
        held_before = held(serve.address, batch_id)
        assert 0 < held_before < LINES - len(refused_by_client)
        said_before = [int(line.split(":")[1]) for line in err.splitlines() if line.startswith(f"{source}:")]
        assert said_before == sorted(said_before) and any(n in refused_by_server for n in said_before)
        second = start_ingest(serve.address, source)
        out, err = second.communicate(timeout=300)
    assert second.returncode == ExitStatus.REFUSED_RECORDS, err
    named = [line for line in err.splitlines() if line.startswith(f"{source}:")]
    assert [int(line.split(":")[1]) for line in named] == sorted(refused_by_server | refused_by_client)
    assert all(line.endswith("key is required") for line in named if int(line.split(":")[1]) % 1000 == 0)
    result = json.loads(out)
    assert (result["stored"], result["refused"], result["client_refused"]) == (LINES - 600, 300, 300)


def test_a_server_killed_and_restarted_midway_loses_and_doubles_nothing(tmp_path: pathlib.Path) -> None:
    source = big_input(tmp_path)
    batch_id = batch_id_for(source, source.stat().st_size, source.stat().st_mtime_ns, FieldMap(), None)
    address = f"127.0.0.1:{free_port()}"
    with serve_process(tmp_path, address=address) as serve:
        ingest = start_ingest(address, source)
        wait_until(lambda: held(address, batch_id) > LINES // 10 or ingest.poll() is not None)
        os.kill(serve.process.pid, signal.SIGKILL)
        serve.process.wait(10)
    with serve_process(tmp_path, address=address):
        out, err = ingest.communicate(timeout=300)
        assert ingest.returncode == 0, err
        assert "reconnected" in err
        assert_exactly_once(address, batch_id, json.loads(out))
