"""The chat controller driven directly against the real server: commands, rooms, file sharing, notices."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.chat import ChatState
from streamcli.client.chat_records import ChatMessage, ChatNotice, ChatPresence, message_from_pb
from streamcli.client.chat_session import (
    COMMANDS,
    ChatSession,
    Downloaded,
    Help,
    Replay,
    RoomLost,
    StateChanged,
    Typing,
    Uploading,
)
from streamcli.client.connection import Connection
from streamcli.server.app import RunningServer
from streamcli.ui.chat import event_text
from tests.support.chat import RawChat, SessionEvents
from tests.support.servers import client


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


async def test_a_file_sent_is_shared_in_the_room_and_downloaded_by_get(
    conn: Connection, tmp_path: pathlib.Path
) -> None:
    watcher = await RawChat(conn, "files", "watcher").open()
    await watcher.messages_until("watcher joined")
    photo = tmp_path / "Photo.PNG"
    photo.write_bytes(b"\x89PNG not really")
    events = SessionEvents()
    async with ChatSession(conn, "alice", "files", report=events) as session:
        await events.next(ChatMessage, lambda m: m.content == "alice joined")
        assert await session.handle(f"/send {photo}")
        assert await events.next(Uploading) == Uploading("Photo.PNG")
        shared = await events.next(ChatMessage, lambda m: m.user_id == "alice")
        assert (shared.type, shared.content, shared.shares_file) == ("image", "Photo.PNG", True)  # by its suffix
        seen_by_watcher = (await watcher.messages_until("Photo.PNG"))[-1]
        assert seen_by_watcher.file_id == shared.file_id
        target = tmp_path / "fetched.png"
        assert await session.handle(f"/get {shared.file_id} {target}")
        assert await events.next(Downloaded) == Downloaded(str(target), len(b"\x89PNG not really"))
        assert target.read_bytes() == b"\x89PNG not really"
        await session.handle(f"/get {shared.file_id} {target}")  # it exists now: kept, and the notice says how
        kept = await events.next(ChatNotice)
        assert (kept.code, kept.message) == ("DOWNLOAD", f"{target} exists; pass --force to overwrite it")
        target.write_bytes(b"changed")
        assert await session.handle(f"/get --force {shared.file_id} {target}")
        assert await events.next(Downloaded) == Downloaded(str(target), len(b"\x89PNG not really"))
        assert target.read_bytes() == b"\x89PNG not really"
    assert (await watcher.messages_until("alice left"))[-1].user_id == "system"
    assert session.room is None and session.status == StateChanged(ChatState.DISCONNECTED)
    watcher.call.cancel()


async def test_failed_transfers_are_notices_and_the_session_lives_on(conn: Connection, tmp_path: pathlib.Path) -> None:
    events = SessionEvents()
    async with ChatSession(conn, "alice", "fails", report=events) as session:
        await events.next(ChatMessage, lambda m: m.content == "alice joined")
        await session.handle(f"/send {tmp_path / 'missing.txt'}")
        assert await events.next(Uploading) == Uploading("missing.txt")
        upload = await events.next(ChatNotice)
        assert upload.code == "UPLOAD" and "missing.txt" in upload.message
        await session.handle(f"/get nosuchfile {tmp_path / 'x'}")
        download = await events.next(ChatNotice)
        assert download.code == "DOWNLOAD" and "nosuchfile" in download.message
        assert not (tmp_path / "x").exists()
        await session.handle("still here")
        assert (await events.next(ChatMessage)).content == "still here"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("hello", "join a room first: /join ROOM"),
        ("/who", "join a room first: /join ROOM"),
        (f"/send {pathlib.Path(__file__)}", "join a room first: /join ROOM"),
        ("/dance", "/dance: see /help"),
        ("/join", "/join: see /help"),
        ("/get a b c", "/get: see /help"),
        ("/me", "/me: see /help"),
        ('/join "unbalanced', "No closing quotation"),
    ],
)
async def test_usage_errors_are_usage_notices(conn: Connection, line: str, message: str) -> None:
    events = SessionEvents()
    async with ChatSession(conn, "alice", None, report=events) as session:
        assert await session.handle(line)
    assert events.events[0] == ChatNotice(code="USAGE", message=message)
    assert events.events[1:] == [StateChanged(ChatState.DISCONNECTED)]  # the close; nothing was sent or uploaded


async def test_switching_rooms_leaves_one_and_joins_the_other(conn: Connection) -> None:
    one = await RawChat(conn, "one", "bob").open()
    two = await RawChat(conn, "two", "carol").open()
    await one.messages_until("bob joined")
    await two.messages_until("carol joined")
    events = SessionEvents()
    async with ChatSession(conn, "alice", "one", report=events) as session:
        assert await events.next(StateChanged, lambda s: s.state == ChatState.CONNECTED) == StateChanged(
            ChatState.CONNECTED, "one"
        )
        await session.handle("in one")
        await events.next(ChatMessage, lambda m: m.content == "in one")
        await session.handle("/join two")
        assert session.room == "two"
        assert (await one.messages_until("alice left"))[-1].user_id == "system"
        await events.next(StateChanged, lambda s: s.state == ChatState.CONNECTED)
        await events.next(ChatMessage, lambda m: m.content == "alice joined" and m.room_id == "two")
        await session.handle("in two")
        message = await events.next(ChatMessage, lambda m: m.user_id == "alice")
        assert (message.room_id, message.content) == ("two", "in two")
        assert [m.content for m in (await two.messages_until("in two")) if m.user_id == "alice"] == ["in two"]
        await session.handle("/leave")
        assert session.room is None
        assert session.status == StateChanged(ChatState.DISCONNECTED)
        await session.handle("nowhere")
        assert (await events.next(ChatNotice)).message == "join a room first: /join ROOM"
    assert (await two.messages_until("alice left"))[-1].user_id == "system"
    one.call.cancel()
    two.call.cancel()


async def test_who_history_typing_help_and_quit(conn: Connection) -> None:
    bob = await RawChat(conn, "lounge", "bob").open()
    await bob.messages_until("bob joined")
    events = SessionEvents()
    async with ChatSession(conn, "alice", "lounge", report=events) as session:
        await events.next(ChatMessage, lambda m: m.content == "alice joined")
        await session.handle("/who")
        assert await events.next(ChatPresence) == ChatPresence("lounge", ("alice", "bob"))
        for n in range(3):
            await session.handle(f"m{n}")
        await events.next(ChatMessage, lambda m: m.content == "m2")
        await session.handle("//slash at the start")
        await events.next(ChatMessage, lambda m: m.content == "/slash at the start")
        await session.handle("/me waves")
        await events.next(ChatMessage, lambda m: m.content == "/me waves")
        await session.handle("/history 3")
        replay = await events.next(Replay)
        assert [m.content for m in replay.messages] == ["m2", "/slash at the start", "/me waves"]
        session.typing("a draft")
        typing = (await bob.messages_until(""))[-1]  # a TYPING indicator has no content
        assert (typing.user_id, typing.type) == ("alice", pb.CHAT_MESSAGE_TYPE_TYPING)
        await bob.say("", kind=pb.CHAT_MESSAGE_TYPE_TYPING)
        assert await events.next(Typing) == Typing("bob")
        await session.handle("/help")
        shown = await events.next(Help)
        assert shown.commands[5] == ("/get ID [PATH] [--force]", COMMANDS["/get"][1])
        assert [usage.split()[0] for usage, _ in shown.commands] == list(COMMANDS)
        # Rendered, every description starts in one column.
        lines = [str(line) for line in event_text(shown)]
        assert len({line.index(does) for line, (_, does) in zip(lines, shown.commands, strict=True)}) == 1
        assert await session.handle("   ")  # blank: nothing
        assert not await session.handle("/quit")
    bob.call.cancel()


async def test_a_room_that_cannot_be_joined_is_reported_lost(conn: Connection) -> None:
    events = SessionEvents()
    async with ChatSession(conn, "alice", "no room!", report=events) as session:
        lost = await events.next(RoomLost)
        assert lost.room == "no room!" and "room_id must be" in lost.reason
        assert session.room is None
        await session.handle("/join fine")
        await events.next(ChatMessage, lambda m: m.content == "alice joined" and m.room_id == "fine")


def test_a_message_as_json_is_what_chat_json_prints() -> None:
    sent = pb.ChatMessage(id=9, room_id="r", user_id="bob", content="x", file_id="f1", type=pb.CHAT_MESSAGE_TYPE_FILE)
    sent.timestamp.FromNanoseconds(1_764_000_000_123_000_000)
    message = message_from_pb(sent)
    assert message.to_json() == {
        "id": 9,
        "room_id": "r",
        "user_id": "bob",
        "type": "file",
        "content": "x",
        "file_id": "f1",
        "timestamp": "2025-11-24T16:00:00.123Z",
    }
    assert message.timestamp_ns == 1_764_000_000_123_000_000
    unknown = message_from_pb(pb.ChatMessage(type=42))  # type: ignore[arg-type]
    assert unknown.type == "42" and not unknown.shares_file
