"""Chat delivery: acknowledgements, rate-limit pacing and line mode's exit status, against the real server.

Line mode runs in-process (``tests.support.inprocess.acli``: string buffers, or a pipe for input that
arrives while the server restarts) in a thread of its own, since it runs its own event loop; the server runs
in the test's loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
from typing import IO

import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.services.chat import MAX_CONTENT_BYTES, ChatSettings
from tests.support.chat import RawChat
from tests.support.inprocess import acli, cli
from tests.support.servers import client, free_port, running_server
from tests.support.threaded import threaded_server

TEXT = pb.CHAT_MESSAGE_TYPE_TEXT
#: Fast enough for a test, slow enough that 40 lines run into the limit many times.
PACED = ChatSettings(rate=50, burst=5)


async def line_mode(address: str, stdin: IO[str], *args: str) -> tuple[int, str, str]:
    """Run ``streamcli chat ARGS`` in line mode; returns (exit code, stdout, stderr)."""
    run = await acli(address, "chat", *args, stdin=stdin)
    return run.code, run.out, run.err


async def stored(conn: Connection, room: str, until: str) -> list[pb.ChatMessage]:
    """The room's log, read by a new session, up to its own join message."""
    reader = await RawChat(conn, room, "auditor", backlog=1000).open()
    messages = await reader.messages_until(until)
    reader.call.cancel()
    return messages


async def test_forty_lines_are_paced_to_the_rate_limit_and_all_stored_once_in_order(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, chat=PACED) as server, client(server.address) as conn:
        lines = "".join(f"{n}\n" for n in range(1, 41))
        code, _, err = await line_mode(server.address, io.StringIO(lines), "--room", "rl", "--user", "spam")
        assert code == 0, err
        assert err == ""
        log = await stored(conn, "rl", "auditor joined")
    assert [m.content for m in log if m.user_id == "spam"] == [str(n) for n in range(1, 41)]
    assert len({m.client_seq for m in log if m.user_id == "spam"}) == 40


async def test_refused_lines_are_named_the_rest_delivered_and_the_exit_is_5(tmp_path: pathlib.Path) -> None:
    too_long = "x" * (17 * 1024)
    lines = ["first", too_long, "second", "", "bell \x07 here", "third"]
    async with running_server(tmp_path, chat=PACED) as server, client(server.address) as conn:
        stdin = io.StringIO("".join(f"{line}\n" for line in lines))
        code, _, err = await line_mode(server.address, stdin, "--room", "bad", "--user", "bot")
        log = await stored(conn, "bad", "auditor joined")
    assert [m.content for m in log if m.user_id == "bot"] == ["first", "second", "third"]
    assert code == 5
    assert err.splitlines() == [
        f"streamcli: line 2 not sent: message longer than {MAX_CONTENT_BYTES} bytes (INVALID_ARGUMENT)",
        "streamcli: line 5 not sent: message contains control characters (INVALID_ARGUMENT)",
        "streamcli: error: 2 lines not sent: 2, 5 (the others were)",
    ]


async def test_lines_survive_a_server_restart_without_loss_or_duplicate(tmp_path: pathlib.Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    read_end, write_end = os.pipe()
    stdin, feed = os.fdopen(read_end, "r"), os.fdopen(write_end, "w")
    async with running_server(tmp_path, address=address, chat=PACED) as server, client(address) as conn:
        watcher = await RawChat(conn, "ops", "watcher").open()
        running = asyncio.create_task(line_mode(address, stdin, "--room", "ops", "--user", "bot"))
        feed.write("".join(f"{n}\n" for n in range(1, 11)))
        feed.flush()
        await watcher.messages_until("10", timeout=20)
        feed.write("".join(f"{n}\n" for n in range(11, 31)))  # some in flight when the server stops
        feed.flush()
        await server.stop(1)
    async with running_server(tmp_path, address=address, chat=PACED), client(address) as conn:
        feed.write("".join(f"{n}\n" for n in range(31, 41)))
        feed.close()
        code, _, err = await asyncio.wait_for(running, 60)
        stdin.close()
        log = await stored(conn, "ops", "auditor joined")
    assert code == 0, err
    assert [m.content for m in log if m.user_id == "bot"] == [str(n) for n in range(1, 41)]


async def test_the_server_echoes_client_numbers_and_says_when_a_stream_caught_up(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, chat=ChatSettings(rate=1, burst=1)) as server, client(server.address) as conn:
        first = await RawChat(conn, "echo", "alice", client_id="run-1").open()
        responses = [await first.call.read() for _ in range(2)]
        # An empty room: caught up at once, before the join message.
        assert responses[0] == pb.ChatResponse(caught_up=True)
        assert [m.content for m in responses[1].messages] == ["alice joined"]
        await first.call.write(pb.ChatRequest(send=pb.ChatSend(type=TEXT, content="one", client_seq=7)))
        said = (await first.messages_until("one"))[-1]
        assert (said.client_id, said.client_seq) == ("run-1", 7)
        await first.call.write(pb.ChatRequest(send=pb.ChatSend(type=TEXT, content="two", client_seq=8)))
        notice = (await first.next()).notice
        assert (notice.code, notice.client_seq) == ("RESOURCE_EXHAUSTED", 8)
        assert 0 < notice.retry_after_ms <= 1000
        await first.call.write(pb.ChatRequest(send=pb.ChatSend(type=TEXT, content="\x1b", client_seq=9)))
        notice = (await first.next()).notice
        assert (notice.code, notice.client_seq, notice.retry_after_ms) == ("INVALID_ARGUMENT", 9, 0)
        # A resumed stream gets what it missed, then caught_up, then what was stored after its join.
        again = await RawChat(conn, "echo", "alice", client_id="run-1", resume_after_id=said.id - 1,
                              allow_duplicate=True).open()  # fmt: skip
        replay = await again.call.read()
        assert [(m.content, m.client_seq) for m in replay.messages] == [("one", 7)]
        assert not replay.caught_up
        assert (await again.call.read()).caught_up
        assert [m.content for m in (await again.call.read()).messages] == ["alice joined"]
        first.call.cancel()
        again.call.cancel()


@pytest.mark.parametrize("client_id", ["a b", "x" * 65, "\x1b"])
async def test_a_bad_client_id_is_refused(tmp_path: pathlib.Path, client_id: str) -> None:
    import grpc

    async with running_server(tmp_path) as server, client(server.address) as conn:
        joining = await RawChat(conn, "r", "alice", client_id=client_id).open()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await joining.next()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_id must be" in failure.value.details()


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_user_name_is_a_usage_error(name: str) -> None:
    run = cli("127.0.0.1:1", "chat", "--room", "r", "--user", name)
    assert run.code == 2
    assert run.err == (
        "streamcli: error: invalid value for '--user' / '-u' (env var: 'STREAMCLI_USER'): the name must not be empty"
        " (see streamcli chat --help)\n"
    )


def test_backlog_0_shows_none_and_no_backlog_option_the_servers_default(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        said = cli(address, "chat", "--room", "quiet", "--user", "alice", stdin="before\n")
        none = cli(address, "--json", "chat", "--room", "quiet", "--user", "bob", "--backlog", "0", stdin="")
        default = cli(address, "--json", "chat", "--room", "quiet", "--user", "carol", stdin="")
    assert (said.code, none.code, default.code) == (0, 0, 0), none.err
    assert "before" not in [json.loads(line)["content"] for line in none.out.splitlines()]
    assert "before" in [json.loads(line)["content"] for line in default.out.splitlines()]
