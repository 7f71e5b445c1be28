"""``streamcli serve``: signals and shutdown of a real process; refusals at start, in-process."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.inprocess import cli
from tests.support.servers import clean_env, serve_process
from tests.support.threaded import threaded_server


def _stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


async def test_shutdown_goes_not_serving_refuses_new_calls_and_exits_zero(tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path, "--grace", "2") as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            served.process.send_signal(signal.SIGTERM)
            update = await asyncio.wait_for(watch.read(), 5)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # New calls are refused while the in-flight watch drains.
            refused = None
            async with grpc.aio.insecure_channel(served.address) as fresh:
                for _ in range(50):
                    try:
                        await health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    except grpc.aio.AioRpcError as exc:
                        refused = exc.code()
                        break
                    await asyncio.sleep(0.05)
            assert refused == grpc.StatusCode.UNAVAILABLE
        # The watch would stay open for ever: only the 2 s grace period ends it.
        assert served.process.wait(30) == 0
        assert "shutting down" in served.log()


async def test_a_second_signal_exits_at_once(tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path, "--grace", "60") as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            # An in-flight stream would hold the server in its 60 s grace period.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            await watch.read()
            served.process.send_signal(signal.SIGINT)
            await asyncio.sleep(0.5)
            assert served.process.poll() is None  # still draining
            served.process.send_signal(signal.SIGINT)
            code = served.process.wait(20)  # far less than the 60 s grace period it would otherwise take
        assert code == 128 + signal.SIGINT
        assert "exiting now" in served.log()


# The refusals below end `serve` before it serves: no signal handler, no process of its own needed.


def test_a_busy_port_is_refused_with_one_line(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        result = cli(None, "serve", "--address", address, "--data-dir", str(tmp_path / "other"))
    assert result.code == 3
    assert _stderr_lines(result.err) == [
        f"streamcli: error: cannot listen on {address}: the address is in use or not available"
    ]


def test_an_insecure_public_bind_is_refused(tmp_path: pathlib.Path) -> None:
    result = cli(None, "serve", "--address", "0.0.0.0:0", "--data-dir", str(tmp_path))
    assert result.code == 2
    lines = _stderr_lines(result.err)
    assert len(lines) == 1
    assert "refusing to listen on non-loopback address 0.0.0.0:0 without TLS;" in lines[0]
    assert "Traceback" not in result.err


def test_an_empty_token_is_refused_not_ignored(tmp_path: pathlib.Path) -> None:
    result = cli(None, "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp_path), "--token", "")
    assert result.code == 2
    assert _stderr_lines(result.err) == ["streamcli: error: the token is empty"]


def test_out_of_range_ports_are_refused(tmp_path: pathlib.Path) -> None:
    for address in ("127.0.0.1:99999", "127.0.0.1:", "foo", ":80"):
        result = cli(None, "serve", "--address", address, "--data-dir", str(tmp_path))
        assert result.code == 2, address
        assert _stderr_lines(result.err) == [
            f"streamcli: error: invalid address {address!r}: expected HOST:PORT with a port of 0-65535, "
            "e.g. 127.0.0.1:50051"
        ]


def test_a_mismatched_tls_pair_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    from tests.support.certs import make_pki

    ca, server, _ = make_pki(tmp_path)
    result = cli(
        None,
        "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
        "--tls-cert", str(server.cert), "--tls-key", str(ca.key),
    )  # fmt: skip
    assert result.code == 2
    assert "invalid TLS certificate" in result.err


def test_a_data_dir_serves_one_server_at_a_time(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data"):  # (its lock is an flock: an open file's, not a process's)
        result = cli(None, "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"))
    assert result.code == 2
    assert _stderr_lines(result.err) == [
        f"streamcli: error: data dir {tmp_path / 'data'} is in use by another streamcli serve"
    ]


def test_ready_file_and_json_start_up_line_give_the_bound_port(tmp_path: pathlib.Path) -> None:
    """A subprocess: ``streamcli serve`` running, then stopped by a signal, is what is under test."""
    ready = tmp_path / "ready.json"
    command = [sys.executable, "-m", "streamcli", "--json", "serve", "--address", "127.0.0.1:0"]
    command += ["--data-dir", str(tmp_path / "data"), "--ready-file", str(ready)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert server.stdout is not None
        line = json.loads(server.stdout.readline())  # printed once serving
        written = json.loads(ready.read_text())  # renamed into place before the line was printed
        assert line == written
        assert (line["host"], line["address"]) == ("127.0.0.1", f"127.0.0.1:{line['port']}")
        assert line["port"] > 0
        health = cli(line["address"], "health")
        assert (health.code, health.out) == (0, "SERVING\n")
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ready")] == []  # no temporary left
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    assert server.returncode == 0
    assert not ready.exists()  # a stopped server is not ready
