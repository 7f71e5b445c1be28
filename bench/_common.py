"""What every benchmark here shares: the processes it starts, what it reads of them from /proc, the raw server loop.

Imported by ``bench/startup.py``'s siblings as ``_common`` (the scripts run as ``python bench/NAME.py``, which puts
this folder first on ``sys.path``). Standard library, grpc and streamcli only; Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

import grpc

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

PY = sys.executable
ROOT = pathlib.Path(__file__).resolve().parent.parent
_console = pathlib.Path(PY).with_name("streamcli")
#: How the benchmarks start the CLI: the console script beside the interpreter, else ``python -m streamcli``.
STREAMCLI: tuple[str, ...] = (str(_console),) if _console.exists() else (PY, "-m", "streamcli")
SERVICE = pb.DESCRIPTOR.services_by_name["StreamingService"].full_name
#: What every server started here (streamcli and the raw ones alike) logs once it is ready.
LISTENING = re.compile(r"listening on (\S+:\d+)")
MB = 10**6
CLK_TCK = os.sysconf("SC_CLK_TCK")


def clean_env() -> dict[str, str]:
    """The environment without STREAMCLI_* settings (a token or address there would change what is measured)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("STREAMCLI_")}


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes (empty once it has exited; a zombie has none)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        line.split(":")[0]: int(line.split()[1]) * 1024  # kB
        for line in status.splitlines()
        if line.startswith(("VmRSS:", "VmHWM:"))
    }


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size of ``pid`` so far, in bytes (None once it has exited)."""
    return proc_status(pid).get("VmHWM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far (0 once it has gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of proc(5)


def children_cpu() -> float:
    """User + system CPU time of the reaped children of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished client process."""

    seconds: float  # wall time, spawn to exit
    cpu: float  # user + system seconds
    peak_rss: int  # bytes: the largest VmHWM polled
    stdout: str  # "" when it went to a file


def run_client(argv: Sequence[str], stdout: pathlib.Path | None = None, poll: float = 0.01) -> Run:
    """Run ``argv`` to completion (stdout to ``stdout``, else captured), polling its VmHWM; exit if it fails."""
    with tempfile.TemporaryFile() as captured, tempfile.TemporaryFile() as err:
        with open(stdout, "wb") if stdout is not None else contextlib.nullcontext(captured) as out:
            peak = 0
            cpu = children_cpu()  # the servers are children too, but they are reaped only at the end
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT, env=clean_env())
            try:
                while True:
                    peak = max(peak, vm_hwm(proc.pid) or 0)
                    try:
                        proc.wait(poll)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            finally:
                if proc.poll() is None:  # interrupted: leave nothing behind
                    proc.kill()
                    proc.wait()
            elapsed = time.perf_counter() - start
            cpu = children_cpu() - cpu
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited with {proc.returncode}:\n{err.read().decode(errors='replace')}")
        captured.seek(0)
        return Run(elapsed, cpu, peak, captured.read().decode() if stdout is None else "")


@dataclasses.dataclass
class Served:
    """A running server process and the address it listens on."""

    label: str
    process: subprocess.Popen[bytes]
    address: str

    def memory(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` now, in bytes."""
        status = proc_status(self.process.pid)
        if not status or self.process.poll() is not None:
            sys.exit(f"{self.label} exited early")
        return status

    def peak_rss(self) -> int:
        return self.memory()["VmHWM"]

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


@contextlib.contextmanager
def serve(label: str, argv: Sequence[str], log_path: pathlib.Path, timeout: float = 30.0) -> Iterator[Served]:
    """Start a server that logs "listening on HOST:PORT"; SIGTERM it (then SIGKILL) when the block ends."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT, env=clean_env())
    try:
        deadline = time.monotonic() + timeout
        while not (match := LISTENING.search(log_path.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{label} did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield Served(label, proc, match.group(1))
    finally:
        stop(proc)


@contextlib.contextmanager
def spawn(
    argv: Sequence[str], stdout: int | IO[bytes], log: IO[bytes], stdin: int | IO[bytes] = subprocess.DEVNULL
) -> Iterator[subprocess.Popen[bytes]]:
    """A client process running in the background; stopped (SIGTERM, then SIGKILL) when the block ends."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=log, cwd=ROOT, env=clean_env())
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_raw_server(handler: grpc.GenericRpcHandler) -> None:
    """Serve ``handler`` with grpc.aio on a free loopback port, say "listening on ..." and run until SIGTERM."""
    server = grpc.aio.server(options=transport.server_options())
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        await stopping.wait()
    finally:
        await server.stop(1)


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"verification failed: {what}")


def last_json(text: str) -> dict[str, Any]:
    """The last line a worker printed, as JSON (its result)."""
    lines = [line for line in text.splitlines() if line.strip()]
    check(bool(lines), "a client printed nothing")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def load_line(before: tuple[float, float, float], suffix: str = "") -> str:
    """The closing line of a benchmark: the load average when it began (``os.getloadavg()`` then) and now."""
    now = os.getloadavg()
    return (
        "load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(*before, *now)
        + suffix
    )
