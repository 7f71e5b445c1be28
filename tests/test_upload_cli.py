"""``streamcli upload`` as a user meets it: what it prints as files are stored, again, and while it retries."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys

from streamcli.errors import ExitStatus
from tests.support.files import MiB, write_random
from tests.support.inprocess import cli
from tests.support.servers import clean_env, free_port, serve_process
from tests.support.threaded import threaded_server


def test_an_unchanged_file_uploaded_again_is_answered_with_the_stored_id(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"same bytes")
    (tmp_path / "b.bin").write_bytes(b"same bytes")
    with threaded_server(tmp_path / "data") as address:
        first = cli(address, "--json", "upload", str(tmp_path / "a.bin"))
        again = cli(address, "upload", str(tmp_path / "a.bin"))
        other_name = cli(address, "--json", "upload", str(tmp_path / "b.bin"))
        (tmp_path / "a.bin").write_bytes(b"new bytes")
        changed = cli(address, "--json", "upload", str(tmp_path / "a.bin"))
        listed = cli(address, "--json", "files", "ls")
    stored = json.loads(first.out)
    assert (first.code, stored["already_stored"]) == (0, False)
    assert (again.code, again.out) == (0, f"{stored['id']}  a.bin  (already stored)\n")
    assert json.loads(other_name.out)["already_stored"] is False  # another name: another file
    assert json.loads(changed.out)["already_stored"] is False
    names = sorted(json.loads(line)["name"] for line in listed.out.splitlines())
    assert names == ["a.bin", "a.bin", "b.bin"]  # the unchanged upload listed once, not twice
    # The bytes received again are not kept: one blob per stored file, no partial file left.
    blobs = tmp_path / "data" / "blobs"
    ids = sorted(json.loads(line)["id"] for line in listed.out.splitlines())
    assert (sorted(p.name for p in (blobs / "files").iterdir()), list((blobs / "partial").iterdir())) == (ids, [])


def test_retries_are_said_on_stderr_and_the_last_error_says_how_to_go_on(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    address = f"127.0.0.1:{free_port()}"  # nobody listens
    result = cli(address, "upload", str(tmp_path / "a.bin"), "--retries", "2")
    assert result.code == ExitStatus.UNAVAILABLE
    retries = [line for line in result.error_lines if "retry" in line and "gave up" not in line]
    assert [line.split("; ")[-1].split(" in ")[0] for line in retries] == ["retry 1 of 2", "retry 2 of 2"]
    assert all(line.startswith("streamcli: upload of a.bin: UNAVAILABLE") for line in retries)
    assert result.error_lines[-1].startswith(f"streamcli: error: cannot reach the server at {address}")
    assert result.error_lines[-1].endswith("; gave up after 2 retries; run the same command again to resume the upload")


def test_an_interrupted_run_has_printed_the_files_it_finished(tmp_path: pathlib.Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(b"small")
    big = tmp_path / "big.bin"
    write_random(big, 300 * MiB)
    with serve_process(tmp_path) as served:
        command = [sys.executable, "-m", "streamcli", "--address", served.address, "upload", "--parallel", "1"]
        process = subprocess.Popen(
            [*command, str(small), str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(),
        )  # fmt: skip
        assert process.stdout is not None
        line = process.stdout.readline()  # small.bin is stored while big.bin is still on its way
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=30)
        again = subprocess.run([*command, str(small)], capture_output=True, text=True, env=clean_env(), timeout=30)
    assert line.endswith("  small.bin\n")
    assert (process.returncode, rest, err) == (ExitStatus.INTERRUPTED, "", "streamcli: error: interrupted\n")
    assert again.stdout == line.replace("\n", "  (already stored)\n")


def test_an_empty_output_path_is_a_usage_error() -> None:
    result = cli("127.0.0.1:1", "download", "0123abcd", "-o", "")
    assert (result.code, result.err) == (
        ExitStatus.USAGE,
        "streamcli: error: --output is empty: give a file or directory, or '-' for standard output\n",
    )
