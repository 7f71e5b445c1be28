"""A real ``redis-server`` for tests: its own process on a free loopback port, persistence off (or, for a
test that restarts it, an append-only file synced at every write)."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

from tests.support.servers import free_port


@dataclasses.dataclass
class RedisServer:
    """A running ``redis-server`` and the URL ``serve --backend`` takes for it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: pathlib.Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """Stop it now (SIGTERM, SIGKILL if it lingers), as its block would at its end."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def command(self, *args: str) -> bytes:
        """Send one command (inline protocol) and return the raw reply: for set-up and checks in tests."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(" ".join(args).encode() + b"\r\n")
            return conn.recv(65536)


def redis_server_path() -> str:
    """The ``redis-server`` binary (Debian's package ``redis-server``; ``.ci/run`` installs it)."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (see README, Set up)")
    return path


@contextlib.contextmanager
def redis_server(
    directory: pathlib.Path, port: int | None = None, timeout: float = 15.0, *, persistent: bool = False
) -> Iterator[RedisServer]:
    """Run ``redis-server`` on 127.0.0.1 (a free port unless ``port``) without persistence until the block
    ends, then stop it (SIGTERM, SIGKILL if it lingers). ``persistent``: with an append-only file in
    ``directory``, fsynced at every write, so that one started again there has all it acknowledged."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = directory / f"redis-{port}.log"
    command = [
        redis_server_path(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",  # no RDB snapshots
        "--appendonly", "yes" if persistent else "no",  # AOF only when asked
        "--appendfsync", "always",
        "--dir", str(directory),
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", str(log_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = RedisServer(process, port, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if server.command("PING").startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = log_path.read_text() if log_path.exists() else ""
                raise RuntimeError(f"redis-server did not start (exit {process.poll()}):\n{log}")
            time.sleep(0.02)
        yield server
    finally:
        server.stop()
        if process.stderr is not None:
            process.stderr.close()
