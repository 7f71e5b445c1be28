"""Real servers for tests: in-process on an ephemeral loopback port, or as a subprocess."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from streamcli.client.connection import Connection, connect
from streamcli.client.settings import ConnectionSettings
from streamcli.server.app import RunningServer, ServerConfig, start_server


@contextlib.asynccontextmanager
async def running_server(data_dir: pathlib.Path, **config: Any) -> AsyncIterator[RunningServer]:
    """Start the real server (on 127.0.0.1:<free port> unless ``address`` is given); stop it on exit."""
    config.setdefault("address", "127.0.0.1:0")
    server = await start_server(ServerConfig(data_dir=data_dir, **config))
    try:
        yield server
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def client(address: str, **settings: Any) -> AsyncIterator[Connection]:
    """A client connection with the given settings."""
    async with connect(ConnectionSettings(address=address, **settings)) as conn:
        yield conn


@dataclasses.dataclass
class ServeProcess:
    """A ``streamcli serve`` subprocess and the address it listens on."""

    process: subprocess.Popen[str]
    address: str
    log_path: pathlib.Path

    def log(self) -> str:
        return self.log_path.read_text()


LISTENING = re.compile(r"listening on (\S+)")


@contextlib.contextmanager
def serve_process(
    tmp_path: pathlib.Path,
    *args: str,
    address: str = "127.0.0.1:0",
    timeout: float = 15.0,
    wrapper: Sequence[str] = (),
) -> Iterator[ServeProcess]:
    """Run ``python -m streamcli serve`` (data in ``tmp_path/data``) until the block ends.

    ``wrapper`` is a command that runs the server as its last arguments (and must ``exec`` it, so
    that the process is the server's), e.g. one that first mounts a filesystem on the data dir.
    """
    log_path = tmp_path / "serve.log"
    command = [*wrapper, sys.executable, "-m", "streamcli", "serve", "--address", address]
    command += ["--data-dir", str(tmp_path / "data"), *args]
    start = log_path.stat().st_size if log_path.exists() else 0  # a restart appends to the same log
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=clean_env())
    try:
        deadline = time.monotonic() + timeout
        while True:
            match = LISTENING.search(log_path.read_text()[start:])
            if match:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield ServeProcess(process, match.group(1), log_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("STREAMCLI_"):
            del env[name]
    return env


def run_cli(*args: str, timeout: float = 30.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m streamcli ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "streamcli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        **kwargs,
    )


def free_port() -> int:
    """A port that was free a moment ago (for tests that restart a server on the same port)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
