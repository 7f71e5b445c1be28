"""A server whose data dir is on a full filesystem (a small tmpfs): one clear refusal, nothing left over.

The server runs in its own mount namespace (``unshare``) with a 3 MiB tmpfs on
its data dir, so the mount needs no cleanup: it ends with the server, and the
host's mount table is never touched. As root that needs only ``unshare --mount``;
otherwise an unprivileged user namespace. The test reads the server's data dir
through ``/proc/PID/root``. The clients run in-process.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.files import MiB, write_random
from tests.support.inprocess import cli
from tests.support.servers import ServeProcess, serve_process

DISK_FULL = "streamcli: error: the server's disk is full"


def _unshare() -> list[str]:
    """The ``unshare`` command that gives a process a mount namespace it may mount in."""
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private"]
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]


@pytest.fixture
def full_disk_server(tmp_path: pathlib.Path) -> Iterator[ServeProcess]:
    """``streamcli serve`` with its data dir on a fresh 3 MiB tmpfs."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small filesystem for the data dir")
    probe = subprocess.run(
        [*_unshare(), "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root, no user namespaces?): {probe.stderr.strip()}")
    mount = 'mkdir -p "$1" && mount -t tmpfs -o size=3m tmpfs "$1" && shift && exec "$@"'
    wrapper = [*_unshare(), "sh", "-c", mount, "sh", str(tmp_path / "data")]
    with serve_process(tmp_path, wrapper=wrapper) as served:
        yield served


def data_dir(served: ServeProcess) -> pathlib.Path:
    """The server's data dir as the server sees it (on its tmpfs)."""
    return pathlib.Path(f"/proc/{served.process.pid}/root") / str(served.log_path.parent / "data").lstrip("/")


def leftovers(served: ServeProcess) -> list[str]:
    blobs = data_dir(served) / "blobs"
    return sorted(p.name for p in (blobs / "partial").iterdir()) + sorted(p.name for p in (blobs / "files").iterdir())


def fill(path: pathlib.Path) -> None:
    """Write to ``path`` until the filesystem is full."""
    with open(path, "wb", buffering=0) as handle:
        block = b"\0" * 64 * 1024
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(path, "ab", buffering=0) as handle:  # the last, partly free page
        try:
            while True:
                handle.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def assert_still_serving(served: ServeProcess, tmp_path: pathlib.Path) -> None:
    health = cli(served.address, "health")
    assert health.code == 0, health.err
    small = tmp_path / "small.bin"
    write_random(small, 100_000)
    stored = cli(served.address, "upload", str(small))
    assert stored.code == 0, stored.err
    assert stored.out.split()[1] == "small.bin"


def test_an_upload_that_fills_the_disk_is_refused_once_and_leaves_nothing(
    full_disk_server: ServeProcess, tmp_path: pathlib.Path
) -> None:
    served = full_disk_server
    big = tmp_path / "big.bin"
    write_random(big, 5 * MiB)
    up = cli(served.address, "upload", str(big))
    assert up.code == 8
    assert up.err.splitlines() == [DISK_FULL]  # one line, and no retry (it would say so in the log)
    assert leftovers(served) == []
    log = served.log()
    assert len([line for line in log.splitlines() if "big.bin" in line]) == 1, log  # one attempt, one line
    assert "Traceback" not in log

    piped = cli(served.address, "upload", "-", "--name", "piped", stdin=os.urandom(5 * MiB).hex())
    assert piped.code == 8
    assert piped.err.splitlines() == [DISK_FULL]
    assert leftovers(served) == []

    assert_still_serving(served, tmp_path)
    assert "Traceback" not in served.log()


def test_when_even_the_database_cannot_write_the_upload_is_refused_cleanly(
    full_disk_server: ServeProcess, tmp_path: pathlib.Path
) -> None:
    served = full_disk_server
    filler = data_dir(served) / "filler"
    fill(filler)  # nothing is left, not even for SQLite's write-ahead log
    small = tmp_path / "small.bin"
    write_random(small, 100_000)
    up = cli(served.address, "upload", str(small))  # its record cannot be written
    assert up.code == 8
    assert up.err.splitlines() == [DISK_FULL]
    piped = cli(served.address, "upload", "-", "--name", "piped", stdin="x" * 100_000)
    assert piped.code == 8  # no record to write: its first chunk cannot be
    assert piped.err.splitlines() == [DISK_FULL]
    listed = cli(served.address, "--json", "files", "ls")
    assert listed.code == 0 and listed.out == ""
    assert leftovers(served) == []

    filler.unlink()
    assert_still_serving(served, tmp_path)
    assert "Traceback" not in served.log()
