"""A client given several replicas (``--address A,B``) when one goes away, and replicas whose Redis
restarts: real ``streamcli serve`` processes on a real ``redis-server``.

Subprocesses, because a replica killed with SIGKILL must be a process of its own; the clients run
in-process (``Background``), each given both addresses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamcli.errors import ExitStatus
from tests.support.inprocess import Background, Run, cli
from tests.support.redis import redis_server
from tests.support.servers import ServeProcess, serve_process


@contextlib.contextmanager
def replicas(tmp_path: pathlib.Path, redis_url: str) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """Two replicas on one Redis, sharing one data dir (file bytes live there)."""
    shared = tmp_path / "shared"
    for name in ("a", "b"):
        (tmp_path / name).mkdir(exist_ok=True)
    with (
        serve_process(tmp_path / "a", "--backend", redis_url, "--data-dir", str(shared)) as a,
        serve_process(tmp_path / "b", "--backend", redis_url, "--data-dir", str(shared)) as b,
    ):
        yield a, b


def kill(replica: ServeProcess) -> None:
    """SIGKILL: no goodbye to its clients, no grace."""
    replica.process.send_signal(signal.SIGKILL)
    replica.process.wait(10)


def next_json(run: Background) -> dict[str, Any]:
    """The next line the command printed, as JSON (blocks until it comes; the test's timeout bounds it)."""
    line = run.stdout.readline()
    assert line, "the command ended"
    loaded: dict[str, Any] = json.loads(line)
    return loaded


def chat_lines_until(chat: Background, content: str) -> list[dict[str, Any]]:
    """What ``--json chat`` printed up to the message ``content``, inclusive."""
    seen = [next_json(chat)]
    while seen[-1]["content"] != content:
        seen.append(next_json(chat))
    return seen


def publish(address: str, user: str) -> None:
    run = cli(address, "events", "publish", "-u", user, "-t", "login")
    assert run.code == 0, run.err


def say(address: str, user: str, *lines: str) -> None:
    text = "".join(f"{line}\n" for line in lines)
    run = cli(address, "chat", "--room", "ops", "--user", user, "--backlog", "0", stdin=text)
    assert run.code == 0, run.err


def room_log(address: str) -> list[tuple[int, str, str]]:
    """Every stored message of the room: (id, user, content)."""
    run = cli(address, "--json", "tail", "chat", "ops", "--no-follow")
    assert run.code == 0, run.err
    return [(m["id"], m["user_id"], m["content"]) for m in map(json.loads, run.out.splitlines())]


def as_log(lines: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(m["id"], m["user_id"], m["content"]) for m in lines]


def tail_events(tail: Run) -> list[tuple[int, str]]:
    assert tail.code == 0, tail.err
    return [(e["id"], e["user_id"]) for e in map(json.loads, tail.out.splitlines())]


def test_a_tail_and_a_chat_on_a_killed_replica_go_on_through_the_other(redis_url: str, tmp_path: pathlib.Path) -> None:
    with replicas(tmp_path, redis_url) as (a, b):
        both = f"{a.address},{b.address}"
        publish(a.address, "u1")
        say(a.address, "bob", "before")
        tail_args = ("--json", "tail", "events", "--all-users", "--since", "1h", "--max", "4")
        with (
            Background(both, *tail_args) as tail,
            Background(both, "--json", "chat", "--room", "ops", "--user", "alice", "--backlog", "10") as chat,
        ):
            assert next_json(tail)["id"] == 1  # connected to A (the first that answers): history read
            publish(a.address, "u2")
            assert next_json(tail)["id"] == 2  # and live
            chat.write("a1\n")
            seen = chat_lines_until(chat, "a1")  # joined on A: the backlog, then alice's own message
            kill(a)
            publish(b.address, "u3")
            publish(b.address, "u4")
            say(b.address, "bob", "b1")
            chat.write("a2\n")  # sent on whatever stream alice has by then: stored once
            seen += chat_lines_until(chat, "a2")
            say(b.address, "bob", "b2")
            seen += chat_lines_until(chat, "b2")
            tailed = tail.communicate(timeout=60)
            chatted = chat.communicate(timeout=60)
        log = room_log(b.address)
    assert [(1, "u1"), (2, "u2"), *tail_events(tailed)] == [(1, "u1"), (2, "u2"), (3, "u3"), (4, "u4")]
    assert "lost the stream (UNAVAILABLE" in tailed.err
    assert f"reconnected to {b.address}; resuming after id 2" in tailed.err
    assert chatted.code == 0, chatted.err
    # Alice saw the room's log from its first message on, exactly: no gap, no duplicate, in order (the
    # join and leave notices included), whichever replica each came through.
    seen += [json.loads(line) for line in chatted.out.splitlines()]
    assert as_log(seen) == log[: len(seen)]
    texts = [(user, content) for _, user, content in as_log(seen) if user in ("alice", "bob")]
    assert texts == [("bob", "before"), ("alice", "a1"), ("bob", "b1"), ("alice", "a2"), ("bob", "b2")]


def test_an_upload_through_one_replica_downloads_through_the_other(redis_url: str, tmp_path: pathlib.Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(hashlib.sha256(b"seed").digest() * 100_000 + b"tail")  # 3.2 MB: four chunks
    with replicas(tmp_path, redis_url) as (a, b):
        uploaded = cli(a.address, "--json", "upload", str(payload))
        assert uploaded.code == 0, uploaded.err
        file_id = json.loads(uploaded.out)["id"]
        downloaded = cli(b.address, "download", file_id, "-o", str(tmp_path / "copy.bin"))
    assert downloaded.code == 0, downloaded.err
    assert (tmp_path / "copy.bin").read_bytes() == payload.read_bytes()


@contextlib.contextmanager
def restarting_redis(tmp_path: pathlib.Path) -> Iterator[tuple[ServeProcess, ServeProcess, Callable[[], None]]]:
    """Two replicas on a Redis with an append-only file synced at every write (``appendonly yes``,
    ``appendfsync always``), and a function that stops Redis and starts it again on the same port:
    what it acknowledged before it stopped is there when it is back. Without persistence a restarted
    Redis is empty, and nothing could be promised."""
    with contextlib.ExitStack() as redis_processes:
        first = redis_processes.enter_context(redis_server(tmp_path / "redis", persistent=True))

        def restart() -> None:
            first.stop()
            redis_processes.enter_context(redis_server(tmp_path / "redis", port=first.port, persistent=True))

        with replicas(tmp_path, first.url()) as (a, b):
            yield a, b, restart


def test_a_tail_goes_on_after_redis_restarts(tmp_path: pathlib.Path) -> None:
    """The tail stays connected to its replica throughout; once Redis is back it is sent what is stored
    through either replica, after what it saw, and nothing acknowledged before the restart is lost."""
    with restarting_redis(tmp_path) as (a, b, restart):
        publish(a.address, "u1")
        tail_args = ("--json", "tail", "events", "--all-users", "--since", "1h", "--max", "3")
        with Background(f"{a.address},{b.address}", *tail_args) as tail:
            assert next_json(tail)["id"] == 1
            restart()
            when_back(lambda: cli(b.address, "events", "publish", "-u", "u2", "-t", "login"))
            when_back(lambda: cli(a.address, "events", "publish", "-u", "u3", "-t", "login"))
            tailed = tail.communicate(timeout=60)
        everything = cli(b.address, "--json", "tail", "events", "--all-users", "--no-follow")
    assert [(1, "u1"), *tail_events(tailed)] == [(1, "u1"), (2, "u2"), (3, "u3")]
    assert tail_events(everything) == [(1, "u1"), (2, "u2"), (3, "u3")]  # nothing acknowledged was lost


@pytest.mark.timeout(60)
def test_a_chat_goes_on_after_redis_restarts(tmp_path: pathlib.Path) -> None:
    with restarting_redis(tmp_path) as (a, b, restart):
        chat_args = ("--json", "chat", "--room", "ops", "--user", "alice", "--backlog", "10")
        with Background(f"{a.address},{b.address}", *chat_args) as chat:
            chat.write("a1\n")
            seen = chat_lines_until(chat, "a1")
            restart()
            when_back(lambda: cli(b.address, "chat", "--room", "ops", "--user", "bob", "--backlog", "0", stdin="b1\n"))
            seen += chat_lines_until(chat, "b1")
            chatted = chat.communicate(timeout=30)
        log = room_log(b.address)
    assert chatted.code == 0, chatted.err
    seen += [json.loads(line) for line in chatted.out.splitlines()]
    assert as_log(seen) == log[: len(seen)]
    texts = [(user, content) for _, user, content in as_log(seen) if user in ("alice", "bob")]
    assert texts == [("alice", "a1"), ("bob", "b1")]


def when_back(run: Callable[[], Run]) -> None:
    """``run`` until it works: a replica's first calls after Redis is back may still find it away (the
    replica says so, exit 3, and stores nothing)."""
    for _ in range(300):
        done = run()
        if done.code == 0:
            return
        assert done.code == ExitStatus.UNAVAILABLE, done.err
        time.sleep(0.1)
    raise AssertionError(f"it never worked: {done.err}")
