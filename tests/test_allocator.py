"""``streamcli serve`` reuses the memory of freed 1 MiB transfer buffers instead of faulting it in again.

A real ``streamcli serve`` process (the allocator's thresholds are the whole process's), measured by its own
count of minor page faults (``/proc/PID/stat``): each page of a buffer given back to the kernel and
allocated again is one fault. A count of what the kernel did, not a timing.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from streamcli.allocator import keep_freed_buffers
from tests.support.inprocess import cli
from tests.support.servers import serve_process

MiB = 1 << 20
UPLOAD_MIB = 32


def _minor_faults(pid: int) -> int:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt: the 10th field of stat(5), the 8th after the command name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and /proc: Linux only")
def test_an_upload_does_not_fault_in_a_fresh_buffer_per_chunk(tmp_path: pathlib.Path) -> None:
    warm_up, source = tmp_path / "warm-up.bin", tmp_path / "upload.bin"
    warm_up.write_bytes(os.urandom(UPLOAD_MIB * MiB))
    source.write_bytes(os.urandom(UPLOAD_MIB * MiB))
    with serve_process(tmp_path) as served:
        # The first uploads grow the heaps to their working size (each page faulted in once, as anywhere).
        for _ in range(2):
            assert cli(served.address, "upload", str(warm_up)).code == 0
        before = _minor_faults(served.process.pid)
        run = cli(served.address, "upload", str(source))
        after = _minor_faults(served.process.pid)
    assert run.code == 0, run.err
    # With glibc's own thresholds a 1 MiB chunk costs 150-260 faults (most of its 256 pages); reused, 0-80.
    assert (after - before) / UPLOAD_MIB < 100


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_ARENA_MAX": "4"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
)
def test_an_operators_own_allocator_settings_are_left_alone(environ: dict[str, str]) -> None:
    assert keep_freed_buffers(environ) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_the_thresholds_are_set_when_nobody_else_set_them() -> None:
    # In a process of its own: the thresholds are the whole process's, and this one runs the other tests.
    code = "import sys; from streamcli.allocator import keep_freed_buffers as k; sys.exit(0 if k({}) else 1)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
