"""``streamcli upload`` / ``download``: standard streams, kills and restarts.

In-process (``tests.support.inprocess``) except for a client killed midway and a server killed under a
download, which need processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pathlib
import signal
import subprocess
import sys
import time

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc
from streamcli.cli.parsing import parse_size
from streamcli.client.transfer import upload_id_for
from tests.support.files import MiB, write_random
from tests.support.inprocess import cli
from tests.support.servers import clean_env, free_port, serve_process
from tests.support.threaded import threaded_server


def streamcli(address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "streamcli", "--address", address, *args]


def test_stdin_upload_and_stdout_download(tmp_path: pathlib.Path) -> None:
    content = bytes(range(256)) * 40_000  # ~10 MB
    sink = io.TextIOWrapper(io.BytesIO())
    with threaded_server(tmp_path / "data") as address:
        up = cli(address, "--json", "upload", "-", "--name", "piped.bin", stdin=content)
        assert up.code == 0, up.err
        record = json.loads(up.out)
        assert (record["name"], record["size"]) == ("piped.bin", len(content))
        assert record["sha256"] == hashlib.sha256(content).hexdigest()
        down = cli(address, "download", record["id"], "-o", "-", stdout=sink)
    sink.flush()
    assert down.code == 0, down.err
    assert sink.buffer.getvalue() == content  # type: ignore[attr-defined]
    assert down.err == ""  # no progress on a non-terminal stderr


def test_upload_killed_halfway_resumes_on_the_next_run(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "big.bin"
    digest = write_random(source, 200 * MiB)
    upload_id = upload_id_for(source, 200 * MiB, source.stat().st_mtime_ns, "big.bin")
    with serve_process(tmp_path) as served:
        channel = grpc.insecure_channel(served.address)
        stub = pb_grpc.StreamingServiceStub(channel)
        first = subprocess.Popen(
            streamcli(served.address, "upload", str(source)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        offset = 0
        deadline = time.monotonic() + 60
        while offset < 100 * MiB and time.monotonic() < deadline and first.poll() is None:
            with contextlib.suppress(grpc.RpcError):  # NOT_FOUND until the first message arrives
                offset = stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id=upload_id)).committed_offset
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL, "the upload finished before it could be killed"
        assert stub.ListFiles(pb.ListFilesRequest()).files == []  # nothing listed in between
        committed = stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id=upload_id)).committed_offset
        assert 0 < committed < 200 * MiB

        second = cli(served.address, "--json", "upload", str(source))
        assert second.code == 0, second.err
        record = json.loads(second.out)
        assert record["sha256"] == digest
        assert record["resumed_from"] >= committed - 1 * MiB  # only the rest was sent
        target = tmp_path / "copy.bin"
        download = cli(served.address, "download", record["id"], "-o", str(target))
        assert download.code == 0, download.err
        channel.close()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


def test_download_survives_a_server_restart(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "big.bin"
    digest = write_random(source, 200 * MiB)
    address = f"127.0.0.1:{free_port()}"
    with serve_process(tmp_path, address=address) as served:
        up = cli(address, "--json", "upload", str(source))
        assert up.code == 0, up.err
        file_id = json.loads(up.out)["id"]
        # Download to a pipe we read slowly, so the transfer is in flight when the server dies.
        download = subprocess.Popen(
            streamcli(address, "download", file_id, "-o", "-", "--retries", "20"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        assert download.stdout is not None
        received = hashlib.sha256()
        head = download.stdout.read(20 * MiB)
        received.update(head)
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(10)
    with serve_process(tmp_path, address=address):
        while block := download.stdout.read(1 * MiB):
            received.update(block)
        assert download.wait(60) == 0, download.stderr.read() if download.stderr else ""
    assert received.hexdigest() == digest


def test_a_large_download_resumed_from_its_part_file_is_written_whole(tmp_path: pathlib.Path) -> None:
    # Large enough for the pages behind the writer to be dropped several times (pagecache.DropBehind), from a
    # start that is not the file's: what an earlier run wrote stays, and the bytes on disk are the file's.
    source = tmp_path / "big.bin"
    digest = write_random(source, 56 * MiB)
    head = 5 * MiB + 123
    with threaded_server(tmp_path / "data") as address:
        up = cli(address, "--json", "upload", str(source))
        assert up.code == 0, up.err
        target = tmp_path / "out" / "big.bin"
        target.parent.mkdir()
        with open(source, "rb") as original:
            target.with_name("big.bin.part").write_bytes(original.read(head))
        down = cli(address, "--json", "download", json.loads(up.out)["id"], "-o", str(target))
    assert down.code == 0, down.err
    assert json.loads(down.out)["resumed_from"] == head
    assert not target.with_name("big.bin.part").exists()
    with open(target, "rb") as written:
        assert hashlib.file_digest(written, "sha256").hexdigest() == digest


def test_download_of_a_missing_file_exits_4(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        result = cli(address, "download", "0123abcd", "-o", str(tmp_path))
    assert result.code == 4
    assert result.err.strip() == "streamcli: error: no file '0123abcd'"


def test_parallel_uploads_over_the_quota_store_what_fits_and_exit_8(tmp_path: pathlib.Path) -> None:
    # Issue 11: with `--quota 5M`, eight 1.9 MB files uploaded eight at a time were all stored.
    paths = []
    for n in range(8):
        paths.append(tmp_path / f"f{n}.bin")
        write_random(paths[-1], 1_900_000)
    with threaded_server(tmp_path / "data", quota=parse_size("5M")) as address:
        up = cli(address, "upload", *map(str, paths), "--parallel", "8")
        listed = cli(address, "--json", "files", "ls")
    assert up.code == 8, up.err
    assert len(up.out.splitlines()) == 2  # two fit under 5 MiB; the others are refused, not retried
    (line,) = up.err.splitlines()
    assert "quota would be exceeded" in line and line.endswith("(and 5 more failed)")
    assert sum(json.loads(record)["size"] for record in listed.out.splitlines()) == 2 * 1_900_000
