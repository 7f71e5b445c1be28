"""The Redis backend against a real ``redis-server``: the test harness, ``open_backend`` with a Redis URL,
and what only the Redis backend does. The log contract shared with the embedded backend is
``tests/test_log_contract.py``."""

from __future__ import annotations

import pathlib
import socket

import pytest

from tests.support.redis import RedisServer, redis_server

# --- the harness ----------------------------------------------------------------


def test_the_session_redis_runs_without_persistence_on_loopback(redis_process: RedisServer) -> None:
    assert redis_process.command("CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert redis_process.command("CONFIG", "GET", "appendonly") == b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    assert b"127.0.0.1" in redis_process.command("CONFIG", "GET", "bind")


def test_each_test_gets_an_empty_redis(redis_url: str, redis_process: RedisServer) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_process.port}/0"
    assert redis_process.command("DBSIZE") == b":0\r\n"
    assert redis_process.command("SET", "left-behind", "x").startswith(b"+OK")


def test_a_redis_server_is_stopped_when_its_block_ends(tmp_path: pathlib.Path) -> None:
    with redis_server(tmp_path) as running:
        assert running.command("PING") == b"+PONG\r\n"
    assert running.process.poll() is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", running.port), timeout=2):
        pass
