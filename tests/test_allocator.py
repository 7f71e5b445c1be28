"""``streamcli serve`` reuses the memory of freed 1 MiB transfer buffers instead of faulting it in again.

A real ``streamcli serve`` process: the allocator's thresholds are set for the whole process by ``serve``
alone, and the measure is the server process's own count of minor page faults while an upload goes through
it (``/proc/PID/stat``): each page of a buffer given back to the kernel and allocated again is one fault.
"""

from __future__ import annotations

import os
import pathlib
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
    warm_up.write_bytes(os.urandom(8 * MiB))
    source.write_bytes(os.urandom(UPLOAD_MIB * MiB))
    with serve_process(tmp_path) as served:
        # The first upload grows the heaps to their working size (each page faulted in once, as anywhere).
        assert cli(served.address, "upload", str(warm_up)).code == 0
        before = _minor_faults(served.process.pid)
        run = cli(served.address, "upload", str(source))
        after = _minor_faults(served.process.pid)
    assert run.code == 0, run.err
    # With glibc's own thresholds a 1 MiB chunk costs 170-220 faults (most of its 256 pages); reused, 30-50.

    assert (after - before) / UPLOAD_MIB < 100


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
)
def test_an_operators_own_allocator_settings_are_left_alone(environ: dict[str, str]) -> None:
    assert keep_freed_buffers(environ) is False
