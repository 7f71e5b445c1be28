"""Chat against the real server: join/leave, backlog, resume, typing, limits, stalled clients, the REPL."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prompt_toolkit.application import create_app_session
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc
from streamcli.client.chat import ChatClient, ChatHandlers, ChatState
from streamcli.client.chat_records import ChatMessage
from streamcli.client.connection import Connection
from streamcli.server.app import RunningServer
from streamcli.services.chat import ChatSettings
from streamcli.ui.chat import ChatRepl
from tests.support.chat import RawChat
from tests.support.servers import client, running_server

#: The tests that use ``server`` run on every backend (tests/conftest.py).
ON_EACH_BACKEND = True

TEXT, TYPING = pb.CHAT_MESSAGE_TYPE_TEXT, pb.CHAT_MESSAGE_TYPE_TYPING


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


async def test_join_and_leave_are_announced_to_the_room(conn: Connection) -> None:
    alice = await RawChat(conn, "lobby", "alice").open()
    assert [m.content for m in await alice.messages_until("alice joined")] == ["alice joined"]
    bob = await RawChat(conn, "lobby", "bob").open()
    assert (await alice.messages_until("bob joined"))[-1].type == pb.CHAT_MESSAGE_TYPE_SYSTEM
    await bob.say("hi alice")
    said = (await alice.messages_until("hi alice"))[-1]
    assert (said.user_id, said.room_id, said.type) == ("bob", "lobby", TEXT)
    assert said.id > 0 and said.HasField("timestamp")
    await bob.close()
    assert (await alice.messages_until("bob left"))[-1].user_id == "system"
    # A client that vanishes without a goodbye is announced too.
    carol = await RawChat(conn, "lobby", "carol").open()
    await alice.messages_until("carol joined")
    carol.call.cancel()
    await alice.messages_until("carol left")
    alice.call.cancel()


async def test_backlog_on_join_then_live(conn: Connection) -> None:
    writer = await RawChat(conn, "history", "writer").open()
    for n in range(10):
        await writer.say(f"message {n}")
    await writer.messages_until("message 9")
    reader = await RawChat(conn, "history", "reader", backlog=3).open()
    seen = await reader.messages_until("reader joined")
    assert [m.content for m in seen] == ["message 7", "message 8", "message 9", "reader joined"]
    await writer.say("live one")
    assert (await reader.messages_until("live one"))[-1].user_id == "writer"
    writer.call.cancel()
    reader.call.cancel()


async def test_resume_after_an_id_gets_exactly_what_was_missed(conn: Connection) -> None:
    writer = await RawChat(conn, "resume", "writer").open()
    await writer.say("before")
    before = (await writer.messages_until("before"))[-1]
    for n in range(5):
        await writer.say(f"missed {n}")
    await writer.messages_until("missed 4")
    back = await RawChat(conn, "resume", "back", resume_after_id=before.id).open()
    seen = await back.messages_until("back joined")
    assert [m.content for m in seen] == [f"missed {n}" for n in range(5)] + ["back joined"]
    assert [m.id for m in seen] == list(range(before.id + 1, before.id + 7))
    writer.call.cancel()
    back.call.cancel()


async def test_typing_is_relayed_live_and_never_stored(conn: Connection) -> None:
    alice = await RawChat(conn, "typing", "alice").open()
    bob = await RawChat(conn, "typing", "bob").open()
    await alice.messages_until("bob joined")
    await bob.say("", kind=TYPING)
    await bob.say("", kind=TYPING)  # within the throttle interval: not relayed again
    await bob.say("done typing")
    seen = await alice.messages_until("done typing")
    typing = [m for m in seen if m.type == TYPING]
    assert [(m.user_id, m.id) for m in typing] == [("bob", 0)]
    late = await RawChat(conn, "typing", "late", backlog=50).open()
    assert all(m.type != TYPING for m in await late.messages_until("late joined"))
    for chat in (alice, bob, late):
        chat.call.cancel()


async def test_who_and_list_room_members(conn: Connection) -> None:
    alice = await RawChat(conn, "presence", "alice").open()
    bob = await RawChat(conn, "presence", "bob").open()
    await alice.messages_until("bob joined")
    await alice.call.write(pb.ChatRequest(who=True))
    while not (response := await alice.next()).HasField("presence"):
        pass
    assert list(response.presence.users) == ["alice", "bob"]
    listed = await conn.stub.ListRoomMembers(pb.ListRoomMembersRequest(room_id="presence"))
    assert list(listed.presence.users) == ["alice", "bob"]
    alice.call.cancel()
    bob.call.cancel()


@pytest.mark.parametrize("room_id", ["", "{}", "bad room!", "r" * 65])
async def test_list_room_members_refuses_the_room_ids_that_chat_refuses(conn: Connection, room_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await conn.stub.ListRoomMembers(pb.ListRoomMembersRequest(room_id=room_id))
    call = conn.stub.Chat()
    await call.write(pb.ChatRequest(join=pb.ChatJoin(room_id=room_id, user_id="alice")))
    with pytest.raises(grpc.aio.AioRpcError) as joined:
        await call.read()
    assert listed.value.code() == joined.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert listed.value.details() == joined.value.details() == "room_id must be 1-64 letters, digits, '-', '_' or '.'"


async def test_one_name_one_session_unless_allowed(conn: Connection) -> None:
    first = await RawChat(conn, "names", "alice").open()
    await first.messages_until("alice joined")
    second = await RawChat(conn, "names", "alice").open()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await second.next()
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    third = await RawChat(conn, "names", "alice", allow_duplicate=True).open()
    assert (await third.messages_until("alice joined"))[-1].user_id == "system"
    first.call.cancel()
    third.call.cancel()


async def test_of_two_sessions_of_one_name_joining_at_once_one_is_refused(conn: Connection) -> None:
    chats = [RawChat(conn, "at-once", "alice"), RawChat(conn, "at-once", "alice")]
    await asyncio.gather(*(chat.open() for chat in chats))  # both joins sent before either is answered
    outcomes = await asyncio.gather(*(chat.next() for chat in chats), return_exceptions=True)
    refused = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert refused == [grpc.StatusCode.ALREADY_EXISTS]
    for chat in chats:
        chat.call.cancel()


@pytest.mark.parametrize(
    ("join", "detail"),
    [
        (pb.ChatJoin(room_id="a room", user_id="x"), "room_id must be"),
        (pb.ChatJoin(room_id="r", user_id="system"), "not 'system'"),
        (pb.ChatJoin(room_id="r", user_id="a\x1bb"), "user_id must be"),
    ],
)
async def test_bad_joins_are_refused(conn: Connection, join: pb.ChatJoin, detail: str) -> None:
    call = conn.stub.Chat()
    await call.write(pb.ChatRequest(join=join))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call.read()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in failure.value.details()


async def test_the_first_message_must_be_a_join(conn: Connection) -> None:
    call = conn.stub.Chat()
    await call.write(pb.ChatRequest(send=pb.ChatSend(type=TEXT, content="hi")))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call.read()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("content", "kind", "code", "detail"),
    [
        ("x" * 20_000, TEXT, "INVALID_ARGUMENT", "longer than 16384 bytes"),
        ("bell\x07", TEXT, "INVALID_ARGUMENT", "control characters"),
        ("   ", TEXT, "INVALID_ARGUMENT", "empty message"),
        ("hi", 42, "INVALID_ARGUMENT", "message type 42 cannot be sent"),
        ("hi", pb.CHAT_MESSAGE_TYPE_SYSTEM, "INVALID_ARGUMENT", "cannot be sent"),
        ("look", pb.CHAT_MESSAGE_TYPE_FILE, "NOT_FOUND", "no file"),
    ],
    ids=["huge", "control-chars", "empty", "unknown-type", "system", "missing-file"],
)
async def test_hostile_messages_get_a_notice_and_the_session_lives_on(
    conn: Connection, content: str, kind: int, code: str, detail: str
) -> None:
    alice = await RawChat(conn, "hostile", "alice").open()
    await alice.messages_until("alice joined")
    await alice.say(content, kind=kind, file_id="nope" if kind == pb.CHAT_MESSAGE_TYPE_FILE else "")
    notice = (await alice.next()).notice
    assert (notice.code, detail in notice.message) == (code, True)
    await alice.say("still here")
    assert (await alice.messages_until("still here"))[-1].user_id == "alice"
    alice.call.cancel()


async def test_rate_limit_is_an_in_band_notice(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, chat=ChatSettings(rate=1, burst=3)) as server, client(server.address) as conn:
        alice = await RawChat(conn, "fast", "alice").open()
        await alice.messages_until("alice joined")
        for n in range(5):
            await alice.say(f"m{n}")
        notices, messages = [], []
        while len(notices) < 2 or len(messages) < 3:
            response = await alice.next()
            messages.extend(m.content for m in response.messages)
            if response.HasField("notice"):
                notices.append(response.notice.code)
        assert messages == ["m0", "m1", "m2"]
        assert notices == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
        alice.call.cancel()


async def test_a_burst_is_stored_and_delivered_in_batches_in_order(tmp_path: pathlib.Path) -> None:
    settings = ChatSettings(rate=10_000, burst=10_000)
    async with running_server(tmp_path, chat=settings) as server, client(server.address) as conn:
        reader = await RawChat(conn, "burst", "reader").open()
        await reader.messages_until("reader joined")
        writer = await RawChat(conn, "burst", "writer").open()
        await reader.messages_until("writer joined")
        for n in range(300):
            await writer.say(f"m{n}")
        received: list[pb.ChatMessage] = []
        responses = 0
        while len(received) < 300:
            received.extend((await reader.next()).messages)
            responses += 1
        assert [m.content for m in received] == [f"m{n}" for n in range(300)]
        assert [m.id for m in received] == list(range(received[0].id, received[0].id + 300))
        assert responses < 300  # what queued up while an append was in flight went out together
        reader.call.cancel()
        writer.call.cancel()


async def test_a_stalled_client_is_cut_off_without_slowing_the_room(tmp_path: pathlib.Path) -> None:
    settings = ChatSettings(rate=10_000, burst=10_000, stall_limit=1.0)
    async with (
        running_server(tmp_path, chat=settings) as server,
        client(server.address) as conn,
        # A connection of its own without BDP probing: the flow-control window that the stalled
        # reader can absorb stays at gRPC's default instead of growing with the others' traffic.
        grpc.aio.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel,
    ):
        own = Connection(conn.settings, channel, pb_grpc.StreamingServiceStub(channel), conn.metadata)
        stalled = await RawChat(own, "busy", "stalled").open()
        await stalled.messages_until("stalled joined")  # then never reads again
        reader = await RawChat(conn, "busy", "reader").open()
        writer = await RawChat(conn, "busy", "writer").open()
        big = "y" * 15_000
        for n in range(400):  # ~6 MB: far beyond what flow control lets the stalled stream buffer
            await writer.say(f"{n} {big}")
        await writer.say("last")
        seen = await reader.messages_until("last", timeout=20)
        assert sum(1 for m in seen if m.user_id == "writer") == 401
        await asyncio.sleep(2.5)  # past the stall limit
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            while True:
                await stalled.next(timeout=10)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "resume after id" in failure.value.details()
        reader.call.cancel()
        writer.call.cancel()


async def test_chat_client_resumes_across_a_server_restart(tmp_path: pathlib.Path) -> None:
    from tests.support.servers import free_port

    address = f"127.0.0.1:{free_port()}"
    received: list[ChatMessage] = []
    states: list[ChatState] = []
    async with running_server(tmp_path, address=address) as server, client(address) as conn:
        listener = ChatClient(
            conn, "ops", "listener",
            ChatHandlers(message=received.append, state=lambda state, _: states.append(state)),
        )  # fmt: skip
        task = asyncio.create_task(listener.run())
        async with client(address) as other:
            talker = await RawChat(other, "ops", "talker").open()
            for n in range(3):
                await talker.say(f"before {n}")
            await talker.messages_until("before 2")
            talker.call.cancel()
        while not any(m.content == "before 2" for m in received):
            await asyncio.sleep(0.02)
        await server.stop(1)
        async with running_server(tmp_path, address=address), client(address) as other:
            talker = await RawChat(other, "ops", "talker").open()
            for n in range(3):
                await talker.say(f"after {n}")
            for _ in range(300):
                if any(m.content == "after 2" for m in received):
                    break
                await asyncio.sleep(0.05)
            listener.leave()
            await asyncio.wait_for(task, 10)
    ids = [m.id for m in received]
    assert ids == sorted(set(ids))  # no duplicate, in order
    assert ids == list(range(ids[0], ids[-1] + 1))  # no gap
    contents = [m.content for m in received]
    assert contents.index("before 2") < contents.index("after 0")
    assert ChatState.RECONNECTING in states and states[-1] == ChatState.CLOSED


async def test_repl_sends_lines_and_commands_through_pipe_input(conn: Connection, tmp_path: pathlib.Path) -> None:
    watcher = await RawChat(conn, "repl", "watcher").open()
    await watcher.messages_until("watcher joined")
    shared = tmp_path / "notes.txt"
    shared.write_text("shared notes")
    history_file = tmp_path / "history"
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        repl = ChatRepl(conn, "alice", "repl", input=pipe, output=DummyOutput(), history=history_file)
        running = asyncio.create_task(repl.run())
        await watcher.messages_until("alice joined")
        pipe.send_text("hello there\r")
        await watcher.messages_until("hello there")
        pipe.send_text("/me waves\r")
        await watcher.messages_until("/me waves")
        pipe.send_text("line one\x1b\rline two\r")  # Alt-Enter inserts a newline
        await watcher.messages_until("line one\nline two")
        pipe.send_text(f"/send {shared}\r")
        shared_message = (await watcher.messages_until("notes.txt"))[-1]
        assert shared_message.type == pb.CHAT_MESSAGE_TYPE_FILE
        target = tmp_path / "fetched.txt"
        pipe.send_text(f"/get {shared_message.file_id} {target}\r")
        for _ in range(100):
            if target.exists():
                break
            await asyncio.sleep(0.05)
        assert target.read_text() == "shared notes"
        pipe.send_text("\x04")  # Ctrl-D leaves
        await asyncio.wait_for(running, 10)
    assert (await watcher.messages_until("alice left"))[-1].user_id == "system"
    assert [m.content for m in repl.session.seen if m.user_id == "alice"] == [
        "hello there",
        "/me waves",
        "line one\nline two",
        "notes.txt",
    ]
    # Input history survives the session.
    assert "hello there" in list(FileHistory(str(history_file)).load_history_strings())
    watcher.call.cancel()


async def test_repl_shows_who_is_typing_and_switches_rooms(conn: Connection) -> None:
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        repl = ChatRepl(conn, "alice", "one", input=pipe, output=DummyOutput())
        running = asyncio.create_task(repl.run())
        bob = await RawChat(conn, "one", "bob").open()
        await bob.messages_until("bob joined")
        await bob.say("", kind=TYPING)
        for _ in range(100):
            if "bob is typing" in repl._toolbar().value:
                break
            await asyncio.sleep(0.02)
        assert "bob is typing" in repl._toolbar().value
        pipe.send_text("/join two\r")
        for _ in range(100):
            if repl.room == "two" and repl.state == "connected":
                break
            await asyncio.sleep(0.02)
        assert (await bob.messages_until("alice left"))[-1].user_id == "system"
        pipe.send_text("/quit\r")
        await asyncio.wait_for(running, 10)
    bob.call.cancel()


async def test_repl_allow_duplicate_applies_to_the_first_join_and_to_slash_join(conn: Connection) -> None:
    here = await RawChat(conn, "twice", "alice").open()
    await here.messages_until("alice joined")
    there = await RawChat(conn, "elsewhere", "alice").open()
    await there.messages_until("alice joined")
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        repl = ChatRepl(conn, "alice", "twice", allow_duplicate=True, input=pipe, output=DummyOutput())
        running = asyncio.create_task(repl.run())
        # The server refuses a second session of alice in a room (ALREADY_EXISTS) unless the join allows it.
        assert (await here.messages_until("alice joined"))[-1].user_id == "system"
        pipe.send_text("/join elsewhere\r")
        assert (await here.messages_until("alice left"))[-1].user_id == "system"
        assert (await there.messages_until("alice joined"))[-1].user_id == "system"
        pipe.send_text("from the second session\r")
        said = (await there.messages_until("from the second session"))[-1]
        assert (said.user_id, said.room_id) == ("alice", "elsewhere")
        pipe.send_text("/quit\r")
        await asyncio.wait_for(running, 10)
    here.call.cancel()
    there.call.cancel()


async def test_a_per_user_token_decides_who_is_talking(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, token="shared", user_tokens={"alice": "alice-secret"}) as server:
        async with client(server.address, token="alice-secret") as conn:
            impostor = await RawChat(conn, "auth", "mallory").open()
            joined = (await impostor.messages_until("alice joined"))[-1]
            assert joined.content == "alice joined"  # the token's name, not the claimed one
            await impostor.say("hi")
            assert (await impostor.messages_until("hi"))[-1].user_id == "alice"
            impostor.call.cancel()
        async with client(server.address, token="shared") as conn:
            bob = await RawChat(conn, "auth", "bob").open()
            assert (await bob.messages_until("bob joined"))[-1].user_id == "system"
            bob.call.cancel()
        async with client(server.address, token="wrong") as conn:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                # The refusal may end the call before the join is written: then the write raises it.
                denied = await RawChat(conn, "auth", "eve").open()
                await denied.next()
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_idle_chat_streams_get_heartbeats(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, heartbeat=0.1) as server, client(server.address) as conn:
        alice = await RawChat(conn, "quiet", "alice").open()
        await alice.messages_until("alice joined")
        # Nothing else happens in the room: without heartbeats these reads would wait for ever.
        beats = [await asyncio.wait_for(alice.call.read(), 10) for _ in range(3)]
        alice.call.cancel()
    assert all(beat == pb.ChatResponse() for beat in beats)


async def test_repl_rejoins_at_once_when_the_server_is_back_after_it_gave_up(tmp_path: pathlib.Path) -> None:
    from streamcli.client.retry import RetryPolicy
    from tests.support.servers import free_port

    address = f"127.0.0.1:{free_port()}"
    impatient = RetryPolicy(retries=2, initial_delay=0.05, max_delay=0.1)
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        async with running_server(tmp_path, address=address) as server, client(address) as conn:
            repl = ChatRepl(conn, "alice", "back", retry=impatient, input=pipe, output=DummyOutput())
            running = asyncio.create_task(repl.run())
            watcher = await RawChat(conn, "back", "watcher").open()
            await watcher.messages_until("alice joined")
            watcher.call.cancel()
            await server.stop(0)
            while repl.room is not None:  # reconnecting, then given up ("cannot stay in #back")
                await asyncio.sleep(0.02)
            async with running_server(tmp_path, address=address), client(address) as other:
                watcher = await RawChat(other, "back", "watcher").open()
                await watcher.messages_until("watcher joined")
                pipe.send_text("/join back\r")  # once: it must not fail with the old error
                await watcher.messages_until("alice joined")
                pipe.send_text("still here\r")
                assert (await watcher.messages_until("still here"))[-1].user_id == "alice"
                pipe.send_text("/join back\r")  # the same room again, while connected
                await watcher.messages_until("alice left")
                await watcher.messages_until("alice joined")
                pipe.send_text("/quit\r")
                await asyncio.wait_for(running, 10)
                watcher.call.cancel()


async def test_stream_room_messages_reads_a_room_without_joining_it(conn: Connection) -> None:
    alice = await RawChat(conn, "readonly", "alice").open()
    await alice.say("one")
    await alice.say("two")
    await alice.messages_until("two")
    history = pb.StreamRoomMessagesRequest(room_id="readonly", tail=2, no_follow=True)
    assert [m.content async for r in conn.stub.StreamRoomMessages(history) for m in r.messages] == ["one", "two"]
    reader = conn.stub.StreamRoomMessages(pb.StreamRoomMessagesRequest(room_id="readonly"))
    first = await reader.read()  # the start position: the reader is in place
    assert not first.messages and first.position == 3  # alice joined, one, two
    listed = await conn.stub.ListRoomMembers(pb.ListRoomMembersRequest(room_id="readonly"))
    assert list(listed.presence.users) == ["alice"]  # not the reader
    await alice.say("three")
    while not (live := await reader.read()).messages:
        pass
    assert [(m.id, m.user_id, m.content) for m in live.messages] == [(4, "alice", "three")]
    reader.cancel()
    # No join or leave message of the reader's reached the room.
    everything = pb.StreamRoomMessagesRequest(room_id="readonly", start_time=Timestamp(), no_follow=True)
    assert [m.content async for r in conn.stub.StreamRoomMessages(everything) for m in r.messages] == [
        "alice joined",
        "one",
        "two",
        "three",
    ]
    alice.call.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        async for _ in conn.stub.StreamRoomMessages(pb.StreamRoomMessagesRequest(room_id="bad room!")):
            pass
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_no_backlog_joins_without_replay_while_backlog_0_is_the_servers_default(conn: Connection) -> None:
    alice = await RawChat(conn, "quiet", "alice").open()
    await alice.say("before")
    await alice.messages_until("before")
    bob = await RawChat(conn, "quiet", "bob", no_backlog=True).open()
    carol = await RawChat(conn, "quiet", "carol", backlog=0).open()
    assert [m.content for m in await bob.messages_until("bob joined")] == ["bob joined"]
    assert "before" in [m.content for m in await carol.messages_until("carol joined")]
    for chat in (alice, bob, carol):
        chat.call.cancel()
